"""An answer leaves no reference cycle behind: everything it made is freed by reference counting
as soon as it ends, which is what lets the service run the cycle collector rarely
(service/__main__.py GC_THRESHOLDS). A cycle made per answer would show here as garbage that
grows with the number of answers."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tests.conftest import parse_events

ANSWERS = 40


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _garbage_after(answers: int, ask) -> int:
    gc.collect()
    for _ in range(answers):
        await ask()
    return gc.collect()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/ai/stream/generate", {"prompt": "x"}),
        ("/ai/stream/generate", {"prompt": "x", "stream": False}),
        ("/ai/stream/chat", {"messages": [{"role": "user", "content": "x"}]}),
        ("/ai/stream/generate", {"prompt": "x", "model": "gpt-fallback"}),
    ],
    ids=["streamed", "whole", "chat", "openai-dialect"],
)
async def test_answers_leave_no_cycles(client, collector_off, path, body):
    async def ask() -> None:
        resp = await client.post(path, json=body)
        assert resp.status == 200
        raw = await resp.read()
        if body.get("stream", True):
            assert parse_events(raw)[-1]["type"] == "done"

    await _garbage_after(5, ask)  # first answers: caches, connections, captured requests
    few = await _garbage_after(5, ask)
    many = await _garbage_after(ANSWERS, ask)
    # None at all today; a cycle made by one answer in four would already fail this.
    assert many - few < ANSWERS // 4, f"{many} objects in cycles after {ANSWERS} answers, {few} after 5"


async def test_a_cycle_per_answer_would_be_seen(client, collector_off):
    """The measure itself: an answer that does leave a cycle is counted."""
    async def ask() -> None:
        await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read()
        cycle: list[object] = []
        cycle.append(cycle)

    few = await _garbage_after(5, ask)
    many = await _garbage_after(ANSWERS, ask)
    assert many - few >= ANSWERS - 5
