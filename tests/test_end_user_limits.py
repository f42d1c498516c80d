"""Limits that fit the service's real clients: a backend (a Next.js route handler) puts all its
users behind one key or address, so per-client limits are off by default and each forwarded
end user (`user_id` under a key) can have limits of its own."""

from __future__ import annotations

import asyncio

from tests.conftest import parse_events
from tests.fake_upstream import Scenario

KEY = "backend-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


def ask(user_id=None):
    body = {"messages": [{"role": "user", "content": "x"}]}
    return {**body, "user_id": user_id} if user_id else body


async def test_defaults_never_throttle_one_backend_with_many_users(make_client, fake_upstream):
    client = await make_client(api_keys=KEY)
    fake_upstream.script("claude-primary", Scenario(first_token_delay=0.3))
    responses = await asyncio.gather(*(client.post("/ai/stream/chat", json=ask(f"u{n}"), headers=AUTH) for n in range(200)))
    assert [r.status for r in responses] == [200] * 200
    for r in responses:
        assert parse_events(await r.read())[-1]["type"] == "done"


async def test_each_end_user_has_its_own_stream_limit(make_client, fake_upstream):
    client = await make_client(api_keys=KEY, user_max_concurrent_streams=1)
    fake_upstream.script("claude-primary", Scenario(first_token_delay=0.3))
    alice = await client.post("/ai/stream/chat", json=ask("alice"), headers=AUTH)
    assert alice.status == 200
    second = await client.post("/ai/stream/chat", json=ask("alice"), headers=AUTH)
    assert second.status == 429
    assert "AI_USER_MAX_CONCURRENT_STREAMS" in (await second.json())["error"]
    bob = await client.post("/ai/stream/chat", json=ask("bob"), headers=AUTH)
    assert bob.status == 200
    for r in (alice, bob):
        await r.read()
    again = await client.post("/ai/stream/chat", json=ask("alice"), headers=AUTH)
    assert again.status == 200
    await again.read()
    assert len(fake_upstream.requests) == 3


async def test_each_end_user_has_its_own_rate(make_client, fake_upstream):
    client = await make_client(api_keys=KEY, user_rate_limit_rpm=2)
    statuses = []
    for _ in range(3):
        resp = await client.post("/ai/stream/chat", json=ask("alice"), headers=AUTH)
        statuses.append(resp.status)
        await resp.read()
    assert statuses == [200, 200, 429]
    resp = await client.post("/ai/stream/chat", json=ask("bob"), headers=AUTH)
    assert resp.status == 200
    await resp.read()
    # Requests without a user id are the backend's own: only its key's limits apply.
    resp = await client.post("/ai/stream/chat", json=ask(), headers=AUTH)
    assert resp.status == 200
    await resp.read()
    assert len(fake_upstream.requests) == 4


async def test_end_users_of_two_keys_are_apart(make_client):
    other = "other-0123456789abcdefgh"
    client = await make_client(api_keys=f"a:{KEY},b:{other}", user_rate_limit_rpm=1)
    for headers in (AUTH, {"Authorization": f"Bearer {other}"}):
        resp = await client.post("/ai/stream/chat", json=ask("alice"), headers=headers)
        assert resp.status == 200
        await resp.read()
