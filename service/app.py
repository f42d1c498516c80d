"""The application factory: everything the service shares is created here, once."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator

from aiohttp import web

from providers.factory import ModelRegistry
from providers.fallback import FallbackChain
from service.conversations import add_thread_routes, storage_context
from service.errors import add_request_id, request_middleware
from service.keys import CHAIN, OPEN_STREAMS, REGISTRY, SETTINGS
from service.routes import add_routes
from service.settings import Settings


def create_app(settings: Settings) -> web.Application:
    # The body limit is enforced (with a JSON 413) by the handlers; aiohttp's own cap sits just above it.
    app = web.Application(middlewares=[request_middleware], client_max_size=settings.max_body_bytes + 1)
    app[SETTINGS] = settings
    app[OPEN_STREAMS] = weakref.WeakSet()
    app.cleanup_ctx.append(storage_context)
    app.cleanup_ctx.append(_models)
    app.on_response_prepare.append(add_request_id)
    app.on_shutdown.append(_end_open_streams)
    add_routes(app)
    add_thread_routes(app)
    return app


async def _models(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    registry = ModelRegistry(
        settings.models,
        api_keys={p: settings.api_key(p) for p in ("anthropic", "openai")},
        base_urls={"anthropic": settings.anthropic_base_url, "openai": settings.openai_base_url},
        connect_timeout=settings.connect_timeout,
        idle_timeout=settings.idle_timeout,
    )
    app[REGISTRY] = registry
    app[CHAIN] = FallbackChain(
        registry.models,
        first_token_timeout=settings.first_token_timeout,
        retry_after_max=settings.retry_after_max,
    )
    yield
    await registry.close()


async def _end_open_streams(app: web.Application) -> None:
    """Stop keep-alive pings so that open streams do not hold the server open."""
    for stream in list(app[OPEN_STREAMS]):
        if stream.is_connected():
            stream.stop_streaming()
