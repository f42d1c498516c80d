"""The provider request path: the SDK says what a request is, the relay carries it.

Each model's request is captured once from its SDK and then sent by the relay's own aiohttp
session; these tests hold that path to what the SDK itself sends and raises, through the fake
upstream server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp.base_protocol import BaseProtocol

from providers.base import Finish, Message, ModelRequest, ProviderError
from providers.dialects import adapter
from providers.endpoints import Endpoint
from providers.transport import IdleTimeout, IdleWatchdog, Upstream
from tests.fake_upstream import FakeUpstream, Scenario

# What the HTTP library carrying a request writes, not the API (see providers.transport).
CARRIER = {"host", "content-length", "connection", "accept-encoding"}

REQUEST = ModelRequest(
    messages=(Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "Tell me more")),
    max_tokens=64,
    system="Be brief.",
    temperature=0.5,
    stop=("END",),
    context="It is Monday.",
    cache="5m",
)


def endpoints(fake: FakeUpstream) -> dict[str, Endpoint]:
    return {
        "anthropic": Endpoint("anthropic", "anthropic", fake.base_url, "sk-ant-path", builtin=True),
        "openai": Endpoint("openai", "openai", fake.openai_base_url, "sk-openai-path", builtin=True),
        "router": Endpoint(
            "router", "openai", fake.openai_base_url, "sk-router-path",
            headers=(("HTTP-Referer", "https://app.example.com"), ("X-Title", "Example")),
        ),
    }


@pytest.fixture
async def upstreams(fake_upstream: FakeUpstream) -> AsyncIterator[dict[str, Upstream]]:
    made = {
        name: adapter(endpoint.api).create_client(endpoint, connect_timeout=5, idle_timeout=30)
        for name, endpoint in endpoints(fake_upstream).items()
    }
    yield made
    for upstream in made.values():
        await upstream.close()


def model_of(upstreams: dict[str, Upstream], fake: FakeUpstream, name: str, model: str = "m-path") -> Any:
    endpoint = endpoints(fake)[name]
    return adapter(endpoint.api).create_model(upstreams[name], model, endpoint)


async def drain(model: Any, request: ModelRequest = REQUEST) -> list[Any]:
    return [event async for event in model.stream(request)]


async def sdk_sends_itself(model: Any, upstream: Upstream) -> None:
    """The same request made by the same SDK client, sent by the SDK's own HTTP client."""
    sending = upstream.client.with_options(http_client=upstream.sdk.DefaultAsyncHttpxClient())
    try:
        if isinstance(sending, anthropic.AsyncAnthropic):
            stream = await sending.messages.create(**model._params(REQUEST))
        else:
            from providers.openai import _REQUEST_HEADERS

            stream = await sending.chat.completions.create(**model._params(REQUEST), extra_headers=_REQUEST_HEADERS)
        async for _ in stream:
            pass
    finally:
        await sending.close()


@pytest.mark.parametrize("name", ["anthropic", "openai", "router"])
async def test_the_relay_sends_what_the_sdk_itself_sends(fake_upstream, upstreams, name):
    model = model_of(upstreams, fake_upstream, name)
    events = await drain(model)
    assert isinstance(events[-1], Finish)
    await sdk_sends_itself(model, upstreams[name])
    ours, sdks = fake_upstream.requests
    assert ours.path == sdks.path
    assert ours.body == sdks.body
    assert {k: v for k, v in ours.headers.items() if k not in CARRIER} == {
        k: v for k, v in sdks.headers.items() if k not in CARRIER
    }
    if name == "anthropic":
        assert ours.headers["authorization"] == "Bearer sk-ant-path" and "anthropic-version" in ours.headers
    else:
        assert ours.headers["authorization"] == f"Bearer sk-{name}-path"
    if name == "router":
        assert ours.headers["x-title"] == "Example" and "openai-organization" not in ours.headers
    assert not any(k.startswith("x-stainless-") for k in ours.headers)  # no telemetry


async def test_the_request_is_built_once_per_model(fake_upstream, upstreams):
    model = model_of(upstreams, fake_upstream, "anthropic")
    await drain(model)
    template = await upstreams["anthropic"].template(model.model, model._sdk_stream)
    await drain(model)
    assert await upstreams["anthropic"].template(model.model, model._sdk_stream) is template
    first, second = fake_upstream.requests
    assert first.headers == second.headers
    assert first.peer == second.peer  # the body was read to its end: the connection was reused


@pytest.mark.parametrize(
    "name, status, sdk_error, code",
    [
        ("anthropic", 529, anthropic.OverloadedError, "upstream_unavailable"),
        ("anthropic", 429, anthropic.RateLimitError, "rate_limited"),
        ("anthropic", 401, anthropic.AuthenticationError, "authentication_failed"),
        ("anthropic", 404, anthropic.NotFoundError, "model_not_found"),
        ("openai", 429, openai.RateLimitError, "rate_limited"),
        ("openai", 400, openai.BadRequestError, "invalid_request"),
        ("openai", 500, openai.InternalServerError, "upstream_unavailable"),
    ],
)
async def test_a_failed_response_is_the_sdks_own_error_class(fake_upstream, upstreams, name, status, sdk_error, code):
    model = model_of(upstreams, fake_upstream, name)
    fake_upstream.script(model.model, Scenario(kind="http_error", status=status, retry_after=2))
    with pytest.raises(ProviderError) as raised:
        await drain(model)
    assert raised.value.code == code and raised.value.status == status
    cause = raised.value.__cause__
    assert type(cause) is sdk_error, type(cause)
    assert cause.response.status_code == status and cause.body  # the SDK read the error body
    if status == 429:
        assert raised.value.retry_after == 2


async def test_a_refused_credential_makes_the_sdk_build_the_request_anew(fake_upstream, upstreams):
    model = model_of(upstreams, fake_upstream, "anthropic")
    await drain(model)
    upstreams["anthropic"].client.api_key = "sk-ant-rotated"  # the SDK client now builds another request
    fake_upstream.script(model.model, Scenario(kind="http_error", status=401), Scenario())
    with pytest.raises(ProviderError):
        await drain(model)
    await drain(model)
    sent = [r.headers["authorization"] for r in fake_upstream.requests]
    assert sent == ["Bearer sk-ant-path", "Bearer sk-ant-path", "Bearer sk-ant-rotated"]


async def test_a_refused_connection_is_the_sdks_connection_error(unused_tcp_port):
    endpoint = Endpoint("anthropic", "anthropic", f"http://127.0.0.1:{unused_tcp_port}", "sk-ant-path", builtin=True)
    upstream = adapter("anthropic").create_client(endpoint, connect_timeout=5, idle_timeout=30)
    try:
        model = adapter("anthropic").create_model(upstream, "m", endpoint)
        with pytest.raises(ProviderError) as raised:
            await drain(model)
        assert raised.value.code == "upstream_unavailable" and raised.value.fallback
        assert type(raised.value.__cause__) is anthropic.APIConnectionError
    finally:
        await upstream.close()


@pytest.mark.parametrize(
    "environment, proxy",
    [
        ({"HTTPS_PROXY": "http://proxy.invalid:3128"}, "http://proxy.invalid:3128"),
        ({"HTTPS_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "api.example.com"}, None),
        ({"HTTP_PROXY": "http://proxy.invalid:3128"}, None),  # not for https
    ],
)
async def test_the_proxy_is_the_one_the_sdks_http_client_would_use(monkeypatch, environment, proxy):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    endpoint = Endpoint("anthropic", "anthropic", "https://api.example.com", "sk-ant-path", builtin=True)
    upstream = adapter("anthropic").create_client(endpoint, connect_timeout=5, idle_timeout=30)
    try:
        model = adapter("anthropic").create_model(upstream, "m", endpoint)
        template = await upstream.template("m", model._sdk_stream)  # captured: nothing is sent
        assert template.url == "https://api.example.com/v1/messages"
        assert template.proxy == proxy
    finally:
        await upstream.close()


async def test_the_idle_watchdog_fails_only_a_body_that_stays_silent():
    loop = asyncio.get_running_loop()
    quiet, busy = (aiohttp.StreamReader(BaseProtocol(loop), 2**16, loop=loop) for _ in range(2))
    watchdog = IdleWatchdog(idle_timeout=600)  # its own rounds never come in this test: the clock is ours
    try:
        watchdog.watch(quiet)
        watchdog.watch(busy)
        now = time.monotonic()
        for step in (1, 2):
            busy.feed_data(b"data: {}\n\n")
            watchdog.check(now + 250 * step)
        assert quiet.exception() is None  # silent for 500 s of 600
        busy.feed_data(b"data: {}\n\n")
        watchdog.check(now + 750)
        assert isinstance(quiet.exception(), IdleTimeout)
        assert busy.exception() is None  # it received something in every round
        with pytest.raises(IdleTimeout):
            await quiet.readany()
        assert (await busy.readany()).count(b"data:") == 3
        watchdog.unwatch(busy)
        watchdog.check(now + 10_000)
        assert busy.exception() is None  # no longer watched
    finally:
        await watchdog.close()


async def test_the_idle_watchdog_fires_a_wait_for_headers_that_lasts_the_timeout():
    watchdog = IdleWatchdog(idle_timeout=600)  # the clock is ours here too
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(None) as waiting:
                watchdog.watch_wait(waiting)
                now = time.monotonic()
                watchdog.check(now + 599)
                assert waiting.when() is None  # not yet
                watchdog.check(now + 601)
                await asyncio.sleep(3600)  # the headers that never come
        async with asyncio.timeout(None) as done:
            watchdog.watch_wait(done)
            watchdog.unwatch_wait(done)  # the headers came
            watchdog.check(time.monotonic() + 10_000)
            await asyncio.sleep(0)
        assert done.when() is None and not done.expired()
    finally:
        await watchdog.close()


async def test_headers_that_do_not_come_fail_within_the_idle_timeout(make_client, fake_upstream):
    """Even with a first-token timeout far longer: the wait for the status line is silence too."""
    client = await make_client(first_token_timeout=60, idle_timeout=0.3, request_timeout=120)
    fake_upstream.script("claude-primary", Scenario(headers_delay=3600))
    async with asyncio.timeout(20):  # far below the first-token timeout: only the idle one can end it
        resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
        body = await resp.read()
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["content"] * 4 + ["done"]
    assert events[-1]["model"] == "claude-backup"  # the primary timed out, the next model answered
