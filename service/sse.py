"""The event-stream response every streamed format is written through: aiohttp-sse's response
(headers, the send timeout of a keep-alive), with the format's own keep-alive and extra headers.
Keep-alives are sent by the app's one `KeepAlives` task (service/keepalive.py) instead of
aiohttp-sse's task per stream; the kernel's dead-peer timeout (`TCP_USER_TIMEOUT`) comes with
the connection, from its listening socket (service/listening.py), instead of being set and
restored on every stream."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

from aiohttp import HttpVersion11, web
from aiohttp_sse import EventSourceResponse

from service.app_keys import KEEPALIVES
from service.keepalive import KeepAlives


class EventStream(EventSourceResponse):
    """One streamed answer's response. Events arrive already framed by their wire format."""

    def __init__(self, *, ping_interval: float, keepalive: bytes, headers: Mapping[str, str]) -> None:
        super().__init__(sep="\n", ping_interval=ping_interval, allow_all_methods=True, headers=headers or None)
        self.keepalive = keepalive
        self.keepalive_interval = ping_interval
        self.keepalive_slot = 0  # where `KeepAlives` holds it
        self.terminated = False  # the terminal event was written
        self._keepalives: KeepAlives | None = None  # set while keep-alives are sent (the headers went out)
        self._pinging: asyncio.Task[None] | None = None  # a keep-alive being written

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self.prepared:
            # aiohttp prepares a handler's response again once the handler returns: nothing to start.
            return await super().prepare(request)
        if request.version < HttpVersion11:
            # HTTP/1.0 has no chunking: the end of the body is the end of the connection.
            self.headers["Connection"] = "close"
            self.force_close()
        # aiohttp-sse's own prepare, but for its keep-alive task, and for TCP_USER_TIMEOUT,
        # which every connection has from its listening socket (service/listening.py).
        writer = await web.StreamResponse.prepare(self, request)
        self.enable_chunked_encoding()
        self._keepalives = cast(web.Request, request).app[KEEPALIVES]
        self._keepalives.add(self)
        # Send the headers now rather than with the first event, so clients see the stream open.
        send_headers = getattr(writer, "send_headers", None)
        if send_headers is not None:
            send_headers()
        return writer

    def is_connected(self) -> bool:
        return self._keepalives is not None

    def stop_streaming(self) -> None:
        """No more keep-alives (the stream ended, or its peer is gone)."""
        if self._keepalives is not None:
            self._keepalives.discard(self)
            self._keepalives = None

    async def wait(self) -> None:
        """Until a keep-alive being written is done (its own cancellation is no error; this
        task's is passed on)."""
        if self._pinging is not None:
            try:
                await self._pinging
            except asyncio.CancelledError:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise

    async def close(self) -> None:
        """Stop the keep-alives, and end a keep-alive write still waiting for a slow peer (its
        task and this stream would otherwise hold each other until a full collection)."""
        self.stop_streaming()
        if self._pinging is not None:
            self._pinging.cancel()
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

    def send_keepalive(self) -> None:
        """Called by `KeepAlives` when this stream's keep-alive is due: written in a task of its
        own, which lives as long as the write (a moment, unless the peer does not read)."""
        if self._pinging is None:
            self._pinging = asyncio.get_running_loop().create_task(self._write_keepalive())

    async def _write_keepalive(self) -> None:
        # aiohttp-sse's keep-alive write: a peer that takes longer than the send timeout to take
        # it is taken for dead, and its connection aborted.
        try:
            async with asyncio.timeout(self._send_timeout):
                await self.write(self.keepalive)
        except TimeoutError:
            self.stop_streaming()
            self._abort_transport()
        except (ConnectionResetError, RuntimeError):  # RuntimeError: a write after the end
            self.stop_streaming()
        finally:
            self._pinging = None
