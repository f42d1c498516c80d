"""The relay benchmark's verdicts: each target with the measured value and PASS / FAIL ("n/a"
when a figure is missing: a phase not run, a server that failed, a capacity not found)."""

from __future__ import annotations

import math
from typing import Any

TARGET_RSS_MB = 150.0
TARGET_KB_PER_STREAM = 32.0
TARGET_START_S = 1.0


def get(tree: Any, *path: str) -> Any:
    """`tree[path[0]][path[1]]...`, NaN where the path does not exist."""
    value = tree
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return math.nan
        value = value[key]
    return value


def ratio(a: Any, b: Any) -> float:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
        return math.nan
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _verdict(ok: bool, *values: Any) -> str:
    if any(not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)) for v in values):
        return "n/a"
    return "PASS" if ok else "FAIL"


def _target(target: str, value: str, result: str) -> dict[str, str]:
    return {"target": target, "value": value, "result": result}


def _side_by_side(results: dict[str, Any], path: tuple[str, ...], limit: float, target: str) -> dict[str, str]:
    r = ratio(get(results, "service", *path), get(results, "baseline", *path))
    return _target(target, f"{r:.2f}x", _verdict(r <= limit, r))


def capacity_of(sweep: Any) -> float:
    """A sweep's capacity, NaN when it failed or no level passed."""
    value = get(sweep, "capacity")
    return value if isinstance(value, int) and value > 0 and "error" not in sweep else math.nan


def _found_limit(sweep: dict[str, Any], limit: int) -> bool:
    """Whether a sweep found where the server stops carrying streams (or carried the most asked)."""
    return sweep.get("failed_at") is not None or sweep.get("capacity", 0) >= limit


def capacity_targets(results: dict[str, Any]) -> list[dict[str, str]]:
    capacity = results.get("capacity")
    if not capacity:
        return []
    limit = results["config"]["capacity_limit"]
    service = capacity.get("service", {})
    loop = service.get("loop", "?")
    codec = "orjson" if service.get("orjson") else "json"
    same_sweep = capacity.get("baseline_same_loop", {})
    bare_sweep = capacity.get("baseline_asyncio", same_sweep)
    targets = []
    for target, baseline, goal, fmt in (
        (f"capacity >= 90% of the baseline's, both on {loop}", same_sweep, 0.9, "{:.0%}"),
        (f"capacity as run ({loop}, {codec}) >= 1.5x the baseline on asyncio", bare_sweep, 1.5, "{:.2f}x"),
    ):
        r = ratio(capacity_of(service), capacity_of(baseline))
        if all(_found_limit(sweep, limit) for sweep in (service, baseline)):
            targets.append(_target(target, fmt.format(r), _verdict(r >= goal, r)))
        else:  # a lower bound against a lower bound says nothing
            targets.append(_target(target, fmt.format(r) + " (no limit found: more --capacity-steps)", "n/a"))
    return targets


def overload_targets(results: dict[str, Any]) -> list[dict[str, str]]:
    service = get(results, "overload", "service")
    if not isinstance(service, dict) or "requests" not in service:
        return []
    bad = (
        sum(service["failed_by_code"].values())
        + service["cut"]
        + service["connection_errors"]
        + service["unfinished"]
        + sum(service["refused_other"].values())
    )
    accepted = service["requests"] - service["refused_retry_after"] - sum(service["refused_other"].values())
    streams = service["streams"]
    return [
        _target(
            f"at {streams} streams every accepted stream completes",
            f"{service['completed']} of {accepted} accepted, {bad} failed",
            "PASS" if bad == 0 else "FAIL",
        ),
        _target(
            f"at {streams} streams new answers are refused up front",
            f"{service['refused_retry_after']} refused with Retry-After",
            "PASS" if service["refused_retry_after"] > 0 and bad == 0 else "FAIL",
        ),
    ]


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, str]]:
    """Each target with the measured value and its verdict, for the phases that ran."""
    phases = results["config"]["phases"]
    targets: list[dict[str, str]] = []
    if "load" in phases:
        p50_1 = get(results, "service", "load", "ttft", "1", "ttft_p50_ms") - get(
            results, "baseline", "load", "ttft", "1", "ttft_p50_ms"
        )
        targets += [
            _side_by_side(results, ("load", "cpu_ms_per_1k_tokens"), 1.5, "CPU per relayed token <= 1.5x baseline"),
            _target("TTFT p50 at 1 stream within 2 ms of baseline", f"{p50_1:+.2f} ms", _verdict(p50_1 <= 2.0, p50_1)),
            _side_by_side(results, ("load", "ttft", "50", "ttft_p99_ms"), 1.5, "TTFT p99 at 50 streams <= 1.5x baseline"),
        ]
    if "costs" in phases:
        targets += [
            _side_by_side(results, ("costs", "cpu_ms_per_request"), 1.5, "CPU per one-token request <= 1.5x baseline"),
            _side_by_side(
                results, ("costs", "paced", "cpu_ms_per_1k_tokens"), 1.1, "CPU per paced token <= 1.1x baseline"
            ),
            _side_by_side(
                results, ("costs", "sync_ttft", "ttft_p99_ms"), 1.5, "TTFT p99, synchronized paced <= 1.5x baseline"
            ),
        ]
    targets += capacity_targets(results)
    targets += overload_targets(results)
    if "memory" in phases:
        rss = get(results, "service", "memory", "rss_open_mb")
        kb = get(results, "service", "memory", "kb_per_stream")
        requested = results["config"]["idle"]
        opened = get(results, "service", "memory", "idle_opened")
        all_open = opened == requested
        targets += [
            _target(
                f"{requested:,} open streams in <= {TARGET_RSS_MB:.0f} MB resident",
                f"{rss:.1f} MB ({opened} open)",
                _verdict(rss <= TARGET_RSS_MB and all_open, rss),
            ),
            _target(
                f"<= {TARGET_KB_PER_STREAM:.0f} KB per open idle stream",
                f"{kb:.1f} KB",
                _verdict(kb <= TARGET_KB_PER_STREAM and all_open, kb),
            ),
        ]
    if "start" in phases:
        start = get(results, "service", "start", "median_s")
        targets.append(
            _target(
                f"/health answers within {TARGET_START_S:.0f} s of start (median)",
                f"{start:.2f} s",
                _verdict(start <= TARGET_START_S, start),
            )
        )
    return targets
