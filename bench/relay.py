"""What the service costs over a bare relay, side by side in one run, with PASS/FAIL per target.

    python -m bench.relay [--quick] [--only PHASES] [--resumable] [--service-loop asyncio|uvloop]
                          [--json PATH] [--python PATH] [--workers N] [--workers-compare]

Starts, all on 127.0.0.1: the fake upstream (`bench.upstream`) in its own process, then, fresh
for each group of measurements, the service (`python -m service`) and the bare baseline
(`bench.baseline`) as subprocesses, and loads them from this process. The phases (`--only`):

- `load`: CPU time of the server process(es) per 1,000 relayed tokens (psutil user+system, summed
  over children) over 200-token streams sent as fast as the upstream can, from 50 concurrent
  clients after a warm-up; time to first token (request sent to first `content` event) p50/p99
  at 1, 50 and 500 streams;
- `costs`: CPU per request with one-token answers; CPU per 1,000 tokens when each token is its
  own upstream chunk (5 ms apart); TTFT p99 of 50 paced streams started at the same moment;
- `memory`: resident memory (RSS) at rest and with 1,000 open idle streams, per stream, and a
  process that only imports aiohttp and the configured vendors' SDKs beside it;
- `start`: seconds from process start until `/health` answers, median of a few fresh starts;
- `capacity`: concurrent streams at 50 tokens/s one process carries before the added latency per
  token (p99) passes 50 ms (`bench.capacity`, `bench.timing`): the service as it runs, the
  baseline on the same event loop, and the baseline on asyncio's default loop;
- `overload`: 3x the service's capacity, against both; streams refused up front (429/503 with
  `Retry-After`) against streams accepted, and how the accepted ones ended;
- `resumable` (`--resumable`): CPU per paced token of `"resumable": true` answers without Redis
  and with REDIS_URL, beside plain ones; skipped when the service does not make them.

With `--workers-compare`, also service throughput with `--workers 2` against one process.
Then prints a table with the targets (PASS/FAIL) and, with `--json`, writes every number.

On a machine with two or more CPUs the measured server gets the first to itself and the fake
upstream and the load generator share the others (`--no-pin` to let them mix), so that CPU per
token does not depend on who the scheduler favoured; `--workers-compare` pins nothing. The fake
upstream and the load generator run on uvloop when it is installed (`--rig-loop`), the same for
both servers. `--service-loop` sets AI_EVENT_LOOP for the service process (which the service
is expected to honour); which loop each server really runs is read from its memory map.

Memory depends on what the server process imports, and a development environment holds more
than a deployment (the structured logger, for one, loads a console renderer when it finds one).
`--python` runs both servers under another interpreter, such as one of a virtual environment
made with `pip install .` alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.capacity import measure_capacity, measure_overload, warm_up
from bench.common import LOOPS, interrupt_on_sigterm, new_event_loop, raise_nofile_limit
from bench.config import PHASES, Config
from bench.costs import measure_costs, measure_resumable
from bench.phases import Bench, compare_workers, measure_load, measure_memory
from bench.procs import ALL_CPUS, Placement, Processes, ServerFailed, start_upstream
from bench.report import capacity_of, evaluate_targets
from bench.report_table import print_table
from bench.startup import measure_start, sdk_only_memory

SIDE_BY_SIDE = {"load": measure_load, "costs": measure_costs, "memory": measure_memory, "start": measure_start}


class Progress:
    """One line on stderr per step, with the seconds since the run started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f} s] {text}", file=sys.stderr, flush=True)


async def side_by_side(bench: Bench, results: dict[str, Any], group: str, progress: Progress) -> None:
    """One group of measurements, on a fresh service and then a fresh baseline."""
    for kind in ("service", "baseline"):
        progress(f"{kind}: {group} ...")
        try:
            results[kind][group] = await SIDE_BY_SIDE[group](bench, kind)
        except ServerFailed as exc:
            results[kind][group] = {"error": str(exc)}
            print(f"{kind} {group} failed: {exc}", file=sys.stderr)


async def overload(bench: Bench, results: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Both servers at `overload_factor` x the service's capacity (or `--overload-streams`), the
    baseline on the loop the service runs."""
    cfg = bench.cfg
    sweep = (results.get("capacity") or {}).get("service", {})
    if cfg.overload_streams:
        streams, basis = cfg.overload_streams, "--overload-streams"
    elif not math.isnan(capacity_of(sweep)):
        streams = round(cfg.overload_factor * sweep["capacity"])
        basis = f"{cfg.overload_factor:g} x the service's capacity of {sweep['capacity']}"
    else:
        return {"skipped": "no service capacity was measured (run the capacity phase, or give --overload-streams)"}
    out: dict[str, Any] = {"streams": streams, "basis": basis}
    loop = results["machine"].get("service_loop")
    for kind in ("service", "baseline"):
        progress(f"{kind}: overload, {streams} streams ...")
        try:
            out[kind] = await measure_overload(bench, kind, streams, loop if kind == "baseline" else None)
        except ServerFailed as exc:
            out[kind] = {"error": str(exc)}
    return out


async def run(cfg: Config) -> dict[str, Any]:
    """Every phase of `cfg`, service and baseline alternating; all processes stopped at the end."""
    nofile = raise_nofile_limit()
    results: dict[str, Any] = {
        "config": asdict(cfg),
        "machine": {
            "cpus": os.cpu_count(),
            "nofile": nofile,
            "loadavg_start": os.getloadavg(),
            "python": sys.executable,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        "service": {},
        "baseline": {},
    }
    # With --workers the service needs every core: nothing is pinned then.
    placement = Placement.split() if cfg.pin and not (cfg.workers and cfg.workers > 1) else None
    results["machine"]["placement"] = placement.describe() if placement else "none"
    progress = Progress()
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        procs = Processes(Path(tmp), cfg.python, placement)
        try:
            if placement:
                os.sched_setaffinity(0, placement.rest)  # the load generator
            upstream_proc, upstream_url = start_upstream(procs, cfg, max_seconds=7200)
            bench = Bench(procs, upstream_url, upstream_proc.pid, cfg)
            try:
                probe = await bench.fresh_server("service")
                try:
                    await warm_up(probe, cfg.phase_time_limit)
                    runtime = probe.runtime()
                finally:
                    procs.stop(probe.proc)
                results["machine"].update(service_loop=runtime["loop"], service_orjson=runtime["orjson"])
            except ServerFailed as exc:
                print(f"the service does not start: {exc}", file=sys.stderr)
            for group in PHASES:
                if group not in cfg.phases:
                    continue
                if group in SIDE_BY_SIDE:
                    await side_by_side(bench, results, group, progress)
                if group == "memory":
                    results["sdk_only"] = sdk_only_memory(bench)
                elif group == "capacity":
                    progress("capacity sweeps ...")
                    results["capacity"] = await measure_capacity(bench)
                elif group == "overload":
                    results["overload"] = await overload(bench, results, progress)
                elif group == "resumable":
                    progress("service: resumable answers ...")
                    try:
                        results["resumable"] = await measure_resumable(bench)
                    except ServerFailed as exc:
                        results["resumable"] = {"skipped": f"the service failed: {exc}"}
            if cfg.workers_compare:
                progress("service: --workers 2 vs 1 ...")
                # Two workers against one, each free to use every core, as in production.
                procs.placement = None
                for pid in (0, upstream_proc.pid):
                    os.sched_setaffinity(pid, ALL_CPUS)
                results["workers_compare"] = await compare_workers(bench)
        finally:
            procs.close()
            os.sched_setaffinity(0, ALL_CPUS)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = round(time.monotonic() - progress.started, 1)
    results["targets"] = evaluate_targets(results)
    return results


def parse_args(argv: list[str] | None = None) -> tuple[Config, str | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (a few minutes)")
    parser.add_argument(
        "--only", metavar="PHASES", help=f"comma-separated phases to run, of {','.join(PHASES)} (default: all but resumable)"
    )
    parser.add_argument("--resumable", action="store_true", help='add the "resumable": true phase (with and without Redis)')
    parser.add_argument("--redis-url", help="Redis of the resumable phase (default redis://127.0.0.1:6379/0)")
    parser.add_argument(
        "--service-loop",
        choices=LOOPS,
        help="run the service with AI_EVENT_LOOP set to this loop (default: unset, the loop it ships with)",
    )
    parser.add_argument(
        "--rig-loop", choices=LOOPS, help="event loop of the fake upstream and the load generator (default: uvloop if installed)"
    )
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--tokens", type=int, help="text tokens per answer of the CPU phase and TTFT levels (default 200)")
    sizes.add_argument("--token-delay", type=float, help="seconds between those tokens (default 0)")
    sizes.add_argument("--requests", type=int, help="streams in the CPU phase (default 2000, quick 300)")
    sizes.add_argument("--concurrency", type=int, help="clients in the warm-up, CPU and one-token phases (default 50)")
    sizes.add_argument("--warmup", type=int, help="warm-up streams (default 200, quick 50)")
    sizes.add_argument("--ttft", help="concurrency:requests pairs, e.g. 1:200,50:1000,500:1000")
    sizes.add_argument("--idle", type=int, help="idle streams held open for the memory reading (default 1000)")
    sizes.add_argument("--one-token-requests", type=int, help="one-token answers measured (default 2000, quick 300)")
    sizes.add_argument("--paced-concurrency", type=int, help="clients of the paced CPU phase (default 20)")
    sizes.add_argument("--paced-seconds", type=float, help="length of the paced CPU phase (default 20, quick 4)")
    sizes.add_argument("--sync-rounds", type=int, help="rounds of 50 synchronized paced streams (default 20, quick 3)")
    sizes.add_argument("--capacity-start", type=int, help="first level of the capacity search (default 50)")
    sizes.add_argument("--capacity-limit", type=int, help="most streams the capacity search tries (default 3000)")
    sizes.add_argument("--capacity-steps", type=int, help="most steps of each capacity search (default 10, quick 4)")
    sizes.add_argument("--step-seconds", type=float, help="measured seconds of each capacity step (default 10, quick 3)")
    sizes.add_argument("--overload-streams", type=int, help="clients of the overload phase (default: 3 x the capacity)")
    sizes.add_argument("--overload-seconds", type=float, help="length of the overload phase (default 20, quick 4)")
    sizes.add_argument("--starts", type=int, help="fresh starts timed until /health answers (default 5, quick 3)")
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
        "tokens", "token_delay", "requests", "concurrency", "warmup", "idle", "workers", "compare_requests",
        "compare_concurrency", "phase_time_limit", "python", "one_token_requests", "paced_concurrency",
        "paced_seconds", "sync_rounds", "capacity_start", "capacity_limit", "capacity_steps", "step_seconds",
        "overload_streams", "overload_seconds", "starts", "redis_url", "service_loop", "rig_loop",
    ):  # fmt: skip
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.ttft:
        cfg.ttft_levels = [(int(c), int(n)) for c, n in (pair.split(":") for pair in args.ttft.split(","))]
    if args.only:
        chosen = tuple(p.strip() for p in args.only.split(",") if p.strip())
        unknown = sorted(set(chosen) - set(PHASES))
        if unknown:
            parser.error(f"unknown phase(s) {', '.join(unknown)}: choose from {', '.join(PHASES)}")
        cfg.phases = tuple(p for p in PHASES if p in chosen)
    if args.resumable and "resumable" not in cfg.phases:
        cfg.phases = (*cfg.phases, "resumable")
    cfg.workers_compare = args.workers_compare
    cfg.pin = args.pin
    return cfg, args.json


def main(argv: list[str] | None = None) -> int:
    cfg, json_path = parse_args(argv)
    interrupt_on_sigterm()
    try:
        with asyncio.Runner(loop_factory=new_event_loop(cfg.rig_loop)) as runner:
            results = runner.run(run(cfg))
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
