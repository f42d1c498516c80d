"""What the limits cost a request, kept in the process and kept on Redis (REDIS_URL).

    python -m bench.limits [--requests 20000] [--redis-url redis://127.0.0.1:6379/0]

Two measurements, each without and with Redis:

- the limiter alone: one request's `admit` (the per-minute bucket) and its stream slot taken
  and given back, run one after another in this process against the real Redis (a token
  bucket script, a lease script, and the lease's removal: three round trips); wall time and
  this process's CPU per request;
- a whole request through the app (`create_app`, in this process, against the fake upstream,
  `stream: false`, one-token answers), with AI_RATE_LIMIT_RPM and AI_MAX_CONCURRENT_STREAMS
  set so that every limit is checked; CPU of this process (app, fake upstream and client
  together: only the difference between the two runs is the limits' share) per request.

Redis's own CPU is not counted (it runs in its own process). AI_REDIS_LIMIT_TIMEOUT is raised
to 5 s, so that a stall of this process (a busy machine) never sends the measurement to the
per-process fallback. Keys go under a prefix of their own and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from service.app import create_app
from service.limits import RateLimiter
from service.log import configure_logging
from service.redis_link import RedisLink
from service.settings import load_settings
from service.shared_limits import SharedLimits
from tests.fake_upstream import FakeUpstream, Scenario

BIG = 10**9  # limits that are checked but never reached


async def _limiter_loop(limiter: RateLimiter, requests: int) -> tuple[float, float]:
    """Wall and CPU microseconds per request of `admit` plus a stream slot."""
    wall, cpu = time.perf_counter(), time.process_time()
    for n in range(requests):
        name = f"client-{n % 100}"
        await limiter.admit(name)
        async with limiter.stream(name):
            pass
    return (time.perf_counter() - wall) * 1e6 / requests, (time.process_time() - cpu) * 1e6 / requests


async def measure_limiter(redis_url: str, prefix: str, requests: int) -> dict[str, tuple[float, float]]:
    results = {}
    local = RateLimiter(BIG, BIG, BIG)
    await _limiter_loop(local, requests // 10)  # warm-up
    results["in the process"] = await _limiter_loop(local, requests)
    link = RedisLink(redis_url, prefix=prefix, check_interval=60)
    await link.start()
    if not link.up:
        raise SystemExit(f"Redis does not answer at {redis_url}")
    try:
        shared = RateLimiter(BIG, BIG, BIG)
        shared.shared = SharedLimits(link, lease_ttl=30, timeout=5.0)
        await _limiter_loop(shared, requests // 10)
        results["on Redis"] = await _limiter_loop(shared, requests)
        total_only = RateLimiter(0, 0, 1000)  # the defaults: only AI_MAX_TOTAL_STREAMS is on
        total_only.shared = shared.shared
        results["on Redis, defaults (total streams only)"] = await _limiter_loop(total_only, requests)
        await shared.shared.flush()
    finally:
        await link.close()
    return results


async def measure_requests(redis_url: str | None, prefix: str, requests: int) -> tuple[float, float]:
    """Requests a second, and CPU microseconds of this process per request."""
    async with FakeUpstream() as fake:
        database = tempfile.TemporaryDirectory(prefix="bench-limits-")
        fake.script("claude-bench", Scenario(tokens=["ok"]))
        settings = load_settings(
            models="anthropic/claude-bench", anthropic_api_key="sk-bench", anthropic_base_url=fake.base_url,
            log_level="warning", log_format="json", database_url=f"sqlite:///{database.name}/bench.db", rate_limit_rpm=BIG,
            max_concurrent_streams=BIG, max_total_streams=BIG, date_context=False,
            redis_url=redis_url, redis_key_prefix=prefix, redis_limit_timeout=5.0,
        )
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/ai/stream/generate"
        try:
            async with aiohttp.ClientSession() as session:

                async def one() -> None:
                    async with session.post(url, json={"prompt": "x", "stream": False}) as response:
                        assert response.status == 200, response.status
                        await response.read()

                async def run(count: int, concurrency: int = 20) -> None:
                    queue = iter(range(count))

                    async def worker() -> None:
                        for _ in queue:
                            await one()

                    await asyncio.gather(*(worker() for _ in range(concurrency)))

                await run(requests // 10)
                wall, cpu = time.perf_counter(), time.process_time()
                await run(requests)
                return requests / (time.perf_counter() - wall), (time.process_time() - cpu) * 1e6 / requests
        finally:
            await runner.cleanup()
            database.cleanup()


async def _delete_keys(redis_url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def main(args: argparse.Namespace) -> None:
    prefix = f"ai-stream-bench-{uuid.uuid4().hex[:8]}:"
    try:
        limiter = await measure_limiter(args.redis_url, prefix, args.requests)
        print("limiter alone (admit + stream slot), per request:")
        for name, (wall, cpu) in limiter.items():
            print(f"  {name:42} {wall:8.1f} us wall {cpu:8.1f} us CPU")
        count = max(args.requests // 4, 1000)
        rows: list[tuple[str, Any]] = [
            ("without REDIS_URL", await measure_requests(None, prefix, count)),
            ("with REDIS_URL", await measure_requests(args.redis_url, prefix, count)),
        ]
        print(f"whole requests through the app ({count}, 20 at a time, every limit on):")
        for name, (rate, cpu) in rows:
            print(f"  {name:42} {rate:8.0f} req/s {cpu:8.1f} us CPU per request")
    finally:
        await _delete_keys(args.redis_url, prefix)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    configure_logging("warning", "json")
    asyncio.run(main(parser.parse_args()))
