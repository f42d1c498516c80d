"""Resumable answers within one process: a client drops the connection, the answer goes on, a
resume with `Last-Event-ID` (or `?after=`) gets exactly what it missed and the live rest;
cancel, ownership, unknown ids, and the answers that stay as they always were."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import event_ids, parse_events
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

FRONTEND_KEY = "fe-0123456789abcdef-secret"
BATCH_KEY = "batch-0123456789abcdef-secret"


@pytest.fixture
async def resume_client(make_client, store_target):
    return await make_client(database_url=store_target.url)


async def test_drop_then_resume_gets_exactly_the_rest(resume_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.02))
    resp = await resume_client.post("/ai/stream/chat", json=turn())
    answer_id = resp.headers["X-Answer-ID"]
    first = await read_events(resp, 5)
    resp.close()  # the network goes away
    await asyncio.sleep(0.15)  # the answer goes on meanwhile
    assert fake_upstream.disconnects == []
    again = await resume_client.get(f"/ai/stream/answers/{answer_id}", headers={"Last-Event-ID": last_event_id(first)})
    assert again.status == 200 and again.headers["X-Answer-ID"] == answer_id
    assert again.headers["Content-Type"] == "text/event-stream"
    rest = await again.read()
    whole = joined(first, rest)
    assert typed_text(whole) == "".join(TOKENS)
    [done] = terminals(whole)
    assert done["type"] == "done" and done["answer_id"] == answer_id and done["message_id"] == answer_id
    assert parse_events(whole)[0]["answer_id"] == answer_id  # the first event names the answer
    answer = await stored_answer(resume_client)
    assert (answer["id"], answer["status"], answer["content"]) == (answer_id, "complete", "".join(TOKENS))


async def test_resume_with_after_and_of_an_ended_answer(resume_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(tokens=["a", "b", "c"]))
    resp = await resume_client.post("/ai/stream/chat", json=turn())
    whole = await resp.read()
    answer_id = resp.headers["X-Answer-ID"]
    ids = event_ids(whole)
    # Ended: still replayable, from anywhere, in the same bytes.
    replay = await (await resume_client.get(f"/ai/stream/answers/{answer_id}", params={"after": "0"})).read()
    assert replay == whole
    tail = await (await resume_client.get(f"/ai/stream/answers/{answer_id}", params={"after": "2"})).read()
    assert whole.endswith(tail) and event_ids(tail)[0] == (answer_id, 3)
    # Last-Event-ID wins over ?after=; a bare sequence number is accepted too.
    header = await resume_client.get(f"/ai/stream/answers/{answer_id}?after=0", headers={"Last-Event-ID": "3"})
    assert await header.read() == tail[tail.index(b"id: %s:4" % answer_id.encode()):]
    # The client has the terminal event already: nothing follows, and an EventSource stops.
    done = await resume_client.get(f"/ai/stream/answers/{answer_id}", headers={"Last-Event-ID": f"{answer_id}:{ids[-1][1]}"})
    assert done.status == 204


@pytest.mark.parametrize(("headers", "query", "field"), [
    ({"Last-Event-ID": "msg_" + "f" * 32 + ":3"}, {}, "Last-Event-ID"),  # another answer's id
    ({"Last-Event-ID": "three"}, {}, "Last-Event-ID"),
    ({}, {"after": "-1"}, "after"),
    ({}, {"after": "99"}, "after"),  # past the last event
])
async def test_a_bad_position_is_a_400(resume_client, fake_upstream, headers, query, field):
    resp = await resume_client.post("/ai/stream/chat", json=turn())
    await resp.read()
    again = await resume_client.get(f"/ai/stream/answers/{resp.headers['X-Answer-ID']}", headers=headers, params=query)
    assert again.status == 400
    body = await again.json()
    assert body["code"] == "validation_error" and body["details"][0]["field"] == field


@pytest.mark.parametrize("answer_id", ["msg_" + "0" * 32, "nope", "msg_" + "A" * 32])
async def test_unknown_answers_are_404_json(resume_client, answer_id):
    for resp in (await resume_client.get(f"/ai/stream/answers/{answer_id}"),
                 await resume_client.post(f"/ai/stream/answers/{answer_id}/cancel")):
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"


async def test_only_the_owner_resumes_or_cancels(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url, api_keys=f"frontend:{FRONTEND_KEY},batch:{BATCH_KEY}")
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.02))
    owner = {"Authorization": f"Bearer {FRONTEND_KEY}"}
    resp = await client.post("/ai/stream/chat", json=turn(user_id="ann"), headers=owner)
    answer_id = resp.headers["X-Answer-ID"]
    url = f"/ai/stream/answers/{answer_id}"
    strangers = [
        (owner, {}),  # no user_id: another owner
        (owner, {"user_id": "bob"}),
        ({"Authorization": f"Bearer {BATCH_KEY}"}, {"user_id": "ann"}),  # another key
    ]
    for headers, params in strangers:
        for stranger in (await client.get(url, headers=headers, params=params),
                         await client.post(url + "/cancel", headers=headers, params=params)):
            assert stranger.status == 404, await stranger.text()
            assert (await stranger.json())["code"] == "not_found"
    assert (await client.get(url)).status == 401  # no key at all
    mine = await client.get(url, headers=owner, params={"user_id": "ann"})
    assert mine.status == 200
    assert typed_text(await mine.read()) == "".join(TOKENS)
    await resp.read()


async def test_cancel_stops_the_answer_and_stores_it_interrupted(resume_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.05))
    resp = await resume_client.post("/ai/stream/chat", json=turn())
    answer_id = resp.headers["X-Answer-ID"]
    first = await read_events(resp, 3)
    cancel = await resume_client.post(f"/ai/stream/answers/{answer_id}/cancel")
    assert cancel.status == 200
    assert await cancel.json() == {"answer_id": answer_id, "cancelled": True}
    record = await fake_upstream.wait_for_disconnect(timeout=1.0)  # the model's request is closed
    assert record.model == "claude-primary"
    whole = joined(first, await resp.read())  # the reader hears how it ended, once
    [end] = terminals(whole)
    assert (end["type"], end["code"], end["answer_id"]) == ("error", "cancelled", answer_id)
    answer = await stored_answer(resume_client)
    assert answer["status"] == "interrupted"
    assert answer["content"] == typed_text(whole) and answer["content"].startswith("t0 t1 t2 ")
    # Already ended: nothing to stop.
    again = await resume_client.post(f"/ai/stream/answers/{answer_id}/cancel")
    assert await again.json() == {"answer_id": answer_id, "cancelled": False}


async def test_resumable_on_request_without_a_thread(resume_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.01))
    resp = await resume_client.post("/ai/stream/generate", json={"prompt": "x", "resumable": True})
    answer_id = resp.headers["X-Answer-ID"]
    first = await read_events(resp, 2)
    resp.close()
    again = await resume_client.get(f"/ai/stream/answers/{answer_id}", headers={"Last-Event-ID": last_event_id(first)})
    whole = joined(first, await again.read())
    assert typed_text(whole) == "".join(TOKENS) and terminals(whole)[0]["type"] == "done"


@pytest.mark.parametrize(("path", "body"), [
    ("/ai/stream/generate", {"prompt": "x"}),
    ("/ai/stream/chat", {"messages": [{"role": "user", "content": "x"}]}),
    ("/ai/stream/chat", turn(resumable=False)),
])
async def test_answers_that_are_not_resumable_end_with_their_client(resume_client, fake_upstream, path, body):
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.05))
    resp = await resume_client.post(path, json=body)
    answer_id = resp.headers["X-Answer-ID"]  # named all the same
    await read_events(resp, 1)
    resp.close()
    await fake_upstream.wait_for_disconnect(timeout=1.0)
    assert (await resume_client.get(f"/ai/stream/answers/{answer_id}")).status == 404


@pytest.mark.parametrize("body", [
    {"prompt": "x", "resumable": True, "stream": False},
    {"prompt": "x", "resumable": "yes"},
])
async def test_resumable_is_validated(resume_client, fake_upstream, body):
    resp = await resume_client.post("/ai/stream/generate", json=body)
    assert resp.status == 400
    error = await resp.json()
    assert error["code"] == "validation_error" and error["details"][0]["field"] == "resumable"
    assert fake_upstream.requests == []


async def test_several_readers_at_once_each_get_the_whole_answer(resume_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.01))
    resp = await resume_client.post("/ai/stream/chat", json=turn())
    url = f"/ai/stream/answers/{resp.headers['X-Answer-ID']}"
    readers = [await resume_client.get(url) for _ in range(3)]
    bodies = await asyncio.gather(resp.read(), *(reader.read() for reader in readers))
    assert all(body == bodies[0] for body in bodies) and typed_text(bodies[0]) == "".join(TOKENS)


async def test_browsers_may_resume_from_another_origin(make_client, store_target, fake_upstream):
    """CORS: the answer id is readable by the page's script, and a resume may send Last-Event-ID."""
    client = await make_client(database_url=store_target.url, cors_origins="https://app.example.com")
    origin = {"Origin": "https://app.example.com"}
    resp = await client.post("/ai/stream/chat", json=turn(), headers=origin)
    assert "X-Answer-ID" in resp.headers["Access-Control-Expose-Headers"]
    await resp.read()
    url = f"/ai/stream/answers/{resp.headers['X-Answer-ID']}"
    preflight = await client.options(url, headers={**origin, "Access-Control-Request-Method": "GET",
                                                   "Access-Control-Request-Headers": "last-event-id"})
    assert preflight.status == 200
    assert "last-event-id" in preflight.headers["Access-Control-Allow-Headers"].lower()
    cancel = await client.options(url + "/cancel", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert cancel.status == 200
