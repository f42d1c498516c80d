"""A client that goes away stops the upstream request: nobody pays for tokens nobody reads."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fake_upstream import Scenario


@pytest.mark.parametrize("model", ["claude-primary", "gpt-fallback"])
async def test_disconnect_mid_stream_cancels_upstream(client, fake_upstream, model):
    fake_upstream.script(model, Scenario(tokens=["tok"] * 200, token_delay=0.05))
    resp = await client.post("/ai/stream/generate", json={"prompt": "x", "model": model})
    assert (await resp.content.readuntil(b"\n\n")).startswith(b'data: {"type":"content"')
    resp.close()  # the browser tab closes
    gone_at = time.monotonic()
    record = await fake_upstream.wait_for_disconnect(timeout=1.0)
    assert record.model == model
    assert record.ended_at is not None and record.ended_at - gone_at < 1.0
    assert fake_upstream.active_streams == 0


async def test_disconnect_while_waiting_for_first_token_cancels_upstream(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(first_token_delay=30))
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
    assert resp.status == 200  # headers came at once, before any text
    await asyncio.sleep(0.1)
    resp.close()
    record = await fake_upstream.wait_for_disconnect(timeout=1.0)
    assert record.model == "claude-primary"
    # The chain did not move on to another model for a client that is gone.
    await asyncio.sleep(0.2)
    assert fake_upstream.requests_for("claude-backup") == []


async def test_disconnect_during_stall_after_text(make_client, fake_upstream):
    client = await make_client(idle_timeout=30)
    fake_upstream.script("claude-primary", Scenario(kind="stall", after_tokens=1))
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
    await resp.content.readuntil(b"\n\n")
    resp.close()
    await fake_upstream.wait_for_disconnect(timeout=1.0)


async def test_service_keeps_serving_after_disconnects(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(tokens=["a"] * 50, token_delay=0.02), Scenario())
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
    await resp.content.readuntil(b"\n\n")
    resp.close()
    await fake_upstream.wait_for_disconnect(timeout=1.0)
    again = await client.post("/ai/stream/generate", json={"prompt": "x"})
    assert (await again.read()).endswith(b'"usage":{"input_tokens":11,"output_tokens":4}}\n\n')
