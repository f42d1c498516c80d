"""The soak's infrastructure faults: the database going away under threaded load, and a process
killed with SIGKILL mid-answer.

`outage_phase`: threaded chats at once through an in-process app on PostgreSQL while the database
goes away and comes back (a TCP proxy in front of it cuts every connection and refuses new ones; or,
with `restart_postgres`, a real `pg_ctlcluster ... restart` of the server, which other users of it
feel). Each stream must end with exactly one terminal event, last, or be a documented 503
`storage_unavailable`; afterwards no row is `pending` (a bounded wait).

`kill_phase`: a real `python -m service` with threaded streams open is killed with SIGKILL; a new
process on the same store must close every reserved answer as `interrupted` with a prefix of what
the upstream sent (at least what the client had received), and each thread then takes a new turn
whose upstream request alternates roles.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import sqlite3
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import requests
from aiohttp import web

from bench.soak_report import PhaseReport
from bench.soak_streams import ERROR_CODES, TERMINAL
from tests.conftest import ANTHROPIC_KEY, MODELS, OPENAI_KEY, parse_events
from tests.fake_upstream import FakeUpstream, RecordedRequest, Scenario
from tests.storage_fixtures import TcpProxy, with_address
from tests.support.processes import ThreadedUpstream, run_service, service_env
from tests.support.prompts import conversation

PENDING_WAIT = 30.0  # seconds for the retrying backlog (or the next process) to close reserved answers
PENDING_SQL = "SELECT count(*) FROM messages WHERE status = 'pending' AND thread_id LIKE $1"
ROWS_SQL = "SELECT thread_id, role, status, content, id FROM messages WHERE thread_id LIKE $1 ORDER BY thread_id, seq"


async def stored_rows(url: str, prefix: str) -> list[tuple[str, str, str, str, str]]:
    """(thread_id, role, status, content, id) of the threads whose id starts with `prefix`, in order.
    Thread ids are stored namespaced by owner (`key/user/id`)."""
    pattern = f"%/{prefix}%"
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute(ROWS_SQL.replace("$1", "?"), (pattern,)).fetchall()
        conn.close()
        return rows
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return [tuple(r) for r in await conn.fetch(ROWS_SQL, pattern)]  # type: ignore[misc]
    finally:
        await conn.close()


async def wait_for_no_pending(url: str, prefix: str, wait: float = PENDING_WAIT) -> int:
    """Poll (bounded) until no row of these threads is pending; how many still are."""
    deadline = time.monotonic() + wait
    while True:
        try:
            pending = await _pending(url, prefix)
        except (OSError, asyncpg.PostgresError):  # the database is still coming back
            if time.monotonic() > deadline:
                raise
            pending = -1
        if pending == 0 or time.monotonic() > deadline:
            return pending
        await asyncio.sleep(0.1)


def tokens_for(rid: str, n: int) -> list[str]:
    return [f"{rid}.{i} " for i in range(n)]


@dataclass(frozen=True)
class OutagePlan:
    database_url: str  # a scratch PostgreSQL database
    streams: int = 300
    concurrency: int = 100
    threads: int = 30
    outages: int = 2
    outage_seconds: float = 0.5
    restart_postgres: bool = False  # restart the real cluster instead of cutting a proxy


async def outage_phase(plan: OutagePlan, settings: dict[str, Any]) -> PhaseReport:
    from service.app import create_app
    from service.settings import load_settings

    name = "PostgreSQL " + ("restart (pg_ctlcluster)" if plan.restart_postgres else "outage (TCP proxy cut)")
    report = PhaseReport(f"{name} x{plan.outages}, {plan.concurrency} threaded chats at once")
    prefix = f"outage-{uuid.uuid4().hex[:8]}-"
    parts = urlsplit(plan.database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    url = plan.database_url if plan.restart_postgres else with_address(plan.database_url, "127.0.0.1", proxy.port)
    sent: dict[str, list[str]] = {}

    def chooser(rec: RecordedRequest) -> Scenario:
        rid = conversation(rec.body)[-1]["content"].split()[-1]
        sent[rid] = tokens_for(rid, 6)
        return Scenario(tokens=sent[rid], token_delay=0.03)

    async with FakeUpstream() as upstream:
        for model in (spec.partition("/")[2] for spec in MODELS.split(",")):
            upstream.choose(model, chooser)
        app_settings = load_settings(
            models=MODELS, anthropic_api_key=ANTHROPIC_KEY, anthropic_base_url=upstream.base_url,
            openai_api_key=OPENAI_KEY, openai_base_url=upstream.openai_base_url, database_url=url,
            **{**settings, "storage_check_interval": 0.1})
        runner = web.AppRunner(create_app(app_settings), handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        done: list[tuple[str, str, str]] = []  # (rid, message_id, text) of answers stored as done
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
                rids = iter(f"o{i}" for i in range(plan.streams))

                async def worker() -> None:
                    for rid in rids:
                        await _threaded_chat(session, base, rid, f"{prefix}{int(rid[1:]) % plan.threads}",
                                             sent, report, done)

                load = asyncio.gather(*(worker() for _ in range(plan.concurrency)))
                for k in range(plan.outages):  # spread over the run: the k-th once k/(n+1) of the streams ended
                    while report.requests - plan.concurrency < (k + 1) * plan.streams // (plan.outages + 1) \
                            and not load.done():
                        await asyncio.sleep(0.05)
                    report.counts["outages"] += 1
                    if plan.restart_postgres:
                        await asyncio.to_thread(restart_postgres)
                    else:
                        await proxy.stop()  # every open connection cut: some commits land, some do not
                        await asyncio.sleep(plan.outage_seconds)
                        await proxy.start()
                await load
            report.pending = await wait_for_no_pending(plan.database_url, prefix)
        finally:
            await runner.cleanup()
            await proxy.stop()
    rows = await stored_rows(plan.database_url, prefix)
    report.violations += _check_rows(rows, done)
    return report


def restart_postgres() -> None:
    """`pg_ctlcluster <version> main restart` of this machine's (only) cluster."""
    version = sorted(os.path.basename(p) for p in glob.glob("/etc/postgresql/*"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                   check=True, capture_output=True, timeout=120)


async def _threaded_chat(session: aiohttp.ClientSession, base: str, rid: str, thread_id: str,
                         sent: dict[str, list[str]], report: PhaseReport, done: list[tuple[str, str, str]]) -> None:
    report.requests += 1
    body = {"messages": [{"role": "user", "content": f"soak {rid}"}], "thread_id": thread_id}
    try:
        async with asyncio.timeout(60), session.post(f"{base}/ai/stream/chat", json=body) as resp:
            status, raw, retry_after = resp.status, await resp.read(), resp.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError) as exc:
        report.violations.append(f"{rid}: the stream did not end ({type(exc).__name__})")
        return
    if status == 503 and json.loads(raw).get("code") == "storage_unavailable" and retry_after:
        report.counts["503 storage_unavailable"] += 1
        await asyncio.sleep(0.1)  # a client waits before it tries again (less than Retry-After, to keep load)
        return
    if status != 200:
        report.undocumented_5xx += status >= 500
        report.violations.append(f"{rid}: HTTP {status} {raw[:200]!r}")
        return
    events = parse_events(raw)
    terminals = [i for i, e in enumerate(events) if e["type"] in TERMINAL]
    text = "".join(e["text"] for e in events if e["type"] == "content")
    final = events[-1] if events else {}
    report.counts[f"{final.get('type')} {final.get('code') or ''}".strip()
                  + (", persisted: false" if final.get("persisted") is False else "")] += 1
    if terminals != [len(events) - 1]:
        report.violations.append(f"{rid}: terminal events at {terminals} of {len(events)}")
    elif not "".join(sent.get(rid, [])).startswith(text):
        report.violations.append(f"{rid}: text {text[:80]!r} was not sent by the upstream")
    elif final["type"] == "error" and final.get("code") not in ERROR_CODES:
        report.violations.append(f"{rid}: error code {final.get('code')!r} is not documented for this")
    elif final["type"] == "done" and text != "".join(sent[rid]):
        report.violations.append(f"{rid}: done after part of the answer")
    elif final["type"] == "done" and final.get("persisted") is True:
        done.append((rid, final["message_id"], text))


def _check_rows(rows: list[tuple[str, str, str, str, str]], done: list[tuple[str, str, str]]) -> list[str]:
    out, by_id = [], {r[4]: r for r in rows}
    for thread in sorted({r[0] for r in rows}):
        roles = [r[1] for r in rows if r[0] == thread]
        if roles != ["user", "assistant"] * (len(roles) // 2) or len(roles) % 2:
            out.append(f"thread {thread}: roles do not alternate in pairs: {roles[:12]}")
    for rid, message_id, text in done:
        row = by_id.get(message_id)
        if row is None or (row[2], row[3]) != ("complete", text):
            out.append(f"{rid}: done and persisted, but stored as {row and row[2:4]}")
    return out


KILL_MODEL = "claude-sonnet-4-5"  # the first of the default chain, which service_env leaves in place
ANSWER_TOKENS = 1000  # at 0.05 s each: no answer ends before the kill
KILL_SETTINGS = {"AI_STORAGE_CHECK_INTERVAL": "0.2", "AI_WRITER_STALE_AFTER": "1",
                 "AI_PARTIAL_FLUSH_INTERVAL": "0.1", "AI_REQUEST_TIMEOUT": "120"}


@dataclass(frozen=True)
class KillPlan:
    streams: int = 12
    events_before_kill: int = 3  # content events each client reads before the kill
    database_url: str | None = None  # default: a SQLite file of the phase's own


def kill_phase(plan: KillPlan) -> PhaseReport:
    """SIGKILL with `plan.streams` threaded answers open, then a new process (blocking)."""
    report = PhaseReport(f"SIGKILL with {plan.streams} threaded streams open, then a new process")
    prefix = f"kill-{uuid.uuid4().hex[:8]}-"
    threads = [f"{prefix}{n}" for n in range(plan.streams)]
    with tempfile.TemporaryDirectory() as tmp, ThreadedUpstream() as upstream:
        workdir = Path(tmp)
        url = plan.database_url or f"sqlite:///{workdir / 'shared.db'}"
        env = service_env(upstream.fake, workdir, DATABASE_URL=url, **KILL_SETTINGS)

        def chooser(rec: RecordedRequest) -> Scenario:
            last = conversation(rec.body)[-1]["content"]
            return Scenario(tokens=tokens_for(last.split()[-1], ANSWER_TOKENS), token_delay=0.05) if last.startswith("question") \
                else Scenario()

        upstream.call(upstream.fake.choose, KILL_MODEL, chooser)
        received = _open_then_kill(env, workdir / "first", threads, plan, report)
        report.counts["pending after the kill"] = asyncio.run(_pending(url, prefix))
        with run_service(env, _mkdir(workdir / "second")) as service:
            report.pending = asyncio.run(wait_for_no_pending(url, prefix))
            for thread_id in threads:
                _check_thread(service.base_url, thread_id, received.get(thread_id), report)
            sent = upstream.call(lambda: [conversation(r.body) for r in upstream.fake.requests_for(KILL_MODEL)])
            _check_replay(sent, received, report)
            logs = service.log_lines()
        logs += (workdir / "first" / "service.log").read_text(errors="replace").splitlines()
    report.violations += [f"a log line holds a key: {line[:120]}" for line in logs
                          if ANTHROPIC_KEY in line or OPENAI_KEY in line]
    return report


def _mkdir(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    return path


async def _pending(url: str, prefix: str) -> int:
    return sum(status == "pending" for _, _, status, _, _ in await stored_rows(url, prefix))


def _open_then_kill(env: dict[str, str], workdir: Path, threads: list[str], plan: KillPlan,
                    report: PhaseReport) -> dict[str, str]:
    """Open a stream per thread, read a few events of each, SIGKILL the process: what clients saw."""
    received: dict[str, str] = {}
    with run_service(env, _mkdir(workdir)) as service:
        streams = []
        for thread_id in threads:
            report.requests += 1
            body = {"messages": [{"role": "user", "content": f"question {thread_id}"}], "thread_id": thread_id}
            response = requests.post(f"{service.base_url}/ai/stream/chat", json=body, stream=True, timeout=60)
            report.undocumented_5xx += response.status_code >= 500
            if response.status_code != 200:
                report.violations.append(f"{thread_id}: HTTP {response.status_code} before the kill")
                continue
            streams.append((thread_id, response, response.iter_lines()))
        for thread_id, _, lines in streams:
            received[thread_id] = _read_content(lines, plan.events_before_kill)
        time.sleep(0.6)  # several partial saves after what the clients saw
        service.process.kill()
        service.process.wait(timeout=10)
        for _, response, _ in streams:
            response.close()
    return received


def _read_content(lines: Any, count: int) -> str:
    text, seen = "", 0
    for line in lines:
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            text += event.get("text", "")
            seen += event["type"] == "content"
            if seen == count or event["type"] in TERMINAL:
                break
    return text


def _check_thread(base: str, thread_id: str, seen: str | None, report: PhaseReport) -> None:
    page = requests.get(f"{base}/ai/threads/{thread_id}/messages", timeout=30)
    report.requests += 1
    report.undocumented_5xx += page.status_code >= 500
    messages = page.json().get("messages", []) if page.status_code == 200 else []
    statuses = [(m["role"], m["status"]) for m in messages]
    upstream_text = "".join(tokens_for(thread_id, ANSWER_TOKENS))
    if statuses != [("user", "complete"), ("assistant", "interrupted")]:
        report.violations.append(f"{thread_id}: after the restart {statuses}, not question + interrupted answer")
    elif seen is None or not messages[1]["content"].startswith(seen) or not upstream_text.startswith(messages[1]["content"]):
        report.violations.append(f"{thread_id}: interrupted answer {messages[1]['content'][:60]!r} does not hold "
                                 f"what the client saw ({(seen or '')[:60]!r}) or was not sent")
    else:
        report.counts["interrupted with the text seen"] += 1
    body = {"messages": [{"role": "user", "content": f"go on {thread_id}"}], "thread_id": thread_id}
    report.requests += 1
    answer = requests.post(f"{base}/ai/stream/chat", json=body, timeout=60)
    report.undocumented_5xx += answer.status_code >= 500
    events = parse_events(answer.content) if answer.status_code == 200 else []
    if [e["type"] for e in events if e["type"] in TERMINAL] != ["done"] or events[-1]["type"] != "done":
        report.violations.append(f"{thread_id}: the next turn did not end done: HTTP {answer.status_code}")


def _check_replay(sent: list[list[dict[str, Any]]], received: dict[str, str], report: PhaseReport) -> None:
    for thread_id, seen in received.items():
        turns = [m for m in sent if str(m[-1]["content"]) == f"go on {thread_id}"]
        roles = [m["role"] for m in turns[0]] if turns else []
        if roles != ["user", "assistant", "user"]:
            report.violations.append(f"{thread_id}: the next turn sent roles {roles} upstream")
        elif turns[0][0]["content"] != f"question {thread_id}" or not str(turns[0][1]["content"]).startswith(seen):
            report.violations.append(f"{thread_id}: the next turn replayed the wrong history")
        else:
            report.counts["next turn with roles alternating"] += 1
