"""API keys, the loopback-only default and CORS."""

from __future__ import annotations

import pytest

from service.settings import ConfigError, load_settings
from tests.conftest import parse_events

FRONTEND_KEY = "fe-0123456789abcdef-secret"
BATCH_KEY = "batch-0123456789abcdef-secret"
KEYS = f"frontend:{FRONTEND_KEY},batch:{BATCH_KEY}"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def keyed(make_client):
    return await make_client(api_keys=KEYS)


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong-key-0123456789"), {"Authorization": FRONTEND_KEY}, {"Authorization": f"Basic {FRONTEND_KEY}"},
     bearer(FRONTEND_KEY[:-1]), bearer(FRONTEND_KEY + "x")],
    ids=["none", "wrong", "no-scheme", "basic", "prefix", "longer"],
)
@pytest.mark.parametrize(
    "method, path",
    [("POST", "/ai/stream/chat"), ("POST", "/ai/stream/generate"), ("GET", "/ai/threads/t/messages"), ("DELETE", "/ai/threads/t")],
)
async def test_missing_or_wrong_key_is_401_before_anything(keyed, fake_upstream, store_target, headers, method, path):
    resp = await keyed.request(method, path, json={**CHAT, "thread_id": "t", "prompt": "x"}, headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    body = await resp.json()
    assert body["code"] == "unauthorized" and FRONTEND_KEY not in body["error"]
    assert fake_upstream.requests == []


async def test_valid_keys_stream(keyed):
    for key in (FRONTEND_KEY, BATCH_KEY):
        resp = await keyed.post("/ai/stream/chat", json=CHAT, headers=bearer(key))
        assert resp.status == 200
        assert parse_events(await resp.read())[-1]["type"] == "done"


async def test_health_and_spec_stay_open_and_reveal_no_keys(keyed):
    for path in ("/health", "/openapi.yaml"):
        resp = await keyed.get(path)
        assert resp.status == 200
        text = await resp.text()
        assert FRONTEND_KEY not in text and BATCH_KEY not in text


async def test_one_key_never_reads_another_keys_threads(keyed):
    body = {**CHAT, "thread_id": "shared-name", "user_id": "u1"}
    resp = await keyed.post("/ai/stream/chat", json=body, headers=bearer(FRONTEND_KEY))
    assert parse_events(await resp.read())[-1]["persisted"] is True
    # Same thread id and user id, other key: as if the thread did not exist.
    params = {"user_id": "u1"}
    assert (await keyed.get("/ai/threads/shared-name/messages", params=params, headers=bearer(BATCH_KEY))).status == 404
    assert (await keyed.delete("/ai/threads/shared-name", params=params, headers=bearer(BATCH_KEY))).status == 404
    # Its own turn under that id is a thread of its own (ids are namespaced by owner).
    resp = await keyed.post("/ai/stream/chat", json={**body, "messages": [{"role": "user", "content": "mine"}]},
                            headers=bearer(BATCH_KEY))
    assert parse_events(await resp.read())[-1]["persisted"] is True
    resp = await keyed.get("/ai/threads/shared-name/messages", params=params, headers=bearer(BATCH_KEY))
    assert [m["content"] for m in (await resp.json())["messages"]][0] == "mine"
    resp = await keyed.get("/ai/threads/shared-name/messages", params=params, headers=bearer(FRONTEND_KEY))
    assert resp.status == 200 and len((await resp.json())["messages"]) == 2
    assert (await resp.json())["messages"][0]["content"] != "mine"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_refuses_to_listen_publicly_without_keys(host):
    with pytest.raises(ConfigError, match="refusing to listen on HOST=.* without AI_API_KEYS"):
        load_settings(host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_without_keys_is_fine(host):
    assert load_settings(host=host).api_keys == []


def test_public_host_with_keys_or_explicit_opt_in():
    assert load_settings(host="0.0.0.0", api_keys=f"k:{FRONTEND_KEY}").api_keys[0].name == "k"
    assert load_settings(host="0.0.0.0", allow_unauthenticated=True).allow_unauthenticated


@pytest.mark.parametrize(
    "value, message",
    [("short", "shorter than 16"), ("a b:0123456789abcdefgh", "key name"), (f"x:{FRONTEND_KEY},x:{BATCH_KEY}", "used twice")],
)
def test_bad_keys_setting(value, message):
    with pytest.raises(ConfigError, match=f"AI_API_KEYS: .*{message}"):
        load_settings(api_keys=value)


def test_unnamed_key_gets_a_stable_name_and_no_repr():
    first = load_settings(api_keys=FRONTEND_KEY).api_keys[0]
    assert first.name == load_settings(api_keys=f"{BATCH_KEY},{FRONTEND_KEY}").api_keys[1].name
    assert first.name.startswith("key-") and FRONTEND_KEY not in repr(first)


async def test_cors_preflight_and_exposed_headers(make_client):
    client = await make_client(api_keys=KEYS, cors_origins="https://app.example.com")
    resp = await client.options(
        "/ai/stream/chat",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "authorization"} <= allowed
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]

    resp = await client.post("/ai/stream/chat", json=CHAT, headers={"Origin": "https://app.example.com", **bearer(FRONTEND_KEY)})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]
    await resp.read()


async def test_cors_refuses_other_origins(make_client):
    client = await make_client(cors_origins="https://app.example.com")
    resp = await client.options(
        "/ai/stream/chat", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_wildcard(make_client):
    client = await make_client(cors_origins="*")
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"}, headers={"Origin": "https://any.example"})
    assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://any.example")
    await resp.read()


async def test_no_cors_headers_when_unset(client):
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"}, headers={"Origin": "https://app.example.com"})
    await resp.read()
    assert not any(h.lower().startswith("access-control-") for h in resp.headers)
    resp = await client.options("/ai/stream/chat", headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
    assert not any(h.lower().startswith("access-control-") for h in resp.headers)


def test_bad_cors_origin_setting():
    with pytest.raises(ConfigError, match="AI_CORS_ORIGINS"):
        load_settings(cors_origins="app.example.com/path")


async def test_stream_health_alias_stays_open_and_unlimited(make_client):
    client = await make_client(api_keys=KEYS, rate_limit_rpm=1)
    for _ in range(3):
        assert (await client.get("/ai/stream/health")).status == 200


async def test_refused_origin_gets_a_documented_code(make_client):
    client = await make_client(cors_origins="https://app.example.com")
    resp = await client.options("/ai/stream/chat", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert resp.status == 403
    assert (await resp.json())["code"] == "forbidden"
