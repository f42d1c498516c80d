"""The event stream as a client sees it: exact bytes, headers, timing and the request sent upstream."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from zoneinfo import ZoneInfo

from tests.conftest import numbered, parse_events
from tests.fake_upstream import Scenario

EXPECTED_ANTHROPIC_EVENTS = [
    b'data: {"type":"content","text":"Hello","answer_id":"%s"}\n\n',
    b'data: {"type":"content","text":","}\n\n',
    b'data: {"type":"content","text":" world"}\n\n',
    b'data: {"type":"content","text":"!"}\n\n',
    b'data: {"type":"done","model":"claude-primary","provider":"anthropic","stop_reason":"end_turn",'
    b'"usage":{"input_tokens":11,"output_tokens":4},"answer_id":"%s"}\n\n',
]


async def test_generate_stream_exact_bytes_and_headers(client):
    resp = await client.post("/ai/stream/generate", json={"prompt": "Say hello"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["Connection"] == "keep-alive"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert len(resp.headers["X-Request-ID"]) == 32
    answer_id = resp.headers["X-Answer-ID"]
    assert re.fullmatch(r"msg_[0-9a-f]{32}", answer_id)
    assert await resp.read() == numbered(answer_id, EXPECTED_ANTHROPIC_EVENTS)


async def test_chat_through_openai_compatible_model_exact_bytes(client, fake_upstream):
    fake_upstream.script("gpt-fallback", Scenario(tokens=["Ça", " va", " 👍"], input_tokens=7, stop_reason="max_tokens"))
    resp = await client.post(
        "/ai/stream/chat",
        json={"messages": [{"role": "user", "content": "Hi"}], "model": "openai/gpt-fallback"},
    )
    assert await resp.read() == numbered(resp.headers["X-Answer-ID"], [
        'data: {"type":"content","text":"Ça","answer_id":"%s"}\n\n'.encode(),
        b'data: {"type":"content","text":" va"}\n\n',
        'data: {"type":"content","text":" 👍"}\n\n'.encode(),
        b'data: {"type":"done","model":"gpt-fallback","provider":"openai","stop_reason":"max_tokens",'
        b'"usage":{"input_tokens":7,"output_tokens":3},"answer_id":"%s"}\n\n',
    ])
    sent = fake_upstream.requests_for("gpt-fallback")[0].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 1024
    # The date context follows the question (after the stable prefix), as text for OpenAI-compatible servers.
    [question] = sent["messages"]
    assert question["role"] == "user" and question["content"].startswith("Hi\n\nCurrent date and time: ")


async def test_text_with_newlines_and_quotes_stays_one_data_line(client, fake_upstream):
    tokens = ["line one\nline two", ' "quoted" \\ ', "\r\n\u2028end"]
    fake_upstream.script("claude-primary", Scenario(tokens=tokens))
    events = parse_events(await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read())
    assert [e["text"] for e in events if e["type"] == "content"] == tokens


async def test_request_id_is_echoed_when_sane_and_replaced_when_not(client):
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"}, headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    await resp.read()
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"}, headers={"X-Request-ID": "bad id\twith tab"})
    assert resp.headers["X-Request-ID"] != "bad id\twith tab" and len(resp.headers["X-Request-ID"]) == 32
    await resp.read()


async def test_tokens_arrive_as_generated_not_buffered(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(tokens=["a", "b", "c", "d"], token_delay=0.3))
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
    # Headers are out before any text exists upstream.
    assert resp.status == 200
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 1.0)
    assert first == numbered(resp.headers["X-Answer-ID"], [b'data: {"type":"content","text":"a","answer_id":"%s"}\n\n'])
    # The upstream is still producing the rest while the first token is already here.
    assert fake_upstream.active_streams == 1
    rest = parse_events(await resp.read())
    assert [e.get("text") for e in rest] == ["b", "c", "d", None]


async def test_keepalive_comments_while_upstream_is_silent(make_client, fake_upstream):
    client = await make_client(keepalive_interval=0.1)
    fake_upstream.script("claude-primary", Scenario(first_token_delay=0.45))
    body = await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read()
    assert body.startswith(b": ping\n\n")
    assert body.count(b": ping\n\n") >= 2
    events = parse_events(body)
    assert events[-1]["type"] == "done" and "".join(e.get("text", "") for e in events) == "Hello, world!"


async def test_stream_false_returns_one_json_answer(client):
    resp = await client.post("/ai/stream/generate", json={"prompt": "x", "stream": False})
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == {
        "text": "Hello, world!",
        "model": "claude-primary",
        "provider": "anthropic",
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 11, "output_tokens": 4},
    }
    assert "X-Request-ID" in resp.headers


async def test_stream_false_falls_back_too(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529))
    resp = await client.post("/ai/stream/chat", json={"messages": [{"role": "user", "content": "x"}], "stream": False})
    assert resp.status == 200
    assert (await resp.json())["model"] == "claude-backup"


def date_block(body):
    """The date context of a Messages request: the last block of its last user message."""
    content = body["messages"][-1]["content"]
    assert isinstance(content, list) and content[-1]["type"] == "text", content
    return content[-1]["text"]


async def test_date_context_in_requested_zone_and_caller_system_kept(client, fake_upstream):
    resp = await client.post(
        "/ai/stream/generate",
        json={"prompt": "What day is it?", "system_prompt": "You are terse.", "timezone": "Asia/Tokyo"},
    )
    await resp.read()
    body = fake_upstream.requests_for("claude-primary")[0].body
    # The caller's system prompt is sent as it is: what changes (the time) comes after the stable prefix.
    assert body["system"] == "You are terse."
    assert body["messages"][0]["content"][0] == {"type": "text", "text": "What day is it?"}
    context = date_block(body)
    today = datetime.now(ZoneInfo("Asia/Tokyo"))
    assert context.startswith("Current date and time: ")
    assert "Asia/Tokyo" in context and "UTC+09:00" in context
    assert today.strftime("%Y-%m-%d") in context and today.strftime("%A") in context


async def test_date_context_defaults_to_configured_zone(make_client, fake_upstream):
    client = await make_client(default_timezone="America/New_York")
    await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read()
    body = fake_upstream.requests_for("claude-primary")[0].body
    assert "system" not in body
    context = date_block(body)
    assert "America/New_York" in context
    assert datetime.now(ZoneInfo("America/New_York")).strftime("%Y-%m-%d") in context


async def test_date_context_can_be_turned_off(make_client, fake_upstream):
    client = await make_client(date_context=False)
    await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read()
    body = fake_upstream.requests_for("claude-primary")[0].body
    assert "system" not in body and body["messages"] == [{"role": "user", "content": "x"}]
    await (await client.post("/ai/stream/generate", json={"prompt": "x", "system_prompt": "Be kind."})).read()
    assert fake_upstream.requests_for("claude-primary")[1].body["system"] == "Be kind."


async def test_chat_folds_system_messages_and_passes_parameters(client, fake_upstream):
    resp = await client.post(
        "/ai/stream/chat",
        json={
            "system": "Rule one.",
            "messages": [
                {"role": "system", "content": "Rule two."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "And now?"},
            ],
            "max_tokens": 77,
            "temperature": 0.25,
            "thread_id": None,
        },
    )
    assert parse_events(await resp.read())[-1]["type"] == "done"
    body = fake_upstream.requests_for("claude-primary")[0].body
    assert body["system"] == "Rule one.\n\nRule two."
    # A history before the new turn is worth caching: the top-level marker, and one on the block
    # before the new turn, which is followed by the date context.
    assert body["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][:2] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello!", "cache_control": {"type": "ephemeral"}}]},
    ]
    last = body["messages"][2]
    assert last["role"] == "user" and last["content"][0] == {"type": "text", "text": "And now?"}
    assert date_block(body).startswith("Current date and time:")
    assert body["max_tokens"] == 77 and body["model"] == "claude-primary"
    # The Messages API rejects sampling parameters; OpenAI-compatible servers get them.
    assert "temperature" not in body


async def test_temperature_reaches_openai_compatible_models(client, fake_upstream):
    resp = await client.post("/ai/stream/generate", json={"prompt": "x", "temperature": 0.5, "model": "gpt-fallback"})
    assert parse_events(await resp.read())[-1]["provider"] == "openai"
    assert fake_upstream.requests_for("gpt-fallback")[0].body["temperature"] == 0.5


async def test_model_field_starts_the_chain_at_that_model(client, fake_upstream):
    for requested in ("claude-backup", "anthropic/claude-backup"):
        events = parse_events(await (await client.post("/ai/stream/generate", json={"prompt": "x", "model": requested})).read())
        assert events[-1]["model"] == "claude-backup"
    assert fake_upstream.requests_for("claude-primary") == []


async def test_requested_model_that_fails_falls_back_to_later_models_only(client, fake_upstream):
    fake_upstream.script("claude-backup", Scenario(kind="http_error", status=503))
    events = parse_events(await (await client.post("/ai/stream/generate", json={"prompt": "x", "model": "claude-backup"})).read())
    assert events[-1]["model"] == "gpt-fallback"
    assert fake_upstream.requests_for("claude-primary") == []


async def test_upstream_receives_the_configured_key_and_no_sdk_retries(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529))
    await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read()
    primary = fake_upstream.requests_for("claude-primary")
    assert len(primary) == 1  # the SDK's own retries are off: the chain decides
    # SDK 2.x sends the key as a bearer token.
    assert primary[0].headers["authorization"] == "Bearer sk-ant-test-0123456789-secret"
    assert fake_upstream.requests_for("gpt-fallback") == []


async def test_upstream_requests_carry_no_sdk_telemetry(client, fake_upstream):
    for model in ("claude-primary", "gpt-fallback"):
        resp = await client.post("/ai/stream/generate", json={"prompt": "x", "model": model})
        assert parse_events(await resp.read())[-1]["type"] == "done"
    (anthropic_request,) = fake_upstream.requests_for("claude-primary")
    (openai_request,) = fake_upstream.requests_for("gpt-fallback")
    for recorded in (anthropic_request, openai_request):
        sent = set(recorded.headers)
        # Only the header the SDK itself reads back stays of its `x-stainless-*` family.
        assert {name for name in sent if name.startswith("x-stainless-")} <= {"x-stainless-raw-response"}, sent
        assert "authorization" in sent and recorded.headers["content-type"] == "application/json"
    assert "anthropic-version" in anthropic_request.headers


async def test_upstream_connections_are_reused(client, fake_upstream):
    # The body ends a little after the last event, as it may behind a real proxy.
    for model in ("claude-primary", "gpt-fallback"):
        fake_upstream.script(model, Scenario(end_delay=0.05))
    for model in ("claude-primary", "claude-primary", "gpt-fallback", "gpt-fallback"):
        resp = await client.post("/ai/stream/generate", json={"prompt": "x", "model": model})
        assert parse_events(await resp.read())[-1]["type"] == "done"
    anthropic_peers = {r.peer for r in fake_upstream.requests_for("claude-primary")}
    openai_peers = {r.peer for r in fake_upstream.requests_for("gpt-fallback")}
    # One connection each: the bodies were read to their end and went back to the pool.
    assert len(anthropic_peers) == 1 and len(openai_peers) == 1
