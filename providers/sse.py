"""A lean decoder for the Server-Sent Events that model APIs stream.

Both vendors send `data:` lines (Anthropic adds an `event:` line whose name the JSON repeats
in its `type`), so only the data payload of each event is returned. This sits on the relay's
hot path: it works on bytes and splits with `bytes.find`, one pass per chunk.
"""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def may_hold_surrogates(data: bytes) -> bool:
    """Whether the JSON text `data` escapes a UTF-16 surrogate (`\\ud800`..`\\udfff`), the only
    way parsed JSON can hold text that cannot be encoded as UTF-8. A byte search: cheap enough
    for every event."""
    return b"\\ud" in data or b"\\uD" in data


def repaired(text: str) -> str:
    """`text` with each lone surrogate (half of a pair that never came) replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


class SSEDecoder:
    __slots__ = ("_buffer", "_cr")

    def __init__(self) -> None:
        self._buffer = b""
        self._cr = False  # the last chunk ended in "\r", which may be half of "\r\n"

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes from the wire; return the data payloads of the events now complete."""
        if self._cr:
            chunk, self._cr = b"\r" + chunk, False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk, self._cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, self._buffer = (self._buffer + chunk if self._buffer else chunk).split(b"\n\n")
        payloads: list[bytes] = []
        for block in blocks:
            # The usual cases: a lone `data: ` line (OpenAI), or `event:` then `data: ` (Anthropic).
            if block.startswith(b"data: "):
                if b"\n" not in block:
                    payloads.append(block[6:])
                    continue
            elif block.startswith(b"event:"):
                line = block.find(b"\ndata:") + 1  # the first data line, which must be the last line
                if line and block.startswith(b"data: ", line) and block.find(b"\n", line) == -1:
                    payloads.append(block[line + 6 :])
                    continue
            data = [_field_value(line) for line in block.split(b"\n") if line.startswith(b"data:")]
            if data:
                payloads.append(b"\n".join(data))
        return payloads

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._buffer.strip())


def _field_value(line: bytes) -> bytes:
    value = line[5:]
    return value[1:] if value[:1] == b" " else value
