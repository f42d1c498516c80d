"""`python -m service` says in one line where it listens, which models can answer and which
store it uses, and warns when no model can (every answer would be a 503 naming what to set). It
answers /health before the vendor SDKs are loaded (in the background): an answer asked for
meanwhile waits for them, and a shutdown meanwhile is as graceful as any other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import structlog

from providers.factory import ModelRegistry
from service.app import create_app
from service.app_keys import MODEL_LOADING
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


# Put first on the service's PYTHONPATH: holds any import of a vendor SDK until the file named by
# HOLD_SDK_UNTIL exists, so that a test sees the service before its SDKs are loaded, on any machine.
HOLD_SDK = '''
import os, sys, time

class HoldSdk:
    def find_spec(self, name, path=None, target=None):
        if name in ("anthropic", "openai"):
            while not os.path.exists(os.environ["HOLD_SDK_UNTIL"]):
                time.sleep(0.01)
        return None

sys.meta_path.insert(0, HoldSdk())
'''


def _held_env(upstream: ThreadedUpstream, tmp_path: Path) -> tuple[dict[str, str], Path]:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_SDK)
    gate = tmp_path / "sdk-may-load"
    env = service_env(upstream.fake, tmp_path, HOLD_SDK_UNTIL=str(gate))
    env["PYTHONPATH"] = f"{hook}{os.pathsep}{env['PYTHONPATH']}"
    return env, gate


def test_health_answers_before_the_sdks_are_loaded(tmp_path: Path) -> None:
    with ThreadedUpstream() as upstream:
        env, gate = _held_env(upstream, tmp_path)
        with run_service(env, tmp_path) as service, ThreadPoolExecutor(1) as pool:
            health = requests.get(f"{service.base_url}/health", timeout=10).json()
            assert (health["status"], health["models_ready"]) == ("ok", False)
            (started,) = _events(service.log_lines(), "service_started")
            assert started["models"] == [m["name"] for m in health["models"]] and len(started["models"]) >= 2
            assert {m["circuit"]["state"] for m in health["models"]} == {"closed"}  # the circuits exist already

            # An answer asked for now waits for the models, then is answered as any other.
            asked = pool.submit(requests.post, f"{service.base_url}/ai/stream/generate", json={"prompt": "x"}, timeout=30)
            time.sleep(0.3)
            assert not asked.done()
            assert upstream.call(lambda: len(upstream.fake.requests)) == 0
            gate.touch()
            answer = asked.result(timeout=30)
            assert answer.status_code == 200 and '"type":"done"' in answer.text.rstrip().rsplit("\n", 1)[-1]

            assert requests.get(f"{service.base_url}/health", timeout=10).json()["models_ready"] is True
            (loaded,) = _events(service.log_lines(), "models_loaded")
            assert loaded["models"] == started["models"] and loaded["seconds"] >= 0.3


def test_a_shutdown_while_the_sdks_load_is_graceful(tmp_path: Path) -> None:
    with ThreadedUpstream() as upstream:
        env, _gate = _held_env(upstream, tmp_path)  # never opened: the import never ends
        with run_service(env, tmp_path) as service, ThreadPoolExecutor(1) as pool:
            asked = pool.submit(requests.post, f"{service.base_url}/ai/stream/generate", json={"prompt": "x"}, timeout=30)
            time.sleep(0.3)
            service.process.send_signal(signal.SIGTERM)
            answer = asked.result(timeout=30)
            assert answer.status_code == 503 and answer.json()["code"] == "shutting_down"
            assert service.process.wait(timeout=30) == 0
            assert upstream.call(lambda: len(upstream.fake.requests)) == 0
            assert not [line for line in service.log_lines() if "Traceback" in line]


async def test_sdks_that_cannot_load_stop_answers_and_say_so(aiohttp_client, make_settings, monkeypatch, fake_upstream) -> None:
    def broken(self: ModelRegistry) -> None:
        raise ImportError("an SDK is missing from this installation")

    monkeypatch.setattr(ModelRegistry, "load", broken)
    app = create_app(make_settings())
    stopped: list[bool] = []
    app[MODEL_LOADING].on_failure(lambda: stopped.append(True))  # `python -m service` exits 1 here
    with structlog.testing.capture_logs() as logs:
        client = await aiohttp_client(app)
        await app[MODEL_LOADING].wait_settled()
    assert stopped == [True]
    assert [e["log_level"] for e in logs if e["event"] == "models_failed"] == ["error"]
    health = await (await client.get("/health")).json()
    assert (health["status"], health["models_ready"]) == ("degraded", False)
    answer = await client.post("/ai/stream/generate", json={"prompt": "x"})
    assert answer.status == 503 and (await answer.json())["code"] == "shutting_down"
    assert fake_upstream.requests == []
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
