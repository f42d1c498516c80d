"""`/ai/ui/chat` as a Python client sees it: the UI message stream's exact bytes, the body
`useChat` sends, stored chats that follow the client, failures and restarts."""

from __future__ import annotations

import pytest

from tests.conftest import numbered
from tests.fake_upstream import Scenario
from tests.support.prompts import conversation
from tests.ui_stream import DONE, parse_ui_chunks, types, ui_text

USER = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}


def body(*messages, chat_id="chat-1", **extra):
    return {"id": chat_id, "messages": list(messages or [USER]), "trigger": "submit-message", **extra}


def user(id_, text):
    return {"id": id_, "role": "user", "parts": [{"type": "text", "text": text}]}


def assistant(id_, text):
    return {"id": id_, "role": "assistant", "parts": [{"type": "step-start"}, {"type": "text", "text": text, "state": "done"}]}


async def post(client, data):
    resp = await client.post("/ai/ui/chat", json=data)
    assert resp.status == 200, await resp.text()
    return resp, parse_ui_chunks(await resp.read())


@pytest.fixture
async def ui_client(make_client, store_target):
    return await make_client(database_url=store_target.url)


async def test_exact_bytes_and_headers(client):
    resp = await client.post("/ai/ui/chat", json=body(store=False))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert resp.headers["x-vercel-ai-ui-message-stream"] == "v1"
    raw = await resp.read()
    # The message id is the answer's id, which a resume names.
    message_id = resp.headers["X-Answer-ID"]
    assert raw == numbered(message_id, [
        b'data: {"type":"start","messageId":"%s"}\n\n',
        b'data: {"type":"start-step"}\n\n',
        b'data: {"type":"text-start","id":"text-1"}\n\n',
        b'data: {"type":"text-delta","id":"text-1","delta":"Hello"}\n\n',
        b'data: {"type":"text-delta","id":"text-1","delta":","}\n\n',
        b'data: {"type":"text-delta","id":"text-1","delta":" world"}\n\n',
        b'data: {"type":"text-delta","id":"text-1","delta":"!"}\n\n',
        b'data: {"type":"text-end","id":"text-1"}\n\n',
        b'data: {"type":"finish-step"}\n\n',
        b'data: {"type":"finish","finishReason":"stop","messageMetadata":{"model":"claude-primary",'
        b'"provider":"anthropic","usage":{"input_tokens":11,"output_tokens":4}}}\n\n',
        b"data: [DONE]\n\n",
    ])


async def test_stored_chat_sends_the_stored_id_and_lists_ui_messages(ui_client, fake_upstream):
    _, chunks = await post(ui_client, body(user_id="ann"))
    start, finish = chunks[0], chunks[-2]
    assert finish["messageMetadata"]["persisted"] is True
    resp = await ui_client.get("/ai/ui/chat/chat-1/messages", params={"user_id": "ann"})
    assert resp.status == 200
    stored = await resp.json()
    assert stored == [
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]},
        {"id": start["messageId"], "role": "assistant", "parts": [{"type": "text", "text": "Hello, world!"}],
         "metadata": {"model": "claude-primary", "provider": "anthropic",
                      "usage": {"input_tokens": 11, "output_tokens": 4}, "status": "complete"}},
    ]
    # Another user (or none) sees no such chat.
    assert (await ui_client.get("/ai/ui/chat/chat-1/messages")).status == 404


async def test_next_turn_replays_the_stored_thread_once(ui_client, fake_upstream):
    _, chunks = await post(ui_client, body())
    answer = assistant(chunks[0]["messageId"], ui_text(chunks))
    await post(ui_client, body(USER, answer, user("u2", "More")))
    sent = conversation(fake_upstream.requests[-1].body)
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "Hi"), ("assistant", "Hello, world!"), ("user", "More"),
    ]
    stored = await (await ui_client.get("/ai/ui/chat/chat-1/messages")).json()
    assert [m["id"] for m in stored][:3] == ["u1", chunks[0]["messageId"], "u2"] and len(stored) == 4


async def test_regenerate_replaces_the_named_answer(ui_client, fake_upstream):
    _, first = await post(ui_client, body())
    old = first[0]["messageId"]
    fake_upstream.script("claude-primary", Scenario(tokens=["Another"]))
    # A client that keeps the answer in its list and names it: the answer is given again in its place.
    data = body(USER, assistant(old, "Hello, world!"), trigger="regenerate-message", messageId=old)
    _, again = await post(ui_client, data)
    assert again[0]["messageId"] != old
    stored = await (await ui_client.get("/ai/ui/chat/chat-1/messages")).json()
    assert [(m["id"], m["parts"][0]["text"]) for m in stored] == [("u1", "Hi"), (again[0]["messageId"], "Another")]
    assert [m["role"] for m in conversation(fake_upstream.requests[-1].body)] == ["user"]


async def test_edited_message_makes_the_stored_thread_follow(ui_client, fake_upstream):
    _, first = await post(ui_client, body())
    await post(ui_client, body(USER, assistant(first[0]["messageId"], "Hello, world!"), user("u2", "Old question")))
    await post(ui_client, body(USER, assistant(first[0]["messageId"], "Hello, world!"), user("u2", "New question")))
    stored = await (await ui_client.get("/ai/ui/chat/chat-1/messages")).json()
    assert [m["parts"][0]["text"] for m in stored] == ["Hi", "Hello, world!", "New question", "Hello, world!"]
    assert "Old question" not in str(fake_upstream.requests[-1].body)


async def test_store_false_stores_nothing(ui_client, store_target):
    _, chunks = await post(ui_client, body(store=False))
    assert "persisted" not in chunks[-2]["messageMetadata"]
    assert (await ui_client.get("/ai/ui/chat/chat-1/messages")).status == 404
    assert await store_target.fetch("SELECT count(*) FROM messages") == [(0,)]


async def test_history_parts_other_than_text_are_ignored(client, fake_upstream):
    history = {"id": "a0", "role": "assistant", "parts": [
        {"type": "step-start"}, {"type": "reasoning", "text": "secret thoughts"}, {"type": "source-url", "url": "x"},
        {"type": "data-weather", "data": {"t": 1}}, {"type": "tool-search", "toolCallId": "1", "state": "output-available"},
        {"type": "text", "text": "Earlier answer"},
    ], "metadata": {"anything": True}}
    data = body(user("u0", "Earlier"), history, USER, store=False, unknown_option=1, system="Be brief")
    await post(client, {**data, "messages": [{"id": "s", "role": "system", "parts": [{"type": "text", "text": "Sys"}]}, *data["messages"]]})
    sent = fake_upstream.requests[-1].body
    assert [(m["role"], m["content"]) for m in conversation(sent)] == [
        ("user", "Earlier"), ("assistant", "Earlier answer"), ("user", "Hi"),
    ]
    assert "Be brief" in str(sent["system"]) and "Sys" in str(sent["system"])
    assert "secret thoughts" not in str(sent)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (body({"id": "u1", "role": "user", "parts": [{"type": "file", "mediaType": "image/png", "url": "data:,"}]}),
         "messages.0.parts.0", "file part"),
        (body({"id": "u1", "role": "user", "parts": [{"type": "text"}]}), "messages.0.parts.0.text", "required"),
        (body(USER, USER), "messages.1.id", "repeats"),
        (body({"id": "u1", "role": "user", "parts": [{"type": "step-start"}]}), "messages", "text part"),
        ({"messages": [USER]}, "id", "required"),
        (body(chat_id="no spaces"), "id", "id must be 1-128 letters"),
        (body(chat_id=7), "id", "id must be a string"),
        (body(trigger="resume-stream"), "trigger", "must be one of"),
        ({"id": "c", "messages": [{"id": "u1", "role": "user", "content": "Hi"}]}, "messages.0.parts", "required"),
        (body(store="no"), "store", "true or false"),
    ],
)
async def test_bad_bodies_are_400_before_any_upstream_call(client, fake_upstream, data, field, words):
    resp = await client.post("/ai/ui/chat", json=data)
    assert resp.status == 400
    error = await resp.json()
    assert error["code"] == "validation_error"
    assert field in [d["field"] for d in error["details"]], error
    assert words in error["error"]
    assert fake_upstream.requests == []


async def test_error_before_text(client, fake_upstream):
    for model in ("claude-primary", "claude-backup", "gpt-fallback"):
        fake_upstream.script(model, Scenario(kind="http_error", status=529))
    _, chunks = await post(client, body(store=False))
    assert types(chunks) == ["start", "start-step", "error", DONE]
    assert chunks[2]["errorText"].startswith("No model could answer (3 models tried).")
    assert "fake upstream error" not in str(chunks)


async def test_error_after_text_without_restart(ui_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="stream_error", after_tokens=2))
    _, chunks = await post(ui_client, body())
    assert types(chunks) == ["start", "start-step", "text-start", "text-delta", "text-delta", "error", DONE]
    assert len(fake_upstream.requests) == 1
    stored = await (await ui_client.get("/ai/ui/chat/chat-1/messages")).json()
    assert stored[1]["parts"] == [{"type": "text", "text": "Hello,"}] and stored[1]["metadata"]["status"] == "error"


async def test_fallback_before_text_names_the_answering_model(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529))
    _, chunks = await post(client, body(store=False))
    assert chunks[-2]["messageMetadata"]["model"] == "claude-backup"
    assert ui_text(chunks) == "Hello, world!"


async def test_restart_on_failure_resets_the_step_and_stores_the_final_answer(ui_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(tokens=["Broken", " start"], kind="drop", after_tokens=2))
    fake_upstream.script("claude-backup", Scenario(tokens=["Clean", " answer"]))
    _, chunks = await post(ui_client, body(restart_on_failure=True))
    assert types(chunks) == [
        "start", "start-step", "text-start", "text-delta", "text-delta", "reset-step",
        "text-start", "text-delta", "text-delta", "text-end", "finish-step", "finish", DONE,
    ]
    assert chunks[2]["id"] != chunks[6]["id"]  # a new part after the reset
    assert ui_text(chunks) == "Clean answer"
    assert chunks[-2]["messageMetadata"]["model"] == "claude-backup"
    stored = await (await ui_client.get("/ai/ui/chat/chat-1/messages")).json()
    assert stored[1]["parts"] == [{"type": "text", "text": "Clean answer"}]
    assert stored[1]["metadata"]["model"] == "claude-backup"


async def test_restart_when_no_model_can_take_over_keeps_the_text_and_errors(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="stream_error", after_tokens=1))
    for model in ("claude-backup", "gpt-fallback"):
        fake_upstream.script(model, Scenario(kind="http_error", status=503))
    _, chunks = await post(client, body(store=False, restart_on_failure=True))
    assert types(chunks) == ["start", "start-step", "text-start", "text-delta", "error", DONE]
    assert len(fake_upstream.requests) == 3


async def test_restart_is_off_by_default_and_on_with_the_setting(make_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="drop", after_tokens=1), Scenario())
    client = await make_client(restart_on_failure=True)
    _, chunks = await post(client, body(store=False))
    assert "reset-step" in types(chunks) and ui_text(chunks) == "Hello, world!"
    # The body's false wins over the setting.
    fake_upstream.script("claude-primary", Scenario(kind="drop", after_tokens=1))
    _, chunks = await post(client, body(store=False, restart_on_failure=False))
    assert types(chunks)[-2:] == ["error", DONE]


async def test_the_typed_chat_route_never_restarts(make_client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="drop", after_tokens=1))
    client = await make_client(restart_on_failure=True)
    resp = await client.post("/ai/stream/chat", json={"messages": [{"role": "user", "content": "x"}]})
    assert b'"type":"error"' in await resp.read() and len(fake_upstream.requests) == 1


async def test_api_keys_apply(make_client, fake_upstream):
    client = await make_client(api_keys="frontend:" + "k" * 20)
    assert (await client.post("/ai/ui/chat", json=body(store=False))).status == 401
    assert (await client.get("/ai/ui/chat/chat-1/messages")).status == 401
    resp = await client.post("/ai/ui/chat", json=body(store=False), headers={"Authorization": "Bearer " + "k" * 20})
    assert resp.status == 200 and parse_ui_chunks(await resp.read())[-1] == DONE
    assert "k" * 20 not in str(fake_upstream.requests[-1].headers)  # the client's key stays here
