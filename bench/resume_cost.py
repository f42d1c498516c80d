"""What a resumable answer costs per relayed token: the service's CPU per 1,000 tokens for the
same streams, as today's answers (numbered events, cancelled with their client), as resumable
answers kept in the process, and as resumable answers copied to Redis.

    python -m bench.resume_cost [--requests N] [--rounds R] [--token-delay S] [--redis-url URL]

The fake upstream (`bench.upstream`), the service (`python -m service`, on a CPU of its own when
there are two) and the load all run on 127.0.0.1, as in `python -m bench.relay`; each mode gets a
fresh service process, a warm-up, then `--requests` 200-token streams from 50 clients, and the
modes alternate `--rounds` times so that a busy machine weighs on each alike. The Redis is the
one at `--redis-url` (default redis://127.0.0.1:6379/0), under a key prefix of this run's own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import free_port, interrupt_on_sigterm, raise_nofile_limit
from bench.load import client_session, run_load
from bench.phases import GENERATE, PROMPT
from bench.procs import ALL_CPUS, Placement, Processes, Server, service_env, start_upstream, wait_healthy

MODES = {
    "today's answer": (PROMPT, {}),
    "resumable, in the process": ({**PROMPT, "resumable": True}, {}),
    "resumable, copied to Redis": ({**PROMPT, "resumable": True}, {"redis": True}),
}


async def measure(procs: Processes, upstream_url: str, payload: dict, env: dict[str, str], requests: int) -> float:
    """CPU ms of a fresh service per 1,000 relayed tokens."""
    port = free_port()
    cpus = procs.placement.server if procs.placement else ALL_CPUS
    proc, log_path = procs.spawn("service", ["-m", "service"], env={**service_env(upstream_url, port, procs.tmpdir), **env},
                                 python=procs.server_python, cpus=cpus)
    server = Server("service", proc, f"http://127.0.0.1:{port}", log_path)
    try:
        await wait_healthy(server)
        async with client_session() as session:
            url = server.url + GENERATE
            await run_load(session, url, payload, concurrency=50, requests=200, time_limit=90)
            before = server.cpu_seconds()
            load = await run_load(session, url, payload, concurrency=50, requests=requests, time_limit=90)
            used = server.cpu_seconds() - before
        if load.errors or load.completed != requests:
            raise RuntimeError(f"{load.errors} streams failed ({load.first_error}); {load.completed} of {requests} done")
        return used * 1000 / (load.tokens / 1000)
    finally:
        procs.stop(proc)


async def run(args: argparse.Namespace) -> dict[str, list[float]]:
    raise_nofile_limit()
    placement = Placement.split()
    figures: dict[str, list[float]] = {mode: [] for mode in MODES}
    prefix = f"ai-stream-bench-{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
        procs = Processes(Path(tmp), None, placement)
        try:
            if placement:
                os.sched_setaffinity(0, placement.rest)
            _, upstream_url = start_upstream(procs, 200, args.token_delay, max_seconds=1800)
            for round_ in range(args.rounds):
                for mode, (payload, extra) in MODES.items():
                    env = {"REDIS_URL": args.redis_url, "AI_REDIS_KEY_PREFIX": prefix} if extra.get("redis") else {}
                    figure = await measure(procs, upstream_url, payload, env, args.requests)
                    figures[mode].append(figure)
                    print(f"round {round_ + 1}, {mode}: {figure:.1f} ms", file=sys.stderr, flush=True)
        finally:
            procs.close()
            os.sched_setaffinity(0, ALL_CPUS)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="measured streams per mode and round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every mode (default 3)")
    parser.add_argument("--token-delay", type=float, default=0.0,
                        help="seconds between upstream tokens (default 0: every stream a firehose)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    interrupt_on_sigterm()
    started = time.monotonic()
    figures = asyncio.run(run(args))
    print(f"service CPU per 1,000 relayed tokens (200-token streams, {args.token_delay * 1000:g} ms apart, 50 clients, "
          f"median of {args.rounds}; "
          f"{time.monotonic() - started:.0f} s):")
    base = statistics.median(figures["today's answer"])
    for mode, values in figures.items():
        median = statistics.median(values)
        print(f"  {mode:28} {median:6.1f} ms  ({median - base:+.1f} ms; runs: {', '.join(f'{v:.1f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
