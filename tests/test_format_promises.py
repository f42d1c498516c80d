"""What every wire format promises, whichever kind of client reads it: exactly one terminal event
and it is last, no text twice (a fallback before text is invisible), a client that leaves stops
the upstream, keep-alives while the model is silent, a shutdown ends open streams with the
format's own error, and storage only where the format has threads.

One entry per format: its route, a request body, and a strict reader of its raw bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.compat_wire import Read, read_chunks, read_message_events
from tests.conftest import ClientFactory, parse_events
from tests.fake_upstream import FakeUpstream, Scenario


def read_typed(body: bytes) -> Read:
    read, events = Read(), parse_events(body)
    for event in events:
        if event["type"] == "content":
            read.texts.append(event["text"])
        elif event["type"] == "done":
            read.terminals.append("done")
            read.model = event["model"]
        elif event["type"] == "error":
            read.terminals.append(f"error:{event['code']}")
    read.last_is_terminal = bool(events) and events[-1]["type"] in ("done", "error")
    return read


@dataclass(frozen=True)
class Format:
    name: str
    path: str
    body: Callable[[str], dict[str, Any]]  # from the user's text
    read: Callable[[bytes], Read]
    keepalive: bytes
    errors: dict[str, str]  # the service's error code -> how this format's terminal error reads
    stores_threads: bool

    def __str__(self) -> str:
        return self.name


USER = "Hi"
FORMATS = [
    Format("typed", "/ai/stream/chat", lambda text: {"messages": [{"role": "user", "content": text}]}, read_typed,
           b": ping\n\n", {"upstream_unavailable": "error:upstream_unavailable", "shutting_down": "error:shutting_down"},
           stores_threads=True),
    Format("openai", "/v1/chat/completions",
           lambda text: {"model": "ai-stream", "messages": [{"role": "user", "content": text}], "stream": True},
           read_chunks, b": ping\n\n",
           {"upstream_unavailable": "error:upstream_unavailable", "shutting_down": "error:shutting_down"},
           stores_threads=False),
    Format("anthropic", "/v1/messages",
           lambda text: {"model": "ai-stream", "max_tokens": 100, "messages": [{"role": "user", "content": text}],
                         "stream": True},
           read_message_events, b'event: ping\ndata: {"type":"ping"}\n\n',
           {"upstream_unavailable": "error:overloaded_error", "shutting_down": "error:overloaded_error"},
           stores_threads=False),
]
formats = pytest.mark.parametrize("wire", FORMATS, ids=str)


async def stream(client: Any, wire: Format, text: str = USER, **extra: Any) -> Read:
    resp = await client.post(wire.path, json={**wire.body(text), **extra})
    assert resp.status == 200 and resp.content_type == "text/event-stream", await resp.text()
    return wire.read(await resp.read())


@formats
async def test_one_terminal_event_last_when_done(client: Any, wire: Format) -> None:
    read = await stream(client, wire)
    assert read.terminals == ["done"] and read.last_is_terminal
    assert "".join(read.texts) == "Hello, world!" and read.model == "claude-primary"


@formats
async def test_one_terminal_event_last_when_failing_mid_answer(client: Any, wire: Format, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("claude-primary", Scenario(kind="stream_error", after_tokens=2))
    read = await stream(client, wire)
    assert read.terminals == [wire.errors["upstream_unavailable"]] and read.last_is_terminal
    assert read.texts == ["Hello", ","]  # kept, and not continued elsewhere
    assert fake_upstream.requests_for("claude-backup") == []


@formats
async def test_one_terminal_event_last_when_every_model_fails(client: Any, wire: Format, fake_upstream: FakeUpstream) -> None:
    for name in ("claude-primary", "claude-backup", "gpt-fallback"):
        fake_upstream.script(name, Scenario(kind="http_error", status=529))
    read = await stream(client, wire)
    assert read.terminals == [wire.errors["upstream_unavailable"]] and read.last_is_terminal and read.texts == []


@formats
async def test_no_text_twice_across_a_fallback(client: Any, wire: Format, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("claude-primary", Scenario(kind="stream_error"))  # fails before its text
    fake_upstream.script("claude-backup", Scenario(kind="drop"))
    fake_upstream.script("gpt-fallback", Scenario(tokens=["one", " two", " three"]))
    read = await stream(client, wire)
    assert read.texts == ["one", " two", " three"] and read.terminals == ["done"]
    assert read.model == "gpt-fallback"


@formats
async def test_client_leaving_stops_the_upstream(client: Any, wire: Format, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("claude-primary", Scenario(tokens=["tok"] * 200, token_delay=0.05))
    resp = await client.post(wire.path, json=wire.body(USER))
    await resp.content.readuntil(b"\n\n")
    resp.close()
    record = await fake_upstream.wait_for_disconnect(timeout=1.0)
    assert record.model == "claude-primary" and fake_upstream.active_streams == 0


@formats
async def test_keepalive_while_the_model_is_silent(make_client: ClientFactory, wire: Format, fake_upstream: FakeUpstream) -> None:
    client = await make_client(keepalive_interval=0.1)
    fake_upstream.script("claude-primary", Scenario(first_token_delay=0.45))
    resp = await client.post(wire.path, json=wire.body(USER))
    body = await resp.read()
    assert body.count(wire.keepalive) >= 2
    read = wire.read(body)
    assert read.terminals == ["done"] and read.last_is_terminal and "".join(read.texts) == "Hello, world!"


@formats
async def test_shutdown_ends_open_streams_with_the_formats_error(
    make_client: ClientFactory, wire: Format, fake_upstream: FakeUpstream
) -> None:
    client = await make_client(shutdown_grace=0.1)
    fake_upstream.script("claude-primary", Scenario(kind="stall", after_tokens=1))
    resp = await client.post(wire.path, json=wire.body(USER))
    first = await resp.content.readuntil(b"\n\n")
    while b"Hello" not in first:  # the format's opening events, then the first text
        first += await resp.content.readuntil(b"\n\n")
    await asyncio.wait_for(client.app.shutdown(), 5)  # on_shutdown: what SIGTERM runs, grace included
    read = wire.read(first + await resp.read())
    assert read.texts == ["Hello"]
    assert read.terminals == [wire.errors["shutting_down"]] and read.last_is_terminal


@formats
async def test_storage_only_where_the_format_has_threads(client: Any, wire: Format) -> None:
    read = await stream(client, wire, thread_id="promise-thread")
    assert read.terminals == ["done"]
    page = await client.get("/ai/threads/promise-thread/messages")
    if wire.stores_threads:
        assert page.status == 200
        assert [m["content"] for m in (await page.json())["messages"]] == [USER, "Hello, world!"]
    else:
        assert page.status == 404  # a `thread_id` in such a body is not a thread
