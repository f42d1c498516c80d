"""Small promises that were broken: a refused connection is `upstream_unavailable`, an HTTP/1.0
stream ends its connection, and an answer's end feeds the metrics however it ended."""

from __future__ import annotations

import asyncio
import socket

from tests.fake_upstream import Scenario
from tests.test_metrics import scrape, value


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens here once the socket is closed


async def test_a_refused_connection_is_upstream_unavailable_for_both_dialects(make_client):
    dead = f"http://127.0.0.1:{_closed_port()}"
    for models, base_urls in (
        ("openai/gpt-fallback", {"openai_base_url": dead + "/v1"}),
        ("anthropic/claude-primary", {"anthropic_base_url": dead}),
    ):
        client = await make_client(models=models, **base_urls)
        resp = await client.post("/ai/stream/generate", json={"prompt": "x", "stream": False})
        body = await resp.json()
        assert (resp.status, body["code"]) == (503, "upstream_unavailable"), body
        await client.close()


async def test_http_1_0_stream_ends_its_connection_after_the_terminal_event(client):
    reader, writer = await asyncio.open_connection(client.host, client.port)
    body = b'{"prompt": "x"}'
    writer.write(
        b"POST /ai/stream/generate HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    async with asyncio.timeout(10):  # the server closes: read() returns at the end, not after 75 s
        answer = await reader.read()
    writer.close()
    head, _, events = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"Connection: close" in head
    assert events.rstrip().endswith(b'"output_tokens":4},"answer_id":"' + answer_id_of(head) + b'"}')


async def test_fallbacks_are_counted_when_the_client_leaves(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529))
    fake_upstream.script("claude-backup", Scenario(tokens=["a"] * 200, token_delay=0.05))
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
    await resp.content.readuntil(b"\n\n")  # the backup has started answering
    resp.close()
    await fake_upstream.wait_for_disconnect(timeout=2.0)
    for _ in range(100):  # the answer's end is recorded once its handler has finished
        m = await scrape(client)
        if value(m, "ai_stream_answers_total", outcome="client_gone", code=""):
            break
        await asyncio.sleep(0.02)
    assert value(m, "ai_stream_answers_total", outcome="client_gone", code="") == 1
    moves = [v for (name, labels), v in m.items()
             if name == "ai_stream_fallbacks_total" and ("from_model", "anthropic/claude-primary") in labels]
    assert sum(moves) == 1
    assert value(m, "ai_stream_upstream_errors_total", provider="anthropic", status="529", code="upstream_unavailable") == 1


def answer_id_of(head: bytes) -> bytes:
    """The X-Answer-ID of a response's head."""
    return next(line.partition(b": ")[2] for line in head.split(b"\r\n") if line.lower().startswith(b"x-answer-id:"))
