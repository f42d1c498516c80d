"""The load generator: closed-loop streaming clients and held-open idle streams (asyncio + aiohttp).

Kept cheap on purpose: each stream reads its first event with `readuntil`, then the rest of the
body in one read, and counts the content events in it. Every loop is bounded in requests and time.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

CONTENT = b'data: {"type":"content"'
DONE = b'data: {"type":"done"'
JSON_HEADERS = {"Content-Type": "application/json"}


def client_session(total_timeout: float | None = 120.0) -> aiohttp.ClientSession:
    """A session with no connection cap (limit=0), so concurrency is what the caller asks for."""
    connector = aiohttp.TCPConnector(limit=0)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=total_timeout, sock_connect=10)
    )


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class LoadResult:
    """What a batch of streams produced, as the clients saw it."""

    concurrency: int
    requested: int
    completed: int = 0  # streams that ended with a `done` event
    errors: int = 0
    tokens: int = 0  # content events received
    ttft_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    timed_out: bool = False  # the phase's time limit stopped it before `requested`
    first_error: str | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else math.nan

    def summary(self) -> dict[str, float | int | bool | str | None]:
        return {
            "concurrency": self.concurrency,
            "requested": self.requested,
            "completed": self.completed,
            "errors": self.errors,
            "tokens": self.tokens,
            "wall_s": round(self.wall_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 1),
            "ttft_p50_ms": round(percentile(self.ttft_ms, 50), 3),
            "ttft_p99_ms": round(percentile(self.ttft_ms, 99), 3),
            "timed_out": self.timed_out,
            "first_error": self.first_error,
        }


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes, result: LoadResult) -> None:
    """Send one request, time the first content event, count the content events of the whole answer."""
    started = time.perf_counter()
    async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
        first = await resp.content.readuntil(b"\n\n")
        elapsed_ms = (time.perf_counter() - started) * 1000
        rest = await resp.read()
    if not first.startswith(CONTENT) and not (first.startswith(b"id: ") and b"\n" + CONTENT in first):
        raise RuntimeError(f"first event is not content: {first[:200]!r}")  # (after its `id:` line, if any)
    result.ttft_ms.append(elapsed_ms)
    result.tokens += 1 + rest.count(CONTENT)
    if DONE not in rest[-1024:]:
        raise RuntimeError(f"stream did not end with done: {rest[-200:]!r}")
    result.completed += 1


async def run_load(
    session: aiohttp.ClientSession, url: str, payload: dict, *, concurrency: int, requests: int, time_limit: float
) -> LoadResult:
    """`concurrency` clients send `requests` streams in all, back to back, for at most `time_limit` s."""
    body = json.dumps(payload).encode()
    result = LoadResult(concurrency, requests)
    remaining = requests
    deadline = time.monotonic() + time_limit

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            if time.monotonic() >= deadline:
                result.timed_out = True
                return
            remaining -= 1
            try:
                await one_stream(session, url, body, result)
            except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as exc:
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"

    started = time.perf_counter()
    # The hard stop is a backstop; clients normally stop at the deadline after their current stream.
    async with asyncio.timeout(time_limit + 60):
        await asyncio.gather(*(client() for _ in range(min(concurrency, requests))))
    result.wall_s = time.perf_counter() - started
    return result


@dataclass
class IdleStreams:
    requested: int
    opened: int = 0
    errors: int = 0
    first_error: str | None = None


@asynccontextmanager
async def idle_streams(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict,
    count: int,
    *,
    open_at_once: int = 100,
    open_timeout: float = 60,
) -> AsyncIterator[IdleStreams]:
    """Open `count` streams that stay silent, up to `open_at_once` connecting at a time; yield once
    all have their response headers (or `open_timeout` passed); close them all on exit."""
    body = json.dumps(payload).encode()
    state = IdleStreams(count)
    release = asyncio.Event()
    settled = asyncio.Event()
    gate = asyncio.Semaphore(open_at_once)
    pending = count

    def one_done(failed: Exception | None = None) -> None:
        nonlocal pending
        pending -= 1
        if failed is not None:
            state.errors += 1
            state.first_error = state.first_error or f"{type(failed).__name__}: {failed}"
        if pending == 0:
            settled.set()

    async def hold() -> None:
        try:
            async with gate:
                resp = await session.post(url, data=body, headers=JSON_HEADERS)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return one_done(exc)
        try:
            if resp.status != 200:
                return one_done(RuntimeError(f"HTTP {resp.status}"))
            state.opened += 1
            one_done()
            await release.wait()
        finally:
            resp.close()  # drop the connection: the server sees the client go away

    tasks = [asyncio.create_task(hold()) for _ in range(count)]
    try:
        try:
            await asyncio.wait_for(settled.wait(), open_timeout)
        except TimeoutError:
            pass
        yield state
    finally:
        release.set()
        for task in tasks:
            if not task.done():
                task.cancel()  # still connecting: give up
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll `check` until it is true or `timeout` seconds pass; return its last answer."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True
