"""Reading streams in pieces and resuming them, for the tests of resumable answers."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import ClientResponse

from tests.conftest import event_ids, parse_events, sse_events

TOKENS = [f"t{n} " for n in range(40)]


def turn(content="count", thread_id="r-1", **extra):
    return {"messages": [{"role": "user", "content": content}], "thread_id": thread_id, **extra}


async def stored_answer(client, thread_id="r-1", **params):
    """The thread's answer once it is no longer pending."""
    for _ in range(200):
        page = await (await client.get(f"/ai/threads/{thread_id}/messages", params=params)).json()
        answer = page["messages"][-1]
        if answer["status"] != "pending":
            return answer
        await asyncio.sleep(0.02)
    raise AssertionError("the answer stayed pending")


async def read_events(resp: ClientResponse, count: int) -> bytes:
    """The next `count` events of a streamed response (keep-alive comments skipped), as bytes."""
    raw = b""
    seen = 0
    while seen < count:
        block = await resp.content.readuntil(b"\n\n")
        raw += block
        if not all(line.startswith(b":") for line in block.strip(b"\n").split(b"\n")):
            seen += 1
    return raw


def last_event_id(raw: bytes) -> str:
    """The `id:` of the last event of `raw`, as a client's `Last-Event-ID`."""
    event_id = sse_events(raw)[-1][0]
    assert event_id is not None
    return event_id


def joined(*parts: bytes) -> bytes:
    """What a client that read `parts` one after the other has, checked as one stream: every
    event numbered, no number twice or missing across the reconnects."""
    whole = b"".join(parts)
    event_ids(whole)
    return whole


def typed_text(raw: bytes) -> str:
    return "".join(event.get("text", "") for event in parse_events(raw) if event["type"] == "content")


def terminals(raw: bytes) -> list[dict[str, Any]]:
    return [event for event in parse_events(raw) if event["type"] in ("done", "error")]
