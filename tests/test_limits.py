"""Input limits, rate limits and open-stream limits: 4xx JSON before any upstream call."""

from __future__ import annotations

import asyncio

from tests.conftest import parse_events
from tests.fake_upstream import Scenario

KEY_A = "client-a-0123456789abcdef"
KEY_B = "client-b-0123456789abcdef"


def msgs(n, content="hi"):
    return {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": content} for i in range(n)]}


async def test_too_many_messages(make_client, fake_upstream):
    client = await make_client(max_messages=3)
    resp = await client.post("/ai/stream/chat", json=msgs(4))
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] == "too_many_messages" and "AI_MAX_MESSAGES" in body["error"] and "3" in body["error"]
    resp = await client.post("/ai/stream/chat", json=msgs(3))
    assert parse_events(await resp.read())[-1]["type"] == "done"
    assert len(fake_upstream.requests) == 1


async def test_too_much_input_text(make_client, fake_upstream):
    client = await make_client(max_input_chars=100)
    resp = await client.post("/ai/stream/generate", json={"prompt": "x" * 60, "system_prompt": "y" * 41})
    assert resp.status == 413
    body = await resp.json()
    assert body["code"] == "input_too_large" and "AI_MAX_INPUT_CHARS" in body["error"]
    resp = await client.post("/ai/stream/chat", json=msgs(2, "z" * 51))
    assert resp.status == 413
    assert fake_upstream.requests == []


async def test_defaults_are_generous(client):
    resp = await client.post("/ai/stream/chat", json=msgs(200, "w" * 1000))
    assert resp.status == 200
    await resp.read()


async def test_requests_per_minute_per_key(make_client, fake_upstream):
    client = await make_client(api_keys=f"a:{KEY_A},b:{KEY_B}", rate_limit_rpm=3)
    for _ in range(3):
        resp = await client.post("/ai/stream/generate", json={"prompt": "x"}, headers={"Authorization": f"Bearer {KEY_A}"})
        assert resp.status == 200
        await resp.read()
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"}, headers={"Authorization": f"Bearer {KEY_A}"})
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    body = await resp.json()
    assert body["code"] == "rate_limited" and "AI_RATE_LIMIT_RPM" in body["error"]
    assert len(fake_upstream.requests) == 3
    # Another key has its own allowance.
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"}, headers={"Authorization": f"Bearer {KEY_B}"})
    assert resp.status == 200
    await resp.read()
    # Health is never rate limited.
    assert (await client.get("/health")).status == 200


async def test_requests_per_minute_by_address_without_keys(make_client):
    client = await make_client(rate_limit_rpm=2)
    statuses = []
    for _ in range(3):
        resp = await client.get("/ai/threads/none/messages")
        statuses.append(resp.status)
    assert statuses == [404, 404, 429]


async def test_open_streams_per_client(make_client, fake_upstream):
    client = await make_client(api_keys=f"a:{KEY_A},b:{KEY_B}", max_concurrent_streams=2)
    fake_upstream.script("claude-primary", Scenario(first_token_delay=0.5))
    a = {"Authorization": f"Bearer {KEY_A}"}
    open_streams = [await client.post("/ai/stream/generate", json={"prompt": "x"}, headers=a) for _ in range(2)]
    assert all(r.status == 200 for r in open_streams)
    resp = await client.post("/ai/stream/generate", json={"prompt": "x", "stream": False}, headers=a)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert "AI_MAX_CONCURRENT_STREAMS" in (await resp.json())["error"]
    other = await client.post("/ai/stream/generate", json={"prompt": "x"}, headers={"Authorization": f"Bearer {KEY_B}"})
    assert other.status == 200
    for r in [*open_streams, other]:
        assert parse_events(await r.read())[-1]["type"] == "done"
    # Slots come back when streams end.
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"}, headers=a)
    assert resp.status == 200
    await resp.read()
    assert len(fake_upstream.requests) == 4


async def test_total_open_streams(make_client, fake_upstream):
    client = await make_client(max_total_streams=2)
    fake_upstream.script("claude-primary", Scenario(first_token_delay=0.5))
    first = await asyncio.gather(*(client.post("/ai/stream/generate", json={"prompt": "x"}) for _ in range(2)))
    resp = await client.post("/ai/stream/chat", json=msgs(1))
    assert resp.status == 429
    assert "AI_MAX_TOTAL_STREAMS" in (await resp.json())["error"]
    for r in first:
        await r.read()
    health = await (await client.get("/health")).json()
    assert health["open_streams"] == 0


async def test_disconnected_stream_frees_its_slot(make_client, fake_upstream):
    client = await make_client(max_concurrent_streams=1)
    fake_upstream.script("claude-primary", Scenario(tokens=["a"] * 100, token_delay=0.05), Scenario())
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
    await resp.content.readuntil(b"\n\n")
    resp.close()
    await fake_upstream.wait_for_disconnect(timeout=1.0)
    await asyncio.sleep(0.05)
    again = await client.post("/ai/stream/generate", json={"prompt": "x"})
    assert again.status == 200
    await again.read()
