"""A real service process and a fake upstream for it: the service started as `python -m service`
(its real entry point) on a free port of 127.0.0.1, the fake upstream on its own event loop in
a daemon thread, so that a test can kill, restart or fuzz the process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ANTHROPIC_KEY, OPENAI_KEY
from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent.parent


class ThreadedUpstream:
    """The fake upstream on its own event loop in a daemon thread, for a service in another process."""

    def __init__(self) -> None:
        self.fake = FakeUpstream()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-upstream", daemon=True)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` (plain or async) run on the fake's loop; its result."""

        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def __enter__(self) -> ThreadedUpstream:
        self._thread.start()
        self.call(self.fake.start)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.call(self.fake.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


@dataclass
class RunningService:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()


def service_env(fake: FakeUpstream, workdir: Path, **settings: str) -> dict[str, str]:
    """This machine's environment without any service setting, plus the test configuration."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AI_", "ANTHROPIC_", "OPENAI_")) and k not in ("DATABASE_URL", "HOST", "PORT")}
    env.update(
        PYTHONPATH=str(ROOT),
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        ANTHROPIC_BASE_URL=fake.base_url,
        OPENAI_API_KEY=OPENAI_KEY,
        OPENAI_BASE_URL=fake.openai_base_url,
        AI_FIRST_TOKEN_TIMEOUT="2",
        AI_REQUEST_TIMEOUT="10",
        AI_LOG_LEVEL="info",
        AI_LOG_FORMAT="json",
        AI_SHED_LOOP_LAG_MS="0",  # a test machine's loop lags with whatever else runs on it
        DATABASE_URL=f"sqlite:///{workdir / 'ai-stream.db'}",
    )
    env.update(settings)
    return env


@contextmanager
def run_service(env: dict[str, str], workdir: Path, timeout: float = 15.0) -> Iterator[RunningService]:
    """`python -m service` on a free port of 127.0.0.1, its stderr (the log) in a file; stopped
    with SIGTERM (a graceful shutdown) at the end."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = workdir / "service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], env={**env, "HOST": "127.0.0.1", "PORT": str(port)},
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=log,  # cwd: no stray .env file
        )
    service = RunningService(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"the service exited ({process.returncode}):\n" + "\n".join(service.log_lines())
            try:
                requests.get(service.base_url + "/health", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the service did not start listening"
                time.sleep(0.05)
        yield service
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
