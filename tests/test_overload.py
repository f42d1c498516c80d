"""Overload is shed, not suffered: while the event loop lags past AI_SHED_LOOP_LAG_MS, new answers
are refused up front (503 `overloaded`, `Retry-After`), before their body is read or any model is
called; answers already streaming go on, /health and /metrics always answer, and an episode is
logged once; a resume of an answer already accepted is never refused. (Each wire format's
refusal is in tests/test_format_promises.py.)

Nothing here depends on the machine's speed: the lag is either set by the test (`SetLag`) or made
by blocking the loop for longer than any threshold used, so a slower machine only lags more.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from service.app import create_app
from service.app_keys import OVERLOAD
from service.overload import WINDOW, LoopLag
from tests.conftest import parse_events
from tests.fake_upstream import Scenario
from tests.support.resume import TOKENS, joined, last_event_id, read_events, turn, typed_text

GEN = "/ai/stream/generate"


class SetLag:
    """The event loop's lag as the test says it is."""

    lag_ms = 0.0


class Blocker:
    """Keeps the running loop busy: `seconds` of blocking, a few milliseconds free, and again,
    until stopped. Every sleep of the lag monitor (shorter than a block) wakes at least
    `seconds - SAMPLE_INTERVAL` late, however fast the machine."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._handle: asyncio.TimerHandle | None = None

    def _block(self) -> None:
        time.sleep(self.seconds)
        self._handle = asyncio.get_running_loop().call_later(0.005, self._block)

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(0.005, self._block)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def test_one_pause_is_no_overload_but_a_lasting_lag_is() -> None:
    lag = LoopLag()
    lag.observe(5000)  # one pause, however long: a collection, a large body, start-up
    for _ in range(WINDOW - 1):
        lag.observe(1)
    assert lag.lag_ms == 1
    for sample in (400, 300, 500):  # most of the recent samples late: the loop lags
        lag.observe(sample)
    assert lag.lag_ms >= 300


async def test_the_monitor_measures_a_blocked_loop() -> None:
    lag = LoopLag()
    task = asyncio.create_task(lag.run())
    blocker = Blocker(0.3)
    blocker.start()
    try:
        seen = lag.samples
        while lag.samples < seen + WINDOW + 1:
            await asyncio.sleep(0.01)
        assert lag.lag_ms >= 200  # each sleep of 50 ms overshot by at least 300 - 50 - 5 ms
    finally:
        blocker.stop()
        task.cancel()


async def _wait_for(condition: Any, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_lagging_loop_sheds_new_answers_and_recovers(aiohttp_client, make_settings, fake_upstream):
    client = await aiohttp_client(create_app(make_settings(shed_loop_lag_ms=100, request_timeout=60)))
    overload = client.app[OVERLOAD]
    fake_upstream.script("claude-primary", Scenario(tokens=["a", "b", "c", "d"], token_delay=0.05), Scenario(tokens=["again"]))
    already_open = await client.post(GEN, json={"prompt": "x"})
    first = await already_open.content.readuntil(b"\n\n")
    asked = len(fake_upstream.requests)

    blocker = Blocker(0.3)
    blocker.start()
    try:
        await _wait_for(lambda: overload.overloaded)
        refused = await client.post(GEN, json={"prompt": "y"})
        assert refused.status == 503 and refused.headers["Retry-After"] == "1"
        assert (await refused.json())["code"] == "overloaded"
        health = await (await client.get("/health")).json()  # never shed
        assert health["overloaded"] is True and health["loop_lag_ms"] >= 100
        assert health["status"] == "ok"  # overload is no degradation
    finally:
        blocker.stop()
    assert len(fake_upstream.requests) == asked  # no model was asked for the refused answer

    events = parse_events(first + await already_open.read())
    assert events[-1]["type"] == "done" and "".join(e.get("text", "") for e in events) == "abcd"

    await _wait_for(lambda: not overload.overloaded)
    events = parse_events(await (await client.post(GEN, json={"prompt": "z"})).read())
    assert events[-1]["type"] == "done" and events[0]["text"] == "again"


async def test_health_metrics_and_other_routes_are_never_shed(aiohttp_client, make_settings, fake_upstream):
    lag = SetLag()
    client = await aiohttp_client(
        create_app(make_settings(shed_loop_lag_ms=50, api_keys="frontend:0123456789abcdef-secret"), loop_lag=lag)
    )
    lag.lag_ms = 75.44
    refused = await client.post(GEN, json={"prompt": "x"})  # no key: refused before the key is even looked at
    assert refused.status == 503 and (await refused.json())["code"] == "overloaded"
    health = await client.get("/health")
    assert health.status == 200
    body = await health.json()
    assert (body["status"], body["overloaded"], body["loop_lag_ms"]) == ("ok", True, 75.4)
    metrics = await client.get("/metrics")
    assert metrics.status == 200
    assert "ai_stream_shed_requests_total 1.0" in await metrics.text()
    auth = {"Authorization": "Bearer 0123456789abcdef-secret"}
    assert (await client.get("/ai/threads", headers=auth)).status == 200  # reading is no new answer
    assert (await client.get("/ai/status", headers=auth)).status == 200
    assert fake_upstream.requests == []


async def test_an_episode_is_logged_once_and_ends_under_half_the_threshold(aiohttp_client, make_settings):
    lag = SetLag()
    client = await aiohttp_client(create_app(make_settings(shed_loop_lag_ms=100), loop_lag=lag))
    with structlog.testing.capture_logs() as logs:
        lag.lag_ms = 150
        for _ in range(3):
            assert (await client.post(GEN, json={"prompt": "x"})).status == 503
        lag.lag_ms = 60  # under the threshold, not yet under half of it: the episode goes on
        assert (await client.post(GEN, json={"prompt": "x"})).status == 503
        lag.lag_ms = 40
        accepted = await client.post(GEN, json={"prompt": "x"})
        assert accepted.status == 200
        await accepted.read()
    episodes = [entry for entry in logs if entry["event"] in ("overloaded", "overload_ended")]
    assert [(e["event"], e["log_level"]) for e in episodes] == [("overloaded", "warning"), ("overload_ended", "info")]
    assert episodes[0]["loop_lag_ms"] == 150 and episodes[0]["threshold_ms"] == 100
    assert episodes[1]["refused"] == 4
    # One line per request as always, at info: the episode's is the only warning.
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["overloaded"]
    assert [e["status"] for e in logs if e["event"] == "request"] == [503, 503, 503, 503, 200]


async def test_a_refusal_does_not_wait_for_the_body(aiohttp_client, make_settings):
    lag = SetLag()
    client = await aiohttp_client(create_app(make_settings(shed_loop_lag_ms=100), loop_lag=lag))
    lag.lag_ms = 1000
    reader, writer = await asyncio.open_connection(client.host, client.port)
    # The body is announced and never sent: reading it would wait for AI_BODY_TIMEOUT.
    writer.write(b"POST /ai/stream/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n{\"prompt\": ")
    await writer.drain()
    async with asyncio.timeout(5):
        status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 503")
    writer.close()


async def test_no_shedding_with_the_threshold_at_zero(aiohttp_client, make_settings):
    lag = SetLag()
    client = await aiohttp_client(create_app(make_settings(shed_loop_lag_ms=0), loop_lag=lag))
    lag.lag_ms = 10_000
    assert (await client.post(GEN, json={"prompt": "x"})).status == 200
    assert (await (await client.get("/health")).json())["overloaded"] is False


async def test_a_resume_of_an_accepted_answer_is_never_shed(aiohttp_client, make_settings, fake_upstream, store_target):
    lag = SetLag()
    client = await aiohttp_client(create_app(make_settings(shed_loop_lag_ms=100, database_url=store_target.url), loop_lag=lag))
    fake_upstream.script("claude-primary", Scenario(tokens=TOKENS, token_delay=0.02))
    resp = await client.post("/ai/stream/chat", json=turn())
    answer_id = resp.headers["X-Answer-ID"]
    first = await read_events(resp, 3)
    resp.close()  # the network goes away; the answer goes on
    lag.lag_ms = 500
    assert (await client.post("/ai/stream/chat", json=turn(thread_id="t-2"))).status == 503  # a new answer is shed
    again = await client.get(f"/ai/stream/answers/{answer_id}", headers={"Last-Event-ID": last_event_id(first)})
    assert again.status == 200  # the accepted one is not
    assert typed_text(joined(first, await again.read())) == "".join(TOKENS)
