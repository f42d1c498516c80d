"""The relay benchmark's first measurements, each against a freshly started server process,
and `Bench`, what every phase gets (`bench.costs`, `bench.capacity`, `bench.startup` hold the rest).

`measure_load`: CPU per relayed token, then time to first token at each concurrency level;
`measure_memory`: RSS at rest and with idle streams held open; `compare_workers`: service
throughput with `--workers 2` against one process.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

from bench.common import free_port
from bench.config import IDLE_MODEL, Config
from bench.load import client_session, idle_streams, run_load, wait_until
from bench.procs import Processes, Server, ServerFailed, start_server

GENERATE = "/ai/stream/generate"
PROMPT = {"prompt": "Tell me a story about a relay."}
IDLE_PROMPT = {"prompt": "x", "model": IDLE_MODEL}


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (the fake upstream, or this one)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return float("nan")
    return times.user + times.system


@dataclass
class Bench:
    """What every measurement needs: the process owner, the fake upstream and the configuration."""

    procs: Processes
    upstream_url: str
    upstream_pid: int
    cfg: Config

    @property
    def upstream_port(self) -> int:
        return int(self.upstream_url.rsplit(":", 1)[1])

    async def fresh_server(
        self,
        kind: str,
        workers: int | None = None,
        *,
        loop: str | None = None,
        env: dict[str, str] | None = None,
        shipped_limits: bool = False,
        poll: float = 0.1,
    ) -> Server:
        """A new server process; the service gets `--workers` (0: no flag; None: the configured one)
        and runs on `--service-loop` unless `loop` says otherwise; the baseline on `loop` (asyncio
        when None)."""
        if kind == "service":
            workers = self.cfg.workers if workers is None else workers
            loop = loop or self.cfg.service_loop
        return await start_server(
            self.procs,
            kind,
            self.upstream_url,
            free_port(),
            workers if kind == "service" else None,
            loop=loop,
            env=env,
            shipped_limits=shipped_limits,
            poll=poll,
        )


async def measure_load(bench: Bench, kind: str) -> dict[str, Any]:
    """A fresh server: warm-up, then the CPU phase, then TTFT at each concurrency level."""
    cfg, upstream_pid = bench.cfg, bench.upstream_pid
    server = await bench.fresh_server(kind)
    url, limit = server.url + GENERATE, cfg.phase_time_limit
    try:
        async with client_session() as session:
            await run_load(session, url, PROMPT, concurrency=cfg.concurrency, requests=cfg.warmup, time_limit=limit)
            marks = (server.cpu_seconds(), process_cpu(upstream_pid), process_cpu(os.getpid()))
            load = await run_load(
                session, url, PROMPT, concurrency=cfg.concurrency, requests=cfg.requests, time_limit=limit
            )
            after = (server.cpu_seconds(), process_cpu(upstream_pid), process_cpu(os.getpid()))
            per_1k = [
                (b - a) * 1000 / (load.tokens / 1000) if load.tokens else float("nan") for a, b in zip(marks, after)
            ]
            ttft: dict[str, Any] = {}
            for concurrency, requests in cfg.ttft_levels:
                # One unrecorded round first, so that every client has its connection open.
                await run_load(
                    session, url, PROMPT, concurrency=concurrency, requests=min(concurrency, requests), time_limit=limit
                )
                level = await run_load(
                    session, url, PROMPT, concurrency=concurrency, requests=requests, time_limit=limit
                )
                ttft[str(concurrency)] = level.summary()
        return {
            "processes": len(server.processes()),
            "cpu_s": round(after[0] - marks[0], 3),
            "cpu_ms_per_1k_tokens": round(per_1k[0], 2),
            "upstream_cpu_ms_per_1k_tokens": round(per_1k[1], 2),
            "client_cpu_ms_per_1k_tokens": round(per_1k[2], 2),
            "cpu_phase": load.summary(),
            "ttft": ttft,
        }
    finally:
        bench.procs.stop(server.proc)


async def settled_rss(server: Server, timeout: float = 10.0) -> int:
    """RSS once three readings half a second apart agree within 0.5 MB (or after `timeout`)."""
    readings = [server.rss_bytes()]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        readings.append(server.rss_bytes())
        if len(readings) >= 3 and max(readings[-3:]) - min(readings[-3:]) < 512 * 1024:
            break
    return readings[-1]


async def measure_memory(bench: Bench, kind: str) -> dict[str, Any]:
    """A fresh server: warm-up, RSS at rest, then RSS with `cfg.idle` silent streams held open."""
    cfg, upstream_port = bench.cfg, bench.upstream_port
    server = await bench.fresh_server(kind)
    url = server.url + GENERATE
    try:
        async with client_session(total_timeout=None) as session:
            warm = min(cfg.warmup, 100)
            await run_load(
                session, url, PROMPT, concurrency=cfg.concurrency, requests=warm, time_limit=cfg.phase_time_limit
            )
            rss_rest = await settled_rss(server)
            async with idle_streams(session, url, IDLE_PROMPT, cfg.idle) as state:
                await wait_until(lambda: server.connections_to(upstream_port) >= state.opened, timeout=30)
                upstream_conns = server.connections_to(upstream_port)
                rss_open = await settled_rss(server)
                alive = server.proc.poll() is None
            started = time.monotonic()
            closed = await wait_until(lambda: server.connections_to(upstream_port) < 10, timeout=10)
            close_s = time.monotonic() - started
        mb = 1024 * 1024
        return {
            "processes": len(server.processes()),
            "rss_rest_mb": round(rss_rest / mb, 1),
            "rss_open_mb": round(rss_open / mb, 1),
            "kb_per_stream": round((rss_open - rss_rest) / 1024 / max(state.opened, 1), 1),
            "idle_requested": state.requested,
            "idle_opened": state.opened,
            "idle_errors": state.errors,
            "first_error": state.first_error,
            "upstream_connections": upstream_conns,
            "upstream_closed_after_s": round(close_s, 2) if closed else None,
            "server_alive": alive,
        }
    finally:
        bench.procs.stop(server.proc)


async def compare_workers(bench: Bench) -> dict[str, Any]:
    """Service throughput (relayed tokens per wall second) with one process and with `--workers 2`."""
    cfg = bench.cfg
    out: dict[str, Any] = {"concurrency": cfg.compare_concurrency, "requests": cfg.compare_requests}
    for workers in (1, 2):
        key = f"workers_{workers}"
        try:
            server = await bench.fresh_server("service", workers if workers > 1 else 0)
        except ServerFailed as exc:
            out[key] = {"error": f"the service did not start with --workers {workers}: {exc}"}
            continue
        try:
            url = server.url + GENERATE
            async with client_session() as session:
                c = cfg.compare_concurrency
                await run_load(session, url, PROMPT, concurrency=c, requests=c, time_limit=cfg.phase_time_limit)
                cpu0 = server.cpu_seconds()
                load = await run_load(
                    session, url, PROMPT, concurrency=c, requests=cfg.compare_requests, time_limit=cfg.phase_time_limit
                )
                cpu = server.cpu_seconds() - cpu0
            processes = len(server.processes())  # after the load: every worker is up by now
            out[key] = {
                "processes": processes,
                "tokens_per_s": round(load.tokens_per_s, 1),
                "cpu_s": round(cpu, 3),
                "load": load.summary(),
            }
            if workers > 1 and processes < 2:
                out[key]["error"] = "--workers 2 was accepted but only one process serves: the flag seems to be ignored"
        finally:
            bench.procs.stop(server.proc)
    one, two = out.get("workers_1", {}), out.get("workers_2", {})
    if "tokens_per_s" in one and "tokens_per_s" in two and "error" not in two:
        out["speedup"] = round(two["tokens_per_s"] / one["tokens_per_s"], 2)
    return out
