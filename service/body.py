"""Reading and validating a request body: every failure is a JSON error before any upstream call."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from service.datecontext import is_known_zone
from service.errors import ApiError
from service.schemas import describe_errors
from service.settings import Settings

Body = TypeVar("Body", bound=BaseModel)


def _is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


async def read_json(request: web.Request, max_bytes: int) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_bytes) from None
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        # Lenient about a missing JSON content type (curl -d), strict about a body that is not JSON.
        if request.content_type and not _is_json_type(request.content_type) and request.content_type != "application/octet-stream":
            raise ApiError(
                415,
                "unsupported_media_type",
                f"The body must be JSON (Content-Type: application/json); got {request.content_type[:80]}.",
            ) from None
        message = "The request body is empty; send a JSON object." if not raw.strip() else "The request body is not valid JSON."
        raise ApiError(400, "invalid_json", message) from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return data


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "body_too_large", f"The request body is larger than the limit of {max_bytes} bytes.")


def invalid(details: list[dict[str, Any]]) -> ApiError:
    summary = "; ".join(d["message"] for d in details[:3])
    more = f" (and {len(details) - 3} more)" if len(details) > 3 else ""
    return ApiError(400, "validation_error", f"Invalid request: {summary}{more}.", details=details)


def validate(model: type[Body], data: dict[str, Any], settings: Settings) -> Body:
    """Schema checks, then the checks that depend on configuration."""
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise invalid(describe_errors(exc)) from None
    details = []
    max_tokens = getattr(body, "max_tokens", None)
    if max_tokens is not None and max_tokens > settings.max_tokens_limit:
        details.append({"field": "max_tokens", "message": f"max_tokens must be at most {settings.max_tokens_limit}"})
    zone = getattr(body, "timezone", None)
    if zone is not None and not is_known_zone(zone):
        details.append({"field": "timezone", "message": f"timezone {zone[:64]!r} is not a known IANA time zone, such as 'Europe/Berlin'"})
    if details:
        raise invalid(details)
    return body
