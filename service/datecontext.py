"""The date and time the model is told, so that it knows what "today" is."""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from functools import lru_cache


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
    local = (now or datetime.now(tz=zoneinfo.ZoneInfo("UTC"))).astimezone(zone(zone_name))
    offset = local.strftime("%z")
    return (
        f"Current date and time: {local:%A}, {local:%Y-%m-%d} {local:%H:%M} "
        f"(time zone {zone_name}, UTC{offset[:3]}:{offset[3:]}). "
        "Use this when the user refers to today, dates or times."
    )


def utc_now() -> datetime:
    return datetime.now(tz=zoneinfo.ZoneInfo("UTC"))
