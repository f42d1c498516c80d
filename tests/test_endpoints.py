"""Any number of endpoints: several fake upstreams on their own ports, each with its own key and
headers, in one chain; per-model options; and each misconfiguration stopping the start."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from service.app import create_app
from service.app_keys import REGISTRY
from service.settings import ConfigError, load_settings
from tests.conftest import parse_events
from tests.fake_upstream import FakeUpstream, RecordedRequest, Scenario
from tests.test_config import _base_env, _free_port, _wait_for_health

CLAUDE_KEY = "sk-ant-endpoint-one-0001"
GROQ_KEY = "gsk-endpoint-two-0002"
ROUTER_KEY = "sk-or-endpoint-three-0003"
KEYS = (CLAUDE_KEY, GROQ_KEY, ROUTER_KEY)
ROUTER_HEADERS = {"HTTP-Referer": "https://app.example.com", "X-Title": "ai-stream tests"}
GROQ_HEADERS = {"X-Groq-Team": "team-42"}
CHAT = {"messages": [{"role": "user", "content": "Hello?"}]}


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream, FakeUpstream]]:
    """Three model servers, each on its own free port."""
    async with FakeUpstream() as claude, FakeUpstream() as groq, FakeUpstream() as router:
        yield claude, groq, router


def chain_env(claude: FakeUpstream, groq: FakeUpstream, router: FakeUpstream) -> dict[str, str]:
    """Claude through the built-in endpoint, and two OpenAI-compatible hosts configured by name."""
    return {
        "AI_MODELS": "anthropic/claude-a,groq/llama-x,openrouter/meta-llama/llama-4",
        "ANTHROPIC_API_KEY": CLAUDE_KEY,
        "ANTHROPIC_BASE_URL": claude.base_url,
        "AI_ENDPOINT_GROQ_API": "openai",
        "AI_ENDPOINT_GROQ_BASE_URL": groq.openai_base_url,
        "AI_ENDPOINT_GROQ_API_KEY": GROQ_KEY,
        "AI_ENDPOINT_GROQ_HEADERS": json.dumps(GROQ_HEADERS),
        "AI_ENDPOINT_OPENROUTER_API": "openai",
        "AI_ENDPOINT_OPENROUTER_BASE_URL": router.openai_base_url,
        "AI_ENDPOINT_OPENROUTER_API_KEY": ROUTER_KEY,
        "AI_ENDPOINT_OPENROUTER_HEADERS": json.dumps(ROUTER_HEADERS),
        # Meant for OpenAI's own API: no other host may receive it.
        "OPENAI_ORG_ID": "org-not-for-other-hosts",
    }


def sent_key(request: RecordedRequest) -> str | None:
    """The API key a request carried (either SDK's way of sending it)."""
    return request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ") or None


def assert_sees_only(request: RecordedRequest, key: str, headers: dict[str, str], others: list[str]) -> None:
    """The upstream got its own key and headers, and nothing of another endpoint's."""
    sent = request.headers
    assert sent_key(request) == key
    for name, value in headers.items():
        assert sent[name.lower()] == value
    values = "\n".join(sent.values())
    for other in [k for k in KEYS if k != key] + others:
        assert other not in values
    assert "openai-organization" not in sent


async def test_a_chain_over_three_endpoints_falls_back_in_order(upstreams, tmp_path):
    claude, groq, router = upstreams
    claude.script("claude-a", Scenario(kind="http_error", status=529))
    groq.script("llama-x", Scenario(kind="http_error", status=503))
    router.script("meta-llama/llama-4", Scenario(tokens=["from ", "the ", "router"]))
    port = _free_port()
    env = {**_base_env(), **chain_env(*upstreams), "PORT": str(port), "AI_LOG_FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            health = await _wait_for_health(session, port)
            async with session.post(f"http://127.0.0.1:{port}/ai/stream/chat", json=CHAT) as resp:
                events = parse_events(await resp.read())
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)

    assert events[-1]["type"] == "done"
    assert (events[-1]["model"], events[-1]["provider"]) == ("meta-llama/llama-4", "openrouter")
    assert "".join(e["text"] for e in events if e["type"] == "content") == "from the router"
    # In order, once each, each with only its own credentials and headers.
    (to_claude,), (to_groq,), (to_router,) = claude.requests, groq.requests, router.requests
    assert to_claude.received_at < to_groq.received_at < to_router.received_at
    assert (to_claude.api, to_groq.api, to_router.api) == ("anthropic", "openai", "openai")
    assert to_router.model == "meta-llama/llama-4"  # the model name keeps its own `/`
    assert_sees_only(to_claude, CLAUDE_KEY, {}, [*GROQ_HEADERS.values(), *ROUTER_HEADERS.values()])
    assert_sees_only(to_groq, GROQ_KEY, GROQ_HEADERS, list(ROUTER_HEADERS.values()))
    assert_sees_only(to_router, ROUTER_KEY, ROUTER_HEADERS, list(GROQ_HEADERS.values()))
    assert "max_tokens" in to_groq.body and "max_completion_tokens" not in to_groq.body

    # The log line names the endpoint of each failed attempt.
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    (chat,) = [line for line in lines if line.get("route") == "/ai/stream/chat"]
    assert chat["attempts"] == ["anthropic/claude-a:upstream_unavailable", "groq/llama-x:upstream_unavailable"]
    assert (chat["outcome"], chat["provider"], chat["model"]) == ("done", "openrouter", "meta-llama/llama-4")
    assert not any(key in stderr.decode() for key in KEYS)

    assert health["endpoints"] == [
        {"name": "anthropic", "api": "anthropic", "has_credentials": True},
        {"name": "groq", "api": "openai", "has_credentials": True},
        {"name": "openrouter", "api": "openai", "has_credentials": True},
    ]
    assert [(m["name"], m["endpoint"], m["api"], m["model"]) for m in health["models"]] == [
        ("anthropic/claude-a", "anthropic", "anthropic", "claude-a"),
        ("groq/llama-x", "groq", "openai", "llama-x"),
        ("openrouter/meta-llama/llama-4", "openrouter", "openai", "meta-llama/llama-4"),
    ]


# In the process: settings from the environment (set per test) and the `AI_CONFIG` file.


@pytest.fixture
def use_chain(monkeypatch, upstreams):
    def use(**extra: str) -> None:
        for name, value in {**chain_env(*upstreams), **extra}.items():
            monkeypatch.setenv(name, value)

    return use


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ai-stream.toml"
    path.write_text(text)
    return path


async def start(aiohttp_client, **overrides: Any):
    settings = load_settings(request_timeout=10.0, shed_loop_lag_ms=0, **overrides)
    return await aiohttp_client(create_app(settings))


async def chat(client, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    resp = await client.post("/ai/stream/chat", json=body or CHAT)
    assert resp.status == 200, await resp.text()
    return parse_events(await resp.read())


def request_line(logs: list[dict[str, Any]]) -> dict[str, Any]:
    (line,) = [entry for entry in logs if entry.get("event") == "request" and entry.get("route") == "/ai/stream/chat"]
    return line


@pytest.mark.parametrize("own_timeout", [True, False], ids=["own timeout", "global timeout"])
async def test_a_model_with_its_own_first_token_timeout_may_start_slowly(aiohttp_client, use_chain, upstreams, tmp_path, own_timeout):
    claude, groq, router = upstreams
    use_chain(AI_FIRST_TOKEN_TIMEOUT="0.2")
    # Slower to start than AI_FIRST_TOKEN_TIMEOUT allows, well within its own timeout.
    groq.script("llama-x", Scenario(first_token_delay=0.6))
    claude.script("claude-a", Scenario(first_token_delay=0.6))
    options = "first_token_timeout = 30" if own_timeout else ""
    config = write_config(tmp_path, f'[[models]]\nname = "groq/llama-x"\n{options}\n')
    client = await start(aiohttp_client, config=config)
    with capture_logs() as logs:
        events = await chat(client)
    line = request_line(logs)
    if own_timeout:
        assert events[-1]["model"] == "llama-x"
        assert line["attempts"] == ["anthropic/claude-a:timeout"]
        assert router.requests == []
    else:
        assert events[-1]["model"] == "meta-llama/llama-4"
        assert line["attempts"] == ["anthropic/claude-a:timeout", "groq/llama-x:timeout"]


async def test_a_failure_after_text_names_its_endpoint_in_the_log_line(aiohttp_client, use_chain, upstreams):
    claude, groq, router = upstreams
    use_chain()
    claude.script("claude-a", Scenario(kind="http_error", status=500))
    groq.script("llama-x", Scenario(kind="drop", after_tokens=2))
    client = await start(aiohttp_client)
    with capture_logs() as logs:
        events = await chat(client)
    assert [e["type"] for e in events] == ["content", "content", "error"]
    line = request_line(logs)
    assert line["attempts"] == ["anthropic/claude-a:upstream_unavailable"]
    assert (line["error_code"], line["error_model"]) == ("upstream_unavailable", "groq/llama-x")
    assert router.requests == []


async def test_when_every_endpoint_fails_the_log_names_each(aiohttp_client, use_chain, upstreams):
    claude, groq, router = upstreams
    use_chain()
    claude.script("claude-a", Scenario(kind="http_error", status=529))
    groq.script("llama-x", Scenario(kind="http_error", status=401))
    router.script("meta-llama/llama-4", Scenario(kind="http_error", status=429))
    client = await start(aiohttp_client)
    with capture_logs() as logs:
        events = await chat(client)
    assert events[-1]["code"] == "rate_limited"
    line = request_line(logs)
    assert line["attempts"] == [
        "anthropic/claude-a:upstream_unavailable",
        "groq/llama-x:authentication_failed",
        "openrouter/meta-llama/llama-4:rate_limited",
    ]
    assert line["error_model"] == "openrouter/meta-llama/llama-4"


async def test_health_lists_endpoints_without_keys_headers_or_addresses(aiohttp_client, use_chain, upstreams, monkeypatch):
    claude, groq, router = upstreams
    # A base URL with credentials in it, and an endpoint with no key at all.
    with_password = groq.openai_base_url.replace("http://", "http://user:hunter2-password@")
    use_chain(AI_ENDPOINT_GROQ_BASE_URL=with_password, AI_ENDPOINT_SPARE_API="anthropic",
              AI_ENDPOINT_SPARE_BASE_URL=claude.base_url)
    client = await start(aiohttp_client)
    text = await (await client.get("/health")).text()
    for secret in [*KEYS, "hunter2", "team-42", "app.example.com", *ROUTER_HEADERS.values()]:
        assert secret not in text
    for upstream in upstreams:
        assert upstream.base_url.removeprefix("http://") not in text
    body = json.loads(text)
    assert body["status"] == "ok"  # an endpoint without a key that no model uses degrades nothing
    assert [(e["name"], e["has_credentials"]) for e in body["endpoints"]] == [
        ("anthropic", True), ("groq", True), ("openrouter", True), ("spare", False)
    ]


async def test_a_toml_file_defines_endpoints_the_chain_and_aliases(aiohttp_client, upstreams, monkeypatch, tmp_path):
    claude, groq, router = upstreams
    monkeypatch.setenv("AI_ENDPOINT_LOCAL_API_KEY", GROQ_KEY)  # the variable wins over the file
    config = write_config(tmp_path, f"""
[endpoints.local]
api = "openai"
base_url = "{groq.openai_base_url}"
api_key = "from-the-file"
headers = {{ "X-Groq-Team" = "team-42" }}

[endpoints.claude]
api = "anthropic"
base_url = "{claude.base_url}"
api_key = "{CLAUDE_KEY}"

[[models]]
name = "claude/claude-a"
alias = "sonnet"

[[models]]
name = "local/qwen3-8b"
alias = "qwen"
history_token_budget = 6000
""")
    client = await start(aiohttp_client, config=config)
    events = await chat(client, {**CHAT, "model": "qwen"})
    assert (events[-1]["provider"], events[-1]["model"]) == ("local", "qwen3-8b")
    assert claude.requests == []
    (sent,) = groq.requests
    assert sent_key(sent) == GROQ_KEY and sent.headers["x-groq-team"] == "team-42"
    events = await chat(client, {**CHAT, "model": "sonnet"})
    assert (events[-1]["provider"], events[-1]["model"]) == ("claude", "claude-a")
    assert sent_key(claude.requests[0]) == CLAUDE_KEY

    health = await (await client.get("/health")).json()
    assert [(m["name"], m["alias"]) for m in health["models"]] == [("claude/claude-a", "sonnet"), ("local/qwen3-8b", "qwen")]
    assert [e["name"] for e in health["endpoints"]] == ["claude", "local"]
    # Read by the conversation code; nothing else uses it yet.
    registry = client.app[REGISTRY]
    assert registry.info_for("local/qwen3-8b").options.history_token_budget == 6000


async def test_max_tokens_is_checked_against_the_named_model_and_lowered_for_a_fallback(aiohttp_client, use_chain, upstreams, tmp_path):
    claude, groq, router = upstreams
    use_chain()
    config = write_config(tmp_path, '[[models]]\nname = "groq/llama-x"\nmax_tokens_limit = 100\n')
    client = await start(aiohttp_client, config=config)
    resp = await client.post("/ai/stream/chat", json={**CHAT, "model": "groq/llama-x", "max_tokens": 500})
    assert resp.status == 400
    assert (await resp.json())["details"] == [{"field": "max_tokens", "message": "max_tokens must be at most 100"}]
    assert groq.requests == []

    claude.script("claude-a", Scenario(kind="http_error", status=529))
    events = await chat(client, {**CHAT, "max_tokens": 500})
    assert events[-1]["model"] == "llama-x"
    assert claude.requests[0].body["max_tokens"] == 500
    assert groq.requests[0].body["max_tokens"] == 100  # lowered to the fallback's own limit


async def test_temperature_is_left_out_for_a_model_that_takes_none(aiohttp_client, use_chain, upstreams, tmp_path):
    claude, groq, router = upstreams
    use_chain(AI_MODELS="groq/llama-x,openrouter/meta-llama/llama-4")
    config = write_config(tmp_path, '[[models]]\nname = "groq/llama-x"\ntemperature = false\n')
    client = await start(aiohttp_client, config=config)
    groq.script("llama-x", Scenario(kind="http_error", status=503))
    events = await chat(client, {**CHAT, "temperature": 0.3})
    assert events[-1]["model"] == "meta-llama/llama-4"
    assert "temperature" not in groq.requests[0].body
    assert router.requests[0].body["temperature"] == 0.3


def test_built_in_endpoints_mean_what_they_meant(monkeypatch):
    def openai_endpoint(**overrides: Any):
        settings = load_settings(models="openai/gpt-x", openai_api_key="sk-openai-0000", **overrides)
        (endpoint,) = settings.catalog.endpoints
        return endpoint

    own = openai_endpoint()
    assert (own.name, own.api, own.base_url, own.max_tokens_field) == ("openai", "openai", None, "max_completion_tokens")
    monkeypatch.setenv("AI_ENDPOINT_OPENAI_API_KEY", "sk-openai-1111")  # the endpoint's own variable wins
    assert openai_endpoint().api_key == "sk-openai-1111"
    assert "sk-openai" not in repr(load_settings(openai_api_key="sk-openai-0000").catalog)


@pytest.mark.parametrize("field", [None, "max_completion_tokens"])
async def test_the_built_in_openai_endpoint_with_a_base_url_sends_max_tokens_unless_told(aiohttp_client, upstreams, monkeypatch, field):
    claude, groq, router = upstreams
    if field is not None:
        monkeypatch.setenv("AI_ENDPOINT_OPENAI_MAX_TOKENS_FIELD", field)
    client = await start(aiohttp_client, models="openai/gpt-x", openai_api_key="sk-openai-0000", openai_base_url=groq.openai_base_url)
    await chat(client, {**CHAT, "max_tokens": 77})
    body = groq.requests[0].body
    assert body[field or "max_tokens"] == 77
    assert {"max_tokens", "max_completion_tokens"} - {field or "max_tokens"} & body.keys() == set()


def test_a_custom_openai_dialect_endpoint_sends_max_tokens(monkeypatch):
    monkeypatch.setenv("AI_ENDPOINT_LOCAL_API", "openai")
    monkeypatch.setenv("AI_ENDPOINT_LOCAL_BASE_URL", "http://127.0.0.1:9/v1")
    (endpoint,) = load_settings(models="local/qwen3-8b").catalog.endpoints
    assert (endpoint.name, endpoint.max_tokens_field, endpoint.has_credentials) == ("local", None, False)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"ANTHROPIC_API_KEY": "sk-ant-lazy", "AI_MODELS": "anthropic/claude-a"}, ["1", "True", "False"]),
        ({"OPENAI_API_KEY": "sk-openai-lazy", "AI_MODELS": "openai/gpt-a"}, ["1", "False", "True"]),
    ],
    ids=["anthropic only", "openai only"],
)
async def test_an_sdk_is_imported_only_when_an_endpoint_speaks_its_dialect(tmp_path, env, expected):
    # The model's request is also captured from its SDK (as the first answer does; nothing is
    # sent): that must not bring the other SDK in either.
    script = (
        "import asyncio, sys\n"
        "from service.app import create_app\n"
        "from providers.factory import ModelRegistry\n"
        "from service.settings import load_settings\n"
        "settings = load_settings()\n"
        "registry = ModelRegistry(settings.catalog)\n"
        "model = registry.models[0]\n"
        "async def capture():\n"
        "    await model.upstream.template(model.model, model._sdk_stream)\n"
        "    await registry.close()\n"
        "asyncio.run(capture())\n"
        "print(len(registry.models), 'anthropic' in sys.modules, 'openai' in sys.modules)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env={**_base_env(), **env}, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert stdout.decode().split() == expected, stderr.decode()


# Misconfigurations: one line naming the variable (or the file and line), exit status 2.

BAD_CONFIGURATIONS = [
    ({"AI_ENDPOINT_GEM_API": "gemini", "AI_ENDPOINT_GEM_BASE_URL": "http://127.0.0.1:9"}, None,
     "invalid setting AI_ENDPOINT_GEM_API: unknown api 'gemini' for endpoint 'gem' (known: anthropic, openai)"),
    ({"AI_ENDPOINT_LOCAL_API": "openai", "AI_MODELS": "local/qwen3-8b"}, None,
     "invalid setting AI_ENDPOINT_LOCAL_BASE_URL: endpoint 'local' needs a base URL"),
    ({"AI_MODELS": "anthropic/claude-a,nowhere/model-x"}, None,
     "invalid setting AI_MODELS: unknown endpoint 'nowhere' in 'nowhere/model-x' (known: anthropic, openai)"),
    ({"AI_ENDPOINT_LOCAL_API": "openai", "AI_ENDPOINT_LOCAL_BASE_URL": "http://127.0.0.1:9/v1",
      "AI_ENDPOINT_LOCAL_HEADERS": '{"X-Title": "app",}'}, None,
     "invalid setting AI_ENDPOINT_LOCAL_HEADERS: not valid JSON (Expecting property name enclosed in double quotes at column 19)"),
    ({"AI_ENDPOINT_LOCAL_HEADERS": '["X-Title"]'}, None, "invalid setting AI_ENDPOINT_LOCAL_HEADERS: must be a JSON object"),
    ({}, '[endpoints.local]\napi = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nheaders = { "X-Title" = }\n',
     "invalid setting AI_CONFIG: {path} line 4, column 25: Invalid value"),
    ({}, '[endpoints.local]\napi = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n\n[endpoints.gem]\napi = "gemini"\n',
     "invalid setting AI_CONFIG: {path} line 6: unknown api 'gemini' for endpoint 'gem'"),
    ({}, '[endpoints.local]\napi = "openai"\n',
     "invalid setting AI_CONFIG: {path} line 1: endpoint 'local' needs a base URL"),
    ({"AI_MODELS": "anthropic/claude-a"}, '[[models]]\nname = "anthropic/claude-a"\n\n[[models]]\nname = "anthropic/claude-b"\n',
     "invalid setting AI_CONFIG: {path} line 5: model 'anthropic/claude-b' is not in AI_MODELS"),
    ({}, '[[models]]\nname = "anthropic/claude-a"\nfirst_token_timeout = "slow"\n',
     "invalid setting AI_CONFIG: {path} line 3: first_token_timeout of 'anthropic/claude-a' must be a number greater than 0"),
    ({}, '[[models]]\nname = "anthropic/claude-a"\nmax_tokens_limit = 100000\n',
     "invalid setting AI_CONFIG: {path} line 3: max_tokens_limit of 'anthropic/claude-a' must not exceed AI_MAX_TOKENS_LIMIT (8192)"),
    ({}, '[[models]]\nname = "anthropic/claude-a"\nalias = "claude-b"\n[[models]]\nname = "anthropic/claude-b"\n',
     "invalid setting AI_CONFIG: {path} line 3: alias 'claude-b' of 'anthropic/claude-a' is also the name of 'anthropic/claude-b'"),
    ({}, '[[models]]\nname = "anthropic/claude-a"\ntemprature = false\n',
     "invalid setting AI_CONFIG: {path} line 3: unknown key 'temprature' in [[models]]"),
    ({"AI_CONFIG": "missing.toml"}, None, "invalid setting AI_CONFIG: cannot read missing.toml: No such file or directory"),
    ({"AI_ENDPOINT_LOCAL_BASEURL": "http://127.0.0.1:9"}, None,
     "invalid setting AI_ENDPOINT_LOCAL_BASEURL: not an endpoint setting"),
    ({"AI_ENDPOINT_ANTHROPIC_API": "openai"}, None,
     "invalid setting AI_ENDPOINT_ANTHROPIC_API: the built-in endpoint 'anthropic' speaks anthropic"),
    # The value may hold a password: the message names the variable only.
    ({"AI_ENDPOINT_LOCAL_API": "openai", "AI_ENDPOINT_LOCAL_BASE_URL": "ftp://user:hunter2@127.0.0.1/v1"}, None,
     "invalid setting AI_ENDPOINT_LOCAL_BASE_URL: the base URL of endpoint 'local' must be an http:// or https:// URL"),
]
REQUIRED = BAD_CONFIGURATIONS[:4] + BAD_CONFIGURATIONS[5:6]  # the ones a real start is also tried with


def _case_id(case: tuple[dict[str, str], str | None, str]) -> str:
    return case[2].split(":")[1].strip() + ("" if case[1] is None else " (file)") + ": " + case[2].split(":", 2)[-1][:40].strip()


@pytest.mark.parametrize("env, file, expected", BAD_CONFIGURATIONS, ids=[_case_id(c) for c in BAD_CONFIGURATIONS])
def test_a_bad_configuration_names_what_to_fix(monkeypatch, tmp_path, env, file, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if file is not None:
        monkeypatch.setenv("AI_CONFIG", str(write_config(tmp_path, file)))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(expected.format(path=tmp_path / "ai-stream.toml")), message
    assert "hunter2" not in message


@pytest.mark.parametrize("env, file, expected", REQUIRED, ids=[_case_id(c) for c in REQUIRED])
async def test_a_bad_configuration_stops_the_start_with_one_line(tmp_path, env, file, expected):
    env = {**_base_env(), **env}
    if file is not None:
        env["AI_CONFIG"] = str(write_config(tmp_path, file))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, stderr.decode()
    assert lines[0].startswith("ai-stream: " + expected.format(path=tmp_path / "ai-stream.toml")), lines[0]


def _readme_block(language: str, containing: str) -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", readme, re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


CHAIN = ["anthropic/claude-sonnet-4-5", "openai/gpt-5-mini", "local/qwen3-8b", "openrouter/meta-llama/llama-4"]


def test_the_readme_chain_configured_by_variables_alone(monkeypatch):
    for line in _readme_block("sh", "AI_ENDPOINT_LOCAL_API").strip().splitlines():
        name, _, value = line.partition("=")
        monkeypatch.setenv(name, value)
    catalog = load_settings().catalog
    assert [m.name for m in catalog.models] == CHAIN
    assert [(e.name, e.api, e.has_credentials) for e in catalog.endpoints] == [
        ("anthropic", "anthropic", True), ("local", "openai", True), ("openai", "openai", True), ("openrouter", "openai", True)
    ]
    (router,) = [e for e in catalog.endpoints if e.name == "openrouter"]
    assert dict(router.headers) == {"HTTP-Referer": "https://app.example.com", "X-Title": "Example"}


def test_the_readme_chain_configured_by_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("AI_CONFIG", str(write_config(tmp_path, _readme_block("toml", "[endpoints.local]"))))
    catalog = load_settings(anthropic_api_key="sk-ant-x", openai_api_key="sk-x").catalog
    assert [m.name for m in catalog.models] == CHAIN
    local = catalog.resolve("qwen3-8b")
    assert local is not None and (local.options.first_token_timeout, local.options.max_tokens_limit) == (60, 4096)
    assert catalog.resolve("sonnet").name == "anthropic/claude-sonnet-4-5"
    assert catalog.resolve("meta-llama/llama-4").options.temperature is False
    (router,) = [e for e in catalog.endpoints if e.name == "openrouter"]
    assert not router.has_credentials and dict(router.headers)["X-Title"] == "Example"


def test_endpoint_variables_are_read_from_the_dotenv_file_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "AI_MODELS=local/qwen3-8b\nAI_ENDPOINT_LOCAL_API=openai\n"
        "AI_ENDPOINT_LOCAL_BASE_URL=http://127.0.0.1:9/v1\nAI_ENDPOINT_LOCAL_API_KEY=from-dotenv\n"
    )
    monkeypatch.setenv("AI_ENDPOINT_LOCAL_API_KEY", "from-environment")  # the environment wins, as for every setting
    (endpoint,) = load_settings().catalog.endpoints
    assert (endpoint.name, endpoint.base_url, endpoint.api_key) == ("local", "http://127.0.0.1:9/v1", "from-environment")
