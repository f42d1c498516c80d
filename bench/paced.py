"""Paced clients: streams read token by token as a browser reads them, with the outcome of each.

`run_paced` keeps `clients` streams going, each client starting its next request when the last
one ended, for a bounded time; a client refused with `Retry-After` waits that long (within the
run) before it asks again, as a well-behaved client does. Every request ends up in one bin of a
`Tally`: completed, refused up front, failed after it was accepted (by error code), cut (no
terminal event), connection error, still open when the run gave up on it, or stopped by the end
of a run that does not wait for its streams. `synchronized_ttft` starts streams all at the same
moment, round after round, as a burst of users does. `loop_lag` watches the load generator's own
event loop, so that a figure the load generator could not keep up with is flagged.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.load import LoadResult, one_stream
from bench.timing import EventReader, percentile
from bench.wire import Connection, post_request

SHED_STATUSES = (429, 503)


@dataclass
class Tally:
    """Every request of one paced run, by outcome, and what the accepted ones measured."""

    clients: int
    requests: int = 0
    completed: int = 0
    refused: int = 0  # 429 / 503 with Retry-After, before any token: shed as intended
    refused_codes: Counter[str] = field(default_factory=Counter)  # those by the body's `code`
    refused_other: Counter[str] = field(default_factory=Counter)  # any other refusal, by status
    failed: Counter[str] = field(default_factory=Counter)  # accepted, then an `error` event: by code
    cut: int = 0  # accepted, then the body ended without a terminal event
    connection_errors: int = 0
    unfinished: int = 0  # still open when the run stopped waiting for it
    stopped: int = 0  # in flight at the end of a run that does not wait (not a failure)
    tokens: int = 0
    reads: int = 0  # reads that brought content events: tokens / reads is how batched they came
    latencies_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    upstream_late_ms: list[float] = field(default_factory=list)
    first_error: str | None = None
    wall_s: float = 0.0
    window_s: float = 0.0  # the measured part of the run (after the ramp)

    def note_error(self, text: str) -> None:
        self.first_error = self.first_error or text[:300]

    @property
    def failures(self) -> int:
        """Requests that went wrong in a way a client notices (shedding with Retry-After excepted)."""
        return sum(self.refused_other.values()) + sum(self.failed.values()) + self.cut + self.connection_errors

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "clients": self.clients,
            "requests": self.requests,
            "completed": self.completed,
            "refused_retry_after": self.refused,
            "refused_by_code": dict(self.refused_codes),
            "refused_other": dict(self.refused_other),
            "failed_by_code": dict(self.failed),
            "cut": self.cut,
            "connection_errors": self.connection_errors,
            "unfinished": self.unfinished,
            "stopped_at_end": self.stopped,
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens / self.wall_s, 1) if self.wall_s else math.nan,
            "tokens_per_read": round(self.tokens / self.reads, 2) if self.reads else math.nan,
            "window_tokens_per_s": round(len(lat) / self.window_s, 1) if self.window_s else math.nan,
            "latency_samples": len(lat),
            "added_latency_p50_ms": round(percentile(lat, 50), 2),
            "added_latency_p99_ms": round(percentile(lat, 99), 2),
            "added_latency_max_ms": round(max(lat), 2) if lat else math.nan,
            "ttft_p50_ms": round(percentile(self.ttft_ms, 50), 2),
            "ttft_p99_ms": round(percentile(self.ttft_ms, 99), 2),
            "upstream_late_p99_ms": round(percentile(self.upstream_late_ms, 99), 2),
            "first_error": self.first_error,
        }


async def paced_stream(conn: Connection, request: bytes, tally: Tally, reader: EventReader, delay: float) -> float:
    """One request on `conn`, its body read as it comes; returns the seconds to wait before the
    next one (the `Retry-After` of a refusal, else 0)."""
    tally.requests += 1
    started = time.monotonic()
    resp = await conn.request(request, reader)
    if resp.status != 200:
        retry_after = resp.headers.get("retry-after")
        if resp.status in SHED_STATUSES and retry_after is not None:
            tally.refused += 1
            tally.refused_codes[_code(resp.body)] += 1
            try:
                return max(float(retry_after), 0.0)
            except ValueError:
                return 1.0
        tally.refused_other[f"{resp.status}{'' if retry_after else ' without Retry-After'}"] += 1
        tally.note_error(f"HTTP {resp.status}: {resp.body[:200]!r}")
        return 1.0
    tally.tokens += reader.contents
    tally.reads += reader.reads
    if reader.first_content_at is not None:
        tally.ttft_ms.append((reader.first_content_at - started) * 1000)
    if reader.terminal == "done":
        tally.completed += 1
        if reader.stamps > 1:
            tally.upstream_late_ms.append(reader.upstream_late_ms(delay))
    elif reader.terminal == "error":
        tally.failed[reader.error_code or "unknown"] += 1
        tally.note_error(f"error event {reader.error_code} after {reader.contents} tokens")
    else:
        tally.cut += 1
        tally.note_error(f"the body ended without a terminal event after {reader.contents} tokens")
    return 0.0


def _code(body: bytes) -> str:
    """The `code` of a JSON error body (the service's shape), else the start of the body."""
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        code = None
    return str(code) if code else body[:40].decode(errors="replace") or "(empty)"


async def run_paced(
    url: str,
    payload: dict[str, Any],
    *,
    clients: int,
    ramp: float,
    duration: float,
    delay: float = 0.0,
    wait_for_streams: bool = True,
    stream_timeout: float = 120.0,
) -> Tally:
    """`clients` closed-loop clients: client i starts `ramp * i / clients` s in, each sends
    requests (at least one) until `ramp + duration` s have passed. Added latency is recorded from
    the end of the ramp on. With `wait_for_streams`, streams open at the end are read to their end
    (each at most `stream_timeout` s), and measured to it; without, they are stopped there (the
    connection closed), and so is the measurement.
    Each client keeps one keep-alive connection (`bench.wire`), and opens another when it closes."""
    host, port, request = post_request(url, json.dumps(payload).encode())
    tally = Tally(clients)
    started = time.monotonic()
    window_start, end = started + ramp, started + ramp + duration
    # Streams read to their end are measured to their end; stopped ones only until the stop.
    window_end = math.inf if wait_for_streams else end

    async def client(i: int) -> None:
        await asyncio.sleep(ramp * i / clients)
        conn: Connection | None = None
        first = True
        try:
            while first or time.monotonic() < end:  # every client sends at least one request
                first = False
                reader = EventReader(tally.latencies_ms, window_start, window_end)
                try:
                    async with asyncio.timeout(stream_timeout):
                        if conn is None or conn.closed:
                            conn = await Connection.open(host, port)
                        pause = await paced_stream(conn, request, tally, reader, delay)
                except asyncio.CancelledError:  # stopped at the end of the run: its tokens still count
                    tally.tokens += reader.contents
                    tally.reads += reader.reads
                    raise
                except TimeoutError:
                    tally.tokens += reader.contents
                    tally.reads += reader.reads
                    tally.unfinished += 1
                    tally.note_error(f"still open after {stream_timeout:.0f} s ({reader.contents} tokens)")
                    return
                except (OSError, ValueError) as exc:  # refused, reset, or not HTTP
                    tally.connection_errors += 1
                    tally.note_error(f"{type(exc).__name__}: {exc}")
                    pause = 0.5
                if pause:
                    await asyncio.sleep(min(pause, max(end - time.monotonic(), 0)))
        finally:
            if conn is not None:
                conn.close()

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    try:
        if wait_for_streams:
            await asyncio.wait(tasks, timeout=ramp + duration + stream_timeout + 10)
        else:
            await asyncio.wait(tasks, timeout=max(end - time.monotonic(), 0))
    finally:
        stopped = [task for task in tasks if not task.done()]
        for task in stopped:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if wait_for_streams:
            tally.unfinished += len(stopped)
        else:
            tally.stopped += len(stopped)
    tally.wall_s = time.monotonic() - started
    tally.window_s = max(min(time.monotonic(), window_end) - window_start, 0.0)
    return tally


async def synchronized_ttft(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any], *, streams: int, rounds: int, time_limit: float
) -> LoadResult:
    """`rounds` rounds of `streams` requests sent at the same moment, each round after the last
    one ended; one unrecorded round first, so that every connection is open. TTFT of each."""
    body = json.dumps(payload).encode()
    result = LoadResult(streams, streams * rounds)
    warm = LoadResult(streams, streams)
    deadline = time.monotonic() + time_limit
    started = time.perf_counter()
    for round_ in range(rounds + 1):
        if time.monotonic() >= deadline:
            result.timed_out = True
            break
        target = warm if round_ == 0 else result
        go = asyncio.Event()

        async def one() -> None:
            await go.wait()
            try:
                await one_stream(session, url, body, target)
            except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as exc:
                target.errors += 1
                target.first_error = target.first_error or f"{type(exc).__name__}: {exc}"

        # The load generator's own collector does not run during a round: a pause of it would
        # be taken for the server's in the TTFT of that whole round.
        gc.collect()
        gc.disable()
        try:
            tasks = [asyncio.create_task(one()) for _ in range(streams)]
            await asyncio.sleep(0.05)  # every task waits on the event
            go.set()
            await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 1))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            gc.enable()
    result.wall_s = time.perf_counter() - started
    return result


@dataclass
class LoopLag:
    """How late the load generator's own timers fired (ms): its event loop's lag."""

    samples: list[float] = field(default_factory=list)

    @property
    def p99_ms(self) -> float:
        return round(percentile(self.samples, 99), 2)


@asynccontextmanager
async def loop_lag(interval: float = 0.05) -> AsyncIterator[LoopLag]:
    """Measure this process's event-loop lag while the block runs."""
    lag = LoopLag()

    async def watch() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval)
            lag.samples.append((time.monotonic() - before - interval) * 1000)

    task = asyncio.create_task(watch())
    try:
        yield lag
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
