"""What each soak phase reports: its requests, violations, rows left `pending` and 5xx answers that
no documented code explains. A phase passes only with all three at zero."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class PhaseReport:
    name: str
    requests: int = 0  # streams and plain requests the phase sent
    violations: list[str] = field(default_factory=list)
    pending: int = 0  # rows still `pending` when the phase's bounded wait ended
    undocumented_5xx: int = 0  # a 5xx other than 503 `storage_unavailable` (with Retry-After)
    counts: Counter[str] = field(default_factory=Counter)  # what happened, for the summary

    @property
    def ok(self) -> bool:
        return not (self.violations or self.pending or self.undocumented_5xx)

    def line(self) -> str:
        head = (f"{self.name}: {self.requests} requests, {len(self.violations)} violations, "
                f"{self.pending} pending rows, {self.undocumented_5xx} undocumented 5xx")
        detail = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return head + (f"\n  {detail}" if detail else "") + "".join(f"\n  ! {v}" for v in self.violations[:10])


def summary(reports: list[PhaseReport]) -> str:
    return "\n".join(["phases:"] + [report.line() for report in reports])
