"""Models from configuration: `provider/model` strings become providers, one SDK client per vendor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from providers.base import Provider


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str  # "provider/model"
    provider: str
    model: str
    has_credentials: bool


class ModelRegistry:
    """Owns the SDK clients (created once, closed at shutdown) and the configured models."""

    def __init__(
        self,
        specs: Sequence[str],
        *,
        api_keys: Mapping[str, str | None],
        base_urls: Mapping[str, str | None],
        connect_timeout: float = 5.0,
        idle_timeout: float = 60.0,
    ) -> None:
        self.info: list[ModelInfo] = []
        self.models: list[Provider] = []
        self._clients: dict[str, Any] = {}
        for spec in specs:
            provider, _, model = spec.partition("/")
            key = api_keys.get(provider)
            self.info.append(ModelInfo(spec, provider, model, bool(key)))
            if not key:
                continue  # reported by /health, skipped by the chain
            client = self._clients.get(provider)
            if client is None:
                client = self._clients[provider] = _create_client(
                    provider, key, base_urls.get(provider), connect_timeout, idle_timeout
                )
            self.models.append(_create_model(provider, client, model, base_urls.get(provider)))

    def resolve(self, requested: str) -> str | None:
        """The configured `provider/model` named by `requested` (full name or bare model name)."""
        for info in self.info:
            if requested in (info.name, info.model):
                return info.name
        return None

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


def _create_client(provider: str, key: str, base_url: str | None, connect_timeout: float, idle_timeout: float) -> Any:
    # Imported here so that each vendor's SDK is only loaded when a model of it is configured.
    if provider == "anthropic":
        from providers import anthropic

        return anthropic.create_client(
            api_key=key, base_url=base_url, connect_timeout=connect_timeout, idle_timeout=idle_timeout
        )
    if provider == "openai":
        from providers import openai

        return openai.create_client(
            api_key=key, base_url=base_url, connect_timeout=connect_timeout, idle_timeout=idle_timeout
        )
    raise ValueError(f"unknown provider {provider!r}")


def _create_model(provider: str, client: Any, model: str, base_url: str | None) -> Provider:
    if provider == "anthropic":
        from providers.anthropic import AnthropicModel

        return AnthropicModel(client, model)
    from providers.openai import OpenAIModel

    # OpenAI's own API wants `max_completion_tokens`; compatible servers expect `max_tokens`.
    return OpenAIModel(client, model, max_tokens_field="max_tokens" if base_url else "max_completion_tokens")
