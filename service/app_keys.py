"""Typed keys for everything the app shares: no module-level singletons."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from providers.factory import ModelRegistry
    from providers.fallback import FallbackChain
    from service.answer import Cutoff
    from service.answer_log import AnswerLogs
    from service.keepalive import KeepAlives
    from service.limits import FailedLogins, RateLimiter
    from service.metrics import Metrics
    from service.model_loading import ModelLoading
    from service.overload import Overload
    from service.redis_link import RedisLink
    from service.resume_redis import AnswerMirror
    from service.settings import Settings
    from service.status import RecentActivity
    from service.storage_state import StorageState
    from service.summaries import Summarizer

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
REGISTRY: web.AppKey[ModelRegistry] = web.AppKey("registry")
CHAIN: web.AppKey[FallbackChain] = web.AppKey("chain")
# Whether the models' SDKs are loaded yet (they are, in the background, once the service listens).
MODEL_LOADING: web.AppKey[ModelLoading] = web.AppKey("model_loading")
# Answers in progress (streamed or not): shutdown ends those still open after its grace period.
IN_FLIGHT: web.AppKey[weakref.WeakSet[Cutoff]] = web.AppKey("in_flight")
# The keep-alives of every open stream, sent by one task (AI_KEEPALIVE_INTERVAL).
KEEPALIVES: web.AppKey[KeepAlives] = web.AppKey("keepalives")
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter")
# Limits of the end users that backends forward (`key:user_id`).
USER_LIMITER: web.AppKey[RateLimiter] = web.AppKey("user_limiter")
# Failed authentications per remote address.
FAILED_LOGINS: web.AppKey[FailedLogins] = web.AppKey("failed_logins")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
# A few minutes of answer totals for the status page (fed by Metrics.record_answer).
ACTIVITY: web.AppKey[RecentActivity] = web.AppKey("activity")
STORAGE: web.AppKey[StorageState] = web.AppKey("storage")
# Answers being written to the store; shutdown waits for them before closing it.
PENDING_WRITES: web.AppKey[set[asyncio.Task[bool]]] = web.AppKey("pending_writes")

# The link to Redis (REDIS_URL), through which replicas share state; unconfigured without it.
REDIS: web.AppKey[RedisLink] = web.AppKey("redis")
# Resumable answers: their events in this process, and (with REDIS_URL) their copy on Redis.
ANSWER_LOGS: web.AppKey[AnswerLogs] = web.AppKey("answer_logs")
ANSWER_MIRROR: web.AppKey[AnswerMirror] = web.AppKey("answer_mirror")

# What time it is (an aware datetime), for the date context; tests set their own clock.
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
# Summaries of the turns a thread's token budget leaves out, written in the background.
SUMMARIZER: web.AppKey[Summarizer] = web.AppKey("summarizer")

# The overload rule: new answers are refused while the event loop lags (AI_SHED_LOOP_LAG_MS).
OVERLOAD: web.AppKey[Overload] = web.AppKey("overload")

# Per request: its id, and the fields of its canonical log line (filled in as handlers learn them).
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
REQUEST_LOG: web.RequestKey[dict[str, Any]] = web.RequestKey("request_log")
# The name of the API key a request authenticated with: part of every thread's owner.
THREAD_OWNER: web.RequestKey[str] = web.RequestKey("thread_owner")
