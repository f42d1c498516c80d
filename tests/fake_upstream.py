"""A fake LLM upstream speaking the Anthropic Messages and OpenAI Chat Completions wire formats.

Start it on an ephemeral 127.0.0.1 port, point the real SDKs at `base_url` / `openai_base_url`,
and script per-model `Scenario`s: ok, HTTP errors, in-stream errors, dropped connections,
stalls and malformed data. Every request is recorded; client disconnects are noticed promptly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.fake_cache import PromptCache, count_tokens

__all__ = ["FakeUpstream", "PromptCache", "RecordedRequest", "Scenario", "count_tokens"]

Api = Literal["anthropic", "openai"]
Kind = Literal["ok", "http_error", "stream_error", "drop", "stall", "malformed"]

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
    529: "overloaded_error",
}
OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {  # status -> (type, code)
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
OPENAI_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


@dataclass
class Scenario:
    """How the fake answers one request."""

    kind: Kind = "ok"
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    status: int = 529  # for http_error
    error_type: str | None = None  # default: from status (in-stream: overloaded_error / server_error)
    error_message: str = "fake upstream error"
    error_code: str | None = None  # OpenAI's error `code` (e.g. context_length_exceeded); default: from status
    retry_after: float | None = None  # `retry-after` header on http_error
    after_tokens: int = 0  # stream_error / drop / stall / malformed happen after this many text tokens
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    stall_seconds: float = 3600.0
    stop_reason: str = "end_turn"
    input_tokens: int = 11  # as Anthropic counts it: the prompt tokens not read from or written to the cache
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    output_tokens: int | None = None  # default: len(tokens)
    end_delay: float = 0.0  # seconds between the last event and the end of the body
    headers_delay: float = 0.0  # seconds before anything is sent back, the status line included
    one_write: bool = False  # everything before the end (or the drop, or the stall) in one write, as a buffering proxy sends it

    @property
    def out_tokens(self) -> int:
        return len(self.tokens) if self.output_tokens is None else self.output_tokens

    def anthropic_usage(self) -> dict[str, int]:
        usage = {"input_tokens": self.input_tokens, "output_tokens": 1}
        if self.cache_read_input_tokens or self.cache_creation_input_tokens:
            usage.update(cache_creation_input_tokens=self.cache_creation_input_tokens,
                         cache_read_input_tokens=self.cache_read_input_tokens)
        return usage


@dataclass
class RecordedRequest:
    """One request the fake received."""

    api: Api
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]
    model: str
    received_at: float  # time.monotonic()
    ended_at: float | None = None  # when the response finished or the client went away
    disconnected: bool = False
    scenario: Scenario | None = None  # extra: what the fake played
    peer: tuple[str, int] | None = None  # the client's address: the same one means a reused connection


def _rand_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(n))


def _dumps(obj: Any) -> str:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (a scenario's broken token) goes out as a JSON escape, as a real
        # server that produced one would send it.
        return json.dumps(obj, separators=(",", ":"))
    return text


class _Dropped(Exception):
    """The scenario asks to abort the connection (kind="drop")."""


class _Wire:
    """One vendor's wire format; `run` plays a scenario as a stream, one write (and flush) per
    event, or with `one_write` all events held back and written at once."""

    def __init__(self, resp: web.StreamResponse, model: str, sc: Scenario, body: dict[str, Any]) -> None:
        self.resp, self.model, self.sc, self.body = resp, model, sc, body
        self._held: list[str] = []

    async def send(self, text: str) -> None:
        if self.sc.one_write:
            self._held.append(text)
        else:
            await self.resp.write(text.encode("utf-8"))

    async def flush(self) -> None:
        if self._held:
            text, self._held = "".join(self._held), []
            await self.resp.write(text.encode("utf-8"))

    async def run(self) -> None:
        sc = self.sc
        cut = len(sc.tokens) if sc.kind == "ok" else min(sc.after_tokens, len(sc.tokens))
        await self.open()
        await self._tokens(0, cut)
        if sc.kind == "drop":
            await self.flush()
            raise _Dropped
        if sc.kind == "stream_error":
            await self.stream_error()
        elif sc.kind == "malformed":
            await self.malformed()
        else:
            if sc.kind == "stall":
                await self.flush()
                await asyncio.sleep(sc.stall_seconds)  # silent: no pings
            await self._tokens(cut, len(sc.tokens))
            await self.finish()
        await self.flush()

    async def _tokens(self, start: int, stop: int) -> None:
        for i in range(start, stop):
            delay = self.sc.first_token_delay if i == 0 else self.sc.token_delay
            if delay > 0:
                await asyncio.sleep(delay)
            await self.token(self.sc.tokens[i])

    async def open(self) -> None: ...
    async def token(self, text: str) -> None: ...
    async def finish(self) -> None: ...
    async def stream_error(self) -> None: ...
    async def malformed(self) -> None: ...


class _AnthropicWire(_Wire):
    request_id_header = "request-id"

    async def event(self, name: str, data: dict[str, Any] | str) -> None:
        await self.send(f"event: {name}\ndata: {data if isinstance(data, str) else _dumps(data)}\n\n")

    async def open(self) -> None:
        message = {
            "id": _rand_id("msg_"), "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": self.sc.anthropic_usage(),
        }
        await self.event("message_start", {"type": "message_start", "message": message})
        block = {"type": "text", "text": ""}
        await self.event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        await self.event("ping", '{"type": "ping"}')  # sic: the real API spaces this one

    async def token(self, text: str) -> None:
        delta = {"type": "text_delta", "text": text}
        await self.event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})

    async def finish(self) -> None:
        await self.event("content_block_stop", {"type": "content_block_stop", "index": 0})
        delta = {"stop_reason": self.sc.stop_reason, "stop_sequence": None}
        usage = {"output_tokens": self.sc.out_tokens}
        await self.event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        await self.event("message_stop", {"type": "message_stop"})

    async def stream_error(self) -> None:
        error = {"type": self.sc.error_type or "overloaded_error", "message": self.sc.error_message}
        await self.event("error", {"type": "error", "error": error})

    async def malformed(self) -> None:
        await self.event("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_de')

    @staticmethod
    def error_body(sc: Scenario, request_id: str) -> dict[str, Any]:
        default = ANTHROPIC_ERROR_TYPES.get(sc.status, "api_error" if sc.status >= 500 else "invalid_request_error")
        error = {"type": sc.error_type or default, "message": sc.error_message}
        return {"type": "error", "error": error, "request_id": request_id}

    @staticmethod
    def message_body(model: str, sc: Scenario) -> dict[str, Any]:
        return {
            "id": _rand_id("msg_"), "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "".join(sc.tokens)}], "stop_reason": sc.stop_reason,
            "stop_sequence": None, "usage": {**sc.anthropic_usage(), "output_tokens": sc.out_tokens},
        }


class _OpenAIWire(_Wire):
    request_id_header = "x-request-id"

    def __init__(self, resp: web.StreamResponse, model: str, sc: Scenario, body: dict[str, Any]) -> None:
        super().__init__(resp, model, sc, body)
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.id, self.created = _rand_id("chatcmpl-", 29), int(time.time())

    async def chunk(self, delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> None:
        """A chunk with one choice, or with no choices (the usage chunk) when `delta` is None."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        data: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model, "system_fingerprint": None, "choices": choices}
        if self.include_usage:
            data["usage"] = usage
        await self.send(f"data: {_dumps(data)}\n\n")

    async def open(self) -> None:
        await self.chunk({"role": "assistant", "content": ""})

    async def token(self, text: str) -> None:
        await self.chunk({"content": text})

    async def finish(self) -> None:
        await self.chunk({}, OPENAI_FINISH_REASONS.get(self.sc.stop_reason, "stop"))
        if self.include_usage:
            await self.chunk(None, usage=_openai_usage(self.sc))
        await self.send("data: [DONE]\n\n")

    async def stream_error(self) -> None:
        error = {"message": self.sc.error_message, "type": self.sc.error_type or "server_error",
                 "param": None, "code": None}
        await self.send(f"data: {_dumps({'error': error})}\n\n")

    async def malformed(self) -> None:
        await self.send(f'data: {{"id":"{self.id}","object":"chat.completion.chunk","choi\n\n')

    @staticmethod
    def error_body(sc: Scenario, request_id: str) -> dict[str, Any]:
        default = ("server_error" if sc.status >= 500 else "invalid_request_error", None)
        etype, code = OPENAI_ERRORS.get(sc.status, default)
        return {"error": {"message": sc.error_message, "type": sc.error_type or etype, "param": None, "code": sc.error_code or code}}

    @staticmethod
    def message_body(model: str, sc: Scenario) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(sc.tokens), "refusal": None, "annotations": []}
        choice = {"index": 0, "message": message, "logprobs": None,
                  "finish_reason": OPENAI_FINISH_REASONS.get(sc.stop_reason, "stop")}
        return {"id": _rand_id("chatcmpl-", 29), "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [choice], "usage": _openai_usage(sc), "system_fingerprint": None}


def _openai_usage(sc: Scenario) -> dict[str, Any]:
    prompt = sc.input_tokens + sc.cache_read_input_tokens + sc.cache_creation_input_tokens
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": sc.out_tokens, "total_tokens": prompt + sc.out_tokens}
    if sc.cache_read_input_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": sc.cache_read_input_tokens}
    return usage


def count_chars(body: dict[str, Any]) -> int:
    """The characters of text in a Messages body: its system prompt and every message."""

    def text(content: Any) -> int:
        if isinstance(content, str):
            return len(content)
        return sum(len(block.get("text", "")) for block in content or () if isinstance(block, dict))

    return text(body.get("system")) + sum(text(m.get("content")) for m in body.get("messages") or ())


WireType = type[_AnthropicWire] | type[_OpenAIWire]
# Picks the Scenario for one request from what it asked (e.g. the prompt in `body`).
Chooser = Callable[[RecordedRequest], Scenario]


class FakeUpstream:
    """An aiohttp server on 127.0.0.1 faking both vendors' APIs, scripted per model."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[RecordedRequest] = []
        self.active_streams = 0
        # Count the prompt's tokens (`count_tokens`) instead of the scenario's input_tokens, and
        # with `prompt_cache` also report what a prefix cache would have read and written.
        self.count_tokens = False
        self.prompt_cache: PromptCache | None = None
        self._scripts: dict[str, list[Scenario]] = {}
        self._choosers: dict[str, Chooser] = {}
        self._returned_disconnects = 0
        self._disconnected = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._closing = False

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        # handler_cancellation: a client going away cancels the handler, even mid-sleep
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        """Cancel streams still running (not counted as disconnects) and stop the server."""
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def script(self, model: str, *scenarios: Scenario) -> None:
        """Requests naming `model` consume `scenarios` in order; the last one repeats forever."""
        if not scenarios:
            raise ValueError("script() needs at least one Scenario")
        self._scripts[model] = list(scenarios)

    def choose(self, model: str, chooser: Chooser) -> None:
        """Requests naming `model` play whatever `chooser` returns for their record (which holds the
        request body); takes precedence over `script()` for that model."""
        self._choosers[model] = chooser

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.model == model]

    async def wait_for_disconnect(self, timeout: float = 2.0) -> RecordedRequest:
        """The next disconnect this method has not returned yet; waits up to `timeout` (TimeoutError)."""
        async with asyncio.timeout(timeout):
            while len(self.disconnects) <= self._returned_disconnects:
                self._disconnected.clear()
                await self._disconnected.wait()
        self._returned_disconnects += 1
        return self.disconnects[self._returned_disconnects - 1]

    def reset(self) -> None:
        """Forget scripts, choosers and records."""
        self._scripts.clear()
        self._choosers.clear()
        self.requests.clear()
        self.disconnects.clear()
        self._returned_disconnects = 0

    def _next_scenario(self, model: str) -> Scenario:
        queue = self._scripts.get(model)
        if not queue:
            return Scenario()
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def _counted(self, api: Api, body: dict[str, Any], sc: Scenario) -> Scenario:
        if not (self.count_tokens or self.prompt_cache is not None) or sc.kind == "http_error":
            return sc
        cache = self.prompt_cache if self.prompt_cache is not None else PromptCache(min_tokens=1 << 60)
        total, read, written = cache.anthropic(body) if api == "anthropic" else cache.openai(body)
        output = count_tokens("".join(sc.tokens)) if sc.output_tokens is None else sc.output_tokens
        return dataclasses.replace(
            sc, input_tokens=total - read - written, cache_read_input_tokens=read,
            cache_creation_input_tokens=written, output_tokens=output,
        )

    def _record_disconnect(self, rec: RecordedRequest) -> None:
        if self._closing or rec.disconnected:
            return
        rec.disconnected, rec.ended_at = True, time.monotonic()
        self.disconnects.append(rec)
        self._disconnected.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        api: Api = "openai" if request.path.endswith("/chat/completions") else "anthropic"
        try:
            body = await request.json()
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        model = str(body.get("model", ""))
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec = RecordedRequest(api, request.path, headers, body, model, time.monotonic())
        peer = request.transport.get_extra_info("peername") if request.transport else None
        rec.peer = (peer[0], peer[1]) if peer else None
        chooser = self._choosers.get(model)
        rec.scenario = sc = self._counted(api, body, chooser(rec) if chooser is not None else self._next_scenario(model))
        self.requests.append(rec)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if sc.headers_delay:
                await asyncio.sleep(sc.headers_delay)
            return await self._respond(request, rec, sc, _AnthropicWire if api == "anthropic" else _OpenAIWire)
        except asyncio.CancelledError:  # the client went away (or close() is stopping us)
            self._record_disconnect(rec)
            raise
        finally:
            rec.ended_at = rec.ended_at or time.monotonic()
            self._tasks.discard(task)

    async def _count_tokens(self, request: web.Request) -> web.Response:
        """Anthropic's token counting, deterministic: a token per 4 characters of text (at least 1);
        a model scripted with an `http_error` gets that error instead."""
        body = await request.json()
        model = str(body.get("model", ""))
        rec = RecordedRequest("anthropic", request.path, {k.lower(): v for k, v in request.headers.items()}, body, model,
                              time.monotonic())
        self.requests.append(rec)
        rec.scenario = sc = self._next_scenario(model)
        rec.ended_at = time.monotonic()
        if sc.kind == "http_error":
            return web.json_response(_AnthropicWire.error_body(sc, _rand_id("req_")), status=sc.status)
        return web.json_response({"input_tokens": max(1, count_chars(body) // 4)})

    async def _respond(
        self, request: web.Request, rec: RecordedRequest, sc: Scenario, wire: WireType
    ) -> web.StreamResponse:
        request_id = _rand_id("req_")
        headers = {wire.request_id_header: request_id}
        streaming = bool(rec.body.get("stream"))
        if sc.kind == "http_error" or (sc.kind == "stream_error" and not streaming):
            if sc.retry_after is not None:
                headers["retry-after"] = f"{sc.retry_after:g}"
            return web.json_response(wire.error_body(sc, request_id), status=sc.status, headers=headers, dumps=_dumps)
        if not streaming:
            return await self._non_stream(request, rec.model, sc, wire, headers)

        resp = web.StreamResponse(headers={**headers, "Content-Type": SSE_CONTENT_TYPE, "Cache-Control": "no-cache"})
        await resp.prepare(request)
        self.active_streams += 1
        try:
            await wire(resp, rec.model, sc, rec.body).run()
            if sc.end_delay:
                await asyncio.sleep(sc.end_delay)
            await resp.write_eof()
        except _Dropped:
            assert request.transport is not None
            request.transport.abort()  # no terminating chunk: the client sees an incomplete body
        except ConnectionResetError:  # the client went away while we were writing
            self._record_disconnect(rec)
        finally:
            self.active_streams -= 1
        return resp  # aiohttp ignores errors from finishing a response on a closed connection

    async def _non_stream(
        self, request: web.Request, model: str, sc: Scenario, wire: WireType, headers: dict[str, str]
    ) -> web.StreamResponse:
        """The whole answer as one JSON body; drop aborts, stall waits first, malformed sends broken JSON."""
        if sc.kind == "stall":
            await asyncio.sleep(sc.stall_seconds)
        if sc.kind == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if sc.first_token_delay > 0:
            await asyncio.sleep(sc.first_token_delay)
        if sc.kind == "malformed":
            return web.Response(text='{"id":', content_type="application/json", headers=headers)
        return web.json_response(wire.message_body(model, sc), headers=headers, dumps=_dumps)
