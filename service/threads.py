"""The thread routes: the list (`GET /ai/threads`), a thread's messages, renaming and deleting."""

from __future__ import annotations

import base64
import binascii
import contextlib
import unicodedata
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from aiohttp import web

from providers.base import Usage
from service.app_keys import STORAGE
from service.body import read_json
from service.conversations import MESSAGE_ID_PATTERN, NOT_FOUND, UNAVAILABLE, owner_of
from service.errors import ApiError
from service.formats.typed_sse import usage_fields
from service.schemas import THREAD_ID_PATTERN
from service.storage_state import StorageState
from storage import (
    Owner,
    StorageError,
    StoredMessage,
    Summary,
    ThreadNotFound,
    ThreadPosition,
    ThreadSummary,
)

TITLE_MAX = 200


def _timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def thread_json(thread: ThreadSummary) -> dict[str, Any]:
    return {
        "id": thread.id,
        "title": thread.title,
        "created_at": _timestamp(thread.created_at),
        "updated_at": _timestamp(thread.updated_at),
        "message_count": thread.message_count,
    }


# The `before` cursor: the position of a page's last thread, so that paging stays in place
# while threads gain turns. Opaque to clients (base64url of "<updated_at>~<thread id>").


def encode_cursor(thread: ThreadSummary) -> str:
    raw = f"{thread.updated_at.isoformat()}~{thread.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> ThreadPosition:
    """The position a cursor names; ValueError if it is not one this service made."""
    if not cursor.isascii() or len(cursor) > 400:
        raise ValueError("not a cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("not a cursor") from None
    moment, sep, thread_id = raw.partition("~")
    if not sep or not THREAD_ID_PATTERN.fullmatch(thread_id):
        raise ValueError("not a cursor")
    updated_at = datetime.fromisoformat(moment)  # ValueError when malformed
    if updated_at.tzinfo is None:
        raise ValueError("not a cursor")
    return ThreadPosition(updated_at, thread_id)


@contextlib.contextmanager
def storage_errors(state: StorageState) -> Iterator[None]:
    """The store's failures as the thread routes answer them: 404, or 503 with Retry-After."""
    try:
        yield
    except ThreadNotFound:
        raise ApiError(404, "not_found", NOT_FOUND) from None
    except StorageError:
        state.record(False)
        raise ApiError(503, "storage_unavailable", UNAVAILABLE, headers={"Retry-After": "5"}) from None
    state.record(True)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "validation_error", f"Invalid request: {message}.", details=[{"field": field, "message": message}])


async def list_threads(request: web.Request) -> web.Response:
    limit = query_limit(request)
    owner = owner_of(request, query_user_id(request))
    before = None
    if cursor := request.query.get("before"):
        try:
            before = decode_cursor(cursor)
        except ValueError:
            raise _invalid("before", "before must be the next_before of a previous page") from None
    state = request.app[STORAGE]
    with storage_errors(state):
        await state.ensure_open()
        # One more than asked tells whether more threads follow.
        page = await state.store.list_threads(owner, limit=limit + 1, before=before)
    has_more = len(page) > limit
    threads = page[:limit]
    return web.json_response(
        {
            "threads": [thread_json(t) for t in threads],
            "has_more": has_more,
            "next_before": encode_cursor(threads[-1]) if has_more else None,
        }
    )


def clean_title(value: object) -> str:
    """A title as given in PATCH: white space trimmed and collapsed; 1-200 characters, no
    control characters (ApiError otherwise)."""
    if not isinstance(value, str):
        raise _invalid("title", "title must be a string")
    if len(value) > TITLE_MAX:
        raise _invalid("title", f"title must be at most {TITLE_MAX} characters")
    # Lone surrogates (from JSON escapes) cannot be stored; control characters break a line.
    if any(unicodedata.category(c) in ("Cs", "Cc") and not c.isspace() for c in value):
        raise _invalid("title", "title must not contain control characters")
    title = " ".join(value.split())
    if not title:
        raise _invalid("title", "title must not be blank")
    return title


async def rename_thread(request: web.Request) -> web.Response:
    thread_id = thread_id_of(request)
    owner = owner_of(request, query_user_id(request))
    data = await read_json(request)
    if "title" not in data:
        raise _invalid("title", "title is required")
    title = clean_title(data["title"])
    state = request.app[STORAGE]
    with storage_errors(state):
        await state.ensure_open()
        thread = await state.store.rename_thread(thread_id, owner, title)
    return web.json_response(thread_json(thread))


def add_thread_routes(app: web.Application) -> None:
    app.router.add_get("/ai/threads", list_threads)
    app.router.add_get("/ai/threads/{thread_id}/messages", list_messages)
    app.router.add_patch("/ai/threads/{thread_id}", rename_thread)
    app.router.add_delete("/ai/threads/{thread_id}", delete_thread)


def thread_id_of(request: web.Request) -> str:
    thread_id = request.match_info["thread_id"]
    if not THREAD_ID_PATTERN.fullmatch(thread_id):
        raise ApiError(404, "not_found", NOT_FOUND)
    return thread_id


def owner_from_query(request: web.Request) -> Owner:
    return owner_of(request, query_user_id(request))


def query_user_id(request: web.Request) -> str | None:
    user_id = request.query.get("user_id")
    if user_id is not None and not 1 <= len(user_id) <= 128:
        raise ApiError(400, "validation_error", "Invalid request: user_id must be 1-128 characters.",
                       details=[{"field": "user_id", "message": "user_id must be 1-128 characters"}])
    if user_id is not None and "\x00" in user_id:  # PostgreSQL text cannot hold it
        raise ApiError(400, "validation_error", "Invalid request: user_id must not contain NUL characters.",
                       details=[{"field": "user_id", "message": "user_id must not contain NUL characters"}])
    return user_id


def query_limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 200:
        raise ApiError(400, "validation_error", "Invalid request: limit must be an integer from 1 to 200.",
                       details=[{"field": "limit", "message": "limit must be an integer from 1 to 200"}])
    return int(raw)


def summary_json(summary: Summary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "from_message_id": summary.from_message_id,
        "through_message_id": summary.through_message_id,
        "model": summary.model,
        "created_at": summary.created_at.isoformat().replace("+00:00", "Z") if summary.created_at else None,
    }


def message_json(message: StoredMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "model": message.model,
        "provider": message.provider,
        "stop_reason": message.stop_reason,
        "status": message.status,
        "usage": None
        if message.input_tokens is None
        else usage_fields(Usage(message.input_tokens, message.output_tokens or 0, message.cache_read_input_tokens or 0,
                                message.cache_creation_input_tokens or 0)),
        "created_at": message.created_at.isoformat().replace("+00:00", "Z"),
    }


async def list_messages(request: web.Request) -> web.Response:
    thread_id = thread_id_of(request)
    limit = query_limit(request)
    owner = owner_from_query(request)
    before = request.query.get("before") or None
    if before is not None and not MESSAGE_ID_PATTERN.fullmatch(before):
        raise _invalid("before", "before must be the id of a message in this thread")
    state = request.app[STORAGE]
    try:
        with storage_errors(state):
            await state.ensure_open()
            # One more than asked tells whether older messages remain.
            page = await state.store.list_messages(thread_id, owner, limit=limit + 1, before=before)
            summary = await state.store.summary_of(thread_id, owner)
    except ValueError:
        raise _invalid("before", "before must be the id of a message in this thread") from None
    has_more = len(page) > limit
    messages = page[1:] if has_more else page
    return web.json_response(
        {
            "thread_id": thread_id,
            "messages": [message_json(m) for m in messages],
            "has_more": has_more,
            "next_before": messages[0].id if has_more and messages else None,
            # Which messages the thread's summary covers (they are still listed here, but are
            # replayed to the model as that summary); null without one.
            "summary": summary_json(summary),
        }
    )


async def delete_thread(request: web.Request) -> web.Response:
    thread_id = thread_id_of(request)
    owner = owner_from_query(request)
    state = request.app[STORAGE]
    with storage_errors(state):
        await state.ensure_open()
        await state.store.delete_thread(thread_id, owner)
    return web.Response(status=204)
