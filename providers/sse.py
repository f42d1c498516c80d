"""A lean decoder for the Server-Sent Events that model APIs stream.

Both vendors send `data:` lines (Anthropic adds an `event:` line whose name the JSON repeats
in its `type`), so only the data payload of each event is returned. This sits on the relay's
hot path: it works on bytes and splits with `bytes.find`, one pass per chunk.
"""

from __future__ import annotations


class SSEDecoder:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes from the wire; return the data payloads of the events now complete."""
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        payloads: list[bytes] = []
        start = 0
        while (end := buffer.find(b"\n\n", start)) != -1:
            block = buffer[start:end]
            start = end + 2
            if block.startswith(b"data:") and b"\n" not in block:
                payloads.append(_field_value(block))  # the usual case: one data line
                continue
            data = [_field_value(line) for line in block.split(b"\n") if line.startswith(b"data:")]
            if data:
                payloads.append(b"\n".join(data))
        self._buffer = buffer[start:]
        return payloads

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._buffer.strip())


def _field_value(line: bytes) -> bytes:
    value = line[5:]
    return value[1:] if value[:1] == b" " else value
