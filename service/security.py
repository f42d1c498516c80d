"""Who may call, and how often: API keys and the per-minute limit on every API route (`/ai/...`
and the OpenAI- and Anthropic-compatible `/v1/...`), and CORS for browsers."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

import aiohttp_cors
from aiohttp import web

from service.app_keys import FAILED_LOGINS, LIMITER, THREAD_OWNER
from service.errors import ApiError
from service.limits import client_of
from service.settings import ApiKey, Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The API routes: the service's own, and those of the OpenAI and Anthropic SDKs. Paths under
# them that match no route are protected too, so that a 404 tells a stranger nothing.
PROTECTED_PREFIXES = ("/ai/", "/v1/")
# Open like /health: load balancers that only route /ai/stream/ check this one.
OPEN_PATHS = frozenset({"/ai/stream/health"})


def is_protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES) and path not in OPEN_PATHS


def _digest(value: str) -> bytes:
    # aiohttp keeps header bytes that are not UTF-8 as surrogate escapes: hash them as sent.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def find_key(digests: list[tuple[bytes, ApiKey]], presented: str) -> ApiKey | None:
    """The key `presented` matches. Digests of equal length are compared with every key, so
    the time taken says nothing about how much of a key was right, or which key."""
    found = None
    candidate = _digest(presented)
    for digest, key in digests:
        if hmac.compare_digest(candidate, digest):
            found = key
    return found


def access_middleware(settings: Settings) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Authentication, then the requests-per-minute limit of the client it names (one middleware:
    its frame lives as long as each stream does)."""
    keys = [(_digest(key.key), key) for key in settings.api_keys]
    metrics_public = settings.metrics_public

    @web.middleware
    async def access(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # CORS preflights carry no credentials by design; /health and /openapi.yaml stay open.
        if request.method == "OPTIONS":
            return await handler(request)
        path = request.path
        api = is_protected(path)
        # No keys configured: open (only allowed on loopback or with AI_ALLOW_UNAUTHENTICATED).
        if keys and (api or (path == "/metrics" and not metrics_public)):
            address = request.remote or "unknown"
            failed_logins = request.app[FAILED_LOGINS]
            failed_logins.check(address)
            try:
                request[THREAD_OWNER] = _key_name(keys, request)
            except ApiError:
                await failed_logins.failed(address)
                raise
        if api:
            client = client_of(request)
            limiter = request.app[LIMITER]
            await limiter.admit(client)
            if getattr(request.match_info.handler, "opens_answer", False):
                # The client's stream slot is taken before its body is read, so a slow body
                # counts against its limit from the first byte.
                async with limiter.stream(client):
                    return await handler(request)
        return await handler(request)

    return access


def opens_answer(handler: Handler) -> Handler:
    """Marks a route whose requests hold an open-stream slot for as long as they run."""
    handler.opens_answer = True  # type: ignore[attr-defined]
    return handler


def _key_name(keys: list[tuple[bytes, ApiKey]], request: web.Request) -> str:
    """The name of the key sent as `Authorization: Bearer <key>` or, as the Anthropic SDK sends
    it, `x-api-key: <key>`."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    key = find_key(keys, token.strip()) if scheme.lower() == "bearer" else None
    if key is None and (presented := request.headers.get("x-api-key")) is not None:
        key = find_key(keys, presented.strip())
    if key is None:
        raise ApiError(
            401,
            "unauthorized",
            "A valid API key is required: send Authorization: Bearer <key> (or x-api-key: <key>).",
            headers={"WWW-Authenticate": 'Bearer realm="ai-stream"'},
        )
    return key.name


# What the OpenAI and Anthropic SDKs send from a browser besides the headers above.
SDK_HEADERS = (
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "OpenAI-Organization",
    "OpenAI-Project",
    "X-Stainless-Arch",
    "X-Stainless-Lang",
    "X-Stainless-OS",
    "X-Stainless-Package-Version",
    "X-Stainless-Retry-Count",
    "X-Stainless-Runtime",
    "X-Stainless-Runtime-Version",
    "X-Stainless-Timeout",
    "X-Stainless-Helper-Method",
)


def setup_cors(app: web.Application, origins: list[str]) -> None:
    """Allow the configured origins on every route; with none configured, send no CORS headers."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,  # bearer keys are sent explicitly, never as cookies
        expose_headers=("X-Request-ID", "Retry-After", "X-Answer-ID"),
        allow_headers=("Content-Type", "Authorization", "X-Request-ID", "Last-Event-ID", *SDK_HEADERS),
        allow_methods=("GET", "POST", "PATCH", "DELETE", "OPTIONS"),
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        if route.method != "HEAD":
            cors.add(route)
