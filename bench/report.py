"""The relay benchmark's verdicts and its printed table."""

from __future__ import annotations

import math
from typing import Any

TARGET_RSS_MB = 150.0


def _get(results: dict[str, Any], kind: str, *path: str) -> Any:
    value: Any = results.get(kind, {})
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return math.nan
        value = value[key]
    return value


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _verdict(ok: bool, *values: float) -> str:
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        return "n/a"
    return "PASS" if ok else "FAIL"


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and PASS / FAIL (n/a when a number is missing)."""
    cpu_ratio = _ratio(
        _get(results, "service", "load", "cpu_ms_per_1k_tokens"),
        _get(results, "baseline", "load", "cpu_ms_per_1k_tokens"),
    )
    p50_1 = _get(results, "service", "load", "ttft", "1", "ttft_p50_ms") - _get(
        results, "baseline", "load", "ttft", "1", "ttft_p50_ms"
    )
    p99_50 = _ratio(
        _get(results, "service", "load", "ttft", "50", "ttft_p99_ms"),
        _get(results, "baseline", "load", "ttft", "50", "ttft_p99_ms"),
    )
    rss = _get(results, "service", "memory", "rss_open_mb")
    requested = results["config"]["idle"]
    opened = _get(results, "service", "memory", "idle_opened")
    all_open = opened == requested
    return [
        {
            "target": "CPU per relayed token <= 1.5x baseline",
            "value": f"{cpu_ratio:.2f}x",
            "result": _verdict(cpu_ratio <= 1.5, cpu_ratio),
        },
        {
            "target": "TTFT p50 at 1 stream within 2 ms of baseline",
            "value": f"{p50_1:+.2f} ms",
            "result": _verdict(p50_1 <= 2.0, p50_1),
        },
        {
            "target": "TTFT p99 at 50 streams <= 1.5x baseline",
            "value": f"{p99_50:.2f}x",
            "result": _verdict(p99_50 <= 1.5, p99_50),
        },
        {
            "target": f"{requested:,} open streams in <= {TARGET_RSS_MB:.0f} MB resident",
            "value": f"{rss:.1f} MB ({opened} open)",
            "result": _verdict(rss <= TARGET_RSS_MB and all_open, rss),
        },
    ]


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return f"{value:,.{digits}f}"
    return "-"


def _rows(results: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    """(label, service value, baseline value, ratio format) rows of the main table."""

    def both(*path: str) -> tuple[Any, Any]:
        return _get(results, "service", *path), _get(results, "baseline", *path)

    rows: list[tuple[str, Any, Any, str]] = [
        ("CPU ms per 1k relayed tokens", *both("load", "cpu_ms_per_1k_tokens"), "x"),
        ("  tokens/s in the CPU phase", *both("load", "cpu_phase", "tokens_per_s"), "x"),
    ]
    levels = sorted(
        set(results.get("service", {}).get("load", {}).get("ttft", {}))
        | set(results.get("baseline", {}).get("load", {}).get("ttft", {})),
        key=int,
    )
    for level in levels:
        for p in ("50", "99"):
            rows.append((f"TTFT p{p} ms at {level} stream(s)", *both("load", "ttft", level, f"ttft_p{p}_ms"), "x+"))
    idle = results["config"]["idle"]
    rows += [
        ("RSS MB at rest (after warm-up)", *both("memory", "rss_rest_mb"), "x"),
        (f"RSS MB with {_fmt(idle, 0)} open idle streams", *both("memory", "rss_open_mb"), "x"),
        ("  KB per open stream", *both("memory", "kb_per_stream"), "x"),
    ]
    return rows


def print_table(results: dict[str, Any]) -> None:
    cfg = results["config"]
    print()
    print(
        f"relay benchmark: {cfg['tokens']}-token streams, CPU phase {cfg['requests']} streams at "
        f"{cfg['concurrency']} clients, service workers: {cfg['workers'] or 1}, "
        f"{results['machine']['cpus']} CPUs, load average {results['machine']['loadavg_start'][0]:.1f} at start"
    )
    print(f"servers run by {cfg['python'] or results['machine']['python']}; CPUs: {results['machine']['placement']}")
    print(f"{'':44} {'service':>10} {'baseline':>10} {'service/baseline':>18}")
    for label, service, baseline, kind in _rows(results):
        ratio = _ratio(service, baseline)
        text = "-" if math.isnan(ratio) else f"{ratio:.2f}x"
        if kind == "x+" and not math.isnan(ratio):
            text += f" ({service - baseline:+.2f} ms)"
        print(f"{label:44} {_fmt(service, 2):>10} {_fmt(baseline, 2):>10} {text:>18}")
    print()
    for target in results["targets"]:
        print(f"  {target['result']:5} {target['target']:50} {target['value']}")
    compare = results.get("workers_compare")
    if compare:
        print()
        print(f"service throughput at {compare['concurrency']} clients, {compare['requests']} streams each:")
        for key in ("workers_1", "workers_2"):
            entry = compare.get(key, {})
            line = f"  {key.replace('_', ' '):10} {_fmt(entry.get('tokens_per_s'), 0):>10} tokens/s"
            line += f", {entry['processes']} process(es)" if "processes" in entry else ""
            print(line + (f"   ({entry['error']})" if "error" in entry else ""))
        if "speedup" in compare:
            print(f"  2 workers / 1 worker: {compare['speedup']:.2f}x")
    notes = _notes(results)
    if notes:
        print()
        print("notes:")
        for note in notes:
            print(f"  - {note}")
    print(f"\n(total {results['elapsed_s']} s; load average {results['machine']['loadavg_end'][0]:.1f} at the end)")


def _notes(results: dict[str, Any]) -> list[str]:
    """Anything that makes a number less trustworthy: errors, cut-short phases, failed servers."""
    notes = []
    if not results["config"].get("token_delay"):
        notes.append(
            "with no delay between upstream tokens every stream is a firehose: at 50 and 500 streams the "
            "servers run at full CPU, so TTFT there mostly measures queueing and follows the CPU cost"
        )
    workers = results["config"].get("workers") or 1
    for group in ("load", "memory"):
        processes = results.get("service", {}).get(group, {}).get("processes")
        if workers > 1 and processes is not None and processes < 2:
            notes.append(
                f"service {group}: started with --workers {workers} but only {processes} process serves "
                "(the flag seems to be ignored)"
            )
    for kind in ("service", "baseline"):
        for group in ("load", "memory"):
            data = results.get(kind, {}).get(group, {})
            if "error" in data:
                notes.append(f"{kind} {group}: {data['error']}")
        load = results.get(kind, {}).get("load", {})
        phases = [("CPU phase", load.get("cpu_phase", {}))] + [
            (f"TTFT at {k}", v) for k, v in load.get("ttft", {}).items()
        ]
        for name, phase in phases:
            if phase.get("errors"):
                notes.append(f"{kind} {name}: {phase['errors']} failed streams, first: {phase['first_error']}")
            if phase.get("timed_out"):
                notes.append(
                    f"{kind} {name}: stopped by the time limit after {phase['completed']} of {phase['requested']} streams"
                )
        if "upstream_cpu_ms_per_1k_tokens" in load:
            notes.append(
                f"{kind} CPU phase: fake upstream used {load['upstream_cpu_ms_per_1k_tokens']} ms and the "
                f"load generator {load['client_cpu_ms_per_1k_tokens']} ms of CPU per 1k tokens"
            )
        memory = results.get(kind, {}).get("memory", {})
        if memory.get("idle_errors"):
            notes.append(f"{kind} idle streams: {memory['idle_errors']} failed to open, first: {memory['first_error']}")
        if "upstream_connections" in memory and memory["upstream_connections"] < memory.get("idle_opened", 0):
            notes.append(
                f"{kind} idle streams: only {memory['upstream_connections']} upstream connections "
                f"for {memory['idle_opened']} open streams"
            )
        if memory and "error" not in memory and memory.get("upstream_closed_after_s") is None:
            notes.append(f"{kind}: upstream connections were still open 10 s after the idle clients left")
    return notes
