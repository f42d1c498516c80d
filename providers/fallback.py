"""A chain of models that is itself a provider: the first that starts answering wins.

An attempt may be abandoned for the next model only before any of its text was yielded; once
text has gone out, a failure ends the stream (nothing is repeated or silently switched). A chain
that restarts (`restarting()`, for clients that can take text back) goes on to the next model
after such a failure too, and says so with a `Restarted` event just before the new text.

Each model may have its own options (`ModelOptions`): its first-token timeout, and what it is
sent: a request's `max_tokens` above the model's `max_tokens_limit` is lowered to it, and its
temperature is left out for a model that takes none.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import replace

from providers.base import (
    AttemptFailed,
    AttemptStarted,
    Finish,
    ModelRequest,
    Provider,
    ProviderError,
    Restarted,
    StreamEvent,
    TextDelta,
)
from providers.circuit import Circuit
from providers.endpoints import ModelOptions

# When models fail differently, the client hears about the most transient failure: these
# tiers first, and within a tier the last model's.
_TIERS = (("rate_limited", "upstream_unavailable", "timeout"), ("upstream_error",))


class FallbackChain:
    name = "chain"

    def __init__(
        self,
        models: Sequence[Provider],
        *,
        first_token_timeout: float,
        retry_after_max: float = 3.0,
        cooldown_failures: int = 3,
        cooldown_seconds: float = 30.0,
        circuits: dict[str, Circuit] | None = None,
        options: Mapping[str, ModelOptions] | None = None,
        restart_after_text: bool = False,
    ) -> None:
        self.models = tuple(models)
        self.restart_after_text = restart_after_text
        self.first_token_timeout = first_token_timeout  # for a model without options of its own
        self.options = dict(options or {})
        self.retry_after_max = retry_after_max
        self._views: dict[str, FallbackChain] = {}  # `starting_at`'s
        # Shared by every view of the chain (see `starting_at`): one circuit per model.
        self.circuits = circuits if circuits is not None else {
            m.name: Circuit(cooldown_failures, cooldown_seconds) for m in self.models
        }

    def starting_at(self, name: str) -> FallbackChain:
        """The same chain, started at the model `name` (its full `provider/model` name); made
        once per model, as a chain holds nothing of a request's."""
        view = self._views.get(name)
        if view is None:
            names = [m.name for m in self.models]
            view = self._views[name] = FallbackChain(
                self.models[names.index(name) :],
                first_token_timeout=self.first_token_timeout,
                retry_after_max=self.retry_after_max,
                circuits=self.circuits,
                options=self.options,
                restart_after_text=self.restart_after_text,
            )
        return view

    def set_models(self, models: Sequence[Provider]) -> None:
        """The models, once they are loaded (the chain starts without any)."""
        self.models = tuple(models)
        self._views.clear()

    def restarting(self) -> FallbackChain:
        """The same chain, going on to the next model when one fails after its text went out."""
        chain = copy.copy(self)  # the models, their options and circuits are shared
        chain.restart_after_text = True
        chain._views = {}
        return chain

    def _for_model(self, model: Provider, request: ModelRequest) -> tuple[float, ModelRequest]:
        """The first-token timeout for `model`, and the request as that model is sent it."""
        options = self.options.get(model.name)
        if options is None:
            return self.first_token_timeout, request
        if request.max_tokens > options.max_tokens_limit:
            request = replace(request, max_tokens=options.max_tokens_limit)
        if not options.temperature and request.temperature is not None:
            request = replace(request, temperature=None)
        return options.first_token_timeout, request

    def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        tries = self._tries(request)
        return _announce_restarts(tries) if self.restart_after_text else tries

    async def _tries(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        errors: list[ProviderError] = []
        cooling: list[Provider] | None = None  # made only when a circuit is open
        for model in self.models:
            if not self.circuits[model.name].try_acquire():
                cooling = [*(cooling or ()), model]  # skipped while its circuit is open
                continue
            failed = False
            async for event in self._attempt(model, request, errors):
                failed = type(event) is AttemptFailed
                yield event
            if not failed:
                return
        if not errors:
            # Every model is cooling down: trying them in order beats failing without trying.
            for model in cooling or ():
                failed = False
                async for event in self._attempt(model, request, errors):
                    failed = type(event) is AttemptFailed
                    yield event
                if not failed:
                    return
        raise _final_error(errors)

    async def _attempt(
        self, model: Provider, request: ModelRequest, errors: list[ProviderError]
    ) -> AsyncGenerator[StreamEvent, None]:
        """One model: its events, or (before any text) a failure recorded in `errors`, whose
        `AttemptFailed` is then the last event. A failure after text, or one that another model
        cannot fix, is raised."""
        circuit = self.circuits[model.name]
        first_token_timeout, request = self._for_model(model, request)
        verdict = False
        retried = False
        try:
            while True:
                started = False
                try:
                    async with asyncio.timeout(first_token_timeout) as first_token:
                        events = model.stream(request)
                        try:
                            async for event in events:
                                if not started:
                                    started = True
                                    first_token.reschedule(None)
                                    yield AttemptStarted(model.name, model.name.partition("/")[0])
                                yield event
                        finally:
                            await events.aclose()  # `aclosing`'s job, without an object per answer
                    verdict = True
                    circuit.succeeded()
                    return
                except ProviderError as exc:
                    if exc.code != "invalid_request":  # the request's fault, not the model's
                        verdict = True
                        circuit.failed()
                    if not exc.fallback or (started and not self.restart_after_text):
                        raise
                    error = exc
                except TimeoutError:
                    verdict = True
                    circuit.failed()
                    if started and not self.restart_after_text:
                        raise
                    provider, _, model_name = model.name.partition("/")
                    error = ProviderError(
                        "timeout",
                        "The model did not start answering in time.",
                        provider=provider,
                        model=model_name,
                        retryable=True,
                        fallback=True,
                    )
                errors.append(error)
                yield AttemptFailed(model.name, error.provider, error.code, error.status)
                wait = error.retry_after
                if error.code == "rate_limited" and not started and not retried and wait is not None and wait <= self.retry_after_max:
                    retried = True
                    await asyncio.sleep(wait)
                    continue
                return
        finally:
            if not verdict:
                circuit.released()  # cancelled mid-attempt: no verdict on the model


async def _announce_restarts(events: AsyncGenerator[StreamEvent, None]) -> AsyncGenerator[StreamEvent, None]:
    """`events` with a `Restarted` before the first text (or the finish) of a model that follows
    one that failed after text: until a new answer starts, the failed one's text stands."""
    async with aclosing(events):
        sent = False  # the current attempt's text went out
        failed: str | None = None  # the model whose sent text is void
        async for event in events:
            kind = type(event)
            if kind is TextDelta or kind is Finish:
                if failed is not None:
                    yield Restarted(failed)
                    failed = None
                sent = True
            elif kind is AttemptFailed:
                if sent:
                    failed = event.model  # type: ignore[union-attr]
                sent = False
            yield event


def _final_error(errors: list[ProviderError]) -> ProviderError:
    if not errors:
        return ProviderError("no_models_available", "No model is configured with credentials.")
    tried = len({(e.provider, e.model) for e in errors})
    chosen = errors[-1]
    for tier in reversed(_TIERS):
        chosen = next((e for e in reversed(errors) if e.code in tier), chosen)
    plural = "s" if tried != 1 else ""
    return ProviderError(
        chosen.code,
        f"No model could answer ({tried} model{plural} tried). {chosen.message}",
        provider=chosen.provider,
        model=chosen.model,
        status=chosen.status,
        retryable=chosen.retryable,
        retry_after=chosen.retry_after,
        summary=True,
    )

