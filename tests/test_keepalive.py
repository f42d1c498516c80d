"""Keep-alives come from one task for all open streams (service/keepalive.py): each stream gets
one every AI_KEEPALIVE_INTERVAL seconds from when it opened, never sooner, and none once it has
ended, however it ended; no task is left behind. (What a silent stream receives on the wire, in
every format, is in tests/test_format_promises.py and tests/test_stream.py.)"""

from __future__ import annotations

import asyncio

from service.app_keys import KEEPALIVES
from service.keepalive import KeepAlives
from tests.fake_upstream import Scenario

GEN = "/ai/stream/generate"


class Stream:
    """What KeepAlives needs of a stream; records when each keep-alive was due."""

    def __init__(self, interval: float) -> None:
        self.keepalive_interval = interval
        self.keepalive_slot = 0
        self.sent: list[float] = []

    def send_keepalive(self) -> None:
        self.sent.append(asyncio.get_running_loop().time())


def keepalive_tasks() -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "keepalives"]


async def _until(condition, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_each_stream_gets_a_keepalive_every_interval_from_one_task() -> None:
    keepalives = KeepAlives(resolution=0.02)
    loop = asyncio.get_running_loop()
    streams = [Stream(0.1) for _ in range(100)]
    opened = loop.time()
    for stream in streams:
        keepalives.add(stream)
    assert len(keepalive_tasks()) == 1  # one task, whatever the number of streams
    await _until(lambda: all(len(s.sent) >= 3 for s in streams))
    for stream in streams:
        times = [opened, *stream.sent]
        # Never sooner (within the moment between a slot's time and the stream's turn in it).
        assert all(later - earlier >= 0.099 for earlier, later in zip(times, times[1:])), times
    for stream in streams:
        keepalives.discard(stream)
    counts = [len(s.sent) for s in streams]
    await _until(lambda: not keepalive_tasks())  # no stream: the task ends, nothing wakes up
    assert [len(s.sent) for s in streams] == counts and len(keepalives) == 0
    await keepalives.close()


async def test_a_stream_added_later_is_not_pinged_early() -> None:
    keepalives = KeepAlives(resolution=0.02)
    first, second = Stream(0.1), Stream(0.3)
    keepalives.add(first)
    await _until(lambda: len(first.sent) >= 1)
    added = asyncio.get_running_loop().time()
    keepalives.add(second)
    await _until(lambda: len(second.sent) >= 1)
    assert second.sent[0] - added >= 0.3
    await keepalives.close()
    assert not keepalive_tasks()


async def test_ended_streams_leave_nothing_behind(make_client, fake_upstream) -> None:
    # An interval longer than the test: a stream still held would only be let go by its next
    # keep-alive failing, long after the test gave up waiting.
    client = await make_client(keepalive_interval=60)
    keepalives = client.app[KEEPALIVES]
    # Completed, failed, and left by its client while the model is silent.
    assert b'"type":"done"' in await (await client.post(GEN, json={"prompt": "x"})).read()
    for name in ("claude-primary", "claude-backup", "gpt-fallback"):
        fake_upstream.script(name, Scenario(kind="http_error", status=503))
    assert b'"type":"error"' in await (await client.post(GEN, json={"prompt": "x"})).read()
    fake_upstream.script("claude-primary", Scenario(tokens=["never"], first_token_delay=30))
    gone = await client.post(GEN, json={"prompt": "x"})
    assert len(keepalives) == 1
    gone.close()
    await fake_upstream.wait_for_disconnect(timeout=5)
    await _until(lambda: len(keepalives) == 0)
