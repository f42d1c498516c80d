"""The Anthropic-compatible routes: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

Code written for Anthropic's SDKs works by changing its base URL: the request is read into an
`Asked` and answered by the same pipeline as `/ai/stream/chat`, written as Messages stream
events. Keys are accepted as `x-api-key` (what the SDK sends) as well as `Authorization:
Bearer`; `anthropic-version` and `anthropic-beta` are accepted and need nothing. Errors,
including those of the middleware, are in Anthropic's shape on these routes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from providers.base import Message, ModelRequest, Provider, ProviderError, TokenCounter
from service.app_keys import SETTINGS
from service.asking import Asked, answer
from service.body import read_json
from service.compat import USER_ID_MAX, Fields, chain_named
from service.errors import ApiError, error_shape
from service.formats import anthropic_messages
from service.formats.anthropic_messages import MessageEvents
from service.limits import check_input
from service.outcome import STATUS_FOR_CODE
from service.model_loading import needs_models
from service.security import opens_answer

UNSUPPORTED = {
    "tools": "tool use",
    "tool_choice": "tool use",
    "mcp_servers": "MCP servers",
    "container": "code execution containers",
}
# The estimate of `count_tokens` when the primary model cannot count: about four characters a
# token (English text with Claude's and GPT's tokenizers), plus a few tokens of framing.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """A Messages body, read: the chain to ask and what to ask it."""

    provider: Provider
    model_request: ModelRequest
    model: str
    stream: bool
    user_id: str | None


@opens_answer
@error_shape(anthropic_messages.error_body)
async def messages(request: web.Request) -> web.StreamResponse:
    asked, wire = _asked(request, await read_json(request))
    return await answer(request, asked, wire)


def _asked(request: web.Request, data: dict[str, Any]) -> tuple[Asked, MessageEvents]:
    read = read_messages_request(request, data, counting=False)
    asked = Asked(
        read.provider, read.model_request, read.stream, user_id=read.user_id,
        date_context=request.app[SETTINGS].compat_date_context,
    )
    return asked, MessageEvents(read.model)


@needs_models
@error_shape(anthropic_messages.error_body)
async def count_tokens(request: web.Request) -> web.Response:
    """Claude's own count when the request's first model can count (passed through to its
    token-counting endpoint); otherwise an estimate from the text's length."""
    read = read_messages_request(
        request, await read_json(request), counting=True
    )
    models = getattr(read.provider, "models", (read.provider,))
    primary = models[0] if models else None
    if isinstance(primary, TokenCounter):
        try:
            tokens = await primary.count_tokens(read.model_request)
        except ProviderError as exc:
            raise ApiError(STATUS_FOR_CODE.get(exc.code, 502), exc.code, exc.message) from None
    else:
        tokens = estimate_tokens(read.model_request)
    return web.json_response({"input_tokens": tokens})


def estimate_tokens(model_request: ModelRequest) -> int:
    chars = len(model_request.system or "") + sum(len(m.content) for m in model_request.messages)
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * (len(model_request.messages) + 1)


def read_messages_request(request: web.Request, data: dict[str, Any], *, counting: bool) -> MessagesRequest:
    """The body of `/v1/messages` (or of `count_tokens`, which has no `max_tokens` and no `stream`)."""
    settings = request.app[SETTINGS]
    fields = Fields(data)
    model = fields.string("model", required=True)
    for name, feature in UNSUPPORTED.items():
        if data.get(name) is not None:
            fields.unsupported(name, f"{feature}: this service answers with text only")
    thinking = data.get("thinking")
    if thinking is not None and not (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        fields.unsupported("thinking", "extended thinking")
    max_tokens = None
    if not counting:
        max_tokens = fields.integer("max_tokens", 1, settings.max_tokens_limit, required=True, setting="AI_MAX_TOKENS_LIMIT")
    system = None if data.get("system") is None else fields.text("system", data["system"], part_name="text block", separator="\n\n")
    turns = _turns(fields, data.get("messages"))
    stop = fields.stop_sequences("stop_sequences", data.get("stop_sequences"))
    if isinstance(data.get("stop_sequences"), str):
        fields.problem("stop_sequences", "must be a list of non-empty strings")
    temperature = fields.number("temperature", 0, 1)
    stream = False if counting else fields.boolean("stream")
    user_id = _user_id(fields, data.get("metadata"))
    fields.check()
    assert model is not None
    check_input(settings, len(turns), sum(len(m.content) for m in turns) + len(system or ""))
    provider = chain_named(request, model)
    model_request = ModelRequest(
        messages=turns,
        max_tokens=max_tokens or settings.default_max_tokens,
        system=system or None,
        temperature=temperature,
        stop=stop,
    )
    return MessagesRequest(provider, model_request, model, stream, user_id)


def _turns(fields: Fields, value: Any) -> tuple[Message, ...]:
    if value is None:
        fields.problem("messages", "is required")
        return ()
    if not isinstance(value, list) or not value:
        fields.problem("messages", "must be a non-empty list")
        return ()
    turns = []
    for index, item in enumerate(value):
        where = f"messages.{index}"
        if not isinstance(item, dict):
            fields.problem(where, "must be an object")
            continue
        role = item.get("role")
        if role not in ("user", "assistant"):
            fields.problem(f"{where}.role", "must be one of user, assistant")
            continue
        text = fields.text(f"{where}.content", item.get("content"), part_name="content block", separator="\n\n")
        if text is not None:
            turns.append(Message(role, text))
    return tuple(turns)


def _user_id(fields: Fields, metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        fields.problem("metadata", "must be an object")
        return None
    user_id = metadata.get("user_id")
    if user_id is None or user_id == "":
        return None
    if not isinstance(user_id, str) or len(user_id) > USER_ID_MAX:
        fields.problem("metadata.user_id", f"must be a string of at most {USER_ID_MAX} characters")
        return None
    return user_id


def add_anthropic_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
