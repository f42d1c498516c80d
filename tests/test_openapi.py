"""The API description (openapi.yaml) is valid, is what the service serves, and matches what it answers.

Each request below goes through the real app (and the fake upstream); its answer is checked
against the operation the document describes: the status is documented, the media type too,
the body (or every event of a stream) validates against the documented schema and holds no
field the schema does not name, and the documented headers are present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientResponse
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from service import __version__
from tests.conftest import parse_events
from tests.fake_upstream import FakeUpstream, Scenario

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
MODEL_NAMES = ("claude-primary", "claude-backup", "gpt-fallback")  # the upstream names of conftest's MODELS
TERMINAL_EVENTS = {"done", "error"}
# Documented, not routed yet: the thread endpoints are being built.
PLANNED_OPERATIONS = {"listThreadMessages", "deleteThread"}


@cache
def load_spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


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
        if value is not None and header["schema"].get("type") == "string":
            assert not contract.errors(header["schema"], value), f"{where}: header {name}={value!r} does not match its schema"
    assert resp.headers.get("X-Request-ID"), f"{where}: every response carries X-Request-ID"
    body = await resp.read()
    if "content" not in documented:
        assert body == b"", f"{where}: no body is documented"
        return None
    schema = contract.response_schema(template, method, resp.status, media_type)
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
    assert len(operation_ids) == len(set(operation_ids)) == 7


def test_every_schema_is_valid_draft_2020_12(contract: Contract) -> None:
    schemas = contract.spec["components"]["schemas"]
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    event_schemas = [contract.resolve(s) for s in schemas["StreamEvent"]["oneOf"]]
    assert [s["properties"]["type"]["const"] for s in event_schemas] == ["content", "done", "error"]


def test_examples_match_their_schemas(contract: Contract) -> None:
    """The document's own examples are answers the schemas accept (a reader copies them)."""
    checked = 0
    for template, item in contract.spec["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody")
            if body:
                media = contract.resolve(body)["content"]["application/json"]
                for example in media.get("examples", {}).values():
                    assert not contract.errors(media["schema"], example["value"]), (template, example)
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
                        checked += 1
    for name, schema in contract.spec["components"]["schemas"].items():
        for value in schema.get("examples", []):
            assert not contract.errors(schema, value), (name, value)
            checked += 1
    assert checked >= 30


async def test_served_document_is_openapi_yaml(client: Any, contract: Contract) -> None:
    resp = await client.get("/openapi.yaml")
    assert resp.status == 200
    text = await check_answer(contract, "/openapi.yaml", "GET", resp)
    assert resp.content_type == "application/yaml"
    assert yaml.safe_load(text) == load_spec()


async def test_every_route_is_documented(client: Any, contract: Contract) -> None:
    routed = {(route.method, route.resource.canonical) for route in client.app.router.routes() if route.method != "HEAD"}
    documented = {
        (method.upper(), template): op["operationId"]
        for template, item in contract.spec["paths"].items()
        for method, op in item.items()
    }
    assert routed <= set(documented), f"routes missing from openapi.yaml: {routed - set(documented)}"
    not_routed = {op_id for key, op_id in documented.items() if key not in routed}
    assert not_routed <= PLANNED_OPERATIONS, f"documented but not served: {not_routed}"


# --- answers of the running app ----------------------------------------------------------

USER_HI = [{"role": "user", "content": "Hi"}]
ALL_FAIL_529 = {name: Scenario(kind="http_error", status=529) for name in MODEL_NAMES}


@dataclass(frozen=True)
class Case:
    id: str
    template: str
    method: str = "POST"
    json: Any = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    media_type: str = "application/json"
    code: str | None = None  # the error code (JSON error or terminal error event)
    # Whether the documented request schema accepts the body: False for what the schema alone
    # rejects, True for checks that need the configuration (model, time zone, body size).
    schema_valid: bool | None = None
    scripts: dict[str, Scenario] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.id


GEN, CHAT = "/ai/stream/generate", "/ai/stream/chat"

DEFAULT_CASES = [
    Case("generate-stream", GEN, json={"prompt": "Hi"}, media_type="text/event-stream", schema_valid=True),
    Case(
        "generate-stream-all-options",
        GEN,
        json={"prompt": "Hi", "system_prompt": "Be brief.", "max_tokens": 8192, "temperature": 0, "model": "claude-backup",
              "timezone": "Europe/Berlin", "stream": True, "unknown_field": [1, 2]},
        media_type="text/event-stream",
        schema_valid=True,
    ),
    Case(
        "chat-stream",
        CHAT,
        json={"messages": [{"role": "system", "content": "Be brief."}, *USER_HI, {"role": "assistant", "content": "Hello!"},
                           {"role": "user", "content": "Bye"}],
              "system": "You are kind.", "thread_id": "thread_01-a", "user_id": "user 7", "model": "openai/gpt-fallback",
              "temperature": 0.5},
        media_type="text/event-stream",
        schema_valid=True,
    ),
    Case("generate-json", GEN, json={"prompt": "Hi", "stream": False}, schema_valid=True),
    Case("generate-json-nulls", GEN, json={"prompt": "Hi", "stream": False, "max_tokens": None, "temperature": None,
                                           "model": None, "timezone": None, "system_prompt": None}, schema_valid=True),
    Case("chat-json", CHAT, json={"messages": USER_HI, "stream": False, "max_tokens": 1}, schema_valid=True),
    Case("health", "/health", method="GET"),
    Case("stream-health", "/ai/stream/health", method="GET"),
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
]

CONFIGURED_CASES = [
    Case("body-too-large", GEN, json={"prompt": "x" * 3000}, status=413, code="body_too_large", schema_valid=True,
         settings={"max_body_bytes": 2048}),
    Case("body-too-large-chat", CHAT, json={"messages": [{"role": "user", "content": "x" * 3000}]}, status=413,
         code="body_too_large", schema_valid=True, settings={"max_body_bytes": 2048}),
    Case("generate-json-timeout", GEN, json={"prompt": "Hi", "stream": False}, status=504, code="timeout", schema_valid=True,
         scripts={"claude-primary": Scenario(kind="stall", stall_seconds=30)}, settings={"request_timeout": 0.1}),
    Case("no-model-has-credentials", GEN, json={"prompt": "Hi"}, status=503, code="no_models_available", schema_valid=True,
         settings={"anthropic_api_key": None, "openai_api_key": None}),
    Case("health-degraded", "/health", method="GET", settings={"openai_api_key": None}),
]


async def exercise(client: Any, contract: Contract, fake_upstream: FakeUpstream, case: Case) -> Any:
    for model, scenario in case.scripts.items():
        fake_upstream.script(model, scenario)
    kwargs: dict[str, Any] = {"headers": case.headers}
    if case.data is not None:
        kwargs["data"] = case.data
    elif case.json is not None:
        kwargs["json"] = case.json
    resp = await client.request(case.method, case.template, **kwargs)
    assert (resp.status, resp.content_type) == (case.status, case.media_type), await resp.text()
    answer = await check_answer(contract, case.template, case.method, resp)

    if case.schema_valid is not None:
        problems = contract.errors(contract.request_schema(case.template, case.method), case.json)
        assert (not problems) == case.schema_valid, f"the request schema {'rejects' if problems else 'accepts'} {case.json}: {problems}"
    if case.media_type == "text/event-stream":
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
    return answer


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=str)
async def test_answer_matches_contract(case: Case, client: Any, contract: Contract, fake_upstream: FakeUpstream) -> None:
    answer = await exercise(client, contract, fake_upstream, case)
    if case.template.endswith("health"):
        assert answer["status"] == "ok" and answer["model"] == "claude-primary"
        assert [m["name"] for m in answer["models"]] == [
            "anthropic/claude-primary", "anthropic/claude-backup", "openai/gpt-fallback"
        ]


@pytest.mark.parametrize("case", CONFIGURED_CASES, ids=str)
async def test_answer_matches_contract_configured(
    case: Case, make_client: Any, contract: Contract, fake_upstream: FakeUpstream
) -> None:
    client = await make_client(**case.settings)
    answer = await exercise(client, contract, fake_upstream, case)
    if case.id == "health-degraded":
        assert answer["status"] == "degraded"
        assert [m["has_credentials"] for m in answer["models"]] == [True, True, False]


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("checkout-7f3a9c", True),
        ("svc.a:b_c-1", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("", False),
        (None, False),
    ],
)
async def test_request_id(sent: str | None, echoed: bool, client: Any, contract: Contract) -> None:
    header_schema = contract.resolve(contract.spec["components"]["headers"]["X-Request-ID"])["schema"]
    parameter = contract.resolve(contract.spec["components"]["parameters"]["RequestId"])
    assert (parameter["in"], parameter["name"]) == ("header", "X-Request-ID")
    headers = {} if sent is None else {"X-Request-ID": sent}
    for resp in (
        await client.get("/health", headers=headers),
        await client.post(GEN, json={"prompt": "Hi"}, headers=headers),
        await client.post(GEN, json={}, headers=headers),
    ):
        await resp.read()
        got = resp.headers["X-Request-ID"]
        assert not contract.errors(header_schema, got), got
        assert (got == sent) is echoed
