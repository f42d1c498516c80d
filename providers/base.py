"""The provider interface: one method that streams typed events, and one error type.

Every vendor adapter and the fallback chain implement `Provider`. Handlers only see the
events and `ProviderError` defined here, never an SDK type.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """What a provider needs to answer: already validated and with the system prompt built."""

    messages: tuple[Message, ...]
    max_tokens: int
    system: str | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()  # sequences that end the answer where they appear
    # What changes from one request to the next (the date and time): sent after the stable
    # prefix (system prompt, earlier messages), within the last user message, so that the
    # prefix stays byte-identical from turn to turn and a prompt cache can hold it.
    context: str | None = None
    # Mark the stable prefix for the model's prompt cache with this lifetime; None: no marker.
    cache: Literal["5m", "1h"] | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    # input_tokens: every prompt token, read from or written to a prompt cache or not (as
    # OpenAI's prompt_tokens); the two cache figures are parts of it.
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class Finish:
    model: str
    provider: str
    stop_reason: str | None
    usage: Usage = field(default_factory=Usage)
    type: Literal["finish"] = "finish"


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """The chain gave up on one model and moves to the next (or retries it after `retry-after`)."""

    model: str
    provider: str
    code: str
    status: int | None
    type: Literal["attempt_failed"] = "attempt_failed"


@dataclass(frozen=True, slots=True)
class Restarted:
    """The text streamed so far is void: `model` failed after it, and the next model answers
    from the start (only from a chain that restarts, see `FallbackChain.restarting`)."""

    model: str
    type: Literal["restarted"] = "restarted"


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    """A model of the chain sent its first event: it is the one answering (`model` is its
    `provider/model` name). Yielded once per answer, before that first event."""

    model: str
    provider: str
    type: Literal["attempt_started"] = "attempt_started"


StreamEvent = TextDelta | Finish | AttemptFailed | AttemptStarted | Restarted

# Machine codes a ProviderError carries; they reach clients as the `code` of an `error` event.
ErrorCode = Literal[
    "rate_limited",
    "upstream_unavailable",
    "upstream_error",
    "timeout",
    "invalid_request",
    "authentication_failed",
    "model_not_found",
    "no_models_available",
    "shutting_down",
]


class ProviderError(Exception):
    """A failure of one model (or of the whole chain), with what the caller needs to decide.

    `message` is safe to show a person: it never holds upstream text, keys or addresses.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        status: int | None = None,
        retryable: bool = False,
        fallback: bool = False,
        retry_after: float | None = None,
        summary: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.provider = provider
        self.model = model
        self.status = status
        # retryable: the same call may succeed later; fallback: another model may succeed now.
        self.retryable = retryable
        self.fallback = fallback
        self.retry_after = retry_after
        # The chain's verdict after every model failed; each failure was an AttemptFailed event.
        self.summary = summary

    def __repr__(self) -> str:
        return (
            f"ProviderError(code={self.code!r}, provider={self.provider!r}, model={self.model!r}, "
            f"status={self.status!r})"
        )


class Provider(Protocol):
    """A model that streams an answer.

    `stream` yields `TextDelta`s as text arrives and exactly one `Finish` last, or raises
    `ProviderError`. Cancelling the iteration (or closing it) must close the upstream request.
    """

    name: str  # "provider/model"

    def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]: ...


@runtime_checkable
class TokenCounter(Protocol):
    """A model that can count a request's input tokens without answering it (a capability some
    adapters have: Claude's token-counting endpoint)."""

    name: str

    async def count_tokens(self, request: ModelRequest) -> int:
        """The input tokens `request` would use; raises `ProviderError`."""
        ...
