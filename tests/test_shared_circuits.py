"""Circuits shared through Redis: a model whose circuit opens on one replica is skipped by the
others, a replica that starts later reads what is open, a probe that succeeds anywhere closes it
everywhere, and only the model's own failures move it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio

from tests.conftest import ClientFactory, parse_events
from tests.fake_upstream import FakeUpstream, Scenario
from tests.redis_fixtures import redis_prefix, redis_url  # noqa: F401

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
PRIMARY = "anthropic/claude-primary"


async def answer(client: Any) -> dict[str, Any]:
    return parse_events(await (await client.post("/ai/stream/chat", json=CHAT)).read())[-1]  # type: ignore[no-any-return]


async def circuit_of(client: Any, name: str = PRIMARY) -> dict[str, Any]:
    health = await (await client.get("/health")).json()
    return next(m["circuit"] for m in health["models"] if m["name"] == name)  # type: ignore[no-any-return]


async def until_state(client: Any, state: str, name: str = PRIMARY) -> dict[str, Any]:
    for _ in range(200):
        circuit = await circuit_of(client, name)
        if circuit["state"] == state:
            return circuit
        await asyncio.sleep(0.025)
    raise AssertionError(f"the circuit of {name} never became {state}: {circuit}")


async def test_a_model_failing_on_one_replica_is_skipped_by_all(
    make_client: ClientFactory, fake_upstream: FakeUpstream, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    settings = {"redis_url": redis_url, "redis_key_prefix": redis_prefix, "cooldown_failures": 2, "cooldown_seconds": 1.0}
    a = await make_client(**settings)
    b = await make_client(**settings)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529))
    assert (await answer(a))["model"] == "claude-backup"
    assert (await circuit_of(b))["state"] == "closed"  # one failure: nothing is told
    assert (await answer(a))["model"] == "claude-backup"
    circuit = await until_state(b, "open")
    assert 0 < circuit["retry_in_seconds"] <= 1.0
    # B does not even try the primary.
    assert (await answer(b))["model"] == "claude-backup"
    assert len(fake_upstream.requests_for("claude-primary")) == 2
    # A replica that starts now reads the open circuit before it serves.
    c = await make_client(**settings)
    assert (await circuit_of(c))["state"] == "open"
    assert (await answer(c))["model"] == "claude-backup"
    assert len(fake_upstream.requests_for("claude-primary")) == 2

    # After the cool-down B's probe finds the model well again: closed on A and C too.
    await until_state(b, "half_open")
    fake_upstream.script("claude-primary", Scenario())
    assert (await answer(b))["model"] == "claude-primary"
    await until_state(a, "closed")
    await until_state(c, "closed")
    assert (await answer(a))["model"] == "claude-primary"


async def test_a_failed_probe_opens_it_everywhere_again(
    make_client: ClientFactory, fake_upstream: FakeUpstream, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    settings = {"redis_url": redis_url, "redis_key_prefix": redis_prefix, "cooldown_failures": 1, "cooldown_seconds": 0.3}
    a = await make_client(**settings)
    b = await make_client(**settings)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=500))
    await answer(a)
    await until_state(b, "open")
    await until_state(b, "half_open")
    await answer(b)  # the probe fails
    assert len(fake_upstream.requests_for("claude-primary")) == 2
    await until_state(a, "open")


async def test_what_the_client_sends_never_opens_a_shared_circuit(
    make_client: ClientFactory, fake_upstream: FakeUpstream, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    settings = {"redis_url": redis_url, "redis_key_prefix": redis_prefix, "cooldown_failures": 1}
    a = await make_client(**settings)
    b = await make_client(**settings)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=400))  # the request's fault
    assert (await answer(a))["type"] == "error"
    for _ in range(3):
        await a.post("/ai/stream/chat", json={"messages": []})  # invalid: 400 before any model
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await client.exists(f"{redis_prefix}circuit:{PRIMARY}") == 0
    finally:
        await client.aclose()
    assert (await circuit_of(a))["state"] == (await circuit_of(b))["state"] == "closed"


async def test_messages_that_are_not_ours_are_ignored(
    make_client: ClientFactory, fake_upstream: FakeUpstream, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    a = await make_client(redis_url=redis_url, redis_key_prefix=redis_prefix)
    channel = f"{redis_prefix}circuits"
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        for junk in (
            b"not json", b"[1, 2]", b"\xff\xfe",
            json.dumps({"origin": "x", "model": PRIMARY, "state": "open", "cooldown_ms": "30000"}),
            json.dumps({"origin": "x", "model": PRIMARY, "state": "open", "cooldown_ms": 10**12}),
            json.dumps({"origin": "x", "model": "anthropic/unknown", "state": "open", "cooldown_ms": 1000}),
            json.dumps({"origin": "x", "model": PRIMARY, "state": "melted", "cooldown_ms": 1000}),
        ):
            await client.publish(channel, junk)
        # A well-formed one after them still applies: the subscription survived the junk.
        await client.publish(channel, json.dumps({"origin": "x", "model": PRIMARY, "state": "open", "cooldown_ms": 60000}))
        circuit = await until_state(a, "open")
        assert circuit["retry_in_seconds"] > 50
        assert (await answer(a))["model"] == "claude-backup"
    finally:
        await client.aclose()
