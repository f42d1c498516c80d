"""Resumable answers within one process, at their limits: retention, abandonment, memory
bounds, shutdown, and the UI chat's resume for `useChat({ resume: true })`."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import ClientPayloadError

from service.app_keys import ANSWER_LOGS
from service.outcome import SHUTDOWN_MESSAGE
from tests.fake_upstream import Scenario
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

LONG = ["x" * 20 + f"{n:04d}" for n in range(300)]  # some 40 kB of events


async def test_an_ended_answer_is_forgotten_after_its_retention(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url, resume_retention=0.3)
    resp = await client.post("/ai/stream/chat", json=turn())
    await resp.read()
    url = f"/ai/stream/answers/{resp.headers['X-Answer-ID']}"
    assert (await client.get(url)).status == 200
    await asyncio.sleep(0.6)
    expired = await client.get(url)
    assert expired.status == 404 and (await expired.json())["code"] == "not_found"
    assert len(client.app[ANSWER_LOGS]) == 0  # and its memory is free


async def test_an_answer_nobody_reads_is_stopped_and_stored_interrupted(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url, resume_abandon_after=0.3)
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS * 5, token_delay=0.02))
    resp = await client.post("/ai/stream/chat", json=turn())
    await read_events(resp, 2)
    resp.close()
    record = await fake_upstream.wait_for_disconnect(timeout=2.0)  # the model's request is closed
    assert record.model == "claude-primary"
    answer = await stored_answer(client)
    assert answer["status"] == "interrupted" and answer["content"].startswith("t0 t1 ")
    # A later resume replays what was written and how it ended.
    again = await client.get(f"/ai/stream/answers/{resp.headers['X-Answer-ID']}")
    whole = await again.read()
    assert typed_text(whole) == answer["content"]
    [end] = terminals(whole)
    assert (end["type"], end["code"]) == ("error", "cancelled")


async def test_a_resume_in_time_keeps_the_answer_going(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url, resume_abandon_after=0.4)
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.03))
    resp = await client.post("/ai/stream/chat", json=turn())
    first = await read_events(resp, 2)
    resp.close()
    await asyncio.sleep(0.2)
    again = await client.get(f"/ai/stream/answers/{resp.headers['X-Answer-ID']}", headers={"Last-Event-ID": last_event_id(first)})
    whole = joined(first, await again.read())  # 1.2 s of answer, well past the abandon time
    assert typed_text(whole) == "".join(TOKENS) and terminals(whole)[0]["type"] == "done"
    assert fake_upstream.disconnects == []
    assert (await stored_answer(client))["status"] == "complete"


async def test_past_its_buffer_an_answer_is_resumable_only_near_its_end(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url, resume_buffer_bytes=4096)
    fake_upstream.script("claude-primary", Scenario(tokens=LONG, token_delay=0.002))
    resp = await client.post("/ai/stream/chat", json=turn())
    whole = await resp.read()  # its own reader kept up: it has everything
    assert typed_text(whole) == "".join(LONG)
    url = f"/ai/stream/answers/{resp.headers['X-Answer-ID']}"
    too_old = await client.get(url, params={"after": "0"})
    assert too_old.status == 410 and (await too_old.json())["code"] == "resume_gone"
    recent = await client.get(url, params={"after": str(len(LONG) - 5)})
    tail = await recent.read()
    assert whole.endswith(tail) and typed_text(tail) == "".join(LONG[-5:])
    kept = client.app[ANSWER_LOGS].get(resp.headers["X-Answer-ID"])
    assert kept is not None and kept.size <= 4096
    assert (await stored_answer(client))["content"] == "".join(LONG)  # storage is not bounded by it


async def test_past_the_total_the_oldest_ended_answers_go_first(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url, resume_buffer_bytes=8192, resume_max_bytes=16384)
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS * 5, token_delay=0.01), Scenario(tokens=LONG[:40]))
    live = await client.post("/ai/stream/chat", json=turn(thread_id="live"))
    first = await read_events(live, 2)
    ended = []
    for n in range(6):
        resp = await client.post("/ai/stream/chat", json=turn(thread_id=f"ended-{n}"))
        await resp.read()
        ended.append(resp.headers["X-Answer-ID"])
    logs = client.app[ANSWER_LOGS]
    assert logs.size <= 16384 + 8192  # within the total, but for the answer in progress
    statuses = [(await client.get(f"/ai/stream/answers/{answer_id}")).status for answer_id in ended]
    assert statuses[0] == 404 and statuses[-1] == 200  # the first to end went first
    assert statuses == sorted(statuses, key=lambda status: status == 200)  # ... in the order they ended
    # The answer in progress was never dropped: it streams to the end, and can be resumed.
    rest = await live.read()
    assert typed_text(joined(first, rest)) == "".join(TOKENS * 5)


async def test_shutdown_ends_a_detached_answer_and_stores_it(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url, shutdown_grace=0.2)
    fake_upstream.script("claude-primary", Scenario(tokens=["started ", "never"], kind="stall", after_tokens=1))
    resp = await client.post("/ai/stream/chat", json=turn())
    answer_id = resp.headers["X-Answer-ID"]
    await read_events(resp, 1)
    resp.close()
    reader = await client.get(f"/ai/stream/answers/{answer_id}")
    reading = asyncio.ensure_future(reader.read())
    await asyncio.sleep(0.05)
    await client.app.shutdown()
    whole = await asyncio.wait_for(reading, 10)
    [end] = terminals(whole)
    assert (end["type"], end["error"]) == ("error", SHUTDOWN_MESSAGE)
    for _ in range(100):  # the store write finishes before the store closes
        rows = await store_target.fetch(f"SELECT status, content FROM messages WHERE id = '{answer_id}'")
        if rows[0][0] != "pending":
            break
        await asyncio.sleep(0.02)
    assert rows == [("error", "started ")]


def ui_turn(chat_id="ui-1", **extra):
    message = {"id": "q1", "role": "user", "parts": [{"type": "text", "text": "count"}]}
    return {"id": chat_id, "messages": [message], "trigger": "submit-message", **extra}


async def test_a_ui_chat_answer_in_progress_is_replayed_from_its_start(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url)
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.02))
    assert (await client.get("/ai/ui/chat/ui-1/stream")).status == 204  # nothing in progress
    resp = await client.post("/ai/ui/chat", json=ui_turn(user_id="ann"))
    await read_events(resp, 4)
    resp.close()  # the page is reloaded
    assert (await client.get("/ai/ui/chat/ui-1/stream")).status == 204  # not this owner's chat
    again = await client.get("/ai/ui/chat/ui-1/stream", params={"user_id": "ann"})
    assert again.status == 200 and again.headers["x-vercel-ai-ui-message-stream"] == "v1"
    chunks = parse_ui_chunks(await again.read())
    assert types(chunks)[:3] == ["start", "start-step", "text-start"] and chunks[-1] == DONE
    assert chunks[0]["messageId"] == resp.headers["X-Answer-ID"]
    assert ui_text(chunks) == "".join(TOKENS) and types(chunks).count("finish") == 1
    # Ended: no active answer any more.
    assert (await client.get("/ai/ui/chat/ui-1/stream", params={"user_id": "ann"})).status == 204
    assert (await client.get("/ai/ui/chat/no%20such/stream")).status == 404


async def test_a_typed_answer_on_a_thread_is_not_a_ui_chat_answer(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url)
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.02))
    resp = await client.post("/ai/stream/chat", json=turn(thread_id="ui-2"))
    await read_events(resp, 1)
    assert (await client.get("/ai/ui/chat/ui-2/stream")).status == 204  # its events are not UI chunks
    await resp.read()


@pytest.mark.parametrize("store", [True, False])
async def test_a_ui_answer_resumes_by_its_id_too(make_client, store_target, fake_upstream, store):
    client = await make_client(database_url=store_target.url)
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.01))
    body = ui_turn(store=store, **({} if store else {"resumable": True}))
    resp = await client.post("/ai/ui/chat", json=body)
    first = await read_events(resp, 5)
    resp.close()
    again = await client.get(f"/ai/stream/answers/{resp.headers['X-Answer-ID']}", headers={"Last-Event-ID": last_event_id(first)})
    chunks = parse_ui_chunks(joined(first, await again.read()))
    assert ui_text(chunks) == "".join(TOKENS) and chunks.count(DONE) == 1 and chunks[-1] == DONE


async def test_a_reader_further_behind_than_the_buffer_is_cut_off(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url, resume_buffer_bytes=4096)
    fake_upstream.script("claude-primary", Scenario(tokens=LONG, one_write=True))  # a burst: 40 kB at once
    resp = await client.post("/ai/stream/chat", json=turn())
    with pytest.raises(ClientPayloadError):  # cut off: no terminal event, no clean end of the body
        await resp.read()
    # The answer itself went on; what the reader missed is no longer kept.
    answer = await stored_answer(client)
    assert (answer["status"], answer["content"]) == ("complete", "".join(LONG))
    gone = await client.get(f"/ai/stream/answers/{resp.headers['X-Answer-ID']}", params={"after": "1"})
    assert gone.status == 410
