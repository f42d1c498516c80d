"""JSON errors, request ids and the one log line each request gets."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from service import log as service_log
from service.app_keys import METRICS, REQUEST_ID, REQUEST_LOG

log = structlog.get_logger("ai_stream")

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# 5xx codes that are the service working as designed rather than failing (see service/overload.py).
_BY_DESIGN = frozenset({"overloaded"})


class ApiError(web.HTTPException):
    """An HTTP error whose body is `{"error", "code", "details"}` JSON, or the error shape of
    the API its route speaks (see `error_shape`)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status_code = status
        self.message = message
        self.details = details or []
        super().__init__(
            headers=headers,
            text=web.json_response({"error": message, "code": code, "details": details or []}).text,
            content_type="application/json",
        )
        self.code = code


_STATUS_CODES = {
    400: ("bad_request", "The request is not valid."),
    401: ("unauthorized", "Authentication is required."),
    403: ("forbidden", "This request is not allowed (for example, a browser origin that is not configured)."),
    404: ("not_found", "There is nothing at this path."),
    405: ("method_not_allowed", "This method is not allowed on this path."),
    413: ("body_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "Send a JSON body with Content-Type: application/json."),
}


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    code, message = _STATUS_CODES.get(exc.status, ("http_error", exc.reason))
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return ApiError(exc.status, code, message, headers=headers)


# The body of an error for a route that speaks another API (OpenAI's, Anthropic's): routes name
# theirs with `error_shape`, and the request middleware renders every error of the route with
# it, the ones raised by middleware (keys, limits) included.
ErrorShape = Callable[[ApiError], dict[str, Any]]


def error_shape(render: ErrorShape) -> Callable[[Handler], Handler]:
    def mark(handler: Handler) -> Handler:
        handler.error_shape = render  # type: ignore[attr-defined]
        return handler

    return mark


def _in_route_shape(request: web.Request, error: ApiError) -> ApiError:
    render: ErrorShape | None = getattr(request.match_info.handler, "error_shape", None)
    if render is not None:
        error.text = json.dumps(render(error), ensure_ascii=False)
    return error


def request_log(request: web.Request) -> dict[str, Any]:
    return request[REQUEST_LOG]


@web.middleware
async def request_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request id in and out, JSON for every error, and one canonical log line at the end."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else secrets.token_hex(16)
    request[REQUEST_ID] = request_id
    fields: dict[str, Any] = {}
    request[REQUEST_LOG] = fields
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except ApiError:
            raise
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            raise _from_http_exception(exc) from None
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        if isinstance(exc, ApiError):
            fields.setdefault("error_code", exc.code)
            _in_route_shape(request, exc)
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away; nginx's name for it
        raise
    except Exception:
        log.exception("unhandled_error", request_id=request_id, route=request.path)
        status = 500
        raise _in_route_shape(request, ApiError(500, "internal_error", "Something went wrong on our side.")) from None
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].request_done(route, request.method, status)
        # A refusal by design (overload) is no fault: its episode has a warning line of its own.
        level = "info" if status < 500 or fields.get("error_code") in _BY_DESIGN else "warning"
        if level != "info" or service_log.info_enabled:  # not even built when nobody reads it
            getattr(log, level)(
                "request",
                request_id=request_id,
                method=request.method,
                route=request.path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
                **fields,
            )


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streaming or not, carries the request id."""
    if (request_id := request.get(REQUEST_ID)) is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
