"""Fidelity tests for the fake upstream, driven through the real Anthropic and OpenAI SDKs."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.fake_fixtures import anthropic_client, fake_upstream, openai_client  # noqa: F401
from tests.fake_upstream import FakeUpstream, Scenario

SYSTEM = "You are a terse assistant."
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]
TOKENS = ["Hello", ",", " world", "!"]


async def anthropic_stream(client: anthropic.AsyncAnthropic, model: str, texts: list[str]) -> list[Any]:
    """Stream one message; append each text delta to `texts` as it arrives, return all events."""
    events = []
    stream = await client.messages.create(model=model, max_tokens=64, system=SYSTEM, messages=MESSAGES, stream=True)
    async for event in stream:
        events.append(event)
        if event.type == "content_block_delta":
            texts.append(event.delta.text)
    return events


async def openai_stream(client: openai.AsyncOpenAI, model: str, texts: list[str], include_usage: bool = True) -> list[Any]:
    """Stream one chat completion; append each content delta to `texts`, return all chunks."""
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": SYSTEM}, *MESSAGES], stream=True, **extra
    )
    chunks = []
    async for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
    return chunks


# --- happy path -------------------------------------------------------------------------------------------


async def test_anthropic_ok_stream(anthropic_client: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream) -> None:
    texts: list[str] = []
    events = await anthropic_stream(anthropic_client, "claude-a", texts)

    assert texts == TOKENS
    assert [e.type for e in events] == [
        "message_start", "content_block_start", *["content_block_delta"] * 4,
        "content_block_stop", "message_delta", "message_stop",
    ]
    start = events[0].message
    assert (start.model, start.role, start.content, start.stop_reason) == ("claude-a", "assistant", [], None)
    assert start.id.startswith("msg_") and start.usage.input_tokens == 11 and start.usage.output_tokens == 1
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens == 4
    assert fake_upstream.active_streams == 0 and fake_upstream.disconnects == []


async def test_anthropic_stream_helper_accumulates(anthropic_client: anthropic.AsyncAnthropic) -> None:
    async with anthropic_client.messages.stream(
        model="claude-a", max_tokens=64, messages=MESSAGES
    ) as stream:
        message = await stream.get_final_message()
    assert message.content[0].text == "Hello, world!"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 4)


async def test_openai_ok_stream_with_usage(openai_client: openai.AsyncOpenAI) -> None:
    texts: list[str] = []
    chunks = await openai_stream(openai_client, "gpt-a", texts)

    assert texts == TOKENS
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * 5 + ["stop"]
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 4, 15)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"gpt-a"} and all(c.object == "chat.completion.chunk" for c in chunks)


async def test_openai_without_usage_and_length_finish(
    openai_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("gpt-a", Scenario(tokens=["a", "b"], stop_reason="max_tokens"))
    texts: list[str] = []
    chunks = await openai_stream(openai_client, "gpt-a", texts, include_usage=False)
    assert texts == ["a", "b"]
    assert len(chunks) == 4 and chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


async def test_raw_wire_format(fake_upstream: FakeUpstream) -> None:
    """Byte-level framing, headers and field sets, read without an SDK."""
    fake_upstream.script("m", Scenario(tokens=["Hi"], output_tokens=7))
    async with httpx2.AsyncClient() as http:
        a = await http.post(fake_upstream.base_url + "/v1/messages", json={"model": "m", "stream": True})
        o = await http.post(
            fake_upstream.openai_base_url + "/chat/completions",
            json={"model": "m", "stream": True, "stream_options": {"include_usage": True}},
        )
    for resp, id_header in ((a, "request-id"), (o, "x-request-id")):
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert resp.headers[id_header].startswith("req_")

    frames = a.text.split("\n\n")
    assert frames[-1] == "" and frames[2] == 'event: ping\ndata: {"type": "ping"}'
    pairs = [f.split("\n") for f in frames[:-1]]
    assert all(len(p) == 2 and p[0].startswith("event: ") and p[1].startswith("data: ") for p in pairs)
    assert [p[0][7:] for p in pairs] == [
        "ping" if i == 2 else json.loads(p[1][6:])["type"] for i, p in enumerate(pairs)
    ]
    message = json.loads(pairs[0][1][6:])["message"]
    assert message.pop("id").startswith("msg_")
    assert message == {
        "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 1},
    }
    assert json.loads(pairs[-2][1][6:]) == {
        "type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 7},
    }

    lines = o.text.split("\n\n")
    assert lines[-2:] == ["data: [DONE]", ""] and all(line.startswith("data: ") for line in lines[:-1])
    first = json.loads(lines[0][6:])
    assert set(first) == {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
    assert first["usage"] is None and isinstance(first["created"], int)
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert json.loads(lines[-3][6:])["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


async def test_non_stream_bodies(
    anthropic_client: anthropic.AsyncAnthropic, openai_client: openai.AsyncOpenAI
) -> None:
    message = await anthropic_client.messages.create(model="m", max_tokens=64, messages=MESSAGES)
    assert message.content[0].text == "Hello, world!" and message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 4
    completion = await openai_client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello, world!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 15


# --- HTTP errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc_type", "error_type"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
        (503, anthropic.InternalServerError, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
    ],
)
async def test_anthropic_http_errors(
    anthropic_client: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream,
    status: int, exc_type: type[anthropic.APIStatusError], error_type: str,
) -> None:
    fake_upstream.script("m", Scenario(kind="http_error", status=status, retry_after=2))
    with pytest.raises(exc_type) as info:
        await anthropic_stream(anthropic_client, "m", [])
    err = info.value
    assert err.status_code == status and err.type == error_type and err.api_message == "fake upstream error"
    assert err.response.headers["retry-after"] == "2"
    assert err.request_id is not None and err.request_id.startswith("req_")
    assert isinstance(err.body, dict) and err.body["request_id"] == err.request_id


@pytest.mark.parametrize(
    ("status", "exc_type", "error_type"),
    [
        (429, openai.RateLimitError, "requests"),
        (529, openai.InternalServerError, "server_error"),
        (500, openai.InternalServerError, "server_error"),
        (400, openai.BadRequestError, "invalid_request_error"),
        (401, openai.AuthenticationError, "invalid_request_error"),
    ],
)
async def test_openai_http_errors(
    openai_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream,
    status: int, exc_type: type[openai.APIStatusError], error_type: str,
) -> None:
    fake_upstream.script("m", Scenario(kind="http_error", status=status, retry_after=0.5, error_message="nope"))
    with pytest.raises(exc_type) as info:
        await openai_stream(openai_client, "m", [])
    err = info.value
    assert err.status_code == status and err.type == error_type
    assert err.body == {"message": "nope", "type": error_type, "param": None, "code": err.code}
    assert err.response.headers["retry-after"] == "0.5"
    assert err.request_id is not None and err.request_id.startswith("req_")


async def test_error_type_override(anthropic_client: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("m", Scenario(kind="http_error", status=400, error_type="not_found_error"))
    with pytest.raises(anthropic.BadRequestError) as info:
        await anthropic_stream(anthropic_client, "m", [])
    assert info.value.type == "not_found_error" and "retry-after" not in info.value.response.headers


# --- in-stream faults -------------------------------------------------------------------------------------


async def test_anthropic_stream_error(anthropic_client: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("m", Scenario(kind="stream_error", after_tokens=2))
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        await anthropic_stream(anthropic_client, "m", texts)
    assert texts == ["Hello", ","]
    assert info.value.type == "overloaded_error" and info.value.status_code == 200
    assert info.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "fake upstream error"}}


async def test_openai_stream_error(openai_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("m", Scenario(kind="stream_error", after_tokens=3, error_message="boom"))
    texts: list[str] = []
    with pytest.raises(openai.APIError) as info:
        await openai_stream(openai_client, "m", texts)
    assert texts == ["Hello", ",", " world"]
    assert info.value.message == "boom" and info.value.type == "server_error"
    assert not isinstance(info.value, openai.APIStatusError)


async def test_drop_breaks_the_read(
    anthropic_client: anthropic.AsyncAnthropic, openai_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Scenario(kind="drop", after_tokens=1))
    a_texts: list[str] = []
    with pytest.raises((httpx2.TransportError, anthropic.APIConnectionError)):
        await anthropic_stream(anthropic_client, "m", a_texts)
    o_texts: list[str] = []
    with pytest.raises(openai.APIConnectionError) as info:
        await openai_stream(openai_client, "m", o_texts)
    assert a_texts == o_texts == ["Hello"]
    assert isinstance(info.value.__cause__, httpx2.RemoteProtocolError)
    assert fake_upstream.disconnects == [] and fake_upstream.active_streams == 0  # the server hung up, not the client


async def test_malformed_data_raises(
    anthropic_client: anthropic.AsyncAnthropic, openai_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Scenario(kind="malformed", after_tokens=2))
    a_texts: list[str] = []
    with pytest.raises(json.JSONDecodeError):
        await anthropic_stream(anthropic_client, "m", a_texts)
    o_texts: list[str] = []
    with pytest.raises(json.JSONDecodeError):
        await openai_stream(openai_client, "m", o_texts)
    assert a_texts == o_texts == ["Hello", ","]


async def test_stall_is_detectable_and_disconnect_recorded(
    anthropic_client: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Scenario(kind="stall", after_tokens=1))
    texts: list[str] = []
    stream = await anthropic_client.messages.create(model="m", max_tokens=64, messages=MESSAGES, stream=True)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            async for event in stream:
                if event.type == "content_block_delta":
                    texts.append(event.delta.text)
    assert texts == ["Hello"] and fake_upstream.active_streams == 1 and fake_upstream.disconnects == []

    closed_at = time.monotonic()
    await stream.close()
    record = await fake_upstream.wait_for_disconnect(timeout=1.0)
    assert record.disconnected and record.model == "m" and record.api == "anthropic"
    assert record.ended_at is not None and record.ended_at - closed_at < 0.1
    assert fake_upstream.active_streams == 0 and fake_upstream.disconnects == [record]


async def test_disconnect_during_first_token_delay(
    openai_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("m", Scenario(first_token_delay=30))
    stream = await openai_client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    first = await stream.__anext__()
    assert first.choices[0].delta.role == "assistant"  # the role chunk precedes the delay
    closed_at = time.monotonic()
    await stream.close()
    record = await fake_upstream.wait_for_disconnect()
    assert record.api == "openai" and record.ended_at is not None and record.ended_at - closed_at < 0.1
    with pytest.raises(TimeoutError):
        await fake_upstream.wait_for_disconnect(timeout=0.05)  # only one new disconnect


async def test_delays(anthropic_client: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("m", Scenario(tokens=["a", "b", "c"], first_token_delay=0.15, token_delay=0.05))
    arrivals: dict[str, float] = {}
    stream = await anthropic_client.messages.create(model="m", max_tokens=64, messages=MESSAGES, stream=True)
    async for event in stream:
        arrivals.setdefault(event.delta.text if event.type == "content_block_delta" else event.type, time.monotonic())
    assert arrivals["a"] - arrivals["message_start"] >= 0.14
    assert arrivals["content_block_start"] - arrivals["message_start"] < 0.1
    assert arrivals["c"] - arrivals["a"] >= 0.09


async def test_close_ends_stalled_streams_quickly() -> None:
    upstream = FakeUpstream()
    await upstream.start()
    upstream.script("m", Scenario(kind="stall"))
    async with openai.AsyncOpenAI(api_key="k", base_url=upstream.openai_base_url, max_retries=0) as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        await stream.__anext__()
        async with asyncio.timeout(30):  # closing does not wait for the stall to end (an hour)
            await upstream.close()
        with pytest.raises(openai.APIConnectionError):
            await stream.__anext__()
    assert upstream.disconnects == [] and upstream.requests[0].ended_at is not None


# --- scripting and recording ------------------------------------------------------------------------------


async def test_script_consumes_in_order_and_last_repeats(
    anthropic_client: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(
        "m",
        Scenario(kind="http_error", status=529),
        Scenario(kind="http_error", status=429),
        Scenario(tokens=["ok"]),
    )
    with pytest.raises(anthropic.OverloadedError):
        await anthropic_stream(anthropic_client, "m", [])
    with pytest.raises(anthropic.RateLimitError):
        await anthropic_stream(anthropic_client, "m", [])
    for _ in range(2):
        texts: list[str] = []
        await anthropic_stream(anthropic_client, "m", texts)
        assert texts == ["ok"]
    other: list[str] = []
    await anthropic_stream(anthropic_client, "never-scripted", other)
    assert other == TOKENS
    assert len(fake_upstream.requests_for("m")) == 4 and len(fake_upstream.requests) == 5
    with pytest.raises(ValueError):
        fake_upstream.script("m")


async def test_requests_are_recorded(
    anthropic_client: anthropic.AsyncAnthropic, openai_client: openai.AsyncOpenAI, fake_upstream: FakeUpstream
) -> None:
    await anthropic_stream(anthropic_client, "claude-x", [])
    await openai_stream(openai_client, "gpt-x", [])
    a, o = fake_upstream.requests
    assert (a.api, a.path, a.model) == ("anthropic", "/v1/messages", "claude-x")
    assert a.body["system"] == SYSTEM and a.body["messages"] == MESSAGES and a.body["stream"] is True
    # this SDK version sends the key as a bearer token; older ones used x-api-key
    assert "sk-ant-test" in a.headers.get("x-api-key", a.headers.get("authorization", ""))
    assert "anthropic-version" in a.headers
    assert (o.api, o.path, o.model) == ("openai", "/v1/chat/completions", "gpt-x")
    assert o.body["messages"] == [{"role": "system", "content": SYSTEM}, *MESSAGES]
    assert o.body["stream_options"] == {"include_usage": True}
    assert o.headers["authorization"] == "Bearer sk-test"
    for rec in (a, o):
        assert rec.ended_at is not None and rec.ended_at >= rec.received_at and not rec.disconnected

    fake_upstream.script("claude-x", Scenario(kind="http_error"))
    fake_upstream.reset()
    assert fake_upstream.requests == [] and fake_upstream.requests_for("claude-x") == []
    texts: list[str] = []
    await anthropic_stream(anthropic_client, "claude-x", texts)  # the script was cleared too
    assert texts == TOKENS
