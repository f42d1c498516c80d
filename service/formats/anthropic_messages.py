"""Anthropic's Messages format (`/v1/messages`), as the official SDKs parse it.

Every event has an `event:` line (the SDKs skip events without one): `message_start` (naming
the model that answers, so it is sent once a model has started answering), one text block
(`content_block_start`, `content_block_delta` with `text_delta`s, `content_block_stop`), then
`message_delta` (the stop reason and the cumulative usage) and `message_stop`. `ping` while
silent. A failure after the headers is `event: error` with `{"type": "error", "error": {...}}`.
"""

from __future__ import annotations

import secrets
from typing import Any

from providers.base import Finish, ProviderError
from providers.codec import dumps as _encode  # compact JSON as UTF-8 bytes
from service.errors import ApiError
from service.outcome import Outcome, Receipt


STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"})

# Anthropic's error types by HTTP status, for errors before an answer starts.
_TYPES_BY_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    408: "timeout_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
    504: "timeout_error",
}
# ... and by the service's code, for an answer that failed (streamed or not).
_TYPES_BY_CODE = {
    "rate_limited": "rate_limit_error", "upstream_unavailable": "overloaded_error", "no_models_available": "overloaded_error",
    "shutting_down": "overloaded_error", "timeout": "timeout_error", "invalid_request": "invalid_request_error",
}


def error_type(status: int) -> str:
    return _TYPES_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_object(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_body(error: ApiError) -> dict[str, Any]:
    """Any error of an Anthropic-compatible route, before an answer starts: Anthropic's shape."""
    return error_object(error_type(error.status), error.message)


def _failure_object(error: ProviderError) -> dict[str, Any]:
    return error_object(_TYPES_BY_CODE.get(error.code, "api_error"), error.message)


def stop_reason(finish: Finish) -> str:
    reason = finish.stop_reason or "end_turn"
    return reason if reason in STOP_REASONS else "end_turn"


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
_BLOCK_START = _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
_BLOCK_STOP = _event("content_block_stop", {"type": "content_block_stop", "index": 0})
_MESSAGE_STOP = _event("message_stop", {"type": "message_stop"})


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


class MessageEvents:
    """One answer as Messages stream events (or, not streamed, one `message`)."""

    __slots__ = ("id", "model", "_started")

    name = "anthropic"
    headers: dict[str, str] = {}
    event_ids = False
    keepalive = _event("ping", {"type": "ping"})

    def __init__(self, requested_model: str) -> None:
        self.id = new_message_id()
        self.model = requested_model  # until a model starts answering
        self._started = False

    def _start(self) -> bytes:
        self._started = True
        message = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return _event("message_start", {"type": "message_start", "message": message}) + _BLOCK_START

    def opening(self, answer_id: str | None) -> bytes:
        return b""  # `message_start` names the model, which is known once one starts answering

    def answering(self, provider: str, model: str) -> bytes:
        if self._started:
            return b""
        self.model = model
        return self._start()

    def restart(self) -> bytes:
        # Its clients append every delta: text once sent cannot be taken back.
        raise NotImplementedError(f"the {self.name} stream cannot take text back")

    def text(self, text: str) -> bytes:
        start = b"" if self._started else self._start()
        return start + _DELTA_HEAD + _encode(text) + b"}}\n\n"

    def done(self, outcome: Outcome, receipt: Receipt | None) -> bytes:
        finish = outcome.finish
        assert finish is not None
        usage = {"input_tokens": finish.usage.input_tokens, "output_tokens": finish.usage.output_tokens}
        delta = {"type": "message_delta", "delta": {"stop_reason": stop_reason(finish), "stop_sequence": None}, "usage": usage}
        start = b"" if self._started else self._start()
        return start + _BLOCK_STOP + _event("message_delta", delta) + _MESSAGE_STOP

    def failure(self, error: ProviderError) -> bytes:
        return _event("error", _failure_object(error))

    def body(self, outcome: Outcome, receipt: Receipt | None) -> tuple[int, dict[str, Any]]:
        finish = outcome.finish
        if finish is None:
            error = outcome.error
            assert error is not None
            return outcome.http_status(), _failure_object(error)
        text = "".join(outcome.text)
        return 200, {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": finish.model,
            "content": [{"type": "text", "text": text}] if text else [],
            "stop_reason": stop_reason(finish),
            "stop_sequence": None,
            "usage": {"input_tokens": finish.usage.input_tokens, "output_tokens": finish.usage.output_tokens},
        }
