"""What the OpenAI- and Anthropic-compatible routes share: reading their bodies field by field
(with errors that name the field), the model they ask for, and their system prompt.

Their bodies are read by hand rather than by a schema: both APIs take text as a string or as
a list of typed parts, and a part of a type the service does not support must be named in the
error ("messages.0.content.1.type 'image_url' is not supported"), never dropped.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from providers.base import Provider
from service.app_keys import REGISTRY
from service.asking import chain_for
from service.body import invalid
from service.errors import ApiError

# `model` names that run the whole chain, from its primary.
CHAIN_ALIASES = ("ai-stream", "default")
MAX_STOP_SEQUENCES = 4  # what OpenAI-compatible models accept: the request may reach one
USER_ID_MAX = 128


class Fields:
    """Typed reads of a JSON object's fields; every problem is collected with its field path,
    and `check()` raises them all at once as a 400 `validation_error`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.details: list[dict[str, str]] = []

    def problem(self, field: str, message: str) -> None:
        self.details.append({"field": field, "message": f"{field} {message}"})

    def check(self) -> None:
        if self.details:
            raise invalid(self.details)

    def unsupported(self, field: str, what: str) -> None:
        self.problem(field, f"is not supported ({what})")

    def string(self, name: str, *, required: bool = False, max_length: int | None = None) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                self.problem(name, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(name, "must be a non-empty string")
            return None
        if max_length is not None and len(value) > max_length:
            self.problem(name, f"must be at most {max_length} characters")
            return None
        return value

    def integer(self, name: str, minimum: int, maximum: int, *, required: bool = False, setting: str = "") -> int | None:
        value = self.data.get(name)
        if value is None:
            if required:
                self.problem(name, "is required")
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(name, "must be an integer")
        elif not minimum <= value <= maximum:
            limit = f" (the limit {setting})" if setting and value > maximum else ""
            self.problem(name, f"must be between {minimum} and {maximum}{limit}")
        else:
            return value
        return None

    def number(self, name: str, minimum: float, maximum: float) -> float | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.problem(name, "must be a number")
        elif not minimum <= value <= maximum:
            self.problem(name, f"must be between {minimum:g} and {maximum:g}")
        else:
            return float(value)
        return None

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(name, "must be true or false")
            return default
        return value

    def stop_sequences(self, name: str, value: Any) -> tuple[str, ...]:
        """A list of up to MAX_STOP_SEQUENCES non-empty strings (a string alone where allowed)."""
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
            self.problem(name, "must be a list of non-empty strings")
            return ()
        if len(items) > MAX_STOP_SEQUENCES:
            self.problem(name, f"must hold at most {MAX_STOP_SEQUENCES} sequences")
            return ()
        return tuple(items)

    def text(self, field: str, value: Any, *, part_name: str, separator: str) -> str | None:
        """Text given as a string or as a list of `{"type": "text", "text": ...}` parts (joined
        with `separator`); any other kind of part is named as not supported."""
        if isinstance(value, str):
            if not value.strip():
                self.problem(field, "must not be empty")
                return None
            return value
        if not isinstance(value, list) or not value:
            self.problem(field, f"must be a string or a non-empty list of {part_name}s")
            return None
        texts = []
        for index, part in enumerate(value):
            where = f"{field}.{index}"
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str):
                self.problem(where, f"must be a {part_name} with a type")
            elif kind != "text":
                self.unsupported(f"{where}.type", f"{kind[:40]!r} parts: this service handles text only")
            elif not isinstance(part.get("text"), str):
                self.problem(f"{where}.text", "must be a string")
            else:
                texts.append(part["text"])
        joined = separator.join(texts)
        if len(texts) == len(value) and not joined.strip():
            self.problem(field, "must not be empty")
        return joined if len(texts) == len(value) else None


def chain_named(request: web.Request, model: str) -> Provider:
    """The chain for a request's `model`: an alias of the whole chain, or a configured model
    (`provider/model` or its bare name) to start at; an unknown one is a 404."""
    if model in CHAIN_ALIASES:
        return chain_for(request, None)
    registry = request.app[REGISTRY]
    if registry.resolve(model) is None:
        names = ", ".join([CHAIN_ALIASES[0], *(info.name for info in registry.info)])
        raise ApiError(404, "model_not_found", f"The model {model[:100]!r} is not served here; choose one of: {names}.")
    return chain_for(request, model)
