"""Two real service processes (`python -m service`) sharing one Redis, as two replicas behind a
load balancer: their limits add up, the slots of one that is SIGKILLed come back after
AI_LEASE_TTL, a model failing on one is skipped by the other, and Redis stopped mid-run leaves
both serving with limits of their own until it is back."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from tests.fake_upstream import Scenario
from tests.redis_fixtures import PrivateRedis, private_redis, redis_prefix, redis_url  # noqa: F401
from tests.support.processes import RunningService, ThreadedUpstream, run_service, service_env

MODEL = "claude-sonnet-4-5"  # the first of the default chain
BACKUP = "claude-haiku-4-5"
SLOW = Scenario(tokens=["tok "] * 400, token_delay=0.05)


@contextmanager
def replicas(upstream: ThreadedUpstream, tmp_path: Path, **settings: str) -> Iterator[tuple[RunningService, RunningService]]:
    """Replicas A and B, each in a directory (and with a log) of its own."""
    # A test machine's busy event loop must not pass for a stalled Redis.
    settings.setdefault("AI_REDIS_LIMIT_TIMEOUT", "1")
    workdirs = [tmp_path / "a", tmp_path / "b"]
    for workdir in workdirs:
        workdir.mkdir()
    with (
        run_service(service_env(upstream.fake, workdirs[0], **settings), workdirs[0]) as a,
        run_service(service_env(upstream.fake, workdirs[1], **settings), workdirs[1]) as b,
    ):
        yield a, b


def ask(service: RunningService, *, stream: bool = False) -> requests.Response:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return requests.post(f"{service.base_url}/ai/stream/chat", json=body, stream=stream, timeout=30)


def health(service: RunningService) -> dict[str, Any]:
    return requests.get(f"{service.base_url}/health", timeout=5).json()  # type: ignore[no-any-return]


def wait_until(what: str, check: Any, seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def test_requests_per_minute_add_up(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:  # noqa: F811
    with ThreadedUpstream() as upstream, replicas(
        upstream, tmp_path, REDIS_URL=redis_url, AI_REDIS_KEY_PREFIX=redis_prefix, AI_RATE_LIMIT_RPM="4"
    ) as (a, b):
        assert [ask(service).status_code for service in (a, a, b, b)] == [200] * 4
        for service in (a, b):
            refused = ask(service)
            assert refused.status_code == 429
            assert 1 <= int(refused.headers["Retry-After"]) <= 15
            assert "AI_RATE_LIMIT_RPM" in refused.json()["error"]
        assert upstream.call(lambda: len(upstream.fake.requests)) == 4


def test_open_streams_add_up_and_a_killed_replicas_slots_come_back(
    tmp_path: Path, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    with ThreadedUpstream() as upstream:
        upstream.call(upstream.fake.script, MODEL, SLOW)
        with replicas(
            upstream, tmp_path, REDIS_URL=redis_url, AI_REDIS_KEY_PREFIX=redis_prefix,
            AI_MAX_CONCURRENT_STREAMS="2", AI_LEASE_TTL="1.5", AI_REQUEST_TIMEOUT="60",
        ) as (a, b):
            held = [ask(a, stream=True), ask(b, stream=True)]
            assert [r.status_code for r in held] == [200, 200]
            for service in (a, b):
                refused = ask(service)
                assert refused.status_code == 429 and "AI_MAX_CONCURRENT_STREAMS" in refused.json()["error"]
            # A dies without a word: its lease stays on Redis until it expires (AI_LEASE_TTL).
            a.process.kill()
            a.process.wait()
            assert ask(b).status_code == 429  # its last refresh was at most AI_LEASE_TTL / 3 ago
            again = wait_until("the killed replica's slot came back", lambda: (r := ask(b, stream=True)).status_code == 200 and r)
            # B's own lease is still held (refreshed past its TTL): a third stream is refused.
            time.sleep(2.0)
            assert ask(b).status_code == 429
            for response in (*held, again):
                response.close()


def test_a_model_failing_on_one_replica_is_skipped_by_the_other(
    tmp_path: Path, redis_url: str, redis_prefix: str  # noqa: F811
) -> None:
    with ThreadedUpstream() as upstream:
        upstream.call(upstream.fake.script, MODEL, Scenario(kind="http_error", status=529))
        with replicas(
            upstream, tmp_path, REDIS_URL=redis_url, AI_REDIS_KEY_PREFIX=redis_prefix,
            AI_COOLDOWN_FAILURES="1", AI_COOLDOWN_SECONDS="30",
        ) as (a, b):
            assert ask(a).json()["model"] == BACKUP
            primary = f"anthropic/{MODEL}"

            def open_on_b() -> bool:
                circuit = next(m["circuit"] for m in health(b)["models"] if m["name"] == primary)
                return bool(circuit["state"] == "open")

            wait_until("B sees the primary's circuit open", open_on_b)
            assert ask(b).json()["model"] == BACKUP
            assert upstream.call(lambda: len(upstream.fake.requests_for(MODEL))) == 1


def _redis_down_lines(service: RunningService) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in service.log_lines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "redis_down"]


def test_redis_stopped_mid_run_then_back(tmp_path: Path, private_redis: PrivateRedis) -> None:  # noqa: F811
    with ThreadedUpstream() as upstream, replicas(
        upstream, tmp_path, REDIS_URL=private_redis.url, AI_RATE_LIMIT_RPM="2", AI_REDIS_CHECK_INTERVAL="0.1"
    ) as (a, b):
        assert [ask(a).status_code, ask(b).status_code, ask(a).status_code] == [200, 200, 429]
        private_redis.stop()
        # Each replica counts alone: two requests each (its own count is untouched), then 429.
        for service in (a, b):
            streamed = ask(service, stream=True)
            assert streamed.status_code == 200 and b'"type":"done"' in streamed.content
            assert ask(service).status_code == 200
            assert ask(service).status_code == 429
            state = health(service)
            assert state["status"] == "degraded" and state["redis"] == {"configured": True, "ok": False}
            metrics = requests.get(f"{service.base_url}/metrics", timeout=5).text
            assert 'ai_stream_redis_failures_total{operation="' in metrics
            assert "ai_stream_redis_up 0.0" in metrics
        private_redis.start()  # empty: a Redis that restarted
        for service in (a, b):
            wait_until("Redis is ok again", lambda s=service: health(s)["redis"]["ok"])
        assert [ask(a).status_code, ask(b).status_code, ask(a).status_code] == [200, 200, 429]
        for service in (a, b):
            down = _redis_down_lines(service)
            assert len(down) == 1, down  # one warning for the outage, however many requests it saw
            assert down[0]["level"] == "warning"
            assert "127.0.0.1" not in json.dumps(down[0])  # no address in the log
