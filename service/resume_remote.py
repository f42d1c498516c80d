"""A resume of an answer produced by another process, read from its Redis Stream
(service/resume_redis.py): the events after the client's last one, then `XREAD BLOCK` for the
rest, until its terminal event, or until its producer's lease lapses (the process was killed:
the stream then ends with an `error` event, `answer_lost`), or this process shuts down (an
`error` event, `shutting_down`)."""

from __future__ import annotations

import asyncio
from typing import cast

import structlog
from aiohttp import web

from providers.base import ProviderError
from service.answer import Cutoff
from service.app_keys import IN_FLIGHT, SETTINGS
from service.body import invalid
from service.event_ids import EventIds
from service.formats.typed_sse import TypedEvents
from service.formats.ui_message_stream import UIMessageStream
from service.outcome import SHUTDOWN_MESSAGE
from service.resume_redis import (
    _EVENT,
    _FIRST,
    _TERMINAL,
    READ_BLOCK_MS,
    READ_COUNT,
    AnswerMirror,
    RemoteAnswer,
    is_redis_failure,
)
from service.sse import EventStream

log = structlog.get_logger("ai_stream")

LOST_MESSAGE = "The answer was cut off: the process writing it stopped. Ask again."
# The formats whose answers can be resumed, by name: for the events a reader adds itself.
FORMATS: dict[str, type[TypedEvents] | type[UIMessageStream]] = {"typed": TypedEvents, "ui": UIMessageStream}


# A stream's entries as the client returns them (the connection does not decode responses).
Entries = list[tuple[bytes, dict[bytes, bytes]]]


class Gone(Exception):
    """The events after the one asked for are no longer in the stream (its length cap)."""


def _seq(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[2])


def _after(events: bytes, first: int, seq: int) -> bytes:
    """The events of an entry (numbered from `first`) that come after number `seq`: an entry
    may start before the reader's position (it began reading in the middle of one, or an entry
    was copied again after an outage)."""
    start = 0
    for _ in range(seq - first + 1):
        start = events.index(b"\n\n", start) + 2  # an event never holds a blank line
    return events[start:]


def _ending(answer: RemoteAnswer, seq: int, error: ProviderError) -> bytes:
    """A terminal event of the answer's format, numbered after `seq`, written by this reader."""
    wire = FORMATS[answer.info.format]()
    wire.opening(answer.info.answer_id)
    return EventIds(answer.info.answer_id, seq).stamp(wire.failure(error))


async def replay_remote(request: web.Request, mirror: AnswerMirror, answer: RemoteAnswer, after: int) -> web.StreamResponse:
    """Checks that need no stream (JSON, or 204), then the stream. Redis failures before the
    headers raise (the caller answers 503); after them, the connection is cut without a
    terminal event, so that the client resumes again (and hears 503 while Redis is down)."""
    if answer.ended and after > answer.last_seq:
        raise invalid([{"field": "after", "message": f"after is past the answer's last event ({answer.last_seq})"}])
    if answer.ended and after == answer.last_seq:
        return web.Response(status=204)
    key = mirror.keys.events(answer.info.answer_id)
    first = cast(Entries, await mirror.client.xrange(key, count=1))
    if (first and int(first[0][1][_FIRST]) > after + 1) or (not first and answer.ended):
        raise Gone
    settings = request.app[SETTINGS]
    response = EventStream(ping_interval=settings.keepalive_interval, keepalive=answer.keepalive, headers=answer.headers)
    cutoff = Cutoff()
    in_flight = request.app[IN_FLIGHT]
    in_flight.add(cutoff)  # shutdown ends this reader too
    seq = after
    try:
        await response.prepare(request)
        try:
            async with asyncio.timeout(None) as cutoff.timeout:
                seq = await _follow(response, mirror, answer, seq)
        except TimeoutError:
            if not cutoff.shutting_down:
                raise
            await response.write(_ending(answer, seq, ProviderError("shutting_down", SHUTDOWN_MESSAGE)))
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # Redis failed mid-stream, or a gap: cut, so that the client resumes
        if is_redis_failure(exc):
            mirror.link.failed("resume_read", exc)
        elif not isinstance(exc, Gone):
            log.exception("resume_failed", answer_id=answer.info.answer_id)
        response._abort_transport()
    finally:
        in_flight.discard(cutoff)
        await response.close()
    return response


async def _follow(response: EventStream, mirror: AnswerMirror, answer: RemoteAnswer, seq: int) -> int:
    """Write the stream's entries after `seq` until the terminal one; the last seq written."""
    client = mirror.client
    answer_id = answer.info.answer_id
    key = mirror.keys.events(answer_id)
    while True:
        result = cast(list[tuple[bytes, Entries]],
                      await client.xread({key: f"0-{seq}"}, count=READ_COUNT, block=READ_BLOCK_MS))
        if result:
            events = []
            terminal = False
            for entry_id, fields in result[0][1]:
                first, last = int(fields[_FIRST]), _seq(entry_id)
                if first > seq + 1:
                    raise Gone  # trimmed by the length cap before this reader got there
                events.append(_after(fields[_EVENT], first, seq))
                seq = last
                if _TERMINAL in fields:
                    terminal = True
                    break
            await response.write(b"".join(events))
            if terminal:
                return seq
            continue
        # Nothing new for a while: does its producer still live?
        if not await client.exists(mirror.keys.lease(answer_id)):
            state = await client.hget(mirror.keys.meta(answer_id), "state")  # type: ignore[misc]
            if state == b"ended":
                continue  # its end is in the stream: the next read gets it
            log.warning("resumed_answer_lost", answer_id=answer_id)
            lost = ProviderError("answer_lost", LOST_MESSAGE)  # type: ignore[arg-type]  # the service's own code
            await response.write(_ending(answer, seq, lost))
            return seq + 1
