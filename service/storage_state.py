"""The store's life in the app: opened at start-up (or later), watched for /health, answers
that could not be written kept until it is back, the text of answers in progress saved as it
grows, answers a dead process left `pending` closed, and pending writes finished at shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
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


def new_writer_id() -> str:
    """This process among the replicas sharing a store."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class PartialTexts:
    """The text so far of the stored answers this process is streaming, saved to their rows at
    most once per interval (never on the per-token path), so that a crash loses at most that
    much of an answer."""

    def __init__(self) -> None:
        # message id -> (the answer's text pieces, how many pieces are already saved)
        self._answers: dict[str, tuple[list[str], int]] = {}

    def track(self, message_id: str, pieces: list[str]) -> None:
        self._answers[message_id] = (pieces, 0)

    def forget(self, message_id: str) -> None:
        self._answers.pop(message_id, None)

    def changed(self) -> list[tuple[str, str]]:
        """(message id, text) of the answers that grew since they were last saved."""
        changed = []
        for message_id, (pieces, saved) in list(self._answers.items()):
            if len(pieces) != saved:
                changed.append((message_id, "".join(pieces)))
                self._answers[message_id] = (pieces, len(pieces))
        return changed

    def __len__(self) -> int:
        return len(self._answers)


@dataclass(frozen=True, slots=True)
class DeferredAnswer:
    message_id: str
    thread_id: str
    fields: dict[str, Any]  # the keyword arguments of Store.finish_assistant_message


class StorageState:
    """The store, and whether it answered lately, kept fresh by a background check so that
    /health reads a flag instead of waiting on the database."""

    def __init__(
        self, store: Store, check_interval: float, flush_interval: float = 1.0, stale_after: float = 30.0
    ) -> None:
        self.store = store
        self.opened = False
        self.ok = False
        self.check_interval = check_interval
        self.flush_interval = flush_interval
        self.writer = new_writer_id()
        # Generous: a store outage stops heartbeats too, and a live writer's rows must not be closed.
        self.stale_after = max(stale_after, 2 * check_interval)
        self.partials = PartialTexts()
        # Answers whose write failed within their request's time: written when the store is back,
        # so that none stays `pending` (lost only if the process stops while the store is down).
        self.backlog: deque[DeferredAnswer] = deque()
        self._drainer: asyncio.Task[None] | None = None

    async def ensure_open(self) -> None:
        if not self.opened:
            await self.store.open()
            self.opened = True

    async def check(self) -> None:
        """Is the store answering? Then also: this process is alive, and the answers that
        dead processes left `pending` are closed."""
        try:
            await self.ensure_open()
        except StorageError:
            self.ok = False
            return
        self.ok = await self.store.ping()
        if self.ok:
            await self._keep_writers()

    async def _keep_writers(self) -> None:
        try:
            await self.store.heartbeat(self.writer)
            closed = await self.store.close_abandoned(self.stale_after)
        except Exception as exc:  # a failed round is retried at the next check
            log.warning("writer_check_failed", error=type(exc).__name__)
            return
        if closed:
            log.warning("abandoned_answers_closed", count=closed, status="interrupted")

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            was_ok = self.ok
            await self.check()
            if self.ok != was_ok:
                log.warning("storage_state", backend=self.store.backend, ok=self.ok)

    async def save_partials(self) -> None:
        """Every `flush_interval`: the text of answers in progress, in one batch."""
        while True:
            await asyncio.sleep(self.flush_interval)
            changed = self.partials.changed()
            if not changed or not self.opened:
                continue
            try:
                await self.store.save_partial(changed)
            except Exception as exc:  # the final write still comes; this was only insurance
                log.warning("partial_save_failed", answers=len(changed), error=type(exc).__name__)

    def record(self, ok: bool) -> None:
        """What a request just learned about the store."""
        self.ok = ok

    def defer(self, answer: DeferredAnswer) -> None:
        if len(self.backlog) >= BACKLOG_LIMIT:
            dropped = self.backlog.popleft()
            log.error("answer_dropped_backlog_full", thread_id=dropped.thread_id, message_id=dropped.message_id)
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
            log.error("answer_lost_at_shutdown", thread_id=answer.thread_id, message_id=answer.message_id)
        if self.opened and self.ok:
            with contextlib.suppress(Exception):
                await self.store.retire_writer(self.writer)


def track(app: web.Application, write: Awaitable[bool]) -> asyncio.Task[bool]:
    """A storage write that outlives its request: shutdown waits for it before closing the store."""
    task = asyncio.ensure_future(write)
    app[PENDING_WRITES].add(task)
    task.add_done_callback(app[PENDING_WRITES].discard)
    return task


async def storage_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open the store (or keep trying in the background), close it last."""
    settings = app[SETTINGS]
    state = StorageState(
        create_store(settings.database_url),
        settings.storage_check_interval,
        settings.partial_flush_interval,
        settings.writer_stale_after,
    )
    await state.check()
    if not state.ok:
        log.warning("storage_unavailable_at_start", backend=state.store.backend)
    app[STORAGE] = state
    app[PENDING_WRITES] = set()
    watcher = asyncio.create_task(state.watch())
    saver = asyncio.create_task(state.save_partials())
    yield
    for task in (watcher, saver):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Answers still being stored (streams that just ended) are written before the store closes.
    pending = app[PENDING_WRITES]
    if pending:
        await asyncio.wait(pending, timeout=settings.shutdown_write_timeout)
    await state.stop(settings.shutdown_write_timeout)
    await state.store.close()
