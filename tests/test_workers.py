"""`--workers N`: several processes on one port, metrics summed across them, clean stop."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import parse_events
from tests.test_config import _base_env, _free_port, _wait_for_health, service_env


async def test_two_workers_share_a_port_and_their_metrics(tmp_path, fake_upstream):
    port = _free_port()
    env = service_env(
        fake_upstream,
        port,
        DATABASE_URL=f"sqlite:///{tmp_path / 'w.db'}",
        AI_SHUTDOWN_GRACE="1",
        AI_MAX_CONCURRENT_STREAMS="0",  # one test client opens 60 at once
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "--workers", "2", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    requests = 60
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            await _wait_for_health(session, port)
            supervisor = psutil.Process(proc.pid)
            for _ in range(100):
                workers = supervisor.children()
                if len(workers) == 2:
                    break
                await asyncio.sleep(0.05)
            assert len(workers) == 2
            before = {w.pid: w.cpu_times().user + w.cpu_times().system for w in workers}

            async def one(n: int) -> list[dict]:
                body = {"messages": [{"role": "user", "content": "hi"}], "thread_id": f"w{n % 5}"}
                async with session.post(f"http://127.0.0.1:{port}/ai/stream/chat", json=body) as resp:
                    assert resp.status == 200
                    return parse_events(await resp.read())

            results = await asyncio.gather(*(one(n) for n in range(requests)))
            assert all(r[-1]["type"] == "done" and r[-1]["persisted"] for r in results)
            used = {w.pid: w.cpu_times().user + w.cpu_times().system - before[w.pid] for w in workers}
            assert all(cpu > 0 for cpu in used.values()), used  # the kernel spread connections over both

            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
            totals = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    key = (sample.name, sample.labels.get("route"), sample.labels.get("outcome"))
                    totals[key] = totals.get(key, 0) + sample.value
            # Whichever worker answered the scrape, the counts cover both.
            assert totals[("ai_stream_requests_total", "/ai/stream/chat", None)] == requests
            assert totals[("ai_stream_answers_total", None, "done")] == requests
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
    assert b"Traceback" not in stderr


async def test_workers_need_a_fixed_port(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "--workers", "2", env={**_base_env(), "PORT": "0"}, cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert stderr.decode().strip() == "ai-stream: invalid setting AI_WORKERS: several workers need a fixed PORT, not 0"
