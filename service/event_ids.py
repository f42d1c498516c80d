"""SSE `id:` lines for the service's own streams (`/ai/stream/*`, `/ai/ui/chat`).

Every event of an answer gets `id: <answer id>:<seq>`, `seq` counting the answer's events from
1, so that a client that lost the connection names the last event it has (`Last-Event-ID`) and
a resume sends what follows (see service/resumable.py). Keep-alive comments get no id.

Events arrive already framed by their wire format; an id line is prepended, bytes only, never
re-encoding the JSON. A format may hand over several events in one piece (a terminal event
and what closes it): each of them gets its own id.
"""

from __future__ import annotations

import re
import secrets

ANSWER_ID_HEADER = "X-Answer-ID"
ANSWER_ID_PATTERN = re.compile(r"msg_[0-9a-f]{32}")
_EVENT_END = b"\n\n"


def new_answer_id() -> str:
    """The id of an answer that is not stored (a stored answer's id is its message id): the same
    shape, so that the UI stream's `start.messageId` is the answer id either way."""
    return "msg_" + secrets.token_hex(16)


class EventIds:
    """Numbers one answer's events."""

    __slots__ = ("answer_id", "seq", "_prefix")

    def __init__(self, answer_id: str, seq: int = 0) -> None:
        self.answer_id = answer_id
        self.seq = seq  # the last number given
        self._prefix = b"id: " + answer_id.encode() + b":"

    def line(self, seq: int) -> bytes:
        return self._prefix + str(seq).encode() + b"\n"

    def stamp(self, piece: bytes) -> bytes:
        """`piece` (one event or several) with an id line on each event."""
        if piece.count(_EVENT_END) == 1:  # the common case: one event
            self.seq += 1
            return self._prefix + str(self.seq).encode() + b"\n" + piece
        return b"".join(self.split(piece))

    def split(self, piece: bytes) -> list[bytes]:
        """The events of `piece`, each with its id line: one entry per event, for the answer log."""
        if piece.count(_EVENT_END) == 1:
            self.seq += 1
            return [self._prefix + str(self.seq).encode() + b"\n" + piece]
        events = []
        for event in piece.split(_EVENT_END):
            if event:
                self.seq += 1
                events.append(self._prefix + str(self.seq).encode() + b"\n" + event + _EVENT_END)
        return events


def parse_after(answer_id: str, last_event_id: str | None, after: str | None) -> int | None:
    """The sequence number a resume starts after: `Last-Event-ID` (`<answer id>:<seq>`, or just
    `<seq>`) wins over `?after=<seq>`; 0 (from the start) when neither is sent. None when what
    was sent is not such a number, or names another answer."""
    if last_event_id is not None and last_event_id.strip():
        value = last_event_id.strip()
        named, sep, seq = value.rpartition(":")
        if sep and named != answer_id:
            return None
        return _seq(seq)
    if after is not None:
        return _seq(after)
    return 0


def _seq(value: str) -> int | None:
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        return None
    return int(value)
