"""`python -m service` says in one line where it listens, which models can answer and which
store it uses, and warns when no model can (every answer would be a 503 naming what to set)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.processes import ThreadedUpstream, run_service, service_env


def _events(lines: list[str], name: str) -> list[dict]:
    return [event for event in map(json.loads, lines) if event.get("event") == name]


def test_one_start_up_line(tmp_path: Path) -> None:
    with ThreadedUpstream() as upstream:
        env = service_env(upstream.fake, tmp_path, AI_MODELS="anthropic/claude-a,openai/gpt-b")
        env.pop("OPENAI_API_KEY")
        with run_service(env, tmp_path) as service:
            requests.get(f"{service.base_url}/health", timeout=10)
            (started,) = _events(service.log_lines(), "service_started")
            assert started["level"] == "info"
            assert started["address"] == service.base_url
            assert started["models"] == ["anthropic/claude-a"]
            assert started["models_without_credentials"] == ["openai/gpt-b"]
            assert started["store"] == "sqlite" and started["store_ok"] is True
            assert _events(service.log_lines(), "no_model_has_credentials") == []
            assert "sk-" not in json.dumps(started)  # no key in it


def test_a_warning_when_no_model_has_credentials(tmp_path: Path) -> None:
    with ThreadedUpstream() as upstream:
        env = service_env(upstream.fake, tmp_path)
        env.pop("ANTHROPIC_API_KEY")
        env.pop("OPENAI_API_KEY")
        with run_service(env, tmp_path) as service:
            (warning,) = _events(service.log_lines(), "no_model_has_credentials")
            assert warning["level"] == "warning" and "ANTHROPIC_API_KEY" in warning["hint"]
            answer = requests.post(f"{service.base_url}/ai/stream/generate", json={"prompt": "x"}, timeout=10)
            assert answer.status_code == 503
            body = answer.json()
            assert body["code"] == "no_models_available"
            assert "ANTHROPIC_API_KEY" in body["error"] and "AI_ENDPOINT_<NAME>_API_KEY" in body["error"]


@pytest.mark.parametrize("choice, loop", [(None, "uvloop"), ("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_the_event_loop_is_uvloop_unless_asked_otherwise(tmp_path: Path, choice: str | None, loop: str) -> None:
    with ThreadedUpstream() as upstream:
        env = service_env(upstream.fake, tmp_path, **({"AI_EVENT_LOOP": choice} if choice else {}))
        with run_service(env, tmp_path) as service:
            (started,) = _events(service.log_lines(), "service_started")
            assert started["event_loop"] == loop
            answer = requests.post(f"{service.base_url}/ai/stream/generate", json={"prompt": "x"}, timeout=10)
            assert answer.status_code == 200 and b'"type":"done"' in answer.content


def test_an_unknown_event_loop_stops_the_start(tmp_path: Path) -> None:
    env = {**service_env_without_upstream(tmp_path), "AI_EVENT_LOOP": "trio"}
    done = subprocess.run([sys.executable, "-m", "service"], env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.decode().startswith("ai-stream: invalid setting AI_EVENT_LOOP")


def service_env_without_upstream(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AI_", "ANTHROPIC_", "OPENAI_"))}
    return {**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "DATABASE_URL": f"sqlite:///{workdir}/x.db"}
