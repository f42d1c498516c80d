"""The routes that read or stop a resumable answer:

- `GET /ai/stream/answers/{answer_id}` with `Last-Event-ID` (or `?after=<seq>`): the events after
  that one, then the live rest, in the answer's format; 204 when the answer has ended and the
  client has its last event already.
- `POST /ai/stream/answers/{answer_id}/cancel`: stops it (the "stop" button).
- `GET /ai/ui/chat/{chat_id}/stream`: the chat's answer in progress from its start, for
  `useChat({ resume: true })`; 204 when it has none.

Ownership is a thread's (the API key's name and `?user_id=`): another owner's answer is a 404,
like an unknown one. The answer is read from this process when it holds it, else from Redis
(REDIS_URL); service/resume_redis.py does the latter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from service.answer_log import AnswerInfo, AnswerLog
from service.app_keys import ANSWER_LOGS, ANSWER_MIRROR, REDIS, SETTINGS
from service.body import invalid
from service.conversations import owner_of
from service.errors import ApiError
from service.event_ids import ANSWER_ID_PATTERN, parse_after
from service.resumable import read_answer
from service.resume_redis import is_redis_failure
from service.resume_remote import Gone, replay_remote
from service.schemas import THREAD_ID_PATTERN
from service.overload import continues_answer
from service.security import opens_answer
from service.threads import query_user_id
from storage import Owner

if TYPE_CHECKING:
    from service.resume_redis import AnswerMirror

NOT_FOUND = "There is no such answer, or it is no longer kept."
GONE = "The events after that one are no longer kept (the answer outgrew AI_RESUME_BUFFER_BYTES); ask again."
UNAVAILABLE = "Resuming answers is unavailable right now (the shared store of answers does not answer); try again shortly."
OTHER_WORKER = ("This answer is not held by the worker process that took this request (several workers without "
                "REDIS_URL); try again: another connection may reach the worker that holds it.")
# How long a cancel waits for the answer to be stopped and stored before it answers.
CANCEL_WAIT = 5.0


def not_found() -> ApiError:
    return ApiError(404, "not_found", NOT_FOUND)


def gone() -> ApiError:
    return ApiError(410, "resume_gone", GONE)


def unavailable(message: str = UNAVAILABLE) -> ApiError:
    return ApiError(503, "resume_unavailable", message, headers={"Retry-After": "1"})


def owns(info: AnswerInfo, owner: Owner) -> bool:
    return info.owner == owner


def _answer_id(request: web.Request) -> str:
    answer_id = request.match_info["answer_id"]
    if not ANSWER_ID_PATTERN.fullmatch(answer_id):
        raise not_found()
    return answer_id


def _after(request: web.Request, answer_id: str) -> int:
    after = parse_after(answer_id, request.headers.get("Last-Event-ID"), request.query.get("after"))
    if after is None:
        field = "Last-Event-ID" if request.headers.get("Last-Event-ID", "").strip() else "after"
        raise invalid([{"field": field, "message": f"{field} must be an event id of this answer "
                                                     "(<answer id>:<seq>) or a sequence number"}])
    return after


@opens_answer
@continues_answer
async def resume_answer(request: web.Request) -> web.StreamResponse:
    answer_id = _answer_id(request)
    owner = owner_of(request, query_user_id(request))
    after = _after(request, answer_id)
    answer_log = request.app[ANSWER_LOGS].get(answer_id)
    if answer_log is not None:
        if not owns(answer_log.info, owner):
            raise not_found()
        return await _replay(request, answer_log, after)
    mirror = _remote(request)
    async with _reading(mirror, request):
        answer = await mirror.remote(answer_id)
        if answer is None or not owns(answer.info, owner):
            raise not_found()
        return await replay_remote(request, mirror, answer, after)


async def _replay(request: web.Request, answer_log: AnswerLog, after: int) -> web.StreamResponse:
    """Checks that need no stream (all answered as JSON, or 204), then the stream."""
    if after > answer_log.last_seq:
        raise invalid([{"field": "after", "message": f"after is past the answer's last event ({answer_log.last_seq})"}])
    if after < answer_log.dropped:
        raise gone()
    if answer_log.ended and after == answer_log.last_seq:
        return web.Response(status=204)  # nothing follows: an EventSource stops reconnecting
    return await read_answer(request, answer_log, after)


async def cancel_answer(request: web.Request) -> web.Response:
    answer_id = _answer_id(request)
    owner = owner_of(request, query_user_id(request))
    answer_log = request.app[ANSWER_LOGS].get(answer_id)
    if answer_log is not None:
        if not owns(answer_log.info, owner):
            raise not_found()
        producer = answer_log.producer
        cancelled = answer_log.stop("cancelled")
        if cancelled and producer is not None:
            # Answer once it is stopped and stored (waiting does not cancel it).
            await asyncio.wait([producer], timeout=CANCEL_WAIT)
        return web.json_response({"answer_id": answer_id, "cancelled": cancelled})
    mirror = _remote(request)
    async with _reading(mirror, request):
        answer = await mirror.remote(answer_id)
        if answer is None or not owns(answer.info, owner):
            raise not_found()
        cancelled = await mirror.cancel(answer, CANCEL_WAIT)
    return web.json_response({"answer_id": answer_id, "cancelled": cancelled})


@opens_answer
@continues_answer
async def resume_chat(request: web.Request) -> web.StreamResponse:
    chat_id = request.match_info["chat_id"]
    if not THREAD_ID_PATTERN.fullmatch(chat_id):
        raise ApiError(404, "not_found", "There is no such thread.")
    owner = owner_of(request, query_user_id(request))
    answer_log = request.app[ANSWER_LOGS].active_chat_answer(owner, chat_id)
    if answer_log is not None:
        if answer_log.dropped:
            raise gone()  # the SDK rebuilds the message from a full replay only
        return await read_answer(request, answer_log, 0)
    if not request.app[REDIS].configured:
        # Only this process can tell; with several workers another one may hold the chat's
        # answer, but a 204 keeps every page load working (see README).
        return web.Response(status=204)
    mirror = _remote(request)
    async with _reading(mirror, request):
        answer_id = await mirror.chat_answer(owner, chat_id)
        answer = await mirror.remote(answer_id) if answer_id is not None else None
        if answer is None or answer.ended or not owns(answer.info, owner):
            return web.Response(status=204)
        return await replay_remote(request, mirror, answer, 0)


def _remote(request: web.Request) -> AnswerMirror:
    """The Redis side of resumes; a JSON error when it cannot tell (never a hang)."""
    mirror = request.app.get(ANSWER_MIRROR)
    link = request.app[REDIS]
    if mirror is not None and link.up:
        return mirror
    if link.configured:
        raise unavailable()
    if request.app[SETTINGS].workers > 1:
        raise unavailable(OTHER_WORKER)
    raise not_found()


@contextlib.asynccontextmanager
async def _reading(mirror: AnswerMirror, request: web.Request) -> AsyncIterator[None]:
    """Redis failing before the stream starts: 503 `resume_unavailable` (and the link told)."""
    try:
        yield
    except Gone:
        raise gone() from None
    except Exception as exc:
        if not is_redis_failure(exc):
            raise
        mirror.link.failed("resume_read", exc)
        raise unavailable() from None


def add_resume_routes(app: web.Application) -> None:
    app.router.add_get("/ai/stream/answers/{answer_id}", resume_answer)
    app.router.add_post("/ai/stream/answers/{answer_id}/cancel", cancel_answer)
    app.router.add_get("/ai/ui/chat/{chat_id}/stream", resume_chat)
