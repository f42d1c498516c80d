"""The API dialects models are spoken to in: one registry line each.

A dialect's module is imported only when an endpoint of that dialect is configured, so a
deployment that uses one vendor's API never loads the other vendor's SDK. Adding a dialect is
one new module under `providers/` (with `create_client` and `create_model`, as below) and one
line in `ADAPTERS`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from providers.base import Provider
    from providers.endpoints import Endpoint

# Dialect name (an endpoint's `api`) -> the module that speaks it.
ADAPTERS: dict[str, str] = {
    "anthropic": "providers.anthropic",  # the Messages API
    "openai": "providers.openai",  # Chat Completions: OpenAI and every compatible server
}


class Adapter(Protocol):
    """What a dialect's module provides."""

    def create_client(self, endpoint: Endpoint, *, connect_timeout: float, idle_timeout: float) -> Any:
        """The endpoint's upstream: its SDK client and HTTP session (closed with `await client.close()`)."""

    def create_model(self, client: Any, model: str, endpoint: Endpoint) -> Provider:
        """The model `model` served by the endpoint, named `endpoint/model`."""


def adapter(api: str) -> Adapter:
    return cast("Adapter", importlib.import_module(ADAPTERS[api]))
