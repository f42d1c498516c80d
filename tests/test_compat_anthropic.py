"""Code written for Anthropic's Python SDK, pointed at the service: `/v1/messages` and
`/v1/messages/count_tokens`, driven only through the real SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from tests.conftest import ClientFactory
from tests.fake_upstream import FakeUpstream, Scenario, count_chars
from tests.support.prompts import conversation, date_context

HI: Any = [{"role": "user", "content": "Hi"}]
KEY = "0123456789abcdef-compat"


def sdk(client: Any, api_key: str | None = "not-checked", **options: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(client.make_url("")), api_key=api_key, max_retries=0, **options)


@pytest.fixture
async def claude(client: Any) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with sdk(client) as c:
        yield c


async def test_create_answers_one_message(claude: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream) -> None:
    message = await claude.messages.create(
        model="ai-stream", max_tokens=200, system=[{"type": "text", "text": "Be brief."}], messages=HI,
        metadata={"user_id": "end-user-1"}, stop_sequences=["END"],
    )
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.model == "claude-primary" and message.stop_reason == "end_turn"
    assert [(b.type, b.text) for b in message.content if b.type == "text"] == [("text", "Hello, world!")]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 4)
    sent = fake_upstream.requests_for("claude-primary")[0].body
    assert conversation(sent) == HI and sent["max_tokens"] == 200 and sent["stop_sequences"] == ["END"]
    assert sent["system"] == "Be brief."
    assert (date_context(sent) or "").startswith("Current date and time: ")  # after the question


async def test_stream_helper_text_stream_and_final_message(claude: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("claude-backup", Scenario(tokens=["Ça", " va", " 👍"], stop_reason="max_tokens", input_tokens=7))
    async with claude.messages.stream(model="claude-backup", max_tokens=3, messages=HI) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert pieces == ["Ça", " va", " 👍"]
    assert final.model == "claude-backup" and final.stop_reason == "max_tokens"
    assert final.content[0].type == "text" and final.content[0].text == "Ça va 👍"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 3)


async def test_create_stream_events_in_order(claude: anthropic.AsyncAnthropic) -> None:
    stream = await claude.messages.create(model="ai-stream", max_tokens=100, messages=HI, stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "message_start", "content_block_start", *["content_block_delta"] * 4, "content_block_stop", "message_delta",
        "message_stop",
    ]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and start.message.model == "claude-primary"
    assert delta.type == "message_delta" and delta.delta.stop_reason == "end_turn"
    assert (delta.usage.input_tokens, delta.usage.output_tokens) == (11, 4)


async def test_fallback_to_an_openai_compatible_model_is_one_clean_message(
    claude: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529))
    fake_upstream.script("claude-backup", Scenario(kind="stream_error"))  # fails before any text
    fake_upstream.script("gpt-fallback", Scenario(tokens=["From", " GPT"], input_tokens=5))
    async with claude.messages.stream(model="ai-stream", max_tokens=100, messages=HI, stop_sequences=["END"]) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    assert [e.type for e in events].count("message_start") == 1
    assert final.model == "gpt-fallback"
    assert [b.text for b in final.content if b.type == "text"] == ["From GPT"]
    assert (final.usage.input_tokens, final.usage.output_tokens, final.stop_reason) == (5, 2, "end_turn")
    assert fake_upstream.requests_for("gpt-fallback")[0].body["stop"] == ["END"]


async def test_failure_mid_stream_raises_after_the_text(claude: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("claude-primary", Scenario(kind="stream_error", after_tokens=2))
    pieces = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        async with claude.messages.stream(model="ai-stream", max_tokens=100, messages=HI) as stream:
            async for text in stream.text_stream:
                pieces.append(text)
    assert "".join(pieces) == "Hello,"
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "The model service is overloaded or unavailable."},
    }


async def test_keys_as_x_api_key_or_bearer(make_client: ClientFactory) -> None:
    client = await make_client(api_keys=f"sdk:{KEY}")
    async with sdk(client, KEY) as by_key, sdk(client, None, auth_token=KEY) as by_token, \
            sdk(client, "wrong-key-0123456789") as wrong:
        assert (await by_key.messages.create(model="ai-stream", max_tokens=10, messages=HI)).content
        assert (await by_token.messages.create(model="ai-stream", max_tokens=10, messages=HI)).content
        with pytest.raises(anthropic.AuthenticationError) as raised:
            await wrong.messages.create(model="ai-stream", max_tokens=10, messages=HI)
        with pytest.raises(anthropic.AuthenticationError):
            await wrong.messages.count_tokens(model="ai-stream", messages=HI)
    assert isinstance(raised.value.body, dict) and raised.value.body["error"]["type"] == "authentication_error"


async def test_anthropic_headers_are_accepted(client: Any) -> None:
    beta = {"anthropic-beta": "prompt-caching-2024-07-31", "anthropic-version": "2023-06-01"}
    async with sdk(client, default_headers=beta) as claude:
        message = await claude.messages.create(model="ai-stream", max_tokens=10, messages=HI)
    assert message.content


BAD_REQUESTS = [
    ({"tools": [{"name": "f", "input_schema": {"type": "object"}}]}, "tools"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]},
     "messages.0.content.0.type"),
    ({"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]}, "messages.0.content.0.type"),
    ({"max_tokens": 8193}, "max_tokens"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
]


@pytest.mark.parametrize(("extra", "field"), BAD_REQUESTS, ids=[f for _, f in BAD_REQUESTS])
async def test_unsupported_or_invalid_fields_are_400_naming_the_field(
    claude: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream, extra: dict[str, Any], field: str
) -> None:
    body: dict[str, Any] = {"model": "ai-stream", "max_tokens": 100, "messages": HI, **extra}
    with pytest.raises(anthropic.BadRequestError) as raised:
        await claude.messages.create(**body)
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "error"
    error = raised.value.body["error"]
    assert error["type"] == "invalid_request_error" and field in error["message"]
    assert fake_upstream.requests == []


async def test_missing_max_tokens_is_400(client: Any) -> None:
    resp = await client.post("/v1/messages", json={"model": "ai-stream", "messages": HI})
    assert resp.status == 400
    body = await resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens is required" in body["error"]["message"]


async def test_unknown_model_is_404_not_found_error(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        await claude.messages.create(model="claude-unknown", max_tokens=10, messages=HI)
    assert isinstance(raised.value.body, dict) and raised.value.body["error"]["type"] == "not_found_error"


async def test_rate_limited_is_429_with_retry_after(make_client: ClientFactory) -> None:
    async with sdk(await make_client(rate_limit_rpm=1)) as claude:
        await claude.messages.create(model="ai-stream", max_tokens=10, messages=HI)
        with pytest.raises(anthropic.RateLimitError) as raised:
            await claude.messages.create(model="ai-stream", max_tokens=10, messages=HI)
    assert int(raised.value.response.headers["Retry-After"]) >= 1
    assert isinstance(raised.value.body, dict) and raised.value.body["error"]["type"] == "rate_limit_error"


async def test_end_user_limits_apply_to_metadata_user_id(make_client: ClientFactory) -> None:
    async with sdk(await make_client(user_rate_limit_rpm=1)) as claude:
        await claude.messages.create(model="ai-stream", max_tokens=10, messages=HI, metadata={"user_id": "alice"})
        with pytest.raises(anthropic.RateLimitError):
            await claude.messages.create(model="ai-stream", max_tokens=10, messages=HI, metadata={"user_id": "alice"})
        await claude.messages.create(model="ai-stream", max_tokens=10, messages=HI, metadata={"user_id": "bob"})


async def test_body_too_large_is_413_request_too_large(make_client: ClientFactory) -> None:
    async with sdk(await make_client(max_body_bytes=2048)) as claude:
        with pytest.raises(anthropic.APIStatusError) as raised:
            await claude.messages.create(model="ai-stream", max_tokens=10, messages=[{"role": "user", "content": "x" * 3000}])
    assert raised.value.status_code == 413
    assert isinstance(raised.value.body, dict) and raised.value.body["error"]["type"] == "request_too_large"


async def test_all_models_failing_is_overloaded(claude: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream) -> None:
    for name in ("claude-primary", "claude-backup", "gpt-fallback"):
        fake_upstream.script(name, Scenario(kind="http_error", status=529))
    with pytest.raises(anthropic.InternalServerError) as raised:
        await claude.messages.create(model="ai-stream", max_tokens=10, messages=HI)
    assert raised.value.status_code == 503
    assert isinstance(raised.value.body, dict) and raised.value.body["error"]["type"] == "overloaded_error"


async def test_count_tokens_is_passed_through_to_claude(claude: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream) -> None:
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "How many tokens is this sentence?"}]}]
    counted = await claude.messages.count_tokens(model="claude-backup", system="Be brief.", messages=messages)
    (sent,) = [r for r in fake_upstream.requests if r.path == "/v1/messages/count_tokens"]
    assert sent.model == "claude-backup"
    assert sent.body["messages"] == [{"role": "user", "content": "How many tokens is this sentence?"}]
    assert counted.input_tokens == count_chars(sent.body) // 4  # what the upstream counted
    assert sent.body["system"] == "Be brief."  # the caller's request as it is


async def test_count_tokens_is_estimated_without_claude(make_client: ClientFactory, fake_upstream: FakeUpstream) -> None:
    async with sdk(await make_client(compat_date_context=False)) as claude:
        counted = await claude.messages.count_tokens(model="openai/gpt-fallback", messages=[{"role": "user", "content": "x" * 400}])
    # A token per four characters, plus three for each message and for the framing.
    assert counted.input_tokens == 100 + 3 * 2
    assert fake_upstream.requests == []


async def test_count_tokens_upstream_failure_is_an_anthropic_error(
    claude: anthropic.AsyncAnthropic, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529))
    with pytest.raises(anthropic.InternalServerError) as raised:
        await claude.messages.count_tokens(model="ai-stream", messages=HI)
    assert raised.value.status_code == 503
    assert isinstance(raised.value.body, dict) and raised.value.body["error"]["type"] == "overloaded_error"
