"""Code written for OpenAI's Python SDK, pointed at the service: `/v1/chat/completions` and
`/v1/models`, driven only through the real SDK (async and sync clients)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.conftest import ClientFactory
from tests.fake_upstream import FakeUpstream, Scenario
from tests.support.prompts import conversation, date_context

HI = [{"role": "user", "content": "Hi"}]
KEY = "0123456789abcdef-compat"


def sdk(client: Any, api_key: str = "not-checked") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=api_key, max_retries=0)


@pytest.fixture
async def oai(client: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(client) as c:
        yield c


async def configured(make_client: ClientFactory, api_key: str = "not-checked", **settings: Any) -> openai.AsyncOpenAI:
    return sdk(await make_client(**settings), api_key)


async def test_create_answers_one_chat_completion(oai: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    completion = await oai.chat.completions.create(
        model="ai-stream",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "No emoji."}, *HI],
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "claude-primary"
    (choice,) = completion.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", "Hello, world!", "stop")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (11, 4, 15)
    sent = fake_upstream.requests_for("claude-primary")[0].body
    assert conversation(sent) == HI and sent["max_tokens"] == 1024 and "stop_sequences" not in sent
    assert sent["system"] == "Be brief.\n\nNo emoji."
    assert (date_context(sent) or "").startswith("Current date and time: ")  # after the question


async def test_stream_chunks_as_the_sdk_reads_them(oai: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("claude-primary", Scenario(stop_reason="max_tokens"))
    stream = await oai.chat.completions.create(model="default", messages=HI, stream=True)
    chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert {c.model for c in chunks} == {"claude-primary"} and {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello, world!"
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 5 + ["length"]
    assert all(c.usage is None for c in chunks)


async def test_stream_with_include_usage_ends_with_a_usage_chunk(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="ai-stream", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (11, 4, 15)
    assert chunks[-2].choices[0].finish_reason == "stop"


async def test_stream_helper_and_final_completion(oai: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("claude-primary", Scenario(tokens=["Ça", " va", " 👍"]))
    async with oai.chat.completions.stream(model="claude-primary", messages=HI, max_completion_tokens=3) as stream:
        pieces = [event.delta async for event in stream if event.type == "content.delta" and event.delta]
        final = await stream.get_final_completion()
    assert pieces == ["Ça", " va", " 👍"]
    assert final.choices[0].message.content == "Ça va 👍" and final.choices[0].finish_reason == "stop"
    assert fake_upstream.requests_for("claude-primary")[0].body["max_tokens"] == 3


async def test_with_raw_response_has_the_request_id(oai: openai.AsyncOpenAI) -> None:
    raw = await oai.chat.completions.with_raw_response.create(
        model="anthropic/claude-backup", messages=HI, extra_headers={"X-Request-ID": "compat-7"}
    )
    assert raw.status_code == 200 and raw.headers["x-request-id"] == "compat-7"
    completion = raw.parse()
    assert completion.model == "claude-backup" and completion.choices[0].message.content == "Hello, world!"


async def test_sync_client(client: Any) -> None:
    """The blocking client in a thread, against the same listening server."""

    def use_sync_client() -> tuple[str | None, str, list[str]]:
        with openai.OpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0) as sync:
            whole = sync.chat.completions.create(model="ai-stream", messages=HI).choices[0].message.content
            pieces = [c.choices[0].delta.content or "" for c in sync.chat.completions.create(model="ai-stream", messages=HI, stream=True)]
            ids = [m.id for m in sync.models.list()]
        return whole, "".join(pieces), ids

    whole, streamed, ids = await asyncio.to_thread(use_sync_client)
    assert whole == streamed == "Hello, world!"
    assert ids == ["ai-stream", "anthropic/claude-primary", "anthropic/claude-backup", "openai/gpt-fallback"]


async def test_models_lists_the_alias_and_models_with_credentials(make_client: ClientFactory) -> None:
    async with await configured(make_client, openai_api_key=None) as oai:
        page = await oai.models.list()
    assert [(m.id, m.object, m.owned_by) for m in page.data] == [
        ("ai-stream", "model", "ai-stream"),
        ("anthropic/claude-primary", "model", "anthropic"),
        ("anthropic/claude-backup", "model", "anthropic"),
    ]
    assert all(isinstance(m.created, int) and m.created > 0 for m in page.data)


async def test_fallback_names_the_model_that_answered(oai: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529))
    fake_upstream.script("claude-backup", Scenario(kind="http_error", status=429))
    stream = await oai.chat.completions.create(model="ai-stream", messages=HI, stream=True)
    chunks = [chunk async for chunk in stream]
    assert {c.model for c in chunks} == {"gpt-fallback"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello, world!"
    assert sum(c.choices[0].delta.role == "assistant" for c in chunks) == 1


async def test_temperature_and_stop_reach_the_models(oai: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    await oai.chat.completions.create(model="gpt-fallback", messages=HI, temperature=1.5, stop=["\n\n", "END"])
    sent = fake_upstream.requests_for("gpt-fallback")[0].body
    assert (sent["temperature"], sent["stop"]) == (1.5, ["\n\n", "END"])
    await oai.chat.completions.create(model="claude-primary", messages=HI, temperature=1.5, stop="END")
    sent = fake_upstream.requests_for("claude-primary")[0].body
    assert sent["stop_sequences"] == ["END"] and "temperature" not in sent  # Claude takes no sampling parameters


async def test_content_parts_and_user_turns(oai: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "Part one, "}, {"type": "text", "text": "part two."}]},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Go on."},
    ]
    await oai.chat.completions.create(model="ai-stream", messages=messages, user="end-user-1")
    assert conversation(fake_upstream.requests_for("claude-primary")[0].body) == [
        {"role": "user", "content": "Part one, part two."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Go on."},
    ]


async def test_date_context_can_be_turned_off_for_these_routes(make_client: ClientFactory, fake_upstream: FakeUpstream) -> None:
    async with await configured(make_client, compat_date_context=False) as oai:
        await oai.chat.completions.create(model="ai-stream", messages=HI)
        await oai.chat.completions.create(model="ai-stream", messages=[{"role": "system", "content": "Mine."}, *HI])
    first, second = (r.body for r in fake_upstream.requests_for("claude-primary"))
    assert "system" not in first and second["system"] == "Mine."


async def test_failure_mid_stream_raises_api_error_after_the_text(oai: openai.AsyncOpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("claude-primary", Scenario(kind="stream_error", after_tokens=2))
    stream = await oai.chat.completions.create(model="ai-stream", messages=HI, stream=True)
    pieces = []
    with pytest.raises(openai.APIError) as raised:
        async for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == "Hello,"
    assert raised.value.body == {
        "message": "The model service is overloaded or unavailable.", "type": "server_error", "code": "upstream_unavailable"
    }
    assert fake_upstream.requests_for("claude-backup") == []  # nothing is restarted after text


BAD_REQUESTS = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"n": 2}, "n"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"audio": {"voice": "alloy", "format": "mp3"}, "modalities": ["text", "audio"]}, "audio"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "messages.0.content.0.type"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "messages.0.role"),
    ({"messages": [{"role": "system", "content": "Only rules."}]}, "messages"),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages.0.content"),
    ({"temperature": 2.5}, "temperature"),
    ({"max_tokens": 8193}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_REQUESTS, ids=[p for _, p in BAD_REQUESTS])
async def test_unsupported_or_invalid_fields_are_400_naming_the_field(
    oai: openai.AsyncOpenAI, fake_upstream: FakeUpstream, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "ai-stream", "messages": HI, **extra}
    with pytest.raises(openai.BadRequestError) as raised:
        await oai.chat.completions.create(**body)
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == param and error["type"] == "invalid_request_error"
    assert error["code"] == "validation_error" and param in error["message"]
    assert fake_upstream.requests == []


async def test_unknown_model_is_404_model_not_found(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await oai.chat.completions.create(model="gpt-unknown", messages=HI)
    assert isinstance(raised.value.body, dict)
    assert (raised.value.body["code"], raised.value.body["type"]) == ("model_not_found", "invalid_request_error")
    assert "ai-stream" in raised.value.body["message"]


async def test_keys_are_required_when_configured(make_client: ClientFactory) -> None:
    client = await make_client(api_keys=f"sdk:{KEY}")
    async with sdk(client, "wrong-key-0123456789") as wrong, sdk(client, KEY) as right:
        with pytest.raises(openai.AuthenticationError) as raised:
            await wrong.chat.completions.create(model="ai-stream", messages=HI)
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
        assert (await right.chat.completions.create(model="ai-stream", messages=HI)).choices[0].message.content
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "invalid_api_key"
    assert raised.value.response.headers["WWW-Authenticate"] == 'Bearer realm="ai-stream"'


async def test_rate_limits_are_429_with_retry_after(make_client: ClientFactory) -> None:
    async with await configured(make_client, rate_limit_rpm=1) as oai:
        await oai.models.list()
        with pytest.raises(openai.RateLimitError) as raised:
            await oai.chat.completions.create(model="ai-stream", messages=HI)
    assert int(raised.value.response.headers["Retry-After"]) >= 1
    assert isinstance(raised.value.body, dict)
    assert (raised.value.body["type"], raised.value.body["code"]) == ("rate_limit_error", "rate_limit_exceeded")


async def test_end_user_limits_apply_to_user(make_client: ClientFactory) -> None:
    async with await configured(make_client, user_rate_limit_rpm=1) as oai:
        await oai.chat.completions.create(model="ai-stream", messages=HI, user="alice")
        with pytest.raises(openai.RateLimitError):
            await oai.chat.completions.create(model="ai-stream", messages=HI, user="alice")
        await oai.chat.completions.create(model="ai-stream", messages=HI, user="bob")


async def test_body_too_large_is_413_in_openai_shape(make_client: ClientFactory) -> None:
    async with await configured(make_client, max_body_bytes=2048) as oai:
        with pytest.raises(openai.APIStatusError) as raised:
            await oai.chat.completions.create(model="ai-stream", messages=[{"role": "user", "content": "x" * 3000}])
    assert raised.value.status_code == 413
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "body_too_large"


async def test_answer_failures_are_503_and_504(make_client: ClientFactory, fake_upstream: FakeUpstream) -> None:
    for name in ("claude-primary", "claude-backup", "gpt-fallback"):
        fake_upstream.script(name, Scenario(kind="http_error", status=529))
    async with await configured(make_client) as oai:
        with pytest.raises(openai.InternalServerError) as unavailable:
            await oai.chat.completions.create(model="ai-stream", messages=HI)
    assert unavailable.value.status_code == 503
    assert isinstance(unavailable.value.body, dict) and unavailable.value.body["code"] == "upstream_unavailable"
    fake_upstream.script("claude-primary", Scenario(kind="stall", stall_seconds=30))
    async with await configured(make_client, request_timeout=0.2) as oai:
        with pytest.raises(openai.InternalServerError) as timed_out:
            await oai.chat.completions.create(model="claude-primary", messages=HI)
    assert timed_out.value.status_code == 504
    async with await configured(make_client, anthropic_api_key=None, openai_api_key=None) as oai:
        with pytest.raises(openai.InternalServerError) as no_models:
            await oai.chat.completions.create(model="ai-stream", messages=HI)
    assert isinstance(no_models.value.body, dict) and no_models.value.body["code"] == "no_models_available"


async def test_non_json_body_is_415_in_openai_shape(client: Any) -> None:
    resp = await client.post("/v1/chat/completions", data="hi", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    body = await resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == "unsupported_media_type"
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_metrics_and_log_carry_the_route(client: Any, oai: openai.AsyncOpenAI) -> None:
    await oai.chat.completions.create(model="ai-stream", messages=HI)
    text = await (await client.get("/metrics")).text()
    assert 'ai_stream_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'ai_stream_answers_total{code="",outcome="done"} 1.0' in text


async def test_cors_preflight_allows_sdk_headers(make_client: ClientFactory) -> None:
    client = await make_client(cors_origins="https://app.example.com")
    resp = await client.options(
        "/v1/chat/completions",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os,x-stainless-lang"},
    )
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os", "x-stainless-lang"} <= allowed

