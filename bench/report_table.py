"""The relay benchmark's printed report: the side-by-side table, capacity, overload, resumable
answers, the targets, and notes on anything that makes a figure less trustworthy."""

from __future__ import annotations

import math
from typing import Any

from bench.report import capacity_of, get, ratio
from bench.report_notes import notes

Row = tuple[str, Any, Any, str]  # label, service, baseline, how the ratio reads ("x", "x+": and the difference)


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return f"{value:,.{digits}f}"
    return "-"


def _rows(results: dict[str, Any]) -> list[Row]:
    def both(*path: str) -> tuple[Any, Any]:
        return get(results, "service", *path), get(results, "baseline", *path)

    phases, cfg = results["config"]["phases"], results["config"]
    rows: list[Row] = []
    if "load" in phases:
        rows += [
            (f"CPU ms per 1k relayed tokens ({cfg['tokens']}-token answers)", *both("load", "cpu_ms_per_1k_tokens"), "x"),
            ("  tokens/s in the CPU phase", *both("load", "cpu_phase", "tokens_per_s"), "x"),
        ]
        levels = sorted(
            set(get(results, "service", "load", "ttft") or {}) | set(get(results, "baseline", "load", "ttft") or {}),
            key=int,
        )
        for level in levels:
            for p in ("50", "99"):
                rows.append((f"TTFT p{p} ms at {level} stream(s)", *both("load", "ttft", level, f"ttft_p{p}_ms"), "x+"))
    if "costs" in phases:
        paced = f"{cfg['paced_tokens']} tokens {cfg['paced_delay'] * 1000:g} ms apart"
        rows += [
            ("CPU ms per request (one-token answers)", *both("costs", "cpu_ms_per_request"), "x"),
            (f"CPU ms per 1k tokens, paced ({paced})", *both("costs", "paced", "cpu_ms_per_1k_tokens"), "x"),
            ("  tokens per read (1.0: one token a chunk)", *both("costs", "paced", "tokens_per_read"), "x"),
            (f"TTFT p50 ms, {cfg['sync_streams']} synchronized paced", *both("costs", "sync_ttft", "ttft_p50_ms"), "x+"),
            (f"TTFT p99 ms, {cfg['sync_streams']} synchronized paced", *both("costs", "sync_ttft", "ttft_p99_ms"), "x+"),
        ]
    if "memory" in phases:
        rows += [
            ("RSS MB at rest (after warm-up)", *both("memory", "rss_rest_mb"), "x"),
            (f"RSS MB with {_fmt(cfg['idle'], 0)} open idle streams", *both("memory", "rss_open_mb"), "x"),
            ("  KB per open stream", *both("memory", "kb_per_stream"), "x"),
        ]
    if "start" in phases:
        rows.append(("start until /health answers, median s", *both("start", "median_s"), "x"))
    return rows


def _print_rows(rows: list[Row]) -> None:
    print(f"{'':50} {'service':>10} {'baseline':>10} {'service/baseline':>18}")
    for label, service, baseline, kind in rows:
        r = ratio(service, baseline)
        text = "-" if math.isnan(r) else f"{r:.2f}x"
        if kind == "x+" and not math.isnan(r):
            text += f" ({service - baseline:+.2f} ms)"
        print(f"{label:50} {_fmt(service, 2):>10} {_fmt(baseline, 2):>10} {text:>18}")


def _print_capacity(results: dict[str, Any]) -> None:
    capacity, cfg = results.get("capacity"), results["config"]
    if not capacity:
        return
    print()
    print(
        f"capacity: concurrent streams at {1 / cfg['rate_delay']:g} tokens/s ({cfg['rate_tokens']}-token answers) "
        f"one process carries with added latency p99 <= {cfg['latency_limit_ms']:g} ms"
    )
    labels = {"service": "service", "baseline_same_loop": "baseline", "baseline_asyncio": "baseline (bare)"}
    for key, label in labels.items():
        sweep = capacity.get(key)
        if sweep is None:
            continue
        if "steps" not in sweep:
            print(f"  {label:16} -   ({sweep.get('error', 'no figure')[:200]})")
            continue
        found = capacity_of(sweep)
        bound = f", {sweep['failed_at']} not" if sweep.get("failed_at") else ", no level failed"
        codec = ", orjson" if sweep.get("orjson") else ""
        head = f"  {label:16} {_fmt(found, 0):>6}   on {sweep['loop']}{codec}{bound}"
        print(head + ("" if sweep.get("settled") else " (steps ran out: a lower bound)"))
        for step in sweep["steps"]:
            verdict = "carried" if step["carried"] else "not carried"
            print(
                f"  {'again' if step.get('retry') else '':>5}{step['level']:>5} streams: "
                f"p99 {_fmt(step['added_latency_p99_ms'], 1):>7} ms, "
                f"p50 {_fmt(step['added_latency_p50_ms'], 1):>6} ms, {_fmt(step['window_tokens_per_s'], 0):>7} tokens/s, "
                f"server CPU {_fmt(step['server_cpu_pct'], 0):>3} %, {step['refused_retry_after']} refused, "
                f"{step['failures']} failed; rig lag p99: load "
                f"generator {_fmt(step['client_lag_p99_ms'], 1)} ms, upstream {_fmt(step['upstream_late_p99_ms'], 1)} ms"
                f": {verdict}"
            )


def _print_overload(results: dict[str, Any]) -> None:
    overload = results.get("overload")
    if not overload:
        return
    print()
    if "skipped" in overload:
        print(f"overload: skipped ({overload['skipped']})")
        return
    cfg = results["config"]
    print(
        f"overload: {overload['streams']} paced clients for {cfg['overload_seconds']:g} s ({overload['basis']}), "
        "every accepted stream read to its end; the service with its shipped timeouts and limits"
    )
    print(
        f"  {'':10} {'requests':>9} {'completed':>9} {'refused':>8} {'refused*':>8} {'failed':>7} {'cut':>5} "
        f"{'conn err':>8} {'unfinished':>10} {'p99 added ms':>12} {'TTFT p99 ms':>11}"
    )
    for kind in ("service", "baseline"):
        o = overload.get(kind, {})
        if "requests" not in o:
            print(f"  {kind:10} -   ({o.get('error', 'not run')[:200]})")
            continue
        failed = ", ".join(f"{code} {n}" for code, n in o["failed_by_code"].items()) or "0"
        print(
            f"  {kind:10} {o['requests']:>9} {o['completed']:>9} {o['refused_retry_after']:>8} "
            f"{sum(o['refused_other'].values()):>8} {failed:>7} {o['cut']:>5} {o['connection_errors']:>8} "
            f"{o['unfinished']:>10} {_fmt(o['added_latency_p99_ms'], 1):>12} {_fmt(o['ttft_p99_ms'], 0):>11}"
        )
    for kind in ("service", "baseline"):
        codes = overload.get(kind, {}).get("refused_by_code")
        if codes:
            print(f"  {kind} refusals by code: " + ", ".join(f"{code} {n}" for code, n in codes.items()))
    print("  (refused: 429/503 with Retry-After before any token; refused*: any other refusal)")


def _print_memory_extra(results: dict[str, Any]) -> None:
    sdk = results.get("sdk_only")
    if not sdk:
        return
    parts = []
    for key, label in (("aiohttp_only", "python + aiohttp"), ("with_sdks", f"python + aiohttp + {', '.join(sdk['sdks'])}")):
        entry = sdk.get(key, {})
        if "rss_mb" in entry:
            parts.append(f"{label}: {entry['rss_mb']:.1f} MB ({entry['modules']:,} modules, {entry['import_s']:.2f} s)")
        else:
            parts.append(f"{label}: {entry.get('error', '-')}")
    rest = get(results, "service", "memory", "rss_rest_mb")
    print(f"\nresting RSS beside the SDKs alone: service {_fmt(rest, 1)} MB; " + "; ".join(parts))


def _print_resumable(results: dict[str, Any]) -> None:
    resumable = results.get("resumable")
    if not resumable:
        return
    print()
    if "skipped" in resumable:
        print(f"resumable answers: skipped: {resumable['skipped']}")
        return
    print("resumable answers: service CPU ms per 1k paced tokens")
    for label in ("without_redis", "with_redis"):
        entry = resumable.get(label, {})
        if "skipped" in entry or "plain" not in entry:
            print(f"  {label.replace('_', ' '):14} skipped: {entry.get('skipped', 'not measured')}")
            continue
        plain, res = entry["plain"]["cpu_ms_per_1k_tokens"], entry["resumable"]["cpu_ms_per_1k_tokens"]
        print(
            f"  {label.replace('_', ' '):14} plain {_fmt(plain, 2):>8}   resumable {_fmt(res, 2):>8}   "
            f"{_fmt(ratio(res, plain), 2)}x"
        )


def _print_workers(results: dict[str, Any]) -> None:
    compare = results.get("workers_compare")
    if not compare:
        return
    print()
    print(f"service throughput at {compare['concurrency']} clients, {compare['requests']} streams each:")
    for key in ("workers_1", "workers_2"):
        entry = compare.get(key, {})
        line = f"  {key.replace('_', ' '):10} {_fmt(entry.get('tokens_per_s'), 0):>10} tokens/s"
        line += f", {entry['processes']} process(es)" if "processes" in entry else ""
        print(line + (f"   ({entry['error']})" if "error" in entry else ""))
    if "speedup" in compare:
        print(f"  2 workers / 1 worker: {compare['speedup']:.2f}x")


def print_table(results: dict[str, Any]) -> None:
    cfg, machine = results["config"], results["machine"]
    print()
    print(
        f"relay benchmark: phases {', '.join(cfg['phases'])}; service workers: {cfg['workers'] or 1}, "
        f"{machine['cpus']} CPUs, load average {machine['loadavg_start'][0]:.1f} at start"
    )
    print(f"servers run by {cfg['python'] or machine['python']}; CPUs: {machine['placement']}")
    asked = f"AI_EVENT_LOOP={cfg['service_loop']}" if cfg["service_loop"] else "as it ships"
    print(
        f"service event loop: {machine.get('service_loop', '?')} ({asked}); "
        f"fake upstream and load generator on {cfg['rig_loop']}"
    )
    rows = _rows(results)
    if rows:
        _print_rows(rows)
    _print_memory_extra(results)
    _print_capacity(results)
    _print_overload(results)
    _print_resumable(results)
    _print_workers(results)
    print()
    for target in results["targets"]:
        print(f"  {target['result']:5} {target['target']:58} {target['value']}")
    found = notes(results)
    if found:
        print()
        print("notes:")
        for note in found:
            print(f"  - {note}")
    print(f"\n(total {results['elapsed_s']} s; load average {machine['loadavg_end'][0]:.1f} at the end)")
