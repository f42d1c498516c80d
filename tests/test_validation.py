"""Bad input: a clear JSON error before any upstream call, and nothing else happens."""

from __future__ import annotations

import pytest

CHAT_OK = {"messages": [{"role": "user", "content": "hi"}]}


async def post_error(client, path, *, status=400, **kwargs):
    resp = await client.post(path, **kwargs)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    assert "X-Request-ID" in resp.headers
    body = await resp.json()
    assert set(body) == {"error", "code", "details"}
    assert isinstance(body["error"], str) and body["error"]
    return body


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({}, "prompt", "prompt is required"),
        ({"prompt": ""}, "prompt", "prompt must not be empty"),
        ({"prompt": "   \n"}, "prompt", "prompt must not be blank"),
        ({"prompt": 42}, "prompt", "prompt must be a string"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "max_tokens must be at least 1"),
        ({"prompt": "x", "max_tokens": "100"}, "max_tokens", "max_tokens must be an integer"),
        ({"prompt": "x", "max_tokens": 10.5}, "max_tokens", "max_tokens must be an integer"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens", "max_tokens must be an integer"),
        ({"prompt": "x", "max_tokens": 8193}, "max_tokens", "max_tokens must be at most 8192"),
        ({"prompt": "x", "temperature": 1.5}, "temperature", "temperature must be at most 1"),
        ({"prompt": "x", "temperature": -0.1}, "temperature", "temperature must be at least 0"),
        ({"prompt": "x", "temperature": "hot"}, "temperature", "temperature must be a number"),
        ({"prompt": "x", "stream": "yes"}, "stream", "stream must be true or false"),
        ({"prompt": "x", "timezone": "Mars/Olympus"}, "timezone", "timezone 'Mars/Olympus' is not a known IANA time zone, such as 'Europe/Berlin'"),
        ({"prompt": "x", "timezone": "../../etc/passwd"}, "timezone", "timezone '../../etc/passwd' is not a known IANA time zone, such as 'Europe/Berlin'"),
        ({"prompt": "x", "system_prompt": ["a"]}, "system_prompt", "system_prompt must be a string"),
    ],
)
async def test_generate_validation(client, fake_upstream, body, field, message):
    error = await post_error(client, "/ai/stream/generate", json=body)
    assert error["code"] == "validation_error"
    assert {"field": field, "message": message} in error["details"]
    assert message in error["error"]
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({}, "messages", "messages is required"),
        ({"messages": []}, "messages", "messages must not be empty"),
        ({"messages": "hi"}, "messages", "messages must be a list"),
        ({"messages": ["hi"]}, "messages.0", "messages.0 must be an object"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "messages.0.role must be one of 'user', 'assistant' or 'system'"),
        ({"messages": [{"role": "user"}]}, "messages.0.content", "messages.0.content is required"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages.0.content", "messages.0.content must not be empty"),
        ({"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": " "}]}, "messages.1.content", "messages.1.content must not be blank"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages", "messages must hold at least one user or assistant message"),
        ({**CHAT_OK, "thread_id": "has space"}, "thread_id", "thread_id must be 1-128 letters, digits, '-' or '_'"),
        ({**CHAT_OK, "thread_id": "x" * 129}, "thread_id", "thread_id must be 1-128 letters, digits, '-' or '_'"),
        ({**CHAT_OK, "thread_id": ""}, "thread_id", "thread_id must not be empty"),
        ({**CHAT_OK, "user_id": ""}, "user_id", "user_id must not be empty"),
        ({**CHAT_OK, "model": "gpt-unknown"}, "model", "model 'gpt-unknown' is not configured; choose one of: anthropic/claude-primary, anthropic/claude-backup, openai/gpt-fallback"),
        ({**CHAT_OK, "model": "openai/claude-primary"}, "model", "model 'openai/claude-primary' is not configured; choose one of: anthropic/claude-primary, anthropic/claude-backup, openai/gpt-fallback"),
    ],
)
async def test_chat_validation(client, fake_upstream, body, field, message):
    error = await post_error(client, "/ai/stream/chat", json=body)
    assert error["code"] == "validation_error"
    assert {"field": field, "message": message} in error["details"]
    assert fake_upstream.requests == []


async def test_several_problems_are_all_listed(client):
    error = await post_error(client, "/ai/stream/generate", json={"prompt": "", "max_tokens": 0, "temperature": 2})
    assert [d["field"] for d in error["details"]] == ["max_tokens", "temperature", "prompt"]


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
        ({"data": b"", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
        ({"json": ["a", "list"]}, 400, "invalid_json"),
        ({"json": "a string"}, 400, "invalid_json"),
        ({"data": b"prompt=hello", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, "unsupported_media_type"),
        ({"data": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"data": b"\xff\xfe\x00", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
    ],
)
async def test_body_that_is_not_a_json_object(client, fake_upstream, kwargs, status, code):
    error = await post_error(client, "/ai/stream/generate", status=status, **kwargs)
    assert error["code"] == code
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", None]
)
async def test_json_sent_as_another_type_is_415(client, fake_upstream, content_type):
    # The types a web page can send anywhere without a CORS preflight (and none at all) are
    # refused, so another site cannot spend this service's tokens through a visitor's browser.
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await client.post("/ai/stream/generate", data=b'{"prompt": "hi"}', headers=headers, skip_auto_headers=["Content-Type"])
    assert resp.status == 415
    body = await resp.json()
    assert body["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in body["error"]
    assert fake_upstream.requests == []


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "application/vnd.api+json"])
async def test_json_content_types_are_accepted(client, content_type):
    resp = await client.post("/ai/stream/generate", data=b'{"prompt": "hi"}', headers={"Content-Type": content_type})
    assert resp.status == 200
    assert (await resp.read()).endswith(b"}\n\n")


async def test_body_over_the_limit_is_413(make_client, fake_upstream):
    client = await make_client(max_body_bytes=2048)
    error = await post_error(client, "/ai/stream/generate", status=413, json={"prompt": "x" * 5000})
    assert error["code"] == "body_too_large"
    assert "2048 bytes" in error["error"]
    # Also when the client does not announce the length (chunked upload).
    async def chunks():
        yield b'{"prompt": "'
        yield b"y" * 4096
        yield b'"}'

    error = await post_error(client, "/ai/stream/generate", status=413, data=chunks(), headers={"Content-Type": "application/json"})
    assert error["code"] == "body_too_large"
    assert fake_upstream.requests == []


async def test_unknown_fields_are_ignored(client):
    resp = await client.post("/ai/stream/generate", json={"prompt": "x", "unexpected": 1, "user_id": "u"})
    assert resp.status == 200
    await resp.read()


async def test_unknown_route_and_wrong_method_are_json(client):
    error = await post_error(client, "/ai/stream/nope", status=404, json={})
    assert error["code"] == "not_found"
    resp = await client.get("/ai/stream/chat")
    assert resp.status == 405
    assert (await resp.json())["code"] == "method_not_allowed"
    assert "POST" in resp.headers["Allow"]
