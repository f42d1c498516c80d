"""The application factory: everything the service shares is created here, once."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import structlog
from aiohttp import web

from providers.factory import ModelRegistry
from providers.fallback import FallbackChain
from service.anthropic_api import add_anthropic_routes
from service.app_keys import (
    ACTIVITY,
    CHAIN,
    CLOCK,
    FAILED_LOGINS,
    IN_FLIGHT,
    LIMITER,
    METRICS,
    REGISTRY,
    SETTINGS,
    USER_LIMITER,
)
from service.datecontext import utc_now
from service.errors import add_request_id, request_middleware
from service.limits import FailedLogins, RateLimiter
from service.metrics import Metrics
from service.openai_api import add_openai_routes
from service.playground import add_playground_routes
from service.redis_link import redis_context
from service.resumable import answers_context
from service.resume_routes import add_resume_routes
from service.routes import add_routes
from service.security import access_middleware, setup_cors
from service.settings import Settings
from service.shared_circuits import shared_circuits_context
from service.shared_limits import shared_limits_context
from service.status import RecentActivity, add_status_routes
from service.storage_state import storage_context
from service.summaries import summaries_context
from service.threads import add_thread_routes
from service.ui_chat import add_ui_chat_routes

log = structlog.get_logger("ai_stream")


def create_app(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> web.Application:
    # The body limit is enforced (with a JSON 413) by the handlers; aiohttp's own cap sits just above it.
    app = web.Application(
        middlewares=[request_middleware, access_middleware(settings)],
        client_max_size=settings.max_body_bytes + 1,
    )
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[IN_FLIGHT] = weakref.WeakSet()
    app[ACTIVITY] = RecentActivity()
    app[METRICS] = Metrics(app[ACTIVITY])
    app[LIMITER] = RateLimiter(settings.rate_limit_rpm, settings.max_concurrent_streams, settings.max_total_streams)
    app[USER_LIMITER] = RateLimiter(
        settings.user_rate_limit_rpm,
        settings.user_max_concurrent_streams,
        0,  # the total is the clients' limiter's
        kind="user",
        rpm_setting="AI_USER_RATE_LIMIT_RPM",
        streams_setting="AI_USER_MAX_CONCURRENT_STREAMS",
    )
    app[FAILED_LOGINS] = FailedLogins(settings.auth_failures_per_minute)
    app.cleanup_ctx.append(redis_context)
    app.cleanup_ctx.append(shared_limits_context)
    app.cleanup_ctx.append(storage_context)
    app.cleanup_ctx.append(_models)
    app.cleanup_ctx.append(shared_circuits_context)  # after the models: it shares their circuits
    app.cleanup_ctx.append(summaries_context)  # after the models: its cleanup runs before theirs
    # Last: its cleanup (the producers still running, stopped and stored) runs first.
    app.cleanup_ctx.append(answers_context)
    app.on_response_prepare.append(add_request_id)
    app.on_shutdown.append(_drain)
    add_routes(app)
    add_thread_routes(app)
    add_status_routes(app)
    if settings.playground:
        add_playground_routes(app)
    add_ui_chat_routes(app)
    add_resume_routes(app)
    add_openai_routes(app)
    add_anthropic_routes(app)
    setup_cors(app, settings.cors_origins)
    return app


async def _models(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    registry = ModelRegistry(
        settings.catalog, connect_timeout=settings.connect_timeout, idle_timeout=settings.idle_timeout
    )
    app[REGISTRY] = registry
    await registry.prepare()
    app[CHAIN] = FallbackChain(
        registry.models,
        options=registry.options,
        first_token_timeout=settings.first_token_timeout,
        retry_after_max=settings.retry_after_max,
        cooldown_failures=settings.cooldown_failures,
        cooldown_seconds=settings.cooldown_seconds,
    )
    yield
    await registry.close()


async def _drain(app: web.Application) -> None:
    """on_shutdown (the listening socket is already closed): let open answers finish for up to
    AI_SHUTDOWN_GRACE seconds, then end the rest with an `error` event, code `shutting_down`."""
    in_flight = app[IN_FLIGHT]
    loop = asyncio.get_running_loop()
    until = loop.time() + app[SETTINGS].shutdown_grace
    if in_flight:
        log.info("draining", open_answers=len(in_flight), grace_seconds=app[SETTINGS].shutdown_grace)
    while in_flight and loop.time() < until:
        await asyncio.sleep(0.05)
    for cutoff in list(in_flight):
        cutoff.end_now()
    # Give the ended answers a moment to write their last event and store what they have.
    while in_flight and loop.time() < until + 5:
        await asyncio.sleep(0.01)

