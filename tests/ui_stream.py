"""Reading the UI message stream (`/ai/ui/chat`) in tests, strictly, as the SDK's parser would."""

from __future__ import annotations

import json
from typing import Any

DONE = "[DONE]"


def parse_ui_chunks(body: bytes) -> list[dict[str, Any] | str]:
    """The chunks of a UI message stream body, `"[DONE]"` as a string; keep-alive comments skipped."""
    chunks: list[dict[str, Any] | str] = []
    assert body.endswith(b"\n\n"), "the stream must end after a complete event"
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            continue
        assert len(lines) == 1 and lines[0].startswith("data: "), f"unexpected SSE block {block!r}"
        data = lines[0][len("data: ") :]
        chunks.append(DONE if data == DONE else json.loads(data))
    return chunks


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
