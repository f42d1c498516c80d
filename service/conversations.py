"""Stored conversations: the store's life cycle, thread-aware chat, and the thread routes."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from providers.base import Message
from service.app_keys import METRICS, SETTINGS, STORAGE, THREAD_OWNER
from service.errors import ApiError
from service.outcome import Outcome, Receipt
from service.storage_state import DeferredAnswer, StorageState, track
from storage import (
    ClientMessage,
    Cut,
    Owner,
    StorageError,
    StorageUnavailable,
    Store,
    ThreadNotFound,
    Turn,
    UnknownMessage,
    new_message_id,
)

if TYPE_CHECKING:
    from service.prompting import PromptShape

log = structlog.get_logger("ai_stream")

UNAVAILABLE = "Conversation storage is unavailable right now; try again shortly."
NOT_FOUND = "There is no such thread."
# What message ids look like (`storage.new_message_id`), checked before a query holds one.
MESSAGE_ID_PATTERN = re.compile(r"msg_[0-9a-f]{32}")


def owner_of(request: web.Request, user_id: str | None) -> Owner:
    return Owner(key_name=request.get(THREAD_OWNER, ""), user_id=user_id)


async def begin_turn(
    request: web.Request, thread_id: str, user_id: str | None, messages: tuple[Message, ...], *, cut: Cut | None = None
) -> Turn:
    """Store the new turn before anything is sent upstream; fail loudly rather than forget it.
    With a `cut` (regenerate, edit), the thread is cut first, in the same transaction."""
    turn_of = [(m.role, m.content) for m in messages]
    history_limit = request.app[SETTINGS].history_limit
    extra = {"cut": cut} if cut is not None else {}
    return await _reserve(
        request, thread_id, user_id, "begin_turn",
        lambda store, owner, assistant_id, writer: store.begin_turn(
            thread_id, owner, turn_of, history_limit, assistant_message_id=assistant_id, writer=writer, **extra
        ),
        cut=cut,
    )


async def follow_chat(
    request: web.Request, thread_id: str, user_id: str | None, conversation: tuple[ClientMessage, ...]
) -> Turn:
    """Make the stored thread follow the client's whole conversation and reserve the answer,
    before anything is sent upstream (see `Store.follow_chat`)."""
    history_limit = request.app[SETTINGS].history_limit
    return await _reserve(
        request, thread_id, user_id, "follow_chat",
        lambda store, owner, assistant_id, writer: store.follow_chat(
            thread_id, owner, conversation, history_limit, assistant_message_id=assistant_id, writer=writer
        ),
    )


async def _reserve(
    request: web.Request,
    thread_id: str,
    user_id: str | None,
    operation: str,
    write: Callable[[Store, Owner, str, str | None], Coroutine[Any, Any, Turn]],
    *,
    cut: Cut | None = None,
) -> Turn:
    """Run `write` (a turn's one transaction) with the answer's row reserved under an id chosen
    here, so that whatever the store says (or fails to say: a commit whose outcome is unknown),
    that row can be closed later and never stays `pending`."""
    state = request.app[STORAGE]
    assistant_id = new_message_id()
    try:
        await state.ensure_open()
        storing = asyncio.ensure_future(write(state.store, owner_of(request, user_id), assistant_id, state.writer))
        try:
            turn = await asyncio.shield(storing)
        except asyncio.CancelledError:
            # The client left while the turn was being stored: once it is, close the answer it
            # reserved, so that no row stays `pending`.
            storing.add_done_callback(lambda done: _close_abandoned(state, thread_id, assistant_id, done))
            raise
    except ThreadNotFound:
        raise ApiError(404, "not_found", NOT_FOUND) from None
    except UnknownMessage as exc:  # nothing was stored: the transaction rolled back
        field = "edit_from" if cut is not None and cut.message_id is not None else "regenerate"
        raise ApiError(400, "validation_error", f"Invalid request: {field}: {exc}.",
                       details=[{"field": field, "message": f"{field}: {exc}"}]) from None
    except ValueError:
        raise  # a bad argument: a bug, reported as one
    except Exception as exc:  # StorageError, or a driver fault the store did not foresee
        state.record(False)
        if not isinstance(exc, StorageError):
            log.error("storage_fault", operation=operation, thread_id=thread_id, error=type(exc).__name__)
        # The turn may have been committed all the same: close its answer through the backlog
        # (a no-op when nothing was stored).
        state.defer(DeferredAnswer(assistant_id, thread_id, _never_answered()))
        raise ApiError(503, "storage_unavailable", UNAVAILABLE, headers={"Retry-After": "5"}) from None
    state.record(True)
    return turn


def _never_answered() -> dict[str, Any]:
    return {"content": "", "status": "error", "model": None, "provider": None,
            "stop_reason": None, "input_tokens": None, "output_tokens": None}


def _close_abandoned(state: StorageState, thread_id: str, assistant_id: str, storing: asyncio.Future[Turn]) -> None:
    if storing.cancelled():
        return
    if storing.exception() is None:
        fields = {**_never_answered(), "status": "interrupted"}
    elif isinstance(storing.exception(), ThreadNotFound | ValueError | UnknownMessage):
        return  # nothing was stored
    else:
        fields = _never_answered()  # the outcome of the commit is unknown: close it if it exists
    # Through the backlog, which retries until the store takes it.
    state.defer(DeferredAnswer(assistant_id, thread_id, fields))


def store_answer(
    request: web.Request,
    thread_id: str,
    message_id: str,
    deadline: float,
    shape: Callable[[], PromptShape] | None = None,
) -> Callable[[Outcome], Awaitable[Receipt]]:
    """How a thread's answer is stored when it ends: retrying with back-off until `deadline`
    (a monotonic time); the receipt goes into the `done` event. `shape` tells what the prompt
    that produced the answer held (read when it ends: a retry may have changed it)."""
    app = request.app
    state = app[STORAGE]

    async def write(outcome: Outcome) -> bool:
        finish = outcome.finish
        fields: dict[str, Any] = {
            "content": "".join(outcome.text),
            "status": outcome.status,
            "model": finish.model if finish else None,
            "provider": finish.provider if finish else None,
            "stop_reason": finish.stop_reason if finish else None,
            "input_tokens": finish.usage.input_tokens if finish else None,
            "output_tokens": finish.usage.output_tokens if finish else None,
        }
        if finish is not None:
            fields.update(
                cache_read_input_tokens=finish.usage.cache_read_input_tokens,
                cache_creation_input_tokens=finish.usage.cache_creation_input_tokens,
            )
            if shape is not None:
                prompt = shape()
                fields.update(replay_from_seq=prompt.replay_from_seq, summary_through_seq=prompt.summary_through_seq)
        state.partials.forget(message_id)
        delay = 0.05
        while True:
            try:
                await state.ensure_open()
                stored = await state.store.finish_assistant_message(message_id, **fields)
            except Exception as exc:  # StorageError, or a driver fault the store did not foresee
                state.record(not isinstance(exc, StorageUnavailable) and isinstance(exc, StorageError))
                if time.monotonic() + delay > deadline:
                    # Not stored in time: the client hears so, and the answer waits in memory
                    # until the store is back, so that its row does not stay `pending`.
                    app[METRICS].storage_write_failures.inc()
                    log.error("answer_write_deferred", thread_id=thread_id, message_id=message_id, error=type(exc).__name__)
                    state.defer(DeferredAnswer(message_id, thread_id, fields))
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            state.record(True)
            if not stored:
                # No pending row to finish: the thread was deleted while the answer streamed,
                # or the row was closed as abandoned (this process was taken for dead).
                log.info("answer_row_gone", thread_id=thread_id, message_id=message_id)
            return stored

    async def store(outcome: Outcome) -> Receipt:
        # A tracked task, so that shutdown waits for it and a cancelled handler cannot cut it.
        persisted = await asyncio.shield(track(app, write(outcome)))
        return Receipt(message_id, persisted)

    return store
