"""The Vercel AI SDK's own client (`ai@7`, tests/js/) and the Next.js example in headless
Chromium, against a real service process and the fake upstream.

The fake answers by the tag in the last user message (`[restart] ...`), so that the JavaScript
side picks its scenario per request. Node and npm packages come from the lock files
(`npm ci`, as .ci/run does); the test fails, rather than skips, when they are missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fake_upstream import RecordedRequest, Scenario
from tests.support.processes import (
    ROOT,
    RunningService,
    ThreadedUpstream,
    run_service,
    service_env,
)
from tests.support.prompts import conversation

JS_DIR = ROOT / "tests" / "js"
EXAMPLE_DIR = ROOT / "examples" / "nextjs-chat"
CHROMIUM = "/usr/bin/chromium"
API_KEY = "frontend:ui-chat-test-key-0123456789"
MODELS = "anthropic/claude-primary,anthropic/claude-backup,openai/gpt-fallback"
NODE_TIMEOUT = 300.0


def last_user_text(rec: RecordedRequest) -> str:
    """The last question of a request, as the user wrote it (without the date context)."""
    messages = conversation(rec.body)
    questions = [m["content"] for m in messages if m["role"] == "user"]
    return questions[-1] if questions else ""


def echo(prompt: str) -> list[str]:
    """The answer to `prompt`, in pieces: "Echo: " and its words."""
    words = re.sub(r"^\[[a-z-]+\]\s*", "", prompt).split(" ")
    return ["Echo:"] + [" " + word for word in words]


def scenario(model: str, rec: RecordedRequest) -> Scenario:
    prompt = last_user_text(rec)
    tag = prompt[1 : prompt.index("]")] if prompt.startswith("[") and "]" in prompt else ""
    primary = model == "claude-primary"
    if tag == "slow":
        return Scenario(tokens=echo(prompt) + [" and", " more", " words", " to", " read"], token_delay=0.15)
    if tag == "error-before":
        return Scenario(kind="http_error", status=529)
    if tag == "error-after" and primary:
        return Scenario(tokens=["Partial", " text", " lost"], kind="stream_error", after_tokens=2)
    if tag == "fallback" and primary:
        return Scenario(kind="http_error", status=503)
    if tag == "restart" and primary:
        return Scenario(tokens=["Broken", " start", " never"], kind="drop", after_tokens=2)
    if tag == "restart":
        return Scenario(tokens=["Clean", " answer"])
    if tag == "stall":
        return Scenario(tokens=["Waiting", " forever"], kind="stall", after_tokens=1)
    return Scenario(tokens=echo(prompt))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedUpstream, RunningService]]:
    workdir = tmp_path_factory.mktemp("ui-chat")
    # Scripted failures must not open the circuits: every scenario reaches the model it names.
    settings = {"AI_MODELS": MODELS, "AI_API_KEYS": API_KEY, "AI_RATE_LIMIT_RPM": "0", "AI_KEEPALIVE_INTERVAL": "1",
                "AI_COOLDOWN_FAILURES": "1000"}
    with ThreadedUpstream() as upstream, run_service(service_env(upstream.fake, workdir, **settings), workdir) as service:
        for model in MODELS.split(","):
            name = model.partition("/")[2]
            upstream.call(upstream.fake.choose, name, lambda rec, name=name: scenario(name, rec))
        yield upstream, service


def node_modules(folder: Path) -> None:
    if shutil.which("node") is None:
        pytest.fail("node is not installed (Node 20 or newer is needed for tests/js)")
    if not (folder / "node_modules").is_dir():
        pytest.fail(f"run `npm ci` in {folder.relative_to(ROOT)} first (.ci/run does)")


def run_node(test_file: str, env: dict[str, str]) -> str:
    """`node --test` on one file of tests/js; its output (TAP), which must report every test passed."""
    done = subprocess.run(
        ["node", "--test", "--test-reporter=tap", test_file], cwd=JS_DIR, env={**os.environ, **env},
        capture_output=True, text=True, timeout=NODE_TIMEOUT,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    tests = re.search(r"^# tests (\d+)$", output, re.M)
    passed = re.search(r"^# pass (\d+)$", output, re.M)
    assert tests and passed and int(tests.group(1)) > 0 and tests.group(1) == passed.group(1), output
    return output


def test_the_sdk_reads_the_stream(stack: tuple[ThreadedUpstream, RunningService]) -> None:
    upstream, service = stack
    node_modules(JS_DIR)
    output = run_node("ui_chat.test.mjs", {"AI_STREAM_URL": service.base_url, "AI_STREAM_KEY": API_KEY.partition(":")[2]})
    assert re.search(r"^# pass (\d+)$", output, re.M).group(1) == "13", output  # type: ignore[union-attr]
    # The client's abort reached the model: the stalled request was closed by the service.
    aborted = [r for r in upstream.call(lambda: list(upstream.fake.disconnects)) if last_user_text(r).startswith("[stall]")]
    assert len(aborted) == 1 and aborted[0].disconnected


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_nextjs_example_in_chromium(stack: tuple[ThreadedUpstream, RunningService], tmp_path: Path) -> None:
    _, service = stack
    node_modules(JS_DIR)
    node_modules(EXAMPLE_DIR)
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: apt-get install chromium (.ci/run does)"
    env = {**os.environ, "NEXT_TELEMETRY_DISABLED": "1", "AI_STREAM_URL": service.base_url,
           "AI_STREAM_API_KEY": API_KEY.partition(":")[2]}
    build = subprocess.run(["npx", "next", "build"], cwd=EXAMPLE_DIR, env=env, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    port = free_port()
    log = (tmp_path / "next.log").open("wb")
    server = subprocess.Popen(
        ["npx", "next", "start", "-H", "127.0.0.1", "-p", str(port)], cwd=EXAMPLE_DIR, env=env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        app_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "next.log").read_text()
            try:
                requests.get(app_url, timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "next start did not listen"
                time.sleep(0.2)
        screenshot = tmp_path / "nextjs-chat.png"
        run_node("nextjs_browser.test.mjs", {"APP_URL": app_url, "CHROMIUM": CHROMIUM, "SCREENSHOT": str(screenshot)})
        assert screenshot.stat().st_size > 1000
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


