"""Once the headers are out, whatever raises ends the stream with one `error` event and a clean
end of the body: never a raw 500 inside the event stream, never a hang."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest
from aiohttp import web

from providers.base import Finish, Message, ModelRequest, StreamEvent, TextDelta
from service.answer import AnswerEnd, stream_answer
from service.app import create_app
from service.app_keys import IN_FLIGHT
from service.formats.typed_sse import TypedEvents
from service.outcome import Outcome, Receipt
from tests.conftest import parse_events
from tests.fake_upstream import Scenario


@pytest.mark.parametrize("model", ["claude-primary", "gpt-fallback"])
@pytest.mark.parametrize("one_write", [False, True])
async def test_text_with_a_lone_surrogate_is_repaired(client, fake_upstream, model, one_write):
    # A model (or a proxy) that sends half of a UTF-16 pair as a JSON escape: "bad\ud800".
    fake_upstream.script(model, Scenario(tokens=["ok ", "bad\ud800", " end"], one_write=one_write))
    resp = await client.post("/ai/stream/chat", json={"messages": [{"role": "user", "content": "x"}], "model": model})
    assert resp.status == 200
    body = await resp.read()
    events = parse_events(body)
    assert [e["type"] for e in events] == ["content", "content", "content", "done"]
    assert "".join(e["text"] for e in events[:-1]) == "ok bad\ufffd end"
    assert b"500 Internal Server Error" not in body


async def test_a_stored_answer_with_a_lone_surrogate_is_complete(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url)
    fake_upstream.script("claude-primary", Scenario(tokens=["bad\udfff"]))
    resp = await client.post("/ai/stream/chat", json={"messages": [{"role": "user", "content": "x"}], "thread_id": "t-s"})
    done = parse_events(await resp.read())[-1]
    assert done["type"] == "done" and done["persisted"] is True
    page = await (await client.get("/ai/threads/t-s/messages")).json()
    assert [(m["content"], m["status"]) for m in page["messages"]] == [("x", "complete"), ("bad\ufffd", "complete")]


ANSWER_ID = "msg_" + "0" * 32


class _BrokenAfterText:
    """A provider with a bug that shows only after its first text (as a bad encoding or a
    broken invariant would)."""

    name = "broken/after-text"

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        yield TextDelta("partial")
        raise self.error


class _Finishes:
    name = "fine/model"

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        yield TextDelta("whole answer")
        yield Finish("fine-model", "fine", "end_turn")


def _app_with(make_settings, provider, store=None) -> web.Application:
    """The service's app with one extra route that streams `provider` through the real relay."""
    app = create_app(make_settings())

    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream_answer(
            request,
            provider,
            ModelRequest(messages=(Message("user", "x"),), max_tokens=5),
            TypedEvents(),
            AnswerEnd(request, store),
            deadline=5,
            ping_interval=15,
            in_flight=request.app[IN_FLIGHT],
            answer_id=ANSWER_ID,
        )

    app.router.add_post("/ai/test/relay", handler)
    return app


@pytest.mark.parametrize("error", [RuntimeError("a bug"), UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates"), KeyError("k")])
async def test_a_fault_after_the_headers_ends_with_one_error_event(aiohttp_client, make_settings, error):
    client = await aiohttp_client(_app_with(make_settings, _BrokenAfterText(error)))
    resp = await client.post("/ai/test/relay", json={})
    assert resp.status == 200
    async with asyncio.timeout(5):  # the body ends: no hang until a proxy's timeout
        body = await resp.read()
    events = parse_events(body)
    assert events == [
        {"type": "content", "text": "partial", "answer_id": ANSWER_ID},
        {"type": "error", "error": "Something went wrong on our side.", "code": "internal_error", "answer_id": ANSWER_ID},
    ]
    assert b"Traceback" not in body and b"a bug" not in body
    assert len(client.app[IN_FLIGHT]) == 0


async def test_a_store_that_raises_still_ends_the_stream_once(aiohttp_client, make_settings):
    stored: list[Outcome] = []

    async def store(outcome: Outcome) -> Receipt:
        stored.append(outcome)
        raise RuntimeError("the store broke in a way nobody foresaw")

    client = await aiohttp_client(_app_with(make_settings, _Finishes(), store))
    resp = await client.post("/ai/test/relay", json={})
    events = parse_events(await resp.read())
    assert [e["type"] for e in events] == ["content", "error"]
    assert events[-1]["code"] == "internal_error"
    assert len(stored) == 1  # the answer's end ran once


async def test_the_log_line_and_metrics_see_the_fault(aiohttp_client, make_settings):
    client = await aiohttp_client(_app_with(make_settings, _BrokenAfterText(RuntimeError("bug"))))
    resp = await client.post("/ai/test/relay", json={})
    await resp.read()
    metrics = await (await client.get("/metrics")).text()
    assert 'ai_stream_answers_total{code="internal_error",outcome="error"} 1.0' in metrics
