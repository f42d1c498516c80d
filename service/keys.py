"""Typed keys for everything the app shares: no module-level singletons."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from providers.factory import ModelRegistry
    from providers.fallback import FallbackChain
    import asyncio

    from service.conversations import StorageState
    from service.limits import RateLimiter
    from service.metrics import Metrics
    from service.relay import Cutoff
    from service.settings import Settings

SETTINGS = web.AppKey("settings", "Settings")
REGISTRY = web.AppKey("registry", "ModelRegistry")
CHAIN = web.AppKey("chain", "FallbackChain")
# Answers in progress (streamed or not): shutdown ends those still open after its grace period.
IN_FLIGHT = web.AppKey("in_flight", "weakref.WeakSet[Cutoff]")
LIMITER = web.AppKey("limiter", "RateLimiter")
METRICS = web.AppKey("metrics", "Metrics")
STORAGE = web.AppKey("storage", "StorageState")
# Answers being written to the store; shutdown waits for them before closing it.
PENDING_WRITES = web.AppKey("pending_writes", "set[asyncio.Task[bool]]")

# Per request: its id, and the fields of its canonical log line (filled in as handlers learn them).
REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_LOG = web.RequestKey("request_log", "dict[str, Any]")
# The name of the API key a request authenticated with: part of every thread's owner.
THREAD_OWNER = web.RequestKey("thread_owner", str)
