"""Shared fixtures: a fake upstream on localhost and the real app built by its factory."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.settings import Settings, load_settings
from tests.fake_fixtures import fake_upstream  # noqa: F401
from tests.fake_upstream import FakeUpstream

ANTHROPIC_KEY = "sk-ant-test-0123456789-secret"
OPENAI_KEY = "sk-openai-test-9876543210-secret"
MODELS = "anthropic/claude-primary,anthropic/claude-backup,openai/gpt-fallback"

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Tests configure the service explicitly; nothing leaks in from the machine's environment."""
    for name in list(os.environ):
        if name.startswith(("AI_", "ANTHROPIC_", "OPENAI_")) or name in ("DATABASE_URL", "REDIS_URL", "HOST", "PORT"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file, and the default SQLite file lands here


@pytest.fixture
def make_settings(fake_upstream: FakeUpstream) -> Callable[..., Settings]:  # noqa: F811
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "models": MODELS,
            "anthropic_api_key": ANTHROPIC_KEY,
            "anthropic_base_url": fake_upstream.base_url,
            "openai_api_key": OPENAI_KEY,
            "openai_base_url": fake_upstream.openai_base_url,
            "first_token_timeout": 2.0,
            "request_timeout": 10.0,
            "log_format": "json",
            # A test machine's loop lags with whatever else runs on it: tests of shedding set their own.
            "shed_loop_lag_ms": 0,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def make_client(aiohttp_client: Any, make_settings: Callable[..., Settings]) -> ClientFactory:
    async def make(**overrides: Any) -> TestClient[web.Request, web.Application]:
        return await aiohttp_client(create_app(make_settings(**overrides)))  # type: ignore[no-any-return]

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[web.Request, web.Application]:
    return await make_client()


def sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """`(id, data)` of each event of an SSE body, checking the framing as a strict line reader
    would: an optional `id:` line first, then exactly one `data:` line; keep-alive comments
    (lines starting with `:`) skipped."""
    events: list[tuple[str | None, str]] = []
    for block in body.decode().split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            continue  # keep-alive comment
        event_id = None
        if lines[0].startswith("id: "):
            event_id = lines.pop(0)[len("id: ") :]
        assert len(lines) == 1 and lines[0].startswith("data: "), f"unexpected SSE block {block!r}"
        events.append((event_id, lines[0][len("data: ") :]))
    assert body.endswith(b"\n\n"), "the stream must end after a complete event"
    return events


def event_ids(body: bytes) -> list[tuple[str, int]]:
    """`(answer id, seq)` of each event, checked: every event has one, all of one answer, the
    numbers consecutive (from wherever the body starts: a resume starts after its Last-Event-ID)."""
    ids = []
    for event_id, _ in sse_events(body):
        assert event_id is not None, "every event carries an id"
        answer_id, sep, seq = event_id.rpartition(":")
        assert sep and answer_id and seq.isdigit(), event_id
        ids.append((answer_id, int(seq)))
    assert len({answer for answer, _ in ids}) <= 1, ids
    assert [seq for _, seq in ids] == list(range(ids[0][1], ids[0][1] + len(ids))) if ids else True, ids
    return ids


def numbered(answer_id: str, events: list[bytes]) -> bytes:
    """The events as the stream sends them: each after its `id: <answer id>:<seq>` line, the
    answer id filled in where an event names it."""
    ident = answer_id.encode()
    return b"".join(b"id: %s:%d\n" % (ident, seq) + event.replace(b"%s", ident) for seq, event in enumerate(events, 1))


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """The events of a typed event stream, with the framing and the event ids checked."""
    event_ids(body)
    return [json.loads(data) for _, data in sse_events(body)]


from tests.storage_fixtures import fresh_target, pg_url, store, store_target  # noqa: E402, F401
