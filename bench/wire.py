"""A lean HTTP/1.1 client for the paced load generator: one keep-alive connection per client.

At thousands of paced streams the load generator reads every token as its own chunk, and a
general-purpose client spends more CPU per token than the servers it measures; this one hands
the bytes of each socket read straight to an `EventReader`, with the time of the read. It speaks
just what the benchmark needs: `POST` with a sized body, and a response framed by `chunked`
transfer encoding, `Content-Length` or the end of the connection.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from bench.timing import EventReader

MAX_HEAD = 64 * 1024
MAX_ERROR_BODY = 64 * 1024


class Response:
    """A response's status and headers (names lower-cased), and its body unless it went to a reader."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers, self.body = status, headers, b""


class Connection(asyncio.Protocol):
    """One connection; `request` sends a request and waits for its whole response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._state = "idle"  # idle, head, chunk_size, chunk_data, chunk_end, trailer, length, until_close, done
        self._left = 0  # bytes still due in this chunk, or of the sized body
        self._done: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._reader: EventReader | None = None
        self._keep_alive = True

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == "until_close" and self._response is not None:
            self._finish()
        elif self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionResetError("the server closed the connection mid-response"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, data: bytes, reader: EventReader | None) -> Response:
        """Send `data` (a whole request); a 200's body goes to `reader`, any other's to `body`."""
        if self.closed or self.transport is None or self._done is not None:
            raise ConnectionResetError("the connection is not usable")
        self._done = asyncio.get_running_loop().create_future()
        self._state, self._reader, self._response = "head", reader, None
        self.transport.write(data)
        try:
            return await self._done
        except BaseException:
            self.close()  # cancelled or broken mid-response: the server sees the client go away
            raise
        finally:
            self._done = None

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self._buf += data
        payload = bytearray()
        try:
            while self._step(payload):
                pass
        except ValueError as exc:
            if self._done is not None and not self._done.done():
                self._done.set_exception(exc)
            self.close()
            return
        if payload:
            self._deliver(bytes(payload), now)
        if self._state == "done":
            self._finish()

    def _step(self, payload: bytearray) -> bool:
        """Parse what the buffer holds for the current state; True when it moved on."""
        buf, state = self._buf, self._state
        if state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ValueError("response head too large")
                return False
            self._head(bytes(buf[:end]))
            del buf[: end + 4]
            return True
        if state == "chunk_size":
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
            del buf[: end + 2]
            self._state, self._left = ("trailer", 0) if size == 0 else ("chunk_data", size)
            return True
        if state == "chunk_data":
            # Whatever of the chunk is there goes to the reader now: it sees bytes as they come.
            take = min(len(buf), self._left)
            payload += buf[:take]
            del buf[:take]
            self._left -= take
            if self._left:
                return False
            self._state = "chunk_end"
            return True
        if state == "chunk_end":
            if len(buf) < 2:
                return False
            if buf[:2] != b"\r\n":
                raise ValueError("a chunk does not end with CRLF")
            del buf[:2]
            self._state = "chunk_size"
            return True
        if state == "trailer":
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            del buf[: end + 2]
            if end == 0:  # the empty line after the last chunk (and any trailers)
                self._state = "done"
                return False
            return True
        if state in ("length", "until_close"):
            take = len(buf) if state == "until_close" else min(len(buf), self._left)
            payload += buf[:take]
            del buf[:take]
            self._left -= take
            if state == "length" and self._left == 0:
                self._state = "done"
            return False
        return False

    def _head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._response = Response(int(parts[1]), headers)
        self._keep_alive = headers.get("connection", "").lower() != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = "chunk_size"
        elif "content-length" in headers:
            self._left = int(headers["content-length"])
            self._state = "length" if self._left else "done"
        else:
            self._state, self._keep_alive = "until_close", False

    def _deliver(self, data: bytes, now: float) -> None:
        response = self._response
        assert response is not None
        if response.status == 200 and self._reader is not None:
            self._reader.feed(data, now)
        elif len(response.body) < MAX_ERROR_BODY:
            response.body += data

    def _finish(self) -> None:
        self._state = "idle"
        if not self._keep_alive or self._buf:  # bytes after the response: do not reuse the connection
            self.close()
        if self._done is not None and not self._done.done() and self._response is not None:
            self._done.set_result(self._response)


def post_request(url: str, body: bytes) -> tuple[str, int, bytes]:
    """(host, port, the bytes of a JSON POST of `body` to `url`), built once per run."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return host, port, head.encode() + body
