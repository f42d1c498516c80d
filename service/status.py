"""Live status for the page at `/`: `GET /ai/status`, and the recent activity it charts.

Everything here is what the process already knows. `RecentActivity` keeps a few minutes of
per-interval totals in a ring buffer, updated once when an answer ends, never per token.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from service.keys import ACTIVITY, CHAIN, IN_FLIGHT, REGISTRY, STORAGE
from service.relay import Outcome

INTERVAL_SECONDS = 10.0
INTERVALS = 30  # five minutes


@dataclass(slots=True)
class _Totals:
    index: int  # which interval: floor(time / interval length)
    answers: int = 0
    errors: int = 0  # answers that ended in an error event (or error status)
    fallbacks: int = 0  # failed attempts handed over to another model (or retried)
    ttft_total_ms: float = 0.0
    ttft_count: int = 0


@dataclass(frozen=True, slots=True)
class IntervalStats:
    start: float  # Unix time at which the interval begins
    answers: int
    errors: int
    fallbacks: int
    ttft_ms: float | None  # mean time to first token of the answers that had text


class RecentActivity:
    """Totals per `interval` seconds for the last `intervals` intervals."""

    def __init__(
        self,
        interval: float = INTERVAL_SECONDS,
        intervals: int = INTERVALS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self.intervals = intervals
        self.clock = clock
        self._totals: deque[_Totals] = deque(maxlen=intervals)

    def _current(self) -> _Totals:
        index = int(self.clock() // self.interval)
        if not self._totals or self._totals[-1].index != index:
            self._totals.append(_Totals(index))
        return self._totals[-1]

    def record(self, outcome: Outcome) -> None:
        """One answer ended, however it ended."""
        totals = self._current()
        totals.answers += 1
        totals.fallbacks += len(outcome.attempts)
        if outcome.finish is None and not outcome.client_gone:
            totals.errors += 1
        if outcome.first_token_ms is not None:
            totals.ttft_total_ms += outcome.first_token_ms
            totals.ttft_count += 1

    def snapshot(self) -> list[IntervalStats]:
        """Every interval of the window, oldest first, the current one last (idle ones as zeros)."""
        now_index = int(self.clock() // self.interval)
        kept = {totals.index: totals for totals in self._totals}
        stats = []
        for index in range(now_index - self.intervals + 1, now_index + 1):
            totals = kept.get(index) or _Totals(index)
            stats.append(
                IntervalStats(
                    start=index * self.interval,
                    answers=totals.answers,
                    errors=totals.errors,
                    fallbacks=totals.fallbacks,
                    ttft_ms=round(totals.ttft_total_ms / totals.ttft_count, 1) if totals.ttft_count else None,
                )
            )
        return stats


async def status(request: web.Request) -> web.Response:
    app = request.app
    circuits = app[CHAIN].circuits
    storage = app[STORAGE]
    activity = app[ACTIVITY]
    return web.json_response(
        {
            "models": [
                {
                    "name": info.name,
                    "provider": info.provider,
                    "model": info.model,
                    "has_credentials": info.has_credentials,
                    "circuit": circuits[info.name].snapshot() if info.name in circuits else None,
                }
                for info in app[REGISTRY].info
            ],
            "storage": {"backend": storage.store.backend, "ok": storage.ok},
            "open_streams": len(app[IN_FLIGHT]),
            "recent": {
                "interval_seconds": activity.interval,
                "intervals": [_interval_json(stats) for stats in activity.snapshot()],
            },
        }
    )


def _interval_json(stats: IntervalStats) -> dict[str, Any]:
    return {
        "start": stats.start,
        "answers": stats.answers,
        "errors": stats.errors,
        "fallbacks": stats.fallbacks,
        "ttft_ms": stats.ttft_ms,
    }


def add_status_routes(app: web.Application) -> None:
    app.router.add_get("/ai/status", status)
