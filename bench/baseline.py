"""The bare relay the service is measured against: the least code that does the same job.

    python -m bench.baseline --port 8100 --upstream http://127.0.0.1:PORT [--loop asyncio|uvloop]

`POST /ai/stream/generate` `{"prompt": ..., "model"?: ...}` makes one streaming call to the
Anthropic Messages endpoint over one shared `aiohttp.ClientSession` and re-emits each text
delta as `data: {"type":"content","text":...}`, then one `done` event. No SDK, no validation,
no fallback, no storage, no logging. `GET /health` answers `ok`. `--loop uvloop` runs it on
uvloop's event loop instead of asyncio's default one, so that the service can be compared with
it on the same loop whichever it runs on.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from bench.common import LOOPS, new_event_loop, raise_nofile_limit

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)
DEFAULT_MODEL = "claude-bench"
HEADERS = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01", "content-type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def generate(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    upstream_body = {
        "model": body.get("model") or DEFAULT_MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": body["prompt"]}],
        "stream": True,
    }
    response = web.StreamResponse(headers=SSE_HEADERS)
    writer = await response.prepare(request)
    assert writer is not None
    writer.send_headers()  # as the service does: the client sees the stream open at once
    model, stop_reason, usage = upstream_body["model"], None, {}
    async with request.app[SESSION].post(
        request.app[UPSTREAM] + "/v1/messages", data=json.dumps(upstream_body), headers=HEADERS
    ) as upstream:
        buffer = b""
        async for chunk in upstream.content.iter_any():
            *events, buffer = (buffer + chunk).split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = json.loads(line[5:])
                    kind = data["type"]
                    if kind == "content_block_delta":
                        await response.write(sse({"type": "content", "text": data["delta"]["text"]}))
                    elif kind == "message_start":
                        model = data["message"]["model"]
                    elif kind == "message_delta":
                        stop_reason, usage = data["delta"]["stop_reason"], data["usage"]
    await response.write(sse({"type": "done", "model": model, "stop_reason": stop_reason, "usage": usage}))
    await response.write_eof()
    return response


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def client_session(app: web.Application) -> AsyncIterator[None]:
    # limit=0: as many upstream connections as there are streams (the SDK allows 1,000).
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        app[SESSION] = session
        yield


def create_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(client_session)
    app.router.add_post("/ai/stream/generate", generate)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the Anthropic-compatible server")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="event loop (default: asyncio's)")
    args = parser.parse_args()
    raise_nofile_limit()
    web.run_app(
        create_app(args.upstream),
        loop=new_event_loop(args.loop)(),
        host="127.0.0.1",
        port=args.port,
        handler_cancellation=True,
        access_log=None,
        print=None,
        shutdown_timeout=1,
    )


if __name__ == "__main__":
    main()
