"""Overload is shed, not suffered: past its capacity the service refuses new answers up front.

The measure of load is the event loop's lag: how late the loop runs a callback it was asked to
run at a given time. One task sleeps `SAMPLE_INTERVAL` seconds at a time and measures by how
much each sleep overshoots; the lag is the median of the last few samples, so that one pause (a
collection, a large body) refuses no one. Every token of every open stream waits for the loop just as long,
so the lag is the latency the service adds to each token. Past AI_SHED_LOOP_LAG_MS a new answer
is refused with 503 `overloaded` and `Retry-After`, before its body is read and before any model
is called, while the answers already accepted go on; once the lag is back under half the
threshold, new answers are accepted again. /health and /metrics are never refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import structlog
from aiohttp import web

from service.app_keys import METRICS, OVERLOAD
from service.errors import ApiError
from service.metrics import Metrics

log = structlog.get_logger("ai_stream")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SAMPLE_INTERVAL = 0.05  # seconds between two measurements of the loop's lag
# The lag is the median of the last WINDOW samples: one pause, however long (a collection, a
# large body, start-up), is one sample and refuses nobody; a lag that lasts moves it at once.
WINDOW = 5
# An episode ends when the lag is back under this share of the threshold, so that a lag that
# hovers around the threshold does not accept and refuse by turns.
RECOVERED_AT = 0.5
RETRY_AFTER_SECONDS = 1
OVERLOADED_MESSAGE = "The service is overloaded and takes no new answers for a moment; retry shortly."


class LagSource(Protocol):
    """Anything that knows the event loop's current lag, in milliseconds."""

    @property
    def lag_ms(self) -> float: ...


class LoopLag:
    """The event loop's lag: `run()` (one task for the whole process) sleeps SAMPLE_INTERVAL
    seconds at a time, takes by how much each sleep overshot as a sample, and calls `on_sample`
    after each; `lag_ms` is the median of the last WINDOW samples."""

    def __init__(self) -> None:
        self.lag_ms = 0.0
        self.samples = 0
        self.on_sample: Callable[[], None] | None = None
        self._window: deque[float] = deque(maxlen=WINDOW)

    def observe(self, sample_ms: float) -> None:
        window = self._window
        window.append(sample_ms)
        self.lag_ms = sorted(window)[len(window) // 2]
        self.samples += 1
        if self.on_sample is not None:
            self.on_sample()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + SAMPLE_INTERVAL
            await asyncio.sleep(SAMPLE_INTERVAL)
            self.observe(max(loop.time() - expected, 0.0) * 1000)


class Overload:
    """The shedding rule and its episodes: overloaded from the moment the lag passes the
    threshold until it is back under RECOVERED_AT of it. An episode is logged twice, when it
    starts (a warning) and when it ends (with how many answers it refused), never per request."""

    def __init__(self, threshold_ms: float, lag: LagSource, metrics: Metrics) -> None:
        self.threshold_ms = threshold_ms
        self.lag = lag
        self._metrics = metrics
        self._since: float | None = None  # when the current episode started (monotonic)
        self._shed = 0  # answers refused in the current episode

    @property
    def lag_ms(self) -> float:
        return self.lag.lag_ms

    @property
    def overloaded(self) -> bool:
        """Whether new answers are refused now (always False with the threshold at 0)."""
        if not self.threshold_ms:
            return False
        lag = self.lag.lag_ms
        if self._since is None and lag > self.threshold_ms:
            self._since, self._shed = time.monotonic(), 0
            log.warning("overloaded", loop_lag_ms=round(lag, 1), threshold_ms=self.threshold_ms)
        elif self._since is not None and lag < self.threshold_ms * RECOVERED_AT:
            log.info(
                "overload_ended", loop_lag_ms=round(lag, 1), refused=self._shed,
                seconds=round(time.monotonic() - self._since, 1),
            )
            self._since = None
        return self._since is not None

    def check(self) -> None:
        """Refuse a new answer while overloaded: 503 `overloaded` with Retry-After."""
        if self.overloaded:
            self._shed += 1
            self._metrics.shed.inc()
            raise ApiError(503, "overloaded", OVERLOADED_MESSAGE, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def continues_answer(handler: Handler) -> Handler:
    """Marks a route (also marked `opens_answer`) that continues an answer already accepted, such
    as a resume after a dropped connection: it is never shed, as the answer's stream would not be."""
    handler.continues_answer = True  # type: ignore[attr-defined]
    return handler


def overload_middleware() -> Callable[..., Awaitable[web.StreamResponse]]:
    """Sheds new answers (the routes marked `opens_answer`, but for `continues_answer`) while the
    service is overloaded: before their key is checked, their body read or any model called.
    Every other route passes. A plain function returning the handler's awaitable: no frame of its
    own stays alive for as long as a stream does."""

    @web.middleware
    def shed(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Awaitable[web.StreamResponse]:
        route = request.match_info.handler
        if getattr(route, "opens_answer", False) and not getattr(route, "continues_answer", False):
            request.app[OVERLOAD].check()
        return handler(request)

    return shed


async def loop_lag_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: measure the loop's lag in one background task while the app runs (unless the
    app was given a lag source of its own, as tests do)."""
    overload = app[OVERLOAD]
    monitor = overload.lag
    if not isinstance(monitor, LoopLag):
        yield
        return
    gauge = app[METRICS].loop_lag

    def sampled() -> None:
        gauge.set(monitor.lag_ms / 1000)
        _ = overload.overloaded  # episodes start and end with the samples, whether requests come or not

    monitor.on_sample = sampled
    task = asyncio.create_task(monitor.run(), name="loop-lag")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
