"""The soak's resumes across replicas: two real `python -m service` processes sharing Redis (a key
prefix of the phase's own, its keys deleted after) and a store; resuming clients (bench/soak_resume.py)
ask one process for a resumable answer and resume it on the other, then back, with the same checks
as in-process: every event once, exactly the upstream's text, a thread's answer stored `complete`."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis

from bench.soak_report import PhaseReport
from bench.soak_resume import run_resume, tally_resume
from bench.soak_streams import MODEL_SPECS, MODELS, Attempts, Config, Stream, check_stream, plan_drops
from tests.fake_upstream import RecordedRequest, Scenario
from tests.support.processes import ThreadedUpstream, run_service, service_env
from tests.support.prompts import conversation

SETTINGS = {"AI_RESUME_FLUSH_INTERVAL": "0.02", "AI_STORAGE_CHECK_INTERVAL": "0.2", "AI_LOG_LEVEL": "warning"}
STORED_WAIT = 10.0  # seconds for a thread's answer to leave `pending`


@dataclass(frozen=True)
class ReplicaPlan:
    streams: int = 40
    concurrency: int = 10
    seed: int = 1
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str | None = None  # default: a SQLite file both processes share


def replica_phase(plan: ReplicaPlan) -> PhaseReport:
    """Both processes, the clients, the checks (blocking); Redis keys of the phase deleted after."""
    report = PhaseReport(f"resume on another process (2 processes, Redis), {plan.concurrency} at once")
    prefix = f"soak-{uuid.uuid4().hex[:8]}:"
    attempts: dict[str, Attempts] = {}

    def chooser(rec: RecordedRequest) -> Scenario:  # a slow answer: the resumes land in the middle of it
        rid = conversation(rec.body)[-1]["content"].split()[-1]
        tried = attempts.setdefault(rid, [])
        rng = random.Random(f"{plan.seed}:replica:{rid}:{len(tried)}")
        tokens = [f"{rid}.{len(tried)}.{i} " for i in range(rng.randint(6, 14))]
        tried.append((rec.model, "slow", Scenario(tokens=tokens, token_delay=0.02)))
        return tried[-1][2]

    try:
        with tempfile.TemporaryDirectory() as tmp, ThreadedUpstream() as upstream:
            workdir = Path(tmp)
            for model in MODELS:
                upstream.call(upstream.fake.choose, model, chooser)
            env = service_env(upstream.fake, workdir, AI_MODELS=MODEL_SPECS, REDIS_URL=plan.redis_url, AI_REDIS_KEY_PREFIX=prefix,
                              DATABASE_URL=plan.database_url or f"sqlite:///{workdir / 'shared.db'}", **SETTINGS)
            (workdir / "a").mkdir()
            (workdir / "b").mkdir()
            with run_service(env, workdir / "a") as one, run_service(env, workdir / "b") as other:
                asyncio.run(_clients(plan, one.base_url, other.base_url, attempts, report))
    finally:
        client = redis.Redis.from_url(plan.redis_url)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    return report


async def _clients(plan: ReplicaPlan, one: str, other: str, attempts: dict[str, Attempts], report: PhaseReport) -> None:
    cfg = Config(seed=plan.seed)
    tag = uuid.uuid4().hex[:6]
    rids = iter(f"p{i}" for i in range(plan.streams))

    async def worker(session: aiohttp.ClientSession) -> None:
        for rid in rids:
            rng = random.Random(f"{plan.seed}:replica-plan:{rid}")
            thread = f"replica-{tag}-{rid}" if rng.random() < 0.5 else None
            s = Stream(rid, thread, "resume", 0, 0.0, ui=rng.random() < 0.3, drops=plan_drops(cfg, rid))
            s = await run_resume(session, one, s, (other,))
            report.requests += 1 + s.resumes
            report.undocumented_5xx += s.status >= 500
            tried = attempts.get(s.rid, [])
            report.violations += check_stream(s, tried)
            counts, problems = tally_resume(s, tried)
            report.counts.update(counts)
            report.violations += problems
            if thread and s.ended and not s.problem:
                report.violations += await _stored(session, other, s)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        await asyncio.gather(*(worker(session) for _ in range(plan.concurrency)))


async def _stored(session: aiohttp.ClientSession, base: str, s: Stream) -> list[str]:
    """A thread's answer as the other process reads it: `complete` with the text for `done`."""
    final = s.events[-1]
    text = "".join(e["text"] for e in s.events if e.get("type") == "content")
    deadline = time.monotonic() + STORED_WAIT
    while True:
        async with session.get(f"{base}/ai/threads/{s.thread_id}/messages") as resp:
            rows = (await resp.json())["messages"] if resp.status == 200 else []
        answer = rows[-1] if len(rows) == 2 else None
        if answer and answer["status"] != "pending" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    want = ("complete", text) if final["type"] == "done" else ("error", text)
    got = (answer["status"], answer["content"]) if answer else None
    return [] if got == want else [f"{s.rid} [{s.thread_id}]: stored as {got}, not {want[0]} with the streamed text"]
