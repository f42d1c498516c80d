"""How both SDKs reach their servers: shared connection settings and request headers."""

from __future__ import annotations

import httpx2

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


def without_telemetry(omit: object) -> dict[str, object]:
    """`default_headers` for an SDK client that remove its telemetry (`omit`: the SDK's `Omit`)."""
    return dict.fromkeys(TELEMETRY_HEADERS, omit)
