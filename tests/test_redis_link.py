"""The link to Redis: optional, watched, and shown in /health and the metrics when it fails."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import ClientFactory
from tests.redis_fixtures import PrivateRedis, free_port, private_redis, redis_prefix, redis_url  # noqa: F401


async def _health(client: Any) -> dict[str, Any]:
    response = await client.get("/health")
    assert response.status == 200
    return await response.json()  # type: ignore[no-any-return]


async def _until_redis_ok(client: Any, ok: bool) -> dict[str, Any]:
    for _ in range(200):
        health = await _health(client)
        if health["redis"]["ok"] is ok:
            return health
        await asyncio.sleep(0.05)
    raise AssertionError(f"/health never showed redis ok={ok}: {health}")


async def test_without_redis_url_nothing_is_shared_and_health_is_ok(make_client: ClientFactory) -> None:
    client = await make_client()
    health = await _health(client)
    assert health["redis"] == {"configured": False, "ok": True}
    assert health["status"] == "ok"


async def test_a_reachable_redis_is_ok(make_client: ClientFactory, redis_url: str, redis_prefix: str) -> None:  # noqa: F811
    client = await make_client(redis_url=redis_url, redis_key_prefix=redis_prefix)
    health = await _health(client)
    assert health["redis"] == {"configured": True, "ok": True}
    assert health["status"] == "ok"


async def test_redis_stopped_then_back_degrades_health_then_recovers(
    make_client: ClientFactory, private_redis: PrivateRedis  # noqa: F811
) -> None:
    client = await make_client(redis_url=private_redis.url, redis_check_interval=0.05)
    assert (await _health(client))["redis"]["ok"] is True
    private_redis.stop()
    health = await _until_redis_ok(client, False)
    assert health["status"] == "degraded"
    metrics = await (await client.get("/metrics")).text()
    assert "ai_stream_redis_up 0.0" in metrics
    # Counted under whichever operation noticed first: the probe, or the circuits' subscription.
    assert 'ai_stream_redis_failures_total{operation="' in metrics
    private_redis.start()
    health = await _until_redis_ok(client, True)
    assert health["status"] == "ok"
    assert "ai_stream_redis_up 1.0" in await (await client.get("/metrics")).text()


async def test_redis_not_answering_at_start_still_streams(make_client: ClientFactory) -> None:
    client = await make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    health = await _health(client)
    assert health["redis"] == {"configured": True, "ok": False}
    assert health["status"] == "degraded"
    response = await client.post("/ai/stream/generate", json={"prompt": "hello"})
    assert response.status == 200
    body = await response.read()
    assert b'"type":"done"' in body
    # No address and no exception text reach the client.
    assert b"127.0.0.1" not in body and b"Error" not in body
