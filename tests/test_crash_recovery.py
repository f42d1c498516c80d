"""A process killed mid-answer (SIGKILL: no shutdown, no final writes) leaves no thread broken:
the next process closes the answers the dead one left `pending` as `interrupted`, with the
text it had already saved (at most AI_PARTIAL_FLUSH_INTERVAL behind what clients saw), and the
thread takes its next turn with roles alternating."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fake_upstream import Scenario
from tests.storage_fixtures import StoreTarget, run_in_thread
from tests.support.processes import ThreadedUpstream, run_service, service_env
from tests.support.prompts import conversation

STREAMS = 12
TOKEN = "tok "
MODEL = "claude-sonnet-4-5"  # the first of the default chain
SETTINGS = {
    "AI_STORAGE_CHECK_INTERVAL": "0.2",
    "AI_WRITER_STALE_AFTER": "1",
    "AI_PARTIAL_FLUSH_INTERVAL": "0.1",
    "AI_REQUEST_TIMEOUT": "60",
}


def _read_events(lines: Iterator[bytes], count: int) -> str:
    """The text of the next `count` content events of a streamed answer's lines (one iterator
    per response: a dropped one closes the connection)."""
    text = ""
    seen = 0
    for line in lines:
        if not line.startswith(b"data: "):
            continue
        event = json.loads(line[6:])
        assert event["type"] == "content", event
        text += event["text"]
        seen += 1
        if seen == count:
            return text
    raise AssertionError("the stream ended early")


def _target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreTarget:
    if backend == "sqlite":
        return StoreTarget("sqlite", f"sqlite:///{tmp_path / 'threads.db'}")
    url = request.getfixturevalue("pg_url")
    target = StoreTarget("postgresql", url)
    run_in_thread(lambda: target.fetch("TRUNCATE threads, messages CASCADE"))
    return target


def _pending(target: StoreTarget) -> list[tuple[object, ...]]:
    return run_in_thread(lambda: target.fetch("SELECT id FROM messages WHERE status = 'pending'"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_mid_answer_then_restart(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    target = _target(backend, tmp_path, request)
    with ThreadedUpstream() as upstream:
        env = service_env(upstream.fake, tmp_path, DATABASE_URL=target.url, **SETTINGS)
        slow = [Scenario(tokens=[TOKEN] * 400, token_delay=0.05) for _ in range(STREAMS)]
        upstream.call(upstream.fake.script, MODEL, *slow)
        received: dict[str, str] = {}
        with run_service(env, tmp_path) as service:
            streams = []
            for n in range(STREAMS):
                body = {"messages": [{"role": "user", "content": f"question {n}"}], "thread_id": f"crash-{n}"}
                response = requests.post(f"{service.base_url}/ai/stream/chat", json=body, stream=True, timeout=30)
                assert response.status_code == 200
                streams.append((f"crash-{n}", response, response.iter_lines()))
            for thread_id, _, lines in streams:
                received[thread_id] = _read_events(lines, 3)
            time.sleep(0.6)  # several save intervals after what the clients saw
            service.process.kill()  # no shutdown: nothing more is written
            service.process.wait(timeout=10)
            for _, response, _ in streams:
                response.close()
        assert len(_pending(target)) == STREAMS  # the dead process left them all open

        upstream.call(upstream.fake.reset)
        with run_service(env, tmp_path) as service:
            deadline = time.monotonic() + 30  # bounded wait: closing needs the dead writer's lease to lapse
            while _pending(target):
                assert time.monotonic() < deadline, "answers of the dead process stay pending"
                time.sleep(0.1)
            for thread_id, seen in received.items():
                page = requests.get(f"{service.base_url}/ai/threads/{thread_id}/messages", timeout=10).json()
                question, answer = page["messages"]
                assert question["status"] == "complete"
                assert answer["status"] == "interrupted"
                # What the client had seen was saved, and nothing that was not sent.
                assert answer["content"].startswith(seen), (answer["content"], seen)
                assert (TOKEN * 400).startswith(answer["content"])
            # The thread takes a new turn; the model sees the partial answer, roles alternating.
            body = {"messages": [{"role": "user", "content": "go on"}], "thread_id": "crash-0"}
            response = requests.post(f"{service.base_url}/ai/stream/chat", json=body, timeout=30)
            assert response.status_code == 200 and b'"type":"done"' in response.content
            sent = conversation(upstream.call(lambda: upstream.fake.requests_for(MODEL)[-1].body))
            assert [m["role"] for m in sent] == ["user", "assistant", "user"]
            assert sent[0]["content"] == "question 0" and sent[2]["content"] == "go on"
            assert sent[1]["content"].startswith(received["crash-0"])


def test_a_live_replica_keeps_its_answers_while_another_starts(tmp_path: Path) -> None:
    """A replica starting beside a running one closes nothing of the running one's."""
    target = StoreTarget("sqlite", f"sqlite:///{tmp_path / 'shared.db'}")
    with ThreadedUpstream() as upstream:
        env = service_env(upstream.fake, tmp_path, DATABASE_URL=target.url, **SETTINGS)
        upstream.call(upstream.fake.script, MODEL, Scenario(tokens=[TOKEN] * 200, token_delay=0.05))
        first_dir = tmp_path / "first"
        second_dir = tmp_path / "second"
        first_dir.mkdir()
        second_dir.mkdir()
        with run_service(env, first_dir) as first:
            body = {"messages": [{"role": "user", "content": "long one"}], "thread_id": "live"}
            response = requests.post(f"{first.base_url}/ai/stream/chat", json=body, stream=True, timeout=30)
            lines = response.iter_lines()
            _read_events(lines, 2)
            with run_service(env, second_dir):
                time.sleep(1.5)  # longer than AI_WRITER_STALE_AFTER: the second has checked writers
                text = _read_events(lines, 10)
            rest = b"\n".join(lines)
            assert b'"type":"done"' in rest and b'"persisted":true' in rest
            page = requests.get(f"{first.base_url}/ai/threads/live/messages", timeout=10).json()
            assert page["messages"][1]["status"] == "complete"
            assert page["messages"][1]["content"] == TOKEN * 200 and text
