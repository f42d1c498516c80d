"""A store that fails mid-turn loses nothing and tells the truth: every failure is a documented
503 before streaming or `persisted: false` after, and no row is left `pending`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import aiohttp
import asyncpg
import pytest

from service.app_keys import STORAGE
from storage import Owner, Store, Turn
from tests.conftest import parse_events
from tests.fake_upstream import Scenario
from tests.storage_fixtures import StoreTarget, TcpProxy, with_address
from tests.support.prompts import conversation


def turn(content: str, thread_id: str = "t-1") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "thread_id": thread_id}


class CommitsThenFails:
    """A store whose `begin_turn` commits and then raises what asyncpg raises when the server
    goes away between the commit and the connection's release: the caller cannot know the
    turn was stored."""

    def __init__(self, store: Store, error: Exception) -> None:
        self._store = store
        self._error = error
        self.backend = store.backend
        self.calls = 0

    async def begin_turn(self, *args: Any, **kwargs: Any) -> Turn:
        self.calls += 1
        await self._store.begin_turn(*args, **kwargs)
        raise self._error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def pending_rows(target: StoreTarget) -> list[tuple[Any, ...]]:
    return await target.fetch("SELECT id, status FROM messages WHERE status = 'pending'")


async def wait_until_no_pending(target: StoreTarget, timeout: float = 20.0) -> list[tuple[Any, ...]]:
    """Poll (bounded) until the backlog has closed every reserved answer."""
    async with asyncio.timeout(timeout):
        while rows := await pending_rows(target):
            await asyncio.sleep(0.05)
    return rows


@pytest.mark.parametrize(
    "error", [asyncpg.InternalClientError("connection lost during release"), RuntimeError("driver state")]
)
async def test_a_turn_committed_but_reported_failed_leaves_no_pending_row(make_client, store_target, fake_upstream, error):
    client = await make_client(database_url=store_target.url)
    state = client.app[STORAGE]
    state.store = CommitsThenFails(state.store, error)  # type: ignore[assignment]
    resp = await client.post("/ai/stream/chat", json=turn("hello"))
    assert resp.status == 503
    body = await resp.json()
    assert body["code"] == "storage_unavailable" and resp.headers["Retry-After"] == "5"
    assert fake_upstream.requests == []  # never sent upstream: the client was told to retry
    await wait_until_no_pending(store_target)
    rows = await store_target.fetch("SELECT role, content, status FROM messages ORDER BY seq")
    # The turn did commit; its reserved answer is closed as an error with no text, which is
    # never replayed.
    assert rows == [("user", "hello", "complete"), ("assistant", "", "error")]


async def test_retry_after_an_unknown_commit_does_not_replay_two_questions(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url)
    state = client.app[STORAGE]
    real = state.store
    state.store = CommitsThenFails(real, asyncpg.InternalClientError("lost"))  # type: ignore[assignment]
    assert (await client.post("/ai/stream/chat", json=turn("hello"))).status == 503
    await wait_until_no_pending(store_target)
    state.store = real
    resp = await client.post("/ai/stream/chat", json=turn("hello"))  # the client retries
    assert parse_events(await resp.read())[-1]["persisted"] is True
    sent = conversation(fake_upstream.requests_for("claude-primary")[0].body)
    assert sent == [{"role": "user", "content": "hello"}]


async def _threaded_chat(session: aiohttp.ClientSession, base: str, n: int) -> tuple[int, list[dict[str, Any]]]:
    async with session.post(f"{base}/ai/stream/chat", json=turn(f"question {n}", thread_id=f"load-{n % 10}")) as resp:
        body = await resp.read()
        return resp.status, parse_events(body) if resp.status == 200 else [json.loads(body)]


async def test_database_outage_under_concurrent_threaded_load(make_client, pg_url, fake_upstream):
    """The database goes away and comes back while 60 threaded chats run: only documented 503s,
    every stream has its one terminal event, and afterwards no row is `pending`."""
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    target = StoreTarget("postgresql", pg_url)
    await target.fetch("TRUNCATE threads, messages CASCADE")
    try:
        client = await make_client(
            database_url=with_address(pg_url, "127.0.0.1", proxy.port), storage_check_interval=0.1, request_timeout=3.0
        )
        for model in ("claude-primary",):
            fake_upstream.script(model, *[Scenario(tokens=["a", "b", "c"], token_delay=0.05) for _ in range(60)])
        base = str(client.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(_threaded_chat(session, base, n)) for n in range(60)]
            await asyncio.sleep(0.15)
            await proxy.stop()  # cuts every open connection: some commits land, some do not
            await asyncio.sleep(0.5)
            await proxy.start()
            results = await asyncio.gather(*tasks)
        statuses = {status for status, _ in results}
        assert statuses <= {200, 503}, statuses
        for status, events in results:
            if status == 200:
                terminal = [e for e in events if e["type"] in ("done", "error")]
                assert len(terminal) == 1 and events[-1] is terminal[0], events
            else:
                assert events[0]["code"] == "storage_unavailable"
        assert await wait_until_no_pending(target) == []
    finally:
        await proxy.stop()


async def test_unreachable_store_during_partial_saves_changes_nothing(make_client, store_target, fake_upstream):
    # Saving text in progress is insurance: when it fails, the answer is still stored at its end.
    client = await make_client(database_url=store_target.url, partial_flush_interval=0.05)
    state = client.app[STORAGE]

    class SaveFails:
        def __init__(self, store: Store) -> None:
            self._store = store
            self.attempts = 0

        async def save_partial(self, answers: Sequence[tuple[str, str]]) -> None:
            self.attempts += 1
            raise OSError("connection refused")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._store, name)

    failing = SaveFails(state.store)
    state.store = failing  # type: ignore[assignment]
    fake_upstream.script("claude-primary", Scenario(tokens=["x"] * 6, token_delay=0.05))
    resp = await client.post("/ai/stream/chat", json=turn("hi"))
    events = parse_events(await resp.read())
    assert events[-1]["persisted"] is True and failing.attempts >= 1
    stored = await failing._store.list_messages("t-1", Owner())
    assert [(m.content, m.status) for m in stored] == [("hi", "complete"), ("xxxxxx", "complete")]
