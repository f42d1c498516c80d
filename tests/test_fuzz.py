"""Fuzz openapi.yaml against the running service with schemathesis.

The service runs as `python -m service` (its real entry point) on 127.0.0.1, with the fake
upstream (tests/fake_upstream.py) on its own event loop in a thread behind it and an SQLite
store in a temporary folder. Schemathesis generates requests for every operation of the
document (its examples, boundary and negative "coverage" cases, unsupported methods, then
random valid and invalid data) and checks every answer: no 5xx, a documented status, content
type and headers, invalid data rejected, and a body matching the documented schema. The
events of a `text/event-stream` answer are checked against StreamEvent here.

`test_thread_answers_conform` adds what random data hardly reaches: an existing thread, read
a page at a time and deleted. The process helpers are in tests/support/processes.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.compat_wire import DONE as CHUNKS_DONE
from tests.compat_wire import parse_chunks, parse_message_events
from tests.conftest import parse_events
from tests.fake_upstream import Scenario
from tests.support.processes import (  # noqa: F401
    RunningService,
    ThreadedUpstream,
    run_service,
    service_env,
)
from tests.ui_stream import DONE, parse_ui_chunks

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "openapi.yaml"


# --- the fuzz run --------------------------------------------------------------------------

SPEC = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
STREAM_EVENT = Draft202012Validator({"$ref": "#/components/schemas/StreamEvent", "components": SPEC["components"]})
# The document's own model names, so that its examples name configured models. A request for
# the second fails over to the third, which breaks off mid-answer: streams that end in an
# `error` event, and 502 answers with "stream": false.
FUZZ_MODELS = "anthropic/claude-sonnet-4-5,anthropic/claude-haiku-4-5,openai/gpt-4o"
SCRIPTS = {"claude-haiku-4-5": Scenario(kind="http_error", status=529),
           "gpt-4o": Scenario(kind="stream_error", after_tokens=1)}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          negative_data_rejection, unsupported_method]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    workdir = tmp_path_factory.mktemp("fuzz")
    # No rate limit: the run sends hundreds of requests a minute from one address, and the
    # limiter's 429s are not what it is about.
    env_settings = {"AI_MODELS": FUZZ_MODELS, "AI_RATE_LIMIT_RPM": "0"}
    with ThreadedUpstream() as upstream, run_service(service_env(upstream.fake, workdir, **env_settings), workdir) as running:
        for model, scenario in SCRIPTS.items():
            upstream.call(upstream.fake.script, model, scenario)
        yield running


# 502/503/504 are the documented answers of `"stream": false` when the models fail (as scripted
# above); a 500 is always a bug. Sanitizing is off: it would print `max_tokens` as "[Filtered]"
# in the curl commands of failure reports, and there are no real secrets here.
CONFIG = {"checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", 502, 503, 504]}},
          "output": {"sanitization": {"enabled": False}}}
# Loaded at import: schemathesis 4.32's `pytest.from_fixture` fails under pytest 9 (it sets
# `Function._nodeid`, which pytest 9 removed), so the base URL goes with each call instead.
schema = schemathesis.openapi.from_path(SPEC_PATH, config=schemathesis.Config.from_dict(CONFIG))


UI_CHUNK = Draft202012Validator({"$ref": "#/components/schemas/UIMessageChunk", "components": SPEC["components"]})


def check_ui_stream(response: Any) -> None:
    """Every chunk is a UIMessageChunk; one `finish` or `error` chunk ends it, then `[DONE]`."""
    chunks = parse_ui_chunks(response.content)
    assert chunks.count(DONE) == 1 and chunks[-1] == DONE, chunks
    for chunk in chunks[:-1]:
        errors = [e.message for e in UI_CHUNK.iter_errors(chunk)]
        assert not errors, f"chunk {chunk} does not match UIMessageChunk: {errors}"
    kinds = [c["type"] for c in chunks[:-1]]  # type: ignore[index]
    assert kinds and kinds[-1] in ("finish", "error") and sum(k in ("finish", "error") for k in kinds) == 1, kinds


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]})


CHUNK, MESSAGE_EVENT = _validator("ChatCompletionChunk"), _validator("MessageStreamEvent")


def check_chunks(response: Any) -> None:
    """Chunks, then `[DONE]` or one error event, last."""
    events = parse_chunks(response.content)
    for event in events:
        if event != CHUNKS_DONE:
            assert not [e.message for e in CHUNK.iter_errors(event)], event
    terminals = [i for i, e in enumerate(events) if e == CHUNKS_DONE or "error" in e]
    assert terminals == [len(events) - 1], events


def check_message_events(response: Any) -> None:
    """Messages events, then `message_stop` or one `error`, last."""
    events = parse_message_events(response.content)
    for event in events:
        assert not [e.message for e in MESSAGE_EVENT.iter_errors(event)], event
    terminals = [i for i, e in enumerate(events) if e["type"] in ("message_stop", "error")]
    assert terminals == [len(events) - 1], events


def check_event_stream(response: Any, path: str = "") -> None:
    """Every event is a StreamEvent; content events, then exactly one terminal event (or the
    same promise in the format of an OpenAI- or Anthropic-compatible route)."""
    if path == "/v1/chat/completions":
        return check_chunks(response)
    if path == "/v1/messages":
        return check_message_events(response)
    events = parse_events(response.content)
    for event in events:
        errors = [e.message for e in STREAM_EVENT.iter_errors(event)]
        assert not errors, f"event {event} does not match StreamEvent: {errors}"
    assert [e["type"] for e in events[:-1]] == ["content"] * (len(events) - 1), events
    assert events and events[-1]["type"] in ("done", "error"), events


def call_and_check(case: Any, service: RunningService) -> Any:
    response = case.call(base_url=service.base_url, timeout=15)
    media_type = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    # Two bodies schemathesis reads differently from this document; their schemas are checked here:
    # - text/event-stream: schemathesis (after OpenAPI 3.2) validates each SSE event as an object
    #   {"event", "data", ...} against the media type's `schema`; this OpenAPI 3.1 document means
    #   by it the JSON in one event's `data:` line.
    # - application/yaml: schemathesis parses the YAML and validates the object against
    #   `type: string`, which means the document as text.
    special = media_type in ("text/event-stream", "application/yaml")
    case.validate_response(response, checks=CHECKS if special else [*CHECKS, response_schema_conformance])
    try:
        if media_type == "text/event-stream" and response.headers.get("x-vercel-ai-ui-message-stream") == ["v1"]:
            check_ui_stream(response)
        elif media_type == "text/event-stream":
            check_event_stream(response, case.path)
        elif media_type == "application/yaml":
            assert yaml.safe_load(response.content) == SPEC
    except AssertionError as exc:
        exc.add_note(f"Reproduce with:\n\n    {case.as_curl_command()}")
        raise
    return response


@schema.parametrize()
# Bounded for CI (about 20 s in all): 40 random cases per operation after the examples and
# coverage cases, no deadline (a stream takes a few ms), the same cases on every run.
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_api_conforms_to_openapi(case: Any, service: RunningService) -> None:
    call_and_check(case, service)


def test_thread_answers_conform(service: RunningService) -> None:
    """Three turns stored in a thread, read a page at a time (the documented way: `before` is
    the oldest id of the page before), then deleted; every answer checked as in the fuzz run."""
    owner = {"user_id": "fuzz-user"}
    chat, listing = schema["/ai/stream/chat"]["POST"], schema["/ai/threads/{thread_id}/messages"]["GET"]
    delete = schema["/ai/threads/{thread_id}"]["DELETE"]
    thread = {"thread_id": "fuzz-thread"}
    for n in range(3):
        body = {**thread, **owner, "messages": [{"role": "user", "content": f"Question {n}"}], "stream": n != 1}
        assert call_and_check(chat.Case(body=body, media_type="application/json"), service).status_code == 200

    newest = call_and_check(listing.Case(path_parameters=thread, query={**owner, "limit": 4}), service).json()
    assert [m["content"] for m in newest["messages"]] == ["Question 1", "Hello, world!", "Question 2", "Hello, world!"]
    older = call_and_check(listing.Case(path_parameters=thread, query={**owner, "before": newest["messages"][0]["id"]}), service)
    assert [(m["role"], m["status"]) for m in older.json()["messages"]] == [("user", "complete"), ("assistant", "complete")]

    stranger = call_and_check(listing.Case(path_parameters=thread, query={"user_id": "someone-else"}), service)
    assert stranger.status_code == 404
    assert call_and_check(delete.Case(path_parameters=thread, query=owner), service).status_code == 204
    assert call_and_check(listing.Case(path_parameters=thread, query=owner), service).status_code == 404
    assert call_and_check(delete.Case(path_parameters=thread, query=owner), service).status_code == 404
