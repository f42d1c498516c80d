"""The fake model upstream in a process of its own, for the relay benchmark.

    python -m bench.upstream [--tokens 200] [--token-delay 0] [--model claude-bench]
                             [--scenario NAME=TOKENS:DELAY[:stamped]]... [--loop asyncio|uvloop]

Serves Anthropic's streaming Messages API (`POST /v1/messages`, `event:` + `data:` pairs from
`message_start` to `message_stop`, one write per event, as `tests.fake_upstream` and the real
API send them) on an ephemeral 127.0.0.1 port and prints its base URL as the first line on
stdout (the benchmark reads it; nothing else is printed there).

Each request plays the scenario of the model it names:

- `--model` (default `claude-bench`): `--tokens` short text tokens, `--token-delay` s apart;
- each `--scenario NAME=TOKENS:DELAY`: TOKENS tokens, token i due at DELAY x i seconds after the
  request arrived (an absolute schedule: a late token does not delay the ones after it, so the
  offered rate holds as long as this process keeps up). With `:stamped`, each token's text is
  the `time.monotonic()` at which it is written (`1234.5678`), so that a client on this machine
  can tell how long the token took to reach it through the server under test (Linux's monotonic
  clock is shared by all processes);
- `idle`: the stream opens and stays silent for an hour, so it can be held open cheaply.

It is lean on purpose (HTTP/1.1 written by hand on an asyncio protocol, pre-encoded events,
timer callbacks instead of a task per stream, no request records) so that it keeps its schedule
at tens of thousands of tokens a second while the server under test is the one that runs out of
CPU. Stops on SIGTERM/SIGINT, or after `--max-seconds` in case the
benchmark that started it is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import signal
import sys
import time
from dataclasses import dataclass

from bench.common import new_event_loop, raise_nofile_limit

IDLE_MODEL = "idle"
IDLE_SECONDS = 3600.0
TIMER_RESOLUTION = 0.001  # uvloop's timers count whole milliseconds: a token this close to due is sent now
# Short, realistic token strings (a word or a piece of one, most with a leading space).
TOKEN_WORDS = ("The", " quick", " tok", "en", " is", " re", "layed", ",", " as", " a", " stream", ".", "\n")
_ids = itertools.count(1)


def bench_tokens(count: int) -> list[str]:
    return [TOKEN_WORDS[i % len(TOKEN_WORDS)] for i in range(count)]


@dataclass(frozen=True)
class Scenario:
    """What a request for one model gets: `tokens` text tokens, `delay` seconds apart."""

    tokens: int
    delay: float = 0.0
    stamped: bool = False

    @classmethod
    def parse(cls, text: str) -> tuple[str, Scenario]:
        """`NAME=TOKENS:DELAY[:stamped]` -> (name, scenario); ValueError for anything else."""
        name, sep, spec = text.partition("=")
        parts = spec.split(":")
        if not sep or not name or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "stamped"):
            raise ValueError(f"expected NAME=TOKENS:DELAY[:stamped], got {text!r}")
        tokens, delay = int(parts[0]), float(parts[1])
        if tokens < 1 or delay < 0:
            raise ValueError(f"tokens must be at least 1 and the delay not negative: {text!r}")
        return name, cls(tokens, delay, len(parts) == 3)


def _event(name: str, data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {text}\n\n".encode()


_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
_BLOCK_START = _event(
    "content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
)
_PING = _event("ping", '{"type": "ping"}')  # sic: the real API spaces this one
_BLOCK_STOP = _event("content_block_stop", {"type": "content_block_stop", "index": 0})
_MESSAGE_STOP = _event("message_stop", {"type": "message_stop"})


def delta_event(text: str) -> bytes:
    return _DELTA_HEAD + json.dumps(text, ensure_ascii=False).encode() + b"}}\n\n"


def message_start(model: str, message_id: str) -> bytes:
    message = {
        "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 1},
    }  # fmt: skip
    return _event("message_start", {"type": "message_start", "message": message})


def message_delta(output_tokens: int) -> bytes:
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    return _event("message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}})


def chunk(data: bytes) -> bytes:
    """`data` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def stamped_chunk() -> bytes:
    """A text delta whose text is the time of this call (`1234.5678`), framed as a chunk: the
    same bytes as `chunk(delta_event(...))`, built without a JSON encoder (the text is digits)."""
    # Rounded down, so that a token read at once is never read before it was written.
    event = _DELTA_HEAD + b'"%.4f"}}\n\n' % (math.floor(time.monotonic() * 10_000) / 10_000)
    return b"%x\r\n%s\r\n" % (len(event), event)


def _json_response(status: int, reason: str, payload: dict) -> bytes:
    body = json.dumps(payload).encode()
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class Upstream:
    """The scenarios this process plays, with every unstamped event encoded (and framed) once."""

    def __init__(self, scenarios: dict[str, Scenario]) -> None:
        self.scenarios = scenarios
        self.deltas = {name: [chunk(delta_event(t)) for t in bench_tokens(sc.tokens)] for name, sc in scenarios.items()}
        self.ends = {
            name: (chunk(_BLOCK_STOP), chunk(message_delta(sc.tokens)), chunk(_MESSAGE_STOP), b"0\r\n\r\n")
            for name, sc in scenarios.items()
        }

    def protocol(self) -> UpstreamConnection:
        return UpstreamConnection(self)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: a request at a time (`POST /v1/messages` with a sized
    JSON body), each answered as a chunked event stream whose paced tokens are written by timer
    callbacks, one pending timer per stream, no task per request: the cheapest way to keep tens of
    thousands of tokens a second on schedule. A client going away cancels its stream's timer."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False  # a response is being streamed
        self._close_after = False
        self._timer: asyncio.TimerHandle | None = None
        self._model = ""
        self._scenario: Scenario | None = None
        self._next = 0  # the next token to write
        self._arrived = 0.0
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._next_request()

    def _next_request(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
                self._reply(_json_response(431, "Request Header Fields Too Large", {"type": "error"}), close=True)
            return
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path = rest.split(" ", 1)[0]
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0") or 0)
        if len(buf) < end + 4 + length:
            return  # the body is still coming
        body = bytes(buf[end + 4 : end + 4 + length])
        del buf[: end + 4 + length]
        self._close_after = headers.get("connection", "").lower() == "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._reply(_json_response(411, "Length Required", {"type": "error"}), close=True)
        elif method != "POST" or path.split("?", 1)[0] != "/v1/messages":
            self._reply(_json_response(404, "Not Found", {"type": "error", "error": {"type": "not_found_error"}}))
        else:
            self._messages(body)

    def _reply(self, data: bytes, close: bool = False) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if close or self._close_after:
            self.transport.close()
        elif self._buf:
            self._next_request()

    def _messages(self, body: bytes) -> None:
        try:
            model = str(json.loads(body)["model"])
        except (ValueError, KeyError, TypeError):
            return self._reply(_json_response(400, "Bad Request", {"type": "error", "error": {"type": "invalid_request_error"}}))
        scenario = self.upstream.scenarios.get(model)
        if scenario is None and model != IDLE_MODEL:
            error = {"type": "not_found_error", "message": f"model: {model}"}
            return self._reply(_json_response(404, "Not Found", {"type": "error", "error": error}))
        assert self.transport is not None
        message_id = f"msg_bench{next(_ids):012d}"
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
            f"request-id: req_bench{message_id[9:]}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self._busy = True
        self.transport.write(head.encode())
        for event in (message_start(model, message_id), _BLOCK_START, _PING):
            self.transport.write(chunk(event))
        if scenario is None:
            return  # idle: silent until the client goes away
        self._model, self._scenario, self._next, self._arrived = model, scenario, 0, time.monotonic()
        self._tokens()

    def _tokens(self) -> None:
        """Write every token now due (token i is due `delay * i` s after the request arrived, and
        is sent up to a millisecond early), then set a timer for the next one, or end the answer."""
        self._timer = None
        transport, scenario = self.transport, self._scenario
        if transport is None or scenario is None:
            return
        deltas = self.upstream.deltas[self._model]
        while self._next < scenario.tokens:
            wait = self._arrived + self._next * scenario.delay - time.monotonic()
            if wait > TIMER_RESOLUTION:  # a shorter timer would fire at once, and again, until due
                self._timer = self._loop.call_later(wait, self._tokens)
                return
            event = stamped_chunk() if scenario.stamped else deltas[self._next]
            transport.write(event)
            self._next += 1
        for event in self.upstream.ends[self._model]:
            transport.write(event)  # one write per event, as the real API sends them
        self._busy, self._scenario = False, None
        self._reply(b"")


async def serve(upstream: Upstream, max_seconds: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(upstream.protocol, "127.0.0.1", 0, backlog=4096)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    except TimeoutError:
        pass
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200, help="text tokens per answer (default 200)")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens (default 0)")
    parser.add_argument("--model", default="claude-bench", help="model name that gets the token stream")
    parser.add_argument(
        "--scenario", action="append", default=[], metavar="NAME=TOKENS:DELAY[:stamped]", help="another model"
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop (default asyncio)")
    parser.add_argument("--max-seconds", type=float, default=900, help="exit by itself after this long")
    args = parser.parse_args(argv)
    scenarios = {args.model: Scenario(args.tokens, args.token_delay)}
    try:
        scenarios.update(Scenario.parse(text) for text in args.scenario)
    except ValueError as exc:
        parser.error(str(exc))
    raise_nofile_limit()
    # The rig's own collector pauses would land on whichever server is measured at the time:
    # what exists at start is frozen, and the youngest generation is collected 100x less often
    # (the fake makes no reference cycles per request).
    gc.collect()
    gc.freeze()
    gc.set_threshold(70_000, 20, 20)
    with asyncio.Runner(loop_factory=new_event_loop(args.loop)) as runner:
        runner.run(serve(Upstream(scenarios), args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
