"""SIGTERM: stop accepting, let open streams finish within the grace period, end the rest with
`shutting_down`, store what they had, exit 0."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import time

import aiohttp

from tests.conftest import parse_events
from tests.fake_upstream import Scenario
from tests.test_config import _free_port, _wait_for_health, service_env


async def test_sigterm_drains_then_ends_streams(tmp_path, fake_upstream):
    port = _free_port()
    db = tmp_path / "shutdown.db"
    env = service_env(
        fake_upstream,
        port,
        AI_MODELS="anthropic/claude-quick,anthropic/claude-stuck",
        AI_SHUTDOWN_GRACE="1",
        AI_IDLE_TIMEOUT="60",
        DATABASE_URL=f"sqlite:///{db}",
    )
    fake_upstream.script("claude-quick", Scenario(tokens=["a", "b", "c", "d", "e"], token_delay=0.1))
    fake_upstream.script("claude-stuck", Scenario(kind="stall", after_tokens=1))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_for_health(session, port)
            quick = await session.post(f"{base}/ai/stream/generate", json={"prompt": "x", "model": "claude-quick"})
            stuck = await session.post(
                f"{base}/ai/stream/chat",
                json={"messages": [{"role": "user", "content": "x"}], "model": "claude-stuck", "thread_id": "cut"},
            )
            collect = session.post(f"{base}/ai/stream/generate", json={"prompt": "x", "model": "claude-stuck", "stream": False})
            collect_task = asyncio.ensure_future(collect)
            first_quick = await quick.content.readuntil(b"\n\n")
            first_stuck = await stuck.content.readuntil(b"\n\n")
            await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
            await asyncio.sleep(0.2)

            # No new connections once shutdown has begun.
            async with aiohttp.ClientSession() as fresh:
                try:
                    async with fresh.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        refused = False
                        await resp.read()
                except aiohttp.ClientConnectionError:
                    refused = True
            assert refused

            quick_events = parse_events(first_quick + await quick.read())
            stuck_events = parse_events(first_stuck + await stuck.read())
            cut_at = time.monotonic()
            collected = await collect_task
            collected_body = await collected.json()
    finally:
        if proc.returncode is None:
            await asyncio.wait_for(proc.wait(), 15)
        _, stderr = await proc.communicate()

    # The stream that could finish within the grace period did.
    assert quick_events[-1]["type"] == "done" and "".join(e.get("text", "") for e in quick_events) == "abcde"
    # The one that could not ended with exactly one terminal event, `shutting_down`, after the grace period.
    assert [e["type"] for e in stuck_events] == ["content", "error"]
    assert stuck_events[-1]["code"] == "shutting_down"
    assert 0.9 <= cut_at - sent_at < 4
    assert collected.status == 503 and collected_body["code"] == "shutting_down"
    assert proc.returncode == 0, stderr.decode()[-2000:]
    # What the cut stream had was stored before the process ended.
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT role, content, status FROM messages ORDER BY seq").fetchall()
    conn.close()
    assert rows == [("user", "x", "complete"), ("assistant", "Hello", "error")]
    log = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "draining" for line in log)
    assert "Traceback" not in stderr.decode() and not any(line.get("level") == "error" for line in log)
