"""The relay benchmark's paced clients sort every request into the right bin: against a small
local server that refuses, fails, cuts or stalls on purpose."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bench.load import client_session
from bench.paced import run_paced


async def generate(request: web.Request) -> web.StreamResponse:
    model = (await request.json())["model"]
    if model == "refuse":
        return web.json_response({"error": "overloaded"}, status=503, headers={"Retry-After": "0"})
    if model == "refuse-bare":
        return web.json_response({"error": "overloaded"}, status=503)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    stamp = f"{time.monotonic():.4f}".encode()
    await resp.write(b'id: a:0\ndata: {"type":"content","text":"' + stamp + b'"}\n\n')
    if model == "ok":
        await resp.write(b'data: {"type":"done","model":"ok"}\n\n')
    elif model == "fail":
        await resp.write(b'data: {"type":"error","error":"The model took too long.","code":"timeout"}\n\n')
    elif model == "stall":
        await asyncio.sleep(3600)
    # "cut": the body ends here, without a terminal event
    await resp.write_eof()
    return resp


@pytest.fixture
async def url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/ai/stream/generate", generate)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/ai/stream/generate"
    await runner.cleanup()


async def paced(url: str, model: str, **kwargs):
    async with client_session(total_timeout=None) as session:
        return await run_paced(session, url, {"prompt": "x", "model": model}, clients=2, ramp=0, **kwargs)


async def test_completed_streams_measure_their_tokens(url):
    tally = await paced(url, "ok", duration=0.2)
    assert tally.requests >= 2 and tally.completed == tally.requests
    assert tally.tokens == tally.requests and tally.failures == 0
    # Tokens read after the run's end (its last streams) are not in the window.
    assert 0 < len(tally.latencies_ms) <= tally.tokens and all(lat >= 0 for lat in tally.latencies_ms)


async def test_a_refusal_with_retry_after_is_shedding_not_a_failure(url):
    tally = await paced(url, "refuse", duration=0.2)
    assert tally.requests >= 2 and tally.refused == tally.requests
    assert tally.failures == 0 and tally.completed == 0 and tally.tokens == 0


async def test_a_refusal_without_retry_after_is_a_failure(url):
    tally = await paced(url, "refuse-bare", duration=0.2)
    assert tally.refused == 0 and tally.refused_other["503 without Retry-After"] == tally.requests >= 2
    assert tally.failures == tally.requests


async def test_an_error_after_tokens_counts_by_its_code(url):
    tally = await paced(url, "fail", duration=0.2)
    assert tally.failed == {"timeout": tally.requests} and tally.completed == 0
    assert "timeout" in tally.first_error


async def test_a_body_without_a_terminal_event_is_cut(url):
    tally = await paced(url, "cut", duration=0.2)
    assert tally.cut == tally.requests >= 2 and tally.completed == 0


async def test_streams_open_at_the_end_are_stopped_or_unfinished(url):
    stopped = await paced(url, "stall", duration=0.3, wait_for_streams=False)
    assert (stopped.requests, stopped.stopped, stopped.unfinished, stopped.failures) == (2, 2, 0, 0)
    waited = await paced(url, "stall", duration=0.1, wait_for_streams=True, stream_timeout=0.3)
    assert (waited.requests, waited.unfinished, waited.completed) == (2, 2, 0)
