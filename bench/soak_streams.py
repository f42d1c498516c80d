"""The soak's streams: the fake's seeded fault chooser (`Ledger`), a client's plan (`Stream`), running
one request on any wire format, and checking what the client saw against what the upstream sent.
bench/soak.py runs them by the hundred."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.soak_hostile import IN_PROCESS, pick
from tests.compat_wire import AsTyped
from tests.conftest import MODELS as MODEL_SPECS  # the chain `make_client` configures
from tests.fake_upstream import RecordedRequest, Scenario
from tests.support.prompts import conversation

MODELS = [spec.partition("/")[2] for spec in MODEL_SPECS.split(",")]  # in chain order
HEADERS_TIMEOUT = 30.0  # storing the turn waits for the store, which AI_REQUEST_TIMEOUT does not bound
STREAM_TIMEOUT = 12.0  # after the headers: request_timeout, storing the answer, a loaded loop
STALL = 30.0  # outlives every settle: an upstream request the service failed to close shows as a task
TERMINAL = ("done", "error")
ERROR_CODES = {"rate_limited", "upstream_unavailable", "upstream_error", "timeout"}
AFTER_TEXT = {"error-after": {"upstream_unavailable", "upstream_error"}, "drop-after": {"upstream_unavailable"},
              "malformed-after": {"upstream_error"}}  # codes after text, besides the deadline's "timeout"
ANSWERS = ("ok", "slow", "late-first")  # the faults that can end with `done`
HTTP, K = "http_error", "k"  # K: 1-3 tokens of text before the fault
FAULTS: dict[str, tuple[int, dict[str, Any]]] = {  # name: (weight, Scenario fields)
    "ok": (30, {}), "slow": (8, {"token_delay": 0.03}), "late-first": (3, {"first_token_delay": 0.6}),
    "429": (5, {"kind": HTTP, "status": 429}), "429-retry": (6, {"kind": HTTP, "status": 429, "retry_after": 0.1}),
    "429-long": (3, {"kind": HTTP, "status": 429, "retry_after": 5}),
    "529": (6, {"kind": HTTP, "status": 529}), "500": (4, {"kind": HTTP, "status": 500}),
    "error-before": (4, {"kind": "stream_error"}), "error-after": (4, {"kind": "stream_error", "after_tokens": K}),
    "drop-before": (4, {"kind": "drop"}), "drop-after": (4, {"kind": "drop", "after_tokens": K}),
    "stall-before": (3, {"kind": "stall", "stall_seconds": STALL}),
    "stall-after": (3, {"kind": "stall", "after_tokens": K, "stall_seconds": STALL}),
    "malformed-before": (3, {"kind": "malformed"}), "malformed-after": (3, {"kind": "malformed", "after_tokens": K}),
}


Attempts = list[tuple[str, str, Scenario]]  # (model, fault, scenario) of one request, in order


class Ledger:
    """The fake's chooser: a scenario per upstream request from (seed, request id, attempt number), so
    a seed replays the same faults; its tokens ("r7.1.0 ", ...) are unique to the attempt."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.attempts: dict[str, Attempts] = {}

    def __call__(self, rec: RecordedRequest) -> Scenario:
        rid = conversation(rec.body)[-1]["content"].split()[-1]
        tried = self.attempts.setdefault(rid, [])
        rng = random.Random(f"{self.seed}:{rid}:{len(tried)}")
        name = rng.choices(list(FAULTS), weights=[w for w, _ in FAULTS.values()])[0]
        fields: dict[str, Any] = {key: rng.randint(1, 3) if v == K else v for key, v in FAULTS[name][1].items()}
        tokens = [f"{rid}.{len(tried)}.{i} " for i in range(rng.randint(4, 9))]
        tried.append((rec.model, name, Scenario(tokens=tokens, **fields)))
        return tried[-1][2]


@dataclass
class Config:
    streams: int = 300  # main round; a warm-up round of `warmup` streams comes first
    concurrency: int = 150
    duration: float = 6.0  # seconds per round in which new streams start
    warmup: int = 150
    seed: int = 1
    threads: int = 8
    thread_share: float = 0.4
    ui_share: float = 0.3  # streams through /ai/ui/chat (the UI message stream), each on a chat of its own
    # Clients read to the end, close after k events, close after the headers before any event, or
    # cut the request at a time in `cut_window` (seconds), possibly before its response.
    # Resuming clients (bench/soak_resume.py) drop and resume a resumable answer, typed or UI.
    modes: dict[str, int] = field(default_factory=lambda: {"read": 70, "after_k": 15, "before_first": 10, "cut": 5,
                                                           "resume": 10})
    cut_window: tuple[float, float] = (0.0, 0.03)
    hostile_share: float = 0.05  # requests of a hostile client instead (bench/soak_hostile.py, IN_PROCESS)
    resume_wait_max: float = 0.3  # the longest a resuming client stays away (well within resume_retention)


@dataclass
class Stream:
    """One client request: its plan (drawn from the seed), then what the client saw."""

    rid: str
    thread_id: str | None
    mode: str
    k: int  # after_k: events read before closing
    wait: float  # before_first: pause before closing; cut: when the request is cut
    status: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    ended: bool = False  # the terminal event was read
    disconnected: bool = False
    problem: str | None = None
    headers_after: float | None = None  # seconds from the request to its response headers
    text: str = ""  # the content received, once checked (then only the last event is kept)
    ui: bool = False  # through /ai/ui/chat: its chunks are read as the typed events they stand for
    message_id: str | None = None  # ui: the start chunk's messageId
    wire: str = "typed"  # the route's format when not ui (see WIRES); a thread's turns are typed or ui
    hostile: str | None = None  # a hostile client's request instead (a kind of soak_hostile.HOSTILE)
    # resume: the plan (see plan_drops), then the answer's id, the resumes made, the positions they
    # asked from, how many asked from the same one as the one before, and the event ids received.
    drops: tuple[tuple[int, float, bool], ...] = ()
    answer_id: str | None = None
    resumes: int = 0
    positions: list[int] = field(default_factory=list)
    same_position: int = 0
    unavailable: int = 0  # resumes answered 503 resume_unavailable, then tried again
    seqs: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    @classmethod
    def plan(cls, cfg: Config, rid: str, threads: list[str]) -> Stream:
        rng = random.Random(f"{cfg.seed}:plan:{rid}")
        thread = rng.choice(threads) if rng.random() < cfg.thread_share else None
        mode = rng.choices(list(cfg.modes), weights=list(cfg.modes.values()))[0]
        wait = rng.uniform(*cfg.cut_window) if mode == "cut" else rng.uniform(0, 0.1)
        k = rng.randint(1, 4)
        ui = rng.random() < cfg.ui_share
        if ui and thread:
            thread = f"{thread}-ui-{rid}"  # a UI chat follows its client: one of its own
        wire = "typed" if (thread or ui) else rng.choices(list(WIRES), weights=list(WIRES.values()))[0]
        hostile = pick(rng, IN_PROCESS) if rng.random() < cfg.hostile_share else None
        drops = plan_drops(cfg, rid) if mode == "resume" else ()
        wire = "typed" if drops else wire  # resumable answers are on the service's own formats only
        return cls(rid, thread, mode, k, wait, ui=ui, wire=wire, hostile=hostile, drops=drops)


def plan_drops(cfg: Config, rid: str) -> tuple[tuple[int, float, bool], ...]:
    """For each connection but the last: events read before dropping it, seconds before resuming,
    and whether the resume names its position by `?after=` instead of `Last-Event-ID`."""
    rng = random.Random(f"{cfg.seed}:resume:{rid}")
    drops = []
    for n in range(rng.randint(1, 3)):
        k = rng.randint(1, 3) if n == 0 else rng.randint(1, 4) if rng.random() < 0.75 else 0  # 0: same position twice
        wait = rng.choices([0.0, rng.uniform(0, 0.05), rng.uniform(0.1, cfg.resume_wait_max)], [3, 4, 3])[0]
        drops.append((k, wait, rng.random() < 0.2))
    return tuple(drops)


UI_END = re.compile(rb"(id: [^\n]*\n)?data: \[DONE\]\n\n")  # what may follow a UI stream's terminal chunk


def ui_events(s: Stream, raw: bytes, whole: bool) -> list[dict[str, Any]]:
    """A UI message stream's chunks as the typed events they stand for (text-delta: content,
    finish: done, error: error, with no code); its framing chunks dropped. With `whole`, the body
    must end with exactly one `[DONE]`, right after the terminal chunk."""
    blocks = [b for b in raw.decode().split("\n\n") if b and not all(x.startswith(":") for x in b.split("\n"))]
    assert not raw or raw.endswith(b"\n\n"), "the stream must end after a complete event"
    datas = []
    for block in blocks:
        if block.startswith("id: "):  # the event's id: its own line first
            block = block.partition("\n")[2]
        assert block.startswith("data: ") and "\n" not in block, f"unexpected SSE block {block!r}"
        datas.append(block[len("data: "):])
    if whole:
        assert datas.count("[DONE]") == 1 and datas[-1] == "[DONE]", f"[DONE] must end the stream once: {datas[-3:]}"
    events: list[dict[str, Any]] = []
    for data in datas:
        if data == "[DONE]":
            continue
        chunk = json.loads(data)
        if chunk["type"] == "start":
            s.message_id = chunk["messageId"]
        elif chunk["type"] == "text-delta":
            events.append({"type": "content", "text": chunk["delta"]})
        elif chunk["type"] == "finish":
            meta = chunk["messageMetadata"]
            done = {"type": "done", "model": meta["model"], "usage": meta["usage"]}
            if "persisted" in meta:
                done.update(message_id=s.message_id, persisted=meta["persisted"])
            events.append(done)
        elif chunk["type"] == "error":
            events.append({"type": "error", "error": chunk["errorText"], "code": None})
        elif chunk["type"] not in UI_FRAMING:
            events.append({"type": chunk["type"]})  # unknown: check_stream reports it
    return events


UI_FRAMING = {"start-step", "text-start", "text-end", "finish-step"}


def ui_body(s: Stream) -> dict[str, Any]:
    message = {"id": f"q-{s.rid}", "role": "user", "parts": [{"type": "text", "text": f"soak {s.rid}"}]}
    return {"id": s.thread_id or f"unstored-{s.rid}", "messages": [message], "trigger": "submit-message",
            "store": s.thread_id is not None, **({"resumable": True} if s.mode == "resume" and not s.thread_id else {})}


# The request mix by format: the typed events, and the OpenAI- and Anthropic-compatible routes,
# whose events are read as what they mean in typed terms so that one set of checks serves all.
WIRES = {"typed": 60, "openai": 20, "anthropic": 20}



def request_for(s: Stream) -> tuple[str, dict[str, Any]]:
    if s.ui:
        return "/ai/ui/chat", ui_body(s)
    messages = [{"role": "user", "content": f"soak {s.rid}"}]
    if s.wire == "openai":
        return "/v1/chat/completions", {"model": "ai-stream", "messages": messages, "stream": True,
                                        "stream_options": {"include_usage": True}}
    if s.wire == "anthropic":
        return "/v1/messages", {"model": "ai-stream", "max_tokens": 100, "messages": messages, "stream": True}
    where = {"thread_id": s.thread_id} if s.thread_id else {"resumable": True} if s.mode == "resume" else {}
    return "/ai/stream/chat", {"messages": messages, **where}


async def run_stream(session: aiohttp.ClientSession, base: str, s: Stream) -> Stream:
    path, body = request_for(s)
    as_typed = AsTyped(s.wire)

    def events(raw: bytes, whole: bool = True) -> list[dict[str, Any]]:
        return ui_events(s, raw, whole) if s.ui else as_typed(raw)

    sent = time.monotonic()
    try:
        async with asyncio.timeout(s.wait if s.mode == "cut" else HEADERS_TIMEOUT) as limit, \
                session.post(f"{base}{path}", json=body) as resp:
            s.status, s.headers_after = resp.status, time.monotonic() - sent
            if s.mode != "cut":
                limit.reschedule(asyncio.get_running_loop().time() + STREAM_TIMEOUT)
            if resp.status == 503 and s.thread_id and (await resp.json())["code"] == "storage_unavailable":
                pass  # documented: the store cannot take the turn now (down, or its pool exhausted)
            elif resp.status != 200 or resp.content_type != "text/event-stream":
                s.problem = f"HTTP {resp.status} {resp.content_type}: {(await resp.text())[:200]}"
            elif s.mode in ("read", "cut"):
                s.events, s.ended = events(await resp.read()), True
            else:
                await asyncio.sleep(s.wait if s.mode == "before_first" else 0)
                while not s.ended and len(s.events) < (s.k if s.mode == "after_k" else 0):
                    s.events += events(await resp.content.readuntil(b"\n\n"), whole=False)
                    s.ended = bool(s.events) and s.events[-1].get("type") in TERMINAL
                if s.ended and (rest := await resp.read()) and (events(rest, whole=False) or (s.ui and not UI_END.fullmatch(rest))):
                    s.problem = f"events after the terminal one: {rest[:200]!r}"
                s.disconnected = not s.ended
                resp.close()
    except TimeoutError:
        s.disconnected = s.mode == "cut"
        stage = "before the headers" if s.headers_after is None else f"{STREAM_TIMEOUT:g} s after the headers"
        s.problem = None if s.disconnected else f"the stream did not end {stage}"
    except AssertionError as exc:
        s.problem = f"SSE framing: {exc}"
    except (aiohttp.ClientError, ValueError) as exc:
        s.problem = f"{type(exc).__name__}: {exc}"
    return s


def answering(pieces: list[str], rid: str, attempts: Attempts) -> tuple[int | None, str | None]:
    """The attempt whose tokens `pieces` (one per content event) are a prefix of; what is wrong if not."""
    if not pieces:
        return None, None
    who, _, rest = pieces[0].partition(".")
    n = rest.partition(".")[0]
    if who != rid or not n.isdigit() or int(n) >= len(attempts):
        return None, f"text {pieces[0]!r} does not belong to request {rid}"
    if pieces != attempts[int(n)][2].tokens[: len(pieces)]:
        return int(n), f"text is not a prefix of attempt {n}'s tokens: {''.join(pieces)[:200]!r}"
    if int(n) != len(attempts) - 1:
        return int(n), f"{attempts[int(n) + 1][0]} was tried after attempt {n} sent text"
    return int(n), None


def check_stream(s: Stream, attempts: Attempts) -> list[str]:
    where = f"{s.rid} [{s.mode}{' ui' if s.ui else ''} {s.thread_id or ''}] attempts={[f'{f}@{m}' for m, f, _ in attempts]}"
    if s.problem:
        return [f"{where}: {s.problem}"]
    kinds = [e.get("type") for e in s.events]
    terminals = [i for i, kind in enumerate(kinds) if kind in TERMINAL]
    out = [] if terminals == ([len(kinds) - 1] if s.ended else []) else [f"terminal events at {terminals}"]
    out += [f"unknown event types in {kinds}"] if set(kinds) - {"content", *TERMINAL} else []
    texts = [e["text"] for e in s.events if e.get("type") == "content"]
    n, bad = answering(texts, s.rid, attempts)
    model, fault, sc = attempts[n] if n is not None else ("", "", Scenario())
    chain = [MODELS.index(m) for m, _, _ in attempts]  # the same model again only right after a short 429
    out += [bad] if bad else []
    out += [f"attempt {i} ({attempts[i][0]}) breaks the chain order" for i in range(1, len(chain))
            if chain[i] < chain[i - 1]
            or chain[i] == chain[i - 1] and (attempts[i - 1][1] != "429-retry" or chain.count(chain[i]) > 2)]
    final = s.events[-1] if s.ended and s.events else {}
    usage = final.get("usage") or {}
    if final.get("type") == "done" and (texts != sc.tokens or fault not in ANSWERS
                                        or (final.get("model"), usage.get("output_tokens")) != (model, len(texts))):
        out.append("done does not match the attempt that answered")
    elif final.get("type") == "error" and not s.ui:  # the UI stream's error has a sentence, no code
        allowed = ERROR_CODES if n is None else {"timeout"} | AFTER_TEXT.get(fault, set())
        out += [] if final.get("code") in allowed else [f"error code not in {sorted(allowed)}"]
    return [f"{where}: {v}; events={str(s.events)[:300]}" for v in out]
