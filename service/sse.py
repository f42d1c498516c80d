"""The event-stream response every streamed format is written through: aiohttp-sse's response
(headers, keep-alive, dead-peer timeout), with the format's own keep-alive and extra headers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp_sse import EventSourceResponse


class EventStream(EventSourceResponse):
    """One streamed answer's response. Events arrive already framed by their wire format."""

    def __init__(self, *, ping_interval: float, keepalive: bytes, headers: Mapping[str, str]) -> None:
        super().__init__(sep="\n", ping_interval=ping_interval, allow_all_methods=True, headers=headers or None)
        self.keepalive = keepalive
        self.terminated = False  # the terminal event was written
        self._pinging = False  # the keep-alive task was started (the headers went out)

    async def prepare(self, request: web.BaseRequest) -> Any:
        if request.version < HttpVersion11:
            # HTTP/1.0 has no chunking: the end of the body is the end of the connection.
            self.headers["Connection"] = "close"
            self.force_close()
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

    async def send_terminal(self, event: bytes) -> None:
        """The last event(s) of a stream; at most one terminal write is ever made."""
        if self.terminated:
            return
        self.terminated = True
        try:
            await self.write(event)
        except ConnectionResetError:
            self.stop_streaming()
            raise

    async def _ping(self) -> None:
        # aiohttp-sse's keep-alive loop, writing the format's own keep-alive bytes.
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                async with asyncio.timeout(self._send_timeout):
                    await self.write(self.keepalive)
            except TimeoutError:
                self._abort_transport()
                break
            except (ConnectionResetError, RuntimeError):  # RuntimeError: a write after the end
                break
