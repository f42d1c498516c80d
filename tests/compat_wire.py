"""Strict readers of the OpenAI- and Anthropic-compatible event streams, for tests: each checks
the framing as a strict line reader would, and says what each event is."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import parse_events

DONE = "[DONE]"


def _blocks(body: bytes) -> list[list[str]]:
    assert body.endswith(b"\n\n"), "the stream must end after a complete event"
    blocks = []
    for block in body.decode().split("\n\n"):
        lines = block.split("\n") if block else []
        if lines and not all(line.startswith(":") for line in lines):  # else a keep-alive comment
            blocks.append(lines)
    return blocks


def parse_chunks(body: bytes) -> list[Any]:
    """A Chat Completions stream: each event's JSON, and `DONE` for `data: [DONE]`."""
    events: list[Any] = []
    for lines in _blocks(body):
        assert len(lines) == 1 and lines[0].startswith("data: "), f"unexpected SSE block {lines!r}"
        data = lines[0][len("data: ") :]
        events.append(data if data == DONE else json.loads(data))
    return events


def parse_message_events(body: bytes) -> list[dict[str, Any]]:
    """A Messages stream: each event's JSON, whose `type` must be the name on its `event:` line."""
    events = []
    for lines in _blocks(body):
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), lines
        data = json.loads(lines[1][len("data: ") :])
        assert data["type"] == lines[0][len("event: ") :], lines
        events.append(data)
    return events


@dataclass
class Read:
    """What a client made of a stream: its text pieces, and its terminal events in order
    (`done` or `error:<code or type>`), with the index of the last one among all events."""

    texts: list[str] = field(default_factory=list)
    terminals: list[str] = field(default_factory=list)
    last_is_terminal: bool = False
    model: str | None = None


def read_chunks(body: bytes) -> Read:
    read, events = Read(), parse_chunks(body)
    for event in events:
        if event == DONE:
            read.terminals.append("done")
        elif "error" in event:
            read.terminals.append(f"error:{event['error']['code']}")
        else:
            read.model = event["model"]
            for choice in event["choices"]:
                if content := choice["delta"].get("content"):
                    read.texts.append(content)
    read.last_is_terminal = bool(events) and (events[-1] == DONE or "error" in events[-1])
    return read


def read_message_events(body: bytes) -> Read:
    read, events = Read(), parse_message_events(body)
    for event in events:
        if event["type"] == "message_stop":
            read.terminals.append("done")
        elif event["type"] == "error":
            read.terminals.append(f"error:{event['error']['type']}")
        elif event["type"] == "message_start":
            read.model = event["message"]["model"]
        elif event["type"] == "content_block_delta":
            read.texts.append(event["delta"]["text"])
    read.last_is_terminal = bool(events) and events[-1]["type"] in ("message_stop", "error")
    return read


# Anthropic's error types, back to the service's codes they stand for.
ANTHROPIC_CODES = {"overloaded_error": "upstream_unavailable", "rate_limit_error": "rate_limited",
                   "timeout_error": "timeout", "api_error": "upstream_error"}


class AsTyped:
    """A compatible stream's events (one block or the whole body at a time) as typed events."""

    def __init__(self, wire: str) -> None:
        self.wire, self.model, self.output_tokens = wire, None, None

    def __call__(self, body: bytes) -> list[dict[str, Any]]:
        if self.wire == "typed":
            return parse_events(body)
        out: list[dict[str, Any]] = []
        if self.wire == "openai":
            for chunk in parse_chunks(body):
                if chunk == DONE:
                    out.append({"type": "done", "model": self.model, "usage": {"output_tokens": self.output_tokens}})
                elif "error" in chunk:
                    code = chunk["error"]["code"]
                    out.append({"type": "error", "code": "rate_limited" if code == "rate_limit_exceeded" else code})
                else:
                    self.model = chunk["model"]
                    self.output_tokens = (chunk.get("usage") or {}).get("completion_tokens", self.output_tokens)
                    out += [{"type": "content", "text": c["delta"]["content"]} for c in chunk["choices"]
                            if c["delta"].get("content")]
            return out
        for event in parse_message_events(body):
            kind = event["type"]
            if kind == "message_start":
                self.model = event["message"]["model"]
            elif kind == "content_block_delta":
                out.append({"type": "content", "text": event["delta"]["text"]})
            elif kind == "message_delta":
                self.output_tokens = event["usage"]["output_tokens"]
            elif kind == "message_stop":
                out.append({"type": "done", "model": self.model, "usage": {"output_tokens": self.output_tokens}})
            elif kind == "error":
                out.append({"type": "error", "code": ANTHROPIC_CODES.get(event["error"]["type"], event["error"]["type"])})
        return out
