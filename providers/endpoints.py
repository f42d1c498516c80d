"""Endpoints and the models they serve: where, with which credentials, in which API dialect.

These records are configuration only (`providers.config` reads them from the environment and
the TOML file); the dialect's adapter (`providers.dialects`) is what speaks to an endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

# An endpoint's name: what `AI_MODELS` entries start with, lower-cased from `AI_ENDPOINT_<NAME>_*`.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class ModelSpec(str):
    """An `endpoint/model` string. The model name may itself hold `/` (`openrouter/meta-llama/llama-4`):
    the first segment is the endpoint."""

    @property
    def endpoint(self) -> str:
        return self.split("/", 1)[0]

    @property
    def model(self) -> str:
        return self.split("/", 1)[1]


def parse_models(value: object) -> list[ModelSpec]:
    """The chain's `endpoint/model` list, checked for form (which endpoints exist is checked later)."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list | tuple):
        items = [str(item).strip() for item in value]
    else:
        raise ValueError("must be a comma-separated list of endpoint/model")
    if not items or any(not item for item in items):
        raise ValueError("must be a comma-separated list of endpoint/model with no empty entries")
    specs: list[ModelSpec] = []
    for item in items:
        endpoint, sep, model = item.partition("/")
        if not sep or not endpoint.strip() or not model.strip():
            raise ValueError(f"{item[:100]!r} is not of the form endpoint/model")
        spec = ModelSpec(f"{endpoint.strip()}/{model.strip()}")
        if spec in specs:
            raise ValueError(f"{item[:100]!r} is listed twice")
        specs.append(spec)
    return specs


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where models are served and with which credentials; `api` names the dialect spoken there."""

    name: str
    api: str  # a key of `providers.dialects.ADAPTERS`
    base_url: str | None = None  # None (built-in endpoints only): the SDK's own default
    api_key: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # sent with every request
    max_tokens_field: str | None = None  # the request field for max_tokens; None: the dialect's own
    # Built-in endpoints (`anthropic`, `openai`) also take what their SDK reads from its own
    # environment variables (an organization id, say); other endpoints must not receive it.
    builtin: bool = False

    @property
    def has_credentials(self) -> bool:
        return bool(self.api_key)


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """Where models differ; every field is filled in (from the service-wide settings by default)."""

    first_token_timeout: float  # seconds until the first text before falling back
    max_tokens_limit: int  # the most `max_tokens` this model is sent (a larger request is lowered)
    temperature: bool = True  # False: a request's temperature is not sent to this model
    # Tokens of stored history the conversation code may replay to this model; None: no budget.
    history_token_budget: int | None = None
    alias: str | None = None  # another name clients may use for this model


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model of the chain, as configured."""

    name: str  # "endpoint/model"
    endpoint: Endpoint
    model: str
    options: ModelOptions

    @property
    def provider(self) -> str:
        """The endpoint's name: what the `done` event and `/health` call the provider."""
        return self.endpoint.name

    @property
    def has_credentials(self) -> bool:
        return self.endpoint.has_credentials


@dataclass(frozen=True, slots=True)
class ModelCatalog:
    """The configured endpoints and the chain's models, in order."""

    endpoints: tuple[Endpoint, ...]
    models: tuple[ModelInfo, ...]

    def resolve(self, requested: str) -> ModelInfo | None:
        """The model named by `requested`: its full name, its bare model name or its alias."""
        for info in self.models:
            if requested in (info.name, info.model) or requested == info.options.alias:
                return info
        return None

    def names(self) -> Sequence[str]:
        return [info.name for info in self.models]
