"""Notes on anything that makes a relay-benchmark figure less trustworthy: errors, phases cut
short, failed servers, a load generator or fake upstream that could not keep up, a loop that
was asked for and not used, a busy machine."""

from __future__ import annotations

import math
from typing import Any

RIG_LAG_MS = 20.0  # load generator lag or upstream lateness (p99) past which a step measured the rig
BATCHED = 1.2  # paced tokens per read past which they were not one a chunk


def _load_notes(results: dict[str, Any], kind: str) -> list[str]:
    out = []
    load = results.get(kind, {}).get("load", {})
    phases = [("CPU phase", load.get("cpu_phase", {}))] + [(f"TTFT at {k}", v) for k, v in load.get("ttft", {}).items()]
    costs = results.get(kind, {}).get("costs", {})
    phases += [("one-token phase", costs.get("one_token", {})), ("synchronized TTFT", costs.get("sync_ttft", {}))]
    for name, phase in phases:
        if phase.get("errors"):
            out.append(f"{kind} {name}: {phase['errors']} failed streams, first: {phase['first_error']}")
        if phase.get("timed_out"):
            out.append(f"{kind} {name}: stopped by the time limit after {phase['completed']} of {phase['requested']} streams")
    if "upstream_cpu_ms_per_1k_tokens" in load:
        out.append(
            f"{kind} CPU phase: fake upstream used {load['upstream_cpu_ms_per_1k_tokens']} ms and the "
            f"load generator {load['client_cpu_ms_per_1k_tokens']} ms of CPU per 1k tokens"
        )
    paced = costs.get("paced", {})
    if paced.get("first_error"):
        missing = paced["requests"] - paced["completed"]
        out.append(f"{kind} paced phase: {missing} streams not completed, first: {paced['first_error']}")
    if isinstance(paced.get("tokens_per_read"), float) and paced["tokens_per_read"] > BATCHED:
        out.append(
            f"{kind} paced phase: {paced['tokens_per_read']} tokens per read: tokens came batched, not one a "
            "chunk (the server or the load generator fell behind); lower --paced-concurrency"
        )
    return out


def _memory_notes(results: dict[str, Any], kind: str) -> list[str]:
    out = []
    memory = results.get(kind, {}).get("memory", {})
    if memory.get("idle_errors"):
        out.append(f"{kind} idle streams: {memory['idle_errors']} failed to open, first: {memory['first_error']}")
    if "upstream_connections" in memory and memory["upstream_connections"] < memory.get("idle_opened", 0):
        out.append(
            f"{kind} idle streams: only {memory['upstream_connections']} upstream connections "
            f"for {memory['idle_opened']} open streams"
        )
    if memory and "error" not in memory and memory.get("upstream_closed_after_s") is None:
        out.append(f"{kind}: upstream connections were still open 10 s after the idle clients left")
    return out


def _capacity_notes(results: dict[str, Any]) -> list[str]:
    out = []
    cfg = results["config"]
    for key, sweep in (results.get("capacity") or {}).items():
        if "error" in sweep:
            out.append(f"capacity, {key}: {sweep['error'][:300]}")
        requested = sweep.get("requested_loop")
        if requested and sweep.get("loop") and requested != sweep["loop"]:
            out.append(f"capacity, {key}: asked to run on {requested} but the process runs {sweep['loop']}")
        for step in sweep.get("steps", []):
            late = step["upstream_late_p99_ms"]
            if max(step["client_lag_p99_ms"], 0 if math.isnan(late) else late) > RIG_LAG_MS:
                out.append(
                    f"capacity, {key} at {step['level']} streams: the rig fell behind (load generator lag p99 "
                    f"{step['client_lag_p99_ms']} ms, upstream {step['upstream_late_p99_ms']} ms late): this level "
                    "measures the load generator and fake upstream as much as the server"
                )
            if step.get("first_error"):
                out.append(f"capacity, {key} at {step['level']} streams: first error: {step['first_error']}")
        if sweep.get("capacity") == 0 and "steps" in sweep:
            out.append(f"capacity, {key}: not even {sweep['steps'][-1]['level']} streams were carried")
    service_loop = results["machine"].get("service_loop")
    if cfg.get("service_loop") and service_loop and service_loop != cfg["service_loop"]:
        out.append(
            f"the service was started with AI_EVENT_LOOP={cfg['service_loop']} and runs {service_loop}: it does "
            "not honour the variable, so the same-loop comparison is not what was asked for"
        )
    return out


def _overload_notes(results: dict[str, Any]) -> list[str]:
    out = []
    overload = results.get("overload") or {}
    for kind in ("service", "baseline"):
        o = overload.get(kind, {})
        if "error" in o:
            out.append(f"overload, {kind}: {o['error'][:300]}")
        if o.get("first_error"):
            out.append(f"overload, {kind}: first problem: {o['first_error']}")
        if o.get("client_lag_p99_ms", 0) > RIG_LAG_MS:
            out.append(f"overload, {kind}: load generator lag p99 {o['client_lag_p99_ms']} ms: it was itself overloaded")
        if o and "server_alive" in o and not o["server_alive"]:
            out.append(f"overload, {kind}: the server process died")
    return out


def notes(results: dict[str, Any]) -> list[str]:
    found = []
    cfg = results["config"]
    if "load" in cfg["phases"] and not cfg.get("token_delay"):
        found.append(
            "with no delay between upstream tokens every stream is a firehose: at 50 and 500 streams the "
            "servers run at full CPU, so TTFT there mostly measures queueing and follows the CPU cost"
        )
    workers = cfg.get("workers") or 1
    for group in ("load", "memory"):
        processes = results.get("service", {}).get(group, {}).get("processes")
        if workers > 1 and processes is not None and processes < 2:
            found.append(
                f"service {group}: started with --workers {workers} but only {processes} process serves "
                "(the flag seems to be ignored)"
            )
    for kind in ("service", "baseline"):
        for group in ("load", "costs", "memory", "start"):
            data = results.get(kind, {}).get(group, {})
            if "error" in data:
                found.append(f"{kind} {group}: {data['error'][:300]}")
        found += _load_notes(results, kind) + _memory_notes(results, kind)
        start = results.get(kind, {}).get("start", {})
        if start.get("loadavg_before", 0) > 1.0:
            found.append(
                f"{kind} start: measured at load average {start['loadavg_before']}: not an idle machine, "
                "so the start figure is above what an idle one gives"
            )
    return found + _capacity_notes(results) + _overload_notes(results)
