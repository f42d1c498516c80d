"""What starting an answer and relaying paced tokens cost, on a fresh server each time.

`measure_costs`: CPU per request with one-token answers (a closed loop of `concurrency`
clients); CPU per 1,000 tokens when each token is its own upstream chunk (`bench-paced`:
5 ms apart, at `paced_concurrency` streams, well below saturation, so that the server reads
them one by one: `tokens_per_read` shows it); TTFT of `sync_streams` paced streams started at
the same moment, round after round. `measure_resumable`: the paced CPU figure again with
`"resumable": true`, without Redis and with `REDIS_URL`, beside the plain one.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from bench.config import ONE_MODEL, PACED_MODEL
from bench.load import JSON_HEADERS, client_session, run_load
from bench.paced import run_paced, synchronized_ttft
from bench.phases import GENERATE, PROMPT, Bench, process_cpu
from bench.procs import Server

ONE_PROMPT = {**PROMPT, "model": ONE_MODEL}
PACED_PROMPT = {**PROMPT, "model": PACED_MODEL}
ANSWER_ID_HEADER = "X-Answer-ID"


async def paced_cpu(bench: Bench, server: Server, payload: dict) -> dict[str, Any]:
    """CPU of `server` per 1,000 paced tokens, over `paced_seconds` of `paced_concurrency` clients
    (every stream read to its end), after one unrecorded stream per client."""
    cfg = bench.cfg
    url, clients = server.url + GENERATE, cfg.paced_concurrency
    stream_s = cfg.paced_tokens * cfg.paced_delay
    await run_paced(url, payload, clients=clients, ramp=stream_s, duration=0, delay=cfg.paced_delay)
    before = server.cpu_seconds(), process_cpu(bench.upstream_pid), process_cpu(os.getpid())
    tally = await run_paced(
        url, payload, clients=clients, ramp=stream_s, duration=cfg.paced_seconds, delay=cfg.paced_delay
    )
    after = server.cpu_seconds(), process_cpu(bench.upstream_pid), process_cpu(os.getpid())
    per_1k = [(b - a) * 1e6 / tally.tokens if tally.tokens else float("nan") for a, b in zip(before, after)]
    return {
        "cpu_ms_per_1k_tokens": round(per_1k[0], 2),
        "upstream_cpu_ms_per_1k_tokens": round(per_1k[1], 2),
        "client_cpu_ms_per_1k_tokens": round(per_1k[2], 2),
        **tally.summary(),
    }


async def measure_costs(bench: Bench, kind: str) -> dict[str, Any]:
    """A fresh server: warm-up, CPU per one-token request, CPU per paced token, synchronized TTFT."""
    cfg = bench.cfg
    server = await bench.fresh_server(kind)
    url, limit = server.url + GENERATE, cfg.phase_time_limit
    try:
        async with client_session() as session:
            await run_load(session, url, ONE_PROMPT, concurrency=cfg.concurrency, requests=cfg.warmup, time_limit=limit)
            cpu0 = server.cpu_seconds()
            one = await run_load(
                session, url, ONE_PROMPT, concurrency=cfg.concurrency, requests=cfg.one_token_requests, time_limit=limit
            )
            cpu_one = server.cpu_seconds() - cpu0
            paced = await paced_cpu(bench, server, PACED_PROMPT)
            sync = await synchronized_ttft(
                session, url, PACED_PROMPT, streams=cfg.sync_streams, rounds=cfg.sync_rounds, time_limit=limit
            )
        return {
            "cpu_ms_per_request": round(cpu_one * 1000 / one.completed, 3) if one.completed else float("nan"),
            "one_token": one.summary(),
            "paced": paced,
            "sync_ttft": sync.summary(),
        }
    finally:
        bench.procs.stop(server.proc)


async def resumable_support(server: Server) -> str | None:
    """None when the service makes `"resumable": true` answers; else why not, in a sentence."""
    body = json.dumps({**ONE_PROMPT, "resumable": True}).encode()
    async with client_session() as session, session.post(server.url + GENERATE, data=body, headers=JSON_HEADERS) as resp:
        text = (await resp.read())[:300].decode(errors="replace")
        if resp.status == 400:
            return f'the service answers 400 to "resumable": true ({text}): resumable answers are not in this build'
        if resp.status != 200:
            return f'the service answers {resp.status} to "resumable": true ({text})'
        if ANSWER_ID_HEADER not in resp.headers:
            return f'the service ignores "resumable": true (no {ANSWER_ID_HEADER} header): not in this build'
    return None


async def redis_reachable(url: str) -> str | None:
    """None when Redis answers PING at `url`; else the reason."""
    import redis.asyncio as redis

    client = redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"Redis at {url} does not answer: {type(exc).__name__}"
    finally:
        await client.aclose()
    return None


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete the keys under `prefix` (this run's own, never anything else); how many there were."""
    import redis.asyncio as redis

    client = redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    deleted = 0
    try:
        async for key in client.scan_iter(match=prefix + "*", count=500):
            deleted += await client.delete(key)
    except (redis.RedisError, OSError):
        pass
    finally:
        await client.aclose()
    return deleted


async def measure_resumable(bench: Bench) -> dict[str, Any]:
    """The service's CPU per paced token for plain and for `"resumable": true` answers, in a process
    without Redis and in one with REDIS_URL (keys under a prefix of this run's own, removed after);
    skipped, with the reason, when the service does not make resumable answers."""
    cfg = bench.cfg
    out: dict[str, Any] = {}
    resumable = {**PACED_PROMPT, "resumable": True}
    prefix = f"bench-{uuid.uuid4().hex[:12]}:"
    redis_env = {"REDIS_URL": cfg.redis_url, "AI_REDIS_KEY_PREFIX": prefix}
    for label, env in (("without_redis", None), ("with_redis", redis_env)):
        if env is not None and (reason := await redis_reachable(cfg.redis_url)):
            out[label] = {"skipped": reason}
            continue
        server = await bench.fresh_server("service", env=env)
        try:
            if reason := await resumable_support(server):
                return {"skipped": reason}
            out[label] = {
                "plain": await paced_cpu(bench, server, PACED_PROMPT),
                "resumable": await paced_cpu(bench, server, resumable),
            }
        finally:
            bench.procs.stop(server.proc)
            if env is not None:
                out.setdefault(label, {})["redis_keys_removed"] = await delete_prefix(cfg.redis_url, prefix)
    return out
