"""Requests aiohttp refuses before any handler runs (a header line too long, a malformed request
line): answered in the service's JSON error shape, without echoing what was sent, and logged
as one line without it.

aiohttp writes these answers itself, as plain text that repeats the offending line (for an
oversized `Authorization` header: the key), and logs them with that text and a traceback. It
offers no hook for them, so its handler's `handle_error` is replaced, once, by the server
process's entry point (`service.__main__`); tests of this run the real process.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web, web_protocol

log = structlog.get_logger("ai_stream")

_CODES = {
    400: ("bad_request", "The request could not be read as HTTP (a header or the request line is malformed or too long)."),
    413: ("body_too_large", "The request body is too large."),
    431: ("headers_too_large", "The request's headers are too large."),
}


def _handle_error(
    self: web_protocol.RequestHandler,
    request: web.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    # The exception's text and `message` may repeat what the client sent: neither is logged.
    log.warning("request_refused", status=status, error=type(exc).__name__ if exc is not None else None,
                remote=request.remote)
    if request.writer.output_size > 0:
        raise ConnectionError("Response is sent already, cannot send another response with the error message")
    code, text = _CODES.get(status, ("internal_error", "Something went wrong on our side."))
    if status not in _CODES and status < 500:
        code, text = "bad_request", HTTPStatus(status).phrase
    body: dict[str, Any] = {"error": text, "code": code, "details": []}
    response = web.json_response(body, status=status)
    response.force_close()
    return response


def answer_protocol_errors_in_json() -> None:
    web_protocol.RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]
