"""The event stream a client reads: aiohttp-sse's response with a lean writer for our events.

Every event is one `data: <json>` line and a blank line, without an `event:` field, so that
`EventSource.onmessage`, fetch-and-split-lines readers and pass-through proxies all see it.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def event_bytes(payload: dict[str, Any]) -> bytes:
    return b"data: " + _encode(payload).encode() + b"\n\n"


def content_event(text: str) -> bytes:
    # The hot path: one event per upstream text delta.
    return b'data: {"type":"content","text":' + _encode(text).encode() + b"}\n\n"


class EventStream(EventSourceResponse):
    """aiohttp-sse's response (headers, keep-alive pings, dead-peer timeout) with `\\n` framing."""

    def __init__(self, *, ping_interval: float) -> None:
        super().__init__(sep="\n", ping_interval=ping_interval, allow_all_methods=True)
        self.terminated = False  # a `done` or `error` event was written
        self._pinging = False  # the keep-alive task was started (the headers went out)

    async def prepare(self, request: web.BaseRequest) -> Any:
        writer = await super().prepare(request)
        self._pinging = True
        # Send the headers now rather than with the first event, so clients see the stream open.
        send_headers = getattr(writer, "send_headers", None)
        if send_headers is not None:
            send_headers()
        return writer

    async def close(self) -> None:
        """Stop the keep-alive pings and wait for their task to end. Until its end is awaited, the
        cancelled task and this stream hold each other (through the task's exception), and only
        a full collection would free them. Nothing to do when the client left before the headers."""
        if not self._pinging:
            return
        if self.is_connected():
            self.stop_streaming()
        await self.wait()

    async def send_bytes(self, event: bytes) -> None:
        """Write one framed event. Our JSON never holds a raw newline, so no re-splitting."""
        try:
            await self.write(event)
        except ConnectionResetError:
            self.stop_streaming()
            raise

    async def send_terminal(self, payload: dict[str, Any]) -> None:
        """The last event of a stream; at most one is ever written."""
        if self.terminated:
            return
        self.terminated = True
        await self.send_bytes(event_bytes(payload))
