"""How both SDKs reach their servers: shared connection settings."""

from __future__ import annotations

import httpx2

# No cap on connections to a model's server (0: unlimited; every open stream holds one: the
# SDKs' default of 1,000 made the next stream wait), and idle ones are kept for reuse.
UPSTREAM_LIMITS = httpx2.Limits(max_connections=0, max_keepalive_connections=200, keepalive_expiry=30)
