"""Resumable answers between real service processes (`python -m service`): two replicas sharing
the real Redis and PostgreSQL, a producer killed with SIGKILL mid-answer, and `--workers 2`
without Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import event_ids, parse_events
from tests.fake_upstream import Scenario
from tests.redis_fixtures import free_port, redis_prefix, redis_url  # noqa: F401
from tests.storage_fixtures import StoreTarget, run_in_thread
from tests.support.processes import ThreadedUpstream, run_service, service_env
from tests.support.prompts import conversation

MODEL = "claude-sonnet-4-5"  # the first of the default chain
TOKENS = [f"w{n} " for n in range(60)]
SETTINGS = {
    "AI_STORAGE_CHECK_INTERVAL": "0.2",
    "AI_WRITER_STALE_AFTER": "1",
    "AI_PARTIAL_FLUSH_INTERVAL": "0.1",
    "AI_REQUEST_TIMEOUT": "60",
    "AI_RESUME_FLUSH_INTERVAL": "0.02",
}
READ_TIMEOUT = 30  # a stream that stops sending for this long has hung: the test fails


def read_events(lines: Iterator[bytes], count: int) -> bytes:
    """The next `count` events of a response's lines (one iterator per response), as bytes."""
    raw, seen, pending = b"", 0, b""
    for line in lines:
        if line.startswith(b":"):
            continue
        pending += line + b"\n"
        if line == b"":
            raw, pending, seen = raw + pending, b"", seen + 1
            if seen == count:
                return raw
    raise AssertionError("the stream ended early")


def rest_of(lines: Iterator[bytes]) -> bytes:
    """What is left of a response's lines, to its end, as bytes."""
    return b"".join(line + b"\n" for line in lines)


def last_id(raw: bytes) -> str:
    answer_id, seq = event_ids(raw)[-1]
    return f"{answer_id}:{seq}"


def text_of(raw: bytes) -> str:
    return "".join(e.get("text", "") for e in parse_events(raw) if e["type"] == "content")


def ends_of(raw: bytes) -> list[dict[str, Any]]:
    return [e for e in parse_events(raw) if e["type"] in ("done", "error")]


@pytest.fixture
def pg_target(pg_url: str) -> StoreTarget:
    target = StoreTarget("postgresql", pg_url)
    run_in_thread(lambda: target.fetch("TRUNCATE threads, messages CASCADE"))
    return target


@pytest.fixture
def replicas(tmp_path: Path, pg_target: StoreTarget, redis_url: str, redis_prefix: str):  # noqa: F811
    """Two service processes sharing Redis and PostgreSQL, and their fake upstream."""
    with ThreadedUpstream() as upstream:
        env = service_env(upstream.fake, tmp_path, DATABASE_URL=pg_target.url, REDIS_URL=redis_url,
                          AI_REDIS_KEY_PREFIX=redis_prefix, **SETTINGS)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with run_service(env, tmp_path / "a") as one, run_service(env, tmp_path / "b") as other:
            yield upstream, one, other


def stored(service: Any, thread_id: str) -> list[dict[str, Any]]:
    return requests.get(f"{service.base_url}/ai/threads/{thread_id}/messages", timeout=10).json()["messages"]


def test_drop_on_one_process_resume_on_another(replicas) -> None:
    upstream, one, other = replicas
    upstream.call(upstream.fake.script, MODEL, Scenario(tokens=TOKENS, token_delay=0.02))
    body = {"messages": [{"role": "user", "content": "count"}], "thread_id": "p-1"}
    resp = requests.post(f"{one.base_url}/ai/stream/chat", json=body, stream=True, timeout=READ_TIMEOUT)
    answer_id = resp.headers["X-Answer-ID"]
    first = read_events(resp.iter_lines(), 7)
    resp.close()  # the phone loses its network
    again = requests.get(f"{other.base_url}/ai/stream/answers/{answer_id}", headers={"Last-Event-ID": last_id(first)},
                         timeout=READ_TIMEOUT)
    assert again.status_code == 200 and again.headers["X-Answer-ID"] == answer_id
    whole = first + again.content
    event_ids(whole)  # numbered once each, none missing
    assert text_of(whole) == "".join(TOKENS)
    [done] = ends_of(whole)
    assert done["type"] == "done" and done["message_id"] == answer_id
    for _ in range(100):
        answer = stored(other, "p-1")[-1]
        if answer["status"] != "pending":
            break
        time.sleep(0.05)
    assert (answer["id"], answer["status"], answer["content"]) == (answer_id, "complete", "".join(TOKENS))


def test_producer_killed_mid_answer(replicas) -> None:
    upstream, one, other = replicas
    upstream.call(upstream.fake.script, MODEL, Scenario(tokens=TOKENS * 10, token_delay=0.05))
    body = {"messages": [{"role": "user", "content": "a long one"}], "thread_id": "p-kill"}
    resp = requests.post(f"{one.base_url}/ai/stream/chat", json=body, stream=True, timeout=READ_TIMEOUT)
    answer_id = resp.headers["X-Answer-ID"]
    first = read_events(resp.iter_lines(), 5)
    resp.close()
    # One reader follows it on the other process; then its producer dies without a word.
    reader = requests.get(f"{other.base_url}/ai/stream/answers/{answer_id}", headers={"Last-Event-ID": last_id(first)},
                          stream=True, timeout=READ_TIMEOUT)
    lines = reader.iter_lines()
    followed = read_events(lines, 3)
    time.sleep(0.3)  # a few partial saves
    one.process.send_signal(signal.SIGKILL)
    one.process.wait(timeout=10)
    # The reader's stream ends (no hang: READ_TIMEOUT would fail the test) with an error event.
    whole = first + followed + rest_of(lines)
    event_ids(whole)
    [end] = ends_of(whole)
    assert (end["type"], end["code"], end["answer_id"]) == ("error", "answer_lost", answer_id)
    assert "".join(TOKENS * 10).startswith(text_of(whole))
    # A resume started after the death ends the same way.
    late = requests.get(f"{other.base_url}/ai/stream/answers/{answer_id}", headers={"Last-Event-ID": last_id(first)},
                        timeout=READ_TIMEOUT)
    assert late.status_code == 200 and ends_of(late.content)[-1]["code"] == "answer_lost"
    # The thread is consistent: the survivor closes the dead process's answer as interrupted,
    # keeping what was saved, and the thread takes its next turn with roles alternating.
    deadline = time.monotonic() + READ_TIMEOUT
    while (answer := stored(other, "p-kill")[-1])["status"] == "pending":
        assert time.monotonic() < deadline, "the dead process's answer stays pending"
        time.sleep(0.1)
    assert answer["status"] == "interrupted" and text_of(first).startswith("w0 ")
    assert "".join(TOKENS * 10).startswith(answer["content"])
    upstream.call(upstream.fake.script, MODEL, Scenario(tokens=["next"]))
    again = requests.post(f"{other.base_url}/ai/stream/chat", timeout=READ_TIMEOUT,
                          json={"messages": [{"role": "user", "content": "go on"}], "thread_id": "p-kill"})
    assert ends_of(again.content)[-1]["type"] == "done"
    sent = conversation(upstream.call(lambda: upstream.fake.requests_for(MODEL)[-1].body))
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]


def test_workers_without_redis_answer_a_resume_they_cannot_serve_in_json(tmp_path: Path) -> None:
    """Each worker holds its own answers: a resume that lands on another one gets 503
    `resume_unavailable` at once (never a hang or a 500); one on the right worker, the answer."""
    with ThreadedUpstream() as upstream:
        upstream.call(upstream.fake.script, MODEL, Scenario(tokens=TOKENS, token_delay=0.01))
        port = free_port()
        env = service_env(upstream.fake, tmp_path, AI_SHUTDOWN_GRACE="1", HOST="127.0.0.1", PORT=str(port))
        proc = subprocess.Popen([sys.executable, "-m", "service", "--workers", "2"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(base)
            first = requests.post(f"{base}/ai/stream/generate", json={"prompt": "x", "resumable": True}, timeout=READ_TIMEOUT)
            answer_id = first.headers["X-Answer-ID"]
            statuses = []
            for _ in range(24):  # a new connection each time: the kernel picks a worker
                with requests.Session() as session:
                    resume = session.get(f"{base}/ai/stream/answers/{answer_id}", timeout=READ_TIMEOUT)
                statuses.append(resume.status_code)
                if resume.status_code == 200:
                    assert resume.content == first.content
                else:
                    assert resume.status_code == 503 and resume.headers["Retry-After"] == "1"
                    assert json.loads(resume.content)["code"] == "resume_unavailable"
            assert set(statuses) == {200, 503}, statuses
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def wait_for(base: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(base + "/health", timeout=1)
            return
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "the service did not start listening"
            time.sleep(0.05)
