"""Time to first token with and without a `thread_id`: what storing a conversation costs.

    python -m bench.ttft_threads [--requests 200] [--database-url URL] [--token-budget 6000]

Starts the fake upstream and the service on 127.0.0.1, sends the same chat request
sequentially with and without a thread (alternating, so drift hits both alike), and prints
the median and p95 time from sending the request to reading the first `content` event. The
thread's prompt is planned within AI_HISTORY_TOKEN_BUDGET (`--token-budget`, 0 for none), and
the cost of that planning alone is measured too, on the same 50-message history, in process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit
import uuid
from datetime import UTC, datetime

import aiohttp
from aiohttp import web

from providers.base import Message
from service.app import create_app
from service.history import Budget, plan_replay
from service.log import configure_logging
from service.settings import load_settings
from storage import StoredMessage
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


def planning_us(history_limit: int, token_budget: int | None) -> float:
    """Microseconds to plan one prompt over a thread's replayed history (median of 7 runs)."""
    now = datetime.now(UTC)
    history = [
        StoredMessage(f"msg_{n}", "t", n + 1, "user" if n % 2 == 0 else "assistant", "hello " * 20, "m", "p", "end_turn",
                      "complete", 400 + 20 * n if n % 2 else None, 30 if n % 2 else None, now, replay_from_seq=1 if n % 2 else None)
        for n in range(history_limit)
    ]
    new_turn = (Message("user", "hello"),)
    budget = Budget(400_000, token_budget)
    runs = timeit.repeat(lambda: plan_replay(history, new_turn, None, budget, context="Current date and time: ..."),
                         number=200, repeat=7)
    return statistics.median(runs) / 200 * 1e6


async def main(requests: int, database_url: str | None, token_budget: int | None) -> None:
    configure_logging("warning")
    async with FakeUpstream() as upstream:
        settings = load_settings(
            models="anthropic/claude-bench",
            anthropic_api_key="sk-bench",
            anthropic_base_url=upstream.base_url,
            database_url=database_url,
            history_token_budget=token_budget,
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
    print(f"planning the prompt within the budget ({settings.history_limit} messages, token budget {token_budget}): "
          f"{planning_us(settings.history_limit, token_budget):.0f} us; characters only: "
          f"{planning_us(settings.history_limit, None):.0f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--token-budget", type=int, default=6000, help="AI_HISTORY_TOKEN_BUDGET; 0 for none")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.database_url, args.token_budget or None))
