"""Listing and naming threads, in the store and over HTTP, on SQLite and PostgreSQL alike:
titles from the first user message, newest activity first, paging, renames, ownership, bad
parameters and a store that is down."""

from __future__ import annotations

import base64
import sqlite3
from datetime import datetime

import asyncpg
import pytest

from storage import Owner, Store, ThreadNotFound, ThreadPosition, create_store
from storage.migrate import load_migrations
from storage.rows import thread_title
from tests.conftest import parse_events
from tests.storage_fixtures import StoreTarget

OWNER = Owner(key_name="key-a", user_id="user-1")
STORAGE_DOWN = "sqlite:////dev/null/ai-stream.db"  # cannot be created: the store never opens


async def ask(store: Store, thread: str, *questions: str, owner: Owner = OWNER) -> str:
    turn = await store.begin_turn(thread, owner, [("user", q) for q in questions], 50)
    assert await store.finish_assistant_message(
        turn.assistant_message_id, content="ok", status="complete", model="m", provider="p",
        stop_reason="end_turn", input_tokens=1, output_tokens=1,
    )
    return turn.assistant_message_id


# --- titles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "title"),
    [
        ([("user", "  Plan a   day\tin Lisbon \nwith kids")], "Plan a day in Lisbon"),
        ([("user", "\n\n   \nSecond line first")], "Second line first"),
        ([("assistant", "Hello"), ("user", "Which user?")], "Which user?"),
        ([("assistant", "Only an answer")], None),
        ([("user", "x" * 80)], "x" * 80),
        ([("user", "word " * 30)], ("word " * 16).strip()[:79].rstrip() + "\u2026"),
        ([("user", "é" * 81)], "é" * 79 + "\u2026"),
    ],
)
def test_title_is_the_first_line_of_the_first_user_message(messages, title) -> None:
    made = thread_title(messages)
    assert made == title
    assert made is None or len(made) <= 80


async def test_title_is_set_by_the_first_user_message_and_kept(store: Store) -> None:
    await store.begin_turn("t-1", OWNER, [("assistant", "Welcome!")], 50)
    [thread] = await store.list_threads(OWNER)
    assert thread.title is None and thread.message_count == 2  # the assistant turn and its pending answer
    await ask(store, "t-1", "What is   a circuit\nbreaker?")
    await ask(store, "t-1", "And a fallback?")
    [thread] = await store.list_threads(OWNER)
    assert thread.title == "What is a circuit"
    assert thread.message_count == 6


# --- listing --------------------------------------------------------------------------------


async def test_threads_are_listed_by_latest_activity(store: Store) -> None:
    for name in ("t-a", "t-b", "t-c"):
        await ask(store, name, f"about {name}")
    listed = await store.list_threads(OWNER)
    assert [t.id for t in listed] == ["t-c", "t-b", "t-a"]
    before = {t.id: t for t in listed}
    await ask(store, "t-a", "back to a")  # a new turn moves it to the top
    listed = await store.list_threads(OWNER)
    assert [t.id for t in listed] == ["t-a", "t-c", "t-b"]
    moved = listed[0]
    assert moved.updated_at > before["t-a"].updated_at and moved.created_at == before["t-a"].created_at
    assert moved.title == "about t-a" and moved.message_count == 4
    assert all(t.updated_at.tzinfo is not None and t.created_at <= t.updated_at for t in listed)


async def test_paging_visits_every_thread_once(store: Store) -> None:
    names = [f"t-{n:02d}" for n in range(7)]
    for name in names:
        await ask(store, name, name)
    seen: list[str] = []
    before = None
    while True:
        page = await store.list_threads(OWNER, limit=3, before=before)
        seen += [t.id for t in page]
        if len(page) < 3:
            break
        before = ThreadPosition(page[-1].updated_at, page[-1].id)
    assert seen == names[::-1]
    assert await store.list_threads(OWNER, limit=0) == []


async def test_paging_stays_in_place_when_a_listed_thread_gets_a_turn(store: Store) -> None:
    for name in ("t-1", "t-2", "t-3", "t-4"):
        await ask(store, name, name)
    first = await store.list_threads(OWNER, limit=2)
    assert [t.id for t in first] == ["t-4", "t-3"]
    await ask(store, "t-3", "more")  # the page's last thread moves to the top meanwhile
    rest = await store.list_threads(OWNER, limit=2, before=ThreadPosition(first[-1].updated_at, first[-1].id))
    assert [t.id for t in rest] == ["t-2", "t-1"]


async def test_only_the_owners_threads_are_listed(store: Store) -> None:
    await ask(store, "mine", "mine")
    await ask(store, "other-user", "x", owner=Owner("key-a", "user-2"))
    await ask(store, "other-key", "x", owner=Owner("key-b", "user-1"))
    await ask(store, "no-user", "x", owner=Owner("key-a", None))
    assert [t.id for t in await store.list_threads(OWNER)] == ["mine"]
    assert [t.id for t in await store.list_threads(Owner("key-a", None))] == ["no-user"]
    assert await store.list_threads(Owner("key-c", None)) == []


# --- renaming -------------------------------------------------------------------------------


async def test_rename_sets_the_title_and_keeps_the_activity_time(store: Store) -> None:
    await ask(store, "t-1", "first question")
    [before] = await store.list_threads(OWNER)
    renamed = await store.rename_thread("t-1", OWNER, "Trip planning")
    assert (renamed.id, renamed.title, renamed.message_count) == ("t-1", "Trip planning", 2)
    assert renamed.updated_at == before.updated_at and renamed.created_at == before.created_at
    await ask(store, "t-1", "another question")  # later turns keep the chosen title
    [after] = await store.list_threads(OWNER)
    assert after.title == "Trip planning" and after.updated_at > before.updated_at


async def test_rename_of_another_owners_or_unknown_thread_is_not_found(store: Store) -> None:
    await ask(store, "t-1", "secret")
    for owner in (Owner("key-a", "user-2"), Owner("key-b", "user-1"), Owner("key-a", None)):
        with pytest.raises(ThreadNotFound):
            await store.rename_thread("t-1", owner, "mine now")
    with pytest.raises(ThreadNotFound):
        await store.rename_thread("no-such-thread", OWNER, "x")
    [thread] = await store.list_threads(OWNER)
    assert thread.title == "secret"


# --- migration ------------------------------------------------------------------------------


async def _schema_before_titles(target: StoreTarget) -> None:
    """Only migration 001 applied, with one thread in it, as a database of the previous version."""
    init = load_migrations(target.backend)[0]
    assert init.version == 1
    rows = [
        "INSERT INTO threads (id, key_name, user_id, created_at) VALUES ('old', 'key-a', 'user-1', '2025-01-01T10:00:00.000000+00:00')",
        "INSERT INTO threads (id, key_name, user_id, created_at) VALUES ('empty', 'key-a', 'user-1', '2025-01-02T10:00:00.000000+00:00')",
        "INSERT INTO messages (id, thread_id, seq, role, content, status, created_at) VALUES "
        "('m1', 'old', 1, 'user', '  Old   question\nsecond line', 'complete', '2025-01-01T10:00:01.000000+00:00'), "
        "('m2', 'old', 2, 'assistant', 'answer', 'complete', '2025-01-03T10:00:02.000000+00:00')",
    ]
    migrations_table = "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at text NOT NULL)"
    record = "INSERT INTO schema_migrations (version, name, applied_at) VALUES (1, 'init', '2025-01-01')"
    if target.backend == "sqlite":
        with sqlite3.connect(target.url.removeprefix("sqlite:///")) as conn:
            conn.executescript(init.sql)
            for sql in [migrations_table, record, *rows]:
                conn.execute(sql)
        conn.close()
        return
    conn = await asyncpg.connect(target.url, timeout=5)
    try:
        await conn.execute(init.sql)
        await conn.execute(migrations_table.replace("applied_at text", "applied_at timestamptz DEFAULT now()"))
        await conn.execute(record.replace("'2025-01-01'", "now()"))
        for sql in rows:
            await conn.execute(sql)
    finally:
        await conn.close()


async def test_migration_gives_existing_threads_a_title_and_activity_time(fresh_target: StoreTarget) -> None:
    await _schema_before_titles(fresh_target)
    migrated = create_store(fresh_target.url)
    await migrated.open()
    try:
        listed = await migrated.list_threads(OWNER)
        await ask(migrated, "new", "a new thread")
        after = await migrated.list_threads(OWNER)
    finally:
        await migrated.close()
    assert [(t.id, t.title, t.message_count) for t in listed] == [("old", "Old question", 2), ("empty", None, 0)]
    assert listed[0].updated_at == datetime.fromisoformat("2025-01-03T10:00:02+00:00")  # its newest message
    assert listed[1].updated_at == listed[1].created_at  # no messages: its creation
    assert [t.id for t in after] == ["new", "old", "empty"]
    recorded = await fresh_target.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [v for (v,) in recorded] == [m.version for m in load_migrations(fresh_target.backend)]


# --- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
async def thread_client(make_client, store_target):
    return await make_client(database_url=store_target.url)


async def chat(client, thread_id, content, **extra):
    body = {"messages": [{"role": "user", "content": content}], "thread_id": thread_id, **extra}
    resp = await client.post("/ai/stream/chat", json=body)
    assert resp.status == 200, await resp.text()
    assert parse_events(await resp.read())[-1]["type"] == "done"


async def listing(client, status=200, **params):
    resp = await client.get("/ai/threads", params=params)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def test_thread_list_over_http(thread_client):
    for n in range(5):
        await chat(thread_client, f"t-{n}", f"Question {n}\nwith details")
    page = await listing(thread_client, limit="2")
    assert [t["id"] for t in page["threads"]] == ["t-4", "t-3"]
    assert page["has_more"] is True and isinstance(page["next_before"], str)
    first = page["threads"][0]
    assert set(first) == {"id", "title", "created_at", "updated_at", "message_count"}
    assert first["title"] == "Question 4" and first["message_count"] == 2
    assert first["created_at"].endswith("Z") and first["updated_at"].endswith("Z")
    assert first["updated_at"] >= first["created_at"]
    seen = [t["id"] for t in page["threads"]]
    while page["has_more"]:
        page = await listing(thread_client, limit="2", before=page["next_before"])
        seen += [t["id"] for t in page["threads"]]
    assert seen == ["t-4", "t-3", "t-2", "t-1", "t-0"]
    assert page["next_before"] is None
    whole = await listing(thread_client)  # limit 50 by default
    assert [t["id"] for t in whole["threads"]] == seen and whole["has_more"] is False


async def test_thread_list_belongs_to_the_user_and_the_key(make_client, store_target):
    client = await make_client(database_url=store_target.url, api_keys="web:0123456789abcdef-web,batch:0123456789abcdef-batch")
    web, batch = ({"Authorization": f"Bearer 0123456789abcdef-{name}"} for name in ("web", "batch"))
    for thread_id, user, key in (("a-1", "ann", web), ("b-1", "bob", web), ("n-1", None, web), ("x-1", "ann", batch)):
        body = {"messages": [{"role": "user", "content": thread_id}], "thread_id": thread_id}
        if user:
            body["user_id"] = user
        resp = await client.post("/ai/stream/chat", json=body, headers=key)
        assert resp.status == 200
        await resp.read()

    async def ids(headers, **params):
        resp = await client.get("/ai/threads", params=params, headers=headers)
        assert resp.status == 200
        return [t["id"] for t in (await resp.json())["threads"]]

    assert await ids(web, user_id="ann") == ["a-1"]
    assert await ids(web, user_id="bob") == ["b-1"]
    assert await ids(web) == ["n-1"]
    assert await ids(batch, user_id="ann") == ["x-1"]
    assert await ids(batch) == []
    resp = await client.get("/ai/threads")
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"
    resp = await client.patch("/ai/threads/a-1", json={"title": "x"}, params={"user_id": "ann"})
    assert resp.status == 401


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"before": "not a cursor"}, "before"),
        ({"before": "msg_6f1c0e8e2b7f4c7da2a4b0b1f0d9c3e2"}, "before"),
        ({"before": base64.urlsafe_b64encode(b"2025-01-01T00:00:00~bad id!").decode()}, "before"),
        ({"before": base64.urlsafe_b64encode(b"yesterday~t-1").decode()}, "before"),
        ({"before": base64.urlsafe_b64encode(b"2025-01-01T00:00:00~t-1").decode()}, "before"),  # no time zone
        ({"before": "\u00e9t\u00e9"}, "before"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "u" * 129}, "user_id"),
        ({"user_id": "ann\x00"}, "user_id"),
    ],
)
async def test_bad_list_parameters_are_400(thread_client, params, field):
    body = await listing(thread_client, status=400, **params)
    assert body["code"] == "validation_error"
    assert [d["field"] for d in body["details"]] == [field]
    assert body["details"][0]["message"].startswith(field)


async def test_nul_in_user_id_is_400_on_every_thread_route(thread_client, fake_upstream):
    for method, path in (("GET", "/ai/threads/t-1/messages"), ("DELETE", "/ai/threads/t-1"), ("PATCH", "/ai/threads/t-1")):
        resp = await thread_client.request(method, path, params={"user_id": "a\x00b"}, json={"title": "x"})
        assert resp.status == 400, (method, path)
        assert (await resp.json())["details"][0]["field"] == "user_id"
    resp = await thread_client.post(
        "/ai/stream/chat", json={"messages": [{"role": "user", "content": "Hi"}], "thread_id": "t-1", "user_id": "a\x00b"}
    )
    assert resp.status == 400
    assert (await resp.json())["details"] == [{"field": "user_id", "message": "user_id must not contain NUL characters"}]
    assert fake_upstream.requests == []
    health = await (await thread_client.get("/health")).json()
    assert health["storage"]["ok"] is True  # bad input is not a storage failure


async def test_rename_over_http(thread_client):
    await chat(thread_client, "t-1", "original question", user_id="ann")
    resp = await thread_client.patch("/ai/threads/t-1", params={"user_id": "ann"}, json={"title": "  Lisbon \n  trip  "})
    assert resp.status == 200, await resp.text()
    renamed = await resp.json()
    assert renamed["id"] == "t-1" and renamed["title"] == "Lisbon trip" and renamed["message_count"] == 2
    assert (await listing(thread_client, user_id="ann"))["threads"] == [renamed]
    resp = await thread_client.patch("/ai/threads/t-1", params={"user_id": "ann"}, json={"title": "t" * 200, "extra": 1})
    assert resp.status == 200 and (await resp.json())["title"] == "t" * 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"title": ""}, "title must not be blank"),
        ({"title": " \n\t "}, "title must not be blank"),
        ({"title": "t" * 201}, "title must be at most 200 characters"),
        ({"title": "a\x00b"}, "title must not contain control characters"),
        ({"title": "bell\x07"}, "title must not contain control characters"),
        ({"title": "\ud800"}, "title holds text that is not valid Unicode (a lone surrogate escape)"),
        ({"title": 42}, "title must be a string"),
        ({"title": None}, "title must be a string"),
        ({}, "title is required"),
    ],
)
async def test_bad_titles_are_400(thread_client, body, message):
    await chat(thread_client, "t-1", "question")
    resp = await thread_client.patch("/ai/threads/t-1", json=body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["code"] == "validation_error" and answer["details"] == [{"field": "title", "message": message}]
    assert (await listing(thread_client))["threads"][0]["title"] == "question"


async def test_rename_body_must_be_a_json_object(thread_client):
    await chat(thread_client, "t-1", "question")
    for data in (b"", b"{", b"[1]"):
        resp = await thread_client.patch("/ai/threads/t-1", data=data, headers={"Content-Type": "application/json"})
        assert resp.status == 400 and (await resp.json())["code"] == "invalid_json"


async def test_rename_of_another_owners_thread_is_404(thread_client):
    await chat(thread_client, "t-1", "secret", user_id="ann")
    for params in ({"user_id": "bob"}, {}):
        resp = await thread_client.patch("/ai/threads/t-1", params=params, json={"title": "mine"})
        assert resp.status == 404 and (await resp.json())["code"] == "not_found"
    for path in ("/ai/threads/no-such-thread", "/ai/threads/not%20an%20id"):
        resp = await thread_client.patch(path, json={"title": "x"})
        assert resp.status == 404
    assert (await listing(thread_client, user_id="ann"))["threads"][0]["title"] == "secret"


async def test_thread_list_and_rename_when_the_store_is_down(make_client):
    client = await make_client(database_url=STORAGE_DOWN)
    for resp in (await client.get("/ai/threads"), await client.patch("/ai/threads/t-1", json={"title": "x"})):
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "5"
        assert (await resp.json())["code"] == "storage_unavailable"
