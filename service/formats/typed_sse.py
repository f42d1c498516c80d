"""The service's own event stream (`/ai/stream/*`): `content`, `done` and `error` events.

Every event is one `data: <json>` line and a blank line, without an `event:` field, so that
`EventSource.onmessage`, fetch-and-split-lines readers and pass-through proxies all see it
(the relay puts an `id:` line before each one: see service/event_ids.py). The answer's id is
in the first event (`answer_id`, on the first `content` event, or on `done`/`error` when no
text came first) and on the terminal event.
"""

from __future__ import annotations

from typing import Any

from providers.base import ProviderError, Usage
from providers.codec import dumps as _encode  # compact JSON as UTF-8 bytes
from service.outcome import Outcome, Receipt


def event_bytes(payload: dict[str, Any]) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


def usage_fields(usage: Usage) -> dict[str, Any]:
    """`input_tokens` counts every prompt token; the cache figures (parts of it) are there only
    when the model read from or wrote to its prompt cache."""
    fields: dict[str, Any] = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if usage.cache_read_input_tokens or usage.cache_creation_input_tokens:
        fields.update(
            cache_read_input_tokens=usage.cache_read_input_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
        )
    return fields


def done_fields(outcome: Outcome, receipt: Receipt | None) -> dict[str, Any]:
    finish = outcome.finish
    assert finish is not None
    fields: dict[str, Any] = {
        "model": finish.model,
        "provider": finish.provider,
        "stop_reason": finish.stop_reason,
        "usage": usage_fields(finish.usage),
    }
    if outcome.attempts:  # only after a fallback: the attempts that failed before this model answered
        fields["attempts"] = [{"model": a.model, "code": a.code} for a in outcome.attempts]
    if receipt is not None:
        fields.update(message_id=receipt.message_id, persisted=receipt.persisted)
    return fields


class TypedEvents:
    """One answer as the service's typed events."""

    __slots__ = ("answer_id", "_first")

    name = "typed"
    headers: dict[str, str] = {}
    keepalive = b": ping\n\n"
    event_ids = True

    def __init__(self) -> None:
        self.answer_id: str | None = None
        self._first = b""  # the tail of the first content event, which names the answer

    def opening(self, answer_id: str | None) -> bytes:
        if answer_id is not None:
            self.answer_id = answer_id
            self._first = b',"answer_id":' + _encode(answer_id) + b"}\n\n"
        return b""

    def answering(self, provider: str, model: str) -> bytes:
        return b""  # the `done` event names the model

    def text(self, text: str) -> bytes:
        if self._first:
            tail, self._first = self._first, b""
            return b'data: {"type":"content","text":' + _encode(text) + tail
        return b'data: {"type":"content","text":' + _encode(text) + b"}\n\n"

    def restart(self) -> bytes:
        # Its readers append every `content` event: text once sent cannot be taken back.
        raise NotImplementedError("the typed event stream cannot take text back")

    def done(self, outcome: Outcome, receipt: Receipt | None) -> bytes:
        return event_bytes({"type": "done", **done_fields(outcome, receipt), **self._named()})

    def failure(self, error: ProviderError) -> bytes:
        return event_bytes({"type": "error", "error": error.message, "code": error.code, **self._named()})

    def _named(self) -> dict[str, str]:
        return {"answer_id": self.answer_id} if self.answer_id is not None else {}

    def body(self, outcome: Outcome, receipt: Receipt | None) -> tuple[int, dict[str, Any]]:
        if outcome.finish is None:
            error = outcome.error
            assert error is not None
            return outcome.http_status(), {"error": error.message, "code": error.code, "details": []}
        return 200, {"text": "".join(outcome.text), **done_fields(outcome, receipt)}
