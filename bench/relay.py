"""What the service costs over a bare relay: CPU per relayed token, time to first token, memory.

    python -m bench.relay [--quick] [--json PATH] [--workers N] [--workers-compare] [--python PATH]

Starts, all on 127.0.0.1: the fake upstream (`bench.upstream`) in its own process, then, each
fresh for each group of measurements, the service (`python -m service`) and the bare baseline
(`bench.baseline`) as subprocesses, and loads them from this process:

- CPU time of the server process(es) per 1,000 relayed tokens (psutil user+system, summed over
  children), over a fixed number of 200-token streams from 50 concurrent clients, after a warm-up;
- time to first token (request sent to first `content` event) p50/p99 at 1, 50 and 500 streams;
- resident memory (RSS) at rest and with 1,000 open idle streams;
- with `--workers-compare`, service throughput with `--workers 2` against one process.

Then prints a table with the targets (PASS/FAIL) and, with `--json`, writes every number.

On a machine with two or more CPUs the measured server gets the first to itself and the fake
upstream and the load generator share the others (`--no-pin` to let them mix), so that CPU per
token does not depend on who the scheduler favoured; `--workers-compare` pins nothing.

Memory depends on what the server process imports, and a development environment holds more
than a deployment (the structured logger, for one, loads a console renderer when it finds one).
`--python` runs both servers under another interpreter, such as one of a virtual environment
made with `pip install .` alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import interrupt_on_sigterm, raise_nofile_limit
from bench.phases import Bench, Config, compare_workers, measure_load, measure_memory
from bench.procs import ALL_CPUS, Placement, Processes, ServerFailed, start_upstream
from bench.report import evaluate_targets, print_table


async def run(cfg: Config) -> dict[str, Any]:
    """Every measurement of `cfg`, service and baseline alternating; all processes stopped at the end."""
    nofile = raise_nofile_limit()
    results: dict[str, Any] = {
        "config": asdict(cfg),
        "machine": {
            "cpus": os.cpu_count(),
            "nofile": nofile,
            "loadavg_start": os.getloadavg(),
            "python": sys.executable,
        },
        "service": {},
        "baseline": {},
    }
    # With --workers the service needs every core: nothing is pinned then.
    placement = Placement.split() if cfg.pin and not (cfg.workers and cfg.workers > 1) else None
    results["machine"]["placement"] = placement.describe() if placement else "none"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        procs = Processes(Path(tmp), cfg.python, placement)
        try:
            if placement:
                os.sched_setaffinity(0, placement.rest)  # the load generator
            upstream_proc, upstream_url = start_upstream(procs, cfg.tokens, cfg.token_delay, max_seconds=1800)
            bench = Bench(procs, upstream_url, upstream_proc.pid, cfg)
            for group, measure in (("load", measure_load), ("memory", measure_memory)):
                for kind in ("service", "baseline"):
                    print(f"[{time.monotonic() - started:5.0f} s] {kind}: {group} ...", file=sys.stderr, flush=True)
                    try:
                        results[kind][group] = await measure(bench, kind)
                    except ServerFailed as exc:
                        results[kind][group] = {"error": str(exc)}
                        print(f"{kind} {group} failed: {exc}", file=sys.stderr)
            if cfg.workers_compare:
                print(
                    f"[{time.monotonic() - started:5.0f} s] service: --workers 2 vs 1 ...", file=sys.stderr, flush=True
                )
                # Two workers against one, each free to use every core, as in production.
                procs.placement = None
                for pid in (0, upstream_proc.pid):
                    os.sched_setaffinity(pid, ALL_CPUS)
                results["workers_compare"] = await compare_workers(bench)
        finally:
            procs.close()
            os.sched_setaffinity(0, ALL_CPUS)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["targets"] = evaluate_targets(results)
    return results


def parse_args(argv: list[str] | None = None) -> tuple[Config, str | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--tokens", type=int, help="text tokens per answer (default 200)")
    parser.add_argument("--token-delay", type=float, help="seconds between upstream tokens (default 0)")
    parser.add_argument("--requests", type=int, help="streams in the CPU phase (default 2000, quick 300)")
    parser.add_argument("--concurrency", type=int, help="clients in the warm-up and CPU phase (default 50)")
    parser.add_argument("--warmup", type=int, help="warm-up streams (default 200, quick 50)")
    parser.add_argument("--ttft", help="concurrency:requests pairs, e.g. 1:200,50:1000,500:1000")
    parser.add_argument("--idle", type=int, help="idle streams held open for the memory reading (default 1000)")
    parser.add_argument("--workers", type=int, help="pass --workers N to `python -m service`")
    parser.add_argument(
        "--workers-compare", action="store_true", help="also measure service throughput with --workers 2 vs 1"
    )
    parser.add_argument("--compare-requests", type=int, help="streams per side of --workers-compare (default 1000)")
    parser.add_argument("--compare-concurrency", type=int, help="clients for --workers-compare (default 100)")
    parser.add_argument(
        "--phase-time-limit", type=float, help="seconds any one load phase may take (default 90, quick 30)"
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="interpreter for the service and the baseline, e.g. of a virtual environment with only the "
        "runtime dependencies (`pip install .`), so that memory is measured as deployed (default: this one)",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not give the measured server a CPU of its own (default: pinned when there are two or more)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON to PATH")
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    for name in (
        "tokens",
        "token_delay",
        "requests",
        "concurrency",
        "warmup",
        "idle",
        "workers",
        "compare_requests",
        "compare_concurrency",
        "phase_time_limit",
        "python",
    ):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.ttft:
        cfg.ttft_levels = [(int(c), int(n)) for c, n in (pair.split(":") for pair in args.ttft.split(","))]
    cfg.workers_compare = args.workers_compare
    cfg.pin = args.pin
    return cfg, args.json


def main(argv: list[str] | None = None) -> int:
    cfg, json_path = parse_args(argv)
    interrupt_on_sigterm()
    try:
        results = asyncio.run(run(cfg))
    except KeyboardInterrupt:
        print("interrupted; all benchmark processes were stopped", file=sys.stderr)
        return 130
    print_table(results)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
