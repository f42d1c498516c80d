"""Helpers for thread tests over HTTP: turns, a settable clock, the app built with it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.app import create_app
from tests.conftest import parse_events


class Clock:
    """A clock the test moves by hand (`clock.now += timedelta(minutes=7)`)."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def turn(content: str, thread_id: str = "t-1", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "thread_id": thread_id, **extra}


async def chat(client: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of one streamed chat request (which must be answered 200)."""
    resp = await client.post("/ai/stream/chat", json=body)
    assert resp.status == 200, await resp.text()
    events = parse_events(await resp.read())
    assert [e["type"] in ("done", "error") for e in events].count(True) == 1, events
    return events


async def messages(client: Any, thread_id: str = "t-1", **params: Any) -> dict[str, Any]:
    resp = await client.get(f"/ai/threads/{thread_id}/messages", params=params)
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def app_client(aiohttp_client: Any, make_settings: Any, clock: Clock | None = None, **settings: Any) -> Any:
    """The app, built by its factory with `clock` (and `settings`), behind a test client."""
    return await aiohttp_client(create_app(make_settings(**settings), clock=clock or Clock()))
