"""The store's life in the app: opened at start-up (or later), watched for /health, answers
that could not be written kept until it is back, and pending writes finished at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from service.app_keys import PENDING_WRITES, SETTINGS, STORAGE
from storage import StorageError, Store, create_store

log = structlog.get_logger("ai_stream")

BACKLOG_LIMIT = 10_000  # answers kept in memory while the store is down


@dataclass(frozen=True, slots=True)
class DeferredAnswer:
    message_id: str
    thread_id: str
    fields: dict[str, Any]  # the keyword arguments of Store.finish_assistant_message


class StorageState:
    """The store, and whether it answered lately, kept fresh by a background check so that
    /health reads a flag instead of waiting on the database."""

    def __init__(self, store: Store, check_interval: float) -> None:
        self.store = store
        self.opened = False
        self.ok = False
        self.check_interval = check_interval
        # Answers whose write failed within their request's time: written when the store is back,
        # so that none stays `pending` (lost only if the process stops while the store is down).
        self.backlog: deque[DeferredAnswer] = deque()
        self._drainer: asyncio.Task[None] | None = None

    async def ensure_open(self) -> None:
        if not self.opened:
            await self.store.open()
            self.opened = True

    async def check(self) -> None:
        try:
            await self.ensure_open()
        except StorageError:
            self.ok = False
            return
        self.ok = await self.store.ping()

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            was_ok = self.ok
            await self.check()
            if self.ok != was_ok:
                log.warning("storage_state", backend=self.store.backend, ok=self.ok)

    def record(self, ok: bool) -> None:
        """What a request just learned about the store."""
        self.ok = ok

    def defer(self, answer: DeferredAnswer) -> None:
        if len(self.backlog) >= BACKLOG_LIMIT:
            dropped = self.backlog.popleft()
            log.error("answer_dropped", thread_id=dropped.thread_id, message_id=dropped.message_id, reason="backlog_full")
        self.backlog.append(answer)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self.drain())

    async def drain(self, *, until_empty: bool = True) -> None:
        """Write the backlog in order, waiting (with back-off) while the store is down."""
        delay = 0.1
        while self.backlog:
            answer = self.backlog[0]
            try:
                await self.ensure_open()
                await self.store.finish_assistant_message(answer.message_id, **answer.fields)
            except StorageError:
                self.ok = False
                if not until_empty:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.check_interval)
                continue
            self.backlog.popleft()
            self.ok = True
            delay = 0.1
            log.info("answer_stored_late", thread_id=answer.thread_id, message_id=answer.message_id)

    async def stop(self, timeout: float) -> None:
        """At shutdown: one last bounded try at the backlog."""
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
        if self.backlog:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain(until_empty=False), timeout)
        for answer in self.backlog:
            log.error("answer_not_stored", thread_id=answer.thread_id, message_id=answer.message_id, reason="shutdown")


def track(app: web.Application, write: Awaitable[bool]) -> asyncio.Task[bool]:
    """A storage write that outlives its request: shutdown waits for it before closing the store."""
    task = asyncio.ensure_future(write)
    app[PENDING_WRITES].add(task)
    task.add_done_callback(app[PENDING_WRITES].discard)
    return task


async def storage_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open the store (or keep trying in the background), close it last."""
    settings = app[SETTINGS]
    state = StorageState(create_store(settings.database_url), settings.storage_check_interval)
    await state.check()
    if not state.ok:
        log.warning("storage_unavailable_at_start", backend=state.store.backend)
    app[STORAGE] = state
    app[PENDING_WRITES] = set()
    watcher = asyncio.create_task(state.watch())
    yield
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    # Answers still being stored (streams that just ended) are written before the store closes.
    pending = app[PENDING_WRITES]
    if pending:
        await asyncio.wait(pending, timeout=settings.shutdown_write_timeout)
    await state.stop(settings.shutdown_write_timeout)
    await state.store.close()
