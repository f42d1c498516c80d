"""Circuit breaking: a model that keeps failing is left alone for a while, then probed once.

Only the model's own failures move a circuit. With several replicas a circuit can also be told
what another replica's circuit of the same model did (`open_for`, `close`); `on_change` hears
of this circuit's own openings and closings, to tell the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]
# Told "open" (with the cool-down in seconds) when the circuit opens, "closed" when it closes.
Listener = Callable[[Literal["open", "closed"], float], None]


class Circuit:
    """Consecutive failures of one model. After `failures_to_open` in a row the circuit opens
    for `cooldown` seconds; then one request at a time may probe it (half open) until one
    succeeds (closed again) or fails (open again)."""

    __slots__ = ("failures_to_open", "cooldown", "clock", "failures", "open_until", "probing", "on_change")

    def __init__(self, failures_to_open: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.open_until = 0.0
        self.probing = False
        self.on_change: Listener | None = None

    @property
    def state(self) -> State:
        if self.failures < self.failures_to_open:
            return "closed"
        return "open" if self.clock() < self.open_until else "half_open"

    def try_acquire(self) -> bool:
        """May a request use this model now? Taking the half-open probe marks it taken."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def succeeded(self) -> None:
        was_open = self.failures >= self.failures_to_open
        self.failures = 0
        self.probing = False
        if was_open and self.on_change is not None:
            self.on_change("closed", 0.0)

    def failed(self) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.failures_to_open:
            self.open_until = self.clock() + self.cooldown
            if self.on_change is not None:
                self.on_change("open", self.cooldown)

    def open_for(self, seconds: float) -> None:
        """Another replica's circuit of this model opened: skip it for `seconds` here too."""
        self.failures = max(self.failures, self.failures_to_open)
        self.open_until = max(self.open_until, self.clock() + seconds)

    def close(self) -> None:
        """Another replica's probe of this model succeeded: use it here again."""
        self.failures = 0
        self.open_until = 0.0

    def released(self) -> None:
        """The request ended without a verdict (the client left): let another probe."""
        self.probing = False

    def snapshot(self) -> dict[str, object]:
        state = self.state
        return {
            "state": state,
            "consecutive_failures": self.failures,
            "retry_in_seconds": round(max(self.open_until - self.clock(), 0.0), 1) if state == "open" else 0.0,
        }
