"""Fixtures for the tests of shared state on Redis.

`redis_url` is the Redis at TEST_REDIS_URL (default redis://127.0.0.1:6379/0, which `.ci/run`
starts when none answers); tests fail when it cannot be reached. Every test gets a key prefix of
its own (`redis_prefix`, for AI_REDIS_KEY_PREFIX), so two runs or two tests never see each
other's keys; its keys are deleted after it.

`private_redis` starts a redis-server of the test's own on a free port, for tests that stop or
restart Redis without touching the one other runs share.

Import what you need, e.g. in a test module:
    from tests.redis_fixtures import private_redis, redis_prefix, redis_url  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"
RUN_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis for tests is not reachable at TEST_REDIS_URL ({type(exc).__name__}); start it first")
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"ai-stream-test-{RUN_ID}-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivateRedis:
    """A redis-server of one test's own, which it may stop and start again on the same port."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the test's redis-server did not start") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()
