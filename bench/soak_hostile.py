"""Hostile clients for the soak: requests built byte by byte (aiohttp's client would refuse to send
most of them) and the answer the service documents for each.

`HOSTILE` lists them; the main round mixes the ones an in-process app answers (`IN_PROCESS`) into
its streams. `hostile_phase` sends all of them, the Authorization ones included, to a real
`python -m service` process with API keys (its JSON answer to an oversized header is installed by
the process's entry point), beside ordinary threaded chats, with the upstream never failing; then
guesses keys until the failed-authentication limit answers 429. Every hostile request must get its
documented status and `code`, never reach the upstream (so never move a circuit), never mark the
store degraded, and no key may appear in any answer or log line.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.soak_report import PhaseReport
from tests.conftest import ANTHROPIC_KEY, OPENAI_KEY, parse_events
from tests.support.processes import ThreadedUpstream, run_service, service_env
from tests.support.prompts import conversation

SOAK_KEY = "soak-key-0123456789abcdef-secret"  # the API key of the hostile phase's process
BODY_TIMEOUT = 0.5  # AI_BODY_TIMEOUT wherever the soak runs the service
ANSWER_TIMEOUT = 30.0  # a slow body is answered after BODY_TIMEOUT; a loaded machine takes longer
UPSTREAM_SECRETS = (ANTHROPIC_KEY.encode(), OPENAI_KEY.encode())
JSON_ERROR = frozenset({"error", "code", "details"})


@dataclass(frozen=True)
class Hostile:
    """One kind of hostile request and the answer the service documents for it."""

    name: str
    weight: int
    status: int
    codes: frozenset[str]
    field: str | None = None  # validation_error: the field its first detail names
    keys_only: bool = False  # only meaningful when the service has API keys
    process_only: bool = False  # only a real server process answers it in JSON
    touches_store: bool = False  # an id the store would have seen, before the fix


def _one(code: str) -> frozenset[str]:
    return frozenset({code})


HOSTILE = {h.name: h for h in [
    Hostile("slow_body", 3, 408, _one("body_timeout")),
    Hostile("surrogate_system", 2, 400, _one("validation_error"), field="system"),
    Hostile("surrogate_user_id", 2, 400, _one("validation_error"), field="user_id"),
    Hostile("surrogate_content", 2, 400, _one("validation_error"), field="messages.0.content"),
    Hostile("nul_query_user_id", 2, 400, _one("validation_error"), touches_store=True),
    Hostile("nul_before", 2, 400, _one("validation_error"), touches_store=True),
    Hostile("nul_body_user_id", 2, 400, _one("validation_error"), touches_store=True),
    Hostile("deep_nesting", 2, 400, _one("invalid_json")),
    Hostile("bad_deflate", 2, 400, _one("invalid_body")),
    Hostile("text_plain", 2, 415, _one("unsupported_media_type")),
    Hostile("bad_utf8_auth", 2, 401, _one("unauthorized"), keys_only=True),
    # aiohttp refuses a header line over 8 KB before any handler: 400, or 431 in newer versions.
    Hostile("oversized_auth", 2, 400, frozenset({"bad_request", "headers_too_large"}), keys_only=True, process_only=True),
]}
IN_PROCESS = {name: h for name, h in HOSTILE.items() if not (h.keys_only or h.process_only)}


def pick(rng: random.Random, kinds: dict[str, Hostile]) -> str:
    return rng.choices(list(kinds), weights=[h.weight for h in kinds.values()])[0]


def _request(method: str, target: str, body: bytes = b"", *, auth: bytes | None = None,
             content_type: bytes = b"application/json", extra: bytes = b"") -> bytes:
    head = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
            + b"Content-Type: " + content_type + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
            + (b"Authorization: " + auth + b"\r\n" if auth is not None else b"") + extra + b"\r\n")
    return head + body


def build(kind: str, rid: str, key: str | None) -> tuple[bytes, int]:
    """The request's bytes, and how many of them to send (fewer for a slow body)."""
    auth = f"Bearer {key}".encode() if key else None
    ask = f'{{"role": "user", "content": "soak {rid}"}}'  # the rid last: the fake's ledger would see it
    chat = "/ai/stream/chat"
    bodies: dict[str, Callable[[], bytes]] = {
        "slow_body": lambda: _request("POST", chat, f'{{"messages": [{ask}]}}'.encode(), auth=auth),
        "surrogate_system": lambda: _request("POST", chat, f'{{"messages": [{ask}], "system": "\\ud800"}}'.encode(), auth=auth),
        "surrogate_user_id": lambda: _request("POST", chat, f'{{"messages": [{ask}], "user_id": "\\ud83d"}}'.encode(), auth=auth),
        "surrogate_content": lambda: _request(
            "POST", chat, f'{{"messages": [{{"role": "user", "content": "\\udfff soak {rid}"}}]}}'.encode(), auth=auth),
        "nul_query_user_id": lambda: _request("DELETE", f"/ai/threads/soak-{rid}?user_id=%00", auth=auth),
        "nul_before": lambda: _request("GET", f"/ai/threads/soak-{rid}/messages?before=%00", auth=auth),
        "nul_body_user_id": lambda: _request(
            "POST", chat, f'{{"messages": [{ask}], "thread_id": "soak-{rid}", "user_id": "a\\u0000b"}}'.encode(), auth=auth),
        "deep_nesting": lambda: _request("POST", chat, b'{"messages": ' + b"[" * 1000 + b"]" * 1000 + b"}", auth=auth),
        "bad_deflate": lambda: _request("POST", chat, b"this is not deflate", auth=auth, extra=b"Content-Encoding: deflate\r\n"),
        "text_plain": lambda: _request("POST", chat, f'{{"messages": [{ask}]}}'.encode(), auth=auth, content_type=b"text/plain"),
        "bad_utf8_auth": lambda: _request("POST", chat, f'{{"messages": [{ask}]}}'.encode(),
                                          auth=b"Bearer \xff\xfe" + (key or "").encode()),
        "oversized_auth": lambda: _request("POST", chat, f'{{"messages": [{ask}]}}'.encode(),
                                           auth=f"Bearer {key}".encode() + b"s3cr3t" * 1536),  # 9 KB
    }
    raw = bodies[kind]()
    return raw, (raw.index(b"\r\n\r\n") + 4 + 5 if kind == "slow_body" else len(raw))


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw: bytes


async def send(host: str, port: int, raw: bytes, upto: int) -> Answer:
    """Send `raw[:upto]` and read the answer to its end (every request asks `Connection: close`)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw[:upto])
        await writer.drain()
        async with asyncio.timeout(ANSWER_TIMEOUT):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    status = int(status_line.split()[1]) if status_line.startswith("HTTP/") else 0
    if "chunked" in headers.get("transfer-encoding", ""):
        body = _dechunk(body)
    return Answer(status, headers, body, data)


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out, rest = out + rest[:n], rest[n + 2:]
    return out


def check(kind: str, answer: Answer, key: str | None) -> list[str]:
    """What is wrong with `answer` to a `kind` request (nothing: [])."""
    h, out = HOSTILE[kind], []
    secrets = UPSTREAM_SECRETS + ((key.encode(),) if key else ())
    if any(s in answer.raw for s in secrets) or b"s3cr3t" in answer.raw:
        out.append("the answer repeats a key")
    if b"Traceback" in answer.raw:
        out.append("the answer holds a traceback")
    statuses = {h.status, 431} if kind == "oversized_auth" else {h.status}
    if answer.status not in statuses:
        return out + [f"HTTP {answer.status}, documented {sorted(statuses)}: {answer.body[:200]!r}"]
    try:
        error = json.loads(answer.body)
    except ValueError:
        return out + [f"not JSON: {answer.body[:200]!r}"]
    if not answer.headers.get("content-type", "").startswith("application/json") or set(error) != JSON_ERROR:
        out.append(f"not the JSON error shape: {answer.headers.get('content-type')} {sorted(error)}")
    if error.get("code") not in h.codes:
        out.append(f"code {error.get('code')!r}, documented {sorted(h.codes)}")
    if h.field and (error.get("details") or [{}])[0].get("field") != h.field:
        out.append(f"details name {error.get('details')}, not {h.field}")
    if kind == "slow_body" and answer.headers.get("connection", "").lower() != "close":
        out.append("a timed-out body's connection is kept open")
    return out


async def hostile_request(base: str, kind: str, rid: str, key: str | None = None) -> tuple[int, list[str]]:
    """Send one hostile request to `base` (http://127.0.0.1:port): its status and what is wrong."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    raw, upto = build(kind, rid, key)
    try:
        answer = await send(host, int(port), raw, upto)
    except (OSError, TimeoutError, ValueError, IndexError) as exc:
        return 0, [f"{rid} {kind}: no answer ({type(exc).__name__})"]
    return answer.status, [f"{rid} {kind}: {v}" for v in check(kind, answer, key)]


GUESS_BUDGET = 20  # wrong keys an address may try in a minute during the hostile phase


@dataclass(frozen=True)
class HostilePlan:
    requests: int = 300  # hostile requests; as many ordinary chats again go beside them
    concurrency: int = 30
    seed: int = 1
    database_url: str | None = None  # default: a SQLite file of the phase's own


def hostile_phase(plan: HostilePlan) -> PhaseReport:
    """The hostile phase against a real service process (blocking: call it from a thread)."""
    rng = random.Random(f"{plan.seed}:hostile")
    kinds = [pick(rng, HOSTILE) for _ in range(plan.requests)]
    bad_auth = kinds.count("bad_utf8_auth")
    with tempfile.TemporaryDirectory() as tmp, ThreadedUpstream() as upstream:
        workdir = Path(tmp)
        env = service_env(upstream.fake, workdir, AI_API_KEYS=f"soak:{SOAK_KEY}", AI_BODY_TIMEOUT=str(BODY_TIMEOUT),
                          AI_AUTH_FAILURES_PER_MINUTE=str(bad_auth + GUESS_BUDGET), AI_LOG_LEVEL="info",
                          **({"DATABASE_URL": plan.database_url} if plan.database_url else {}))
        with run_service(env, workdir) as service:
            report = asyncio.run(_hostile(service.base_url, kinds, plan))
            log = service.log_lines()
        sent = upstream.call(lambda: [conversation(r.body)[-1]["content"] for r in upstream.fake.requests])
    legit = {f"soak hp{i}" for i in range(len(kinds))}
    strays = [c for c in sent if c not in legit]
    report.violations += [f"a hostile request reached the upstream: {c[:80]!r}" for c in strays[:5]]
    if len(sent) != len(legit):
        report.violations.append(f"{len(sent)} upstream requests for {len(legit)} ordinary chats (faults are off)")
    secrets = (SOAK_KEY, "s3cr3t", ANTHROPIC_KEY, OPENAI_KEY)
    for line in log:
        if any(s in line for s in secrets):
            report.violations.append(f"a log line holds a key: {line[:120]}")
        try:
            json.loads(line)
        except ValueError:
            report.violations.append(f"a log line is not JSON: {line[:120]}")
    report.counts["log lines"] = len(log)
    # A hostile client's fault is a warning line, never a traceback (aiohttp's own log of a broken
    # body included: see service.log).
    tracebacks = [line for line in log if '"exception"' in line]
    report.counts["log lines with a traceback"] = len(tracebacks)
    report.violations += [f"a log line holds a traceback: {line[:160]}" for line in tracebacks]
    return report


async def _hostile(base: str, kinds: list[str], plan: HostilePlan) -> PhaseReport:
    report = PhaseReport("hostile clients (real process, API keys)")
    auth = {"Authorization": f"Bearer {SOAK_KEY}"}
    threads = f"hostile-{uuid.uuid4().hex[:8]}-"
    work = [(f"h{i}", kind) for i, kind in enumerate(kinds)] + [(f"hp{i}", None) for i in range(len(kinds))]
    random.Random(f"{plan.seed}:hostile-order").shuffle(work)
    queue = iter(work)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:

        async def health() -> dict[str, object]:
            async with session.get(f"{base}/health") as resp:
                return await resp.json()  # type: ignore[no-any-return]

        async def worker() -> None:
            for rid, kind in queue:
                report.requests += 1
                if kind is None:
                    await _ordinary(session, base, rid, f"{threads}{int(rid[2:]) % 16}", auth, report)
                    continue
                status, problems = await hostile_request(base, kind, rid, SOAK_KEY)
                report.counts[f"{kind} {status}"] += 1
                report.undocumented_5xx += status >= 500
                report.violations += problems
                if HOSTILE[kind].touches_store and not (await health())["storage"]["ok"]:  # type: ignore[index]
                    report.violations.append(f"{rid} {kind}: the store is marked degraded after it")

        await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
        state = await health()
        for model in state["models"]:  # type: ignore[attr-defined]
            circuit = model.get("circuit") or {}
            if circuit and (circuit["state"], circuit["consecutive_failures"]) != ("closed", 0):
                report.violations.append(f"circuit of {model['name']} moved: {circuit}")
        if not state["storage"]["ok"]:  # type: ignore[index]
            report.violations.append("the store is marked degraded after the hostile requests")
        await _guess_keys(session, base, report)
    return report


async def _ordinary(session: aiohttp.ClientSession, base: str, rid: str, thread_id: str, auth: dict[str, str],
                    report: PhaseReport) -> None:
    body = {"messages": [{"role": "user", "content": f"soak {rid}"}], "thread_id": thread_id}
    async with session.post(f"{base}/ai/stream/chat", json=body, headers=auth) as resp:
        raw = await resp.read()
    report.counts[f"ordinary {resp.status}"] += 1
    report.undocumented_5xx += resp.status >= 500
    events = parse_events(raw) if resp.status == 200 else []
    if [e["type"] for e in events][-1:] != ["done"] or sum(e["type"] in ("done", "error") for e in events) != 1 \
            or events[-1].get("persisted") is not True:
        report.violations.append(f"{rid}: an ordinary chat beside hostile ones did not end done and stored: "
                                 f"HTTP {resp.status} {raw[-200:]!r}")


async def _guess_keys(session: aiohttp.ClientSession, base: str, report: PhaseReport) -> None:
    """Wrong keys until the address is refused: 401s, then 429 with Retry-After (the budget left is at
    most GUESS_BUDGET plus what refilled meanwhile; the bound below is generous)."""
    wrong = {"Authorization": "Bearer wrong-key-000000000000000"}
    body = {"messages": [{"role": "user", "content": "guess"}]}
    refused = 0
    for n in range(4 * GUESS_BUDGET):
        report.requests += 1
        async with session.post(f"{base}/ai/stream/chat", json=body, headers=wrong) as resp:
            text = await resp.text()
            report.counts[f"key guess {resp.status}"] += 1
            report.undocumented_5xx += resp.status >= 500
            if SOAK_KEY in text or "wrong-key" in text:
                report.violations.append("an answer to a key guess repeats a key")
            if resp.status == 429:
                code = json.loads(text).get("code")
                if code != "rate_limited" or int(resp.headers.get("Retry-After", "0")) < 1 \
                        or "AI_AUTH_FAILURES_PER_MINUTE" not in text:
                    report.violations.append(f"key guess {n}: a 429 without code, Retry-After or setting: {text[:200]}")
                refused += 1
                if refused == 3:
                    return
            elif resp.status != 401:
                report.violations.append(f"key guess {n}: HTTP {resp.status} {text[:200]}")
    report.violations.append(f"{4 * GUESS_BUDGET} wrong keys in a row were never refused (AI_AUTH_FAILURES_PER_MINUTE)")
