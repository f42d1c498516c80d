"""What the paced measurements compute, kept free of I/O so that it can be tested on its own:
reading an answer's events chunk by chunk, the added latency of stamped tokens, and the search
for the most concurrent streams a server carries.

**Added latency of a token**: the time at which the load generator read the token, minus the
time at which the fake upstream wrote it (the token's text is that time, `bench.upstream`'s
`:stamped` scenarios; both are `time.monotonic()`, one clock for every process of a Linux
machine). It is what the server under test (and the loopback, and the load generator's own
reading) adds to each token, whatever the upstream's pacing did; it does not count the time to
the first token, which the TTFT figures measure. The same number for the service and the
baseline: both re-emit the stamp as the text of a `content` event.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

CONTENT_KEY = b'"type":"content"'
DONE_KEY = b'"type":"done"'
ERROR_KEY = b'"type":"error"'
STAMP = re.compile(rb'"type":"content","text":"(\d+\.\d+)"')
ERROR_CODE = re.compile(rb'"type":"error"[^\n]*?"code":"([^"]*)"')


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class EventReader:
    """Follows one answer's event stream, chunk by chunk as the client reads them: counts the
    `content` events, notes the first one's read time and the terminal event, and appends the
    added latency (ms) of each stamped token read within [`window_start`, `window_end`) to
    `latencies`. Works on the bytes of whole events (an `id:` line before `data:` is fine)."""

    __slots__ = (
        "_tail", "latencies", "window_start", "window_end", "contents", "reads", "first_content_at",
        "first_stamp", "last_stamp", "stamps", "terminal", "error_code",
    )  # fmt: skip

    def __init__(
        self, latencies: list[float] | None = None, window_start: float = -math.inf, window_end: float = math.inf
    ) -> None:
        self._tail = b""
        self.latencies, self.window_start, self.window_end = latencies, window_start, window_end
        self.contents = 0  # content events seen
        self.reads = 0  # reads that completed at least one content event
        self.first_content_at: float | None = None
        self.first_stamp = self.last_stamp = math.nan
        self.stamps = 0
        self.terminal: str | None = None  # "done" or "error", once seen
        self.error_code: str | None = None

    def feed(self, chunk: bytes, read_at: float) -> None:
        data = self._tail + chunk if self._tail else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._tail = data
            return
        complete, self._tail = data[:end], data[end + 2 :]
        count = complete.count(CONTENT_KEY)
        if count:
            if not self.contents:
                self.first_content_at = read_at
            self.contents += count
            self.reads += 1
            self._stamps(complete, read_at)
        if self.terminal is None:
            if DONE_KEY in complete:
                self.terminal = "done"
            elif ERROR_KEY in complete:
                self.terminal = "error"
                match = ERROR_CODE.search(complete)
                self.error_code = match.group(1).decode() if match else "unknown"

    def _stamps(self, complete: bytes, read_at: float) -> None:
        stamps = [float(m) for m in STAMP.findall(complete)]
        if not stamps:
            return
        if not self.stamps:
            self.first_stamp = stamps[0]
        self.last_stamp = stamps[-1]
        self.stamps += len(stamps)
        if self.latencies is not None and self.window_start <= read_at < self.window_end:
            self.latencies.extend([(read_at - stamp) * 1000 for stamp in stamps])

    def upstream_late_ms(self, delay: float) -> float:
        """How far the upstream's last token was behind its schedule (`delay` s apart from the
        first one): above zero, the upstream could not keep the pace and offered less load."""
        if self.stamps < 2:
            return math.nan
        return (self.last_stamp - self.first_stamp - (self.stamps - 1) * delay) * 1000


def carries(latency_p99_ms: float, limit_ms: float, refused: int, failed: int) -> bool:
    """A level is carried when every stream was accepted and completed (or was still going when
    the step ended) and the p99 added latency is within `limit_ms`."""
    return not math.isnan(latency_p99_ms) and latency_p99_ms <= limit_ms and refused == 0 and failed == 0


@dataclass
class CapacitySearch:
    """The most concurrent streams a server carries, found with a bounded number of steps:
    double from `start` while levels pass (up to `limit`), halve while they fail (down to
    `floor`), then bisect between the highest passing and the lowest failing level until they
    are within `resolution` of each other (relative), or `max_steps` were taken.

    `capacity` is the highest level that passed (0 when none did): a lower bound; `failed_at`
    the lowest that failed (None when none did): the upper bound."""

    start: int
    limit: int
    max_steps: int = 10
    resolution: float = 0.1
    floor: int = 5
    capacity: int = 0
    failed_at: int | None = None
    steps: list[tuple[int, bool]] = field(default_factory=list)

    def next_level(self) -> int | None:
        """The next level to try, or None when the search is over."""
        return None if len(self.steps) >= self.max_steps else self._next()

    def _next(self) -> int | None:
        if not self.steps:
            return max(self.floor, min(self.start, self.limit))
        if self.failed_at is None:
            return None if self.capacity >= self.limit else min(self.capacity * 2, self.limit)
        if not self.capacity:
            level = self.failed_at // 2
            return level if level >= self.floor else None
        if self.failed_at - self.capacity <= max(1.0, self.resolution * self.capacity):
            return None
        return (self.capacity + self.failed_at) // 2

    def record(self, level: int, passed: bool) -> None:
        self.steps.append((level, passed))
        if passed:
            self.capacity = max(self.capacity, level)
        else:
            self.failed_at = level if self.failed_at is None else min(self.failed_at, level)

    @property
    def settled(self) -> bool:
        """True when the search ended on its own terms (not for want of steps)."""
        return self._next() is None
