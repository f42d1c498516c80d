"""How many concurrent streams at 50 tokens/s one server process carries, and what it does at
three times that many.

**Capacity**: a level of N streams is N closed-loop clients of `bench-rate50` (200-token answers,
a token every 20 ms: a model's pace), started evenly over `step_ramp` s so that answers begin and
end all the time, as they do in production; the added latency of every token read in the next
`step_seconds` s is recorded (`bench.timing`: read time minus the upstream's write time), then
the clients are stopped. N is carried when the p99 added latency is at most `latency_limit_ms`
and no stream was refused or failed; a level that fails is tried once more (not with `--quick`)
and counts as carried if the second try is. `bench.timing.CapacitySearch` picks the levels
(doubling, then bisecting, within `capacity_steps` levels), all on one server process per sweep,
the sweeps taking their steps in turn. Each step also reports the server's CPU use: a level that fails far below
100 % was slowed by something else on the machine.

**Overload**: `overload_factor` x the service's capacity in clients, every stream read to its end
(each at most `overload_stream_timeout` s), against a server with the service's shipped
timeouts and stream limit; refusals (429 / 503 with `Retry-After`, before any token) are told
apart from streams accepted and then failed, and a refused client waits its `Retry-After`.

Each figure comes with the load generator's own loop lag and how far the fake upstream fell
behind its schedule, so that a level the rig itself could not drive is seen as such.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from typing import Any

from bench.config import ONE_MODEL, RATE_MODEL
from bench.load import client_session, run_load
from bench.paced import loop_lag, run_paced
from bench.phases import GENERATE, PROMPT, Bench, process_cpu
from bench.procs import Server, ServerFailed
from bench.timing import CapacitySearch, carries

RATE_PROMPT = {**PROMPT, "model": RATE_MODEL}
ONE_PROMPT = {**PROMPT, "model": ONE_MODEL}
SETTLE_S = 1.5  # between steps: the stopped streams' cancellations are done
WARM_UP = 100  # one-token answers before the first step: whatever a server loads on first use is loaded


async def warm_up(server: Server, time_limit: float) -> None:
    """A few one-token answers, so that a step does not measure what the server loads on first use."""
    async with client_session() as session:
        await run_load(session, server.url + GENERATE, ONE_PROMPT, concurrency=10, requests=WARM_UP, time_limit=time_limit)


async def capacity_step(bench: Bench, server: Server, level: int) -> dict[str, Any]:
    """`level` paced streams for one step; its figures and whether the level was carried."""
    cfg = bench.cfg
    cpu, rig = server.cpu_seconds(), (process_cpu(bench.upstream_pid), process_cpu(os.getpid()))
    async with loop_lag() as lag:
        tally = await run_paced(
            server.url + GENERATE,
            RATE_PROMPT,
            clients=level,
            ramp=cfg.step_ramp,
            duration=cfg.step_seconds,
            delay=cfg.rate_delay,
            wait_for_streams=False,
        )
    summary = tally.summary()
    summary["server_cpu_pct"] = round((server.cpu_seconds() - cpu) * 100 / tally.wall_s, 1)
    per_1k = 1e6 / tally.tokens if tally.tokens else math.nan
    summary["upstream_cpu_ms_per_1k_tokens"] = round((process_cpu(bench.upstream_pid) - rig[0]) * per_1k, 2)
    summary["client_cpu_ms_per_1k_tokens"] = round((process_cpu(os.getpid()) - rig[1]) * per_1k, 2)
    refused = tally.refused + sum(tally.refused_other.values())
    failed = sum(tally.failed.values()) + tally.cut + tally.connection_errors
    summary.update(
        level=level,
        failures=tally.failures,
        client_lag_p99_ms=lag.p99_ms,
        carried=carries(summary["added_latency_p99_ms"], cfg.latency_limit_ms, refused, failed),
    )
    return summary


class Sweep:
    """One server's capacity search: its process, the search, and what each step measured."""

    def __init__(self, bench: Bench, kind: str, loop: str | None) -> None:
        cfg = bench.cfg
        self.bench, self.kind, self.loop = bench, kind, loop
        self.server: Server | None = None
        self.search = CapacitySearch(cfg.capacity_start, cfg.capacity_limit, cfg.capacity_steps, cfg.capacity_resolution)
        requested = loop or (cfg.service_loop if kind == "service" else "asyncio")
        self.out: dict[str, Any] = {"requested_loop": requested, "steps": []}

    async def start(self) -> None:
        """A fresh server, warmed up; its loop and codec are read after the warm-up (a codec may
        be loaded on first use). A server that does not start ends the sweep with the reason."""
        try:
            self.server = await self.bench.fresh_server(self.kind, loop=self.loop)
            await warm_up(self.server, self.bench.cfg.phase_time_limit)
        except ServerFailed as exc:
            self.out["error"] = str(exc)
            self.stop()
            return
        self.out.update(self.server.runtime())

    @property
    def active(self) -> bool:
        return self.server is not None and self.search.next_level() is not None

    async def step(self) -> None:
        """The search's next level (tried twice when the first try fails and failures are confirmed)."""
        server, cfg = self.server, self.bench.cfg
        level = self.search.next_level()
        assert server is not None and level is not None
        step = await capacity_step(self.bench, server, level)
        self.out["steps"].append(step)
        if not step["carried"] and cfg.confirm_failures and server.proc.poll() is None:
            # One more try before a level counts as failed: another process on the machine can
            # spoil a step's p99 (the server's CPU use then stays low).
            await asyncio.sleep(SETTLE_S)
            step = await capacity_step(self.bench, server, level)
            step["retry"] = True
            self.out["steps"].append(step)
        self.search.record(level, step["carried"])
        print(
            f"        {self.kind} ({self.out.get('loop')}) at {level} streams: added latency p99 "
            f"{step['added_latency_p99_ms']} ms, {step['refused_retry_after']} refused, "
            f"{'carried' if step['carried'] else 'not carried'}",
            file=sys.stderr,
            flush=True,
        )
        if server.proc.poll() is not None:
            self.out["error"] = f"{self.kind} exited during the sweep:\n{server.log_tail()}"
            self.stop()

    def stop(self) -> None:
        if self.server is not None:
            self.bench.procs.stop(self.server.proc)
            self.server = None

    def result(self) -> dict[str, Any]:
        search = self.search
        return {**self.out, "capacity": search.capacity, "failed_at": search.failed_at, "settled": search.settled}


async def measure_capacity(bench: Bench) -> dict[str, Any]:
    """The service as configured, the baseline on the loop the service runs, and, when that is not
    asyncio's, the baseline on asyncio's default loop too (the bare baseline).

    The sweeps take their steps in turn (service, baseline, ...), each server idle while another
    is measured, so that a busy spell of the machine falls on all of them rather than on one."""
    service = Sweep(bench, "service", None)
    await service.start()
    loop = str(service.out.get("loop", "asyncio"))
    sweeps = {"service": service, "baseline_same_loop": Sweep(bench, "baseline", loop)}
    if loop != "asyncio":
        sweeps["baseline_asyncio"] = Sweep(bench, "baseline", "asyncio")
    try:
        for sweep in list(sweeps.values())[1:]:
            await sweep.start()
        while active := [sweep for sweep in sweeps.values() if sweep.active]:
            for sweep in active:
                await sweep.step()
                await asyncio.sleep(SETTLE_S)
    finally:
        for sweep in sweeps.values():
            sweep.stop()
    return {key: sweep.result() for key, sweep in sweeps.items()}


async def measure_overload(bench: Bench, kind: str, streams: int, loop: str | None) -> dict[str, Any]:
    """`streams` paced clients against a fresh server with the shipped limits; every stream read
    to its end; refusals, failures and completions counted."""
    cfg = bench.cfg
    server = await bench.fresh_server(kind, loop=loop, shipped_limits=True)
    try:
        await warm_up(server, cfg.phase_time_limit)
        started, cpu = time.monotonic(), server.cpu_seconds()
        async with loop_lag() as lag:
            tally = await run_paced(
                server.url + GENERATE,
                RATE_PROMPT,
                clients=streams,
                ramp=cfg.step_ramp,
                duration=cfg.overload_seconds,
                delay=cfg.rate_delay,
                wait_for_streams=True,
                stream_timeout=cfg.overload_stream_timeout,
            )
        alive = server.proc.poll() is None
        return {
            "server_cpu_pct": round((server.cpu_seconds() - cpu) * 100 / tally.wall_s, 1),
            "streams": streams,
            **server.runtime(),
            **tally.summary(),
            "client_lag_p99_ms": lag.p99_ms,
            "server_alive": alive,
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
        bench.procs.stop(server.proc)
