"""The events of resumable answers, kept in this process so that their readers (the request that
asked, and any resume) read them at their own pace, and so that an ended answer can be replayed
for AI_RESUME_RETENTION seconds.

Memory is bounded twice. An answer keeps at most AI_RESUME_BUFFER_BYTES of events: past it, its
oldest events are dropped (a resume from before what is kept gets 410 `resume_gone`; a reader
that fell that far behind is cut off). All answers together keep at most AI_RESUME_MAX_BYTES:
past it, the ended answers that ended first are forgotten (a resume gets 404); answers in
progress are never dropped for it and keep streaming.

The producer appends (no await, no I/O: the per-token path); readers wait for what follows.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from service.event_ids import EventIds
from storage import Owner

# Bytes counted for each kept event beyond its own: the list slot and the bytes object's header.
EVENT_OVERHEAD = 40
_EVENT_END = b"\n\n"


@dataclass(frozen=True, slots=True)
class AnswerInfo:
    """What a resume needs to know of an answer, wherever it was produced."""

    answer_id: str
    owner: Owner  # the API key's name and `user_id`, as for threads
    format: str  # the wire format's name: "typed" or "ui"
    chat_id: str | None = None  # the UI chat it answers (`GET /ai/ui/chat/{id}/stream`)


class BufferGone(Exception):
    """The events after the one asked for are no longer kept (the per-answer limit)."""


class AnswerLog:
    """One resumable answer's framed events, in order, and who reads them."""

    __slots__ = (
        "info", "headers", "keepalive", "ids", "events", "dropped", "size", "ended", "ended_at",
        "readers", "producer", "stop_reason", "_logs", "_changed", "_abandon",
    )

    def __init__(self, info: AnswerInfo, logs: AnswerLogs, *, headers: dict[str, str], keepalive: bytes) -> None:
        self.info = info
        self.headers = headers  # the response headers of the answer's format (X-Answer-ID included)
        self.keepalive = keepalive
        self.ids = EventIds(info.answer_id)
        self.events: list[bytes] = []  # events[i] has the number dropped + i + 1
        self.dropped = 0  # events dropped from the start (the per-answer limit)
        self.size = 0
        self.ended = False  # its terminal event is in `events`
        self.ended_at = 0.0
        self.readers = 0
        self.producer: asyncio.Task[None] | None = None
        self.stop_reason: str | None = None  # why the producer was cancelled: "cancelled", "abandoned"
        self._logs = logs
        self._changed = asyncio.Event()
        self._abandon: asyncio.TimerHandle | None = None

    @property
    def answer_id(self) -> str:
        return self.info.answer_id

    @property
    def last_seq(self) -> int:
        return self.ids.seq

    def append(self, piece: bytes) -> None:
        """One framed piece of the format (one event or several), numbered: the per-token path."""
        ids = self.ids
        if piece.count(_EVENT_END) == 1:
            ids.seq += 1
            event = ids.line(ids.seq) + piece
            self.events.append(event)
            grown = len(event) + EVENT_OVERHEAD
        else:
            new = ids.split(piece)
            self.events.extend(new)
            grown = sum(len(event) for event in new) + EVENT_OVERHEAD * len(new)
        self.size += grown
        logs = self._logs
        logs.size += grown
        if self.size > logs.buffer_bytes:
            self._trim()
        if logs.size > logs.max_bytes:
            logs.evict()
        self._changed.set()
        self._changed.clear()

    def finish(self, terminal: bytes) -> None:
        """The answer's terminal event(s): the last append. Later calls change nothing."""
        if self.ended:
            return
        self.append(terminal)
        self.ended = True
        self.ended_at = time.monotonic()
        self._cancel_abandon()
        self._logs.ended(self)
        self._changed.set()
        self._changed.clear()

    def _trim(self) -> None:
        """Drop the oldest events down to three quarters of the limit (amortized: not per token)."""
        keep = self._logs.buffer_bytes * 3 // 4
        freed = 0
        count = 0
        for event in self.events:
            if self.size - freed <= keep or count == len(self.events) - 1:
                break
            freed += len(event) + EVENT_OVERHEAD
            count += 1
        del self.events[:count]
        self.dropped += count
        self.size -= freed
        self._logs.size -= freed

    def since(self, seq: int) -> bytes:
        """The events after number `seq`, joined (BufferGone when some of them were dropped)."""
        start = seq - self.dropped
        if start < 0:
            raise BufferGone
        if start >= len(self.events):
            return b""
        if start == len(self.events) - 1:
            return self.events[start]
        return b"".join(self.events[start:])

    async def wait(self, seq: int) -> None:
        """Until there is an event after `seq`, or the answer has ended."""
        if seq < self.ids.seq or self.ended:
            return
        await self._changed.wait()

    def attach(self) -> None:
        self.readers += 1
        self._cancel_abandon()

    def detach(self) -> None:
        self.readers -= 1
        if self.readers == 0 and not self.ended and self.producer is not None:
            loop = asyncio.get_running_loop()
            self._abandon = loop.call_later(self._logs.abandon_after, self.stop, "abandoned")

    def stop(self, reason: str) -> bool:
        """Cancel the producer (the cancel route, or nobody read it for AI_RESUME_ABANDON_AFTER);
        False when the answer had already ended."""
        if self.ended or self.producer is None or self.producer.done():
            return False
        if self.stop_reason is None:
            self.stop_reason = reason
        self.producer.cancel()
        return True

    def _cancel_abandon(self) -> None:
        if self._abandon is not None:
            self._abandon.cancel()
            self._abandon = None


class AnswerLogs:
    """This process's resumable answers: in progress, and ended ones kept for their retention."""

    def __init__(self, *, buffer_bytes: int, max_bytes: int, retention: float, abandon_after: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.buffer_bytes = buffer_bytes
        self.max_bytes = max_bytes
        self.retention = retention
        self.abandon_after = abandon_after
        self.clock = clock
        self.size = 0
        self.live: dict[str, AnswerLog] = {}
        self._ended: OrderedDict[str, AnswerLog] = OrderedDict()  # oldest end first
        self._chats: dict[tuple[str, str | None, str], str] = {}  # (key name, user_id, chat id) -> live UI answer

    def open(self, info: AnswerInfo, *, headers: dict[str, str], keepalive: bytes) -> AnswerLog:
        self.expire()
        log = AnswerLog(info, self, headers=headers, keepalive=keepalive)
        self.live[info.answer_id] = log
        if info.chat_id is not None:
            self._chats[(info.owner.key_name, info.owner.user_id, info.chat_id)] = info.answer_id
        return log

    def ended(self, log: AnswerLog) -> None:
        info = log.info
        self.live.pop(info.answer_id, None)
        if info.chat_id is not None:
            key = (info.owner.key_name, info.owner.user_id, info.chat_id)
            if self._chats.get(key) == info.answer_id:
                del self._chats[key]
        self._ended[info.answer_id] = log
        if self.size > self.max_bytes:
            self.evict()

    def get(self, answer_id: str) -> AnswerLog | None:
        """The answer, if this process still holds it (in progress, or ended within its retention)."""
        log = self.live.get(answer_id)
        if log is not None:
            return log
        self.expire()
        return self._ended.get(answer_id)

    def active_chat_answer(self, owner: Owner, chat_id: str) -> AnswerLog | None:
        """The UI chat's answer in progress, if this process produces one."""
        answer_id = self._chats.get((owner.key_name, owner.user_id, chat_id))
        return self.live.get(answer_id) if answer_id is not None else None

    def expire(self) -> None:
        """Forget the ended answers past their retention."""
        until = self.clock() - self.retention
        while self._ended:
            answer_id, log = next(iter(self._ended.items()))
            if log.ended_at > until:
                break
            self._forget(answer_id)

    def evict(self) -> None:
        """Over AI_RESUME_MAX_BYTES: forget the ended answers that ended first, until under it."""
        while self.size > self.max_bytes and self._ended:
            self._forget(next(iter(self._ended)))

    def _forget(self, answer_id: str) -> None:
        # A reader replaying it keeps its events until it ends; nothing else refers to them.
        log = self._ended.pop(answer_id)
        self.size -= log.size

    def producers(self) -> Iterator[asyncio.Task[None]]:
        for log in list(self.live.values()):
            if log.producer is not None and not log.producer.done():
                yield log.producer

    def __len__(self) -> int:
        return len(self.live) + len(self._ended)
