"""What happened to one answer, as every part that reports on it reads it: the wire formats
(its terminal event or JSON body), the log line, metrics and storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from providers.base import AttemptFailed, Finish, ProviderError

# HTTP status for a failed answer that is not streamed (a stream has sent 200 already).
STATUS_FOR_CODE = {
    "rate_limited": 503,
    "upstream_unavailable": 503,
    "no_models_available": 503,
    "timeout": 504,
    "invalid_request": 502,
    "shutting_down": 503,
    "internal_error": 500,
}

TIMEOUT_MESSAGE = "The answer took longer than this service allows."
SHUTDOWN_MESSAGE = "The service is restarting; please send the request again."
INTERNAL_MESSAGE = "Something went wrong on our side."
ENDED_EARLY_MESSAGE = "The model's answer ended unexpectedly."


def internal_error() -> ProviderError:
    """A failure of this service itself (a bug, an encoding or storage fault): the client hears
    only this sentence; the details go to the error log."""
    return ProviderError("internal_error", INTERNAL_MESSAGE)


@dataclass(slots=True)
class Outcome:
    """What happened to one answer so far; complete once the answer has ended."""

    text: list[str] = field(default_factory=list)
    finish: Finish | None = None
    error: ProviderError | None = None
    attempts: list[AttemptFailed] = field(default_factory=list)  # the failed ones, in order
    client_gone: bool = False
    first_token_ms: float | None = None

    @property
    def status(self) -> str:
        """The stored status of the answer: complete, interrupted (the client left) or error."""
        if self.finish is not None:
            return "complete"
        return "interrupted" if self.client_gone else "error"

    def http_status(self) -> int:
        """For an answer that is not streamed."""
        if self.finish is not None:
            return 200
        return STATUS_FOR_CODE.get(self.error.code, 502) if self.error is not None else 502

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "outcome": "client_gone" if self.client_gone else ("done" if self.finish else "error"),
            "attempts": [f"{a.model}:{a.code}" for a in self.attempts],
            "ttft_ms": self.first_token_ms,
        }
        if self.finish is not None:
            fields.update(model=self.finish.model, provider=self.finish.provider, output_tokens=self.finish.usage.output_tokens)
        if self.error is not None:
            fields["error_code"] = self.error.code
            if self.error.provider:  # the `endpoint/model` whose failure the client was told of
                fields["error_model"] = f"{self.error.provider}/{self.error.model}"
        return fields


@dataclass(frozen=True, slots=True)
class Receipt:
    """What storing an answer gave: its message id, and whether the write reached the store."""

    message_id: str
    persisted: bool
