"""The OpenAI-compatible routes: `POST /v1/chat/completions` and `GET /v1/models`.

Code written for OpenAI's SDKs works by changing its base URL: the request is read into an
`Asked` and answered by the same pipeline as `/ai/stream/chat` (fallback chain, date context,
limits, metrics), written as Chat Completions chunks. Errors, including those of the
middleware (keys, limits, body size), are in OpenAI's shape on these routes.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from providers.base import Message, ModelRequest
from service.app_keys import REGISTRY, SETTINGS
from service.asking import Asked, answer
from service.body import read_json
from service.compat import CHAIN_ALIASES, USER_ID_MAX, Fields, chain_named
from service.errors import error_shape
from service.formats import openai_chat
from service.formats.openai_chat import ChatCompletionChunks
from service.limits import check_input
from service.security import opens_answer

ROLES = ("system", "developer", "user", "assistant")
# Fields of features the service does not offer: a request that uses one gets a 400 naming it.
UNSUPPORTED = {
    "tools": "tool calling",
    "tool_choice": "tool calling",
    "functions": "function calling",
    "function_call": "function calling",
    "audio": "audio output",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
    "top_logprobs": "log probabilities",
}
STARTED = int(time.time())  # the `created` of the listed models: when this process started


@opens_answer
@error_shape(openai_chat.error_body)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    asked, wire = _completion_request(request, await read_json(request))
    return await answer(request, asked, wire)


def _completion_request(request: web.Request, data: dict[str, Any]) -> tuple[Asked, ChatCompletionChunks]:
    settings = request.app[SETTINGS]
    fields = Fields(data)
    model = fields.string("model", required=True)
    _refuse_unsupported(fields, data)
    system_parts, messages = _messages(fields, data.get("messages"))
    limit = settings.max_tokens_limit
    max_tokens = fields.integer("max_tokens", 1, limit, setting="AI_MAX_TOKENS_LIMIT")
    # The newer name wins when both are given.
    max_tokens = fields.integer("max_completion_tokens", 1, limit, setting="AI_MAX_TOKENS_LIMIT") or max_tokens
    temperature = fields.number("temperature", 0, 2)
    stop = fields.stop_sequences("stop", data.get("stop"))
    stream = fields.boolean("stream")
    include_usage = _include_usage(fields, data.get("stream_options"))
    user = data.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > USER_ID_MAX):
        fields.problem("user", f"must be a string of at most {USER_ID_MAX} characters")
    fields.check()
    assert model is not None
    check_input(settings, len(messages) + len(system_parts), sum(len(m.content) for m in messages) + sum(map(len, system_parts)))
    provider = chain_named(request, model)
    model_request = ModelRequest(
        messages=messages,
        max_tokens=max_tokens or settings.default_max_tokens,
        system="\n\n".join(system_parts) or None,
        temperature=temperature,
        stop=stop,
    )
    wire = ChatCompletionChunks(model, include_usage=include_usage)
    return Asked(provider, model_request, stream, user_id=user or None, date_context=settings.compat_date_context), wire


def _include_usage(fields: Fields, options: Any) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict):
        fields.problem("stream_options", "must be an object")
        return False
    flag = options.get("include_usage")
    if flag is not None and not isinstance(flag, bool):
        fields.problem("stream_options.include_usage", "must be true or false")
    return flag is True


def _refuse_unsupported(fields: Fields, data: dict[str, Any]) -> None:
    for name, feature in UNSUPPORTED.items():
        if data.get(name) is not None:
            fields.unsupported(name, f"{feature}: this service answers with text only")
    n = data.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        fields.unsupported("n", "more than one choice (n must be 1)")
    if data.get("logprobs") is not None and data.get("logprobs") is not False:
        fields.unsupported("logprobs", "log probabilities")
    response_format = data.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        fields.unsupported("response_format", "structured output (only {\"type\": \"text\"})")
    modalities = data.get("modalities")
    if modalities is not None and modalities != ["text"]:
        fields.unsupported("modalities", "outputs other than text")


def _messages(fields: Fields, value: Any) -> tuple[list[str], tuple[Message, ...]]:
    """System (and developer) texts in order, and the user and assistant turns."""
    if value is None:
        fields.problem("messages", "is required")
        return [], ()
    if not isinstance(value, list) or not value:
        fields.problem("messages", "must be a non-empty list")
        return [], ()
    system: list[str] = []
    turns: list[Message] = []
    for index, item in enumerate(value):
        where = f"messages.{index}"
        if not isinstance(item, dict):
            fields.problem(where, "must be an object")
            continue
        role = item.get("role")
        if role not in ROLES:
            shown = f" ({role[:20]!r} messages are not supported)" if isinstance(role, str) else ""
            fields.problem(f"{where}.role", f"must be one of {', '.join(ROLES)}{shown}")
            continue
        if item.get("tool_calls") is not None or item.get("function_call") is not None:
            fields.unsupported(f"{where}.tool_calls", "tool calling")
            continue
        text = fields.text(f"{where}.content", item.get("content"), part_name="content part", separator="")
        if text is None:
            continue
        if role in ("system", "developer"):
            system.append(text)
        else:
            turns.append(Message(role, text))
    if not fields.details and not turns:
        fields.problem("messages", "must hold at least one user or assistant message")
    return system, tuple(turns)


@error_shape(openai_chat.error_body)
async def list_models(request: web.Request) -> web.Response:
    """The chain's alias and every configured model with credentials, as OpenAI lists models."""
    data = [{"id": CHAIN_ALIASES[0], "object": "model", "created": STARTED, "owned_by": "ai-stream"}]
    data += [
        {"id": info.name, "object": "model", "created": STARTED, "owned_by": info.name.partition("/")[0]}
        for info in request.app[REGISTRY].info
        if info.has_credentials
    ]
    return web.json_response({"object": "list", "data": data})


def add_openai_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
