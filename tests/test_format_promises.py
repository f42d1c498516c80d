"""The relay's promises, once for every wire format: exactly one terminal event and it is last,
no duplicated text, a disconnect closes the upstream request within a second, keep-alive while
the model is silent, shutdown ends open streams with the format's error, the answer is stored,
an overloaded service refuses new answers in the format's own error shape before any upstream
call.

Each format is one `WireCase`: its route, how a body asks a question (optionally on a stored
thread), and a parser that turns its bytes into the same neutral events. A new format joins
the suite with one entry in `CASES`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from service.app import create_app
from service.outcome import SHUTDOWN_MESSAGE
from tests.compat_wire import DONE as CHUNKS_DONE
from tests.compat_wire import parse_chunks, parse_message_events
from tests.conftest import parse_events, sse_events
from tests.fake_upstream import Scenario
from tests.ui_stream import DONE, parse_ui_chunks

# A neutral event: ("text", piece), ("done", {"model", "message_id"}), ("error", sentence) or
# ("other", type) for a format's framing events.
Event = tuple[str, Any]


@dataclass(frozen=True)
class WireCase:
    name: str
    path: str
    body: Callable[[str, str | None], dict[str, Any]]  # (question, thread id or None) -> body
    parse: Callable[[bytes], list[Event]]
    first_text: bytes  # what only an event that carries text holds on the wire
    keepalive: bytes = b": ping\n\n"
    stores_threads: bool = True
    resumable: bool = True  # its events are numbered and its answers may be resumed


def typed_body(question: str, thread: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": question}]}
    return {**body, "thread_id": thread} if thread else body


def typed_parse(raw: bytes) -> list[Event]:
    events: list[Event] = []
    for event in parse_events(raw):
        if event["type"] == "content":
            events.append(("text", event["text"]))
        elif event["type"] == "done":
            events.append(("done", {"model": event["model"], "message_id": event.get("message_id")}))
        elif event["type"] == "error":
            events.append(("error", event["error"]))
        else:
            events.append(("other", event["type"]))
    return events


def ui_body(question: str, thread: str | None) -> dict[str, Any]:
    message = {"id": "q1", "role": "user", "parts": [{"type": "text", "text": question}]}
    return {"id": thread or "unstored", "messages": [message], "trigger": "submit-message", "store": thread is not None}


def ui_parse(raw: bytes) -> list[Event]:
    chunks = parse_ui_chunks(raw)
    # `[DONE]` closes the stream exactly once, right after its terminal chunk.
    assert chunks.count(DONE) == 1 and chunks[-1] == DONE, chunks
    events: list[Event] = []
    message_id = None
    for chunk in chunks[:-1]:
        assert isinstance(chunk, dict)
        kind = chunk["type"]
        if kind == "start":
            message_id = chunk["messageId"]
            events.append(("other", kind))
        elif kind == "text-delta":
            events.append(("text", chunk["delta"]))
        elif kind == "finish":
            events.append(("done", {"model": chunk["messageMetadata"]["model"], "message_id": message_id}))
        elif kind == "error":
            events.append(("error", chunk["errorText"]))
        else:
            events.append(("other", kind))
    return events


def openai_body(question: str, thread: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "ai-stream", "messages": [{"role": "user", "content": question}], "stream": True}
    return {**body, "thread_id": thread} if thread else body  # not a thread there: ignored


def openai_parse(raw: bytes) -> list[Event]:
    events: list[Event] = []
    model = None
    for chunk in parse_chunks(raw):
        if chunk == CHUNKS_DONE:
            events.append(("done", {"model": model, "message_id": None}))
        elif "error" in chunk:
            events.append(("error", chunk["error"]["message"]))
        else:
            model = chunk["model"]
            for choice in chunk["choices"]:
                if content := choice["delta"].get("content"):
                    events.append(("text", content))
            events.append(("other", "chunk"))
    return events


def anthropic_body(question: str, thread: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "ai-stream", "max_tokens": 100, "messages": [{"role": "user", "content": question}],
                            "stream": True}
    return {**body, "thread_id": thread} if thread else body


def anthropic_parse(raw: bytes) -> list[Event]:
    events: list[Event] = []
    model = None
    for event in parse_message_events(raw):
        kind = event["type"]
        if kind == "message_start":
            model = event["message"]["model"]
        if kind == "content_block_delta":
            events.append(("text", event["delta"]["text"]))
        elif kind == "message_stop":
            events.append(("done", {"model": model, "message_id": None}))
        elif kind == "error":
            events.append(("error", event["error"]["message"]))
        else:
            events.append(("other", kind))
    return events


CASES = [
    WireCase("typed", "/ai/stream/chat", typed_body, typed_parse, b'data: {"type":"content"'),
    WireCase("ui", "/ai/ui/chat", ui_body, ui_parse, b'data: {"type":"text-delta"'),
    WireCase("openai", "/v1/chat/completions", openai_body, openai_parse, b'"delta":{"content":', stores_threads=False,
             resumable=False),
    WireCase("anthropic", "/v1/messages", anthropic_body, anthropic_parse, b"event: content_block_delta",
             keepalive=b'event: ping\ndata: {"type":"ping"}\n\n', stores_threads=False, resumable=False),
]


@pytest.fixture(params=CASES, ids=[case.name for case in CASES])
def wire(request: pytest.FixtureRequest) -> WireCase:
    return request.param  # type: ignore[no-any-return]


# The formats whose events are numbered and can be resumed (the compatible formats are the SDKs'
# own: not numbered, not resumable).
RESUMABLE_CASES = [case for case in CASES if case.resumable]


@pytest.fixture(params=RESUMABLE_CASES, ids=[case.name for case in RESUMABLE_CASES])
def resumable_wire(request: pytest.FixtureRequest) -> WireCase:
    return request.param  # type: ignore[no-any-return]


def terminal(events: list[Event]) -> Event:
    ends = [event for event in events if event[0] in ("done", "error")]
    assert len(ends) == 1, events
    assert events[-1] == ends[0], events
    return ends[0]


def text(events: list[Event]) -> str:
    return "".join(piece for kind, piece in events if kind == "text")


async def ask(client: Any, wire: WireCase, question: str = "x", thread: str | None = None) -> list[Event]:
    resp = await client.post(wire.path, json=wire.body(question, thread))
    assert resp.status == 200, await resp.text()
    return wire.parse(await resp.read())


SCENARIOS = {
    "ok": ({"claude-primary": Scenario(tokens=["one", " two", " three"])}, "done", "one two three"),
    "fallback-before-text": (
        {"claude-primary": Scenario(kind="http_error", status=529), "claude-backup": Scenario(tokens=["only", " this"])},
        "done", "only this",
    ),
    "error-before-text": ({m: Scenario(kind="http_error", status=503) for m in ("claude-primary", "claude-backup", "gpt-fallback")}, "error", ""),
    "error-after-text": ({"claude-primary": Scenario(tokens=["a", "b", "c"], kind="stream_error", after_tokens=2)}, "error", "ab"),
    "drop-after-text": ({"claude-primary": Scenario(tokens=["a", "b", "c"], kind="drop", after_tokens=1)}, "error", "a"),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_one_terminal_event_last_and_no_duplicated_text(client, fake_upstream, wire, scenario):
    scripts, ending, expected = SCENARIOS[scenario]
    for model, played in scripts.items():
        fake_upstream.script(model, played)
    events = await ask(client, wire)
    assert terminal(events)[0] == ending
    assert text(events) == expected


async def test_disconnect_closes_the_upstream_within_a_second(client, fake_upstream, wire):
    fake_upstream.script("claude-primary", Scenario(tokens=["tok"] * 200, token_delay=0.05))
    resp = await client.post(wire.path, json=wire.body("x", None))
    while wire.first_text not in await resp.content.readuntil(b"\n\n"):
        pass
    resp.close()
    record = await fake_upstream.wait_for_disconnect(timeout=1.0)
    assert record.model == "claude-primary"


async def test_keepalive_while_the_model_is_silent(make_client, fake_upstream, wire):
    client = await make_client(keepalive_interval=0.1)
    fake_upstream.script("claude-primary", Scenario(tokens=["late"], first_token_delay=0.6))
    resp = await client.post(wire.path, json=wire.body("x", None))
    raw = await resp.read()
    before_text = raw[: raw.index(wire.first_text)]
    assert wire.keepalive in before_text
    events = wire.parse(raw)
    assert terminal(events)[0] == "done" and text(events) == "late"


async def test_shutdown_ends_open_streams_with_the_formats_error(make_client, fake_upstream, wire):
    client = await make_client(shutdown_grace=0.2)
    fake_upstream.script("claude-primary", Scenario(tokens=["started", " never"], kind="stall", after_tokens=1))
    resp = await client.post(wire.path, json=wire.body("x", None))
    head = b""
    while wire.first_text not in head:
        head += await resp.content.readuntil(b"\n\n")
    reading = asyncio.ensure_future(resp.read())
    await client.app.shutdown()
    events = wire.parse(head + await asyncio.wait_for(reading, 10))
    assert terminal(events) == ("error", SHUTDOWN_MESSAGE)
    assert text(events).startswith("started")


async def test_the_answer_is_stored_under_the_id_the_stream_names(make_client, store_target, fake_upstream, wire):
    client = await make_client(database_url=store_target.url)
    fake_upstream.script("claude-primary", Scenario(tokens=["kept", " answer"]))
    events = await ask(client, wire, "store me", thread="promise-1")
    kind, done = terminal(events)
    if not wire.stores_threads:  # a `thread_id` in such a body is not a thread: nothing is stored
        assert kind == "done"
        assert await store_target.fetch("SELECT id FROM messages") == []
        return
    assert kind == "done" and done["message_id"]
    rows = await store_target.fetch("SELECT id, role, content, status, model FROM messages ORDER BY seq")
    assert [row[1:] for row in rows] == [
        ("user", "store me", "complete", None),
        ("assistant", "kept answer", "complete", "claude-primary"),
    ]
    assert rows[1][0] == done["message_id"]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("cut_after", [1, 3])
async def test_a_resumed_stream_keeps_the_same_promises(client, fake_upstream, resumable_wire, scenario, cut_after):
    """Cut after `cut_after` events and resumed with `Last-Event-ID`: what the client holds in
    the end is one stream, as if never cut (one terminal event, last; no text twice)."""
    wire = resumable_wire
    scripts, ending, expected = SCENARIOS[scenario]
    for model, played in scripts.items():
        fake_upstream.script(model, played)
    resp = await client.post(wire.path, json={**wire.body("x", None), "resumable": True})
    assert resp.status == 200
    head = b""
    while len(sse_events(head) if head else []) < cut_after and not resp.content.at_eof():
        head += await resp.content.readuntil(b"\n\n")
    resp.close()
    last = sse_events(head)[-1][0]
    again = await client.get(f"/ai/stream/answers/{resp.headers['X-Answer-ID']}", headers={"Last-Event-ID": last})
    assert again.status in (200, 204)  # 204: the cut came after the terminal event
    events = wire.parse(head + (await again.read() if again.status == 200 else b""))
    assert terminal(events)[0] == ending
    assert text(events) == expected


# --- overload ---------------------------------------------------------------------------------

# What each format's client reads from a refusal before any answer starts: the code, by format.
REFUSAL_CODE: dict[str, Callable[[dict[str, Any]], str]] = {
    "typed": lambda body: body["code"],
    "ui": lambda body: body["code"],
    "openai": lambda body: body["error"]["code"],  # OpenAI's shape: {"error": {"message", "type", "param", "code"}}
    "anthropic": lambda body: body["error"]["type"],  # Anthropic's shape: {"type": "error", "error": {"type", "message"}}
}
REFUSED = {"typed": "overloaded", "ui": "overloaded", "openai": "overloaded", "anthropic": "overloaded_error"}


class SetLag:
    """The event loop's lag as the test says it is (the app measures its own otherwise)."""

    lag_ms = 0.0


async def test_overload_refuses_new_answers_before_any_upstream_call(aiohttp_client, make_settings, fake_upstream, wire):
    lag = SetLag()
    client = await aiohttp_client(create_app(make_settings(shed_loop_lag_ms=100), loop_lag=lag))
    fake_upstream.script("claude-primary", Scenario(tokens=["one", " two", " three"], token_delay=0.1),
                         Scenario(tokens=["back"]))
    already_open = await client.post(wire.path, json=wire.body("first", None))
    head = b""
    while wire.first_text not in head:
        head += await already_open.content.readuntil(b"\n\n")
    asked = len(fake_upstream.requests)

    lag.lag_ms = 500  # past the threshold: the service is overloaded
    refused = await client.post(wire.path, json=wire.body("second", None))
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    assert REFUSAL_CODE[wire.name](await refused.json()) == REFUSED[wire.name]
    assert len(fake_upstream.requests) == asked  # refused before any model was called

    # The answer accepted before goes on to its end.
    events = wire.parse(head + await already_open.read())
    assert terminal(events)[0] == "done" and text(events) == "one two three"

    lag.lag_ms = 1  # the lag fell: new answers are accepted again
    events = await ask(client, wire, "third")
    assert terminal(events)[0] == "done" and text(events) == "back"
