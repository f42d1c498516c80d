"""From provider events to what the client receives: an event stream or one JSON answer.

Whatever happens upstream, a stream ends with exactly one terminal event (`done` or
`error`) unless the client itself went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, MutableSet, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from providers.base import (
    AttemptFailed,
    Finish,
    ModelRequest,
    Provider,
    ProviderError,
    TextDelta,
)
from service.errors import request_log
from service.sse import EventStream, content_event

# HTTP status for a failed answer when it is not streamed.
STATUS_FOR_CODE = {
    "rate_limited": 503,
    "upstream_unavailable": 503,
    "no_models_available": 503,
    "timeout": 504,
    "invalid_request": 502,
    "shutting_down": 503,
}

TIMEOUT_MESSAGE = "The answer took longer than this service allows."
SHUTDOWN_MESSAGE = "The service is restarting; please send the request again."


class Cutoff:
    """The time limit of one answer, which a shutdown can bring forward to now."""

    __slots__ = ("timeout", "shutting_down", "__weakref__")

    def __init__(self) -> None:
        self.timeout: asyncio.Timeout | None = None
        self.shutting_down = False

    def end_now(self) -> None:
        self.shutting_down = True
        if self.timeout is not None:
            with contextlib.suppress(RuntimeError):  # the answer is already past its deadline block
                self.timeout.reschedule(asyncio.get_running_loop().time())

    def error(self) -> ProviderError:
        """What a fired time limit means for the client."""
        if self.shutting_down:
            return ProviderError("shutting_down", SHUTDOWN_MESSAGE, retryable=True)
        return ProviderError("timeout", TIMEOUT_MESSAGE, retryable=True)


@dataclass(slots=True)
class Outcome:
    """What happened to one answer: for the log line, and for storage."""

    text: list[str] = field(default_factory=list)
    finish: Finish | None = None
    error: ProviderError | None = None
    attempts: list[AttemptFailed] = field(default_factory=list)  # the failed ones, in order
    client_gone: bool = False
    first_token_ms: float | None = None

    @property
    def status(self) -> str:
        if self.finish is not None:
            return "complete"
        return "interrupted" if self.client_gone else "error"

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
        return fields


def done_payload(finish: Finish, attempts: Sequence[AttemptFailed] = ()) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": "done",
        "model": finish.model,
        "provider": finish.provider,
        "stop_reason": finish.stop_reason,
        "usage": {"input_tokens": finish.usage.input_tokens, "output_tokens": finish.usage.output_tokens},
    }
    if attempts:  # only after a fallback: the attempts that failed before this model answered
        payload["attempts"] = [{"model": a.model, "code": a.code} for a in attempts]
    return payload


def error_payload(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": message, "code": code}


async def _consume(
    cutoff: Cutoff,
    deadline: float,
    provider: Provider,
    model_request: ModelRequest,
    outcome: Outcome,
    on_text: Callable[[str], Awaitable[None]] | None,
) -> None:
    """Read the provider's events into `outcome` within the deadline, handing each text piece to
    `on_text`; failures end up in `outcome.error`."""
    started = time.perf_counter()
    text = outcome.text
    try:
        async with asyncio.timeout(deadline) as cutoff.timeout, aclosing(provider.stream(model_request)) as events:
            async for event in events:
                if type(event) is TextDelta:
                    if not text:
                        outcome.first_token_ms = round((time.perf_counter() - started) * 1000, 1)
                    text.append(event.text)
                    if on_text is not None:
                        await on_text(event.text)
                elif type(event) is Finish:
                    outcome.finish = event
                elif type(event) is AttemptFailed:
                    outcome.attempts.append(event)
    except ProviderError as exc:
        outcome.error = exc
    except TimeoutError:
        outcome.error = cutoff.error()


async def stream_answer(
    request: web.Request,
    provider: Provider,
    model_request: ModelRequest,
    *,
    deadline: float,
    ping_interval: float,
    in_flight: MutableSet[Cutoff],
    on_end: Callable[[Outcome], Awaitable[dict[str, Any]]] | None = None,
) -> tuple[EventStream, Outcome]:
    """Stream the answer as SSE.

    `on_end` runs exactly once when the answer is over, however it ended (storage uses it);
    what it returns is added to the `done` event.
    """
    response = EventStream(ping_interval=ping_interval)
    outcome = Outcome()
    ended = False

    async def end() -> dict[str, Any]:
        nonlocal ended
        if ended or on_end is None:
            return {}
        ended = True
        return await on_end(outcome)

    async def send_text(text: str) -> None:
        await response.write(content_event(text))

    cutoff = Cutoff()
    in_flight.add(cutoff)
    try:
        await response.prepare(request)
        await _consume(cutoff, deadline, provider, model_request, outcome, send_text)
        if outcome.finish is not None:
            payload = done_payload(outcome.finish, outcome.attempts)
            payload.update(await end())
        else:
            if outcome.error is None:
                outcome.error = ProviderError("upstream_error", "The model's answer ended unexpectedly.")
            await end()
            payload = error_payload(outcome.error.code, outcome.error.message)
        await response.send_terminal(payload)
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError) as exc:
        outcome.client_gone = True
        # Storage must still hear how the answer ended, even when this task is cancelled.
        await asyncio.shield(end())
        if isinstance(exc, asyncio.CancelledError):
            raise
    finally:
        in_flight.discard(cutoff)
        request_log(request).update(outcome.log_fields())
        await response.close()
    return response, outcome


async def collect_answer(
    provider: Provider,
    model_request: ModelRequest,
    *,
    deadline: float,
    in_flight: MutableSet[Cutoff],
    on_end: Callable[[Outcome], Awaitable[dict[str, Any]]] | None = None,
) -> tuple[Outcome, int, dict[str, Any]]:
    """The whole answer at once, for `stream: false`: the answer, the HTTP status to use, and
    what `on_end` (run exactly once, even when the client leaves) returned."""
    outcome = Outcome()
    cutoff = Cutoff()
    in_flight.add(cutoff)
    try:
        await _consume(cutoff, deadline, provider, model_request, outcome, None)
    except asyncio.CancelledError:
        outcome.client_gone = True
        if on_end is not None:
            await asyncio.shield(on_end(outcome))
        raise
    finally:
        in_flight.discard(cutoff)
    if outcome.finish is None and outcome.error is None:
        outcome.error = ProviderError("upstream_error", "The model's answer ended unexpectedly.")
    stored = await on_end(outcome) if on_end is not None else {}
    status = 200 if outcome.finish is not None else STATUS_FOR_CODE.get(outcome.error.code, 502)  # type: ignore[union-attr]
    return outcome, status, stored

