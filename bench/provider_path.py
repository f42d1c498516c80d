"""The provider request path alone: CPU per one-token answer, against a bare aiohttp call.

    python -m bench.provider_path [--loop asyncio|uvloop] [--requests 2000] [--rounds 5]

Starts the fake upstream (`bench.upstream`, one-token answers) in its own process and, in this
one, makes the same streaming call three ways, 20 at a time, alternating in rounds:

- `bare`: `aiohttp.ClientSession.post` and a split-and-`json.loads` read of the body, as
  `bench.baseline` does it;
- `model`: the configured Anthropic model's `stream()` (`providers.anthropic`): the request
  captured from the SDK, sent by `providers.transport`, the events decoded;
- `chain`: the same model through the fallback chain (first-token timeout, circuit, events).

CPU is this process's (`time.process_time`), per answer; the lowest round is printed with all
rounds. On two or more CPUs this process gets the first and the fake upstream the others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from bench.config import Config
from bench.procs import ALL_CPUS, Placement, Processes, start_upstream
from providers.base import Message, ModelRequest
from providers.dialects import adapter
from providers.endpoints import Endpoint
from providers.fallback import FallbackChain

MODEL = "claude-bench"
PROMPT = "Tell me a story about a relay."
HEADERS = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01", "content-type": "application/json"}


async def measure(url: str, requests: int, rounds: int) -> dict[str, list[float]]:
    endpoint = Endpoint("anthropic", "anthropic", url, "sk-bench", builtin=True)
    upstream = adapter("anthropic").create_client(endpoint, connect_timeout=5, idle_timeout=60)
    model = adapter("anthropic").create_model(upstream, MODEL, endpoint)
    chain = FallbackChain([model], first_token_timeout=3600)
    request = ModelRequest(messages=(Message("user", PROMPT),), max_tokens=1024, context="It is Monday.")
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    body = {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": PROMPT}], "stream": True}

    async def bare() -> None:
        async with session.post(url + "/v1/messages", data=json.dumps(body), headers=HEADERS) as response:
            buffer = b""
            async for chunk in response.content.iter_any():
                *events, buffer = (buffer + chunk).split(b"\n\n")
                for event in events:
                    for line in event.split(b"\n"):
                        if line.startswith(b"data:"):
                            json.loads(line[5:])

    async def direct() -> None:
        async for _ in model.stream(request):
            pass

    async def chained() -> None:
        async for _ in chain.stream(request):
            pass

    async def run(call: Callable[[], Awaitable[None]], count: int) -> None:
        slots = asyncio.Semaphore(20)

        async def one() -> None:
            async with slots:
                await call()

        await asyncio.gather(*(one() for _ in range(count)))

    results: dict[str, list[float]] = {"bare": [], "model": [], "chain": []}
    ways = {"bare": bare, "model": direct, "chain": chained}
    try:
        for _ in range(rounds):
            for name, call in ways.items():
                await run(call, 100)  # warm: connections open, templates captured
                started = time.process_time()
                await run(call, requests)
                results[name].append((time.process_time() - started) / requests * 1e6)
    finally:
        await session.close()
        await upstream.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    placement = Placement.split()
    with tempfile.TemporaryDirectory(prefix="bench-provider-") as tmp:
        procs = Processes(Path(tmp), placement=placement)
        try:
            _, url = start_upstream(procs, Config(tokens=1), max_seconds=900)
            if placement is not None:
                os.sched_setaffinity(0, placement.server)
            coroutine = measure(url, args.requests, args.rounds)
            if args.loop == "uvloop":
                import uvloop

                results = uvloop.run(coroutine)
            else:
                results = asyncio.run(coroutine)
        finally:
            procs.close()
            os.sched_setaffinity(0, ALL_CPUS)
    print(f"CPU per one-token answer, {args.loop} loop, {args.requests} answers a round, 20 at a time ({sys.executable})")
    for name, rounds in results.items():
        print(f"  {name:6s} {min(rounds):7.1f} us   rounds: {', '.join(f'{r:.0f}' for r in rounds)}")


if __name__ == "__main__":
    main()
