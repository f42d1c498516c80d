"""Hostile clients cannot hold or poison what other clients share: slow bodies, input that
cannot be encoded, NUL bytes in ids, deep nesting, broken encodings, bad or huge
`Authorization` headers, key guessing and cross-site posts. Each is a clear 4xx before any
upstream call, and none moves a circuit or the storage state in `/health`."""

from __future__ import annotations

import asyncio
import json
import zlib

import pytest

from tests.conftest import parse_events

KEY = "frontend-0123456789abcdef"
CHAT = "/ai/stream/chat"


def ask(**extra):
    return {"messages": [{"role": "user", "content": "x"}], **extra}


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP answer with a Content-Length: its head and body."""
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        return head + await reader.readexactly(length)


async def raw_request(client, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes as they are (aiohttp's client would refuse to) and read the answer."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head + body)
    await writer.drain()
    try:
        return await read_answer(reader)
    finally:
        writer.close()


async def test_slow_body_times_out_and_holds_its_slot_from_the_first_byte(make_client, fake_upstream):
    client = await make_client(body_timeout=0.3, max_concurrent_streams=1)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    body = json.dumps(ask()).encode()
    writer.write(
        b"POST /ai/stream/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5]
    )
    await writer.drain()
    await asyncio.sleep(0.05)
    # While the slow body is being read, its client's one stream slot is taken.
    busy = await client.post(CHAT, json=ask(), headers={"Content-Type": "application/json"})
    assert busy.status == 429 and "AI_MAX_CONCURRENT_STREAMS" in (await busy.json())["error"]
    answer = await read_answer(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"Connection: close" in answer
    assert b'"code": "body_timeout"' in answer and b"AI_BODY_TIMEOUT" in answer
    assert fake_upstream.requests == []
    # The slot came back.
    again = await client.post(CHAT, json=ask())
    assert again.status == 200
    await again.read()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (ask(system="\ud800"), "system"),
        ({"messages": [{"role": "user", "content": "ok \udfff"}]}, "messages.0.content"),
        (ask(user_id="\ud83d"), "user_id"),
    ],
)
async def test_text_that_cannot_be_encoded_is_400_and_moves_no_circuit(make_client, fake_upstream, body, field):
    client = await make_client(cooldown_failures=1)
    for _ in range(3):
        resp = await client.post(CHAT, data=json.dumps(body), headers={"Content-Type": "application/json"})
        assert resp.status == 400
        error = await resp.json()
        assert error["code"] == "validation_error" and error["details"][0]["field"] == field
    assert fake_upstream.requests == []
    health = await (await client.get("/health")).json()
    assert all(m["circuit"]["state"] == "closed" for m in health["models"] if "circuit" in m)
    # Real requests still go to the primary.
    assert parse_events(await (await client.post(CHAT, json=ask())).read())[-1]["model"] == "claude-primary"


async def test_generate_prompt_with_a_lone_surrogate_is_400(client, fake_upstream):
    resp = await client.post("/ai/stream/generate", data='{"prompt": "hi", "system_prompt": "\\ud800"}',
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["details"][0]["field"] == "system_prompt"
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("DELETE", "/ai/threads/x?user_id=%00", None),
        ("GET", "/ai/threads/x/messages?user_id=a%00b", None),
        ("GET", "/ai/threads/x/messages?before=%00", None),
        ("POST", CHAT, {**ask(), "thread_id": "t", "user_id": "a\x00b"}),
    ],
)
async def test_nul_in_ids_is_400_and_leaves_storage_healthy(make_client, store_target, method, path, body):
    client = await make_client(database_url=store_target.url)
    resp = await client.request(method, path, json=body)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["code"] == "validation_error"
    health = await (await client.get("/health")).json()
    assert health["storage"]["ok"] is True and health["status"] == "ok"


async def test_deeply_nested_body_is_400(client, fake_upstream):
    body = '{"messages": ' + "[" * 5000 + "]" * 5000 + "}"
    resp = await client.post(CHAT, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["code"] == "invalid_json"
    assert fake_upstream.requests == []


async def test_a_body_whose_encoding_is_broken_is_400(client, fake_upstream):
    resp = await client.post(CHAT, data=b"this is not deflate",
                             headers={"Content-Type": "application/json", "Content-Encoding": "deflate"})
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_body"
    assert resp.headers["Connection"] == "close"  # the connection is not reused after a broken body
    await asyncio.sleep(0)
    good = zlib.compress(json.dumps(ask()).encode())
    resp = await client.post(CHAT, data=good, headers={"Content-Type": "application/json", "Content-Encoding": "deflate"})
    assert resp.status == 200
    await resp.read()


async def test_authorization_that_is_not_utf8_is_401(make_client, fake_upstream):
    client = await make_client(api_keys=KEY)
    body = json.dumps(ask()).encode()
    answer = await raw_request(
        client,
        b"POST /ai/stream/chat HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer \xff\xfe" + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n",
        body,
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"code": "unauthorized"' in answer
    assert fake_upstream.requests == []


async def test_failed_authentications_are_limited_per_address(make_client, fake_upstream):
    client = await make_client(api_keys=KEY, auth_failures_per_minute=5)
    wrong = {"Authorization": "Bearer wrong-key-0000000000000"}
    statuses = [(await client.post(CHAT, json=ask(), headers=wrong)).status for _ in range(7)]
    assert statuses == [401] * 5 + [429] * 2
    resp = await client.post(CHAT, json=ask(), headers=wrong)
    assert int(resp.headers["Retry-After"]) >= 1
    assert "AI_AUTH_FAILURES_PER_MINUTE" in (await resp.json())["error"]
    # /health stays open to everyone, whatever an address guessed.
    assert (await client.get("/health")).status == 200
    assert fake_upstream.requests == []


async def test_successful_authentications_are_not_counted(make_client):
    client = await make_client(api_keys=KEY, auth_failures_per_minute=2)
    for _ in range(5):
        resp = await client.post(CHAT, json=ask(), headers={"Authorization": f"Bearer {KEY}"})
        assert resp.status == 200
        await resp.read()


@pytest.mark.parametrize("path", [CHAT, "/ai/stream/generate", "/ai/threads/t"])
async def test_cross_site_simple_requests_are_refused(client, fake_upstream, path):
    # What any web page can send to any address without a preflight: text/plain, a form.
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        method = "PATCH" if path.startswith("/ai/threads") else "POST"
        resp = await client.request(method, path, data=json.dumps({**ask(), "prompt": "x", "title": "t"}),
                                    headers={"Content-Type": content_type})
        assert resp.status == 415, (path, content_type, resp.status)
    assert fake_upstream.requests == []
