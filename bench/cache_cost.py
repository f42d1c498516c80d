"""What a 10-turn thread costs in input tokens, with and without prompt caching.

    python -m bench.cache_cost [--turns 10]

Runs the same thread (a 6,000-character system prompt, questions of 300 characters, answers of
1,200) through the service against the fake upstream with prefix-cache accounting (one token
per four characters; Claude's smallest cacheable prefix, 1024 tokens), once with
AI_PROMPT_CACHE=auto and once with off, and prints the input tokens per turn and in total, and
what they cost in units of one uncached input token: Anthropic bills a cache read at 0.1 and a
(5-minute) cache write at 1.25 of an input token. These are counts, not timings.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from service.app import create_app
from service.log import configure_logging
from service.settings import load_settings
from tests.fake_upstream import FakeUpstream, PromptCache, Scenario

SYSTEM = "You are a careful travel planner. Keep answers practical and specific. " * 84
READ_PRICE, WRITE_PRICE = 0.1, 1.25


@dataclass
class Totals:
    input: int = 0
    read: int = 0
    written: int = 0

    @property
    def cost(self) -> float:
        return (self.input - self.read - self.written) + READ_PRICE * self.read + WRITE_PRICE * self.written


async def run(turns: int, cache: str) -> list[Totals]:
    async with FakeUpstream() as upstream:
        upstream.prompt_cache = PromptCache(min_tokens=1024)
        upstream.script("claude-bench", Scenario(tokens=["Answer text. " * 92 + "Done."]))
        with tempfile.TemporaryDirectory() as folder:
            settings = load_settings(
                models="anthropic/claude-bench",
                anthropic_api_key="sk-bench",
                anthropic_base_url=upstream.base_url,
                database_url=f"sqlite:///{folder}/bench.db",
                prompt_cache=cache,
                log_level="warning",
            )
            runner = web.AppRunner(create_app(settings), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            per_turn = []
            async with aiohttp.ClientSession() as session:
                for n in range(turns):
                    body = {"thread_id": "bench", "system": SYSTEM,
                            "messages": [{"role": "user", "content": f"Question {n}: " + "what next? " * 27}]}
                    async with session.post(f"http://127.0.0.1:{port}/ai/stream/chat", json=body) as resp:
                        await resp.read()
                    sc = upstream.requests[-1].scenario
                    assert sc is not None
                    total = sc.input_tokens + sc.cache_read_input_tokens + sc.cache_creation_input_tokens
                    per_turn.append(Totals(total, sc.cache_read_input_tokens, sc.cache_creation_input_tokens))
            await runner.cleanup()
    return per_turn


async def main(turns: int) -> None:
    configure_logging("warning")
    cached, plain = await run(turns, "auto"), await run(turns, "off")
    print(f"{'turn':>4}  {'input':>7}  {'cache read':>10}  {'cache write':>11}  {'cost, cached':>12}  {'cost, off':>9}")
    for n, (c, p) in enumerate(zip(cached, plain), 1):
        print(f"{n:>4}  {c.input:>7}  {c.read:>10}  {c.written:>11}  {c.cost:>12.0f}  {p.cost:>9.0f}")
    sums = [Totals(sum(t.input for t in ts), sum(t.read for t in ts), sum(t.written for t in ts)) for ts in (cached, plain)]
    c, p = sums
    print(f"total {c.input:>6}  {c.read:>10}  {c.written:>11}  {c.cost:>12.0f}  {p.cost:>9.0f}")
    print(f"with caching the thread costs {c.cost / p.cost:.0%} of its input price without it")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.turns))
