"""The API description (openapi.yaml) is valid, is what the service serves, and matches what it answers.

Each request below goes through the real app (and the fake upstream); its answer is checked
against the operation the document describes: the status is documented, the media type too,
the body (or every event of a stream) validates against the documented schema and holds no
field the schema does not name, and the documented headers are present. A case may first send
other requests (`steps`, e.g. to create a thread), which are checked the same way.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from aiohttp import ClientResponse
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from service import __version__
from service.security import is_protected
from tests.conftest import parse_events
from tests.fake_upstream import FakeUpstream, Scenario
from tests.ui_stream import DONE, parse_ui_chunks

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
MODEL_NAMES = ("claude-primary", "claude-backup", "gpt-fallback")  # the upstream names of conftest's MODELS
TERMINAL_EVENTS = {"done", "error"}
UI_TERMINAL = {"finish", "error"}


@cache
def load_spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


try:  # the HTTP library under both model SDKs
    import httpcore2

    _shared_default_ssl_context = functools.cache(httpcore2.default_ssl_context)
except (ImportError, AttributeError):  # pragma: no cover - another HTTP library: no shortcut
    httpcore2 = None  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def _one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Speed only. Each app built here creates its SDK clients, and each of those loads the
    system's CA bundle into a new TLS context (about 40 ms, twice per app). The fake upstream
    speaks plain HTTP, so sharing one context between the apps changes no answer."""
    if httpcore2 is not None:
        monkeypatch.setattr(httpcore2, "default_ssl_context", _shared_default_ssl_context)


class Contract:
    """Look-ups into the document: operations by path template and method, schemas by status and media type."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def pointer(self, ref: str) -> Any:
        assert ref.startswith("#/"), f"only local references are used, got {ref!r}"
        node: Any = self.spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def resolve(self, node: Any) -> Any:
        """Follow `$ref`s (Reference Objects, or a schema that is only a reference plus annotations)."""
        while isinstance(node, dict) and "$ref" in node:
            node = self.pointer(node["$ref"])
        return node

    def operations(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(template, method, op) for template, item in self.spec["paths"].items() for method, op in item.items()]

    def operation(self, template: str, method: str) -> dict[str, Any]:
        path_item = self.spec["paths"].get(template)
        assert path_item is not None, f"{template} is not documented"
        operation = path_item.get(method.lower())
        assert operation is not None, f"{method} {template} is not documented"
        return operation  # type: ignore[no-any-return]

    def response(self, template: str, method: str, status: int) -> dict[str, Any]:
        responses = self.operation(template, method)["responses"]
        assert str(status) in responses, f"{method} {template} does not document status {status} (has {sorted(responses)})"
        return self.resolve(responses[str(status)])  # type: ignore[no-any-return]

    def response_schema(self, template: str, method: str, status: int, media_type: str) -> dict[str, Any]:
        content = self.response(template, method, status).get("content", {})
        assert media_type in content, f"{method} {template} {status} does not document {media_type} (has {sorted(content)})"
        return content[media_type]["schema"]  # type: ignore[no-any-return]

    def request_schema(self, template: str, method: str) -> dict[str, Any]:
        body = self.resolve(self.operation(template, method)["requestBody"])
        return body["content"]["application/json"]["schema"]  # type: ignore[no-any-return]

    def parameter_errors(self, template: str, method: str, values: dict[str, str]) -> list[str]:
        """What the documented path and query parameters say about `values` (as sent: strings;
        a parameter documented as an integer is read as one when it is written in digits)."""
        problems = []
        parameters = [self.resolve(p) for p in self.operation(template, method).get("parameters", [])]
        documented = {p["name"] for p in parameters if p["in"] in ("path", "query")}
        problems += [f"{name}: not a documented parameter" for name in values if name not in documented]
        for parameter in parameters:
            name = parameter["name"]
            if parameter["in"] not in ("path", "query"):
                continue
            if name not in values:
                if parameter.get("required"):
                    problems.append(f"{name}: required")
                continue
            value: Any = values[name]
            schema = parameter["schema"]
            if self.resolve(schema).get("type") == "integer" and value.isascii() and value.isdigit():
                value = int(value)
            problems += [f"{name}: {problem}" for problem in self.errors(schema, value)]
        return problems

    def validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        """A Draft 2020-12 validator for `schema`, whose `#/components/...` references resolve into the document."""
        return Draft202012Validator({**schema, "components": self.spec["components"]})

    def errors(self, schema: dict[str, Any], instance: Any) -> list[str]:
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in self.validator(schema).iter_errors(instance)]

    def undocumented(self, schema: Any, instance: Any, where: str = "") -> list[str]:
        """Fields of `instance` that its schema does not name (the schemas allow them; the answers should not need them)."""
        schema = self.resolve(schema)
        if isinstance(instance, dict) and "discriminator" in schema:
            discriminator = schema["discriminator"]
            ref = discriminator["mapping"].get(instance.get(discriminator["propertyName"]))
            return [] if ref is None else self.undocumented({"$ref": ref}, instance, where)
        found = []
        if isinstance(instance, dict) and "properties" in schema:
            for key, value in instance.items():
                if key not in schema["properties"]:
                    found.append(where + key)
                else:
                    found += self.undocumented(schema["properties"][key], value, f"{where}{key}.")
        if isinstance(instance, list) and "items" in schema:
            for i, item in enumerate(instance):
                found += self.undocumented(schema["items"], item, f"{where}{i}.")
        return found

    def known_codes(self, schema_name: str) -> set[str]:
        return set(self.spec["components"]["schemas"][schema_name]["properties"]["code"]["examples"])


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract(load_spec())


async def check_answer(contract: Contract, template: str, method: str, resp: ClientResponse) -> Any:
    """Everything the document promises about this answer; returns the JSON body, the events, or the text."""
    where = f"{method} {template} -> {resp.status}"
    documented = contract.response(template, method, resp.status)
    media_type = resp.content_type
    for name, header in documented.get("headers", {}).items():
        header = contract.resolve(header)
        value = resp.headers.get(name)
        if header.get("required"):
            assert value is not None, f"{where}: the documented header {name} is missing"
        if value is None:
            continue
        typed: Any = value
        if header["schema"].get("type") == "integer":
            assert value.isascii() and value.isdigit(), f"{where}: header {name}={value!r} is not an integer"
            typed = int(value)
        assert not contract.errors(header["schema"], typed), f"{where}: header {name}={value!r} does not match its schema"
    assert resp.headers.get("X-Request-ID"), f"{where}: every response carries X-Request-ID"
    body = await resp.read()
    if "content" not in documented:
        assert body == b"" and "Content-Type" not in resp.headers, f"{where}: no body is documented"
        return None
    schema = contract.response_schema(template, method, resp.status, media_type)
    if media_type == "text/event-stream" and resp.headers.get("x-vercel-ai-ui-message-stream") == "v1":
        chunks = parse_ui_chunks(body)
        assert chunks.count(DONE) == 1 and chunks[-1] == DONE, f"{where}: [DONE] must end the stream once"
        events = chunks[:-1]
        for event in events:
            assert not contract.errors(schema, event), f"{where}: chunk {event} breaks the schema: {contract.errors(schema, event)}"
            assert not contract.undocumented(schema, event), f"{where}: undocumented fields in {event}"
        types = [event["type"] for event in events]  # type: ignore[index]
        assert types[-1] in UI_TERMINAL and sum(t in UI_TERMINAL for t in types) == 1, types
        return events
    if media_type == "text/event-stream":
        events = parse_events(body)
        assert events, f"{where}: an event stream holds at least its terminal event"
        for event in events:
            assert not contract.errors(schema, event), f"{where}: event {event} breaks the schema: {contract.errors(schema, event)}"
            assert not contract.undocumented(schema, event), f"{where}: undocumented fields in {event}"
        types = [event["type"] for event in events]
        assert types[-1] in TERMINAL_EVENTS and sum(t in TERMINAL_EVENTS for t in types) == 1, types
        return events
    if media_type == "application/json":
        data = json.loads(body)
        problems = contract.errors(schema, data)
        assert not problems, f"{where}: {data} breaks the schema: {problems}"
        assert not contract.undocumented(schema, data), f"{where}: undocumented fields in {data}"
        return data
    return body.decode()


# --- the document itself ----------------------------------------------------------------


def test_document_is_valid_openapi_31() -> None:
    spec = load_spec()
    validate_openapi(spec)  # raises on any violation of the OpenAPI 3.1 schema
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["title"] == "ai-stream"
    assert spec["info"]["version"] == __version__ == "0.1.0"
    operation_ids = [op["operationId"] for item in spec["paths"].values() for op in item.values() if isinstance(op, dict)]
    assert len(operation_ids) == len(set(operation_ids)) == 22


def test_every_schema_is_valid_draft_2020_12(contract: Contract) -> None:
    schemas = contract.spec["components"]["schemas"]
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    event_schemas = [contract.resolve(s) for s in schemas["StreamEvent"]["oneOf"]]
    assert [s["properties"]["type"]["const"] for s in event_schemas] == ["content", "done", "error"]


def test_keys_and_rate_limit_are_documented_on_every_ai_operation(contract: Contract) -> None:
    """API keys (when configured) and AI_RATE_LIMIT_RPM apply to every `/ai/...` route; /health
    and /openapi.yaml are always open; /metrics only needs a key with AI_METRICS_PUBLIC=false."""
    scheme = contract.spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for template, method, op in contract.operations():
        where = f"{method.upper()} {template}"
        if is_protected(template):
            # `{}`: no key is needed while none is configured (API keys are optional). The
            # OpenAI- and Anthropic-compatible routes also take the key as `x-api-key`.
            sdk_routes = template.startswith("/v1/")
            expected = [{"bearerAuth": []}, {"apiKeyAuth": []}, {}] if sdk_routes else [{"bearerAuth": []}, {}]
            assert op.get("security") == expected, where
            assert {"401", "429"} <= set(op["responses"]), where
        elif template == "/metrics":
            assert op.get("security") == [{}, {"bearerAuth": []}], where
            assert "401" in op["responses"] and "429" not in op["responses"], where
        else:
            assert op.get("security") == [], where
            assert not {"401", "429"} & set(op["responses"]), where


def test_examples_match_their_schemas(contract: Contract) -> None:
    """The document's own examples are answers the schemas accept (a reader copies them)."""
    checked = 0
    for template, method, operation in contract.operations():
        body = operation.get("requestBody")
        if body:
            media = contract.resolve(body)["content"]["application/json"]
            for example in media.get("examples", {}).values():
                assert not contract.errors(media["schema"], example["value"]), (template, example)
                checked += 1
        for parameter in map(contract.resolve, operation.get("parameters", [])):
            if "example" in parameter:
                assert not contract.errors(parameter["schema"], parameter["example"]), (template, parameter)
                checked += 1
        for status, response in operation["responses"].items():
            for media_type, media in contract.resolve(response).get("content", {}).items():
                values = [e["value"] for e in media.get("examples", {}).values()]
                values += [media["example"]] if "example" in media else []
                for value in values:
                    if media_type == "text/event-stream":
                        events = parse_events(value.encode())
                        assert events[-1]["type"] in TERMINAL_EVENTS
                        for event in events:
                            assert not contract.errors(media["schema"], event), (template, status, event)
                    else:
                        assert not contract.errors(media["schema"], value), (template, status, value)
                        assert not contract.undocumented(media["schema"], value), (template, status, value)
                    checked += 1
    for name, schema in contract.spec["components"]["schemas"].items():
        for value in schema.get("examples", []):
            assert not contract.errors(schema, value), (name, value)
            checked += 1
    assert checked >= 40


async def test_served_document_is_openapi_yaml(client: Any, contract: Contract) -> None:
    resp = await client.get("/openapi.yaml")
    assert resp.status == 200
    text = await check_answer(contract, "/openapi.yaml", "GET", resp)
    assert resp.content_type == "application/yaml"
    assert yaml.safe_load(text) == load_spec()


async def test_every_route_is_documented(client: Any, contract: Contract) -> None:
    routed = {(route.method, route.resource.canonical) for route in client.app.router.routes() if route.method != "HEAD"}
    documented = {(method.upper(), template) for template, method, _ in contract.operations()}
    assert routed <= documented, f"routes missing from openapi.yaml: {routed - documented}"
    assert documented <= routed, f"documented but not served: {documented - routed}"


# --- answers of the running app ----------------------------------------------------------

USER_HI = [{"role": "user", "content": "Hi"}]
ALL_FAIL_529 = {name: Scenario(kind="http_error", status=529) for name in MODEL_NAMES}
GEN, CHAT = "/ai/stream/generate", "/ai/stream/chat"
MESSAGES, THREAD = "/ai/threads/{thread_id}/messages", "/ai/threads/{thread_id}"
HEALTH, STREAM_HEALTH = "/health", "/ai/stream/health"
THREADS, STATUS, PAGE, ASSET = "/ai/threads", "/ai/status", "/", "/assets/{name}"
PAGE_HEADERS = {"Content-Security-Policy": re.compile(r"default-src 'none'; .*"), "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}
THREAD_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
UI_CHAT, UI_MESSAGES = "/ai/ui/chat", "/ai/ui/chat/{chat_id}/messages"
RESUME, CANCEL, UI_RESUME = "/ai/stream/answers/{answer_id}", "/ai/stream/answers/{answer_id}/cancel", "/ai/ui/chat/{chat_id}/stream"
UI_HI = [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}]

API_KEY, OTHER_KEY = "0123456789abcdef-secret", "fedcba9876543210-secret"
KEYS = {"api_keys": f"frontend:{API_KEY}"}
TWO_KEYS = {"api_keys": f"frontend:{API_KEY},batch:{OTHER_KEY}"}
AUTH, OTHER_AUTH = {"Authorization": f"Bearer {API_KEY}"}, {"Authorization": f"Bearer {OTHER_KEY}"}
STORAGE_DOWN = {"database_url": "sqlite:////dev/null/ai-stream.db"}  # cannot be created: the store never opens
MESSAGE_ID = re.compile(r"msg_[0-9a-f]{32}")
UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="ai-stream"'}
ANSWER = "Hello, world!"  # what the fake upstream answers
ANSWER_USAGE = {"input_tokens": 11, "output_tokens": 4}


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()  # in `expect`: the field is not there


@dataclass(frozen=True)
class Prior:
    """A request value taken from the previous request's JSON answer, e.g. `next_before` (or,
    after a stream, from its terminal event, e.g. `answer_id`)."""

    field: str

    def of(self, previous: Any) -> str:
        return str((previous[-1] if isinstance(previous, list) else previous)[self.field])


@dataclass(frozen=True)
class Step:
    """A request sent before the case's own (to create a thread, use up a limit, ...); its
    answer is checked against the document too."""

    template: str
    method: str = "POST"
    json: Any = None
    path: dict[str, Any] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


def turn(content: str, thread_id: str = "t-1", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "thread_id": thread_id, **extra}


def chat_step(content: str, thread_id: str = "t-1", headers: dict[str, str] | None = None, **extra: Any) -> Step:
    return Step(CHAT, json=turn(content, thread_id, **extra), headers=headers or {})


@dataclass(frozen=True)
class Case:
    id: str
    template: str
    method: str = "POST"
    json: Any = None
    data: bytes | None = None
    path: dict[str, Any] = field(default_factory=dict)  # path parameters (strings, or Prior)
    query: dict[str, Any] = field(default_factory=dict)  # query parameters (strings, or Prior)
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    media_type: str | None = "application/json"  # None: no body
    code: str | None = None  # the error code (JSON error or terminal error event)
    # Whether the documented request schema (the body's, or the parameters') accepts the
    # request: False for what the schema alone rejects, True for checks that need the
    # configuration or the stored data (model, time zone, size limits, an unknown thread).
    schema_valid: bool | None = None
    scripts: dict[str, Scenario] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()
    # Fields of the answer (the JSON body, or a stream's terminal event) by dotted path, `*` for
    # every item of a list: a value, a compiled pattern the string must match, or ABSENT.
    expect: dict[str, Any] = field(default_factory=dict)
    response_headers: dict[str, Any] = field(default_factory=dict)  # a value or a compiled pattern

    def __str__(self) -> str:
        return self.id


DEFAULT_CASES = [
    # resumable answers (a stored thread's answer is resumable)
    Case("resume-ended-answer", RESUME, method="GET", path={"answer_id": Prior("answer_id")}, steps=(chat_step("Hi"),),
         media_type="text/event-stream", schema_valid=True, response_headers={"X-Answer-ID": MESSAGE_ID},
         expect={"message_id": MESSAGE_ID, "answer_id": MESSAGE_ID}),
    Case("resume-after", RESUME, method="GET", path={"answer_id": Prior("answer_id")}, query={"after": "2"},
         steps=(chat_step("Hi"),), media_type="text/event-stream", schema_valid=True),
    Case("resume-nothing-after", RESUME, method="GET", path={"answer_id": Prior("answer_id")}, query={"after": "5"},
         steps=(chat_step("Hi"),), status=204, media_type=None, schema_valid=True),
    Case("resume-bad-after", RESUME, method="GET", path={"answer_id": Prior("answer_id")}, query={"after": "x"},
         steps=(chat_step("Hi"),), status=400, code="validation_error", schema_valid=False),
    Case("resume-of-another-user", RESUME, method="GET", path={"answer_id": Prior("answer_id")}, query={"user_id": "bob"},
         steps=(chat_step("Hi", user_id="alice"),), status=404, code="not_found", schema_valid=True),
    Case("resume-unknown", RESUME, method="GET", path={"answer_id": "msg_" + "0" * 32}, status=404, code="not_found",
         schema_valid=True),
    Case("resume-malformed-id", RESUME, method="GET", path={"answer_id": "nope"}, status=404, code="not_found",
         schema_valid=False),
    Case("cancel-ended-answer", CANCEL, path={"answer_id": Prior("answer_id")}, steps=(chat_step("Hi"),), schema_valid=True,
         expect={"cancelled": False, "answer_id": MESSAGE_ID}),
    Case("cancel-unknown", CANCEL, path={"answer_id": "msg_" + "0" * 32}, status=404, code="not_found", schema_valid=True),
    Case("ui-chat-resume-none", UI_RESUME, method="GET", path={"chat_id": "c-1"}, status=204, media_type=None,
         schema_valid=True, steps=(Step(UI_CHAT, json={"id": "c-1", "messages": UI_HI}),)),
    Case("ui-chat-resume-bad-id", UI_RESUME, method="GET", path={"chat_id": "bad id"}, status=404, code="not_found",
         schema_valid=False),
    # /ai/ui/chat (the AI SDK's UI message stream)
    Case("ui-chat-stream", UI_CHAT, json={"id": "c-1", "messages": UI_HI, "trigger": "submit-message"},
         media_type="text/event-stream", schema_valid=True, response_headers={"x-vercel-ai-ui-message-stream": "v1"},
         expect={"messageMetadata.persisted": True, "messageMetadata.model": "claude-primary"}),
    Case("ui-chat-unstored-fails", UI_CHAT, json={"id": "c-1", "messages": UI_HI, "store": False}, media_type="text/event-stream",
         code="upstream_unavailable", schema_valid=True, scripts=ALL_FAIL_529),
    Case("ui-chat-file-part", UI_CHAT, status=400, code="validation_error", schema_valid=True,
         json={"id": "c-1", "messages": [{"id": "u1", "role": "user", "parts": [{"type": "file", "url": "data:,", "mediaType": "text/plain"}]}]}),
    Case("ui-chat-no-parts", UI_CHAT, status=400, code="validation_error", schema_valid=False,
         json={"id": "c-1", "messages": [{"id": "u1", "role": "user", "content": "Hi"}]}),
    Case("ui-chat-messages", UI_MESSAGES, method="GET", path={"chat_id": "c-1"}, schema_valid=True,
         steps=(Step(UI_CHAT, json={"id": "c-1", "messages": UI_HI}),),
         expect={"*.role": ["user", "assistant"], "*.id": ["u1", MESSAGE_ID]}),
    Case("ui-chat-messages-unknown", UI_MESSAGES, method="GET", path={"chat_id": "nope"}, status=404, code="not_found",
         schema_valid=True),
    Case("generate-stream", GEN, json={"prompt": "Hi"}, media_type="text/event-stream", schema_valid=True,
         expect={"model": "claude-primary", "usage": ANSWER_USAGE, "message_id": ABSENT, "persisted": ABSENT}),
    Case(
        "generate-stream-all-options",
        GEN,
        json={"prompt": "Hi", "system_prompt": "Be brief.", "max_tokens": 8192, "temperature": 0, "model": "claude-backup",
              "timezone": "Europe/Berlin", "stream": True, "unknown_field": [1, 2]},
        media_type="text/event-stream",
        schema_valid=True,
        expect={"model": "claude-backup"},
    ),
    Case(
        "chat-stream-thread",
        CHAT,
        json={"messages": [{"role": "system", "content": "Be brief."}, *USER_HI, {"role": "assistant", "content": "Hello!"},
                           {"role": "user", "content": "Bye"}],
              "system": "You are kind.", "thread_id": "thread_01-a", "user_id": "user 7", "model": "openai/gpt-fallback",
              "temperature": 0.5},
        media_type="text/event-stream",
        schema_valid=True,
        expect={"model": "gpt-fallback", "provider": "openai", "message_id": MESSAGE_ID, "persisted": True},
    ),
    Case("generate-json", GEN, json={"prompt": "Hi", "stream": False}, schema_valid=True,
         expect={"text": ANSWER, "message_id": ABSENT}),
    Case("generate-json-nulls", GEN, json={"prompt": "Hi", "stream": False, "max_tokens": None, "temperature": None,
                                           "model": None, "timezone": None, "system_prompt": None}, schema_valid=True),
    Case("chat-json", CHAT, json={"messages": USER_HI, "stream": False, "max_tokens": 1}, schema_valid=True,
         expect={"message_id": ABSENT, "persisted": ABSENT}),
    Case("chat-json-thread", CHAT, json=turn("Hi", stream=False), schema_valid=True,
         expect={"text": ANSWER, "message_id": MESSAGE_ID, "persisted": True}),
    Case("health", HEALTH, method="GET",
         expect={"status": "ok", "model": "claude-primary", "provider": "anthropic",
                 "models.*.name": ["anthropic/claude-primary", "anthropic/claude-backup", "openai/gpt-fallback"],
                 "models.*.circuit": [{"state": "closed", "consecutive_failures": 0, "retry_in_seconds": 0}] * 3,
                 "storage": {"backend": "sqlite", "ok": True}, "open_streams": 0, "version": __version__}),
    Case("stream-health", STREAM_HEALTH, method="GET", expect={"status": "ok", "storage.ok": True}),
    # the OpenAI- and Anthropic-compatible routes (their streams and errors: test_compat_*.py)
    Case("chat-completion-json", "/v1/chat/completions", json={"model": "ai-stream", "messages": USER_HI}, schema_valid=True,
         expect={"object": "chat.completion", "model": "claude-primary", "choices.0.message.content": ANSWER,
                 "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}}),
    Case("models", "/v1/models", method="GET",
         expect={"object": "list", "data.*.id": ["ai-stream", "anthropic/claude-primary", "anthropic/claude-backup",
                                                 "openai/gpt-fallback"]}),
    Case("message-json", "/v1/messages", json={"model": "claude-backup", "max_tokens": 10, "messages": USER_HI},
         schema_valid=True, expect={"type": "message", "model": "claude-backup", "content.0.text": ANSWER,
                                    "usage": ANSWER_USAGE}),
    Case("count-tokens", "/v1/messages/count_tokens", json={"model": "ai-stream", "messages": USER_HI}, schema_valid=True),
    # 400 validation_error: what the schema alone rejects
    Case("missing-prompt", GEN, json={"max_tokens": 10}, status=400, code="validation_error", schema_valid=False),
    Case("blank-prompt", GEN, json={"prompt": " \n\t"}, status=400, code="validation_error", schema_valid=False),
    Case("max-tokens-type", GEN, json={"prompt": "Hi", "max_tokens": "100"}, status=400, code="validation_error", schema_valid=False),
    Case("max-tokens-zero", GEN, json={"prompt": "Hi", "max_tokens": 0}, status=400, code="validation_error", schema_valid=False),
    Case("max-tokens-over-limit", GEN, json={"prompt": "Hi", "max_tokens": 8193}, status=400, code="validation_error", schema_valid=False),
    Case("temperature-over-1", GEN, json={"prompt": "Hi", "temperature": 1.5}, status=400, code="validation_error", schema_valid=False),
    Case("stream-not-bool", GEN, json={"prompt": "Hi", "stream": "yes"}, status=400, code="validation_error", schema_valid=False),
    Case("empty-messages", CHAT, json={"messages": []}, status=400, code="validation_error", schema_valid=False),
    Case("bad-role", CHAT, json={"messages": [{"role": "tool", "content": "x"}]}, status=400, code="validation_error", schema_valid=False),
    Case("blank-content", CHAT, json={"messages": [{"role": "user", "content": "  "}]}, status=400, code="validation_error", schema_valid=False),
    Case("bad-thread-id", CHAT, json={"messages": USER_HI, "thread_id": "a b"}, status=400, code="validation_error", schema_valid=False),
    Case("long-thread-id", CHAT, json={"messages": USER_HI, "thread_id": "t" * 129}, status=400, code="validation_error", schema_valid=False),
    Case("empty-user-id", CHAT, json={"messages": USER_HI, "user_id": ""}, status=400, code="validation_error", schema_valid=False),
    Case("non-object-json", GEN, json=["Hi"], status=400, code="invalid_json", schema_valid=False),
    # 400 validation_error: checks against the configuration, beyond the schema
    Case("unknown-model", GEN, json={"prompt": "Hi", "model": "gpt-unknown"}, status=400, code="validation_error", schema_valid=True),
    Case("unknown-timezone", GEN, json={"prompt": "Hi", "timezone": "Mars/Olympus_Mons"}, status=400, code="validation_error",
         schema_valid=True),
    Case("only-system-messages", CHAT, json={"messages": [{"role": "system", "content": "x"}]}, status=400, code="validation_error",
         schema_valid=True),
    # 400 invalid_json and 415
    Case("invalid-json", GEN, data=b'{"prompt": "Hi",', headers={"Content-Type": "application/json"}, status=400, code="invalid_json"),
    Case("empty-body", CHAT, data=b"", headers={"Content-Type": "application/json"}, status=400, code="invalid_json"),
    Case("not-json-content-type", GEN, data=b"prompt=Hi", headers={"Content-Type": "application/x-www-form-urlencoded"},
         status=415, code="unsupported_media_type"),
    Case("text-plain-chat", CHAT, data=b"Hi", headers={"Content-Type": "text/plain"}, status=415, code="unsupported_media_type"),
    # failures of the models
    Case("generate-json-all-models-fail", GEN, json={"prompt": "Hi", "stream": False}, status=503, code="upstream_unavailable",
         scripts=ALL_FAIL_529, schema_valid=True),
    Case("chat-json-all-models-fail", CHAT, json={"messages": USER_HI, "stream": False}, status=503, code="upstream_unavailable",
         scripts=ALL_FAIL_529, schema_valid=True),
    Case("generate-json-rejected", GEN, json={"prompt": "Hi", "stream": False}, status=502, code="invalid_request",
         scripts={"claude-primary": Scenario(kind="http_error", status=400)}, schema_valid=True),
    Case("stream-all-models-fail", GEN, json={"prompt": "Hi"}, media_type="text/event-stream", code="upstream_unavailable",
         scripts=ALL_FAIL_529, schema_valid=True),
    Case("chat-stream-fails-mid-answer", CHAT, json={"messages": USER_HI}, media_type="text/event-stream", code="upstream_unavailable",
         scripts={"claude-primary": Scenario(kind="stream_error", after_tokens=2)}, schema_valid=True),
    # threads (the default store: SQLite in the test's folder)
    # Thread ids are namespaced by owner: bob's "t-1" is a thread of his own, not alice's.
    Case("chat-thread-id-of-another-user", CHAT, json=turn("let me in", user_id="bob"), media_type="text/event-stream",
         schema_valid=True, steps=(chat_step("secret plan", user_id="alice"),)),
    Case("thread-messages-newest-page", MESSAGES, method="GET", path={"thread_id": "t-1"}, query={"limit": "3"}, schema_valid=True,
         steps=(chat_step("one"), chat_step("two", stream=False)),
         expect={"thread_id": "t-1", "has_more": True, "next_before": MESSAGE_ID,
                 "messages.*.role": ["assistant", "user", "assistant"], "messages.*.content": [ANSWER, "two", ANSWER],
                 "messages.*.status": ["complete"] * 3, "messages.0.model": "claude-primary",
                 "messages.0.provider": "anthropic", "messages.0.stop_reason": "end_turn", "messages.0.usage": ANSWER_USAGE,
                 "messages.1.model": None, "messages.1.usage": None}),
    Case("thread-messages-older-page", MESSAGES, method="GET", path={"thread_id": "t-1"},
         query={"limit": "3", "before": Prior("next_before")}, schema_valid=True,
         steps=(chat_step("one"), chat_step("two"), Step(MESSAGES, "GET", path={"thread_id": "t-1"}, query={"limit": "3"})),
         expect={"has_more": False, "next_before": None, "messages.*.content": ["one"], "messages.0.provider": None}),
    Case("thread-messages-of-owner", MESSAGES, method="GET", path={"thread_id": "t-1"}, query={"user_id": "alice"}, schema_valid=True,
         steps=(chat_step("secret plan", user_id="alice"),), expect={"has_more": False, "messages.*.role": ["user", "assistant"]}),
    Case("thread-messages-of-another-user", MESSAGES, method="GET", path={"thread_id": "t-1"}, query={"user_id": "bob"},
         status=404, code="not_found", schema_valid=True, steps=(chat_step("secret plan", user_id="alice"),)),
    Case("thread-messages-unknown-thread", MESSAGES, method="GET", path={"thread_id": "no-such-thread"}, status=404,
         code="not_found", schema_valid=True),
    Case("thread-messages-invalid-thread-id", MESSAGES, method="GET", path={"thread_id": "not a thread id!"}, status=404,
         code="not_found", schema_valid=False),
    Case("thread-messages-unknown-before", MESSAGES, method="GET", path={"thread_id": "t-1"}, query={"before": "msg_unknown"},
         status=400, code="validation_error", schema_valid=True, steps=(chat_step("one"),)),
    Case("thread-messages-limit-0", MESSAGES, method="GET", path={"thread_id": "t-1"}, query={"limit": "0"}, status=400,
         code="validation_error", schema_valid=False),
    Case("thread-messages-limit-201", MESSAGES, method="GET", path={"thread_id": "t-1"}, query={"limit": "201"}, status=400,
         code="validation_error", schema_valid=False),
    Case("thread-messages-limit-not-integer", MESSAGES, method="GET", path={"thread_id": "t-1"}, query={"limit": "1.5"},
         status=400, code="validation_error", schema_valid=False),
    Case("thread-messages-empty-user-id", MESSAGES, method="GET", path={"thread_id": "t-1"}, query={"user_id": ""}, status=400,
         code="validation_error", schema_valid=False),
    Case("delete-thread", THREAD, method="DELETE", path={"thread_id": "t-1"}, status=204, media_type=None, schema_valid=True,
         steps=(chat_step("one"),)),
    Case("delete-deleted-thread", THREAD, method="DELETE", path={"thread_id": "t-1"}, status=404, code="not_found",
         schema_valid=True, steps=(chat_step("one"), Step(THREAD, "DELETE", path={"thread_id": "t-1"}, status=204))),
    Case("delete-thread-of-another-user", THREAD, method="DELETE", path={"thread_id": "t-1"}, query={"user_id": "bob"},
         status=404, code="not_found", schema_valid=True, steps=(chat_step("secret plan", user_id="alice"),)),
    # the thread list and renaming
    Case("thread-list", THREADS, method="GET", query={"limit": "1"}, schema_valid=True,
         steps=(chat_step("first thread\nmore", "t-1"), chat_step("second thread", "t-2")),
         expect={"has_more": True, "next_before": re.compile(r"[A-Za-z0-9_-]+"), "threads.*.id": ["t-2"],
                 "threads.*.title": ["second thread"], "threads.*.message_count": [2], "threads.0.updated_at": THREAD_TIME}),
    Case("thread-list-next-page", THREADS, method="GET", query={"limit": "1", "before": Prior("next_before")}, schema_valid=True,
         steps=(chat_step("first thread\nmore", "t-1"), chat_step("second thread", "t-2"), Step(THREADS, "GET", query={"limit": "1"})),
         expect={"has_more": False, "next_before": None, "threads.*.id": ["t-1"], "threads.*.title": ["first thread"]}),
    Case("thread-list-of-owner", THREADS, method="GET", query={"user_id": "alice"}, schema_valid=True,
         steps=(chat_step("secret plan", user_id="alice"), chat_step("other", "t-2", user_id="bob")),
         expect={"threads.*.id": ["t-1"], "has_more": False}),
    Case("thread-list-empty", THREADS, method="GET", schema_valid=True, expect={"threads": [], "has_more": False, "next_before": None}),
    Case("thread-list-bad-before", THREADS, method="GET", query={"before": "msg_unknown"}, status=400, code="validation_error",
         schema_valid=True),
    Case("thread-list-limit-0", THREADS, method="GET", query={"limit": "0"}, status=400, code="validation_error", schema_valid=False),
    Case("thread-list-limit-201", THREADS, method="GET", query={"limit": "201"}, status=400, code="validation_error",
         schema_valid=False),
    Case("thread-list-nul-user-id", THREADS, method="GET", query={"user_id": "a\x00b"}, status=400, code="validation_error",
         schema_valid=True),
    Case("rename-thread", THREAD, method="PATCH", path={"thread_id": "t-1"}, json={"title": " One day\tin Lisbon "}, schema_valid=True,
         steps=(chat_step("one"),), expect={"id": "t-1", "title": "One day in Lisbon", "message_count": 2}),
    Case("rename-thread-blank", THREAD, method="PATCH", path={"thread_id": "t-1"}, json={"title": "   "}, status=400,
         code="validation_error", schema_valid=False, steps=(chat_step("one"),)),
    Case("rename-thread-too-long", THREAD, method="PATCH", path={"thread_id": "t-1"}, json={"title": "t" * 201}, status=400,
         code="validation_error", schema_valid=False, steps=(chat_step("one"),)),
    Case("rename-thread-missing-title", THREAD, method="PATCH", path={"thread_id": "t-1"}, json={"name": "x"}, status=400,
         code="validation_error", schema_valid=False, steps=(chat_step("one"),)),
    Case("rename-thread-control-character", THREAD, method="PATCH", path={"thread_id": "t-1"}, json={"title": "a\x00b"},
         status=400, code="validation_error", schema_valid=True, steps=(chat_step("one"),)),
    Case("rename-thread-invalid-json", THREAD, method="PATCH", path={"thread_id": "t-1"}, data=b'{"title":',
         headers={"Content-Type": "application/json"}, status=400, code="invalid_json", steps=(chat_step("one"),)),
    Case("rename-thread-of-another-user", THREAD, method="PATCH", path={"thread_id": "t-1"}, query={"user_id": "bob"},
         json={"title": "mine"}, status=404, code="not_found", schema_valid=True, steps=(chat_step("secret plan", user_id="alice"),)),
    Case("rename-unknown-thread", THREAD, method="PATCH", path={"thread_id": "no-such-thread"}, json={"title": "x"}, status=404,
         code="not_found", schema_valid=True),
    # fallbacks named in `done`
    Case("chat-stream-after-fallback", CHAT, json={"messages": USER_HI}, media_type="text/event-stream", schema_valid=True,
         scripts={"claude-primary": Scenario(kind="http_error", status=529)},
         expect={"model": "claude-backup", "attempts": [{"model": "anthropic/claude-primary", "code": "upstream_unavailable"}]}),
    Case("generate-json-after-fallback", GEN, json={"prompt": "Hi", "stream": False}, schema_valid=True,
         scripts={"claude-primary": Scenario(kind="http_error", status=429)},
         expect={"model": "claude-backup", "attempts.*.code": ["rate_limited"], "text": ANSWER}),
    # status and the page
    Case("status", STATUS, method="GET",
         expect={"models.*.name": ["anthropic/claude-primary", "anthropic/claude-backup", "openai/gpt-fallback"],
                 "models.*.circuit.state": ["closed"] * 3, "storage": {"backend": "sqlite", "ok": True}, "open_streams": 0,
                 "recent.interval_seconds": 10}),
    Case("page", PAGE, method="GET", media_type="text/html", response_headers=PAGE_HEADERS),
    Case("page-script", ASSET, method="GET", path={"name": "playground.js"}, media_type="text/javascript", schema_valid=True,
         response_headers=PAGE_HEADERS),
    Case("page-style", ASSET, method="GET", path={"name": "playground.css"}, media_type="text/css", schema_valid=True,
         response_headers=PAGE_HEADERS),
    Case("page-icon", ASSET, method="GET", path={"name": "favicon.svg"}, media_type="image/svg+xml", schema_valid=True,
         response_headers=PAGE_HEADERS),
    Case("page-unknown-asset", ASSET, method="GET", path={"name": "app.py"}, status=404, code="not_found", schema_valid=False),
]

CONFIGURED_CASES = [
    Case("resume-redis-down", RESUME, method="GET", path={"answer_id": "msg_" + "0" * 32}, status=503,
         code="resume_unavailable", schema_valid=True, settings={"redis_url": "redis://127.0.0.1:9/0"},
         response_headers={"Retry-After": "1"}),
    Case("resume-gone", RESUME, method="GET", path={"answer_id": Prior("answer_id")}, query={"after": "0"}, status=410,
         code="resume_gone", schema_valid=True, settings={"resume_buffer_bytes": 4096}, steps=(chat_step("Hi"),),
         scripts={"claude-primary": Scenario(tokens=["x" * 50] * 100, token_delay=0.001)}),
    # size limits
    Case("body-too-large", GEN, json={"prompt": "x" * 3000}, status=413, code="body_too_large", schema_valid=True,
         settings={"max_body_bytes": 2048}),
    Case("body-too-large-chat", CHAT, json={"messages": [{"role": "user", "content": "x" * 3000}]}, status=413,
         code="body_too_large", schema_valid=True, settings={"max_body_bytes": 2048}),
    Case("too-many-messages", CHAT, json={"messages": [{"role": "system", "content": "Be brief."}, *USER_HI]}, status=400,
         code="too_many_messages", schema_valid=True, settings={"max_messages": 1}),
    Case("input-too-large", GEN, json={"prompt": "x" * 6, "system_prompt": "y" * 5}, status=413, code="input_too_large",
         schema_valid=True, settings={"max_input_chars": 10}),
    Case("input-too-large-chat", CHAT, json={"messages": [{"role": "user", "content": "x" * 6}], "system": "y" * 5}, status=413,
         code="input_too_large", schema_valid=True, settings={"max_input_chars": 10}),
    # API keys
    Case("no-key", GEN, json={"prompt": "Hi"}, status=401, code="unauthorized", settings=KEYS, response_headers=UNAUTHORIZED),
    Case("wrong-key", CHAT, json={"messages": USER_HI}, headers=OTHER_AUTH, status=401, code="unauthorized", settings=KEYS,
         response_headers=UNAUTHORIZED),
    Case("no-key-thread-messages", MESSAGES, method="GET", path={"thread_id": "t-1"}, status=401, code="unauthorized",
         settings=KEYS, response_headers=UNAUTHORIZED),
    Case("no-key-delete-thread", THREAD, method="DELETE", path={"thread_id": "t-1"}, status=401, code="unauthorized",
         settings=KEYS, response_headers=UNAUTHORIZED),
    Case("no-key-stream-health", STREAM_HEALTH, method="GET", settings=KEYS, expect={"status": "ok"}),
    Case("no-key-thread-list", THREADS, method="GET", status=401, code="unauthorized", settings=KEYS, response_headers=UNAUTHORIZED),
    Case("no-key-rename-thread", THREAD, method="PATCH", path={"thread_id": "t-1"}, json={"title": "x"}, status=401,
         code="unauthorized", settings=KEYS, response_headers=UNAUTHORIZED),
    Case("no-key-status", STATUS, method="GET", status=401, code="unauthorized", settings=KEYS, response_headers=UNAUTHORIZED),
    Case("key-status", STATUS, method="GET", headers=AUTH, settings=KEYS, expect={"storage.ok": True}),
    Case("no-key-page", PAGE, method="GET", media_type="text/html", settings=KEYS, response_headers=PAGE_HEADERS),
    Case("page-off", PAGE, method="GET", status=404, code="not_found", settings={"playground": False}),
    Case("page-asset-off", ASSET, method="GET", path={"name": "playground.js"}, status=404, code="not_found", schema_valid=True,
         settings={"playground": False}),
    Case("rename-thread-body-too-large", THREAD, method="PATCH", path={"thread_id": "t-1"}, json={"title": "x", "pad": "y" * 3000},
         status=413, code="body_too_large", schema_valid=True, settings={"max_body_bytes": 2048}),
    Case("no-key-health", HEALTH, method="GET", settings=KEYS, expect={"status": "ok"}),
    Case("key-chat-thread", CHAT, json=turn("Hi"), headers=AUTH, media_type="text/event-stream", schema_valid=True, settings=KEYS,
         expect={"message_id": MESSAGE_ID, "persisted": True}),
    Case("thread-of-another-key", MESSAGES, method="GET", path={"thread_id": "t-1"}, headers=OTHER_AUTH, status=404,
         code="not_found", schema_valid=True, settings=TWO_KEYS, steps=(chat_step("secret plan", headers=AUTH),)),
    # rate limits
    Case("rate-limited", GEN, json={"prompt": "Hi"}, status=429, code="rate_limited", schema_valid=True,
         settings={"rate_limit_rpm": 1}, steps=(Step(GEN, json={"prompt": "Hi", "stream": False}),),
         response_headers={"Retry-After": re.compile(r"[1-9][0-9]*")}),
    Case("rate-limited-thread-messages", MESSAGES, method="GET", path={"thread_id": "t-1"}, status=429, code="rate_limited",
         settings={"rate_limit_rpm": 1}, steps=(Step(MESSAGES, "GET", path={"thread_id": "t-1"}, status=404),)),
    Case("stream-health-not-rate-limited", STREAM_HEALTH, method="GET", settings={"rate_limit_rpm": 1},
         steps=(Step(STREAM_HEALTH, "GET"), Step(STREAM_HEALTH, "GET"))),
    Case("health-not-rate-limited", HEALTH, method="GET", settings={"rate_limit_rpm": 1},
         steps=(Step(HEALTH, "GET"), Step(HEALTH, "GET"))),
    # failures
    Case("generate-json-timeout", GEN, json={"prompt": "Hi", "stream": False}, status=504, code="timeout", schema_valid=True,
         scripts={"claude-primary": Scenario(kind="stall", stall_seconds=30)}, settings={"request_timeout": 0.1}),
    Case("no-model-has-credentials", GEN, json={"prompt": "Hi"}, status=503, code="no_models_available", schema_valid=True,
         settings={"anthropic_api_key": None, "openai_api_key": None}),
    # the conversation database is down
    Case("chat-thread-storage-down", CHAT, json=turn("Hi"), status=503, code="storage_unavailable", schema_valid=True,
         settings=STORAGE_DOWN, response_headers={"Retry-After": "5"}),
    Case("chat-without-thread-storage-down", CHAT, json={"messages": USER_HI}, media_type="text/event-stream", schema_valid=True,
         settings=STORAGE_DOWN),
    Case("thread-messages-storage-down", MESSAGES, method="GET", path={"thread_id": "t-1"}, status=503,
         code="storage_unavailable", schema_valid=True, settings=STORAGE_DOWN, response_headers={"Retry-After": "5"}),
    Case("delete-thread-storage-down", THREAD, method="DELETE", path={"thread_id": "t-1"}, status=503,
         code="storage_unavailable", schema_valid=True, settings=STORAGE_DOWN, response_headers={"Retry-After": "5"}),
    Case("thread-list-storage-down", THREADS, method="GET", status=503, code="storage_unavailable", schema_valid=True,
         settings=STORAGE_DOWN, response_headers={"Retry-After": "5"}),
    Case("rename-thread-storage-down", THREAD, method="PATCH", path={"thread_id": "t-1"}, json={"title": "x"}, status=503,
         code="storage_unavailable", schema_valid=True, settings=STORAGE_DOWN, response_headers={"Retry-After": "5"}),
    Case("status-storage-down", STATUS, method="GET", settings=STORAGE_DOWN, expect={"storage": {"backend": "sqlite", "ok": False}}),
    Case("status-circuits-open", STATUS, method="GET", scripts=ALL_FAIL_529, settings={"cooldown_failures": 1},
         steps=(Step(GEN, json={"prompt": "Hi", "stream": False}, status=503),),
         expect={"models.*.circuit.state": ["open"] * 3, "models.*.circuit.consecutive_failures": [1] * 3}),
    # health
    Case("health-storage-down", HEALTH, method="GET", settings=STORAGE_DOWN,
         expect={"status": "degraded", "storage": {"backend": "sqlite", "ok": False}}),
    Case("health-degraded", HEALTH, method="GET", settings={"openai_api_key": None},
         expect={"status": "degraded", "models.*.has_credentials": [True, True, False], "models.2.circuit": ABSENT}),
    Case("health-circuits-open", HEALTH, method="GET", scripts=ALL_FAIL_529, settings={"cooldown_failures": 1},
         steps=(Step(GEN, json={"prompt": "Hi", "stream": False}, status=503),),
         expect={"status": "ok", "models.*.circuit.state": ["open"] * 3, "models.*.circuit.consecutive_failures": [1] * 3}),
]


def dig(node: Any, path: str) -> Any:
    """The value at a dotted path (`models.0.circuit.state`); `*` maps over a list; ABSENT if missing."""
    head, _, rest = path.partition(".")
    if head == "*":
        return [dig(item, rest) if rest else item for item in node]
    if isinstance(node, list):
        node = node[int(head)]
    elif isinstance(node, dict) and head in node:
        node = node[head]
    else:
        return ABSENT
    return dig(node, rest) if rest else node


def matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, re.Pattern):
        return isinstance(actual, str) and expected.fullmatch(actual) is not None
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(map(matches, expected, actual))
    if isinstance(expected, bool) or expected is None:
        return actual is expected
    return bool(expected == actual)


async def send(
    client: Any, contract: Contract, request: Step | Case, previous: Any
) -> tuple[ClientResponse, Any, dict[str, str]]:
    """Send `request` (its `Prior` values from the `previous` answer); check its status and the
    contract. Returns the response, its checked answer and the parameters sent."""
    query = {name: value.of(previous) if isinstance(value, Prior) else value for name, value in request.query.items()}
    path = {name: value.of(previous) if isinstance(value, Prior) else value for name, value in request.path.items()}
    url = request.template
    for name, value in path.items():
        url = url.replace(f"{{{name}}}", quote(value, safe=""))
    assert "{" not in url, f"path parameters missing for {request.template}"
    kwargs: dict[str, Any] = {"headers": request.headers, "params": query}
    if isinstance(request, Case) and request.data is not None:
        kwargs["data"] = request.data
    elif request.json is not None:
        kwargs["json"] = request.json
    resp = await client.request(request.method, url, **kwargs)
    if resp.status != request.status:
        pytest.fail(f"{request.method} {url} -> {resp.status}, expected {request.status}: {await resp.text()}")
    answer = await check_answer(contract, request.template, request.method, resp)
    return resp, answer, {**path, **query}


def check_thread_page(answer: Any, parameters: dict[str, str]) -> None:
    """What the document says about a page of a thread's messages, beyond its schema."""
    messages = answer["messages"]
    assert len(messages) <= int(parameters.get("limit", "50"))
    assert [m["created_at"] for m in messages] == sorted(m["created_at"] for m in messages), "oldest first"
    assert answer["next_before"] == (messages[0]["id"] if answer["has_more"] else None)
    for message in messages:
        completed = message["role"] == "assistant" and message["status"] == "complete"
        assert (message["usage"] is not None) == completed, message
        assert (message["provider"] is None) == (message["model"] is None), message
        assert message["model"] is not None or message["stop_reason"] is None, message


async def exercise(client: Any, contract: Contract, fake_upstream: FakeUpstream, case: Case) -> Any:
    for model, scenario in case.scripts.items():
        fake_upstream.script(model, scenario)
    previous = None
    for step in case.steps:
        _, previous, _ = await send(client, contract, step, previous)
    resp, answer, parameters = await send(client, contract, case, previous)
    if case.media_type is None:
        assert answer is None
    else:
        assert resp.content_type == case.media_type

    documented_headers = contract.response(case.template, case.method, case.status).get("headers", {})
    for name, expected in case.response_headers.items():
        assert name in documented_headers, f"the {case.status} response does not document the header {name}"
        assert matches(expected, resp.headers.get(name)), f"{name}: {resp.headers.get(name)!r}"

    if case.schema_valid is not None:
        if case.json is not None:
            problems = contract.errors(contract.request_schema(case.template, case.method), case.json)
        else:
            problems = contract.parameter_errors(case.template, case.method, parameters)
        sent = case.json if case.json is not None else parameters
        assert (not problems) == case.schema_valid, f"the request schema {'rejects' if problems else 'accepts'} {sent}: {problems}"
    if case.media_type == "text/event-stream" and case.template.startswith(UI_CHAT):
        assert answer[-1]["type"] == ("finish" if case.code is None else "error"), answer
    elif case.media_type == "text/event-stream":
        last = answer[-1]
        if case.code is None:
            assert last["type"] == "done" and all(e["type"] == "content" for e in answer[:-1])
        else:
            assert (last["type"], last["code"]) == ("error", case.code)
            assert case.code in contract.known_codes("ErrorEvent")
    elif case.code is not None:
        assert answer["code"] == case.code
        assert case.code in contract.known_codes("Error"), f"{case.code} is not listed in Error.code"
        description = contract.response(case.template, case.method, case.status)["description"]
        assert f"`{case.code}`" in description, f"the {case.status} response does not name the code {case.code}"
        if case.code == "validation_error":
            assert answer["details"] and all(d["message"].startswith(d["field"]) for d in answer["details"]), answer
        else:
            assert answer["details"] == []
    elif case.template == MESSAGES:
        check_thread_page(answer, parameters)

    target = answer[-1] if case.media_type == "text/event-stream" else answer
    for path, expected in case.expect.items():
        assert matches(expected, dig(target, path)), f"{path}: expected {expected!r}, got {dig(target, path)!r}"
    return answer


def test_cases_are_unique() -> None:
    ids = [case.id for case in DEFAULT_CASES + CONFIGURED_CASES]
    assert len(ids) == len(set(ids))
    assert not [case.id for case in DEFAULT_CASES if case.settings], "cases with settings belong in CONFIGURED_CASES"


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=str)
async def test_answer_matches_contract(case: Case, client: Any, contract: Contract, fake_upstream: FakeUpstream) -> None:
    await exercise(client, contract, fake_upstream, case)


@pytest.mark.parametrize("case", CONFIGURED_CASES, ids=str)
async def test_answer_matches_contract_configured(
    case: Case, make_client: Any, contract: Contract, fake_upstream: FakeUpstream
) -> None:
    client = await make_client(**case.settings)
    await exercise(client, contract, fake_upstream, case)


REQUEST_IDS = [
    # (sent, echoed)
    ("checkout-7f3a9c", True),
    ("svc.a:b_c-1", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("has space", False),
    ("", False),
    (None, False),
]


async def test_request_id(client: Any, contract: Contract) -> None:
    header_schema = contract.resolve(contract.spec["components"]["headers"]["X-Request-ID"])["schema"]
    parameter = contract.resolve(contract.spec["components"]["parameters"]["RequestId"])
    assert (parameter["in"], parameter["name"]) == ("header", "X-Request-ID")
    for sent, echoed in REQUEST_IDS:
        headers = {} if sent is None else {"X-Request-ID": sent}
        for resp in (
            await client.get("/health", headers=headers),
            await client.post(GEN, json={"prompt": "Hi"}, headers=headers),
            await client.post(GEN, json={}, headers=headers),
            await client.get("/ai/threads/no-such-thread/messages", headers=headers),
        ):
            await resp.read()
            got = resp.headers["X-Request-ID"]
            assert not contract.errors(header_schema, got), got
            assert (got == sent) is echoed, (sent, got)
