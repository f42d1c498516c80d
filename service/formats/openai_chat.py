"""OpenAI's Chat Completions format (`/v1/chat/completions`), as the official SDKs parse it.

A stream is `chat.completion.chunk` objects, one `data:` line each, with the same `id` on every
chunk: the first carries `delta.role`, then `delta.content` pieces, then a chunk with the
`finish_reason`, then (with `stream_options.include_usage`) one chunk with empty `choices` and
the `usage`, then `data: [DONE]`. A failure after the headers is `data: {"error": {...}}` (the
SDKs raise it as an `APIError`), and the stream ends without `[DONE]`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from providers.base import Finish, ProviderError
from providers.codec import dumps as _encode  # compact JSON as UTF-8 bytes
from service.errors import ApiError
from service.outcome import STATUS_FOR_CODE, Outcome, Receipt


# The service's stop reasons (Anthropic's vocabulary) as OpenAI names them.
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "refusal": "content_filter",
                  "tool_use": "tool_calls"}


def finish_reason(finish: Finish) -> str:
    return FINISH_REASONS.get(finish.stop_reason or "end_turn", "stop")


def usage_of(finish: Finish) -> dict[str, int]:
    prompt, completion = finish.usage.input_tokens, finish.usage.output_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --- errors ---------------------------------------------------------------------------------

# The service's error codes as OpenAI spells the ones its clients know.
_CODES = {"unauthorized": "invalid_api_key", "rate_limited": "rate_limit_exceeded"}


def _error_type(status: int) -> str:
    if status == 401:
        return "invalid_request_error"  # as OpenAI's own API answers a wrong key
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_object(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _error_type(status), "param": param, "code": _CODES.get(code, code)}}


def error_body(error: ApiError) -> dict[str, Any]:
    """Any error of an OpenAI-compatible route, before an answer starts: OpenAI's shape."""
    param = error.details[0]["field"] if error.details else None
    return error_object(error.status, error.code, error.message, param)


# --- the format -------------------------------------------------------------------------------


class ChatCompletionChunks:
    """One answer as Chat Completions chunks (or, not streamed, one `chat.completion`)."""

    __slots__ = ("id", "created", "model", "include_usage", "_prefix")

    name = "openai"
    headers: dict[str, str] = {}
    event_ids = False
    keepalive = b": ping\n\n"  # an SSE comment: the SDKs skip it

    def __init__(self, requested_model: str, *, include_usage: bool = False) -> None:
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = requested_model  # until a model starts answering
        self.include_usage = include_usage
        self._prefix: bytes | None = None  # every chunk's bytes up to its choice's `delta`

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}
        return b"data: " + _encode(data) + b"\n\n"

    def _first(self) -> bytes:
        head = _encode({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model})
        self._prefix = b"data: " + head[:-1] + b',"choices":[{"index":0,"delta":'
        return self._prefix + b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n'

    def opening(self, answer_id: str | None) -> bytes:
        return b""  # the first chunk names the model, which is known once one starts answering

    def answering(self, provider: str, model: str) -> bytes:
        if self._prefix is not None:
            return b""
        self.model = model
        return self._first()

    def restart(self) -> bytes:
        # Its clients append every delta: text once sent cannot be taken back.
        raise NotImplementedError(f"the {self.name} stream cannot take text back")

    def text(self, text: str) -> bytes:
        first = self._first() if self._prefix is None else b""
        assert self._prefix is not None
        return first + self._prefix + b'{"content":' + _encode(text) + b'},"finish_reason":null}]}\n\n'

    def done(self, outcome: Outcome, receipt: Receipt | None) -> bytes:
        finish = outcome.finish
        assert finish is not None
        parts = [self._first()] if self._prefix is None else []
        parts.append(self._chunk([{"index": 0, "delta": {}, "finish_reason": finish_reason(finish)}]))
        if self.include_usage:
            parts.append(self._chunk([], usage=usage_of(finish)))
        parts.append(b"data: [DONE]\n\n")
        return b"".join(parts)

    def failure(self, error: ProviderError) -> bytes:
        body = error_object(STATUS_FOR_CODE.get(error.code, 502), error.code, error.message)
        del body["error"]["param"]
        return b"data: " + _encode(body) + b"\n\n"

    def body(self, outcome: Outcome, receipt: Receipt | None) -> tuple[int, dict[str, Any]]:
        finish = outcome.finish
        if finish is None:
            error = outcome.error
            assert error is not None
            return outcome.http_status(), error_object(outcome.http_status(), error.code, error.message)
        message = {"role": "assistant", "content": "".join(outcome.text), "refusal": None}
        return 200, {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": finish.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(finish)}],
            "usage": usage_of(finish),
        }
