"""Turning an upstream HTTP status into the project's `ProviderError`.

Shared by the vendor adapters so that both classify failures the same way. Messages are
written for people and never include upstream text.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

from providers.base import ProviderError


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


def error_for_status(
    status: int, *, provider: str, model: str, headers: Mapping[str, str] | None = None
) -> ProviderError:
    where = {"provider": provider, "model": model, "status": status}
    if status == 429:
        return ProviderError(
            "rate_limited",
            "The model is rate limited; try again shortly.",
            retryable=True,
            fallback=True,
            retry_after=retry_after_seconds(headers or {}),
            **where,
        )
    if status in (400, 413, 422):
        return ProviderError(
            "invalid_request",
            "The model rejected the request as invalid (for example, the prompt is too long for it).",
            **where,
        )
    if status in (401, 403):
        return ProviderError(
            "authentication_failed",
            "The service could not authenticate with the model provider.",
            fallback=True,
            **where,
        )
    if status == 404:
        return ProviderError("model_not_found", "The configured model was not found.", fallback=True, **where)
    if status == 408 or status == 504:
        return ProviderError("timeout", "The model took too long to answer.", retryable=True, fallback=True, **where)
    if status >= 500:
        return ProviderError(
            "upstream_unavailable",
            "The model service is overloaded or unavailable.",
            retryable=True,
            fallback=True,
            **where,
        )
    return ProviderError("upstream_error", "The model service returned an error.", fallback=True, **where)


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
