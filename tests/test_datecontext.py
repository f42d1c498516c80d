"""The date and time the model is told: written once a minute per zone, and still exact."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from service import datecontext
from service.datecontext import date_context

UTC = timezone.utc


def test_the_text_changes_with_the_minute_and_not_within_it():
    start = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)
    first = date_context("UTC", start)
    assert "Monday, 2026-03-02 10:00" in first and "UTC+00:00" in first
    assert date_context("UTC", start + timedelta(seconds=59.9)) == first
    assert "10:01" in date_context("UTC", start + timedelta(seconds=60))
    # Back to an earlier minute (a clock set back): that minute's text, not the last one's.
    assert date_context("UTC", start) == first


def test_each_zone_has_its_own_text_for_the_same_minute():
    now = datetime(2026, 3, 2, 10, 0, 30, tzinfo=UTC)
    assert "11:00 (time zone Europe/Berlin, UTC+01:00)" in date_context("Europe/Berlin", now)
    assert "15:30 (time zone Asia/Kolkata, UTC+05:30)" in date_context("Asia/Kolkata", now)
    assert "10:00 (time zone UTC" in date_context("UTC", now)


def test_a_daylight_saving_change_shows_in_the_minute_it_happens():
    # Berlin moves from UTC+01:00 to UTC+02:00 at 01:00 UTC on 2026-03-29.
    before = datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC)
    assert "01:59 (time zone Europe/Berlin, UTC+01:00)" in date_context("Europe/Berlin", before)
    after = before + timedelta(seconds=1)
    assert "03:00 (time zone Europe/Berlin, UTC+02:00)" in date_context("Europe/Berlin", after)


def test_what_is_kept_stays_bounded_however_many_zones_are_asked_for():
    now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    zones = [f"Etc/GMT{sign}{hours}" for sign in "+-" for hours in range(1, 13)]
    for _ in range(30):
        for zone in zones:
            date_context(zone, now)
    assert len(datecontext._written) <= datecontext._WRITTEN_ZONES
    for zone in zones:
        assert f"time zone {zone}," in date_context(zone, now)
