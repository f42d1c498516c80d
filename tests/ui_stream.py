"""Reading the UI message stream (`/ai/ui/chat`) in tests, strictly, as the SDK's parser would."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import event_ids, sse_events

DONE = "[DONE]"


def parse_ui_chunks(body: bytes) -> list[dict[str, Any] | str]:
    """The chunks of a UI message stream body, `"[DONE]"` as a string; keep-alive comments
    skipped; every chunk's SSE id checked (see `tests.conftest.event_ids`)."""
    event_ids(body)
    return [DONE if data == DONE else json.loads(data) for _, data in sse_events(body)]


def ui_text(chunks: list[dict[str, Any] | str]) -> str:
    """The text a client shows at the end: deltas since the last reset-step."""
    text = ""
    for chunk in chunks:
        if isinstance(chunk, dict) and chunk["type"] == "reset-step":
            text = ""
        elif isinstance(chunk, dict) and chunk["type"] == "text-delta":
            text += chunk["delta"]
    return text


def types(chunks: list[dict[str, Any] | str]) -> list[str]:
    return [c if isinstance(c, str) else c["type"] for c in chunks]
