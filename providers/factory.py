"""The configured models as providers: one upstream (SDK client and HTTP session) per endpoint,
made by its dialect's adapter."""

from __future__ import annotations

import contextlib
from typing import Any

from providers.base import Provider
from providers.dialects import adapter
from providers.endpoints import ModelCatalog, ModelInfo, ModelOptions

__all__ = ["ModelInfo", "ModelRegistry"]


class ModelRegistry:
    """Owns the endpoints' upstreams (created once, closed at shutdown) and the configured models.

    What the configuration says (`info`, `options`, `usable`) is known at once; the providers
    (`models`) exist once `load()` has imported the SDKs and made their clients, which takes
    about a second per SDK. `load=False` leaves that for later (the service runs it in a thread
    once it listens)."""

    def __init__(
        self, catalog: ModelCatalog, *, connect_timeout: float = 5.0, idle_timeout: float = 60.0, load: bool = True
    ) -> None:
        self.catalog = catalog
        self.info: list[ModelInfo] = list(catalog.models)
        # The models the chain uses, in order: those whose endpoint has credentials (the others
        # are reported by /health and skipped).
        self.usable: list[str] = [info.name for info in catalog.models if info.endpoint.has_credentials]
        self.options: dict[str, ModelOptions] = {
            info.name: info.options for info in catalog.models if info.endpoint.has_credentials
        }
        self.models: list[Provider] = []
        self._clients: dict[str, Any] = {}
        self._timeouts = {"connect_timeout": connect_timeout, "idle_timeout": idle_timeout}
        if load:
            self.load()

    def load(self) -> None:
        """Import the SDK of each endpoint in use and make its client and models."""
        models: list[Provider] = []
        for info in self.catalog.models:
            endpoint = info.endpoint
            if not endpoint.has_credentials:
                continue
            # Imported here (by the dialect's name): an SDK is loaded only when an endpoint uses it.
            dialect = adapter(endpoint.api)
            client = self._clients.get(endpoint.name)
            if client is None:
                client = self._clients[endpoint.name] = dialect.create_client(endpoint, **self._timeouts)
            models.append(dialect.create_model(client, info.model, endpoint))
        self.models = models

    async def prepare(self) -> None:
        """Have each model's SDK build its request now (`providers.transport`): the first answer
        then does not wait for it, and what the SDK loads on its first call is loaded with the
        rest of startup. A model whose SDK fails here tries again on its first answer, where the
        failure is reported as any other."""
        for model in self.models:
            prepare = getattr(model, "prepare", None)
            if prepare is not None:
                with contextlib.suppress(Exception):
                    await prepare()

    def resolve(self, requested: str) -> str | None:
        """The configured `endpoint/model` named by `requested` (full name, bare model name or alias)."""
        info = self.catalog.resolve(requested)
        return info.name if info is not None else None

    def info_for(self, name: str) -> ModelInfo | None:
        """The model `name` (its full `endpoint/model` name), with its options."""
        return next((info for info in self.info if info.name == name), None)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
