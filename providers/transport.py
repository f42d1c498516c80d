"""How both SDKs reach their servers: one way to set up a vendor SDK's client."""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any, TypeVar

import httpx2

Client = TypeVar("Client")

# No cap on connections to a model's server (0: unlimited; every open stream holds one: the
# SDKs' default of 1,000 made the next stream wait), and idle ones are kept for reuse.
UPSTREAM_LIMITS = httpx2.Limits(max_connections=0, max_keepalive_connections=200, keepalive_expiry=30)

# Telemetry both SDKs add to every request: the host's OS, CPU architecture, Python and SDK
# versions, the client's timeouts and retry count. No API needs them; dropped, the vendor learns
# nothing of the deployment, and each open stream holds about 4 KB less (headers are kept for
# the life of a response). `x-stainless-raw-response` stays: the SDK reads it itself.
TELEMETRY_HEADERS = (  # spelled as the SDKs spell them: a client's headers merge case-sensitively
    "X-Stainless-Arch",
    "X-Stainless-Async",
    "X-Stainless-Lang",
    "X-Stainless-OS",
    "X-Stainless-Package-Version",
    "X-Stainless-Read-Timeout",
    "X-Stainless-Retry-Count",
    "X-Stainless-Runtime",
    "X-Stainless-Runtime-Version",
    "X-Stainless-Timeout",
)


def create_sdk_client(
    sdk: ModuleType,
    client_class: type[Client],
    *,
    api_key: str,
    base_url: str | None,
    connect_timeout: float,
    idle_timeout: float,
    headers: Mapping[str, Any] | None = None,
) -> Client:
    """A vendor SDK's async client (`sdk`: the `anthropic` or `openai` module, which are built
    alike) as the relay uses it:

    - no retries of its own (`max_retries=0`): the fallback chain decides, so a 529 costs no
      back-off before the next model is tried;
    - the SDK's aiohttp transport, which parses HTTP in C: a third of the relay's CPU less than
      the default one;
    - `idle_timeout` as the read timeout: a model that goes silent mid-answer is given up on;
    - no telemetry headers; `headers` (an endpoint's own) with every request.
    """
    timeout = sdk.Timeout(idle_timeout, connect=connect_timeout)
    return client_class(  # type: ignore[call-arg]
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=timeout,
        default_headers={**dict.fromkeys(TELEMETRY_HEADERS, sdk.omit), **(headers or {})},
        http_client=sdk.DefaultAioHttpClient(timeout=timeout, limits=UPSTREAM_LIMITS),
    )
