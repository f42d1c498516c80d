"""Reading and validating a request body: every failure is a JSON error before any upstream call."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from providers.sse import may_hold_surrogates, repaired
from service.app_keys import SETTINGS
from service.datecontext import is_known_zone
from service.errors import ApiError
from service.schemas import describe_errors
from service.settings import Settings

Body = TypeVar("Body", bound=BaseModel)


def _is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, of at most AI_MAX_BODY_BYTES, read within AI_BODY_TIMEOUT.

    Only a JSON content type is taken: a web page can send `text/plain` or a form to any
    address without asking first (a "simple" request, no CORS preflight), but not
    `application/json`, so this keeps other sites from spending the service's tokens."""
    settings = request.app[SETTINGS]
    max_bytes, timeout = settings.max_body_bytes, settings.body_timeout
    content_type = request.content_type
    if not _is_json_type(content_type):
        # aiohttp reports a missing Content-Type as application/octet-stream.
        got = "none" if "Content-Type" not in request.headers else content_type[:80]
        raise ApiError(
            415, "unsupported_media_type", f"Send the body as JSON with Content-Type: application/json (got {got})."
        )
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    try:
        if request.content.is_eof():
            raw = await request.read()  # it all came with the headers: nothing to wait for
        else:
            async with asyncio.timeout(timeout):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(max_bytes) from None
    except TimeoutError:
        raise _last_on_connection(
            ApiError(408, "body_timeout", f"The request body did not arrive within {timeout:g} seconds (AI_BODY_TIMEOUT).")
        ) from None
    except web.RequestPayloadError:
        # A body that cannot be decoded (a broken Content-Encoding) or was cut off.
        raise _last_on_connection(
            ApiError(400, "invalid_body", "The request body could not be read (check its Content-Encoding).")
        ) from None
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        message = "The request body is empty; send a JSON object." if not raw.strip() else "The request body is not valid JSON."
        raise ApiError(400, "invalid_json", message) from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "The request body is nested too deeply.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    if may_hold_surrogates(raw) and (path := _unencodable(data, "")) is not None:
        field = path or "body"
        raise invalid([{"field": field, "message": f"{field} holds text that is not valid Unicode (a lone surrogate escape)"}])
    return data


def _last_on_connection(error: ApiError) -> ApiError:
    """After a body that is late or unreadable the connection's state is unknown: it is closed
    once the error is written (and aiohttp's short lingering close has passed)."""
    error.headers["Connection"] = "close"
    error.force_close()
    return error


def _unencodable(value: Any, path: str) -> str | None:
    """The path of the first string (key or value) in `value` that UTF-8 cannot encode."""
    if isinstance(value, str):
        return path if repaired(value) != value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if repaired(key) != key:
                return path or "body"
            if (found := _unencodable(item, here)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _unencodable(item, f"{path}.{index}" if path else str(index))) is not None:
                return found
    return None


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
    # A request that names a model may ask for as much as that model takes.
    limit = settings.max_tokens_limit_for(getattr(body, "model", None))
    if max_tokens is not None and max_tokens > limit:
        details.append({"field": "max_tokens", "message": f"max_tokens must be at most {limit}"})
    zone = getattr(body, "timezone", None)
    if zone is not None and not is_known_zone(zone):
        details.append({"field": "timezone", "message": f"timezone {zone[:64]!r} is not a known IANA time zone, such as 'Europe/Berlin'"})
    if details:
        raise invalid(details)
    return body
