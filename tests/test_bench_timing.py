"""The relay benchmark's pure parts: reading stamped tokens, added latency, the capacity search."""

from __future__ import annotations

import math

import pytest

from bench.timing import CapacitySearch, EventReader, carries, percentile
from bench.upstream import Scenario


def content(text: str, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n".encode() if event_id else b""
    return head + b'data: {"type":"content","text":"' + text.encode() + b'"}\n\n'


DONE = b'data: {"type":"done","model":"m","stop_reason":"end_turn","usage":{}}\n\n'


def test_added_latency_is_read_time_minus_the_stamp_for_each_token():
    latencies: list[float] = []
    reader = EventReader(latencies)
    reader.feed(content("100.0000") + content("100.0200"), read_at=100.0250)
    reader.feed(content("100.0400") + DONE, read_at=100.1400)
    assert latencies == pytest.approx([25.0, 5.0, 100.0])
    assert (reader.contents, reader.reads, reader.terminal) == (3, 2, "done")
    assert reader.first_content_at == 100.0250


def test_an_event_split_across_reads_counts_when_it_is_complete():
    latencies: list[float] = []
    reader = EventReader(latencies)
    whole = content("5.5000")
    reader.feed(whole[:20], read_at=5.6)
    assert (reader.contents, latencies) == (0, [])
    reader.feed(whole[20:], read_at=5.7)
    assert reader.contents == 1
    assert latencies == pytest.approx([200.0])  # it was readable only at the second read


def test_event_ids_and_unstamped_text_are_fine():
    latencies: list[float] = []
    reader = EventReader(latencies)
    reader.feed(content("1.0000", "a1:0") + content(" hello", "a1:1") + DONE, read_at=1.001)
    assert reader.contents == 2
    assert latencies == pytest.approx([1.0])  # only the stamped token has a latency


def test_only_tokens_read_inside_the_window_are_recorded():
    latencies: list[float] = []
    reader = EventReader(latencies, window_start=10.0, window_end=20.0)
    reader.feed(content("9.9000"), read_at=9.95)
    reader.feed(content("10.0000"), read_at=10.01)
    reader.feed(content("19.9900"), read_at=20.0)  # the end is excluded
    assert latencies == pytest.approx([10.0])
    assert reader.contents == 3


def test_an_error_event_after_tokens_is_the_terminal_with_its_code():
    reader = EventReader()
    reader.feed(content("1.0") + b'data: {"type":"error","error":"The model \\"x\\" timed out.","code":"timeout"}\n\n', 1.1)
    assert (reader.terminal, reader.error_code) == ("error", "timeout")
    assert reader.contents == 1


def test_text_that_quotes_a_done_event_is_not_the_end():
    reader = EventReader()
    reader.feed(b'data: {"type":"content","text":"{\\"type\\":\\"done\\"}"}\n\n', 1.0)
    assert reader.terminal is None and reader.contents == 1


def test_upstream_lateness_is_how_far_the_last_stamp_is_behind_the_schedule():
    reader = EventReader()
    reader.feed(content("1.0000") + content("1.0200") + content("1.0500"), read_at=1.06)
    assert reader.upstream_late_ms(0.02) == pytest.approx(10.0)
    assert math.isnan(EventReader().upstream_late_ms(0.02))


def test_carried_needs_the_latency_within_the_limit_and_no_refusal_or_failure():
    assert carries(50.0, 50.0, refused=0, failed=0)
    assert not carries(50.1, 50.0, refused=0, failed=0)
    assert not carries(10.0, 50.0, refused=1, failed=0)  # shedding at a level means it is not carried
    assert not carries(10.0, 50.0, refused=0, failed=1)
    assert not carries(math.nan, 50.0, refused=0, failed=0)  # no token measured: nothing proven


def test_percentile_is_nearest_rank():
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def run_search(search: CapacitySearch, true_capacity: int) -> list[int]:
    levels = []
    while (level := search.next_level()) is not None:
        levels.append(level)
        search.record(level, level <= true_capacity)
    return levels


def test_the_search_doubles_then_bisects_to_the_resolution():
    search = CapacitySearch(start=50, limit=3000, max_steps=20, resolution=0.1)
    levels = run_search(search, true_capacity=330)
    assert levels[:4] == [50, 100, 200, 400]
    assert search.capacity <= 330 < search.failed_at
    assert search.failed_at - search.capacity <= 0.1 * search.capacity
    assert search.settled


def test_the_search_halves_when_the_first_level_fails():
    search = CapacitySearch(start=200, limit=3000, max_steps=20, resolution=0.1)
    levels = run_search(search, true_capacity=30)
    assert levels[:4] == [200, 100, 50, 25]
    assert search.capacity <= 30 < search.failed_at


def test_the_search_stops_at_the_floor_and_at_the_limit():
    nothing = CapacitySearch(start=40, limit=3000, floor=5)
    assert run_search(nothing, true_capacity=0) == [40, 20, 10, 5]
    assert (nothing.capacity, nothing.failed_at, nothing.settled) == (0, 5, True)
    everything = CapacitySearch(start=50, limit=300, max_steps=20)
    assert run_search(everything, true_capacity=10_000) == [50, 100, 200, 300]
    assert (everything.capacity, everything.failed_at, everything.settled) == (300, None, True)


def test_the_search_is_bounded_in_steps_and_says_so():
    search = CapacitySearch(start=50, limit=3000, max_steps=4, resolution=0.01)
    assert len(run_search(search, true_capacity=330)) == 4
    assert not search.settled
    assert search.capacity == 200 and search.failed_at == 400  # the bounds so far


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rate=200:0.02:stamped", ("rate", Scenario(200, 0.02, True))),
        ("one=1:0", ("one", Scenario(1, 0.0, False))),
    ],
)
def test_upstream_scenarios_parse(text, expected):
    assert Scenario.parse(text) == expected


@pytest.mark.parametrize("text", ["rate", "=1:0", "r=0:0", "r=5:-1", "r=5:0:fast", "r=5"])
def test_bad_upstream_scenarios_are_refused(text):
    with pytest.raises(ValueError):
        Scenario.parse(text)
