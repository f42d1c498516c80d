"""Who may call: bearer keys on every `/ai/...` route, and CORS for browsers."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

import aiohttp_cors
from aiohttp import web

from service.errors import ApiError
from service.keys import THREAD_OWNER
from service.settings import ApiKey, Settings

PROTECTED_PREFIX = "/ai/"
# Open like /health: load balancers that only route /ai/stream/ check this one.
OPEN_PATHS = frozenset({"/ai/stream/health"})


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIX) and path not in OPEN_PATHS


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def find_key(digests: list[tuple[bytes, ApiKey]], presented: str) -> ApiKey | None:
    """The key `presented` matches. Digests of equal length are compared with every key, so
    the time taken says nothing about how much of a key was right, or which key."""
    found = None
    candidate = _digest(presented)
    for digest, key in digests:
        if hmac.compare_digest(candidate, digest):
            found = key
    return found


def auth_middleware(settings: Settings) -> Callable[..., Awaitable[web.StreamResponse]]:
    keys = [(_digest(key.key), key) for key in settings.api_keys]
    metrics_public = settings.metrics_public

    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # No keys configured: open (only allowed on loopback or with AI_ALLOW_UNAUTHENTICATED).
        # CORS preflights carry no credentials by design; /health and /openapi.yaml stay open.
        protected = is_protected(request.path) or (request.path == "/metrics" and not metrics_public)
        if not keys or request.method == "OPTIONS" or not protected:
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        key = find_key(keys, token.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            raise ApiError(
                401,
                "unauthorized",
                "A valid API key is required: send Authorization: Bearer <key>.",
                headers={"WWW-Authenticate": 'Bearer realm="ai-stream"'},
            )
        request[THREAD_OWNER] = key.name
        return await handler(request)

    return authenticate


def setup_cors(app: web.Application, origins: list[str]) -> None:
    """Allow the configured origins on every route; with none configured, send no CORS headers."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,  # bearer keys are sent explicitly, never as cookies
        expose_headers=("X-Request-ID", "Retry-After"),
        allow_headers=("Content-Type", "Authorization", "X-Request-ID"),
        allow_methods=("GET", "POST", "DELETE", "OPTIONS"),
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        if route.method != "HEAD":
            cors.add(route)
