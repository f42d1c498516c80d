"""The relay benchmark's paced clients sort every request into the right bin: against a small
local server that refuses, fails, cuts or stalls on purpose."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bench.paced import run_paced


async def generate(request: web.Request) -> web.StreamResponse:
    model = (await request.json())["model"]
    if model == "refuse":
        body = {"error": "Busy.", "code": "overloaded", "details": []}
        return web.json_response(body, status=503, headers={"Retry-After": "0"})
    if model == "refuse-bare":
        return web.json_response({"error": "overloaded"}, status=503)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    stamp = f"{math.floor(time.monotonic() * 10_000) / 10_000:.4f}".encode()  # as bench.upstream: rounded down
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
    return await run_paced(url, {"prompt": "x", "model": model}, clients=2, ramp=0, **kwargs)


async def test_completed_streams_measure_their_tokens(url):
    tally = await paced(url, "ok", duration=0.2)
    assert tally.requests >= 2 and tally.completed == tally.requests
    assert tally.tokens == tally.requests and tally.failures == 0
    # Tokens read after the run's end (its last streams) are not in the window.
    assert 0 < len(tally.latencies_ms) <= tally.tokens and all(lat >= 0 for lat in tally.latencies_ms)


async def test_a_refusal_with_retry_after_is_shedding_not_a_failure(url):
    tally = await paced(url, "refuse", duration=0.2)
    assert tally.requests >= 2 and tally.refused == tally.requests
    assert tally.refused_codes == {"overloaded": tally.requests}
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


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written, self.closed = b"", False

    def write(self, data) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("piece", [1, 7, 10_000])
async def test_the_lean_client_reads_a_chunked_answer_however_it_is_split(piece):
    from bench.timing import EventReader
    from bench.wire import Connection

    events = [
        b'data: {"type":"content","text":"1.5000"}\n\n',
        b'data: {"type":"content","text":" a"}\n\n',
        b'data: {"type":"done"}\n\n',
    ]
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(*events)
    conn, transport = Connection(), FakeTransport()
    conn.connection_made(transport)
    reader = EventReader()
    pending = asyncio.ensure_future(conn.request(b"POST / HTTP/1.1\r\n\r\n", reader))
    await asyncio.sleep(0)
    for i in range(0, len(raw), piece):
        conn.data_received(raw[i : i + piece])
    resp = await pending
    assert resp.status == 200 and reader.contents == 2 and reader.terminal == "done"
    assert not transport.closed  # kept alive for the next request
    # A refusal with a sized body on the same connection: the body is kept, not read as events.
    refusal = b'{"error":"Busy.","code":"overloaded"}'
    pending = asyncio.ensure_future(conn.request(b"POST / HTTP/1.1\r\n\r\n", EventReader()))
    await asyncio.sleep(0)
    head = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n" % len(refusal)
    conn.data_received(head + refusal)
    resp = await pending
    assert (resp.status, resp.headers["retry-after"], resp.body) == (503, "1", refusal)


async def test_the_lean_client_fails_a_response_cut_by_the_server():
    from bench.timing import EventReader
    from bench.wire import Connection

    conn, transport = Connection(), FakeTransport()
    conn.connection_made(transport)
    pending = asyncio.ensure_future(conn.request(b"POST / HTTP/1.1\r\n\r\n", EventReader()))
    await asyncio.sleep(0)
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nda")
    conn.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        await pending


class Collect:
    """A reader that keeps the bytes."""

    def __init__(self) -> None:
        self.data = b""

    def feed(self, chunk: bytes, read_at: float) -> None:
        self.data += chunk


async def test_the_bench_upstream_streams_anthropic_events_on_a_kept_alive_connection():
    import json

    from bench.upstream import Scenario, Upstream
    from bench.wire import Connection, post_request
    from providers.sse import SSEDecoder

    upstream = Upstream({"t": Scenario(3, 0.002, stamped=True), "w": Scenario(2)})
    server = await asyncio.get_running_loop().create_server(upstream.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await Connection.open("127.0.0.1", port)
        answers = []
        for model in ("t", "w", "nope"):
            host, port, request = post_request(f"http://127.0.0.1:{port}/v1/messages", json.dumps({"model": model}).encode())
            reader = Collect()
            resp = await conn.request(request, reader)  # type: ignore[arg-type]
            answers.append((resp.status, [json.loads(p) for p in SSEDecoder().feed(reader.data)], resp.body))
        assert not conn.closed
        conn.close()
    finally:
        server.close()
    (status, events, _), (status_w, events_w, _), (status_nope, _, body) = answers
    assert status == status_w == 200 and status_nope == 404 and b"not_found_error" in body
    kinds = [e["type"] for e in events]
    assert kinds == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 3 + [
        "content_block_stop", "message_delta", "message_stop",
    ]
    stamps = [float(e["delta"]["text"]) for e in events if e["type"] == "content_block_delta"]
    assert stamps == sorted(stamps) and stamps[0] > 0  # times of writing, in order
    assert [e["delta"]["text"] for e in events_w if e["type"] == "content_block_delta"] == ["The", " quick"]
    assert events_w[-2]["usage"] == {"output_tokens": 2}
