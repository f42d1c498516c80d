"""/health: what the platform's checker and operators read; it never calls a model."""

from __future__ import annotations

import pytest

from service import __version__


@pytest.mark.parametrize("path", ["/health", "/ai/stream/health"])
async def test_health_reports_configuration(client, fake_upstream, path):
    resp = await client.get(path)
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"
    assert body["streaming_enabled"] is True and body["supports_streaming"] is True
    assert body["format"] == "Server-Sent Events (SSE)"
    assert body["model"] == "claude-primary" and body["provider"] == "anthropic"
    closed = {"state": "closed", "consecutive_failures": 0, "retry_in_seconds": 0.0}
    def model(endpoint, name):
        return {"name": f"{endpoint}/{name}", "provider": endpoint, "endpoint": endpoint, "api": endpoint, "model": name,
                "alias": None, "max_tokens_limit": 8192, "has_credentials": True, "circuit": closed}

    assert body["models"] == [
        model("anthropic", "claude-primary"), model("anthropic", "claude-backup"), model("openai", "gpt-fallback")
    ]
    assert body["endpoints"] == [
        {"name": "anthropic", "api": "anthropic", "has_credentials": True},
        {"name": "openai", "api": "openai", "has_credentials": True},
    ]
    assert body["version"] == __version__
    assert fake_upstream.requests == []


async def test_missing_credentials_are_reported_as_degraded(make_client):
    client = await make_client(openai_api_key=None)
    body = await (await client.get("/health")).json()
    assert body["status"] == "degraded"
    assert [m["has_credentials"] for m in body["models"]] == [True, True, False]
    assert [(e["name"], e["has_credentials"]) for e in body["endpoints"]] == [("anthropic", True), ("openai", False)]


async def test_health_reveals_no_secrets_or_addresses(client, fake_upstream):
    text = await (await client.get("/health")).text()
    assert "sk-" not in text and "secret" not in text
    assert fake_upstream.base_url.split("//")[1] not in text


async def test_head_health_for_simple_checkers(client):
    resp = await client.head("/health")
    assert resp.status == 200


async def test_openapi_document_is_served(client):
    resp = await client.get("/openapi.yaml")
    assert resp.status == 200
    assert "yaml" in resp.headers["Content-Type"]
    assert (await resp.text()).startswith("openapi: 3.1")
