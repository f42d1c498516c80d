"""Prometheus metrics, correct across worker processes.

With several workers (`--workers N`) each process writes its values to files in
`PROMETHEUS_MULTIPROC_DIR` and `/metrics` adds them up (prometheus-client's multiprocess mode).
Nothing here runs per token: a stream updates its metrics when it starts and when it ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from providers.circuit import Circuit
from service.outcome import Outcome

if TYPE_CHECKING:
    from service.status import RecentActivity

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60)
_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300)
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass(frozen=True, slots=True)
class _ModelSeries:
    """The series of the model that answered."""

    ttft: Any
    duration: Any
    input_tokens: Any
    output_tokens: Any
    cache_read_tokens: Any
    cache_write_tokens: Any


class Metrics:
    """The service's metrics, registered in a registry of their own (one per app)."""

    def __init__(self, activity: RecentActivity | None = None) -> None:
        self.activity = activity  # the status page's recent totals, fed with every answer
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ai_stream_requests", "HTTP requests by route and status.", ["route", "method", "status"], registry=r)
        self.streams = Counter(
            "ai_stream_answers", "Answers by outcome: done, error (with its code) or client_gone.", ["outcome", "code"], registry=r
        )
        self.ttft = Histogram(
            "ai_stream_time_to_first_token_seconds", "Time to first token, by the model that answered.", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.duration = Histogram(
            "ai_stream_answer_duration_seconds", "Time from request to the last event, by model.", ["model"],
            buckets=_DURATION_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "ai_stream_tokens",
            "Tokens by model and direction: input (every prompt token), output, and the parts of input "
            "read from (cache_read) and written to (cache_write) the model's prompt cache.",
            ["model", "direction"], registry=r,
        )
        self.fallbacks = Counter(
            "ai_stream_fallbacks", "Moves from one model to the next (or a retry of the same).", ["from_model", "to_model"], registry=r
        )
        self.upstream_errors = Counter(
            "ai_stream_upstream_errors", "Failed model attempts by provider, HTTP status and code.", ["provider", "status", "code"], registry=r
        )
        self.open_streams = Gauge(
            "ai_stream_open_answers", "Answers in progress.", registry=r, multiprocess_mode="livesum"
        )
        self.shed = Counter(
            "ai_stream_shed_requests", "New answers refused up front (503 overloaded) while the event loop lagged.", registry=r
        )
        self.loop_lag = Gauge(
            "ai_stream_event_loop_lag_seconds", "The event loop's smoothed lag (worst worker).",
            registry=r, multiprocess_mode="livemax",
        )
        self.redis_up = Gauge(
            "ai_stream_redis_up", "1 while Redis (REDIS_URL) answers, 0 while it is down (worst worker).",
            registry=r, multiprocess_mode="livemin",
        )
        self.redis_failures = Counter(
            "ai_stream_redis_failures", "Redis commands that failed, by operation (state fell back to per process).",
            ["operation"], registry=r,
        )
        self.circuit = Gauge(
            "ai_stream_model_circuit_state", "Circuit state per model: 0 closed, 1 half open, 2 open (worst worker).",
            ["model"], registry=r, multiprocess_mode="livemax",
        )
        self.summaries = Counter(
            "ai_stream_summaries", "Thread summaries by outcome: written, already_written or error.", ["outcome"], registry=r
        )
        self.storage_write_failures = Counter(
            "ai_stream_storage_write_failures", "Answers that could not be stored after retries.", registry=r
        )
        # The series every answer or request touches, looked up once: a label lookup costs more
        # than the update itself.
        self._done = self.streams.labels("done", "")
        self._client_gone = self.streams.labels("client_gone", "")
        self._by_model: dict[tuple[str, str], _ModelSeries] = {}
        self._request_series: dict[tuple[str, str, int], Any] = {}
        self._circuit_states: dict[str, int] = {}

    def request_done(self, route: str, method: str, status: int) -> None:
        """One HTTP request, by route (its pattern), method and status."""
        # Any token is a method to aiohttp: only the usual ones get a series of their own.
        key = (route, method if method in _METHODS else "other", status)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = self.requests.labels(key[0], key[1], str(status))
        series.inc()

    def record_answer(self, outcome: Outcome, seconds: float) -> None:
        """One finished answer (streamed or not, however it ended)."""
        finish = outcome.finish
        if finish is not None:
            self._done.inc()
            series = self._model_series(finish.provider, finish.model)
            if outcome.first_token_ms is not None:
                series.ttft.observe(outcome.first_token_ms / 1000)
            series.duration.observe(seconds)
            usage = finish.usage
            series.input_tokens.inc(usage.input_tokens)
            series.output_tokens.inc(usage.output_tokens)
            if usage.cache_read_input_tokens:
                series.cache_read_tokens.inc(usage.cache_read_input_tokens)
            if usage.cache_creation_input_tokens:
                series.cache_write_tokens.inc(usage.cache_creation_input_tokens)
        elif outcome.client_gone:
            self._client_gone.inc()
        else:
            self.streams.labels("error", outcome.error.code if outcome.error else "").inc()
        # Each failed attempt hands over to the next attempt (or to nobody).
        attempts = outcome.attempts
        for index, failed in enumerate(attempts):
            if index + 1 < len(attempts):
                to_model = attempts[index + 1].model
            else:
                to_model = f"{finish.provider}/{finish.model}" if finish else "none"
            self.fallbacks.labels(failed.model, to_model).inc()
            self.upstream_errors.labels(failed.provider, str(failed.status or ""), failed.code).inc()
        error = outcome.error
        if error is not None and error.provider and not error.summary:
            # Raised by a model without a fallback: after text had been sent, or a bad request.
            self.upstream_errors.labels(error.provider, str(error.status or ""), error.code).inc()
        if self.activity is not None:
            self.activity.record(outcome)

    def _model_series(self, provider: str, model: str) -> _ModelSeries:
        key = (provider, model)
        series = self._by_model.get(key)
        if series is None:
            name = f"{provider}/{model}"
            series = self._by_model[key] = _ModelSeries(
                self.ttft.labels(name),
                self.duration.labels(name),
                self.tokens.labels(name, "input"),
                self.tokens.labels(name, "output"),
                self.tokens.labels(name, "cache_read"),
                self.tokens.labels(name, "cache_write"),
            )
        return series

    def observe_circuits(self, circuits: dict[str, Circuit]) -> None:
        """Each model's circuit state, written only when it differs from the last one written."""
        written = self._circuit_states
        for name, circuit in circuits.items():
            value = CIRCUIT_VALUES[circuit.state]
            if written.get(name) != value:
                self.circuit.labels(name).set(value)
                written[name] = value

    def exposition(self) -> bytes:
        if (directory := multiprocess_dir()) is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry)
        return generate_latest(self.registry)


def metrics_response(metrics: Metrics) -> web.Response:
    response = web.Response(body=metrics.exposition())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
