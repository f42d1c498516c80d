"""Resumable answers across replicas, on Redis (REDIS_URL).

The producing process copies each answer's numbered events to a Redis Stream of its own
(`<prefix>answer:<id>:events`; `XADD` with an approximate `MAXLEN` cap and a TTL on the key), in
one pipeline for all of its answers every AI_RESUME_FLUSH_INTERVAL seconds: one entry per answer
and flush, holding the events since the last one (entry id `0-<seq of its last event>`, field
`f` the seq of its first), so that neither a Redis round trip nor a command is spent per
token. Beside the stream, `...:meta` (a hash: owner, format, headers, state) says whose it is
and whether it ended, `...:lease` (a key with a TTL of LEASE_TTL_MS, renewed every second while
the answer is produced) says that its producer lives, and `<prefix>chat:<owner>:<chat id>`
names a UI chat's latest answer. A cancel is published on
`<prefix>answer-cancel`; every process listens, and the one producing the answer stops it.

A resume that lands on a process that does not hold the answer reads the stream (`XREAD
BLOCK`) from where the client left off; if the lease lapses before the terminal event arrives
(its producer was killed), the stream ends with an `error` event, `answer_lost`. While Redis is
down, streaming goes on (the copy catches up when it is back, within the cap) and such a
resume answers 503 `resume_unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import structlog

from service.answer_log import AnswerInfo, AnswerLog, AnswerLogs
from storage import Owner

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from service.redis_link import RedisLink
    from service.settings import Settings

log = structlog.get_logger("ai_stream")

LEASE_TTL_MS = 3000  # a producer silent for this long is taken for dead
LEASE_RENEW = 1.0  # seconds between renewals of the leases of answers in progress
READ_BLOCK_MS = 500  # one XREAD BLOCK: under the client's socket timeout
READ_COUNT = 500
ANNOUNCE_TIMEOUT = 0.25  # what a slow Redis may add before an answer's headers, at most
_TERMINAL = b"t"  # on the entry whose last event is the terminal one
_EVENT = b"e"  # the entry's events, as sent
_FIRST = b"f"  # the seq of its first event


def is_redis_failure(exc: BaseException) -> bool:
    """A failure of Redis or of the way to it (rather than a bug of ours)."""
    return isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith("redis.")


@dataclass(slots=True)
class _Copy:
    """How much of one answer of this process is in Redis."""

    log: AnswerLog
    flushed: int = 0  # the last seq in the stream
    announced: bool = False  # its meta, lease (and chat key) are written


@dataclass(frozen=True, slots=True)
class RemoteAnswer:
    """An answer as its meta hash describes it."""

    info: AnswerInfo
    headers: dict[str, str]  # the response headers of its format, X-Answer-ID included
    keepalive: bytes
    ended: bool
    last_seq: int


class AnswerKeys:
    """The Redis keys of resumable answers, under the deployment's prefix."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.cancel_channel = link.key("answer-cancel")

    def events(self, answer_id: str) -> str:
        return self.link.key("answer", answer_id, "events")

    def meta(self, answer_id: str) -> str:
        return self.link.key("answer", answer_id, "meta")

    def lease(self, answer_id: str) -> str:
        return self.link.key("answer", answer_id, "lease")

    def chat(self, owner: Owner, chat_id: str) -> str:
        # Owners are namespaced like threads; hashed, so that no key holds a user's id as is.
        who = json.dumps([owner.key_name, owner.user_id]).encode()
        return self.link.key("chat", hashlib.sha256(who).hexdigest()[:32], chat_id)


def meta_fields(copy: AnswerLog, instance: str) -> dict[str, str | bytes]:
    info = copy.info
    fields: dict[str, str | bytes] = {
        "owner_key": info.owner.key_name, "format": info.format, "headers": json.dumps(copy.headers),
        "keepalive": copy.keepalive, "producer": instance, "state": "live",
    }
    if info.owner.user_id is not None:
        fields["owner_user"] = info.owner.user_id
    if info.chat_id is not None:
        fields["chat_id"] = info.chat_id
    return fields


def parse_meta(answer_id: str, meta: dict[bytes, bytes]) -> RemoteAnswer | None:
    """None for a hash that is not a whole one (written half-way before Redis lost the rest)."""
    if not all(field in meta for field in (b"owner_key", b"format", b"headers", b"keepalive")):
        return None
    user = meta.get(b"owner_user")
    chat = meta.get(b"chat_id")
    info = AnswerInfo(
        answer_id,
        Owner(meta[b"owner_key"].decode(), user.decode() if user is not None else None),
        meta[b"format"].decode(),
        chat.decode() if chat is not None else None,
    )
    return RemoteAnswer(
        info,
        json.loads(meta[b"headers"]),
        meta[b"keepalive"],
        meta.get(b"state") == b"ended",
        int(meta.get(b"last", b"0")),
    )


class AnswerMirror:
    """This process's side of resumable answers on Redis: the copy of its own answers, the
    cancel listener, and the resumes of answers produced elsewhere (service/resume_remote.py)."""

    def __init__(self, link: RedisLink, logs: AnswerLogs, settings: Settings, instance: str) -> None:
        self.link = link
        self.logs = logs
        self.keys = AnswerKeys(link)
        self.instance = instance
        self.flush_interval = settings.resume_flush_interval
        self.retention_ms = int(settings.resume_retention * 1000)
        # Live answers end within AI_REQUEST_TIMEOUT; their keys outlive that by the retention.
        self.live_ttl_ms = int((settings.request_timeout + settings.resume_retention + 60) * 1000)
        # The stream's length cap, in entries (one per flush that found new events).
        self.max_entries = max(1000, settings.resume_buffer_bytes // 1024)
        self._copies: dict[str, _Copy] = {}
        self._renewed = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def __len__(self) -> int:
        """The answers whose copy on Redis is not complete yet."""
        return len(self._copies)

    @property
    def client(self) -> Redis:
        assert self.link.client is not None
        return self.link.client

    async def publish(self, answer_log: AnswerLog) -> None:
        """Copy this answer to Redis from now on. Announced at once (one round trip, before its
        headers go out), so that no client can know its id before any replica can find it;
        bounded by ANNOUNCE_TIMEOUT, after which the next flush announces it instead."""
        copy = self._copies[answer_log.answer_id] = _Copy(answer_log)
        if not self.link.up:
            return
        pipe = self.client.pipeline(transaction=False)
        self._announce(pipe, answer_log)
        try:
            async with asyncio.timeout(ANNOUNCE_TIMEOUT):
                await pipe.execute()
        except Exception as exc:
            if not is_redis_failure(exc):
                raise
            if not isinstance(exc, TimeoutError):
                self.link.failed("resume_announce", exc)
            return
        copy.announced = True

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._flush_loop(), name="resume-flush"),
                       asyncio.create_task(self._listen(), name="resume-cancel")]

    async def close(self, timeout: float) -> None:
        """At shutdown, after the answers ended: their last events are copied, then stop."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._copies and self.link.up:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.flush()

    async def _flush_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.flush_interval)
            if not self.link.up:
                self._copy_again()
                continue
            if self._copies:
                try:
                    await self.flush()
                except Exception:  # a bug of ours: said once per flush, the next one tries again
                    log.exception("resume_flush_failed")

    async def flush(self) -> None:
        """One pipeline: every new event of every answer, the end of those that ended, and
        (every LEASE_RENEW seconds) the leases of those in progress."""
        now = time.monotonic()
        renew = now - self._renewed >= LEASE_RENEW
        pipe = self.client.pipeline(transaction=False)
        planned: list[tuple[_Copy, int, bool]] = []
        for copy in list(self._copies.values()):
            answer_log, answer_id = copy.log, copy.log.answer_id
            ended, last = answer_log.ended, answer_log.last_seq
            if not copy.announced:
                self._announce(pipe, answer_log)
            elif renew and not ended:
                pipe.set(self.keys.lease(answer_id), self.instance, px=LEASE_TTL_MS)
            first = max(copy.flushed, answer_log.dropped) + 1  # what was dropped before a copy is gone
            if first <= last:
                # One entry for the events since the last flush: id `0-<its last seq>`, and the
                # seq of its first event, so that a reader can start in the middle of one.
                events_key = self.keys.events(answer_id)
                base = answer_log.dropped + 1
                fields: dict[Any, Any] = {
                    _EVENT: b"".join(answer_log.events[first - base : last - base + 1]), _FIRST: b"%d" % first,
                }
                if ended:
                    fields[_TERMINAL] = b"1"
                pipe.xadd(events_key, fields, id=f"0-{last}", maxlen=self.max_entries, approximate=True)
                pipe.pexpire(events_key, self.retention_ms if ended else self.live_ttl_ms)
            if ended:
                self._close(pipe, answer_log)
            planned.append((copy, last, ended))
        if renew:
            self._renewed = now
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # Redis down: the copy catches up when it is back
            if not is_redis_failure(exc):
                raise
            self.link.failed("resume_append", exc)
            self._copy_again()
            return
        for result in results:
            # An event already there (a retry after a failure half-way) is fine; anything else is logged.
            if isinstance(result, Exception) and "equal or smaller" not in str(result):
                log.warning("resume_append_failed", error=type(result).__name__)
        for copy, last, ended in planned:
            copy.flushed, copy.announced = last, True
            if ended:
                self._copies.pop(copy.log.answer_id, None)

    def _copy_again(self) -> None:
        """Redis went down (whoever noticed): what it had may be lost with it (a restart), so once
        it is back each answer is announced and copied again from its first kept event (events
        already there are refused as such, and that is fine). Answers that ended longer ago than
        their retention are not copied any more: a long outage must not keep them in memory."""
        until = time.monotonic() - self.retention_ms / 1000
        for answer_id, copy in list(self._copies.items()):
            if copy.log.ended and copy.log.ended_at < until:
                del self._copies[answer_id]
            else:
                copy.flushed, copy.announced = 0, False

    def _announce(self, pipe: Any, answer_log: AnswerLog) -> None:
        answer_id, info = answer_log.answer_id, answer_log.info
        meta = self.keys.meta(answer_id)
        pipe.hset(meta, mapping=meta_fields(answer_log, self.instance))
        pipe.pexpire(meta, self.live_ttl_ms)
        pipe.set(self.keys.lease(answer_id), self.instance, px=LEASE_TTL_MS)
        if info.chat_id is not None:
            pipe.set(self.keys.chat(info.owner, info.chat_id), answer_id, px=self.live_ttl_ms)

    def _close(self, pipe: Any, answer_log: AnswerLog) -> None:
        answer_id = answer_log.answer_id
        meta = self.keys.meta(answer_id)
        pipe.hset(meta, mapping={"state": "ended", "last": str(answer_log.last_seq)})
        pipe.pexpire(meta, self.retention_ms)
        pipe.delete(self.keys.lease(answer_id))

    async def _listen(self) -> None:
        """Cancels published by any replica: the one producing the answer stops it. (A pub/sub read
        whose own timeout fires as the task is cancelled can swallow the cancellation: the loops
        also end on `_stopping`.)"""
        while not self._stopping:
            if not self.link.up:
                await asyncio.sleep(self.link.check_interval)
                continue
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.cancel_channel)
                while not self._stopping:
                    message = await pubsub.get_message(timeout=0.5)
                    if message is not None and message.get("type") == "message":
                        answer_log = self.logs.live.get(message["data"].decode())
                        if answer_log is not None:
                            answer_log.stop("cancelled")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: listen again once the link's probe sees it back
                if not is_redis_failure(exc):
                    log.exception("resume_cancel_listen_failed")
                await asyncio.sleep(self.link.check_interval)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def remote(self, answer_id: str) -> RemoteAnswer | None:
        """The answer's meta, if Redis holds it (raises when Redis fails)."""
        meta = await self.client.hgetall(self.keys.meta(answer_id))  # type: ignore[misc]
        return parse_meta(answer_id, cast(dict[bytes, bytes], meta))

    async def chat_answer(self, owner: Owner, chat_id: str) -> str | None:
        answer_id = cast(bytes | None, await self.client.get(self.keys.chat(owner, chat_id)))
        return answer_id.decode() if answer_id is not None else None

    async def cancel(self, answer: RemoteAnswer, wait: float) -> bool:
        """Ask the producing replica to stop the answer; True once it has (within `wait`)."""
        answer_id = answer.info.answer_id
        if answer.ended or not await self.client.exists(self.keys.lease(answer_id)):
            return False  # ended, or its producer is gone: nothing to stop
        await self.client.publish(self.keys.cancel_channel, answer_id)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if await self.client.hget(self.keys.meta(answer_id), "state") == b"ended":  # type: ignore[misc]
                return True
        return True  # asked; the producer stops it as soon as it hears
