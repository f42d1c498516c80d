"""Conversations over HTTP, on both stores: history replay, ownership, paging, delete, answers
that end badly, concurrent turns and a database that goes away."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import parse_events
from tests.fake_upstream import Scenario
from tests.storage_fixtures import TcpProxy, with_address
from tests.support.prompts import conversation


def turn(content, thread_id="t-1", **extra):
    return {"messages": [{"role": "user", "content": content}], "thread_id": thread_id, **extra}


async def chat(client, body):
    resp = await client.post("/ai/stream/chat", json=body)
    assert resp.status == 200, await resp.text()
    return parse_events(await resp.read())


async def messages(client, thread_id="t-1", **params):
    resp = await client.get(f"/ai/threads/{thread_id}/messages", params=params)
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.fixture
async def thread_client(make_client, store_target):
    return await make_client(database_url=store_target.url)


async def test_history_is_replayed_before_the_new_turn(thread_client, fake_upstream):
    first = await chat(thread_client, turn("My name is Ada."))
    assert first[-1]["type"] == "done" and first[-1]["persisted"] is True
    assert first[-1]["message_id"].startswith("msg_")
    await chat(thread_client, turn("What is my name?"))
    sent = conversation(fake_upstream.requests_for("claude-primary")[1].body)
    assert sent == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello, world!"},
        {"role": "user", "content": "What is my name?"},
    ]


async def test_messages_are_listed_oldest_first(thread_client, fake_upstream):
    done = (await chat(thread_client, turn("Hi there")))[-1]
    page = await messages(thread_client)
    assert page["thread_id"] == "t-1" and page["has_more"] is False
    user, assistant = page["messages"]
    assert (user["role"], user["content"], user["status"]) == ("user", "Hi there", "complete")
    assert assistant["id"] == done["message_id"]
    assert (assistant["role"], assistant["content"], assistant["status"]) == ("assistant", "Hello, world!", "complete")
    assert (assistant["model"], assistant["provider"], assistant["stop_reason"]) == ("claude-primary", "anthropic", "end_turn")
    assert assistant["usage"] == {"input_tokens": 11, "output_tokens": 4}
    assert assistant["created_at"].endswith("Z") and assistant["created_at"] >= user["created_at"]


async def test_history_limit_keeps_the_newest_and_starts_at_a_user_turn(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url, history_limit=3)
    for n in range(3):
        await chat(client, turn(f"question {n}"))
    await chat(client, turn("question 3"))
    sent = conversation(fake_upstream.requests_for("claude-primary")[-1].body)
    # The newest 3 stored are answer 1, question 2, answer 2; the window starts at question 2.
    assert [m["content"] for m in sent] == ["question 2", "Hello, world!", "question 3"]


async def test_thread_owned_by_a_user_is_invisible_to_others(thread_client, fake_upstream):
    await chat(thread_client, turn("secret plan", user_id="alice"))
    for user in ("bob", None):
        params = {"user_id": user} if user else {}
        assert (await thread_client.get("/ai/threads/t-1/messages", params=params)).status == 404
        assert (await thread_client.delete("/ai/threads/t-1", params=params)).status == 404
    assert len(fake_upstream.requests) == 1
    page = await messages(thread_client, user_id="alice")
    assert [m["content"] for m in page["messages"]] == ["secret plan", "Hello, world!"]


async def test_thread_ids_are_namespaced_by_owner(thread_client, fake_upstream):
    # Another owner using the same id gets a thread of its own: it can neither read, block nor
    # probe for alice's (a 404 for "taken" would tell it the id is in use).
    await chat(thread_client, turn("secret plan", user_id="alice"))
    await chat(thread_client, turn("let me in", user_id="bob"))
    sent = conversation(fake_upstream.requests_for("claude-primary")[1].body)
    assert sent == [{"role": "user", "content": "let me in"}]
    bobs = await messages(thread_client, user_id="bob")
    assert [m["content"] for m in bobs["messages"]] == ["let me in", "Hello, world!"]
    alices = await messages(thread_client, user_id="alice")
    assert [m["content"] for m in alices["messages"]] == ["secret plan", "Hello, world!"]
    assert (await thread_client.delete("/ai/threads/t-1", params={"user_id": "bob"})).status == 204
    assert len((await messages(thread_client, user_id="alice"))["messages"]) == 2


async def test_paging_with_limit_and_before(thread_client):
    for n in range(3):
        await chat(thread_client, turn(f"q{n}"))
    page = await messages(thread_client, limit=2)
    assert [m["content"] for m in page["messages"]] == ["q2", "Hello, world!"]
    assert page["has_more"] is True
    older = await messages(thread_client, limit=3, before=page["next_before"])
    assert [m["content"] for m in older["messages"]] == ["Hello, world!", "q1", "Hello, world!"]
    oldest = await messages(thread_client, limit=3, before=older["next_before"])
    assert [m["content"] for m in oldest["messages"]] == ["q0"]
    assert oldest["has_more"] is False and oldest["next_before"] is None


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "201"}, {"limit": "ten"}, {"limit": "²"}, {"limit": "５"}, {"limit": "-1"}, {"before": "msg_nope"}, {"user_id": ""}],
)
async def test_bad_paging_parameters_are_400(thread_client, params):
    await chat(thread_client, turn("hello"))
    resp = await thread_client.get("/ai/threads/t-1/messages", params=params)
    assert resp.status == 400
    assert (await resp.json())["code"] == "validation_error"


async def test_unknown_thread_is_404(thread_client):
    for path in ("/ai/threads/nope/messages", "/ai/threads/bad%20id/messages"):
        resp = await thread_client.get(path)
        assert resp.status == 404 and (await resp.json())["code"] == "not_found"
    assert (await thread_client.delete("/ai/threads/nope")).status == 404


async def test_delete_removes_the_thread(thread_client, store_target):
    await chat(thread_client, turn("forget me"))
    resp = await thread_client.delete("/ai/threads/t-1")
    assert resp.status == 204
    assert (await thread_client.get("/ai/threads/t-1/messages")).status == 404
    assert (await thread_client.delete("/ai/threads/t-1")).status == 404
    assert await store_target.fetch("SELECT count(*) FROM messages") == [(0,)]


async def test_failed_stream_keeps_partial_text_with_error_status(thread_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="stream_error", after_tokens=2))
    events = await chat(thread_client, turn("hi"))
    assert events[-1]["type"] == "error"
    assistant = (await messages(thread_client))["messages"][1]
    assert (assistant["content"], assistant["status"]) == ("Hello,", "error")


async def test_answer_that_never_started_is_stored_empty_and_not_replayed(thread_client, fake_upstream):
    for model in ("claude-primary", "claude-backup", "gpt-fallback"):
        fake_upstream.script(model, Scenario(kind="http_error", status=529))
    await chat(thread_client, turn("first"))
    assert [(m["content"], m["status"]) for m in (await messages(thread_client))["messages"]] == [
        ("first", "complete"),
        ("", "error"),
    ]
    fake_upstream.reset()
    await chat(thread_client, turn("second"))
    sent = conversation(fake_upstream.requests_for("claude-primary")[0].body)
    # The question that got no answer is not replayed: never two user turns in a row.
    assert [(m["role"], m["content"]) for m in sent] == [("user", "second")]


async def test_client_gone_keeps_partial_text_as_interrupted(thread_client, fake_upstream):
    # Not resumable: the answer ends with its client, as it always did (see tests/test_resume.py).
    fake_upstream.script("claude-primary", Scenario(tokens=["one ", "two ", "three"], token_delay=0.3))
    resp = await thread_client.post("/ai/stream/chat", json=turn("count", resumable=False))
    assert (await resp.content.readuntil(b"\n\n")).endswith(b'data: {"type":"content","text":"one ","answer_id":"'
                                                            + resp.headers["X-Answer-ID"].encode() + b'"}\n\n')
    resp.close()
    await fake_upstream.wait_for_disconnect(timeout=1.0)
    for _ in range(100):
        assistant = (await messages(thread_client))["messages"][1]
        if assistant["status"] != "pending":
            break
        await asyncio.sleep(0.02)
    assert (assistant["status"], assistant["content"]) == ("interrupted", "one ")


async def test_stream_false_is_stored_too(thread_client):
    resp = await thread_client.post("/ai/stream/chat", json=turn("hi", stream=False))
    body = await resp.json()
    assert body["text"] == "Hello, world!" and body["persisted"] is True
    assert (await messages(thread_client))["messages"][1]["id"] == body["message_id"]


async def test_without_thread_id_nothing_is_stored(thread_client, store_target):
    await chat(thread_client, {"messages": [{"role": "user", "content": "ephemeral"}]})
    assert await store_target.fetch("SELECT count(*) FROM messages") == [(0,)]


async def test_concurrent_turns_on_one_thread_never_interleave(thread_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(tokens=["a", "b"], token_delay=0.01))
    results = await asyncio.gather(*(chat(thread_client, turn(f"q{n}")) for n in range(12)))
    assert all(r[-1]["type"] == "done" and r[-1]["persisted"] for r in results)
    stored = (await messages(thread_client, limit=200))["messages"]
    assert len(stored) == 24
    assert sorted(m["content"] for m in stored[::2]) == sorted(f"q{n}" for n in range(12))
    # Each question is followed by its own answer.
    answer_ids = {r[-1]["message_id"] for r in results}
    assert [m["role"] for m in stored] == ["user", "assistant"] * 12
    assert {m["id"] for m in stored[1::2]} == answer_ids
    assert all(m["status"] == "complete" and m["content"] == "ab" for m in stored[1::2])


async def test_health_reports_storage(thread_client, store_target):
    body = await (await thread_client.get("/health")).json()
    assert body["storage"] == {"backend": store_target.backend, "ok": True}
    assert body["status"] == "ok"


async def test_default_store_is_an_embedded_sqlite_file(client, tmp_path):
    body = await (await client.get("/health")).json()
    assert body["storage"] == {"backend": "sqlite", "ok": True}
    await chat(client, turn("saved"))
    assert (tmp_path / "data" / "ai-stream.db").is_file()


# A database that goes away: PostgreSQL behind a proxy that can be stopped.


@pytest.fixture
async def pg_proxy(pg_url):
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    yield proxy, with_address(pg_url, "127.0.0.1", proxy.port)
    await proxy.stop()


async def test_store_down_refuses_threads_but_keeps_streaming(make_client, pg_proxy, fake_upstream):
    proxy, url = pg_proxy
    client = await make_client(database_url=url, storage_check_interval=0.1)
    await chat(client, turn("before the outage"))
    await proxy.stop()

    resp = await client.post("/ai/stream/chat", json=turn("during the outage"))
    assert resp.status == 503
    body = await resp.json()
    assert body["code"] == "storage_unavailable" and "5432" not in body["error"]
    assert resp.headers["Retry-After"] == "5"
    assert len(fake_upstream.requests) == 1  # never sent upstream: it would be forgotten

    events = await chat(client, {"messages": [{"role": "user", "content": "no thread"}]})
    assert events[-1]["type"] == "done"
    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded" and health["storage"]["ok"] is False

    await proxy.start()
    await asyncio.sleep(0.3)
    assert (await (await client.get("/health")).json())["storage"]["ok"] is True
    events = await chat(client, turn("after the outage"))
    assert events[-1]["persisted"] is True
    contents = [m["content"] for m in (await messages(client))["messages"]]
    assert contents == ["before the outage", "Hello, world!", "after the outage", "Hello, world!"]


async def test_answer_that_cannot_be_stored_says_persisted_false(make_client, pg_proxy, fake_upstream):
    proxy, url = pg_proxy
    client = await make_client(database_url=url, request_timeout=1.0)
    fake_upstream.script("claude-primary", Scenario(tokens=["slow", " answer"], token_delay=0.2))
    resp = await client.post("/ai/stream/chat", json=turn("hello"))
    await resp.content.readuntil(b"\n\n")
    await proxy.stop()  # the database goes away while the answer streams
    events = parse_events(await resp.read())
    assert events[-1]["type"] == "done"
    assert events[-1]["persisted"] is False and events[-1]["message_id"].startswith("msg_")


async def test_store_down_at_start_recovers(make_client, pg_url, fake_upstream):
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    url = with_address(pg_url, "127.0.0.1", proxy.port)
    await proxy.stop()
    try:
        client = await make_client(database_url=url, storage_check_interval=0.1)
        assert (await (await client.get("/health")).json())["storage"]["ok"] is False
        assert (await client.post("/ai/stream/chat", json=turn("x"))).status == 503
        await proxy.start()
        await asyncio.sleep(0.3)
        assert (await (await client.get("/health")).json())["storage"]["ok"] is True
        assert (await chat(client, turn("x")))[-1]["persisted"] is True
    finally:
        await proxy.stop()


async def test_thread_deleted_while_answering_says_persisted_false(thread_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(tokens=["slow", " answer"], token_delay=0.2))
    resp = await thread_client.post("/ai/stream/chat", json=turn("hello", thread_id="gone"))
    await resp.content.readuntil(b"\n\n")
    assert (await thread_client.delete("/ai/threads/gone")).status == 204
    events = parse_events(await resp.read())
    assert events[-1]["type"] == "done" and events[-1]["persisted"] is False
    assert (await thread_client.get("/ai/threads/gone/messages")).status == 404
