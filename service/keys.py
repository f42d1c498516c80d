"""Typed keys for everything the app shares: no module-level singletons."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from providers.factory import ModelRegistry
    from providers.fallback import FallbackChain
    from service.settings import Settings
    from service.sse import EventStream

SETTINGS = web.AppKey("settings", "Settings")
REGISTRY = web.AppKey("registry", "ModelRegistry")
CHAIN = web.AppKey("chain", "FallbackChain")
OPEN_STREAMS = web.AppKey("open_streams", "weakref.WeakSet[EventStream]")

# Per request: its id, and the fields of its canonical log line (filled in as handlers learn them).
REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_LOG = web.RequestKey("request_log", "dict[str, Any]")
