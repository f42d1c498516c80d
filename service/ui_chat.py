"""`/ai/ui/chat`: the chat route the Vercel AI SDK's `useChat` talks to (`DefaultChatTransport`),
and the stored chat as `UIMessage[]` for `useChat({ messages })` on page load.

The body is what `DefaultChatTransport` sends (`id`, `messages`, `trigger`, `messageId`) plus
the service's options in the same object. The chat `id` is a stored thread, which follows the
client's messages (see `Store.follow_chat`), unless `store` is false.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    field_validator,
)
from pydantic_core import PydanticCustomError

from providers.base import ModelRequest
from service.app_keys import SETTINGS, STORAGE
from service.asking import Asked, answer, chain_for
from service.body import invalid, read_json, validate
from service.conversations import NOT_FOUND, UNAVAILABLE, owner_of
from service.errors import ApiError
from service.formats.ui_message_stream import UIMessageStream
from service.history import as_turn
from service.limits import check_input
from service.schemas import THREAD_ID_PATTERN, NonBlank, UserId
from service.security import opens_answer
from storage import ClientMessage, StorageError, StoredMessage, ThreadNotFound

MessageId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class UIPart(BaseModel):
    # Reasoning, step-start, source-*, data-* and tool parts are ignored; only `text` is read.
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str
    text: str | None = None


class UIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: MessageId
    role: Literal["system", "user", "assistant"]
    parts: list[UIPart]


class UIChatBody(BaseModel):
    # Unknown fields are ignored: useChat's `body` option may carry the page's own.
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str  # the chat's id: its stored thread
    messages: Annotated[list[UIMessage], Field(min_length=1)]
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: MessageId | None = None  # noqa: N815 (the SDK's name)
    # The service's options, as on /ai/stream/chat.
    model: NonBlank | None = None
    system: str | None = None
    timezone: NonBlank | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    user_id: UserId | None = None
    store: StrictBool = True
    restart_on_failure: StrictBool | None = None  # default: AI_RESTART_ON_FAILURE
    resumable: StrictBool | None = None  # default: a stored chat's answer is

    @field_validator("id")
    @classmethod
    def _thread_id(cls, value: str) -> str:
        if not THREAD_ID_PATTERN.fullmatch(value):
            raise PydanticCustomError("chat_id", "must be 1-128 letters, digits, '-' or '_'")
        return value


@opens_answer
async def ui_chat(request: web.Request) -> web.StreamResponse:
    asked = _ui_chat_request(request, await read_json(request))
    return await answer(request, asked, UIMessageStream())


def _ui_chat_request(request: web.Request, data: dict[str, Any]) -> Asked:
    settings = request.app[SETTINGS]
    body = validate(UIChatBody, data, settings)
    messages = _conversation_messages(body)
    system_parts = [body.system] if body.system else []
    system_parts += [_text(m) for m in messages if m.role == "system" and _text(m)]
    conversation = tuple(ClientMessage(m.id, m.role, _text(m)) for m in messages if m.role != "system")
    if not any(m.role == "user" and m.content.strip() for m in conversation):
        raise invalid([{"field": "messages", "message": "messages must hold at least one user message with a text part"}])
    check_input(settings, len(body.messages), sum(len(m.content) for m in conversation) + sum(map(len, system_parts)))
    chain = chain_for(request, body.model)
    restart = settings.restart_on_failure if body.restart_on_failure is None else body.restart_on_failure
    model_request = ModelRequest(
        messages=as_turn(conversation),
        max_tokens=body.max_tokens or settings.default_max_tokens,
        system="\n\n".join(system_parts) or None,
        temperature=body.temperature,
    )
    return Asked(
        chain.restarting() if restart else chain,
        model_request,
        thread_id=body.id if body.store else None,
        user_id=body.user_id,
        conversation=conversation if body.store else None,
        timezone=body.timezone,
        resumable=body.resumable,
    )


def _conversation_messages(body: UIChatBody) -> list[UIMessage]:
    """The messages the answer follows, checked: unique ids, no file parts, text parts with text.
    A regenerate that names an assistant message still in the list answers in its place."""
    details = []
    seen: set[str] = set()
    for index, message in enumerate(body.messages):
        if message.id in seen:
            details.append({"field": f"messages.{index}.id", "message": f"messages.{index}.id repeats the id of an earlier message"})
        seen.add(message.id)
        for number, part in enumerate(message.parts):
            field = f"messages.{index}.parts.{number}"
            if part.type == "file":
                details.append({"field": field, "message": f"{field} is a file part: files are not supported yet, send text parts"})
            elif part.type == "text" and part.text is None:
                details.append({"field": f"{field}.text", "message": f"{field}.text is required"})
    if details:
        raise invalid(details)
    messages = body.messages
    if body.trigger == "regenerate-message" and body.messageId is not None:
        for index, message in enumerate(messages):
            if message.id == body.messageId and message.role == "assistant":
                return messages[:index]
    return messages


def _text(message: UIMessage) -> str:
    return "\n\n".join(part.text for part in message.parts if part.type == "text" and part.text)


async def stored_messages(request: web.Request) -> web.Response:
    """The stored chat as `UIMessage[]`, oldest first (answers in progress left out)."""
    chat_id = request.match_info["chat_id"]
    if not THREAD_ID_PATTERN.fullmatch(chat_id):
        raise ApiError(404, "not_found", NOT_FOUND)
    user_id = request.query.get("user_id")
    if user_id is not None and not 1 <= len(user_id) <= 128:
        raise invalid([{"field": "user_id", "message": "user_id must be 1-128 characters"}])
    state = request.app[STORAGE]
    try:
        await state.ensure_open()
        # As many as a request may send back.
        stored = await state.store.list_messages(chat_id, owner_of(request, user_id), limit=request.app[SETTINGS].max_messages)
    except ThreadNotFound:
        raise ApiError(404, "not_found", NOT_FOUND) from None
    except StorageError:
        state.record(False)
        raise ApiError(503, "storage_unavailable", UNAVAILABLE, headers={"Retry-After": "5"}) from None
    return web.json_response([ui_message(m) for m in stored if m.status != "pending"])


def ui_message(message: StoredMessage) -> dict[str, Any]:
    parts = [{"type": "text", "text": message.content}] if message.content else []
    ui: dict[str, Any] = {"id": message.chat_id, "role": message.role, "parts": parts}
    if message.role == "assistant":
        usage = None if message.input_tokens is None else {
            "input_tokens": message.input_tokens, "output_tokens": message.output_tokens,
        }
        ui["metadata"] = {"model": message.model, "provider": message.provider, "usage": usage, "status": message.status}
    return ui


def add_ui_chat_routes(app: web.Application) -> None:
    app.router.add_post("/ai/ui/chat", ui_chat)
    app.router.add_get("/ai/ui/chat/{chat_id}/messages", stored_messages)
