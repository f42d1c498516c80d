"""The JSON codec of the relay's hot path: request bodies out, model events in, events to clients.

orjson, a drop-in here, and several times faster than the standard library's `json` for the
small documents of a stream. What orjson refuses, `json` still does as before: a lone
surrogate escape (`"\\ud800"`, which the callers then repair to U+FFFD), `NaN`, integers
beyond 64 bits written out, keys that are not strings. Two differences remain, neither met in
a model's events or the service's: an integer beyond 64 bits is read as a float, and a
non-finite float is written as `null` (`json` writes `NaN`, which is not JSON). Request bodies
from clients are read by `json` (`service.body`), which a few microseconds per request do not
make worth a difference.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_orjson_dumps = orjson.dumps
_orjson_loads = orjson.loads


def dumps(obj: Any) -> bytes:
    """Compact JSON as UTF-8, non-ASCII text as it is (not `\\u` escaped)."""
    try:
        return _orjson_dumps(obj)
    except TypeError:
        # A key that is not a string, an integer beyond 64 bits, a lone surrogate (which
        # UTF-8 cannot encode: `json` fails on it too, as it always did).
        return _encode(obj).encode()


def loads(data: bytes | str) -> Any:
    """The JSON document `data`."""
    try:
        return _orjson_loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # a lone surrogate escape, NaN, a huge number; or really not JSON
