"""The fake model upstream in a process of its own, for the relay benchmark.

    python -m bench.upstream [--tokens 200] [--token-delay 0] [--model claude-bench]

Runs `tests.fake_upstream.FakeUpstream` on an ephemeral 127.0.0.1 port and prints its base URL
as the first line on stdout (the benchmark reads it; nothing else is printed there). Requests
for `--model` stream `--tokens` short text tokens, `--token-delay` seconds apart (default 0);
requests for the model `idle` open the stream and then stay silent for an hour, so they can be
held open cheaply. Stops on SIGTERM/SIGINT, or after `--max-seconds` in case the benchmark
that started it is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from bench.common import raise_nofile_limit
from tests.fake_upstream import FakeUpstream, Scenario

IDLE_MODEL = "idle"
# Short, realistic token strings (a word or a piece of one, most with a leading space).
TOKEN_WORDS = ("The", " quick", " tok", "en", " is", " re", "layed", ",", " as", " a", " stream", ".", "\n")


def bench_tokens(count: int) -> list[str]:
    return [TOKEN_WORDS[i % len(TOKEN_WORDS)] for i in range(count)]


async def serve(tokens: int, token_delay: float, model: str, max_seconds: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with FakeUpstream() as fake:
        fake.script(model, Scenario(tokens=bench_tokens(tokens), token_delay=token_delay))
        fake.script(IDLE_MODEL, Scenario(tokens=["late"], first_token_delay=3600))
        print(fake.base_url, flush=True)
        deadline = loop.time() + max_seconds
        while not stop.is_set() and loop.time() < deadline:
            # The fake records every request; forget them so a long run does not grow.
            fake.requests.clear()
            fake.disconnects.clear()
            try:
                await asyncio.wait_for(stop.wait(), timeout=5)
            except TimeoutError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200, help="text tokens per answer (default 200)")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens (default 0)")
    parser.add_argument("--model", default="claude-bench", help="model name that gets the token stream")
    parser.add_argument("--max-seconds", type=float, default=900, help="exit by itself after this long")
    args = parser.parse_args()
    raise_nofile_limit()
    asyncio.run(serve(args.tokens, args.token_delay, args.model, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
