"""The limits of `service.limits` kept on Redis, so that every replica counts against the same
allowance: a token bucket per client and open-stream leases.

Each operation is one Lua script, so that a check and its update are atomic across replicas;
the scripts read Redis's clock (`TIME`), so replicas whose clocks differ still agree.

- A bucket is a hash `{tokens, at}` under `rpm:<kind>:<name>` that expires once it would be
  full again (forgetting it then changes nothing).
- A lease is one member of a sorted set per client (`streams:<kind>:<name>`) and of the total
  one (`streams-total:<kind>`), scored with its expiry. The scripts drop expired members before
  they count, and this process pushes the expiry of its own leases forward every third of
  `AI_LEASE_TTL`, in one script call: the leases of a replica that died are gone after at most
  `AI_LEASE_TTL` seconds.

Every call here is bounded by `AI_REDIS_LIMIT_TIMEOUT`; a failure marks the link down
(`RedisLink.failed`) and answers `None`, and the caller then counts in this process alone. While
the link is down nothing here talks to Redis; when it is back, the refresh puts this process's
live leases back (a restarted Redis has lost them), so the shared counts are right again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from service.app_keys import FAILED_LOGINS, LIMITER, REDIS, SETTINGS, USER_LIMITER

if TYPE_CHECKING:
    from service.redis_link import RedisLink

# KEYS[1]: the bucket. ARGV[1]: requests a minute; ARGV[2]: 'take' (a request: refused when
# empty) or 'spend' (a failed login: counted whatever the balance).
# Returns 0 when a request may go on, else the milliseconds until the bucket holds a token again.
TOKEN_BUCKET = """
local rpm = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or rpm
local at = tonumber(held[2]) or now
tokens = math.min(rpm, tokens + math.max(now - at, 0) * rpm / 60000)
local wait = 0
if ARGV[2] == 'take' then
  if tokens < 1 then
    return math.ceil((1 - tokens) * 60000 / rpm)
  end
  tokens = tokens - 1
else
  tokens = tokens - 1
  if tokens < 1 then
    wait = math.ceil((1 - tokens) * 60000 / rpm)
  end
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((rpm - tokens) * 60000 / rpm) + 1000)
return wait
"""

# KEYS: the lease sets to join, each with its limit in ARGV[i + 2]. ARGV[1]: the lease id;
# ARGV[2]: its time to live in milliseconds. Returns 0 when the lease joined every set, else the
# index of the first full one (and joins none).
ACQUIRE_LEASE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then
    return i
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[1])
  redis.call('PEXPIRE', key, ttl)
end
return 0
"""

# KEYS[i]: a set holding the lease ARGV[i + 1]; ARGV[1]: the time to live in milliseconds.
# Every lease gets a new expiry; one that is missing (Redis restarted, or it was late) is put back.
REFRESH_LEASES = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return #KEYS
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """One open stream's place in the lease sets `keys` (whose limits are `limits`)."""

    id: str
    keys: tuple[str, ...]
    limits: tuple[int, ...]
    # What each key counts, for the refusal's message: "total" or "client".
    counts: tuple[str, ...]


class SharedLimits:
    """The Redis side of the limiters: buckets and leases, and the refresh of this process's leases."""

    def __init__(self, link: RedisLink, *, lease_ttl: float, timeout: float) -> None:
        assert link.client is not None, "only for a configured link"
        self.link = link
        self.lease_ttl_ms = max(int(lease_ttl * 1000), 1)
        self.refresh_interval = lease_ttl / 3
        self.timeout = timeout
        client = link.client
        self._bucket = client.register_script(TOKEN_BUCKET)
        self._acquire = client.register_script(ACQUIRE_LEASE)
        self._refresh = client.register_script(REFRESH_LEASES)
        self._process = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self._held: dict[str, Lease] = {}  # this process's open leases, to refresh
        self._refreshing = False
        self._released_while_refreshing: list[Lease] = []
        self._to_remove: list[Lease] = []  # given back, not yet removed from Redis
        self._remover: asyncio.Task[None] | None = None
        self.stopping = False  # set at shutdown: `keep_leases` ends even should a cancellation be lost

    async def take(self, kind: str, name: str, rpm: int, *, spend: bool = False) -> float | None:
        """One token of `name`'s bucket: 0 when taken, else the seconds until there is one
        (with `spend`, taken anyway, and the seconds until the next). None: Redis failed."""
        try:
            async with asyncio.timeout(self.timeout):
                wait_ms = await self._bucket(keys=[self.link.key("rpm", kind, name)], args=[rpm, "spend" if spend else "take"])
        except Exception as exc:  # any failure: this process counts alone until Redis is back
            self.link.failed("rate_limit", exc)
            return None
        return int(wait_ms) / 1000

    def lease(self, kind: str, name: str, per_client: int, total: int) -> Lease:
        """A new lease for a stream of `name` (not yet taken)."""
        keys: list[str] = []
        limits: list[int] = []
        counts: list[str] = []
        if total:  # checked first, as in this process
            keys.append(self.link.key("streams-total", kind))
            limits.append(total)
            counts.append("total")
        if per_client:
            keys.append(self.link.key("streams", kind, name))
            limits.append(per_client)
            counts.append("client")
        return Lease(f"{self._process}:{next(self._ids)}", tuple(keys), tuple(limits), tuple(counts))

    async def acquire(self, lease: Lease) -> str | None:
        """Take `lease` on Redis: "" when taken, "total" or "client" when that count is full,
        None when Redis failed (the lease is then this process's alone)."""
        try:
            async with asyncio.timeout(self.timeout):
                full = int(await self._acquire(keys=lease.keys, args=[lease.id, self.lease_ttl_ms, *lease.limits]))
        except Exception as exc:
            self.link.failed("stream_lease", exc)
            return None
        return lease.counts[full - 1] if full else ""

    def hold(self, lease: Lease) -> None:
        """`lease` is open in this process: refreshed until released (and put back on Redis after
        an outage, taken there or not)."""
        self._held[lease.id] = lease

    def release(self, lease: Lease) -> None:
        """Give `lease` back, without waiting: the leases given back while one removal is on its
        way go together in the next (one round trip for many under load). Nothing can stop it
        once called; should Redis not hear of it, the lease expires within AI_LEASE_TTL."""
        self._held.pop(lease.id, None)
        if self._refreshing:
            self._released_while_refreshing.append(lease)  # the refresh in flight may put it back
        if not self.link.up:
            return
        self._to_remove.append(lease)
        if self._remover is None:
            self._remover = asyncio.get_running_loop().create_task(self._remove_released(), name="redis-lease-release")

    async def _remove_released(self) -> None:
        try:
            while self._to_remove:
                batch, self._to_remove = self._to_remove, []
                await self._remove(batch)
        finally:
            self._remover = None

    async def _remove(self, leases: list[Lease]) -> None:
        assert self.link.client is not None
        try:
            async with asyncio.timeout(self.timeout):
                pipe = self.link.client.pipeline(transaction=False)
                for lease in leases:
                    for key in lease.keys:
                        pipe.zrem(key, lease.id)
                await pipe.execute()
        except Exception as exc:
            self.link.failed("stream_lease", exc)

    async def refresh(self) -> None:
        """Push the expiry of every lease this process holds forward: one script call."""
        if not self._held or not self.link.up:
            return
        keys: list[str] = []
        members: list[str] = []
        for lease in self._held.values():
            for key in lease.keys:
                keys.append(key)
                members.append(lease.id)
        self._refreshing = True
        try:
            async with asyncio.timeout(self.link.command_timeout):
                await self._refresh(keys=keys, args=[self.lease_ttl_ms, *members])
        except Exception as exc:
            self.link.failed("stream_lease", exc)
        finally:
            self._refreshing = False
            released, self._released_while_refreshing = self._released_while_refreshing, []
        if released and self.link.up:
            await self._remove(released)

    async def keep_leases(self) -> None:
        """Background task: refresh this process's leases every third of AI_LEASE_TTL."""
        while not self.stopping:
            await asyncio.sleep(self.refresh_interval)
            await self.refresh()

    async def flush(self) -> None:
        """Wait for the leases given back to be removed (at shutdown, before the link closes)."""
        if self._remover is not None:
            with contextlib.suppress(Exception):
                await self._remover

    @property
    def held(self) -> int:
        return len(self._held)


async def shared_limits_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the Redis link): with REDIS_URL, the limiters count on Redis, and this
    process's leases are refreshed in the background."""
    link = app[REDIS]
    if not link.configured:
        yield
        return
    settings = app[SETTINGS]
    shared = SharedLimits(link, lease_ttl=settings.lease_ttl, timeout=settings.redis_limit_timeout)
    for limiter in (app[LIMITER], app[USER_LIMITER], app[FAILED_LOGINS]):
        limiter.shared = shared
    task = asyncio.create_task(shared.keep_leases(), name="redis-leases")
    yield
    shared.stopping = True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await shared.flush()
