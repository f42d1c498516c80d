"""Turning an upstream HTTP status into the project's `ProviderError`.

Shared by the vendor adapters so that both classify failures the same way. Messages are
written for people and never include upstream text.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from types import ModuleType

import httpx2

from providers.base import ErrorCode, ProviderError


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (delta seconds or an HTTP date)."""
    if (value := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(value) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class UpstreamErrors:
    """`with errors:` maps what a vendor's SDK (given its exception classes) or its HTTP library
    raises while a request streams to one `ProviderError`.

    It keeps no state between entering and leaving, so one instance serves every stream of a
    model at once: nothing is allocated per request.
    """

    __slots__ = ("provider", "model", "status_error", "timeout_error", "connection_error")

    def __init__(
        self,
        provider: str,
        model: str,
        *,
        status_error: type[Exception],
        timeout_error: type[Exception],
        connection_error: type[Exception],
    ) -> None:
        self.provider = provider
        self.model = model
        self.status_error = status_error
        self.timeout_error = (timeout_error, httpx2.TimeoutException)
        self.connection_error = (connection_error, httpx2.TransportError)

    @classmethod
    def of_sdk(cls, sdk: ModuleType, provider: str, model: str) -> UpstreamErrors:
        """For one of the vendor SDKs (`anthropic`, `openai`), which name their errors alike."""
        return cls(
            provider,
            model,
            status_error=sdk.APIStatusError,
            timeout_error=sdk.APITimeoutError,
            connection_error=sdk.APIConnectionError,
        )

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, ProviderError):
            return
        error = self.error_for(exc)
        if error is not None:  # else not ours to map (cancellation, or a bug): it goes on as it is
            raise error from exc

    def error_for(self, exc: BaseException) -> ProviderError | None:
        provider, model = self.provider, self.model
        if isinstance(exc, self.status_error):
            response = exc.response  # type: ignore[attr-defined]
            too_long = prompt_too_long(response.status_code, getattr(exc, "body", None), provider=provider, model=model)
            if too_long is not None:
                return too_long
            return error_for_status(response.status_code, provider=provider, model=model, headers=response.headers)
        if isinstance(exc, self.timeout_error):
            # Some transports report a refused connection as a connect timeout: what the socket
            # said decides.
            return interrupted(provider, model, timed_out=not _refused(exc))
        if isinstance(exc, self.connection_error):
            return interrupted(provider, model)
        if isinstance(exc, (ValueError, KeyError, TypeError, AttributeError)):
            return malformed(provider, model)
        return None


def _refused(exc: BaseException) -> bool:
    """Whether the innermost cause of `exc` is a socket error other than a timeout (a refused
    or reset connection, an unknown host)."""
    cause: BaseException | None = exc
    for _ in range(8):  # the SDK's error, the HTTP library's, the transport's, the socket's
        inner = cause.__cause__ or cause.__context__ if cause is not None else None
        if inner is None:
            break
        cause = inner
    return isinstance(cause, OSError) and not isinstance(cause, TimeoutError)


def error_for_status(
    status: int, *, provider: str, model: str, headers: Mapping[str, str] | None = None
) -> ProviderError:
    def error(code: ErrorCode, message: str, *, retryable: bool = False, fallback: bool = True) -> ProviderError:
        return ProviderError(
            code, message, provider=provider, model=model, status=status, retryable=retryable, fallback=fallback
        )

    if status == 429:
        limited = error("rate_limited", "The model is rate limited; try again shortly.", retryable=True)
        limited.retry_after = retry_after_seconds(headers or {})
        return limited
    if status in (400, 413, 422):
        # The request itself is wrong: another model would reject it too.
        return error(
            "invalid_request",
            "The model rejected the request as invalid (for example, the prompt is too long for it).",
            fallback=False,
        )
    if status in (401, 403):
        return error("authentication_failed", "The service could not authenticate with the model provider.")
    if status == 404:
        return error("model_not_found", "The configured model was not found.")
    if status in (408, 504):
        return error("timeout", "The model took too long to answer.", retryable=True)
    if status >= 500:
        return error("upstream_unavailable", "The model service is overloaded or unavailable.", retryable=True)
    return error("upstream_error", "The model service returned an error.")


def stream_error(error_type: str, *, provider: str, model: str) -> ProviderError:
    """An `error` event inside a 200 stream (Anthropic sends `overloaded_error` this way)."""
    status = {
        "overloaded_error": 529,
        "api_error": 500,
        "rate_limit_error": 429,
        "invalid_request_error": 400,
        "authentication_error": 401,
        "permission_error": 403,
        "not_found_error": 404,
        "timeout_error": 504,
    }.get(error_type, 502)
    error = error_for_status(status, provider=provider, model=model)
    error.status = None  # the HTTP status was 200; the code says what happened
    if status in (400, 502):
        # Inside a stream that began well, even these are upstream faults: another model may work.
        error.code, error.fallback = "upstream_error", True
        error.message = "The model service reported an error while answering."
    return error


def interrupted(provider: str, model: str, *, timed_out: bool = False) -> ProviderError:
    """The upstream connection broke, stalled or sent something unreadable."""
    if timed_out:
        return ProviderError(
            "timeout", "The model stopped sending.", provider=provider, model=model, retryable=True, fallback=True
        )
    return ProviderError(
        "upstream_unavailable",
        "The connection to the model service failed.",
        provider=provider,
        model=model,
        retryable=True,
        fallback=True,
    )


def malformed(provider: str, model: str) -> ProviderError:
    return ProviderError(
        "upstream_error",
        "The model service sent a response that could not be read.",
        provider=provider,
        model=model,
        fallback=True,
    )


class PromptTooLong(ProviderError):
    """The model's answer to a prompt longer than it takes (a 400 that says so, or a 413): the
    same request fails everywhere, a shorter one may not. `sent` and `limit` are the token
    counts the model gave, when it gave them."""

    def __init__(self, *, provider: str, model: str, status: int, sent: int | None, limit: int | None) -> None:
        super().__init__(
            "invalid_request",
            "The model rejected the request as invalid (for example, the prompt is too long for it).",
            provider=provider,
            model=model,
            status=status,
            fallback=False,
        )
        self.sent = sent
        self.limit = limit


# Anthropic: "prompt is too long: 210000 tokens > 200000 maximum"; OpenAI (code
# context_length_exceeded): "This model's maximum context length is 128000 tokens. However,
# your messages resulted in 130000 tokens."; compatible servers word it alike.
_TOO_LONG_WORDS = re.compile(r"prompt is too long|context.window|context length|maximum context|too many (?:input )?tokens", re.I)
_TOO_LONG_CODES = frozenset({"context_length_exceeded", "model_context_window_exceeded", "request_too_large"})
_ANTHROPIC_COUNTS = re.compile(r"(\d+) tokens? > (\d+)")
_OPENAI_COUNTS = re.compile(r"maximum context length is (\d+) tokens.*?resulted in (\d+) tokens", re.I | re.S)


def prompt_too_long(status: int, body: object, *, provider: str, model: str) -> PromptTooLong | None:
    """A `PromptTooLong` when an error response says the prompt is too long, else None."""
    if status not in (400, 413):
        return None
    error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else body
    error = error if isinstance(error, dict) else {}
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    if not (status == 413 or error.get("code") in _TOO_LONG_CODES or error.get("type") in _TOO_LONG_CODES
            or _TOO_LONG_WORDS.search(message)):
        return None
    sent = limit = None
    if found := _ANTHROPIC_COUNTS.search(message):
        sent, limit = int(found[1]), int(found[2])
    elif found := _OPENAI_COUNTS.search(message):
        limit, sent = int(found[1]), int(found[2])
    return PromptTooLong(provider=provider, model=model, status=status, sent=sent, limit=limit)
