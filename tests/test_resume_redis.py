"""Resumable answers across replicas on the real Redis: two apps (two replicas in all but the
process, see tests/test_resume_processes.py for real processes) sharing Redis and PostgreSQL.
A resume or a cancel lands on the replica that does not produce the answer; Redis going away
mid-run leaves streaming working and makes such a resume 503 `resume_unavailable`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio

from service.app_keys import ANSWER_LOGS, ANSWER_MIRROR
from tests.conftest import event_ids
from tests.fake_upstream import Scenario
from tests.redis_fixtures import private_redis, redis_prefix, redis_url  # noqa: F401
from tests.storage_fixtures import StoreTarget
from tests.support.resume import (
    TOKENS,
    joined,
    last_event_id,
    read_events,
    stored_answer,
    terminals,
    turn,
    typed_text,
)
from tests.ui_stream import DONE, parse_ui_chunks, types, ui_text


@pytest.fixture
async def pg_target(pg_url: str) -> StoreTarget:
    target = StoreTarget("postgresql", pg_url)
    await target.fetch("TRUNCATE threads, messages CASCADE")
    return target


@pytest.fixture
async def replicas(make_client, pg_target, redis_url, redis_prefix) -> tuple[Any, Any]:  # noqa: F811
    settings = {"database_url": pg_target.url, "redis_url": redis_url, "redis_key_prefix": redis_prefix,
                "resume_flush_interval": 0.02}
    return await make_client(**settings), await make_client(**settings)


async def test_resume_on_the_other_replica(replicas, fake_upstream):
    one, other = replicas
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.02))
    resp = await one.post("/ai/stream/chat", json=turn())
    answer_id = resp.headers["X-Answer-ID"]
    first = await read_events(resp, 5)
    resp.close()
    again = await other.get(f"/ai/stream/answers/{answer_id}", headers={"Last-Event-ID": last_event_id(first)})
    assert again.status == 200 and again.headers["X-Answer-ID"] == answer_id
    whole = joined(first, await again.read())
    assert typed_text(whole) == "".join(TOKENS)
    [done] = terminals(whole)
    assert done["type"] == "done" and done["message_id"] == answer_id
    answer = await stored_answer(other)
    assert (answer["status"], answer["content"]) == ("complete", "".join(TOKENS))
    # Ended: the other replica replays it whole, byte for byte as its producer would.
    assert await (await other.get(f"/ai/stream/answers/{answer_id}")).read() == \
        await (await one.get(f"/ai/stream/answers/{answer_id}")).read()
    assert (await other.get(f"/ai/stream/answers/{answer_id}", params={"after": str(len(TOKENS) + 1)})).status == 204


async def test_a_ui_chat_resumes_on_the_other_replica(replicas, fake_upstream):
    one, other = replicas
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.02))
    message = {"id": "q1", "role": "user", "parts": [{"type": "text", "text": "count"}]}
    resp = await one.post("/ai/ui/chat", json={"id": "ui-r", "messages": [message], "user_id": "ann"})
    await read_events(resp, 4)
    resp.close()
    again = await other.get("/ai/ui/chat/ui-r/stream", params={"user_id": "ann"})
    assert again.status == 200 and again.headers["x-vercel-ai-ui-message-stream"] == "v1"
    chunks = parse_ui_chunks(await again.read())
    assert types(chunks)[:2] == ["start", "start-step"] and chunks[0]["messageId"] == resp.headers["X-Answer-ID"]
    assert ui_text(chunks) == "".join(TOKENS) and chunks.count(DONE) == 1 and chunks[-1] == DONE
    assert (await other.get("/ai/ui/chat/ui-r/stream", params={"user_id": "ann"})).status == 204  # ended
    assert (await other.get("/ai/ui/chat/ui-r/stream")).status == 204  # another owner's chat


async def test_a_cancel_reaches_the_producing_replica(replicas, fake_upstream):
    one, other = replicas
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.05))
    resp = await one.post("/ai/stream/chat", json=turn())
    answer_id = resp.headers["X-Answer-ID"]
    first = await read_events(resp, 3)
    await asyncio.sleep(0.1)  # its copy is on Redis
    cancel = await other.post(f"/ai/stream/answers/{answer_id}/cancel")
    assert await cancel.json() == {"answer_id": answer_id, "cancelled": True}
    record = await fake_upstream.wait_for_disconnect(timeout=2.0)
    assert record.model == "claude-primary"
    whole = joined(first, await resp.read())
    [end] = terminals(whole)
    assert (end["type"], end["code"]) == ("error", "cancelled")
    answer = await stored_answer(other)
    assert (answer["status"], answer["content"]) == ("interrupted", typed_text(whole))
    again = await other.post(f"/ai/stream/answers/{answer_id}/cancel")
    assert await again.json() == {"answer_id": answer_id, "cancelled": False}


async def test_ownership_and_unknown_ids_hold_across_replicas(replicas, fake_upstream):
    one, other = replicas
    resp = await one.post("/ai/stream/chat", json=turn(user_id="ann"))
    await resp.read()
    url = f"/ai/stream/answers/{resp.headers['X-Answer-ID']}"
    await asyncio.sleep(0.1)
    for params in ({}, {"user_id": "bob"}):
        for stranger in (await other.get(url, params=params), await other.post(url + "/cancel", params=params)):
            assert stranger.status == 404 and (await stranger.json())["code"] == "not_found"
    assert (await other.get(url, params={"user_id": "ann"})).status == 200
    unknown = await other.get("/ai/stream/answers/msg_" + "0" * 32)
    assert unknown.status == 404 and (await unknown.json())["code"] == "not_found"


async def test_an_expired_answer_is_gone_from_redis_too(make_client, pg_target, redis_url, redis_prefix):  # noqa: F811
    settings = {"database_url": pg_target.url, "redis_url": redis_url, "redis_key_prefix": redis_prefix,
                "resume_retention": 0.5, "resume_flush_interval": 0.02}
    one, other = await make_client(**settings), await make_client(**settings)
    resp = await one.post("/ai/stream/chat", json=turn())
    await resp.read()
    url = f"/ai/stream/answers/{resp.headers['X-Answer-ID']}"
    await asyncio.sleep(0.1)
    assert (await other.get(url)).status == 200
    await asyncio.sleep(1.0)
    assert (await other.get(url)).status == 404
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.keys(redis_prefix + "answer:*") == []  # the keys expired with it
    finally:
        await client.aclose()


async def test_redis_stopped_mid_run(make_client, pg_target, fake_upstream, private_redis, redis_prefix):  # noqa: F811
    settings = {"database_url": pg_target.url, "redis_url": private_redis.url, "redis_key_prefix": redis_prefix,
                "redis_check_interval": 0.1, "resume_flush_interval": 0.02}
    one, other = await make_client(**settings), await make_client(**settings)
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.02))
    resp = await one.post("/ai/stream/chat", json=turn())
    answer_id = resp.headers["X-Answer-ID"]
    first = await read_events(resp, 3)
    private_redis.stop()
    # Streaming keeps working: this answer to its end, and new ones on either replica.
    whole = joined(first, await resp.read())
    assert typed_text(whole) == "".join(TOKENS) and terminals(whole)[0]["type"] == "done"
    fake_upstream.script("claude-primary", Scenario(tokens=["still", " here"]))
    for replica in (one, other):
        fresh = await replica.post("/ai/stream/chat", json=turn(thread_id="fresh"))
        assert typed_text(await fresh.read()) == "still here"
    # A resume that needs Redis says so; the replica holding the answer still serves it.
    for _ in range(50):
        elsewhere = await other.get(f"/ai/stream/answers/{answer_id}")
        if elsewhere.status == 503:
            break
        await elsewhere.read()
        await asyncio.sleep(0.05)
    assert elsewhere.status == 503 and elsewhere.headers["Retry-After"] == "1"
    assert (await elsewhere.json())["code"] == "resume_unavailable"
    cancel = await other.post(f"/ai/stream/answers/{answer_id}/cancel")
    assert cancel.status == 503
    assert (await (await one.get(f"/ai/stream/answers/{answer_id}")).read()) == whole
    health = await (await other.get("/health")).json()
    assert health["status"] == "degraded" and health["redis"] == {"configured": True, "ok": False}
    assert (await stored_answer(one))["status"] == "complete"
    # Redis back: the copy catches up, and the other replica resumes it again.
    private_redis.start()
    for _ in range(100):
        back = await other.get(f"/ai/stream/answers/{answer_id}")
        if back.status == 200:
            break
        await asyncio.sleep(0.05)
    assert back.status == 200 and await back.read() == whole


async def test_a_resume_from_the_middle_of_a_copied_batch(make_client, pg_target, fake_upstream, redis_url, redis_prefix):  # noqa: F811
    """A flush copies every event since the last one as one entry: a resume may start inside it."""
    settings = {"database_url": pg_target.url, "redis_url": redis_url, "redis_key_prefix": redis_prefix,
                "resume_flush_interval": 0.3}
    one, other = await make_client(**settings), await make_client(**settings)
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS))  # all of it before the first flush
    resp = await one.post("/ai/stream/chat", json=turn())
    whole = await resp.read()
    await asyncio.sleep(0.6)
    answer_id = resp.headers["X-Answer-ID"]
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.xlen(f"{redis_prefix}answer:{answer_id}:events") == 1  # one entry: the whole answer
    finally:
        await client.aclose()
    tail = await (await other.get(f"/ai/stream/answers/{answer_id}", params={"after": "7"})).read()
    assert whole.endswith(tail) and event_ids(tail)[0] == (answer_id, 8)
    assert typed_text(tail) == "".join(TOKENS[7:])
    assert await (await other.get(f"/ai/stream/answers/{answer_id}")).read() == whole


async def test_a_long_outage_keeps_no_ended_answer_in_memory(make_client, pg_target, fake_upstream, private_redis, redis_prefix):  # noqa: F811
    settings = {"database_url": pg_target.url, "redis_url": private_redis.url, "redis_key_prefix": redis_prefix,
                "redis_check_interval": 0.1, "resume_flush_interval": 0.02, "resume_retention": 0.3}
    client = await make_client(**settings)
    private_redis.stop()
    for n in range(3):
        resp = await client.post("/ai/stream/chat", json=turn(thread_id=f"down-{n}"))
        assert terminals(await resp.read())[0]["type"] == "done"  # answers go on without Redis
    mirror, logs = client.app[ANSWER_MIRROR], client.app[ANSWER_LOGS]
    for _ in range(200):  # waiting for Redis, the copies of ended answers last their retention only
        if not len(mirror) and not len(logs):
            break
        await asyncio.sleep(0.05)
    assert len(mirror) == 0
    assert len(client.app[ANSWER_LOGS]) == 0
