"""A chain of models that is itself a provider: the first that starts answering wins.

An attempt may be abandoned for the next model only before any of its text was yielded; once
text has gone out, a failure ends the stream (nothing is repeated or silently switched).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from providers.base import AttemptFailed, ModelRequest, Provider, ProviderError, StreamEvent

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
    ) -> None:
        self.models = tuple(models)
        self.first_token_timeout = first_token_timeout
        self.retry_after_max = retry_after_max

    def starting_at(self, name: str) -> FallbackChain:
        """The same chain, started at the model `name` (its full `provider/model` name)."""
        names = [m.name for m in self.models]
        return FallbackChain(
            self.models[names.index(name) :],
            first_token_timeout=self.first_token_timeout,
            retry_after_max=self.retry_after_max,
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        errors: list[ProviderError] = []
        for model in self.models:
            retried = False
            while True:
                started = False
                try:
                    async with asyncio.timeout(self.first_token_timeout) as first_token:
                        async for event in model.stream(request):
                            if not started:
                                started = True
                                first_token.reschedule(None)
                            yield event
                    return
                except ProviderError as exc:
                    if started or not exc.fallback:
                        raise
                    error = exc
                except TimeoutError:
                    if started:
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
                if error.code == "rate_limited" and not retried and wait is not None and wait <= self.retry_after_max:
                    retried = True
                    await asyncio.sleep(wait)
                    continue
                break
        raise _final_error(errors, len(self.models))


def _final_error(errors: list[ProviderError], tried: int) -> ProviderError:
    if not errors:
        return ProviderError("no_models_available", "No model is configured with credentials.")
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
    )

