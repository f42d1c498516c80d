"""Live status for the page at `/`: `GET /ai/status`, and the recent activity it charts.

Everything here is what the process already knows. `RecentActivity` keeps a few minutes of
per-interval totals in a ring buffer, updated once when an answer ends, never per token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from service.app_keys import ACTIVITY, CHAIN, IN_FLIGHT, REGISTRY, STORAGE
from service.outcome import Outcome

INTERVAL_SECONDS = 10.0
INTERVALS = 30  # five minutes


@dataclass(frozen=True, slots=True)
class IntervalStats:
    start: float  # Unix time at which the interval begins
    answers: int
    errors: int  # answers that ended in an error (not counting clients that left)
    fallbacks: int  # failed attempts handed over to another model (or retried)
    ttft_ms: float | None  # mean time to first token of the answers that had text


class RecentActivity:
    """Totals per `interval` seconds for the last `intervals` intervals, in fixed slots that are
    reused as time moves on (nothing is allocated per answer or per interval)."""

    def __init__(
        self,
        interval: float = INTERVAL_SECONDS,
        intervals: int = INTERVALS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self.intervals = intervals
        self.clock = clock
        # Slot i holds interval number `_number[i]` (floor(time / interval)), -1 when unused.
        self._number = [-1] * intervals
        self._answers = [0] * intervals
        self._errors = [0] * intervals
        self._fallbacks = [0] * intervals
        self._ttft_total = [0.0] * intervals
        self._ttft_count = [0] * intervals

    def _slot(self, number: int) -> int:
        slot = number % self.intervals
        if self._number[slot] != number:  # an interval that has left the window: start it afresh
            self._number[slot] = number
            self._answers[slot] = self._errors[slot] = self._fallbacks[slot] = self._ttft_count[slot] = 0
            self._ttft_total[slot] = 0.0
        return slot

    def record(self, outcome: Outcome) -> None:
        """One answer ended, however it ended."""
        slot = self._slot(int(self.clock() // self.interval))
        self._answers[slot] += 1
        self._fallbacks[slot] += len(outcome.attempts)
        if outcome.finish is None and not outcome.client_gone:
            self._errors[slot] += 1
        if outcome.first_token_ms is not None:
            self._ttft_total[slot] += outcome.first_token_ms
            self._ttft_count[slot] += 1

    def snapshot(self) -> list[IntervalStats]:
        """Every interval of the window, oldest first, the current one last (idle ones as zeros)."""
        now = int(self.clock() // self.interval)
        stats = []
        for number in range(now - self.intervals + 1, now + 1):
            slot = number % self.intervals
            if self._number[slot] != number:
                stats.append(IntervalStats(number * self.interval, 0, 0, 0, None))
                continue
            count = self._ttft_count[slot]
            stats.append(
                IntervalStats(
                    start=number * self.interval,
                    answers=self._answers[slot],
                    errors=self._errors[slot],
                    fallbacks=self._fallbacks[slot],
                    ttft_ms=round(self._ttft_total[slot] / count, 1) if count else None,
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
