"""Resumable answers: produced by a task of their own, read by any number of requests.

An answer is resumable when it belongs to a stored thread (unless the request says
`"resumable": false`) or the request says `"resumable": true`. Its producer runs detached from
the request that asked: it appends the answer's numbered events to the answer's log
(service/answer_log.py) and, with REDIS_URL, to a Redis Stream (service/resume_redis.py). The
request that asked is only the log's first reader, and a resume (`GET /ai/stream/answers/{id}`)
is another. A client that goes away therefore costs nothing but its reader: the answer goes on
until it ends, or until nobody has read it for AI_RESUME_ABANDON_AFTER seconds, when it is
cancelled and stored as `interrupted`, as an answer whose client left always was.

However the producer ends (done, an upstream failure, a time limit, a shutdown, a cancel, a bug
of ours), its log ends with exactly one terminal event, and the answer is stored through the
same `AnswerEnd` as every other answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableSet

import structlog
from aiohttp import web

from providers.base import AttemptStarted, ModelRequest, Provider, ProviderError
from service.answer import AnswerEnd, Cutoff, _consume
from service.answer_log import AnswerInfo, AnswerLog, AnswerLogs, BufferGone
from service.app_keys import ANSWER_LOGS, ANSWER_MIRROR, REDIS, REQUEST_ID, SETTINGS, STORAGE
from service.event_ids import ANSWER_ID_HEADER
from service.formats import WireFormat
from service.outcome import Outcome, internal_error
from service.sse import EventStream

log = structlog.get_logger("ai_stream")

CANCELLED_MESSAGE = "The answer was stopped before it was complete."
ABANDONED_MESSAGE = "The answer was stopped: nobody read it for too long."


def stopped_error(reason: str | None) -> ProviderError:
    """The terminal error of an answer whose producer was cancelled on purpose."""
    # A code of the service's own, as `internal_error` is (not a provider's).
    return ProviderError("cancelled", ABANDONED_MESSAGE if reason == "abandoned" else CANCELLED_MESSAGE)  # type: ignore[arg-type]


async def stream_resumable(
    request: web.Request,
    provider: Provider,
    model_request: ModelRequest,
    wire: WireFormat,
    end: AnswerEnd,
    info: AnswerInfo,
    *,
    deadline: float,
    in_flight: MutableSet[Cutoff],
    outcome: Outcome,
) -> EventStream:
    """Start the answer's producer and read it into this request's response as its first reader."""
    app = request.app
    answer_log = app[ANSWER_LOGS].open(
        info, headers={**wire.headers, ANSWER_ID_HEADER: info.answer_id}, keepalive=wire.keepalive
    )
    answer_log.attach()  # before the producer starts: the answer is never without its first reader
    cutoff = Cutoff()
    in_flight.add(cutoff)  # shutdown drains it like any answer
    answer_log.producer = asyncio.create_task(
        _produce(answer_log, provider, model_request, wire, end, outcome, cutoff, deadline, in_flight, request[REQUEST_ID]),
        name=f"answer-{info.answer_id}",
    )
    mirror = app.get(ANSWER_MIRROR)
    if mirror is not None:
        try:
            await mirror.publish(answer_log)  # before the headers: any replica can find it first
        except BaseException:
            answer_log.detach()  # the client left already: the answer goes on, for a resume
            raise
    return await read_answer(request, answer_log, 0, attached=True)


async def _produce(
    answer_log: AnswerLog,
    provider: Provider,
    model_request: ModelRequest,
    wire: WireFormat,
    end: AnswerEnd,
    outcome: Outcome,
    cutoff: Cutoff,
    deadline: float,
    in_flight: MutableSet[Cutoff],
    request_id: str,
) -> None:
    try:
        if opening := wire.opening(answer_log.answer_id):
            answer_log.append(opening)
        await _consume(cutoff, deadline, provider, model_request, outcome, _LogSink(answer_log, wire))
        receipt = await end(outcome)
        terminal = wire.done(outcome, receipt) if outcome.finish is not None else wire.failure(outcome.error)  # type: ignore[arg-type]
        answer_log.finish(terminal)
    except asyncio.CancelledError:
        # Stopped on purpose (the cancel route, nobody reading, the end of the process): the
        # text so far is stored as `interrupted`, as for a client that left.
        outcome.client_gone = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(end(outcome))
        with contextlib.suppress(Exception):
            answer_log.finish(wire.failure(stopped_error(answer_log.stop_reason)))
        raise
    except Exception:
        log.exception("answer_failed", request_id=request_id, answer_id=answer_log.answer_id)
        if outcome.finish is None or not end.ended:
            outcome.finish = None
            outcome.error = internal_error()
        with contextlib.suppress(Exception):
            await asyncio.shield(end(outcome))
        with contextlib.suppress(Exception):
            answer_log.finish(wire.failure(outcome.error or internal_error()))
    finally:
        in_flight.discard(cutoff)
        if not answer_log.ended:  # a format that failed on its own terminal event: still one end
            answer_log.finish(internal_failure(wire))
        if answer_log.readers == 0:
            # The request that asked has gone: its log line went out without the answer's end.
            log.info("answer_ended", request_id=request_id, answer_id=answer_log.answer_id, **outcome.log_fields())


class _LogSink:
    """`AnswerSink` for a resumable answer: each piece appended to its log in the wire format."""

    __slots__ = ("log", "wire")

    def __init__(self, answer_log: AnswerLog, wire: WireFormat) -> None:
        self.log = answer_log
        self.wire = wire

    async def text(self, text: str) -> None:
        self.log.append(self.wire.text(text))

    async def restart(self) -> None:
        self.log.append(self.wire.restart())

    async def start(self, event: AttemptStarted) -> None:
        if started := self.wire.answering(event.provider, event.model.partition("/")[2]):
            self.log.append(started)


def internal_failure(wire: WireFormat) -> bytes:
    try:
        return wire.failure(internal_error())
    except Exception:  # nothing more can be said in this format
        return b'data: {"type":"error","error":"Something went wrong on our side.","code":"internal_error"}\n\n'


async def read_answer(request: web.Request, answer_log: AnswerLog, after: int, *, attached: bool = False) -> EventStream:
    """Write the answer's events after number `after`, then the rest as they come, into a
    response of the answer's format. A reader that falls further behind than the answer's
    buffer keeps is cut off without a terminal event (its resume then gets 410)."""
    settings = request.app[SETTINGS]
    response = EventStream(ping_interval=settings.keepalive_interval, keepalive=answer_log.keepalive,
                           headers=answer_log.headers)
    if not attached:
        answer_log.attach()
    try:
        await response.prepare(request)
        seq = after
        while True:
            events = answer_log.since(seq)
            seq = answer_log.last_seq
            if events:
                await response.write(events)
            if answer_log.ended and seq == answer_log.last_seq:
                break
            await answer_log.wait(seq)
        await response.write_eof()
    except BufferGone:
        response._abort_transport()  # no terminal event: the client resumes, and hears 410
    except ConnectionResetError:
        pass  # the client went away: the answer goes on for the next reader
    finally:
        answer_log.detach()
        await response.close()
    return response


async def answers_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the resumable answers of this process (and, with REDIS_URL, their copy on
    Redis). At the end (after the shutdown's drain, which ends every answer in progress), a
    producer still running is cancelled and waited for, so that its answer is stored before
    the store closes and its last events reach Redis."""
    settings = app[SETTINGS]
    logs = AnswerLogs(
        buffer_bytes=settings.resume_buffer_bytes,
        max_bytes=settings.resume_max_bytes,
        retention=settings.resume_retention,
        abandon_after=settings.resume_abandon_after,
    )
    app[ANSWER_LOGS] = logs
    mirror = None
    if app[REDIS].configured:
        from service.resume_redis import AnswerMirror

        mirror = AnswerMirror(app[REDIS], logs, settings, app[STORAGE].writer)
        app[ANSWER_MIRROR] = mirror
        await mirror.start()
    sweeper = asyncio.create_task(_sweep(logs, min(5.0, max(settings.resume_retention / 4, 0.05))))
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    producers = list(logs.producers())
    for producer in producers:
        producer.cancel()
    if producers:
        await asyncio.wait(producers, timeout=settings.shutdown_write_timeout)
    if mirror is not None:
        await mirror.close(settings.shutdown_write_timeout)


async def _sweep(logs: AnswerLogs, interval: float) -> None:
    """Forget ended answers past their retention even when no new answer comes to do it."""
    while True:
        await asyncio.sleep(interval)
        logs.expire()
