"""How much one client may ask: input size, requests per minute and open streams.

A client is an API key's name (or the remote address without keys). A backend that forwards
its own users names each one in `user_id`: that user (`key:user_id`) then has limits of its
own, beside its key's.

Without REDIS_URL the counts are kept in the process (with `--workers N` each worker enforces
them on its own share). With it, `shared` (see `service.shared_limits`) keeps them on Redis for
every replica; while Redis does not answer, each process falls back to its own counts, which it
keeps all along for that.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from service.app_keys import THREAD_OWNER
from service.errors import ApiError
from service.settings import Settings

if TYPE_CHECKING:
    from service.shared_limits import Lease, SharedLimits

_PRUNE_ABOVE = 10_000  # clients remembered before idle ones are forgotten


def check_input(settings: Settings, message_count: int, chars: int) -> None:
    if message_count > settings.max_messages:
        raise ApiError(
            400,
            "too_many_messages",
            f"The request has {message_count} messages; the limit (AI_MAX_MESSAGES) is {settings.max_messages}.",
        )
    if chars > settings.max_input_chars:
        raise ApiError(
            413,
            "input_too_large",
            f"The request's text is {chars} characters; the limit (AI_MAX_INPUT_CHARS) is {settings.max_input_chars}.",
        )


def client_of(request: web.Request) -> str:
    """The key's name when keys are configured, else the remote address."""
    return request.get(THREAD_OWNER) or request.remote or "unknown"


def end_user_of(request: web.Request, user_id: str) -> str:
    """The limited identity of an end user a backend forwards: its key, then its `user_id`."""
    return f"{client_of(request)}:{user_id}"


@dataclass(slots=True)
class _Client:
    tokens: float
    updated: float
    streams: int = 0


class RateLimiter:
    """A token bucket per client (`rpm` requests a minute, bursts up to `rpm`) plus counts of
    open streams per client and in total. A limit of 0 means none. `kind` names its counts on
    Redis (`client`, `user`)."""

    def __init__(
        self,
        rpm: int,
        per_client_streams: int,
        total_streams: int,
        *,
        kind: str = "client",
        rpm_setting: str = "AI_RATE_LIMIT_RPM",
        streams_setting: str = "AI_MAX_CONCURRENT_STREAMS",
    ) -> None:
        self.rpm = rpm
        self.kind = kind
        self.rpm_setting = rpm_setting
        self.streams_setting = streams_setting
        self.per_client_streams = per_client_streams
        self.total_streams = total_streams
        self.open_streams = 0
        self.shared: SharedLimits | None = None  # set at start-up with REDIS_URL
        self._clients: dict[str, _Client] = {}

    def _client(self, name: str, now: float) -> _Client:
        client = self._clients.get(name)
        if client is None:
            if len(self._clients) > _PRUNE_ABOVE:
                self._prune(now)
            client = self._clients[name] = _Client(tokens=float(self.rpm), updated=now)
        elif self.rpm:
            client.tokens = min(self.rpm, client.tokens + (now - client.updated) * self.rpm / 60)
            client.updated = now
        return client

    def _prune(self, now: float) -> None:
        # After a minute untouched a bucket is full again: forgetting it changes nothing.
        for name, client in list(self._clients.items()):
            if client.streams == 0 and now - client.updated >= 60:
                del self._clients[name]

    async def admit(self, name: str) -> None:
        """Count one request; 429 when the client has used its minute (on every replica, with
        Redis). Without Redis nothing here waits."""
        if not self.rpm:
            return
        shared = self.shared
        if shared is not None and shared.link.up:
            wait = await shared.take(self.kind, name, self.rpm)
            if wait is not None:  # else Redis failed: this process counts alone
                if wait:
                    raise self._rpm_used(math.ceil(wait))
                return
        now = time.monotonic()
        client = self._client(name, now)
        if client.tokens < 1:
            raise self._rpm_used(math.ceil((1 - client.tokens) * 60 / self.rpm))
        client.tokens -= 1

    def _rpm_used(self, wait: int) -> ApiError:
        return _too_many(f"Too many requests; the limit ({self.rpm_setting}) is {self.rpm} a minute.", wait)

    def stream(self, name: str) -> StreamSlot:
        """`async with limiter.stream(name):` holds one open-stream slot for the length of an answer."""
        return StreamSlot(self, name)

    @property
    def counts_streams(self) -> bool:
        return bool(self.per_client_streams or self.total_streams)

    def _take_slot(self, name: str, *, check: bool = True) -> _Client:
        """A slot in this process's counts; with `check`, refused when they are full (with
        Redis up, Redis has already decided and these counts only follow)."""
        client = self._client(name, time.monotonic())
        if check:
            if self.total_streams and self.open_streams >= self.total_streams:
                raise self._full("total")
            if self.per_client_streams and client.streams >= self.per_client_streams:
                raise self._full("client")
        client.streams += 1
        self.open_streams += 1
        return client

    def _full(self, count: str) -> ApiError:
        if count == "total":
            return _too_many("The service is at its limit of open streams (AI_MAX_TOTAL_STREAMS); retry shortly.", 1)
        return _too_many(f"Too many open streams; the limit ({self.streams_setting}) is {self.per_client_streams} at once.", 1)

    def _give_back(self, client: _Client) -> None:
        client.streams -= 1
        self.open_streams -= 1

    @property
    def clients(self) -> int:
        return len(self._clients)


class StreamSlot:
    """One open-stream slot, taken on entering and given back on leaving whatever raised (a
    class rather than a generator-based context manager: it is held by every open stream, so it
    is kept small). With Redis it is also a lease there (see `service.shared_limits`)."""

    __slots__ = ("_client", "_lease", "_limiter", "_name")

    def __init__(self, limiter: RateLimiter, name: str) -> None:
        self._limiter = limiter
        self._name = name
        self._client: _Client | None = None
        self._lease: Lease | None = None

    async def __aenter__(self) -> None:
        limiter = self._limiter
        shared = limiter.shared
        if shared is None or not limiter.counts_streams:
            self._client = limiter._take_slot(self._name)
            return
        lease = shared.lease(limiter.kind, self._name, limiter.per_client_streams, limiter.total_streams)
        full = await shared.acquire(lease) if shared.link.up else None
        if full:
            raise limiter._full(full)
        # None: Redis did not answer, so this process's counts decide.
        self._client = limiter._take_slot(self._name, check=full is None)
        shared.hold(lease)
        self._lease = lease

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            self._limiter._give_back(self._client)
            self._client = None
        lease = self._lease
        if lease is not None:
            self._lease = None
            shared = self._limiter.shared
            assert shared is not None
            shared.release(lease)


class FailedLogins:
    """Failed authentications per remote address: past `per_minute` of them, that address gets
    429 for a while instead of another try (a token bucket, as for requests). 0: no limit.

    With Redis the failures are counted there, for every replica; checking an address costs no
    round trip: a failure that empties the bucket blocks the address in the process that saw
    it, and the other replicas block it at its next failure there."""

    def __init__(self, per_minute: int) -> None:
        self._buckets = RateLimiter(per_minute, 0, 0, kind="auth", rpm_setting="AI_AUTH_FAILURES_PER_MINUTE")
        self._blocked: dict[str, float] = {}  # address -> monotonic time its block ends (with Redis)
        self.shared: SharedLimits | None = None

    def check(self, address: str) -> None:
        """429 if `address` has used up its failed attempts."""
        buckets = self._buckets
        if not buckets.rpm:
            return
        now = time.monotonic()
        if self._blocked:
            until = self._blocked.get(address)
            if until is not None:
                if now < until:
                    raise self._blocked_error(math.ceil(until - now))
                del self._blocked[address]
        shared = self.shared
        if shared is not None and shared.link.up:
            return
        bucket = buckets._client(address, now)
        if bucket.tokens < 1:
            raise self._blocked_error(math.ceil((1 - bucket.tokens) * 60 / buckets.rpm))

    async def failed(self, address: str) -> None:
        buckets = self._buckets
        if not buckets.rpm:
            return
        now = time.monotonic()
        shared = self.shared
        if shared is not None and shared.link.up:
            wait = await shared.take("auth", address, buckets.rpm, spend=True)
            if wait is not None:
                if wait:
                    if len(self._blocked) > _PRUNE_ABOVE:
                        self._blocked = {a: t for a, t in self._blocked.items() if t > now}
                    self._blocked[address] = now + wait
                return
        buckets._client(address, now).tokens -= 1

    def _blocked_error(self, wait: int) -> ApiError:
        return _too_many(
            f"Too many failed authentications from this address; the limit (AI_AUTH_FAILURES_PER_MINUTE) "
            f"is {self._buckets.rpm} a minute.",
            wait,
        )


def _too_many(message: str, retry_after: int) -> ApiError:
    return ApiError(429, "rate_limited", message, headers={"Retry-After": str(max(retry_after, 1))})
