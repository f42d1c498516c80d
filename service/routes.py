"""HTTP handlers: generate, chat, health and the API description."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from aiohttp import web

from providers.base import Message, ModelRequest
from service import __version__
from service.app_keys import CHAIN, IN_FLIGHT, METRICS, MODEL_LOADING, OVERLOAD, REDIS, REGISTRY, SETTINGS, STORAGE
from service.asking import Asked, answer, chain_for
from service.body import invalid, read_json, validate
from service.errors import ApiError
from service.formats.typed_sse import TypedEvents
from service.limits import check_input
from service.metrics import metrics_response
from service.schemas import ChatBody, GenerateBody
from service.security import opens_answer
from storage import Cut

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


# The handlers turn the body into an `Asked` in plain functions, so that neither the parsed JSON
# nor the validated body stays referenced while the answer streams.


@opens_answer
async def generate(request: web.Request) -> web.StreamResponse:
    asked = _generate_request(request, await read_json(request))
    return await answer(request, asked, TypedEvents())


def _generate_request(request: web.Request, data: dict[str, Any]) -> Asked:
    settings = request.app[SETTINGS]
    body = validate(GenerateBody, data, settings)
    check_input(settings, 1, len(body.prompt) + len(body.system_prompt or ""))
    model_request = ModelRequest(
        messages=(Message("user", body.prompt),),
        max_tokens=body.max_tokens or settings.default_max_tokens,
        system=body.system_prompt or None,
        temperature=body.temperature,
    )
    return Asked(chain_for(request, body.model), model_request, body.stream, timezone=body.timezone,
                 resumable=body.resumable)


@opens_answer
async def chat(request: web.Request) -> web.StreamResponse:
    asked = _chat_request(request, await read_json(request))
    return await answer(request, asked, TypedEvents())


def _chat_request(request: web.Request, data: dict[str, Any]) -> Asked:
    settings = request.app[SETTINGS]
    body = validate(ChatBody, data, settings)
    if not body.messages and not body.regenerate:
        message = "messages is required" if body.messages is None else "messages must not be empty"
        raise invalid([{"field": "messages", "message": message}])
    body_messages = body.messages or []
    check_input(settings, len(body_messages), sum(len(m.content) for m in body_messages) + len(body.system or ""))
    provider = chain_for(request, body.model)
    # `system` messages are folded into the system prompt, in order, after the `system` field.
    system_parts = [body.system] if body.system else []
    system_parts += [m.content for m in body_messages if m.role == "system"]
    messages = tuple(Message(m.role, m.content) for m in body_messages if m.role != "system")
    cut = _cut(body, messages)
    if not messages and not body.regenerate:
        raise invalid([{"field": "messages", "message": "messages must hold at least one user or assistant message"}])
    model_request = ModelRequest(
        messages=messages,
        max_tokens=body.max_tokens or settings.default_max_tokens,
        system="\n\n".join(system_parts) or None,
        temperature=body.temperature,
    )
    return Asked(provider, model_request, body.stream, body.thread_id, body.user_id, timezone=body.timezone, cut=cut,
                 resumable=body.resumable)


def _cut(body: ChatBody, messages: tuple[Message, ...]) -> Cut | None:
    """Regenerate (a new answer to the thread's last question) or edit (the thread cut at a
    user message, which the new turn replaces): both need a thread, and not both at once."""
    if not body.regenerate and body.edit_from is None:
        return None
    field = "regenerate" if body.regenerate else "edit_from"
    if body.thread_id is None:
        raise invalid([{"field": field, "message": f"{field} needs a thread_id"}])
    if body.regenerate and body.edit_from is not None:
        raise invalid([{"field": "edit_from", "message": "edit_from and regenerate cannot be combined"}])
    if body.regenerate:
        if messages:
            raise invalid([{"field": "messages", "message": "with regenerate, messages may hold only system messages: "
                            "the thread's last question is answered again"}])
        return Cut(None, keep=True)
    if not messages or messages[0].role != "user":
        raise invalid([{"field": "messages", "message": "with edit_from, messages must start with the user message that replaces it"}])
    return Cut(body.edit_from, keep=False)


async def health(request: web.Request) -> web.Response:
    """Configuration only: never calls a model, so it answers in microseconds."""
    registry = request.app[REGISTRY]
    circuits = request.app[CHAIN].circuits
    models = [
        {
            "name": info.name,
            "provider": info.provider,
            "endpoint": info.endpoint.name,
            "api": info.endpoint.api,
            "model": info.model,
            "alias": info.options.alias,
            "max_tokens_limit": info.options.max_tokens_limit,
            "has_credentials": info.has_credentials,
            **({"circuit": circuits[info.name].snapshot()} if info.name in circuits else {}),
        }
        for info in registry.info
    ]
    # Never an address or a key: a base URL may hold credentials, and says where the service's network reaches.
    endpoints = [
        {"name": endpoint.name, "api": endpoint.api, "has_credentials": endpoint.has_credentials}
        for endpoint in registry.catalog.endpoints
    ]
    primary = registry.info[0]
    storage = request.app[STORAGE]
    redis = request.app[REDIS].status()
    overload = request.app[OVERLOAD]
    # degraded: a configured model cannot be used (no credentials), or the store or Redis is not
    # answering. Not when overloaded: that passes by itself, and the replica still serves its streams.
    ok = storage.ok and redis["ok"] and all(info.has_credentials for info in registry.info)
    ok = ok and not request.app[MODEL_LOADING].failed  # the SDKs could not be loaded (the process stops)
    return web.json_response(
        {
            "status": "ok" if ok else "degraded",
            "streaming_enabled": True,
            "supports_streaming": True,
            "format": "Server-Sent Events (SSE)",
            "model": primary.model,
            "provider": primary.provider,
            "models": models,
            # False only right after start, while the SDKs load: an answer asked now waits for them.
            "models_ready": request.app[MODEL_LOADING].ready,
            "endpoints": endpoints,
            "open_streams": len(request.app[IN_FLIGHT]),
            "storage": {"backend": storage.store.backend, "ok": storage.ok},
            "redis": redis,
            "overloaded": overload.overloaded,
            "loop_lag_ms": round(overload.lag_ms, 1),
            "version": __version__,
        }
    )


@functools.cache
def _openapi_document() -> bytes | None:
    try:
        return OPENAPI_PATH.read_bytes()
    except OSError:
        return None


async def openapi(request: web.Request) -> web.Response:
    document = _openapi_document()
    if document is None:
        raise ApiError(404, "not_found", "The API description is not installed with this copy of the service.")
    return web.Response(body=document, content_type="application/yaml", charset="utf-8")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition, summed over worker processes."""
    request.app[METRICS].observe_circuits(request.app[CHAIN].circuits)
    return metrics_response(request.app[METRICS])


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/ai/stream/generate", generate)
    app.router.add_post("/ai/stream/chat", chat)
    app.router.add_get("/health", health, allow_head=True)
    app.router.add_get("/ai/stream/health", health, allow_head=True)
    app.router.add_get("/openapi.yaml", openapi)
