"""Soak: hundreds of concurrent streams with upstream faults, client disconnects and hostile clients
at random, then the infrastructure's faults: a database outage and a SIGKILL.

    python -m bench.soak [--streams 5000] [--concurrency 400] [--duration 120] [--seed N]
                         [--cut-share 0.05] [--resume-share 0.1] [--hostile-share 0.05] [--database-url URL]
                         [--hostile-requests 600] [--outage-streams 1000] [--outages 3]
                         [--restart-postgres] [--kill-streams 100] [--replica-streams 200] [--redis-url URL]
    (default store: a temporary SQLite file; `--database-url postgresql://...` names a scratch database)

Runs the fake upstream and the service on 127.0.0.1; requests go to the typed route and, without a thread,
also to the OpenAI- and Anthropic-compatible ones (`WIRES`). A warm-up round, then the main round (streams
start for at most `--duration` s each); a share of its requests come from hostile clients
(bench/soak_hostile.py), and a share (`--resume-share`) from clients that drop a resumable answer and
resume it, once or more (bench/soak_resume.py). Checks every stream's events (one terminal event, last;
strict SSE; text = a prefix of the ONE answering attempt's unique tokens, all of them for `done`;
no model after text; a resumed one's over all its connections, each event once: no lost or
duplicated text or events), the stored turns (complete/error/interrupted with the streamed text, nothing
left pending), and that tasks, live objects and memory return to the post-warm-up baseline.
Then the phases: every hostile input against a real process with API keys (0 requests: skipped), the
database going away under threaded load (PostgreSQL only; a proxy cut, or with --restart-postgres a real
restart of this machine's cluster, which every other user of it feels), SIGKILL mid-answer
(bench/soak_phases.py) and resumes on another process: two processes sharing Redis under a key prefix of
their own, deleted after (bench/soak_replicas.py; 0 streams: skipped). Prints a summary with, per phase, requests, violations, pending rows and
undocumented 5xx; exits 0 only when all are zero, 1 otherwise, 2 at the hard time cap.
tests/test_soak.py runs each part short.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import psutil
from aiohttp import web

from bench.soak_hostile import BODY_TIMEOUT, HostilePlan, hostile_phase, hostile_request
from bench.soak_phases import KillPlan, OutagePlan, kill_phase, outage_phase
from bench.soak_replicas import ReplicaPlan, replica_phase
from bench.soak_report import PhaseReport, summary
from bench.soak_resume import run_resume, tally_resume
from bench.soak_streams import (  # noqa: F401  (Config, Stream: the soak's API, for tests/test_soak.py)
    HEADERS_TIMEOUT,
    MODEL_SPECS,
    MODELS,
    STREAM_TIMEOUT,
    Config,
    Ledger,
    Stream,
    answering,
    check_stream,
    run_stream,
)
from tests.conftest import ANTHROPIC_KEY, OPENAI_KEY
from tests.fake_upstream import FakeUpstream

RESUME_RETENTION = 1.5
# Small timeouts so that every fault resolves in well under a second; limits that would turn the
# soak's own load away are off; circuits reopen fast (names a Settings lacks are ignored).
SERVICE_SETTINGS: dict[str, Any] = {
    "first_token_timeout": 0.3, "idle_timeout": 0.3, "request_timeout": 3.0, "retry_after_max": 0.2,
    "keepalive_interval": 0.2, "cooldown_seconds": 0.5, "rate_limit_rpm": 0, "max_concurrent_streams": 0,
    "max_total_streams": 0, "log_level": "warning", "body_timeout": BODY_TIMEOUT,
    # Ended resumable answers are kept this long, past the longest a resuming client stays away
    # (Config.resume_wait_max) with room for a loaded loop; settle waits for them to be forgotten.
    "resume_retention": RESUME_RETENTION,
    # The load generator runs on the service's own event loop: its lag is the soak's, not the service's.
    "shed_loop_lag_ms": 0,
}
TASK_SLACK = 3  # timers and checks that come and go on their own
# Memory after the main round vs after the warm-up round, which ran at full concurrency. RSS is coarse:
# freed heap is rarely handed back, and the main round's backlog (turns waiting for the store, shielded
# writes) can run deeper than the warm-up's, so a fixed 48 MiB (measured: 5,000 streams at 400, SQLite:
# +48 MiB, flat after the first seconds), plus 4 KiB a stream, which a leaked response (tens of KiB)
# exceeds in a long run. Exact, for any run length: live pymalloc blocks (caches and interned strings
# add a few per stream; a leaked stream holds hundreds), and no instance of the service's own classes
# (its EventStream included) or request to it may outlive its stream.
RSS_SLACK, RSS_PER_STREAM = 48 * 2**20, 4096
BLOCKS_SLACK, BLOCKS_PER_STREAM, BLOCKS_PER_IDLE = 20_000, 20, 400  # an idle upstream connection: ~270
IDLE = "upstream keep-alive connection"  # tasks of the SDKs' connection pools: at most 2 x 100


async def fetch_thread(session: aiohttp.ClientSession, base: str, thread_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    params = {"limit": "200"}
    while True:
        async with session.get(f"{base}/ai/threads/{thread_id}/messages", params=params) as resp:
            if resp.status == 404:
                return rows
            if resp.status != 200:  # e.g. the store is not reachable: nothing can be checked
                raise RuntimeError(f"listing thread {thread_id}: HTTP {resp.status} {(await resp.text())[:200]}")
            page = await resp.json()
        rows[:0], params["before"] = page["messages"], page["next_before"]
        if not page["has_more"]:
            return rows


async def check_storage(session: aiohttp.ClientSession, base: str, streams: list[Stream], ledger: Ledger,
                        threads: list[str], wait: float = 3.0) -> tuple[list[str], int]:
    """What is wrong with the stored turns of `threads`, and how many rows are still pending."""
    deadline = time.monotonic() + wait
    while True:  # a disconnected answer is stored a moment after the client left
        rows = {t: await fetch_thread(session, base, t) for t in threads}
        pending = [(t, m["id"]) for t, ms in rows.items() for m in ms if m["status"] == "pending"]
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    out = [f"thread {t}: message {m} still pending {wait:g} s after the round" for t, m in pending]
    answers: dict[str, dict[str, Any]] = {}
    for t, ms in rows.items():
        for i, m in enumerate(ms):
            if m["role"] == "user" and i + 1 < len(ms) and ms[i + 1]["role"] == "assistant":
                answers[m["content"].split()[-1]] = ms[i + 1]
            elif m["role"] == "user" or i == 0 or ms[i - 1]["role"] != "user":
                out.append(f"thread {t}: message {m['id']} ({m['role']}) is not part of a question-answer pair")
    for s in streams:
        row = answers.get(s.rid)
        if not s.thread_id or s.problem or (row is None and s.status in (0, 503)):
            continue  # nothing to store, failed already, refused, or cut before the service answered
        final, text = s.events[-1] if s.ended else {}, s.text
        where = f"{s.rid} [{s.mode} {s.thread_id}] final={final} row={row}"
        if row is None or s.status == 503:
            out.append(f"{where}: " + ("a refused turn was stored" if row else "the turn was not stored"))
        elif final.get("type") == "done" and final.get("persisted") is not False and (  # false: may be pending
                final.get("persisted"), final.get("message_id"), row["status"], row["content"]) != (
                True, row["id"], "complete", text):
            out.append(f"{where}: a done answer is not stored as complete with the streamed text")
        elif final.get("type") == "error" and (row["status"], row["content"]) != ("error", text):
            out.append(f"{where}: an error answer is not stored as error with the partial text")
        elif not final:  # the client left; an answer that ended before the service noticed keeps its end
            *whole, tail = row["content"].split(" ")
            tried = ledger.attempts.get(s.rid, [])
            n, bad = answering([p + " " for p in whole] + ([tail] if tail else []), s.rid, tried)
            complete = n is not None and row["content"] == "".join(tried[n][2].tokens)
            if bad or row["status"] not in ("interrupted", "complete", "error") \
                    or not row["content"].startswith(text) or (row["status"] == "complete" and not complete):
                out.append(f"{where}: a disconnected answer is stored wrongly ({bad or row['status']})")
    return out, len(pending)


def census(service_port: int, full: bool = True) -> tuple[Counter[str], Counter[str], int, int]:
    """Tasks by coroutine; with `full`, after a collection, live instances of the service's own classes
    and requests to it, live pymalloc blocks and RSS."""
    tasks: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        name = getattr(coro, "__qualname__", type(coro).__name__)
        if name == "RequestHandler.start":  # one per open connection of an aiohttp server
            handler = coro.cr_frame.f_locals.get("self") if coro.cr_frame else None
            sock = handler.transport.get_extra_info("sockname") if handler and handler.transport else None
            name = "service connection" if sock and sock[1] == service_port else IDLE
        tasks[name] += 1
    if not full:
        return tasks, Counter(), 0, 0
    gc.collect()
    own = ("service", "providers", "storage")  # (an idle keep-alive connection keeps its last request)
    objects = Counter(type(o).__qualname__ for o in gc.get_objects()
                      # requests to the service (the fake's API is at /v1/ too, on its own port)
                      if isinstance(o, web.BaseRequest) and (not o.path.startswith("/v1/") or o.host.endswith(f":{service_port}"))
                      or str(getattr(type(o), "__module__", "")).partition(".")[0] in own)
    return tasks, objects, sys.getallocatedblocks(), psutil.Process().memory_info().rss


class Soak:
    def __init__(self, base: str, upstream: FakeUpstream, service_port: int, cfg: Config) -> None:
        self.base, self.upstream, self.service_port, self.cfg = base, upstream, service_port, cfg
        self.ledger = Ledger(cfg.seed)
        for model in MODELS:
            upstream.choose(model, self.ledger)
        self.threads = [f"soak-{uuid.uuid4().hex[:8]}-{i}" for i in range(cfg.threads)]
        kinds = ("outcomes", "modes", "formats", "attempts", "time to headers", "hostile", "resume")
        self.counts: dict[str, Counter[str]] = {kind: Counter() for kind in kinds}
        self.violations: list[str] = []
        self.pending = self.undocumented_5xx = 0
        self.snapshots: dict[str, tuple[Counter[str], Counter[str], int, int]] = {}

    async def round(self, session: aiohttp.ClientSession, prefix: str, count: int) -> list[Stream]:
        plans = (Stream.plan(self.cfg, f"{prefix}{i}", self.threads) for i in range(count))
        streams: list[Stream] = []
        stop_at = time.monotonic() + self.cfg.duration

        async def worker() -> None:
            for plan in plans:  # one generator shared by all workers
                if time.monotonic() > stop_at:
                    return
                if plan.hostile:
                    self.hostile(plan, *await hostile_request(self.base, plan.hostile, plan.rid))
                else:
                    run = run_resume if plan.mode == "resume" else run_stream
                    streams.append(self.tally(await run(session, self.base, plan)))

        await asyncio.gather(*(worker() for _ in range(self.cfg.concurrency)))
        chats = [s.thread_id for s in streams if s.ui and s.thread_id]
        problems, pending = await check_storage(session, self.base, streams, self.ledger, self.threads + chats)
        self.violations += problems
        self.pending += pending
        self.ledger.attempts.clear()
        return streams

    def hostile(self, plan: Stream, status: int, problems: list[str]) -> None:
        """Count a hostile client's request: answered as documented, and never sent upstream (so it
        cannot move a circuit)."""
        assert plan.hostile
        self.violations += problems
        if self.ledger.attempts.pop(plan.rid, None):
            self.violations.append(f"{plan.rid} {plan.hostile}: a hostile request reached the upstream")
        self.undocumented_5xx += status >= 500
        self.counts["outcomes"]["hostile client refused"] += 1
        self.counts["hostile"][f"{plan.hostile} {status}"] += 1

    def tally(self, s: Stream) -> Stream:
        """Check and count a stream that ended, and keep only what the storage check needs, so that the
        soak's own memory does not grow with the number of streams."""
        tried = self.ledger.attempts.get(s.rid, [])
        self.violations += check_stream(s, tried)
        if s.mode == "resume":
            counts, problems = tally_resume(s, tried)
            self.counts["resume"].update(counts)
            self.violations += problems
        final = s.events[-1] if s.ended and s.events else {}
        outcome = final.get("code") or final.get("type") or "no terminal event"
        outcome += ", persisted: false" if final.get("persisted") is False else ""
        if s.status == 503 and not s.problem:
            outcome = "refused: storage_unavailable"
        elif s.status >= 500:
            self.undocumented_5xx += 1
        if s.problem or s.disconnected:
            outcome = "client problem" if s.problem else "disconnected" if s.status else "cut before the response"
        self.counts["outcomes"][outcome] += 1
        self.counts["modes"][s.mode + (" (ui)" if s.ui else "")] += 1
        self.counts["formats"]["ui" if s.ui else s.wire] += 1
        self.counts["attempts"].update(fault for _, fault, _ in tried)
        if s.headers_after is not None:
            bucket = next((f"<{b:g} s" for b in (0.1, 1, 3, 10) if s.headers_after < b), ">=10 s")
            self.counts["time to headers"][bucket] += 1
        if not (s.thread_id and s.disconnected):  # the storage check reads the attempts of these only
            self.ledger.attempts.pop(s.rid, None)
        s.text = "".join(e["text"] for e in s.events if e.get("type") == "content")
        s.events = s.events[-1:] if s.ended else []
        self.upstream.requests.clear()  # the fake's records: the ledger has what the checks need
        self.upstream.disconnects.clear()
        return s

    async def settle(self, session: aiohttp.ClientSession, name: str) -> None:
        """Wait (up to 5 s) until no stream is open and no request handler runs, then measure; after
        the main round, compare with the baseline (idle upstream keep-alive connections aside)."""
        await asyncio.sleep(RESUME_RETENTION * 1.25)  # ended resumable answers forgotten (the sweep: a quarter of it)
        deadline = time.monotonic() + 5.0
        while True:
            await asyncio.sleep(0.2)
            async with session.get(f"{self.base}/health") as resp:
                busy = (await resp.json())["open_streams"]
            tasks = census(self.service_port, full=False)[0]
            if not (busy or tasks["RequestHandler._handle_request"] or tasks["service connection"]):
                break
            if time.monotonic() > deadline:
                self.violations.append(f"{name}: still {busy} open streams and tasks {dict(tasks)} after 5 s")
                break
        tasks, objects, blocks, rss = self.snapshots[name] = census(self.service_port)
        problems = [f"{tasks[IDLE]} idle upstream connections"] if tasks[IDLE] > 210 else []
        if name != "baseline":
            tasks0, objects0, blocks0, rss0 = self.snapshots["baseline"]
            extra, n = (tasks - tasks0) - Counter({IDLE: tasks[IDLE]}), self.cfg.streams
            problems += [f"tasks left: {dict(extra)}"] if extra.total() > TASK_SLACK else []
            problems += [f"objects outlived their streams: {dict(objects - objects0)}"] if objects - objects0 else []
            idle_growth = max(0, tasks[IDLE] - tasks0[IDLE])
            if blocks - blocks0 > BLOCKS_SLACK + BLOCKS_PER_STREAM * n + BLOCKS_PER_IDLE * idle_growth:
                problems.append(f"{blocks - blocks0} more live blocks")
            if rss - rss0 > RSS_SLACK + RSS_PER_STREAM * n:
                problems.append(f"RSS grew {(rss - rss0) / 2**20:.1f} MiB")
        self.violations += [f"{name}: {p}" for p in problems]

    def summary(self, elapsed: float) -> str:
        streams = sum(self.counts["outcomes"].values())
        head = f"seed {self.cfg.seed}: {streams} streams (warm-up + main), {self.cfg.concurrency} at once"
        lines = [f"{head}, {elapsed:.1f} s"]
        lines += [f"{k}: " + ", ".join(f"{n}={v}" for n, v in c.most_common()) for k, c in self.counts.items()]
        if len(self.snapshots) == 2:
            (t0, o0, b0, r0), (t1, o1, b1, r1) = self.snapshots["baseline"], self.snapshots["after"]
            lines.append(f"baseline -> after: tasks {t0.total() - t0[IDLE]} -> {t1.total() - t1[IDLE]} (+ idle "
                         f"upstream connections {t0[IDLE]} -> {t1[IDLE]}); objects of the service's classes "
                         f"{o0.total()} -> {o1.total()}; live blocks {b1 - b0:+d}; "
                         f"RSS {r0 / 2**20:.1f} -> {r1 / 2**20:.1f} MiB")
        what = (re.split(r"[]}]: ", v)[-1].split("; events=")[0] for v in self.violations)  # without the where
        kinds = Counter(re.sub(r"msg_\w+|soak-[\w-]+|\b[rwcx]\d+\S*|[\d.]+", "#", w)[:100] for w in what)
        lines += [f"violations: {len(self.violations)}"] + [f"  {n} x {kind}" for kind, n in kinds.most_common()]
        first = ["first ones:"] + [f"  {v}" for v in self.violations[:20]] if self.violations else []
        return "\n".join(lines + first)

    def report(self) -> PhaseReport:
        name = f"main round (upstream faults, disconnects, resumes, hostile clients), {self.cfg.concurrency} at once"
        counts = Counter(self.counts["hostile"])
        counts.update({f"resume: {k}": v for k, v in self.counts["resume"].items()})  # zeros kept: lost text=0
        return PhaseReport(name, sum(self.counts["outcomes"].values()), list(self.violations), self.pending,
                           self.undocumented_5xx, counts)


async def soak(base: str, upstream: FakeUpstream, service_port: int, cfg: Config) -> Soak:
    run = Soak(base, upstream, service_port, cfg)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)  # no idle client connections to count
    async with aiohttp.ClientSession(connector=connector) as session:
        await run.round(session, "w", cfg.warmup)
        await run.settle(session, "baseline")
        await run.round(session, "r", cfg.streams)
        await run.settle(session, "after")
    return run


async def main(args: argparse.Namespace) -> int:
    from service.app import create_app
    from service.log import configure_logging
    from service.settings import load_settings

    configure_logging("error")  # the phases refuse thousands of requests on purpose: warnings would drown the summary
    modes = {"read": 70, "after_k": 15, "before_first": 10, "cut": round(100 * args.cut_share),
             "resume": round(100 * args.resume_share)}
    cfg = Config(args.streams, args.concurrency, args.duration, min(args.streams, 2 * args.concurrency), args.seed,
                 args.threads, modes=modes, hostile_share=args.hostile_share)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeUpstream() as upstream:
            settings = load_settings(
                models=MODEL_SPECS, anthropic_api_key=ANTHROPIC_KEY, anthropic_base_url=upstream.base_url,
                openai_api_key=OPENAI_KEY, openai_base_url=upstream.openai_base_url,
                database_url=args.database_url or f"sqlite:///{tmp}/soak.db", **SERVICE_SETTINGS)
            runner = web.AppRunner(create_app(settings), handler_cancellation=True, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            port = runner.addresses[0][1]
            try:  # hard cap: both rounds, the last streams' own limits, the checks
                async with asyncio.timeout(2 * (args.duration + HEADERS_TIMEOUT + STREAM_TIMEOUT) + 60):
                    run = await soak(f"http://127.0.0.1:{port}", upstream, port, cfg)
            except TimeoutError:
                print(f"the soak did not finish within its hard time cap (seed {args.seed})")
                return 2
            finally:
                await runner.cleanup()
    print(f"store: {str(settings.database_url).split(':', 1)[0]}\n{run.summary(time.monotonic() - started)}", flush=True)
    reports = [run.report()] + await fault_phases(args)
    print(summary(reports))
    return 0 if all(report.ok for report in reports) else 1


async def fault_phases(args: argparse.Namespace) -> list[PhaseReport]:
    """The hostile clients against a real process, the database outage (PostgreSQL only), SIGKILL and
    resumes on another process (Redis)."""
    reports = []
    if args.hostile_requests:
        plan = HostilePlan(args.hostile_requests, min(args.concurrency, 50), args.seed, args.database_url)
        reports.append(await asyncio.to_thread(hostile_phase, plan))
    if args.database_url and args.database_url.startswith("postgres") and args.outage_streams:
        outage = OutagePlan(args.database_url, args.outage_streams, args.concurrency, args.threads, args.outages,
                            restart_postgres=args.restart_postgres)
        reports.append(await outage_phase(outage, SERVICE_SETTINGS))
    elif args.restart_postgres:
        raise SystemExit("--restart-postgres needs --database-url postgresql://...")
    if args.kill_streams:
        reports.append(await asyncio.to_thread(kill_phase, KillPlan(args.kill_streams, database_url=args.database_url)))
    if args.replica_streams:
        plan = ReplicaPlan(args.replica_streams, min(args.concurrency, 50), args.seed, args.redis_url, args.database_url)
        reports.append(await asyncio.to_thread(replica_phase, plan))
    return reports


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, kind, default in [("--streams", int, 5000), ("--concurrency", int, 400), ("--duration", float, 120.0),
                                ("--seed", int, random.randrange(2**31)), ("--threads", int, 32),
                                ("--cut-share", float, 0.05), ("--database-url", str, None),
                                ("--hostile-share", float, 0.05), ("--resume-share", float, 0.1), ("--hostile-requests", int, 600),
                                ("--outage-streams", int, 1000), ("--outages", int, 3), ("--kill-streams", int, 100),
                                ("--replica-streams", int, 200), ("--redis-url", str, "redis://127.0.0.1:6379/0")]:
        parser.add_argument(flag, type=kind, default=default)
    parser.add_argument("--restart-postgres", action="store_true",
                        help="restart this machine's PostgreSQL cluster for real (pg_ctlcluster) instead of cutting a proxy")
    sys.exit(asyncio.run(main(parser.parse_args())))
