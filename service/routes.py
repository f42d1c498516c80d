"""HTTP handlers: generate, chat, health and the API description."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from providers.base import Message, ModelRequest, Provider
from service import __version__
from service.body import invalid, read_json, validate
from service.conversations import begin_turn, replay, store_answer
from service.datecontext import with_date_context
from service.errors import ApiError, request_log
from service.keys import CHAIN, IN_FLIGHT, LIMITER, METRICS, REGISTRY, SETTINGS, STORAGE
from service.limits import check_input, client_of
from service.metrics import metrics_response
from service.relay import Outcome, collect_answer, done_payload, stream_answer
from service.schemas import ChatBody, GenerateBody

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


def _chain_for(request: web.Request, model: str | None) -> Provider:
    """The fallback chain, started at the requested model when one is named."""
    chain = request.app[CHAIN]
    if model is None:
        return chain
    name = request.app[REGISTRY].resolve(model)
    if name is None:
        configured = ", ".join(info.name for info in request.app[REGISTRY].info)
        raise invalid([{"field": "model", "message": f"model {model[:100]!r} is not configured; choose one of: {configured}"}])
    # A configured model without credentials is skipped: start at the next usable one after it.
    usable = {m.name for m in chain.models}
    names = [info.name for info in request.app[REGISTRY].info]
    for candidate in names[names.index(name) :]:
        if candidate in usable:
            return chain.starting_at(candidate)
    raise ApiError(503, "no_models_available", "No model from the requested one on is configured with credentials.")


def _system_prompt(request: web.Request, system: str | None, zone: str | None) -> str | None:
    settings = request.app[SETTINGS]
    if not settings.date_context:
        return system or None
    return with_date_context(system or None, zone or settings.default_timezone)


async def _answer(
    request: web.Request,
    provider: Provider,
    model_request: ModelRequest,
    stream: bool,
    on_end: Callable[[Outcome], Awaitable[dict[str, Any]]] | None = None,
) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    metrics = request.app[METRICS]
    in_flight = request.app[IN_FLIGHT]
    started = time.perf_counter()
    metrics.open_streams.inc()
    outcome = None
    try:
        if stream:
            response, outcome = await stream_answer(
                request,
                provider,
                model_request,
                deadline=settings.request_timeout,
                ping_interval=settings.keepalive_interval,
                in_flight=in_flight,
                on_end=on_end,
            )
            return response
        outcome, status, stored = await collect_answer(
            provider, model_request, deadline=settings.request_timeout, in_flight=in_flight, on_end=on_end
        )
    finally:
        metrics.open_streams.dec()
        # A cancelled stream (client gone) returns no outcome; relay logged it, count it here.
        metrics.record_answer(outcome or Outcome(client_gone=True), time.perf_counter() - started)
        metrics.observe_circuits(request.app[CHAIN].circuits)
    request_log(request).update(outcome.log_fields())
    if outcome.finish is None:
        assert outcome.error is not None
        return web.json_response({"error": outcome.error.message, "code": outcome.error.code, "details": []}, status=status)
    done = done_payload(outcome.finish, outcome.attempts)
    del done["type"]
    return web.json_response({"text": "".join(outcome.text), **done, **stored})


def _require_models(request: web.Request) -> None:
    if not request.app[CHAIN].models:
        raise ApiError(503, "no_models_available", "No model is configured with credentials.")


# The handlers turn the body into a `ModelRequest` in plain functions, so that neither the parsed
# JSON nor the validated body stays referenced while the answer streams.


async def generate(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    provider, model_request, stream = _generate_request(request, await read_json(request, settings.max_body_bytes))
    with request.app[LIMITER].stream(client_of(request)):
        return await _answer(request, provider, model_request, stream)


def _generate_request(request: web.Request, data: dict[str, Any]) -> tuple[Provider, ModelRequest, bool]:
    settings = request.app[SETTINGS]
    body = validate(GenerateBody, data, settings)
    check_input(settings, 1, len(body.prompt) + len(body.system_prompt or ""))
    provider = _chain_for(request, body.model)
    _require_models(request)
    model_request = ModelRequest(
        messages=(Message("user", body.prompt),),
        max_tokens=body.max_tokens or settings.default_max_tokens,
        system=_system_prompt(request, body.system_prompt, body.timezone),
        temperature=body.temperature,
    )
    return provider, model_request, body.stream


async def chat(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    started = time.monotonic()
    provider, model_request, thread, stream = _chat_request(request, await read_json(request, settings.max_body_bytes))
    with request.app[LIMITER].stream(client_of(request)):
        on_end = None
        if thread is not None:
            thread_id, user_id = thread
            request_log(request)["thread_id"] = thread_id
            turn = await begin_turn(request, thread_id, user_id, model_request.messages)
            model_request = replace(model_request, messages=replay(turn.history) + model_request.messages)
            on_end = store_answer(request, thread_id, turn.assistant_message_id, started + settings.request_timeout)
        return await _answer(request, provider, model_request, stream, on_end)


def _chat_request(
    request: web.Request, data: dict[str, Any]
) -> tuple[Provider, ModelRequest, tuple[str, str | None] | None, bool]:
    """The chain, the request for it (without stored history), the thread (id, user) if any, and
    whether to stream."""
    settings = request.app[SETTINGS]
    body = validate(ChatBody, data, settings)
    check_input(settings, len(body.messages), sum(len(m.content) for m in body.messages) + len(body.system or ""))
    provider = _chain_for(request, body.model)
    _require_models(request)
    # `system` messages are folded into the system prompt, in order, after the `system` field.
    system_parts = [body.system] if body.system else []
    system_parts += [m.content for m in body.messages if m.role == "system"]
    messages = tuple(Message(m.role, m.content) for m in body.messages if m.role != "system")
    if not messages:
        raise invalid([{"field": "messages", "message": "messages must hold at least one user or assistant message"}])
    model_request = ModelRequest(
        messages=messages,
        max_tokens=body.max_tokens or settings.default_max_tokens,
        system=_system_prompt(request, "\n\n".join(system_parts), body.timezone),
        temperature=body.temperature,
    )
    thread = (body.thread_id, body.user_id) if body.thread_id is not None else None
    return provider, model_request, thread, body.stream


async def health(request: web.Request) -> web.Response:
    """Configuration only: never calls a model, so it answers in microseconds."""
    registry = request.app[REGISTRY]
    circuits = request.app[CHAIN].circuits
    models = [
        {
            "name": info.name,
            "provider": info.provider,
            "model": info.model,
            "has_credentials": info.has_credentials,
            **({"circuit": circuits[info.name].snapshot()} if info.name in circuits else {}),
        }
        for info in registry.info
    ]
    primary = registry.info[0]
    storage = request.app[STORAGE]
    # degraded: a configured model cannot be used (no credentials) or the store is not answering.
    ok = storage.ok and all(info.has_credentials for info in registry.info)
    return web.json_response(
        {
            "status": "ok" if ok else "degraded",
            "streaming_enabled": True,
            "supports_streaming": True,
            "format": "Server-Sent Events (SSE)",
            "model": primary.model,
            "provider": primary.provider,
            "models": models,
            "open_streams": len(request.app[IN_FLIGHT]),
            "storage": {"backend": storage.store.backend, "ok": storage.ok},
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
