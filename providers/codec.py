"""The JSON codec of the relay's hot path: request bodies out, model events in.

One home for it, so that the encoder and decoder the per-token path uses are chosen once.
"""

from __future__ import annotations

import json
from typing import Any

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

loads = json.loads


def dumps(obj: Any) -> bytes:
    """Compact JSON as UTF-8, non-ASCII text as it is (not `\\u` escaped)."""
    return _encode(obj).encode()
