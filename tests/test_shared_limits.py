"""Limits shared through Redis by several apps (replicas) in one test process: the per-minute
buckets, failed logins and open-stream leases add up across them, leases of a replica that
died expire, and a Redis that fails or stalls leaves each replica counting on its own."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import redis.asyncio

from service.redis_link import RedisLink
from service.shared_limits import SharedLimits
from tests.conftest import ClientFactory, parse_events
from tests.fake_upstream import FakeUpstream, Scenario
from tests.redis_fixtures import PrivateRedis, private_redis, redis_prefix, redis_url  # noqa: F401

KEY = "backend-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
WRONG = {"Authorization": "Bearer wrong-0123456789abcdef"}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def replicas(make_client: ClientFactory, url: str, prefix: str, count: int = 2, **settings: Any) -> list[Any]:
    # A test machine's busy event loop must not pass for a stalled Redis (the stall test sets its own).
    settings.setdefault("redis_limit_timeout", 1.0)
    return [await make_client(redis_url=url, redis_key_prefix=prefix, **settings) for _ in range(count)]


async def status_of(client: Any, path: str = "/ai/stream/generate", body: Any = None, headers: Any = None) -> int:
    response = await client.post(path, json=body or {"prompt": "x"}, headers=headers)
    await response.read()
    return int(response.status)


async def until_redis(client: Any, ok: bool) -> None:
    for _ in range(400):
        health = await (await client.get("/health")).json()
        if health["redis"]["ok"] is ok:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"/health never showed redis ok={ok}")


async def test_requests_per_minute_add_up_across_replicas(
    make_client: ClientFactory, fake_upstream: FakeUpstream, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    a, b = await replicas(make_client, redis_url, redis_prefix, rate_limit_rpm=4)
    assert [await status_of(a), await status_of(b), await status_of(a), await status_of(b)] == [200] * 4
    for replica in (a, b):
        response = await replica.post("/ai/stream/generate", json={"prompt": "x"})
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 15  # one request every 15 s
        body = await response.json()
        assert body["code"] == "rate_limited" and "AI_RATE_LIMIT_RPM" in body["error"]
    assert len(fake_upstream.requests) == 4
    # A replica of another deployment (another key prefix) has an allowance of its own.
    (other,) = await replicas(make_client, redis_url, redis_prefix + "other:", count=1, rate_limit_rpm=4)
    assert await status_of(other) == 200


async def test_end_users_rates_add_up_across_replicas(
    make_client: ClientFactory, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    a, b = await replicas(make_client, redis_url, redis_prefix, api_keys=KEY, user_rate_limit_rpm=2)
    alice = {**CHAT, "user_id": "alice"}
    statuses = [await status_of(r, "/ai/stream/chat", alice, AUTH) for r in (a, b, a)]
    assert statuses == [200, 200, 429]
    assert await status_of(b, "/ai/stream/chat", {**CHAT, "user_id": "bob"}, AUTH) == 200


async def test_failed_logins_add_up_across_replicas(
    make_client: ClientFactory, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    a, b = await replicas(make_client, redis_url, redis_prefix, api_keys=KEY, auth_failures_per_minute=2)
    assert await status_of(a, headers=WRONG) == 401
    assert await status_of(b, headers=WRONG) == 401  # the second failure: the address is used up
    # Blocked, even with the right key, on the replica that saw the bucket empty...
    response = await b.post("/ai/stream/generate", json={"prompt": "x"}, headers=AUTH)
    assert response.status == 429 and "AI_AUTH_FAILURES_PER_MINUTE" in (await response.json())["error"]
    # ... and on the other at its first failure there (that try itself still gets its 401).
    assert await status_of(a, headers=AUTH) == 200
    assert await status_of(a, headers=WRONG) == 401
    assert await status_of(a, headers=AUTH) == 429


async def test_open_streams_add_up_across_replicas(
    make_client: ClientFactory, fake_upstream: FakeUpstream, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    a, b = await replicas(make_client, redis_url, redis_prefix, max_concurrent_streams=2, max_total_streams=3)
    slow = Scenario(first_token_delay=0.5)
    fake_upstream.script("claude-primary", slow, slow, Scenario())
    first = await a.post("/ai/stream/generate", json={"prompt": "x"})
    second = await b.post("/ai/stream/generate", json={"prompt": "x"})
    assert first.status == second.status == 200
    for replica in (a, b):
        response = await replica.post("/ai/stream/generate", json={"prompt": "x", "stream": False})
        assert response.status == 429 and response.headers["Retry-After"] == "1"
        assert "AI_MAX_CONCURRENT_STREAMS" in (await response.json())["error"]
    for response in (first, second):
        assert parse_events(await response.read())[-1]["type"] == "done"
    # Slots come back on Redis when streams end.
    await asyncio.sleep(0.05)
    assert await status_of(b) == 200


async def test_total_open_streams_add_up_across_replicas(
    make_client: ClientFactory, fake_upstream: FakeUpstream, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    a, b = await replicas(make_client, redis_url, redis_prefix, max_total_streams=2)
    slow = Scenario(first_token_delay=0.5)
    fake_upstream.script("claude-primary", slow, slow, Scenario())
    open_ = [await a.post("/ai/stream/generate", json={"prompt": "x"}), await b.post("/ai/stream/generate", json={"prompt": "x"})]
    response = await b.post("/ai/stream/chat", json=CHAT)
    assert response.status == 429 and "AI_MAX_TOTAL_STREAMS" in (await response.json())["error"]
    for stream in open_:
        await stream.read()


async def test_a_slot_is_given_back_whatever_ends_the_request(
    make_client: ClientFactory, fake_upstream: FakeUpstream, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    a, b = await replicas(make_client, redis_url, redis_prefix, max_concurrent_streams=1)
    client = redis.asyncio.Redis.from_url(redis_url)
    leases = f"{redis_prefix}streams:client:127.0.0.1"
    try:
        fake_upstream.script("claude-primary", Scenario(tokens=["a"] * 100, token_delay=0.05), Scenario())
        stream = await a.post("/ai/stream/generate", json={"prompt": "x"})
        await stream.content.readuntil(b"\n\n")
        assert await client.zcard(leases) == 1
        assert await status_of(b) == 429
        stream.close()  # the client leaves mid-answer
        await fake_upstream.wait_for_disconnect(timeout=2.0)
        for _ in range(100):
            if await client.zcard(leases) == 0:
                break
            await asyncio.sleep(0.02)
        assert await client.zcard(leases) == 0
        # A request that fails after taking its slot (a body that is not JSON: 400) gives it back too.
        for _ in range(3):
            response = await a.post("/ai/stream/generate", data=b"{not json", headers={"Content-Type": "application/json"})
            assert response.status == 400
        assert await client.zcard(leases) == 0
        assert await status_of(b) == 200
    finally:
        await client.aclose()


async def link_for(url: str, prefix: str) -> RedisLink:
    link = RedisLink(url, prefix=prefix, check_interval=60)
    await link.start()
    assert link.up
    return link


async def test_a_dead_replicas_leases_expire_and_live_ones_are_kept(redis_url: str, redis_prefix: str) -> None:  # noqa: F811
    link = await link_for(redis_url, redis_prefix)
    try:
        shared = SharedLimits(link, lease_ttl=2.0, timeout=1.0)
        dead = shared.lease("client", "c", 1, 0)
        assert await shared.acquire(dead) == ""  # taken, then never refreshed: its process died
        other = shared.lease("client", "c", 1, 0)
        assert await shared.acquire(other) == "client"
        await asyncio.sleep(2.1)
        assert await shared.acquire(other) == ""  # the dead one's slot is back
        shared.hold(other)
        await asyncio.sleep(1.0)
        await shared.refresh()
        await asyncio.sleep(1.2)  # past the first expiry: the refresh kept it
        assert await shared.acquire(shared.lease("client", "c", 1, 0)) == "client"
        # A Redis that lost the lease (restarted) gets it back at the next refresh.
        await link.client.delete(f"{redis_prefix}streams:client:c")  # type: ignore[union-attr]
        await shared.refresh()
        assert await shared.acquire(shared.lease("client", "c", 1, 0)) == "client"
        shared.release(other)
        await shared.flush()
        assert await shared.acquire(shared.lease("client", "c", 1, 0)) == ""
    finally:
        await link.close()


async def test_redis_stopped_mid_run_then_back(
    make_client: ClientFactory, fake_upstream: FakeUpstream, private_redis: PrivateRedis  # noqa: F811
) -> None:
    a, b = await replicas(make_client, private_redis.url, "t:", rate_limit_rpm=2, redis_check_interval=0.05)
    assert [await status_of(a), await status_of(b), await status_of(a)] == [200, 200, 429]
    private_redis.stop()
    # Each replica counts on its own: two requests each (their own buckets are untouched), then 429.
    for replica in (a, b):
        assert [await status_of(replica) for _ in range(3)] == [200, 200, 429]
        health = await (await replica.get("/health")).json()
        assert health["status"] == "degraded" and health["redis"] == {"configured": True, "ok": False}
        assert 'ai_stream_redis_failures_total{operation="' in await (await replica.get("/metrics")).text()
    private_redis.start()  # a new, empty Redis
    await until_redis(a, True)
    await until_redis(b, True)
    assert [await status_of(a), await status_of(b), await status_of(a)] == [200, 200, 429]


async def test_a_stalled_redis_costs_a_request_one_short_wait(
    make_client: ClientFactory, private_redis: PrivateRedis  # noqa: F811
) -> None:
    (a,) = await replicas(
        make_client, private_redis.url, "t:", count=1, rate_limit_rpm=5, max_concurrent_streams=5,
        redis_check_interval=0.05, redis_limit_timeout=0.2,
    )
    assert await status_of(a) == 200
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        # The first command waits out its timeout and marks Redis down; what follows skips it.
        assert [await status_of(a) for _ in range(3)] == [200, 200, 200]
        health = await (await a.get("/health")).json()
        assert health["redis"]["ok"] is False
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    await until_redis(a, True)
    assert await status_of(a) == 200
