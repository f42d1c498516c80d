"""One answer, from the provider's events to the client, in any wire format.

The relay reads the provider's events within the answer's deadline and hands each text piece
to the format. However the answer ends (done, an upstream error, a timeout, a shutdown, the
client leaving, or a bug of ours), it ends in one place, `AnswerEnd`, which feeds storage, the
log line and the metrics; and a stream that the client still reads ends with exactly one
terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, MutableSet
from typing import Protocol

import structlog
from aiohttp import web

from providers.base import (
    AttemptFailed,
    AttemptStarted,
    Finish,
    ModelRequest,
    Provider,
    ProviderError,
    Restarted,
    TextDelta,
)
from service.app_keys import CHAIN, METRICS, REQUEST_ID, REQUEST_LOG
from service.event_ids import ANSWER_ID_HEADER, EventIds
from service.formats import WireFormat
from service.outcome import (
    ENDED_EARLY_MESSAGE,
    SHUTDOWN_MESSAGE,
    TIMEOUT_MESSAGE,
    Outcome,
    Receipt,
    internal_error,
)
from service.sse import EventStream

log = structlog.get_logger("ai_stream")

StoreAnswer = Callable[[Outcome], Awaitable[Receipt]]


class Cutoff:
    """The time limit of one answer, which a shutdown can bring forward to now."""

    __slots__ = ("timeout", "shutting_down", "__weakref__")

    def __init__(self) -> None:
        self.timeout: asyncio.Timeout | None = None
        self.shutting_down = False

    def end_now(self) -> None:
        self.shutting_down = True
        if self.timeout is not None:
            with contextlib.suppress(RuntimeError):  # the answer is already past its deadline block
                self.timeout.reschedule(asyncio.get_running_loop().time())

    def error(self) -> ProviderError:
        """What a fired time limit means for the client."""
        if self.shutting_down:
            return ProviderError("shutting_down", SHUTDOWN_MESSAGE, retryable=True)
        return ProviderError("timeout", TIMEOUT_MESSAGE, retryable=True)


class AnswerEnd:
    """The one place an answer ends. Called once with the final outcome (later calls return the
    first result): the answer is stored (when it belongs to a thread), then counted in the
    metrics and described in the request's log line, whatever the ending."""

    __slots__ = ("_request", "_store", "_started", "_ended", "_receipt")

    def __init__(self, request: web.Request, store: StoreAnswer | None = None) -> None:
        self._request = request
        self._store = store
        self._started = time.perf_counter()
        self._ended = False
        self._receipt: Receipt | None = None
        request.app[METRICS].open_streams.inc()

    @property
    def ended(self) -> bool:
        return self._ended

    async def __call__(self, outcome: Outcome) -> Receipt | None:
        if self._ended:
            return self._receipt
        self._ended = True
        app = self._request.app
        try:
            if self._store is not None:
                self._receipt = await self._store(outcome)
        finally:
            metrics = app[METRICS]
            metrics.open_streams.dec()
            metrics.record_answer(outcome, time.perf_counter() - self._started)
            metrics.observe_circuits(app[CHAIN].circuits)
            self._request[REQUEST_LOG].update(outcome.log_fields())
        return self._receipt


class AnswerSink(Protocol):
    """Where `_consume` hands what the provider sends: the stream being written, or a
    resumable answer's log. One object per answer rather than a closure per kind of event, as
    it lives as long as the answer does."""

    async def text(self, text: str) -> None: ...

    async def restart(self) -> None: ...

    async def start(self, event: AttemptStarted) -> None: ...


async def _consume(
    cutoff: Cutoff,
    deadline: float,
    provider: Provider,
    model_request: ModelRequest,
    outcome: Outcome,
    sink: AnswerSink | None,
) -> None:
    """Read the provider's events into `outcome` within the deadline, handing each text piece,
    a restart and the model that starts answering to `sink` (None: only `outcome` is kept);
    upstream failures and time limits end up in `outcome.error`."""
    started = time.perf_counter()
    text = outcome.text
    events = provider.stream(model_request)
    try:
        async with asyncio.timeout(deadline) as cutoff.timeout:
            try:
                async for event in events:
                    if type(event) is TextDelta:
                        if not text:
                            outcome.first_token_ms = round((time.perf_counter() - started) * 1000, 1)
                        text.append(event.text)
                        if sink is not None:
                            await sink.text(event.text)
                    elif type(event) is Finish:
                        outcome.finish = event
                    elif type(event) is AttemptFailed:
                        outcome.attempts.append(event)
                    elif type(event) is Restarted:
                        text.clear()  # the answer is the next model's alone
                        if sink is not None:
                            await sink.restart()
                    elif type(event) is AttemptStarted and sink is not None:
                        await sink.start(event)
            finally:
                await events.aclose()  # `aclosing`'s job, without an object per answer
    except ProviderError as exc:
        outcome.error = exc
    except TimeoutError:
        outcome.error = cutoff.error()
    if outcome.finish is None and outcome.error is None:
        outcome.error = ProviderError("upstream_error", ENDED_EARLY_MESSAGE)


class _StreamSink:
    """`AnswerSink` for a streamed answer: each piece written in the wire format, numbered when
    the format numbers its events."""

    __slots__ = ("response", "wire", "stamp")

    def __init__(self, response: EventStream, wire: WireFormat, stamp: Callable[[bytes], bytes]) -> None:
        self.response = response
        self.wire = wire
        self.stamp = stamp

    async def text(self, text: str) -> None:
        await self.response.write(self.stamp(self.wire.text(text)))

    async def restart(self) -> None:
        await self.response.write(self.stamp(self.wire.restart()))

    async def start(self, event: AttemptStarted) -> None:
        if started := self.wire.answering(event.provider, event.model.partition("/")[2]):
            await self.response.write(self.stamp(started))


async def stream_answer(
    request: web.Request,
    provider: Provider,
    model_request: ModelRequest,
    wire: WireFormat,
    end: AnswerEnd,
    *,
    deadline: float,
    ping_interval: float,
    in_flight: MutableSet[Cutoff],
    outcome: Outcome | None = None,
    answer_id: str | None = None,
) -> EventStream:
    """Stream the answer in `wire`'s format (into `outcome`, when the caller keeps it;
    `answer_id`: its id, a stored answer's message id). Once the headers are out, nothing that
    raises (short of the client leaving) ends the stream without its terminal event. The
    service's own formats number their events (`id:` lines, service/event_ids.py)."""
    ids = EventIds(answer_id) if wire.event_ids and answer_id is not None else None
    headers = {**wire.headers, ANSWER_ID_HEADER: ids.answer_id} if ids is not None else wire.headers
    response = EventStream(ping_interval=ping_interval, keepalive=wire.keepalive, headers=headers)
    outcome = outcome if outcome is not None else Outcome()
    cutoff = Cutoff()
    in_flight.add(cutoff)
    frame = ids.stamp if ids is not None else _as_is
    sink = _StreamSink(response, wire, frame)

    try:
        await response.prepare(request)
        if opening := wire.opening(answer_id):
            await response.write(frame(opening))
        await _consume(cutoff, deadline, provider, model_request, outcome, sink)
        receipt = await end(outcome)
        # `end` may have found a fault of ours (a failed store raises nothing: it reports
        # `persisted: false`), so the terminal event is chosen after it.
        terminal = wire.done(outcome, receipt) if outcome.finish is not None else wire.failure(outcome.error)  # type: ignore[arg-type]
        await response.send_terminal(frame(terminal))
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        outcome.client_gone = True
        # Storage must still hear how the answer ended, even when this task is cancelled.
        await asyncio.shield(end(outcome))
        raise
    except Exception:
        log.exception("answer_failed", request_id=request[REQUEST_ID])
        await _end_with_internal_error(response, wire, outcome, end, frame)
    finally:
        in_flight.discard(cutoff)
        await response.close()
    return response


def _as_is(piece: bytes) -> bytes:
    return piece


async def _end_with_internal_error(
    response: EventStream, wire: WireFormat, outcome: Outcome, end: AnswerEnd, frame: Callable[[bytes], bytes]
) -> None:
    """A bug or fault of ours after the headers: one `error` event and a clean end of the body
    (never a raw 500 inside the event stream), and the answer stored as it stands."""
    if outcome.finish is None or not end.ended:
        outcome.finish = None
        outcome.error = internal_error()
    with contextlib.suppress(Exception):
        await asyncio.shield(end(outcome))
    if not response.prepared:
        raise web.HTTPInternalServerError()  # nothing was sent: the middleware's JSON 500
    with contextlib.suppress(ConnectionResetError, RuntimeError):
        await response.send_terminal(frame(wire.failure(outcome.error or internal_error())))
        await response.write_eof()


async def collect_answer(
    provider: Provider,
    model_request: ModelRequest,
    wire: WireFormat,
    end: AnswerEnd,
    *,
    deadline: float,
    in_flight: MutableSet[Cutoff],
    outcome: Outcome | None = None,
) -> web.Response:
    """The whole answer at once, for `stream: false`, as `wire`'s JSON body."""
    outcome = outcome if outcome is not None else Outcome()
    cutoff = Cutoff()
    in_flight.add(cutoff)
    try:
        await _consume(cutoff, deadline, provider, model_request, outcome, None)
    except asyncio.CancelledError:
        outcome.client_gone = True
        await asyncio.shield(end(outcome))
        raise
    except Exception:
        log.exception("answer_failed")
        outcome.finish, outcome.error = None, internal_error()
    finally:
        in_flight.discard(cutoff)
    receipt = await end(outcome)
    status, body = wire.body(outcome, receipt)
    return web.json_response(body, status=status)
