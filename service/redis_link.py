"""The optional link to Redis (`REDIS_URL`) through which replicas share state: resumable
answers' events, the per-minute and per-client limits, open-stream leases and circuits.

Without `REDIS_URL` nothing here connects and every feature keeps its state in the process.
With it, the link is watched: a failed command marks Redis down (one warning, a metric,
`/health` degraded) and a probe brings it back. Whatever uses Redis checks `link.up` first and
falls back to its per-process behaviour while it is down; nothing waits on Redis on the
per-token path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from service.app_keys import METRICS, REDIS, SETTINGS

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from service.metrics import Metrics

log = structlog.get_logger("ai_stream")

KEY_PREFIX = "ai-stream:"


class RedisLink:
    """One client for the process (a connection pool), and whether Redis is answering."""

    def __init__(
        self,
        url: str | None,
        *,
        metrics: Metrics | None = None,
        check_interval: float = 1.0,
        command_timeout: float = 1.0,
        prefix: str = KEY_PREFIX,
    ) -> None:
        self.url = url
        self.metrics = metrics
        self.check_interval = check_interval
        self.command_timeout = command_timeout
        self.prefix = prefix
        self.client: Redis | None = None
        self.up = False
        self._probe: asyncio.Task[None] | None = None
        self._recheck: asyncio.Task[None] | None = None
        self._closing = False  # the probe ends at its next turn even should its cancellation be lost

    @property
    def configured(self) -> bool:
        return self.url is not None

    def key(self, *parts: str) -> str:
        """A key of this service's namespace: `ai-stream:<part>:<part>...`."""
        return self.prefix + ":".join(parts)

    async def start(self) -> None:
        if self.url is None:
            return
        # Imported only when configured: a service without Redis never loads the client.
        from redis.asyncio import Redis

        self.client = Redis.from_url(
            self.url,
            socket_timeout=self.command_timeout,
            socket_connect_timeout=self.command_timeout,
            health_check_interval=0,
            retry_on_timeout=False,
        )
        await self._check()
        if not self.up:
            log.warning("redis_unavailable", hint="REDIS_URL does not answer; state stays per process until it does")
        self._probe = asyncio.create_task(self._watch(), name="redis-probe")

    async def close(self) -> None:
        self._closing = True
        if self._recheck is not None:
            self._recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recheck
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.aclose()

    def failed(self, operation: str, exc: BaseException | None = None) -> None:
        """A command failed: Redis is down until the probe sees it answer again. Logged once per
        outage (the error's class only: its text may name the server's address)."""
        if self.metrics is not None:
            self.metrics.redis_failures.labels(operation).inc()
        if operation != "ping" and _is_timeout(exc):
            # A command that timed out may have waited on this process's own busy event loop
            # rather than on Redis: the caller falls back this once, and a probe decides now.
            if self.up and (self._recheck is None or self._recheck.done()):
                self._recheck = asyncio.get_running_loop().create_task(self._check(), name="redis-recheck")
            return
        if self.up:
            self.up = False
            log.warning(
                "redis_down", operation=operation, error=type(exc).__name__ if exc is not None else None,
                hint="limits fall back to per process and resume answers 503 until Redis is back",
            )
            self._set_gauge()

    async def _check(self) -> None:
        assert self.client is not None
        try:
            async with asyncio.timeout(self.command_timeout):
                await self.client.ping()
        except Exception as exc:  # any failure to answer is "down"; its details stay out of the log
            if self.up:
                self.failed("ping", exc)
            return
        if not self.up:
            # Connections idle since before the outage may lead to a Redis that restarted: they
            # would fail once each, and each failure would look like a new outage.
            with contextlib.suppress(Exception):
                await self.client.connection_pool.disconnect(inuse_connections=False)
            self.up = True
            log.info("redis_up")
            self._set_gauge()

    async def _watch(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.check_interval)
            await self._check()

    def _set_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.redis_up.set(1 if self.up else 0)

    def status(self) -> dict[str, Any]:
        """For `/health`: whether Redis is configured and answering (never its address)."""
        return {"configured": self.configured, "ok": self.up or not self.configured}


async def redis_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the link, connected (or watched until it connects) from start-up to the end."""
    settings = app[SETTINGS]
    link = RedisLink(
        settings.redis_url,
        metrics=app[METRICS],
        check_interval=settings.redis_check_interval,
        prefix=settings.redis_key_prefix,
    )
    app[REDIS] = link
    await link.start()
    yield
    await link.close()


def _is_timeout(exc: BaseException | None) -> bool:
    """asyncio's timeout, or the Redis client's own (which is not a TimeoutError subclass)."""
    if exc is None:
        return False
    if isinstance(exc, TimeoutError):
        return True
    from redis.exceptions import TimeoutError as RedisTimeout  # only ever called with Redis configured

    return isinstance(exc, RedisTimeout)
