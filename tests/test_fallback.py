"""The provider chain: every trigger moves to the next model, every non-trigger does not."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.conftest import parse_events
from tests.fake_upstream import Scenario

CHAT = {"messages": [{"role": "user", "content": "Hello?"}]}


async def answer(client, body=None):
    resp = await client.post("/ai/stream/chat", json=body or CHAT)
    assert resp.status == 200
    return parse_events(await resp.read())


def texts(events):
    return "".join(e["text"] for e in events if e["type"] == "content")


def assert_one_terminal_last(events):
    kinds = [e["type"] for e in events]
    assert kinds[-1] in ("done", "error")
    assert kinds.count("done") + kinds.count("error") == 1


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(kind="http_error", status=529),
        Scenario(kind="http_error", status=500),
        Scenario(kind="http_error", status=502),
        Scenario(kind="http_error", status=503),
        Scenario(kind="http_error", status=429),  # no retry-after
        Scenario(kind="http_error", status=401),  # this model is misconfigured; another may work
        Scenario(kind="http_error", status=404),
        Scenario(kind="stream_error", error_type="overloaded_error"),  # inside a 200 stream
        Scenario(kind="stream_error", error_type="api_error"),
        Scenario(kind="drop"),
        Scenario(kind="malformed"),
        Scenario(first_token_delay=5.0),  # no first text within AI_FIRST_TOKEN_TIMEOUT
    ],
    ids=lambda s: f"{s.kind}-{s.status if s.kind == 'http_error' else s.error_type or s.first_token_delay}",
)
async def test_failure_before_text_falls_back(make_client, fake_upstream, scenario):
    client = await make_client(first_token_timeout=0.3)
    fake_upstream.script("claude-primary", scenario)
    events = await answer(client)
    assert_one_terminal_last(events)
    assert events[-1]["type"] == "done", events
    assert events[-1]["model"] == "claude-backup"  # `done` names the model that answered
    assert texts(events) == "Hello, world!"
    assert len(fake_upstream.requests_for("claude-primary")) == 1
    assert len(fake_upstream.requests_for("gpt-fallback")) == 0


async def test_falls_through_to_an_openai_compatible_model(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529))
    fake_upstream.script("claude-backup", Scenario(kind="stream_error"))
    events = await answer(client)
    assert events[-1]["type"] == "done"
    assert (events[-1]["model"], events[-1]["provider"]) == ("gpt-fallback", "openai")


async def test_openai_failures_before_text_fall_back_too(make_client, fake_upstream):
    client = await make_client(models="openai/gpt-a,openai/gpt-b,anthropic/claude-c")
    fake_upstream.script("gpt-a", Scenario(kind="stream_error"))
    fake_upstream.script("gpt-b", Scenario(kind="http_error", status=500))
    events = await answer(client)
    assert events[-1]["model"] == "claude-c"


async def test_connection_refused_falls_back(make_client, fake_upstream):
    # The OpenAI-compatible server is down (nothing listens on port 9 here).
    client = await make_client(models="openai/local-llm,anthropic/claude-backup", openai_base_url="http://127.0.0.1:9/v1")
    events = await answer(client)
    assert events[-1]["model"] == "claude-backup"


async def test_invalid_request_does_not_fall_back(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=400, error_message="UPSTREAM-DETAIL-42"))
    events = await answer(client)
    assert events == [
        {
            "type": "error",
            "error": "The model rejected the request as invalid (for example, the prompt is too long for it).",
            "code": "invalid_request",
            "answer_id": events[0]["answer_id"],
        }
    ]
    assert fake_upstream.requests_for("claude-backup") == []


FAILURES_AFTER_TEXT = [
    (Scenario(kind="stream_error", after_tokens=2), "upstream_unavailable"),
    (Scenario(kind="stream_error", after_tokens=2, error_type="api_error"), "upstream_unavailable"),
    (Scenario(kind="drop", after_tokens=2), "upstream_unavailable"),
    (Scenario(kind="malformed", after_tokens=2), "upstream_error"),
    (Scenario(kind="stall", after_tokens=2), "timeout"),
]


def _failure_id(value):
    if isinstance(value, Scenario):
        return value.kind + (" in one write" if value.one_write else "")
    return value


@pytest.mark.parametrize(
    "scenario, code",
    # Each failure also arrives in the same read as the text before it: that text still goes out first.
    FAILURES_AFTER_TEXT + [(replace(sc, one_write=True), code) for sc, code in FAILURES_AFTER_TEXT],
    ids=_failure_id,
)
async def test_failure_after_text_ends_with_error_and_never_switches(make_client, fake_upstream, scenario, code):
    client = await make_client(idle_timeout=0.3)
    fake_upstream.script("claude-primary", scenario)
    events = await answer(client)
    assert_one_terminal_last(events)
    assert [e["type"] for e in events] == ["content", "content", "error"]
    assert texts(events) == "Hello,"  # nothing repeated, nothing from another model
    assert events[-1]["code"] == code
    assert fake_upstream.requests_for("claude-backup") == []


@pytest.mark.parametrize("one_write", [False, True], ids=["event by event", "in one write"])
@pytest.mark.parametrize(
    "kind, code", [("stream_error", "upstream_error"), ("malformed", "upstream_error"), ("drop", "upstream_unavailable")]
)
async def test_openai_failure_after_text_keeps_the_text_before_it(make_client, fake_upstream, kind, code, one_write):
    client = await make_client(idle_timeout=0.3)
    fake_upstream.script("gpt-fallback", Scenario(kind=kind, after_tokens=2, one_write=one_write))
    events = await answer(client, {**CHAT, "model": "gpt-fallback"})
    assert_one_terminal_last(events)
    assert [e["type"] for e in events] == ["content", "content", "error"]
    assert texts(events) == "Hello,"
    assert events[-1]["code"] == code


async def test_short_retry_after_retries_the_same_model(make_client, fake_upstream):
    client = await make_client(retry_after_max=1.0)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=429, retry_after=0.2), Scenario())
    events = await answer(client)
    assert events[-1]["model"] == "claude-primary"
    primary = fake_upstream.requests_for("claude-primary")
    assert len(primary) == 2
    assert primary[1].received_at - primary[0].received_at >= 0.19
    assert fake_upstream.requests_for("claude-backup") == []


async def test_long_retry_after_moves_on_at_once(make_client, fake_upstream):
    client = await make_client(retry_after_max=1.0)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=429, retry_after=30))
    events = await answer(client)
    assert events[-1]["model"] == "claude-backup"
    assert len(fake_upstream.requests_for("claude-primary")) == 1
    backup = fake_upstream.requests_for("claude-backup")[0]
    assert backup.received_at - fake_upstream.requests_for("claude-primary")[0].received_at < 1.0


async def test_retry_after_is_honoured_once_only(make_client, fake_upstream):
    client = await make_client(retry_after_max=1.0)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=429, retry_after=0.05))
    events = await answer(client)
    assert events[-1]["model"] == "claude-backup"
    assert len(fake_upstream.requests_for("claude-primary")) == 2


@pytest.mark.parametrize(
    "scenario, code",
    [
        (Scenario(kind="http_error", status=529), "upstream_unavailable"),
        (Scenario(kind="http_error", status=429, retry_after=60), "rate_limited"),
        (Scenario(first_token_delay=5.0), "timeout"),
        (Scenario(kind="stream_error"), "upstream_unavailable"),
    ],
    ids=["overloaded", "rate_limited", "timeout", "stream_error"],
)
async def test_every_model_failing_gives_one_error_event(make_client, fake_upstream, scenario, code):
    client = await make_client(first_token_timeout=0.2)
    for model in ("claude-primary", "claude-backup", "gpt-fallback"):
        fake_upstream.script(model, scenario)
    events = await answer(client)
    assert len(events) == 1
    assert events[0]["type"] == "error" and events[0]["code"] == code
    assert events[0]["error"].startswith("No model could answer (3 models tried).")
    assert len(fake_upstream.requests) == 3


async def test_mixed_failures_report_the_transient_one(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529))
    fake_upstream.script("claude-backup", Scenario(kind="http_error", status=401))
    fake_upstream.script("gpt-fallback", Scenario(kind="http_error", status=404))
    events = await answer(client)
    assert events[0]["code"] == "upstream_unavailable"


async def test_request_timeout_bounds_the_whole_request(make_client, fake_upstream):
    client = await make_client(request_timeout=0.5, idle_timeout=30)
    fake_upstream.script("claude-primary", Scenario(kind="stall", after_tokens=1))
    events = await answer(client)
    assert [e["type"] for e in events] == ["content", "error"]
    assert events[-1]["code"] == "timeout"


async def test_model_without_credentials_is_skipped(make_client, fake_upstream):
    client = await make_client(models="openai/gpt-first,anthropic/claude-second", openai_api_key=None)
    events = await answer(client)
    assert events[-1]["model"] == "claude-second"
    assert fake_upstream.requests_for("gpt-first") == []


async def test_no_model_with_credentials_is_a_503(make_client, fake_upstream):
    client = await make_client(anthropic_api_key=None, openai_api_key=None)
    resp = await client.post("/ai/stream/chat", json=CHAT)
    assert resp.status == 503
    assert (await resp.json())["code"] == "no_models_available"
    assert fake_upstream.requests == []


async def test_stream_false_failure_after_all_models_is_json(client, fake_upstream):
    for model in ("claude-primary", "claude-backup", "gpt-fallback"):
        fake_upstream.script(model, Scenario(kind="http_error", status=529))
    resp = await client.post("/ai/stream/chat", json={**CHAT, "stream": False})
    assert resp.status == 503
    body = await resp.json()
    assert body["code"] == "upstream_unavailable" and body["details"] == []


async def test_stream_false_timeout_is_504(make_client, fake_upstream):
    client = await make_client(first_token_timeout=0.1, models="anthropic/claude-primary")
    fake_upstream.script("claude-primary", Scenario(first_token_delay=2))
    resp = await client.post("/ai/stream/chat", json={**CHAT, "stream": False})
    assert resp.status == 504
    assert (await resp.json())["code"] == "timeout"
