"""The Vercel AI SDK's UI message stream (`/ai/ui/chat`), as `ai@7` reads it (`useChat`,
`DefaultChatTransport`, `readUIMessageStream`).

Each chunk is one `data: <json>` line (after its SSE `id:` line, see service/event_ids.py) and
a blank line; the stream ends with `data: [DONE]`:

    start {messageId}, start-step, text-start {id}, text-delta {id, delta}..., text-end {id},
    finish-step, finish {finishReason, messageMetadata}, [DONE]

A failure is `error {errorText}` then `[DONE]`. Only chunk types and fields that `ai@7.0.0`'s
schema knows are sent (it rejects unknown ones and unknown fields), except `reset-step`
(`ai` >= 7.0.70), which only a restarting answer sends. The answer's id, which a resume names,
is the `start` chunk's `messageId` (and the `X-Answer-ID` header): nothing is added to a chunk.
"""

from __future__ import annotations

import uuid
from typing import Any

from providers.base import ProviderError
from providers.codec import dumps as _encode  # compact JSON as UTF-8 bytes
from service.outcome import Outcome, Receipt


HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
DONE = b"data: [DONE]\n\n"
# The model's stop reason as the SDK names it (its `FinishReason`).
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool-calls",
    "refusal": "content-filter",
}


def chunk(payload: dict[str, Any]) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


def finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "", "other")


def new_ui_id() -> str:
    return "msg_" + uuid.uuid4().hex


class UIMessageStream:
    """One answer as one assistant UI message with one text part (a new part after a restart)."""

    __slots__ = ("_part", "_parts", "_open", "_delta")

    name = "ui"
    headers = HEADERS
    keepalive = b": ping\n\n"
    event_ids = True

    def __init__(self) -> None:
        self._parts = 0
        self._part = ""  # the id of the text part being written
        self._open = False  # a text part was started and not ended
        self._delta = b""  # the framing of a delta of that part, up to its text

    def opening(self, answer_id: str | None) -> bytes:
        # The message id is the answer's id (a stored answer's message id): what a resume names.
        start = chunk({"type": "start", "messageId": answer_id or new_ui_id()})
        return start + b'data: {"type":"start-step"}\n\n'

    def answering(self, provider: str, model: str) -> bytes:
        return b""  # the `finish` chunk's metadata names the model

    def text(self, text: str) -> bytes:
        head = b""
        if not self._open:
            head = self._start_part()
        return head + self._delta + _encode(text) + b"}\n\n"

    def _start_part(self) -> bytes:
        self._parts += 1
        self._part = f"text-{self._parts}"
        self._open = True
        self._delta = b'data: {"type":"text-delta","id":"' + self._part.encode() + b'","delta":'
        return chunk({"type": "text-start", "id": self._part})

    def _end_part(self) -> bytes:
        if not self._open:
            return b""
        self._open = False
        return chunk({"type": "text-end", "id": self._part})

    def restart(self) -> bytes:
        # The client drops the parts of the current step; the next model's text is a new part.
        self._open = False
        return b'data: {"type":"reset-step"}\n\n'

    def done(self, outcome: Outcome, receipt: Receipt | None) -> bytes:
        finish = outcome.finish
        assert finish is not None
        metadata: dict[str, Any] = {
            "model": finish.model,
            "provider": finish.provider,
            "usage": {"input_tokens": finish.usage.input_tokens, "output_tokens": finish.usage.output_tokens},
        }
        if receipt is not None:
            metadata["persisted"] = receipt.persisted
        end = {"type": "finish", "finishReason": finish_reason(finish.stop_reason), "messageMetadata": metadata}
        return self._end_part() + b'data: {"type":"finish-step"}\n\n' + chunk(end) + DONE

    def failure(self, error: ProviderError) -> bytes:
        # The same safe sentence as the typed stream's `error` event; never internals.
        return chunk({"type": "error", "errorText": error.message}) + DONE

    def body(self, outcome: Outcome, receipt: Receipt | None) -> tuple[int, dict[str, Any]]:
        """An answer that is not streamed: the assistant `UIMessage` (or the usual error body)."""
        finish = outcome.finish
        if finish is None:
            error = outcome.error
            assert error is not None
            return outcome.http_status(), {"error": error.message, "code": error.code, "details": []}
        metadata = {"model": finish.model, "provider": finish.provider}
        message_id = receipt.message_id if receipt is not None else new_ui_id()
        return 200, {"id": message_id, "role": "assistant", "parts": [{"type": "text", "text": "".join(outcome.text)}], "metadata": metadata}
