"""The soak's resuming clients: a resumable answer (a stored thread's, or `"resumable": true`) on the
typed events or the UI message stream, read in pieces over several connections. The client reads
k events, drops the connection, waits (0, a moment, or a few hundred ms), and resumes with the
`Last-Event-ID` of the last event it saw (or `?after=<seq>`); a resume dropped before any event
makes the next one ask from the same position again. The last connection reads to the end. A
503 `resume_unavailable` is tried again, as documented, and counted.

`check_resume` checks what all connections gave together: every event of the answer exactly once
(ids `<answer id>:1..n`, strictly increasing, no gap, no repeat), all of one answer; the text seen
over all connections is then checked by `check_stream` like any other stream's (exactly the
tokens of the attempt that answered for `done`, one terminal event, last), and a thread's answer
by the storage check (`complete` with that text).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import aiohttp

from bench.soak_streams import (
    HEADERS_TIMEOUT,
    STREAM_TIMEOUT,
    TERMINAL,
    Attempts,
    Stream,
    request_for,
    ui_events,
)

Block = tuple[str, int, str]  # (answer id, seq, data) of one SSE event
# A documented 503 `resume_unavailable` (Redis not answering, as the service sees it) is tried
# again after its Retry-After (1 s; shorter here), a few times, then counted as a violation.
UNAVAILABLE_RETRIES, UNAVAILABLE_WAIT = 5, 0.5


def parse_block(raw: bytes) -> Block | None:
    """One SSE event as (answer id, seq, data); None for a keep-alive comment."""
    lines = raw.decode().rstrip("\n").split("\n")
    if all(line.startswith(":") for line in lines):
        return None
    assert len(lines) == 2 and lines[0].startswith("id: ") and lines[1].startswith("data: "), f"unexpected SSE block {raw!r}"
    answer_id, sep, seq = lines[0][len("id: "):].rpartition(":")
    assert sep and seq.isdigit(), f"bad event id {lines[0]!r}"
    return answer_id, int(seq), lines[1][len("data: "):]


def is_terminal(s: Stream, data: str) -> bool:
    kind = json.loads(data).get("type") if data != "[DONE]" else None
    return kind in (("finish", "error") if s.ui else TERMINAL)


async def run_resume(session: aiohttp.ClientSession, base: str, s: Stream, others: tuple[str, ...] = ()) -> Stream:
    """The plan's connections one after the other; what they gave, as one stream. With `others`
    (replicas sharing Redis), the connections go round `base` and them: every resume elsewhere."""
    bases = (base, *others)
    path, body = request_for(s)
    blocks: list[Block] = []
    try:  # as long as one stream may take, all connections together: the soak's hard cap holds
        async with asyncio.timeout(HEADERS_TIMEOUT + STREAM_TIMEOUT):
            for n in range(len(s.drops) + 1):
                k, wait, by_query = s.drops[n] if n < len(s.drops) else (None, 0.0, False)
                for retry in range(UNAVAILABLE_RETRIES + 1):
                    if n == 0:
                        request = session.post(f"{base}{path}", json=body)
                    else:
                        position = blocks[-1][1] if blocks else 0
                        where = {"params": {"after": str(position)}} if by_query else \
                            {"headers": {"Last-Event-ID": f"{s.answer_id}:{position}"}} if blocks else {}
                        request = session.get(f"{bases[n % len(bases)]}/ai/stream/answers/{s.answer_id}", **where)
                        s.resumes += 1
                        s.same_position += bool(s.positions) and s.positions[-1] == position
                        s.positions.append(position)
                    outcome = await _read(s, request, blocks, k, last_try=retry == UNAVAILABLE_RETRIES)
                    if outcome != "unavailable":
                        break
                    s.unavailable += 1
                    await asyncio.sleep(UNAVAILABLE_WAIT)
                if outcome != "streamed" or s.ended:
                    break
                await asyncio.sleep(wait)
    except TimeoutError:
        s.problem = f"the stream (all its connections) did not end within {HEADERS_TIMEOUT + STREAM_TIMEOUT:g} s"
    except AssertionError as exc:
        s.problem = f"SSE framing: {exc}"
    except (aiohttp.ClientError, ValueError) as exc:
        s.problem = f"{type(exc).__name__}: {exc}"
    s.seqs = [seq for _, seq, _ in blocks]
    s.ids = sorted({answer_id for answer_id, _, _ in blocks})
    refused = s.status == 503 and not s.resumes  # storage_unavailable (checked by _read): nothing to resume
    if not s.problem and not refused:
        if not s.ended:
            s.problem = "the last connection ended without a terminal event"
        else:
            try:
                s.events = _events(s, blocks)
            except AssertionError as exc:
                s.problem = f"SSE framing: {exc}"
    return s


async def _read(s: Stream, request: Any, blocks: list[Block], k: int | None, last_try: bool) -> str:
    """One connection: up to `k` events (None: to the end). "streamed"; "refused" (the store cannot
    take the turn, or a problem); "unavailable": 503 `resume_unavailable`, to try again (as a client
    does after Retry-After) unless it was the `last_try`."""
    async with asyncio.timeout(HEADERS_TIMEOUT) as limit, request as resp:
        limit.reschedule(asyncio.get_running_loop().time() + STREAM_TIMEOUT)
        if s.status == 0:
            s.status = resp.status
        answer_id = resp.headers.get("X-Answer-ID")
        if resp.status == 503 and s.thread_id and s.resumes == 0 and (await resp.json())["code"] == "storage_unavailable":
            return "refused"  # documented: the store cannot take the turn now
        if resp.status == 503 and s.resumes and not last_try and (await resp.json())["code"] == "resume_unavailable":
            return "unavailable"
        if resp.status != 200 or resp.content_type != "text/event-stream":
            s.problem = f"{'resume' if s.resumes else 'request'}: HTTP {resp.status}: {(await resp.text())[:200]}"
            return "refused"
        if s.answer_id is None:
            s.answer_id = answer_id
        elif answer_id != s.answer_id:
            s.problem = f"a resume of {s.answer_id} answered with X-Answer-ID {answer_id}"
            return "refused"
        seen = 0
        while not s.ended and (k is None or seen < k):
            raw = await resp.content.readuntil(b"\n\n")
            block = parse_block(raw)
            if block is not None:
                blocks.append(block)
                seen += 1
                s.ended = is_terminal(s, block[2])
        if s.ended:  # the rest of this connection: nothing but the UI stream's [DONE]
            rest = await resp.read()
            assert not rest or rest.endswith(b"\n\n"), "the stream must end after a complete event"
            blocks += [b for piece in rest.split(b"\n\n")[:-1] if (b := parse_block(piece + b"\n\n"))]
        resp.close()  # the network goes away (or the stream has ended)
    return "streamed"


def _events(s: Stream, blocks: list[Block]) -> list[dict[str, Any]]:
    """The typed events the blocks stand for, in the order received, repeats included (so that a
    repeated text shows in the text checks too)."""
    if s.ui:
        return ui_events(s, b"".join(f"data: {data}\n\n".encode() for _, _, data in blocks), whole=True)
    return [json.loads(data) for _, _, data in blocks]


def check_resume(s: Stream) -> list[str]:
    """Events lost or repeated across the connections (the text itself: `check_stream`)."""
    if s.problem or not s.seqs:
        return []
    out = []
    if s.ids != [s.answer_id]:
        out.append(f"events of other answers than {s.answer_id}: {s.ids[:3]}")
    repeated = len(s.seqs) - len(set(s.seqs))
    missing = sorted(set(range(1, max(s.seqs) + 1)) - set(s.seqs))
    if repeated:
        out.append(f"duplicated events: {repeated} event ids seen twice")
    if missing:
        out.append(f"lost events: ids {missing[:10]} never received")
    if not repeated and not missing and s.seqs != sorted(s.seqs):
        out.append("event ids not strictly increasing")
    return out


def tally_resume(s: Stream, attempts: Attempts) -> tuple[Counter[str], list[str]]:
    """What a resuming client did and what it lost or got twice, counted (zeros included, so
    that the report shows them) and, past zero, reported as violations."""
    counts: Counter[str] = Counter({"streams": 1, "resumed streams": int(s.resumes > 0), "resumes": s.resumes,
                                    "resumes from the same position twice": s.same_position,
                                    "ui": int(s.ui), "stored": int(s.thread_id is not None),
                                    "503 resume_unavailable, tried again": s.unavailable})
    texts = [e["text"] for e in s.events if e.get("type") == "content"]
    final = s.events[-1] if s.ended and s.events else {}
    answer = attempts[-1][2].tokens if attempts and final.get("type") == "done" else []
    counts["lost events"] = len(set(range(1, max(s.seqs, default=0) + 1)) - set(s.seqs))
    counts["duplicated events"] = len(s.seqs) - len(set(s.seqs))
    counts["duplicated text"] = len(texts) - len(set(texts))  # every token of an attempt is unique
    counts["lost text"] = len(set(answer) - set(texts))
    where = f"{s.rid} [resume{' ui' if s.ui else ''} {s.thread_id or ''} {s.answer_id} positions={s.positions}]"
    out = check_resume(s)
    out += [f"duplicated text: {counts['duplicated text']} pieces received twice"] if counts["duplicated text"] else []
    out += [f"lost text: {counts['lost text']} tokens of the answer never received"] if counts["lost text"] else []
    return counts, [f"{where}: {v}" for v in out]
