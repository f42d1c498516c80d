"""A client that goes away stops the upstream request: nobody pays for tokens nobody reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import pytest
from aiohttp import web

from providers.base import Message, ModelRequest, StreamEvent
from service.answer import AnswerEnd, stream_answer
from service.app import create_app
from service.app_keys import REQUEST_LOG
from service.formats.typed_sse import TypedEvents
from service.outcome import Outcome, Receipt
from tests.conftest import parse_events
from tests.fake_upstream import Scenario


@pytest.mark.parametrize("model", ["claude-primary", "gpt-fallback"])
async def test_disconnect_mid_stream_cancels_upstream(client, fake_upstream, model):
    fake_upstream.script(model, Scenario(tokens=["tok"] * 200, token_delay=0.05))
    resp = await client.post("/ai/stream/generate", json={"prompt": "x", "model": model})
    assert b'\ndata: {"type":"content"' in await resp.content.readuntil(b"\n\n")
    resp.close()  # the browser tab closes
    gone_at = time.monotonic()
    record = await fake_upstream.wait_for_disconnect(timeout=1.0)
    assert record.model == model
    assert record.ended_at is not None and record.ended_at - gone_at < 1.0
    assert fake_upstream.active_streams == 0


async def test_disconnect_while_waiting_for_first_token_cancels_upstream(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(first_token_delay=30))
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
    assert resp.status == 200  # headers came at once, before any text
    await asyncio.sleep(0.1)
    resp.close()
    record = await fake_upstream.wait_for_disconnect(timeout=1.0)
    assert record.model == "claude-primary"
    # The chain did not move on to another model for a client that is gone.
    await asyncio.sleep(0.2)
    assert fake_upstream.requests_for("claude-backup") == []


async def test_disconnect_during_stall_after_text(make_client, fake_upstream):
    client = await make_client(idle_timeout=30)
    fake_upstream.script("claude-primary", Scenario(kind="stall", after_tokens=1))
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
    await resp.content.readuntil(b"\n\n")
    resp.close()
    await fake_upstream.wait_for_disconnect(timeout=1.0)


async def test_service_keeps_serving_after_disconnects(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(tokens=["a"] * 50, token_delay=0.02), Scenario())
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
    await resp.content.readuntil(b"\n\n")
    resp.close()
    await fake_upstream.wait_for_disconnect(timeout=1.0)
    again = await client.post("/ai/stream/generate", json={"prompt": "x"})
    assert parse_events(await again.read())[-1]["usage"] == {"input_tokens": 11, "output_tokens": 4}


class _NeverAsked:
    name = "never/asked"

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        raise AssertionError("no model is asked for a client that is gone")
        yield  # pragma: no cover


async def test_client_gone_before_the_headers_ends_quietly(aiohttp_client, make_settings):
    # The client leaves between sending its request and the stream's first write (the soak test
    # found this window: the headers' write fails, and the stream never starts its keep-alive).
    ended: list[object] = []

    outcomes: list[Outcome] = []

    async def record(outcome: Outcome) -> Receipt:
        outcomes.append(outcome)
        return Receipt("msg_x", True)

    async def handler(request: web.Request) -> web.StreamResponse:
        request[REQUEST_LOG] = {}
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.01)
        try:
            response = await stream_answer(
                request,
                _NeverAsked(),
                ModelRequest(messages=(Message("user", "x"),), max_tokens=5),
                TypedEvents(),
                AnswerEnd(request, record),
                deadline=5,
                ping_interval=15,
                in_flight=set(),
            )
        except BaseException as exc:
            ended.append(exc)
            raise
        ended.append(response)
        return response

    # The app of the service (its metrics and chain are what an answer's end reports to).
    app = create_app(make_settings())
    app.router.add_post("/gone", handler)
    client = await aiohttp_client(app)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()
    async with asyncio.timeout(5):
        while not ended:
            await asyncio.sleep(0.01)
    (result,) = ended
    # The stream ends as for any client that left: it returns, or, when the server has already
    # cancelled the handler, the cancellation goes on. Nothing else escapes it, and the answer's
    # end was reported once, as a client that left.
    assert isinstance(result, web.StreamResponse | asyncio.CancelledError), repr(result)
    (outcome,) = outcomes
    assert outcome.client_gone and outcome.finish is None and outcome.text == []
