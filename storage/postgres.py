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

from . import postgres_sql as sql
from .base import (
    ClientMessage,
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
)
from .migrate import load_migrations, pending_migrations
from .rows import (
    LEGACY_PENDING_AFTER,
    chat_rows,
    check_client_messages,
    check_finish_status,
    check_limit,
    check_new_messages,
    clean_text,
    client_thread_id,
    first_removed_seq,
    kept_start,
    new_message_id,
    replayable,
    scoped_thread_id,
    thread_title,
    turn_rows,
)

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
            await conn.execute(sql.ADVISORY_LOCK, sql.MIGRATION_LOCK_KEY)
            await conn.execute(sql.CREATE_MIGRATIONS_TABLE)
            applied = {row["version"] for row in await conn.fetch(sql.SELECT_APPLIED_VERSIONS)}
            for migration in pending_migrations(load_migrations(self.backend), applied):
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(sql.RECORD_MIGRATION, migration.version, migration.name)
            await conn.execute(sql.ADVISORY_UNLOCK, sql.MIGRATION_LOCK_KEY)
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
                    await conn.fetchval(sql.PING)
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
            # A cut needs the thread as it is: it is not created.
            await self._claim_thread(conn, thread_id, owner, create=cut is None)
            if cut is not None:
                removed = await self._cut(conn, thread_id, cut)
            await conn.execute(sql.TOUCH_THREAD, thread_id, thread_title(new_messages))
            # Holding the row lock: no other turn on this thread reads or writes until commit.
            rows = await conn.fetch(sql.SELECT_HISTORY, thread_id, history_limit)
            history = [_to_message(row) for row in rows]
            summary_row = await conn.fetchrow(sql.SELECT_LATEST_SUMMARY, thread_id)
            last_seq = await conn.fetchval(sql.SELECT_LAST_SEQ, thread_id)
            new_rows = turn_rows(thread_id, last_seq, new_messages, user_ids, assistant_id, writer)
            await conn.executemany(sql.INSERT_MESSAGE, new_rows)
        summary = _to_summary(summary_row) if summary_row is not None else None
        return Turn(history=history, user_message_ids=user_ids, assistant_message_id=assistant_id, summary=summary, removed=removed)

    @staticmethod
    async def _cut(conn: asyncpg.Connection, thread_id: str, cut: Cut) -> int:
        if cut.message_id is None:
            found = await conn.fetchrow(sql.SELECT_LAST_USER_MESSAGE, thread_id)
        else:
            found = await conn.fetchrow(sql.SELECT_CUT_MESSAGE, cut.message_id, thread_id)
        first = first_removed_seq(cut, (found["seq"], found["role"]) if found is not None else None)
        await conn.execute(sql.DELETE_SUMMARIES_FROM, thread_id, first)
        return _affected_rows(await conn.execute(sql.DELETE_MESSAGES_FROM, thread_id, first))

    async def cut_thread(self, thread_id: str, owner: Owner, cut: Cut) -> int:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn, conn.transaction():
            thread = await conn.fetchrow(sql.LOCK_THREAD, thread_id)
            if thread is None or not owner.matches(thread["key_name"], thread["user_id"]):
                raise ThreadNotFound(thread_id)
            return await self._cut(conn, thread_id, cut)

    async def summary_of(self, thread_id: str, owner: Owner) -> Summary | None:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn:
            thread = await conn.fetchrow(sql.SELECT_THREAD_OWNER, thread_id)
            if thread is None or not owner.matches(thread["key_name"], thread["user_id"]):
                raise ThreadNotFound(thread_id)
            row = await conn.fetchrow(sql.SELECT_LATEST_SUMMARY, thread_id)
        return _to_summary(row) if row is not None else None

    async def save_summary(self, thread_id: str, owner: Owner, summary: Summary) -> bool:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn, conn.transaction():
            thread = await conn.fetchrow(sql.LOCK_THREAD, thread_id)
            if thread is None or not owner.matches(thread["key_name"], thread["user_id"]):
                return False
            result = await conn.execute(
                sql.INSERT_SUMMARY, thread_id, summary.from_seq, summary.through_seq, summary.from_message_id,
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
            await conn.execute(sql.TOUCH_THREAD, thread_id, thread_title([(m.role, m.content) for m in conversation]))
            # Holding the thread's row lock: the comparison and the writes see no other turn.
            stored = [_to_message(row) for row in await conn.fetch(sql.SELECT_THREAD_MESSAGES, thread_id)]
            kept = kept_start(stored, conversation)
            if kept < len(stored):
                await conn.execute(sql.DELETE_MESSAGES_FROM_SEQ, thread_id, stored[kept].seq)
            new_ids = [new_message_id() for _ in conversation[kept:]]
            last_seq = stored[kept - 1].seq if kept else 0
            rows = chat_rows(thread_id, last_seq, conversation[kept:], new_ids, assistant_id, writer)
            await conn.executemany(sql.INSERT_CLIENT_MESSAGE, rows)
        history = replayable(stored[:kept], history_limit)
        return Turn(history=history, user_message_ids=new_ids, assistant_message_id=assistant_id)

    @staticmethod
    async def _claim_thread(conn: asyncpg.Connection, thread_id: str, owner: Owner, *, create: bool = True) -> None:
        """Lock the thread's row, creating the thread first if it is new (unless `create` is
        false); ThreadNotFound if it is missing or another owns it."""
        thread = None if create else await conn.fetchrow(sql.LOCK_THREAD, thread_id)
        if thread is None and not create:
            raise ThreadNotFound(thread_id)
        # The row may vanish between insert and lock if the thread is deleted right then;
        # inserting again makes a fresh thread, as a request a moment later would.
        for _ in range(3 if create else 0):
            await conn.execute(sql.INSERT_THREAD, thread_id, owner.key_name, owner.user_id)
            thread = await conn.fetchrow(sql.LOCK_THREAD, thread_id)
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
                sql.FINISH_MESSAGE, message_id, clean_text(content), status, model, provider,
                stop_reason, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens,
                replay_from_seq, summary_through_seq,
            )
        return _affected_rows(result) == 1

    async def save_partial(self, answers: Sequence[tuple[str, str]]) -> None:
        if not answers:
            return
        async with self._connection() as conn:
            await conn.executemany(sql.SAVE_PARTIAL, [(message_id, clean_text(text)) for message_id, text in answers])

    async def heartbeat(self, writer: str) -> None:
        async with self._connection() as conn:
            await conn.execute(sql.HEARTBEAT, writer)

    async def retire_writer(self, writer: str) -> None:
        async with self._connection() as conn:
            await conn.execute(sql.RETIRE_WRITER, writer)

    async def close_abandoned(self, stale_after: float) -> int:
        async with self._connection() as conn:
            result = await conn.execute(sql.CLOSE_ABANDONED, float(stale_after), max(float(stale_after), LEGACY_PENDING_AFTER))
        return _affected_rows(result)

    async def list_messages(
        self, thread_id: str, owner: Owner, *, limit: int = 50, before: str | None = None
    ) -> list[StoredMessage]:
        check_limit("limit", limit)
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn:
            thread = await conn.fetchrow(sql.SELECT_THREAD_OWNER, thread_id)
            if thread is None or not owner.matches(thread["key_name"], thread["user_id"]):
                raise ThreadNotFound(thread_id)
            before_seq = None
            if before is not None:
                before_seq = await conn.fetchval(sql.SELECT_MESSAGE_SEQ, before, thread_id)
                if before_seq is None:
                    raise ValueError(f"message {before!r} is not in thread {thread_id!r}")
            rows = await conn.fetch(sql.SELECT_PAGE, thread_id, limit, before_seq)
        return [_to_message(row) for row in rows]

    async def delete_thread(self, thread_id: str, owner: Owner) -> None:
        thread_id = scoped_thread_id(owner, thread_id)
        # Messages go with the thread (ON DELETE CASCADE).
        async with self._connection() as conn:
            result = await conn.execute(sql.DELETE_THREAD, thread_id, owner.key_name, owner.user_id)
        if _affected_rows(result) == 0:
            raise ThreadNotFound(thread_id)

    async def list_threads(
        self, owner: Owner, *, limit: int = 50, before: ThreadPosition | None = None
    ) -> list[ThreadSummary]:
        check_limit("limit", limit)
        after = LIST_START if before is None else ThreadPosition(before.updated_at, scoped_thread_id(owner, before.thread_id))
        async with self._connection() as conn:
            if owner.user_id is None:
                rows = await conn.fetch(sql.SELECT_THREADS_WITHOUT_USER, owner.key_name, after.updated_at, after.thread_id, limit)
            else:
                rows = await conn.fetch(
                    sql.SELECT_THREADS_OF_USER, owner.key_name, owner.user_id, after.updated_at, after.thread_id, limit
                )
        return [_to_thread_summary(row) for row in rows]

    async def rename_thread(self, thread_id: str, owner: Owner, title: str) -> ThreadSummary:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn:
            row = await conn.fetchrow(sql.RENAME_THREAD, thread_id, owner.key_name, owner.user_id, clean_text(title))
        if row is None:
            raise ThreadNotFound(thread_id)
        return _to_thread_summary(row)
