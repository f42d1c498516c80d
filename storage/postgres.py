"""PostgreSQL store on an asyncpg pool.

Each method holds a pooled connection only for its own duration, never across calls (so no
connection is held while an answer streams). `begin_turn` serializes turns on one thread by
locking the thread row (`SELECT ... FOR UPDATE`), so concurrent requests never interleave.

`open()` needs the server: if it is unreachable it raises `StorageUnavailable` and the
caller decides whether to retry or exit. Once open, the pool reconnects by itself, calls made
while the server is down raise `StorageUnavailable`, and `ping()` reports False.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg

from .base import (
    LEGACY_PENDING_AFTER,
    MESSAGE_COLUMNS,
    ClientMessage,
    SUMMARY_COLUMNS,
    Cut,
    Owner,
    StorageError,
    StorageUnavailable,
    StoredMessage,
    Summary,
    ThreadNotFound,
    ThreadPosition,
    ThreadSummary,
    Turn,
    chat_rows,
    check_client_messages,
    check_finish_status,
    check_limit,
    check_new_messages,
    client_thread_id,
    clean_text,
    kept_start,
    first_removed_seq,
    new_message_id,
    scoped_thread_id,
    thread_title,
    replayable,
    turn_rows,
)
from .migrate import load_migrations, pending_migrations

# Any constant works as long as every replica uses the same one.
MIGRATION_LOCK_KEY = 0x61695F73747265  # "ai_stre"

ADVISORY_LOCK = "SELECT pg_advisory_lock($1)"
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock($1)"
CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""
SELECT_APPLIED_VERSIONS = "SELECT version FROM schema_migrations"
RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"

PING = "SELECT 1"
INSERT_THREAD = """
INSERT INTO threads (id, key_name, user_id) VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING"""
LOCK_THREAD = "SELECT key_name, user_id FROM threads WHERE id = $1 FOR UPDATE"
SELECT_THREAD_OWNER = "SELECT key_name, user_id FROM threads WHERE id = $1"
SELECT_HISTORY = f"""
SELECT * FROM (
    SELECT {MESSAGE_COLUMNS}
    FROM messages
    WHERE thread_id = $1 AND status <> 'pending' AND content <> ''
    ORDER BY seq DESC
    LIMIT $2
) AS recent ORDER BY seq"""
SELECT_LAST_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE thread_id = $1"
INSERT_MESSAGE = """
INSERT INTO messages (id, thread_id, seq, role, content, status, writer)
VALUES ($1, $2, $3, $4, $5, $6, $7)"""
SAVE_PARTIAL = "UPDATE messages SET content = $2 WHERE id = $1 AND status = 'pending'"
HEARTBEAT = """
INSERT INTO writers (id) VALUES ($1)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()"""
RETIRE_WRITER = "DELETE FROM writers WHERE id = $1"
# $1: seconds without a heartbeat after which a writer is taken for dead; $2: the same for rows
# that name no writer (written before writers were recorded).
CLOSE_ABANDONED = """
UPDATE messages SET status = 'interrupted'
WHERE status = 'pending'
  AND CASE WHEN writer IS NULL THEN created_at < now() - make_interval(secs => $2)
           ELSE writer NOT IN (SELECT id FROM writers WHERE heartbeat_at > now() - make_interval(secs => $1))
      END"""
SELECT_THREAD_MESSAGES = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread_id = $1 ORDER BY seq"
DELETE_MESSAGES_FROM_SEQ = "DELETE FROM messages WHERE thread_id = $1 AND seq >= $2"
INSERT_CLIENT_MESSAGE = """
INSERT INTO messages (id, thread_id, seq, role, content, status, writer, client_message_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"""
FINISH_MESSAGE = """
UPDATE messages
SET content = $2, status = $3, model = $4, provider = $5, stop_reason = $6,
    input_tokens = $7, output_tokens = $8, cache_read_input_tokens = $9, cache_creation_input_tokens = $10,
    replay_from_seq = $11, summary_through_seq = $12
WHERE id = $1 AND role = 'assistant' AND status = 'pending'"""
# Cuts (regenerate, edit): the message a cut names, or the thread's last user message.
SELECT_CUT_MESSAGE = "SELECT seq, role FROM messages WHERE id = $1 AND thread_id = $2"
SELECT_LAST_USER_MESSAGE = "SELECT seq, role FROM messages WHERE thread_id = $1 AND role = 'user' ORDER BY seq DESC LIMIT 1"
DELETE_MESSAGES_FROM = "DELETE FROM messages WHERE thread_id = $1 AND seq >= $2"
DELETE_SUMMARIES_FROM = "DELETE FROM summaries WHERE thread_id = $1 AND through_seq >= $2"
SELECT_LATEST_SUMMARY = f"SELECT {SUMMARY_COLUMNS} FROM summaries WHERE thread_id = $1 ORDER BY through_seq DESC LIMIT 1"
INSERT_SUMMARY = f"""
INSERT INTO summaries ({SUMMARY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
ON CONFLICT (thread_id, through_seq) DO NOTHING"""
SELECT_MESSAGE_SEQ = "SELECT seq FROM messages WHERE id = $1 AND thread_id = $2"
# $3 is the seq of the `before` message, or NULL for the newest page.
SELECT_PAGE = f"""
SELECT * FROM (
    SELECT {MESSAGE_COLUMNS}
    FROM messages
    WHERE thread_id = $1 AND ($3::bigint IS NULL OR seq < $3)
    ORDER BY seq DESC
    LIMIT $2
) AS page ORDER BY seq"""
DELETE_THREAD = """
DELETE FROM threads
WHERE id = $1 AND key_name = $2 AND user_id IS NOT DISTINCT FROM $3"""
# A turn is activity; its first user message names a thread that has no title yet.
TOUCH_THREAD = "UPDATE threads SET updated_at = clock_timestamp(), title = COALESCE(title, $2) WHERE id = $1"
# The thread list, newest activity first, after the position ($3, $4). Two statements so that
# both use the (key_name, user_id, updated_at, id) index: IS NOT DISTINCT FROM would not.
SELECT_THREADS_OF_USER = """
SELECT t.id, t.title, t.created_at, t.updated_at,
       (SELECT count(*) FROM messages m WHERE m.thread_id = t.id) AS message_count
FROM threads t
WHERE t.key_name = $1 AND t.user_id = $2 AND (t.updated_at, t.id) < ($3, $4)
ORDER BY t.updated_at DESC, t.id DESC
LIMIT $5"""
SELECT_THREADS_WITHOUT_USER = """
SELECT t.id, t.title, t.created_at, t.updated_at,
       (SELECT count(*) FROM messages m WHERE m.thread_id = t.id) AS message_count
FROM threads t
WHERE t.key_name = $1 AND t.user_id IS NULL AND (t.updated_at, t.id) < ($2, $3)
ORDER BY t.updated_at DESC, t.id DESC
LIMIT $4"""
RENAME_THREAD = """
UPDATE threads SET title = $4
WHERE id = $1 AND key_name = $2 AND user_id IS NOT DISTINCT FROM $3
RETURNING id, title, created_at, updated_at,
          (SELECT count(*) FROM messages m WHERE m.thread_id = threads.id) AS message_count"""
# Where the first page starts: after every thread.
LIST_START = ThreadPosition(datetime.max.replace(tzinfo=UTC), "")

# Failures that mean "the database is not reachable right now" rather than a bad query.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # e.g. "pool is closing" during shutdown
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,  # database does not exist
    # "Unexpected" client states, met when the server restarts mid-command (a commit whose
    # outcome is unknown, a connection released while broken): the caller cannot tell more.
    asyncpg.InternalClientError,
)


def _to_message(row: asyncpg.Record) -> StoredMessage:
    # asyncpg returns timestamptz as an aware datetime in UTC.
    fields = dict(row.items())
    fields["thread_id"] = client_thread_id(fields["thread_id"])
    return StoredMessage(**fields)


def _to_thread_summary(row: asyncpg.Record) -> ThreadSummary:
    fields = dict(row.items())
    fields["id"] = client_thread_id(fields["id"])
    return ThreadSummary(**fields)


def _to_summary(row: asyncpg.Record) -> Summary:
    fields = dict(row.items())
    fields["thread_id"] = client_thread_id(fields["thread_id"])
    return Summary(**fields)


def _affected_rows(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 1" or "UPDATE 0".
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    backend = "postgresql"

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 20,
        connect_timeout: float = 5.0,
        acquire_timeout: float = 10.0,
        command_timeout: float = 30.0,
        ping_timeout: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._pool_options = {
            "min_size": min_size,
            "max_size": max_size,
            "timeout": connect_timeout,
            "command_timeout": command_timeout,
            "server_settings": {"application_name": "ai-stream"},
        }
        self._connect_timeout = connect_timeout
        self._acquire_timeout = acquire_timeout
        self._ping_timeout = ping_timeout
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return "PostgresStore()"  # never show the DSN: it may hold a password

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            await self._migrate()
            self._pool = await asyncpg.create_pool(self._dsn, **self._pool_options)
        except ValueError as exc:  # includes asyncpg.ClientConfigurationError
            raise ValueError(f"DATABASE_URL is not a valid PostgreSQL URL ({exc})") from None
        except _UNAVAILABLE_ERRORS as exc:
            raise StorageUnavailable(f"PostgreSQL is unavailable ({type(exc).__name__})") from exc
        except asyncpg.PostgresError as exc:
            raise StorageError(f"PostgreSQL error {exc.sqlstate} during open") from exc

    async def _migrate(self) -> None:
        # A dedicated connection, not a pooled one: closing it ends the session and so always
        # releases the advisory lock, even if unlocking fails.
        conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        try:
            # Replicas starting together wait here; the first applies, the others find nothing.
            await conn.execute(ADVISORY_LOCK, MIGRATION_LOCK_KEY)
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            applied = {row["version"] for row in await conn.fetch(SELECT_APPLIED_VERSIONS)}
            for migration in pending_migrations(load_migrations(self.backend), applied):
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(RECORD_MIGRATION, migration.version, migration.name)
            await conn.execute(ADVISORY_UNLOCK, MIGRATION_LOCK_KEY)
        finally:
            await conn.close()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            # Waits for connections in use to come back; don't let one stuck query block exit.
            await asyncio.wait_for(pool.close(), timeout=10)
        except TimeoutError:
            pool.terminate()

    async def ping(self) -> bool:
        pool = self._pool
        if pool is None:
            return False
        try:
            async with asyncio.timeout(self._ping_timeout):
                async with pool.acquire() as conn:
                    await conn.fetchval(PING)
        except Exception:
            return False
        return True

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one call, with driver errors mapped to ours."""
        pool = self._pool
        if pool is None:
            raise StorageUnavailable("store is not open")
        try:
            async with pool.acquire(timeout=self._acquire_timeout) as conn:
                yield conn
        except _UNAVAILABLE_ERRORS as exc:
            raise StorageUnavailable(f"PostgreSQL is unavailable ({type(exc).__name__})") from exc
        except asyncpg.PostgresError as exc:
            raise StorageError(f"PostgreSQL error {exc.sqlstate} ({type(exc).__name__})") from exc

    async def begin_turn(
        self,
        thread_id: str,
        owner: Owner,
        messages: Sequence[tuple[str, str]],
        history_limit: int,
        *,
        assistant_message_id: str | None = None,
        writer: str | None = None,
        cut: Cut | None = None,
    ) -> Turn:
        check_limit("history_limit", history_limit)
        thread_id = scoped_thread_id(owner, thread_id)
        new_messages = check_new_messages(messages)
        user_ids = [new_message_id() for _ in new_messages]
        assistant_id = assistant_message_id or new_message_id()
        removed = 0
        async with self._connection() as conn, conn.transaction():
            thread = None
            if cut is not None:  # a cut needs the thread: it is not created
                thread = await conn.fetchrow(LOCK_THREAD, thread_id)
                if thread is None:
                    raise ThreadNotFound(thread_id)
            # The row may vanish between insert and lock if the thread is deleted right then;
            # inserting again makes a fresh thread, as a request a moment later would.
            for _ in range(3 if thread is None else 0):
                await conn.execute(INSERT_THREAD, thread_id, owner.key_name, owner.user_id)
                thread = await conn.fetchrow(LOCK_THREAD, thread_id)
                if thread is not None:
                    break
            if thread is None:
                raise StorageError("thread was deleted repeatedly while being written")
            if not owner.matches(thread["key_name"], thread["user_id"]):
                raise ThreadNotFound(thread_id)
            if cut is not None:
                removed = await self._cut(conn, thread_id, cut)
            await conn.execute(TOUCH_THREAD, thread_id, thread_title(new_messages))
            # Holding the row lock: no other turn on this thread reads or writes until commit.
            rows = await conn.fetch(SELECT_HISTORY, thread_id, history_limit)
            history = [_to_message(row) for row in rows]
            summary_row = await conn.fetchrow(SELECT_LATEST_SUMMARY, thread_id)
            last_seq = await conn.fetchval(SELECT_LAST_SEQ, thread_id)
            new_rows = turn_rows(thread_id, last_seq, new_messages, user_ids, assistant_id, writer)
            await conn.executemany(INSERT_MESSAGE, new_rows)
        summary = _to_summary(summary_row) if summary_row is not None else None
        return Turn(history=history, user_message_ids=user_ids, assistant_message_id=assistant_id, summary=summary, removed=removed)

    @staticmethod
    async def _cut(conn: asyncpg.Connection, thread_id: str, cut: Cut) -> int:
        if cut.message_id is None:
            found = await conn.fetchrow(SELECT_LAST_USER_MESSAGE, thread_id)
        else:
            found = await conn.fetchrow(SELECT_CUT_MESSAGE, cut.message_id, thread_id)
        first = first_removed_seq(cut, (found["seq"], found["role"]) if found is not None else None)
        await conn.execute(DELETE_SUMMARIES_FROM, thread_id, first)
        return _affected_rows(await conn.execute(DELETE_MESSAGES_FROM, thread_id, first))

    async def cut_thread(self, thread_id: str, owner: Owner, cut: Cut) -> int:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn, conn.transaction():
            thread = await conn.fetchrow(LOCK_THREAD, thread_id)
            if thread is None or not owner.matches(thread["key_name"], thread["user_id"]):
                raise ThreadNotFound(thread_id)
            return await self._cut(conn, thread_id, cut)

    async def summary_of(self, thread_id: str, owner: Owner) -> Summary | None:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn:
            thread = await conn.fetchrow(SELECT_THREAD_OWNER, thread_id)
            if thread is None or not owner.matches(thread["key_name"], thread["user_id"]):
                raise ThreadNotFound(thread_id)
            row = await conn.fetchrow(SELECT_LATEST_SUMMARY, thread_id)
        return _to_summary(row) if row is not None else None

    async def save_summary(self, thread_id: str, owner: Owner, summary: Summary) -> bool:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn, conn.transaction():
            thread = await conn.fetchrow(LOCK_THREAD, thread_id)
            if thread is None or not owner.matches(thread["key_name"], thread["user_id"]):
                return False
            result = await conn.execute(
                INSERT_SUMMARY, thread_id, summary.from_seq, summary.through_seq, summary.from_message_id,
                summary.through_message_id, clean_text(summary.content), summary.model, summary.provider,
            )
        return _affected_rows(result) == 1

    async def follow_chat(
        self,
        thread_id: str,
        owner: Owner,
        messages: Sequence[ClientMessage],
        history_limit: int,
        *,
        assistant_message_id: str | None = None,
        writer: str | None = None,
    ) -> Turn:
        check_limit("history_limit", history_limit)
        thread_id = scoped_thread_id(owner, thread_id)
        conversation = check_client_messages(messages)
        assistant_id = assistant_message_id or new_message_id()
        async with self._connection() as conn, conn.transaction():
            await self._claim_thread(conn, thread_id, owner)
            await conn.execute(TOUCH_THREAD, thread_id, thread_title([(m.role, m.content) for m in conversation]))
            # Holding the thread's row lock: the comparison and the writes see no other turn.
            stored = [_to_message(row) for row in await conn.fetch(SELECT_THREAD_MESSAGES, thread_id)]
            kept = kept_start(stored, conversation)
            if kept < len(stored):
                await conn.execute(DELETE_MESSAGES_FROM_SEQ, thread_id, stored[kept].seq)
            new_ids = [new_message_id() for _ in conversation[kept:]]
            last_seq = stored[kept - 1].seq if kept else 0
            rows = chat_rows(thread_id, last_seq, conversation[kept:], new_ids, assistant_id, writer)
            await conn.executemany(INSERT_CLIENT_MESSAGE, rows)
        history = replayable(stored[:kept], history_limit)
        return Turn(history=history, user_message_ids=new_ids, assistant_message_id=assistant_id)

    @staticmethod
    async def _claim_thread(conn: asyncpg.Connection, thread_id: str, owner: Owner) -> None:
        """Create the thread if it is new and lock its row; ThreadNotFound if another owns it."""
        thread = None
        # The row may vanish between insert and lock if the thread is deleted right then.
        for _ in range(3):
            await conn.execute(INSERT_THREAD, thread_id, owner.key_name, owner.user_id)
            thread = await conn.fetchrow(LOCK_THREAD, thread_id)
            if thread is not None:
                break
        if thread is None:
            raise StorageError("thread was deleted repeatedly while being written")
        if not owner.matches(thread["key_name"], thread["user_id"]):
            raise ThreadNotFound(thread_id)

    async def finish_assistant_message(
        self,
        message_id: str,
        *,
        content: str,
        status: str,
        model: str | None,
        provider: str | None,
        stop_reason: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_read_input_tokens: int | None = None,
        cache_creation_input_tokens: int | None = None,
        replay_from_seq: int | None = None,
        summary_through_seq: int | None = None,
    ) -> bool:
        check_finish_status(status)
        async with self._connection() as conn:
            result = await conn.execute(
                FINISH_MESSAGE, message_id, clean_text(content), status, model, provider,
                stop_reason, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
                replay_from_seq, summary_through_seq,
            )
        return _affected_rows(result) == 1

    async def save_partial(self, answers: Sequence[tuple[str, str]]) -> None:
        if not answers:
            return
        async with self._connection() as conn:
            await conn.executemany(SAVE_PARTIAL, [(message_id, clean_text(text)) for message_id, text in answers])

    async def heartbeat(self, writer: str) -> None:
        async with self._connection() as conn:
            await conn.execute(HEARTBEAT, writer)

    async def retire_writer(self, writer: str) -> None:
        async with self._connection() as conn:
            await conn.execute(RETIRE_WRITER, writer)

    async def close_abandoned(self, stale_after: float) -> int:
        async with self._connection() as conn:
            result = await conn.execute(CLOSE_ABANDONED, float(stale_after), max(float(stale_after), LEGACY_PENDING_AFTER))
        return _affected_rows(result)

    async def list_messages(
        self, thread_id: str, owner: Owner, *, limit: int = 50, before: str | None = None
    ) -> list[StoredMessage]:
        check_limit("limit", limit)
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn:
            thread = await conn.fetchrow(SELECT_THREAD_OWNER, thread_id)
            if thread is None or not owner.matches(thread["key_name"], thread["user_id"]):
                raise ThreadNotFound(thread_id)
            before_seq = None
            if before is not None:
                before_seq = await conn.fetchval(SELECT_MESSAGE_SEQ, before, thread_id)
                if before_seq is None:
                    raise ValueError(f"message {before!r} is not in thread {thread_id!r}")
            rows = await conn.fetch(SELECT_PAGE, thread_id, limit, before_seq)
        return [_to_message(row) for row in rows]

    async def delete_thread(self, thread_id: str, owner: Owner) -> None:
        thread_id = scoped_thread_id(owner, thread_id)
        # Messages go with the thread (ON DELETE CASCADE).
        async with self._connection() as conn:
            result = await conn.execute(DELETE_THREAD, thread_id, owner.key_name, owner.user_id)
        if _affected_rows(result) == 0:
            raise ThreadNotFound(thread_id)

    async def list_threads(
        self, owner: Owner, *, limit: int = 50, before: ThreadPosition | None = None
    ) -> list[ThreadSummary]:
        check_limit("limit", limit)
        after = LIST_START if before is None else ThreadPosition(before.updated_at, scoped_thread_id(owner, before.thread_id))
        async with self._connection() as conn:
            if owner.user_id is None:
                rows = await conn.fetch(SELECT_THREADS_WITHOUT_USER, owner.key_name, after.updated_at, after.thread_id, limit)
            else:
                rows = await conn.fetch(
                    SELECT_THREADS_OF_USER, owner.key_name, owner.user_id, after.updated_at, after.thread_id, limit
                )
        return [_to_thread_summary(row) for row in rows]

    async def rename_thread(self, thread_id: str, owner: Owner, title: str) -> ThreadSummary:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn:
            row = await conn.fetchrow(RENAME_THREAD, thread_id, owner.key_name, owner.user_id, clean_text(title))
        if row is None:
            raise ThreadNotFound(thread_id)
        return _to_thread_summary(row)
