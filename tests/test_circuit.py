"""Circuit breaking: a failing model is skipped for a while, probed once, and shown in /health."""

from __future__ import annotations

import asyncio

from providers.circuit import Circuit
from tests.conftest import parse_events
from tests.fake_upstream import Scenario

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def answer(client):
    return parse_events(await (await client.post("/ai/stream/chat", json=CHAT)).read())


async def circuit_of(client, name):
    health = await (await client.get("/health")).json()
    return next(m["circuit"] for m in health["models"] if m["name"] == name)


async def test_model_is_skipped_after_failures_then_probed(make_client, fake_upstream):
    client = await make_client(cooldown_failures=2, cooldown_seconds=0.5)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529))
    for _ in range(2):
        assert (await answer(client))[-1]["model"] == "claude-backup"
    state = await circuit_of(client, "anthropic/claude-primary")
    assert state["state"] == "open" and state["consecutive_failures"] == 2 and 0 < state["retry_in_seconds"] <= 0.5
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok"  # the service still answers through its fallbacks

    # While open, the primary is not even tried.
    assert (await answer(client))[-1]["model"] == "claude-backup"
    assert len(fake_upstream.requests_for("claude-primary")) == 2

    # After the cool-down one request probes it; it has recovered, so the circuit closes.
    await asyncio.sleep(0.55)
    assert (await circuit_of(client, "anthropic/claude-primary"))["state"] == "half_open"
    fake_upstream.script("claude-primary", Scenario())
    assert (await answer(client))[-1]["model"] == "claude-primary"
    assert (await circuit_of(client, "anthropic/claude-primary"))["state"] == "closed"


async def test_failed_probe_opens_the_circuit_again(make_client, fake_upstream):
    client = await make_client(cooldown_failures=1, cooldown_seconds=0.3)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=500))
    await answer(client)
    await asyncio.sleep(0.35)
    await answer(client)  # the probe fails
    assert len(fake_upstream.requests_for("claude-primary")) == 2
    assert (await circuit_of(client, "anthropic/claude-primary"))["state"] == "open"


async def test_only_one_probe_at_a_time(make_client, fake_upstream):
    client = await make_client(cooldown_failures=1, cooldown_seconds=0.2)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=500), Scenario(first_token_delay=0.3))
    await answer(client)
    await asyncio.sleep(0.25)
    results = await asyncio.gather(*(answer(client) for _ in range(4)))
    assert sorted(r[-1]["model"] for r in results) == ["claude-backup"] * 3 + ["claude-primary"]
    assert len(fake_upstream.requests_for("claude-primary")) == 2


async def test_every_model_cooling_down_is_still_tried_in_order(make_client, fake_upstream):
    client = await make_client(models="anthropic/claude-primary,anthropic/claude-backup", cooldown_failures=1, cooldown_seconds=60)
    for model in ("claude-primary", "claude-backup"):
        fake_upstream.script(model, Scenario(kind="http_error", status=529), Scenario())
    assert (await answer(client))[-1]["type"] == "error"
    assert (await circuit_of(client, "anthropic/claude-backup"))["state"] == "open"
    events = await answer(client)
    assert events[-1]["type"] == "done" and events[-1]["model"] == "claude-primary"


async def test_invalid_request_does_not_count_against_the_model(make_client, fake_upstream):
    client = await make_client(cooldown_failures=1)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=400))
    await answer(client)
    assert (await circuit_of(client, "anthropic/claude-primary"))["state"] == "closed"


async def test_client_leaving_a_probe_lets_the_next_request_probe(make_client, fake_upstream):
    client = await make_client(cooldown_failures=1, cooldown_seconds=0.1)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=500), Scenario(first_token_delay=5), Scenario())
    await answer(client)
    await asyncio.sleep(0.15)
    resp = await client.post("/ai/stream/chat", json=CHAT)  # takes the probe, then leaves
    await asyncio.sleep(0.1)
    resp.close()
    await fake_upstream.wait_for_disconnect(timeout=1.0)
    await asyncio.sleep(0.05)
    assert (await answer(client))[-1]["model"] == "claude-primary"


def test_circuit_state_machine():
    now = [0.0]
    circuit = Circuit(2, 10.0, clock=lambda: now[0])
    assert circuit.try_acquire() and circuit.state == "closed"
    circuit.failed()
    assert circuit.state == "closed"
    circuit.failed()
    assert circuit.state == "open" and not circuit.try_acquire()
    now[0] = 10.0
    assert circuit.state == "half_open"
    assert circuit.try_acquire() and not circuit.try_acquire()  # one probe
    circuit.released()
    assert circuit.try_acquire()
    circuit.succeeded()
    assert circuit.state == "closed" and circuit.failures == 0
