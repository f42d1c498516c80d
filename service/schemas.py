"""Request bodies, validated before anything is sent upstream."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
)

THREAD_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")

NonBlank = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
ThreadId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]
MessageId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]
# No NUL: PostgreSQL text cannot hold it.
UserId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00]*$")]


class _Body(BaseModel):
    # Unknown fields are ignored so that clients sending one payload shape to both routes work.
    model_config = ConfigDict(extra="ignore", frozen=True)

    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: Annotated[float, Field(strict=True, ge=0, le=1)] | None = None
    model: NonBlank | None = None
    timezone: NonBlank | None = None
    stream: StrictBool = True
    # Keep generating when the client goes away, for a resume (default: only a stored thread's answer).
    resumable: StrictBool | None = None


class GenerateBody(_Body):
    prompt: NonBlank
    system_prompt: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["user", "assistant", "system"]
    content: NonBlank


class ChatBody(_Body):
    # Required, and not empty, except with `regenerate` (checked by the handler).
    messages: list[ChatMessage] | None = None
    system: str | None = None
    thread_id: ThreadId | None = None
    user_id: UserId | None = None
    # With a thread: answer its last question again, replacing the last answer...
    regenerate: StrictBool = False
    # ...or cut the stored thread at this user message, which the request's new turn replaces.
    edit_from: MessageId | None = None


# Plain words for pydantic's error types, keyed by type; the field path is added in front.
_MESSAGES = {
    "missing": "is required",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters",
    "string_pattern_mismatch": "has an invalid format",
    "too_short": "must not be empty",
    "literal_error": "must be one of {expected}",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
}


def describe_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """One entry per problem: the field path and a sentence a person can act on."""
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        template = _MESSAGES.get(error["type"])
        ctx = error.get("ctx") or {}
        if error["type"] in ("string_pattern_mismatch", "string_too_long") and field.endswith(("thread_id", "edit_from")):
            message = "must be 1-128 letters, digits, '-' or '_'"
        elif error["type"] == "string_pattern_mismatch" and field.endswith("user_id"):
            message = "must not contain NUL characters"
        elif error["type"] == "string_pattern_mismatch":
            message = "must not be blank"
        elif template:
            message = template.format(**{k: _plain(v) for k, v in ctx.items()})
        else:
            message = error["msg"]
        entry = {"field": field, "message": f"{field} {message}" if field else message}
        if entry not in details:
            details.append(entry)
    return details


def _plain(value: object) -> str:
    """1.0 -> "1", so limits read as people write them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
