"""The `openai` npm package against the real service process (`python -m service`) and the fake
upstream: `node --test tests/js/openai-sdk.test.mjs` must pass (its dependencies are installed
by `npm ci` in tests/js, as .ci/run does)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import MODELS
from tests.fake_upstream import Scenario
from tests.test_fuzz import ThreadedUpstream, run_service, service_env

JS_DIR = Path(__file__).resolve().parent / "js"
KEY = "js-client-0123456789abcdef"


def test_openai_npm_package(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed for the JavaScript tests"
    assert (JS_DIR / "node_modules" / "openai").is_dir(), "run `npm ci` in tests/js first"
    with ThreadedUpstream() as upstream:
        upstream.call(upstream.fake.script, "claude-backup", Scenario(kind="stream_error", after_tokens=2))
        env = service_env(upstream.fake, tmp_path, AI_MODELS=MODELS, AI_API_KEYS=f"js:{KEY}")
        with run_service(env, tmp_path) as service:
            result = subprocess.run(
                [node, "--test", "openai-sdk.test.mjs"], cwd=JS_DIR, capture_output=True, text=True, timeout=120,
                env={"PATH": "/usr/bin:/bin", "AI_STREAM_URL": service.base_url, "AI_STREAM_KEY": KEY},
            )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 6" in result.stdout and "# fail 0" in result.stdout, result.stdout[-2000:]
