"""Time to first token with and without a `thread_id`: what storing a conversation costs.

    python -m bench.ttft_threads [--requests 200] [--database-url URL]

Starts the fake upstream and the service on 127.0.0.1, sends the same chat request
sequentially with and without a thread (alternating, so drift hits both alike), and prints
the median and p95 time from sending the request to reading the first `content` event.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import aiohttp
from aiohttp import web

from service.app import create_app
from service.log import configure_logging
from service.settings import load_settings
from tests.fake_upstream import FakeUpstream


async def first_token_ms(session: aiohttp.ClientSession, url: str, body: dict) -> float:
    started = time.perf_counter()
    async with session.post(url, json=body) as resp:
        line = await resp.content.readuntil(b"\n\n")
        elapsed = (time.perf_counter() - started) * 1000
        assert line.startswith(b'data: {"type":"content"'), line
        await resp.read()
    return elapsed


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"p50 {statistics.median(ordered):6.2f} ms   p95 {p95:6.2f} ms"


async def main(requests: int, database_url: str | None) -> None:
    configure_logging("warning")
    async with FakeUpstream() as upstream:
        settings = load_settings(
            models="anthropic/claude-bench",
            anthropic_api_key="sk-bench",
            anthropic_base_url=upstream.base_url,
            database_url=database_url,
            log_level="warning",
        )
        runner = web.AppRunner(create_app(settings), handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}/ai/stream/chat"
        thread = f"bench-{uuid.uuid4().hex[:8]}"
        plain_body = {"messages": [{"role": "user", "content": "hello"}]}
        thread_body = {**plain_body, "thread_id": thread}
        without, with_thread = [], []
        async with aiohttp.ClientSession() as session:
            for _ in range(10):  # warm up connections, SDK clients and the database
                await first_token_ms(session, url, plain_body)
                await first_token_ms(session, url, thread_body)
            for _ in range(requests):
                without.append(await first_token_ms(session, url, plain_body))
                with_thread.append(await first_token_ms(session, url, thread_body))
            async with session.delete(f"http://127.0.0.1:{port}/ai/threads/{thread}"):
                pass
        await runner.cleanup()
    backend = "sqlite (default file)" if not database_url else database_url.split(":", 1)[0]
    print(f"store: {backend}, {requests} requests each, thread history limit {settings.history_limit}")
    print(f"without thread_id: {summary(without)}")
    print(f"with thread_id:    {summary(with_thread)}")
    print(f"difference of medians: {statistics.median(with_thread) - statistics.median(without):+.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.database_url))
