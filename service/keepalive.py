"""Keep-alives for every open stream from one task, rather than a task per stream.

A stream that is silent for long is closed by proxies, so each open stream gets its format's
keep-alive every `interval` seconds from when it opened (AI_KEEPALIVE_INTERVAL), as aiohttp-sse
does with a task and a timer of its own per stream. Here the streams wait in slots, one per
`resolution` seconds of the future, and one periodic task sends the keep-alives of each slot as
it comes due: an open stream costs a set entry instead of a task, its coroutine and its timer
(about 1.5 KB), and the streams opened over a second are not all pinged at the same instant.
A keep-alive is sent at most `resolution` seconds late (an eighth of the interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Protocol

from aiohttp import web

from service.app_keys import KEEPALIVES

RESOLUTION_SHARE = 8  # slots per keep-alive interval


class Pinged(Protocol):
    """A stream the keep-alives are sent to."""

    keepalive_interval: float
    keepalive_slot: int

    def send_keepalive(self) -> None: ...


class KeepAlives:
    """The slots of the streams waiting for their next keep-alive, and the one task that sends
    them (running only while a stream is open)."""

    def __init__(self, resolution: float) -> None:
        self.resolution = resolution
        self._slots: dict[int, set[Pinged]] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return sum(map(len, self._slots.values()))

    def add(self, stream: Pinged) -> None:
        """Send `stream` a keep-alive every `stream.keepalive_interval` seconds from now on."""
        loop = asyncio.get_running_loop()
        self._place(stream, loop.time())
        if self._task is None:
            self._task = loop.create_task(self._run(), name="keepalives")

    def discard(self, stream: Pinged) -> None:
        """No more keep-alives for `stream` (it ended, or its peer is gone)."""
        slot = self._slots.get(stream.keepalive_slot)
        if slot is not None:
            slot.discard(stream)
            if not slot:
                del self._slots[stream.keepalive_slot]

    def _place(self, stream: Pinged, now: float) -> None:
        number = math.ceil((now + stream.keepalive_interval) / self.resolution)
        stream.keepalive_slot = number
        self._slots.setdefault(number, set()).add(stream)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._slots:
                await asyncio.sleep(self.resolution)
                now = loop.time()
                current = math.floor(now / self.resolution)
                for number in [n for n in self._slots if n <= current]:
                    for stream in self._slots.pop(number):
                        self._place(stream, now)
                        stream.send_keepalive()
        finally:
            self._task = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._slots.clear()


async def stop_keepalives(app: web.Application) -> None:
    """on_cleanup: the keep-alives' task ends with the app."""
    await app[KEEPALIVES].close()
