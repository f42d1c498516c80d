"""The conversation store: one suite, run against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from storage import (
    Owner,
    StorageUnavailable,
    Store,
    StoredMessage,
    ThreadNotFound,
    Turn,
    create_store,
)
from storage.migrate import load_migrations, split_statements
from storage.postgres import PostgresStore
from storage.rows import scoped_thread_id
from storage.sqlite import SqliteStore
from tests.storage_fixtures import (  # noqa: F401  (fixtures are used by name)
    StoreTarget,
    TcpProxy,
    fresh_target,
    pg_url,
    store,
    store_target,
    with_address,
)

OWNER = Owner(key_name="key-a", user_id="user-1")


async def ask(
    store: Store, thread: str, *questions: str, owner: Owner = OWNER, limit: int = 50
) -> Turn:
    return await store.begin_turn(thread, owner, [("user", q) for q in questions], limit)


async def finish(store: Store, message_id: str, content: str, status: str = "complete") -> bool:
    return await store.finish_assistant_message(
        message_id, content=content, status=status, model="m-1", provider="prov",
        stop_reason="end_turn", input_tokens=11, output_tokens=7,
    )


async def qa(store: Store, thread: str, question: str, answer: str) -> None:
    turn = await ask(store, thread, question)
    assert await finish(store, turn.assistant_message_id, answer)


def contents(messages: list[StoredMessage]) -> list[str]:
    return [message.content for message in messages]


# --- turns and history ---------------------------------------------------------------


async def test_first_turn_creates_thread_and_reserves_pending_answer(store: Store) -> None:
    turn = await ask(store, "t1", "hello", "second line")
    assert turn.history == []
    assert len(turn.user_message_ids) == 2
    assert all(i.startswith("msg_") for i in [*turn.user_message_ids, turn.assistant_message_id])

    rows = await store.list_messages("t1", OWNER)
    assert [(m.seq, m.role, m.content, m.status) for m in rows] == [
        (1, "user", "hello", "complete"),
        (2, "user", "second line", "complete"),
        (3, "assistant", "", "pending"),
    ]
    assert [m.id for m in rows] == [*turn.user_message_ids, turn.assistant_message_id]
    for message in rows:
        assert message.thread_id == "t1"
        assert message.created_at.utcoffset() == timedelta(0)
        assert abs(time.time() - message.created_at.timestamp()) < 60


async def test_history_replays_oldest_first_within_limit(store: Store) -> None:
    for n in range(1, 4):
        await qa(store, "t", f"q{n}", f"a{n}")
    turn = await ask(store, "t", "q4", limit=10)
    assert contents(turn.history) == ["q1", "a1", "q2", "a2", "q3", "a3"]
    assert [m.role for m in turn.history] == ["user", "assistant"] * 3
    answer = turn.history[1]
    assert (answer.model, answer.provider, answer.stop_reason) == ("m-1", "prov", "end_turn")

    turn = await ask(store, "t", "q5", limit=3)
    assert contents(turn.history) == ["q3", "a3", "q4"]
    assert (await ask(store, "t", "q6", limit=0)).history == []


async def test_history_skips_pending_and_empty_answers(store: Store) -> None:
    first = await ask(store, "t", "q1")  # left pending: its answer is still streaming
    second = await ask(store, "t", "q2")
    assert contents(second.history) == ["q1"]
    assert await finish(store, second.assistant_message_id, "", status="error")
    third = await ask(store, "t", "q3")
    assert contents(third.history) == ["q1", "q2"]
    assert await finish(store, first.assistant_message_id, "late answer")
    fourth = await ask(store, "t", "q4")
    # Order is the reservation order, not the finishing order.
    assert contents(fourth.history) == ["q1", "late answer", "q2", "q3"]


@pytest.mark.parametrize("status", ["complete", "interrupted", "error"])
async def test_finish_keeps_content_and_details(store: Store, status: str) -> None:
    turn = await ask(store, "t", "question")
    assert await finish(store, turn.assistant_message_id, "partial answer", status=status)
    answer = (await store.list_messages("t", OWNER))[-1]
    assert answer.id == turn.assistant_message_id
    assert (answer.role, answer.content, answer.status) == ("assistant", "partial answer", status)
    assert (answer.model, answer.provider, answer.stop_reason) == ("m-1", "prov", "end_turn")
    assert (answer.input_tokens, answer.output_tokens) == (11, 7)
    assert contents((await ask(store, "t", "next")).history) == ["question", "partial answer"]


async def test_finish_only_once_and_only_pending_assistant_rows(store: Store) -> None:
    turn = await ask(store, "t", "question")
    assert await finish(store, turn.assistant_message_id, "answer")
    assert not await finish(store, turn.assistant_message_id, "overwritten?")
    assert not await finish(store, turn.user_message_ids[0], "not an assistant row")
    assert not await finish(store, "msg_unknown", "nobody")
    assert contents(await store.list_messages("t", OWNER)) == ["question", "answer"]


async def test_text_is_stored_identically_on_both_backends(store: Store) -> None:
    turn = await ask(store, "t", "nul\x00byte", "lone \ud800 surrogate", "ünïcode ✓")
    await finish(store, turn.assistant_message_id, "answer\x00")
    assert contents(await store.list_messages("t", OWNER)) == [
        "nul\ufffdbyte", "lone ? surrogate", "ünïcode ✓", "answer\ufffd",
    ]


async def test_invalid_arguments_raise_value_error(store: Store) -> None:
    with pytest.raises(ValueError, match="role"):
        await store.begin_turn("t", OWNER, [("system", "x")], 10)
    with pytest.raises(ValueError, match="history_limit"):
        await store.begin_turn("t", OWNER, [("user", "x")], -1)
    turn = await ask(store, "t", "q")
    with pytest.raises(ValueError, match="status"):
        await finish(store, turn.assistant_message_id, "x", status="pending")
    with pytest.raises(ValueError, match="limit"):
        await store.list_messages("t", OWNER, limit=-1)


# --- ownership and deletion -----------------------------------------------------------

OTHER_OWNERS = [
    pytest.param(Owner("key-a", "user-2"), id="other-user"),
    pytest.param(Owner("key-b", "user-1"), id="other-key"),
    pytest.param(Owner("key-a", None), id="no-user"),
    pytest.param(Owner("", "user-1"), id="empty-key"),
]


@pytest.mark.parametrize("intruder", OTHER_OWNERS)
async def test_other_owner_sees_thread_as_missing(store: Store, intruder: Owner) -> None:
    await qa(store, "t", "secret question", "secret answer")
    with pytest.raises(ThreadNotFound):
        await store.list_messages("t", intruder)
    with pytest.raises(ThreadNotFound):
        await store.delete_thread("t", intruder)
    # Thread ids are namespaced by owner: the same id is another owner's own, separate thread.
    theirs = await ask(store, "t", "let me in", owner=intruder)
    assert theirs.history == []
    assert contents(await store.list_messages("t", intruder)) == ["let me in", ""]
    assert contents(await store.list_messages("t", OWNER)) == ["secret question", "secret answer"]


async def test_owner_without_user_id_matches_only_itself(store: Store) -> None:
    anonymous = Owner("key-a", None)
    await ask(store, "anon", "q1", owner=anonymous)
    turn = await ask(store, "anon", "q2", owner=Owner("key-a"))  # equal owner, extends it
    assert contents(turn.history) == ["q1"]
    for intruder in (Owner("key-a", ""), OWNER, Owner()):
        with pytest.raises(ThreadNotFound):
            await store.list_messages("anon", intruder)


async def test_unknown_thread_is_not_found(store: Store) -> None:
    with pytest.raises(ThreadNotFound):
        await store.list_messages("nope", OWNER)
    with pytest.raises(ThreadNotFound):
        await store.delete_thread("nope", OWNER)


async def test_delete_removes_thread_and_messages(
    store: Store, store_target: StoreTarget
) -> None:
    turn = await ask(store, "t", "q1")
    await qa(store, "kept", "q", "a")
    await store.delete_thread("t", OWNER)
    with pytest.raises(ThreadNotFound):
        await store.list_messages("t", OWNER)
    with pytest.raises(ThreadNotFound):
        await store.delete_thread("t", OWNER)
    per_thread = "SELECT thread_id, count(*) FROM messages GROUP BY thread_id"
    assert await store_target.fetch(per_thread) == [(scoped_thread_id(OWNER, "kept"), 2)]
    # A stream still running when its thread was deleted cannot write into the void.
    assert not await finish(store, turn.assistant_message_id, "too late")
    # The id is free again: anyone may start a new thread under it, numbered from 1.
    other = Owner("key-b")
    fresh = await ask(store, "t", "new start", owner=other)
    assert fresh.history == []
    assert [m.seq for m in await store.list_messages("t", other)] == [1, 2]


# --- listing ------------------------------------------------------------------------------


async def test_list_pages_backwards_with_before(store: Store) -> None:
    for n in range(1, 4):
        await qa(store, "t", f"q{n}", f"a{n}")
    await ask(store, "t", "q4")  # 8 rows: q1 a1 q2 a2 q3 a3 q4 (pending)
    everything = await store.list_messages("t", OWNER)
    assert [m.seq for m in everything] == list(range(1, 9))

    page = await store.list_messages("t", OWNER, limit=3)
    assert contents(page) == ["a3", "q4", ""]
    page = await store.list_messages("t", OWNER, limit=3, before=page[0].id)
    assert contents(page) == ["q2", "a2", "q3"]
    page = await store.list_messages("t", OWNER, limit=3, before=page[0].id)
    assert contents(page) == ["q1", "a1"]
    assert await store.list_messages("t", OWNER, limit=3, before=page[0].id) == []
    assert await store.list_messages("t", OWNER, limit=0) == []


async def test_list_before_unknown_or_foreign_message_is_value_error(store: Store) -> None:
    await qa(store, "t", "q", "a")
    other_turn = await ask(store, "other", "q")
    with pytest.raises(ValueError, match="not in thread"):
        await store.list_messages("t", OWNER, before="msg_missing")
    with pytest.raises(ValueError, match="not in thread"):
        await store.list_messages("t", OWNER, before=other_turn.user_message_ids[0])


# --- concurrency ----------------------------------------------------------------------


async def test_concurrent_turns_on_one_thread_stay_contiguous(
    store: Store, store_target: StoreTarget
) -> None:
    # Two store instances, like two replicas (or two processes sharing a SQLite file).
    replica = store_target.new_store()
    await replica.open()
    try:
        turns = await asyncio.gather(
            *(
                ask(store if n % 2 else replica, "busy", f"q{n}a", f"q{n}b", limit=100)
                for n in range(20)
            )
        )
    finally:
        await replica.close()

    rows = await store.list_messages("busy", OWNER, limit=1000)
    assert [m.seq for m in rows] == list(range(1, 61))
    position = {m.id: index for index, m in enumerate(rows)}
    for n, turn in enumerate(turns):
        ids = [*turn.user_message_ids, turn.assistant_message_id]
        start = position[ids[0]]
        assert [position[i] for i in ids] == [start, start + 1, start + 2]
        assert contents(rows[start : start + 3]) == [f"q{n}a", f"q{n}b", ""]
        # Each turn saw exactly the questions stored before it (answers are all pending).
        assert [m.id for m in turn.history] == [m.id for m in rows[:start] if m.role == "user"]


async def test_cancelled_turns_leave_no_partial_rows(store: Store) -> None:
    # A client disconnect can cancel the request at any await inside begin_turn.
    for step in range(30):
        task = asyncio.create_task(ask(store, "t", f"q{step}a", f"q{step}b"))
        for _ in range(step):
            await asyncio.sleep(0)
        await asyncio.sleep(step * 0.00005)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    turn = await ask(store, "t", "after-a", "after-b")
    rows = await store.list_messages("t", OWNER, limit=1000)
    assert [m.seq for m in rows] == list(range(1, len(rows) + 1))
    assert len(rows) % 3 == 0  # whole turns only: two questions and a reserved answer
    assert [m.id for m in rows[-3:]] == [*turn.user_message_ids, turn.assistant_message_id]


# --- migrations, health, failures ---------------------------------------------------------


async def test_migrations_recorded_once_and_idempotent(store_target: StoreTarget) -> None:
    for _ in range(2):
        reopened = store_target.new_store()
        await reopened.open()
        await reopened.open()  # a second open() on an open store does nothing
        await reopened.close()
    expected = [(m.version, m.name) for m in load_migrations(store_target.backend)]
    assert expected and expected[0] == (1, "init")
    recorded = await store_target.fetch("SELECT version, name FROM schema_migrations")
    assert sorted(recorded) == expected


async def test_concurrent_open_on_fresh_database_migrates_once(fresh_target: StoreTarget) -> None:
    stores = [fresh_target.new_store() for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        for n, opened in enumerate(stores):
            await ask(opened, f"t{n}", "works")
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    recorded = await fresh_target.fetch("SELECT version, name FROM schema_migrations")
    assert sorted(recorded) == [(m.version, m.name) for m in load_migrations(fresh_target.backend)]


async def test_ping(store_target: StoreTarget) -> None:
    target_store = store_target.new_store()
    assert not await target_store.ping()  # not open yet
    with pytest.raises(StorageUnavailable):
        await ask(target_store, "t", "q")
    await target_store.open()
    assert await target_store.ping()
    await target_store.close()
    assert not await target_store.ping()
    with pytest.raises(StorageUnavailable):
        await target_store.list_messages("t", OWNER)


async def test_unreachable_postgres_fails_fast_without_leaking_the_url() -> None:
    url = "postgresql://postgres:s3cret@127.0.0.1:1/ai_stream_test"  # nothing listens on port 1
    unreachable = create_store(url)
    # It fails rather than hanging (the guard is generous: speed belongs to the benchmarks).
    with pytest.raises(StorageUnavailable) as caught:
        async with asyncio.timeout(30):
            await unreachable.open()
    assert "s3cret" not in str(caught.value) and "127.0.0.1" not in str(caught.value)
    assert "s3cret" not in repr(unreachable)
    assert not await unreachable.ping()
    with pytest.raises(StorageUnavailable):
        await ask(unreachable, "t", "q")


async def test_postgres_outage_raises_unavailable_then_recovers(pg_url: str) -> None:
    database = urlsplit(pg_url)
    proxy = TcpProxy(database.hostname or "127.0.0.1", database.port or 5432)
    await proxy.start()
    proxied = create_store(with_address(pg_url, "127.0.0.1", proxy.port))
    try:
        await proxied.open()
        await qa(proxied, "t", "before", "outage")
        await proxy.stop()
        async with asyncio.timeout(30):  # a bounded ping: it answers False rather than hanging
            assert not await proxied.ping()
        with pytest.raises(StorageUnavailable):
            await ask(proxied, "t", "during")
        with pytest.raises(StorageUnavailable):
            await proxied.list_messages("t", OWNER)
        await proxy.start()  # the same port again
        assert await proxied.ping()
        assert contents(await proxied.list_messages("t", OWNER)) == ["before", "outage"]
    finally:
        await proxied.close()
        await proxy.stop()


async def test_sqlite_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    broken = create_store(f"sqlite:///{tmp_path}/a-file/store.db")
    with pytest.raises(StorageUnavailable) as caught:
        await broken.open()
    assert "a-file" not in str(caught.value)
    assert not await broken.ping()


# --- configuration ------------------------------------------------------------------------


async def test_default_store_is_sqlite_file_in_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    default = create_store(None)
    assert isinstance(default, SqliteStore) and default.backend == "sqlite"
    assert default.path == Path("data/ai-stream.db")
    await default.open()
    try:
        await qa(default, "t", "q", "a")
        assert await default.ping()
    finally:
        await default.close()
    assert (tmp_path / "data" / "ai-stream.db").is_file()
    assert isinstance(create_store("  "), SqliteStore)


@pytest.mark.parametrize(
    ("url", "backend", "path"),
    [
        ("postgresql://u:p@db.example:5432/app", "postgresql", None),
        ("postgres://db.example/app", "postgresql", None),
        ("POSTGRESQL://db.example/app", "postgresql", None),
        ("sqlite:///relative/dir/app.db", "sqlite", Path("relative/dir/app.db")),
        ("sqlite:////absolute/dir/app.db", "sqlite", Path("/absolute/dir/app.db")),
        ("sqlite:///with%20space.db", "sqlite", Path("with space.db")),
    ],
)
def test_create_store_parses_database_url(url: str, backend: str, path: Path | None) -> None:
    created = create_store(url)
    assert created.backend == backend
    if path is None:
        assert isinstance(created, PostgresStore)
    else:
        assert isinstance(created, SqliteStore) and created.path == path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root:hunter2@db/app", "unsupported scheme 'mysql'"),
        ("postgresql+asyncpg://root:hunter2@db/app", "unsupported scheme"),
        ("just/a/path.db", "no scheme"),
        ("sqlite://host/app.db", "three slashes"),
        ("sqlite:app.db", "three slashes"),
        ("sqlite:///", "must name a file"),
        ("sqlite:///data/", "must name a file"),
        ("sqlite:///app.db?mode=ro", "no query string"),
        ("postgresql://root:hunter2@[::1/app", "not a valid URL"),
    ],
)
def test_create_store_rejects_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="DATABASE_URL") as caught:
        create_store(url)
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_split_statements_respects_literals_comments_and_triggers() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE a (x TEXT DEFAULT 'semi;colon');
    CREATE TRIGGER t AFTER INSERT ON a BEGIN
        UPDATE a SET x = 'y;' WHERE x = 'z';
    END;
    ;
    INSERT INTO a VALUES ('last')
    -- trailing comment"""
    statements = split_statements(script)
    assert len(statements) == 3
    assert statements[0].endswith("DEFAULT 'semi;colon');")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    assert statements[2].startswith("INSERT INTO a VALUES ('last')")


async def test_threads_written_before_owner_namespaces_stay_their_owners(fresh_target: StoreTarget) -> None:
    """A database at migration 1 (thread ids global) migrates to ids namespaced by owner: every
    thread stays its owner's, under the id the owner knows it by, and takes new turns."""
    first = load_migrations(fresh_target.backend)[0]
    rows = [
        "INSERT INTO threads (id, key_name, user_id, created_at) VALUES ('old', 'key-a', 'user-1', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO messages (id, thread_id, seq, role, content, status, created_at) VALUES "
        "('msg_1', 'old', 1, 'user', 'q', 'complete', '2026-01-01T00:00:00+00:00'), "
        "('msg_2', 'old', 2, 'assistant', 'a', 'complete', '2026-01-01T00:00:01+00:00')",
        "INSERT INTO threads (id, key_name, user_id, created_at) VALUES ('anon', 'key-a', NULL, '2026-01-01T00:00:00+00:00')",
    ]
    if fresh_target.backend == "sqlite":
        path = fresh_target.url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            conn.executescript(first.sql)
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, '2026-01-01')", (first.version, first.name))
            for sql in rows:
                conn.execute(sql)
        conn.close()
    else:
        conn = await asyncpg.connect(fresh_target.url)
        try:
            await conn.execute(first.sql)
            await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", first.version, first.name)
            for sql in rows:
                await conn.execute(sql)
        finally:
            await conn.close()
    migrated = fresh_target.new_store()
    await migrated.open()
    try:
        assert contents(await migrated.list_messages("old", OWNER)) == ["q", "a"]
        with pytest.raises(ThreadNotFound):
            await migrated.list_messages("old", Owner("key-a", None))
        turn = await ask(migrated, "old", "q2")
        assert contents(turn.history) == ["q", "a"]
        assert contents(await migrated.list_messages("anon", Owner("key-a", None))) == []
    finally:
        await migrated.close()
