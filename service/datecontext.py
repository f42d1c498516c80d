"""The date and time the model is told, so that it knows what "today" is."""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from functools import lru_cache

_UTC = zoneinfo.ZoneInfo("UTC")
_WRITTEN_ZONES = 512  # as many as `zone` keeps
# Zone name -> (the minute since the epoch, the text for it).
_written: dict[str, tuple[int, str]] = {}


@lru_cache(maxsize=512)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone `name`; raises KeyError for an unknown one."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise KeyError(name) from None


def is_known_zone(name: str) -> bool:
    try:
        zone(name)
    except KeyError:
        return False
    return True


def date_context(zone_name: str, now: datetime | None = None) -> str:
    """What the model is told, to the minute. The text changes once a minute (every zone's
    offset is a whole number of minutes, and its changes fall on a minute), so each zone's is
    written once per minute and reused: formatting it costs more than relaying a token."""
    now = now or datetime.now(tz=_UTC)
    minute = int(now.timestamp() // 60)
    cached = _written.get(zone_name)
    if cached is not None and cached[0] == minute:
        return cached[1]
    local = now.astimezone(zone(zone_name))
    offset = local.strftime("%z")
    text = (
        f"Current date and time: {local:%A}, {local:%Y-%m-%d} {local:%H:%M} "
        f"(time zone {zone_name}, UTC{offset[:3]}:{offset[3:]}). "
        "Use this when the user refers to today, dates or times."
    )
    if len(_written) >= _WRITTEN_ZONES and zone_name not in _written:
        _written.clear()  # many zones in one minute: start over rather than grow
    _written[zone_name] = (minute, text)
    return text


def utc_now() -> datetime:
    return datetime.now(tz=_UTC)
