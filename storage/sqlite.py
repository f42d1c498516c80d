"""SQLite store: one aiosqlite connection to a database file, for single-node deployments.

aiosqlite runs every statement on one worker thread, so a statement from one asyncio task
would silently join another task's open transaction. An `asyncio.Lock` therefore wraps every
use of the connection (reads included), and each write transaction starts with
`BEGIN IMMEDIATE`, which also takes SQLite's write lock up front so other processes sharing
the file wait (busy timeout) instead of failing half way through a turn.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosqlite

from . import sqlite_sql as sql
from .base import (
    MESSAGE_FIELDS,
    SUMMARY_COLUMNS,
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
from .migrate import load_migrations, pending_migrations, split_statements
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

# Where the first page starts: after every thread (timestamps are ISO text, compared as such).
LIST_START = ("9999-12-31T23:59:59.999999+00:00", "")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _timestamp(moment: datetime) -> str:
    """A datetime as stored: ISO-8601 UTC text with microseconds, as `_now()` writes it."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _to_thread_summary(row: sqlite3.Row | tuple) -> ThreadSummary:
    thread_id, title, created_at, updated_at, message_count = row
    return ThreadSummary(
        client_thread_id(thread_id), title, datetime.fromisoformat(created_at), datetime.fromisoformat(updated_at), message_count
    )


_SUMMARY_FIELDS = SUMMARY_COLUMNS.split(", ")


def _to_message(row: sqlite3.Row | tuple) -> StoredMessage:
    values = dict(zip(MESSAGE_FIELDS, row))
    values["thread_id"] = client_thread_id(values["thread_id"])
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    return StoredMessage(**values)


def _to_summary(row: sqlite3.Row | tuple) -> Summary:
    fields = dict(zip(_SUMMARY_FIELDS, row))
    fields["thread_id"] = client_thread_id(fields["thread_id"])
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    return Summary(**fields)


async def _rollback(conn: aiosqlite.Connection) -> None:
    # Queued on aiosqlite's thread even while this task is being cancelled, so it runs after
    # the interrupted statement. It fails only if SQLite already rolled back; keep the
    # original error then.
    try:
        await conn.execute(sql.ROLLBACK)
    except sqlite3.Error:
        pass


def _map_error(exc: OSError | sqlite3.Error) -> StorageError:
    if isinstance(exc, OSError):  # the folder cannot be created; strerror omits the path
        return StorageUnavailable(f"SQLite database is unavailable ({exc.strerror or exc})")
    if isinstance(exc, sqlite3.OperationalError):  # locked, I/O error, cannot open the file
        return StorageUnavailable(f"SQLite database is unavailable ({exc})")
    return StorageError(f"SQLite error ({type(exc).__name__}: {exc})")


class SqliteStore:
    backend = "sqlite"

    def __init__(
        self, path: str | Path, *, busy_timeout: float = 5.0, ping_timeout: float = 1.0
    ) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._ping_timeout = ping_timeout
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def open(self) -> None:
        if self._conn is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None  # we BEGIN/sql.COMMIT
            )
        except (OSError, sqlite3.Error) as exc:
            raise _map_error(exc) from exc
        try:
            await self._set_up(conn)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, OSError | sqlite3.Error):
                raise _map_error(exc) from exc
            raise
        self._conn = conn

    async def _set_up(self, conn: aiosqlite.Connection) -> None:
        # Switching a new file to WAL (or recovering a WAL) can report "database is locked"
        # at once, without waiting the busy timeout, when several connections open together.
        deadline = asyncio.get_running_loop().time() + self._busy_timeout
        while True:
            try:
                for pragma in sql.CONNECTION_PRAGMAS:
                    await conn.execute_fetchall(pragma)
                await self._migrate(conn)
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.05)

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        # All pending migrations in one write transaction: another process opening the same
        # file at once waits on the lock, then finds them applied.
        try:
            await conn.execute(sql.BEGIN_IMMEDIATE)
            await conn.execute(sql.CREATE_MIGRATIONS_TABLE)
            applied = {row[0] for row in await conn.execute_fetchall(sql.SELECT_APPLIED_VERSIONS)}
            for migration in pending_migrations(load_migrations(self.backend), applied):
                for statement in split_statements(migration.sql):
                    await conn.execute(statement)
                await conn.execute(sql.RECORD_MIGRATION, (migration.version, migration.name, _now()))
            await conn.execute(sql.COMMIT)
        except BaseException:
            await _rollback(conn)
            raise

    async def close(self) -> None:
        async with self._lock:  # let a running transaction finish first
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    async def ping(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            # No lock: SELECT 1 is harmless inside another task's transaction, and waiting
            # behind a long write would report a healthy database as down.
            async with asyncio.timeout(self._ping_timeout):
                await conn.execute_fetchall(sql.PING)
        except Exception:
            return False
        return True

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """Exclusive use of the connection for one call, with driver errors mapped to ours."""
        async with self._lock:
            conn = self._conn
            if conn is None:
                raise StorageUnavailable("store is not open")
            try:
                yield conn
            except (OSError, sqlite3.Error) as exc:
                raise _map_error(exc) from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._connection() as conn:
            try:
                # Inside the try: if the task is cancelled while BEGIN is queued, BEGIN still
                # runs on aiosqlite's thread and must be rolled back.
                await conn.execute(sql.BEGIN_IMMEDIATE)
                yield conn
                await conn.execute(sql.COMMIT)
            except BaseException:
                await _rollback(conn)
                raise

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
        now = _now()
        removed = 0
        async with self._transaction() as conn:
            if cut is None:
                await conn.execute(sql.INSERT_THREAD, (thread_id, owner.key_name, owner.user_id, now))
            threads = await conn.execute_fetchall(sql.SELECT_THREAD_OWNER, (thread_id,))
            if not threads or not owner.matches(*threads[0]):
                raise ThreadNotFound(thread_id)
            if cut is not None:
                removed = await self._cut(conn, thread_id, cut)
            await conn.execute(sql.TOUCH_THREAD, (now, thread_title(new_messages), thread_id))
            rows = await conn.execute_fetchall(sql.SELECT_HISTORY, (thread_id, history_limit))
            history = [_to_message(row) for row in rows]
            summaries = await conn.execute_fetchall(sql.SELECT_LATEST_SUMMARY, (thread_id,))
            [(last_seq,)] = await conn.execute_fetchall(sql.SELECT_LAST_SEQ, (thread_id,))
            new_rows = turn_rows(thread_id, last_seq, new_messages, user_ids, assistant_id, writer)
            await conn.executemany(sql.INSERT_MESSAGE, [(*row, now) for row in new_rows])
        summary = _to_summary(summaries[0]) if summaries else None
        return Turn(history=history, user_message_ids=user_ids, assistant_message_id=assistant_id, summary=summary, removed=removed)

    @staticmethod
    async def _cut(conn: aiosqlite.Connection, thread_id: str, cut: Cut) -> int:
        if cut.message_id is None:
            found = await conn.execute_fetchall(sql.SELECT_LAST_USER_MESSAGE, (thread_id,))
        else:
            found = await conn.execute_fetchall(sql.SELECT_CUT_MESSAGE, (cut.message_id, thread_id))
        first = first_removed_seq(cut, tuple(found[0]) if found else None)  # type: ignore[arg-type]
        await conn.execute(sql.DELETE_SUMMARIES_FROM, (thread_id, first))
        cursor = await conn.execute(sql.DELETE_MESSAGES_FROM, (thread_id, first))
        return cursor.rowcount

    async def cut_thread(self, thread_id: str, owner: Owner, cut: Cut) -> int:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._transaction() as conn:
            threads = await conn.execute_fetchall(sql.SELECT_THREAD_OWNER, (thread_id,))
            if not threads or not owner.matches(*threads[0]):
                raise ThreadNotFound(thread_id)
            return await self._cut(conn, thread_id, cut)

    async def summary_of(self, thread_id: str, owner: Owner) -> Summary | None:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn:
            threads = await conn.execute_fetchall(sql.SELECT_THREAD_OWNER, (thread_id,))
            if not threads or not owner.matches(*threads[0]):
                raise ThreadNotFound(thread_id)
            rows = await conn.execute_fetchall(sql.SELECT_LATEST_SUMMARY, (thread_id,))
        return _to_summary(rows[0]) if rows else None

    async def save_summary(self, thread_id: str, owner: Owner, summary: Summary) -> bool:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._transaction() as conn:
            threads = await conn.execute_fetchall(sql.SELECT_THREAD_OWNER, (thread_id,))
            if not threads or not owner.matches(*threads[0]):
                return False
            cursor = await conn.execute(sql.INSERT_SUMMARY, (
                thread_id, summary.from_seq, summary.through_seq, summary.from_message_id, summary.through_message_id,
                clean_text(summary.content), summary.model, summary.provider, _now(),
            ))
            return cursor.rowcount == 1

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
        now = _now()
        async with self._transaction() as conn:
            await conn.execute(sql.INSERT_THREAD, (thread_id, owner.key_name, owner.user_id, now))
            [thread] = await conn.execute_fetchall(sql.SELECT_THREAD_OWNER, (thread_id,))
            if not owner.matches(*thread):
                raise ThreadNotFound(thread_id)
            await conn.execute(sql.TOUCH_THREAD, (now, thread_title([(m.role, m.content) for m in conversation]), thread_id))
            stored = [_to_message(row) for row in await conn.execute_fetchall(sql.SELECT_THREAD_MESSAGES, (thread_id,))]
            kept = kept_start(stored, conversation)
            if kept < len(stored):
                await conn.execute(sql.DELETE_MESSAGES_FROM_SEQ, (thread_id, stored[kept].seq))
            new_ids = [new_message_id() for _ in conversation[kept:]]
            last_seq = stored[kept - 1].seq if kept else 0
            rows = chat_rows(thread_id, last_seq, conversation[kept:], new_ids, assistant_id, writer)
            await conn.executemany(sql.INSERT_CLIENT_MESSAGE, [(*row, now) for row in rows])
        history = replayable(stored[:kept], history_limit)
        return Turn(history=history, user_message_ids=new_ids, assistant_message_id=assistant_id)

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
        params = (clean_text(content), status, model, provider, stop_reason, input_tokens, output_tokens,
                  cache_read_input_tokens, cache_creation_input_tokens, replay_from_seq, summary_through_seq, message_id)
        async with self._connection() as conn:
            cursor = await conn.execute(sql.FINISH_MESSAGE, params)
            return cursor.rowcount == 1

    async def save_partial(self, answers: Sequence[tuple[str, str]]) -> None:
        if not answers:
            return
        async with self._connection() as conn:
            await conn.executemany(sql.SAVE_PARTIAL, [(clean_text(text), message_id) for message_id, text in answers])

    async def heartbeat(self, writer: str) -> None:
        async with self._connection() as conn:
            await conn.execute(sql.HEARTBEAT, (writer, _now()))

    async def retire_writer(self, writer: str) -> None:
        async with self._connection() as conn:
            await conn.execute(sql.RETIRE_WRITER, (writer,))

    async def close_abandoned(self, stale_after: float) -> int:
        now = datetime.now(UTC)
        alive_since = (now - timedelta(seconds=stale_after)).isoformat(timespec="microseconds")
        legacy_since = (now - timedelta(seconds=max(stale_after, LEGACY_PENDING_AFTER))).isoformat(timespec="microseconds")
        async with self._connection() as conn:
            cursor = await conn.execute(sql.CLOSE_ABANDONED, (alive_since, legacy_since))
            return cursor.rowcount

    async def list_messages(
        self, thread_id: str, owner: Owner, *, limit: int = 50, before: str | None = None
    ) -> list[StoredMessage]:
        check_limit("limit", limit)
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._connection() as conn:
            threads = await conn.execute_fetchall(sql.SELECT_THREAD_OWNER, (thread_id,))
            if not threads or not owner.matches(*threads[0]):
                raise ThreadNotFound(thread_id)
            before_seq = None
            if before is not None:
                found = await conn.execute_fetchall(sql.SELECT_MESSAGE_SEQ, (before, thread_id))
                if not found:
                    raise ValueError(f"message {before!r} is not in thread {thread_id!r}")
                [(before_seq,)] = found
            rows = await conn.execute_fetchall(sql.SELECT_PAGE, (thread_id, limit, before_seq))
        return [_to_message(row) for row in rows]

    async def delete_thread(self, thread_id: str, owner: Owner) -> None:
        thread_id = scoped_thread_id(owner, thread_id)
        # Messages go with the thread (ON DELETE CASCADE, foreign_keys is on).
        async with self._connection() as conn:
            cursor = await conn.execute(sql.DELETE_THREAD, (thread_id, owner.key_name, owner.user_id))
            deleted = cursor.rowcount
        if deleted == 0:
            raise ThreadNotFound(thread_id)

    async def list_threads(
        self, owner: Owner, *, limit: int = 50, before: ThreadPosition | None = None
    ) -> list[ThreadSummary]:
        check_limit("limit", limit)
        after = LIST_START if before is None else (_timestamp(before.updated_at), scoped_thread_id(owner, before.thread_id))
        async with self._connection() as conn:
            rows = await conn.execute_fetchall(sql.SELECT_THREADS, (owner.key_name, owner.user_id, *after, limit))
        return [_to_thread_summary(row) for row in rows]

    async def rename_thread(self, thread_id: str, owner: Owner, title: str) -> ThreadSummary:
        thread_id = scoped_thread_id(owner, thread_id)
        async with self._transaction() as conn:
            cursor = await conn.execute(sql.RENAME_THREAD, (clean_text(title), thread_id, owner.key_name, owner.user_id))
            if cursor.rowcount == 0:
                raise ThreadNotFound(thread_id)
            [row] = await conn.execute_fetchall(sql.SELECT_THREAD_SUMMARY, (thread_id,))
        return _to_thread_summary(row)
