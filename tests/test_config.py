"""Start-up: settings from the environment, one clear line for a bad one, and a real server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

import aiohttp
import pytest

from service.settings import ConfigError, load_settings


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"AI_MODELS": "foo/bar"}, "AI_MODELS"),
        ({"AI_MODELS": "anthropic"}, "AI_MODELS"),
        ({"AI_MODELS": "anthropic/a,,openai/b"}, "AI_MODELS"),
        ({"AI_MODELS": ""}, "AI_MODELS"),
        ({"AI_FIRST_TOKEN_TIMEOUT": "-1"}, "AI_FIRST_TOKEN_TIMEOUT"),
        ({"AI_REQUEST_TIMEOUT": "soon"}, "AI_REQUEST_TIMEOUT"),
        ({"PORT": "99999"}, "PORT"),
        ({"AI_DEFAULT_TIMEZONE": "Mars/Olympus"}, "AI_DEFAULT_TIMEZONE"),
        ({"AI_DATE_CONTEXT": "maybe"}, "AI_DATE_CONTEXT"),
        ({"AI_LOG_FORMAT": "xml"}, "AI_LOG_FORMAT"),
        ({"AI_DEFAULT_MAX_TOKENS": "9000"}, "AI_DEFAULT_MAX_TOKENS"),
    ],
)
async def test_bad_setting_stops_start_with_one_line(env, variable, tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service",
        env={**_base_env(), **env},
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, stderr.decode()
    assert lines[0].startswith(f"ai-stream: invalid setting {variable}:")
    assert "Traceback" not in stderr.decode()


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("AI_MODELS", " openai/gpt-4o-mini , anthropic/claude-haiku-4-5 ")
    monkeypatch.setenv("AI_FIRST_TOKEN_TIMEOUT", "3.5")
    monkeypatch.setenv("AI_DATE_CONTEXT", "false")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    settings = load_settings()
    assert settings.models == ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]
    assert settings.first_token_timeout == 3.5 and settings.date_context is False
    endpoints = {e.name: e for e in settings.catalog.endpoints}
    assert endpoints["openai"].api_key == "sk-x" and endpoints["anthropic"].api_key is None
    assert "sk-x" not in repr(settings)


def test_defaults_match_the_contract():
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.models == ["anthropic/claude-sonnet-4-5", "anthropic/claude-haiku-4-5"]
    assert (settings.first_token_timeout, settings.request_timeout) == (20, 120)
    assert (settings.default_max_tokens, settings.max_tokens_limit) == (1024, 8192)
    assert settings.default_timezone == "UTC" and settings.date_context is True
    assert settings.max_body_bytes == 1048576


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("AI_MODELS=openai/from-dotenv\n")
    assert load_settings().models == ["openai/from-dotenv"]


def test_config_error_names_variable_not_value():
    with pytest.raises(ConfigError, match="^invalid setting AI_MODELS: unknown endpoint 'x'"):
        load_settings(models="x/y")


async def test_python_m_service_serves_health_and_streams(tmp_path, fake_upstream):
    port = _free_port()
    env = service_env(fake_upstream, port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            health = await _wait_for_health(session, port)
            assert health["status"] == "ok" and health["model"] == "claude-primary"
            async with session.post(f"http://127.0.0.1:{port}/ai/stream/generate", json={"prompt": "hi"}) as resp:
                body = await resp.read()
            assert body.endswith(b'"usage":{"input_tokens":11,"output_tokens":4},"answer_id":"'
                                 + resp.headers["X-Answer-ID"].encode() + b'"}\n\n')
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode in (0, -15)
    # One JSON line per request; no key or prompt text in the log.
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request"]
    assert {r["route"] for r in requests} == {"/health", "/ai/stream/generate"}
    stream_line = next(r for r in requests if r["route"] == "/ai/stream/generate")
    assert stream_line["outcome"] == "done" and stream_line["model"] == "claude-primary"
    assert stream_line["output_tokens"] == 4 and stream_line["ttft_ms"] is not None
    assert "sk-ant-test" not in stderr.decode()


def service_env(fake_upstream, port: int, **settings: str) -> dict[str, str]:
    """The environment of a real `python -m service` in front of the fake upstream."""
    return {
        **_base_env(),
        "PORT": str(port),
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": fake_upstream.base_url,
        "AI_MODELS": "anthropic/claude-primary",
        "AI_LOG_FORMAT": "json",
        "AI_SHED_LOOP_LAG_MS": "0",  # a test machine's loop lags with whatever else runs on it
        **settings,
    }


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "SYSTEMROOT", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k in keep}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_for_health(session: aiohttp.ClientSession, port: int) -> dict:
    for _ in range(200):
        try:
            async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                return await resp.json()
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    raise AssertionError("the service did not start")
