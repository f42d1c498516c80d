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

It is lean on purpose (pre-encoded events, one timer per paced token, no request records) so
that it keeps its schedule at tens of thousands of tokens a second while the server under test
is the one that runs out of CPU. Stops on SIGTERM/SIGINT, or after `--max-seconds` in case the
benchmark that started it is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
import time
from dataclasses import dataclass

from aiohttp import web

from bench.common import new_event_loop, raise_nofile_limit

IDLE_MODEL = "idle"
IDLE_SECONDS = 3600.0
# Short, realistic token strings (a word or a piece of one, most with a leading space).
TOKEN_WORDS = ("The", " quick", " tok", "en", " is", " re", "layed", ",", " as", " a", " stream", ".", "\n")
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
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


class Upstream:
    """The request handler and the scenarios it plays, with every unstamped event encoded once."""

    def __init__(self, scenarios: dict[str, Scenario]) -> None:
        self.scenarios = scenarios
        self._deltas = {name: [delta_event(t) for t in bench_tokens(sc.tokens)] for name, sc in scenarios.items()}
        self._ends = {name: (_BLOCK_STOP, message_delta(sc.tokens), _MESSAGE_STOP) for name, sc in scenarios.items()}

    async def messages(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        try:
            body = json.loads(await request.read())
            model = str(body["model"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"type": "error", "error": {"type": "invalid_request_error"}}, status=400)
        scenario = self.scenarios.get(model)
        if scenario is None and model != IDLE_MODEL:
            error = {"type": "not_found_error", "message": f"model: {model}"}
            return web.json_response({"type": "error", "error": error}, status=404)
        message_id = f"msg_bench{next(_ids):012d}"
        resp = web.StreamResponse(headers={**SSE_HEADERS, "request-id": f"req_bench{message_id[9:]}"})
        await resp.prepare(request)
        await resp.write(message_start(model, message_id))
        await resp.write(_BLOCK_START)
        await resp.write(_PING)
        if scenario is None:
            await asyncio.sleep(IDLE_SECONDS)  # until the client goes away (the handler is cancelled)
            return resp
        deltas, delay = self._deltas[model], scenario.delay
        for i, event in enumerate(deltas):
            if delay:
                wait = arrived + i * delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if scenario.stamped:
                event = delta_event(f"{time.monotonic():.4f}")
            await resp.write(event)
        for event in self._ends[model]:
            await resp.write(event)  # one write per event, as the real API sends them
        await resp.write_eof()
        return resp


async def serve(upstream: Upstream, max_seconds: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = web.Application()
    app.router.add_post("/v1/messages", upstream.messages)
    # handler_cancellation: a client going away cancels the handler, even mid-sleep
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    except TimeoutError:
        pass
    finally:
        await runner.cleanup()


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
    with asyncio.Runner(loop_factory=new_event_loop(args.loop)) as runner:
        runner.run(serve(Upstream(scenarios), args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
