"""/metrics: what operators graph and alert on."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from service.app_keys import CHAIN, METRICS
from tests.conftest import parse_events
from tests.fake_upstream import Scenario

KEY = "ops-0123456789abcdef-secret"


async def scrape(client, **kwargs) -> dict[tuple[str, tuple], float]:
    resp = await client.get("/metrics", **kwargs)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_answers_tokens_latency_and_fallbacks_are_counted(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=529), Scenario())
    await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read()  # falls back to backup
    await (await client.post("/ai/stream/generate", json={"prompt": "x", "stream": False})).read()  # primary answers
    for model in ("claude-primary", "claude-backup", "gpt-fallback"):
        fake_upstream.script(model, Scenario(kind="http_error", status=503))
    await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read()  # everything fails
    await client.post("/ai/stream/generate", json={"prompt": ""})  # 400

    m = await scrape(client)
    assert value(m, "ai_stream_answers_total", outcome="done", code="") == 2
    assert value(m, "ai_stream_answers_total", outcome="error", code="upstream_unavailable") == 1
    assert value(m, "ai_stream_tokens_total", model="anthropic/claude-backup", direction="output") == 4
    assert value(m, "ai_stream_tokens_total", model="anthropic/claude-primary", direction="input") == 11
    assert value(m, "ai_stream_time_to_first_token_seconds_count", model="anthropic/claude-backup") == 1
    assert value(m, "ai_stream_answer_duration_seconds_count", model="anthropic/claude-primary") == 1
    assert value(m, "ai_stream_fallbacks_total", from_model="anthropic/claude-primary", to_model="anthropic/claude-backup") == 2
    assert value(m, "ai_stream_fallbacks_total", from_model="openai/gpt-fallback", to_model="none") == 1
    assert value(m, "ai_stream_upstream_errors_total", provider="anthropic", status="529", code="upstream_unavailable") == 1
    assert value(m, "ai_stream_upstream_errors_total", provider="openai", status="503", code="upstream_unavailable") == 1
    assert value(m, "ai_stream_requests_total", route="/ai/stream/generate", method="POST", status="200") == 3
    assert value(m, "ai_stream_requests_total", route="/ai/stream/generate", method="POST", status="400") == 1
    assert value(m, "ai_stream_open_answers") == 0
    assert value(m, "ai_stream_model_circuit_state", model="anthropic/claude-primary") == 0


async def test_client_gone_and_circuit_state(make_client, fake_upstream):
    client = await make_client(cooldown_failures=1, cooldown_seconds=60)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=500))
    fake_upstream.script("claude-backup", Scenario(tokens=["a"] * 50, token_delay=0.05))
    resp = await client.post("/ai/stream/generate", json={"prompt": "x"})
    await resp.content.readuntil(b"\n\n")
    m = await scrape(client)
    assert value(m, "ai_stream_open_answers") == 1
    resp.close()
    await fake_upstream.wait_for_disconnect(timeout=1.0)
    m = await scrape(client)
    assert value(m, "ai_stream_answers_total", outcome="client_gone", code="") == 1
    assert value(m, "ai_stream_open_answers") == 0
    assert value(m, "ai_stream_model_circuit_state", model="anthropic/claude-primary") == 2


async def test_error_after_text_counts_as_upstream_error(client, fake_upstream):
    fake_upstream.script("claude-primary", Scenario(kind="stream_error", after_tokens=1))
    events = parse_events(await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read())
    assert events[-1]["type"] == "error"
    m = await scrape(client)
    assert value(m, "ai_stream_upstream_errors_total", provider="anthropic", status="", code="upstream_unavailable") == 1
    assert value(m, "ai_stream_fallbacks_total", from_model="anthropic/claude-primary", to_model="anthropic/claude-backup") == 0


async def test_unmatched_routes_do_not_explode_label_sets(client):
    for n in range(5):
        await client.get(f"/no/such/path/{n}")
    m = await scrape(client)
    assert value(m, "ai_stream_requests_total", route="unmatched", method="GET", status="404") == 5
    await client.get("/ai/threads/abc/messages")
    m = await scrape(client)
    assert value(m, "ai_stream_requests_total", route="/ai/threads/{thread_id}/messages", method="GET", status="404") == 1


async def test_methods_nobody_uses_share_one_series(client):
    """WebDAV's and the other methods the HTTP parser takes make no series of their own."""
    for method in ("PROPFIND", "MKCOL", "LOCK", "UNLOCK", "SEARCH"):
        assert (await client.request(method, "/no/such/path")).status == 404
    assert (await client.request("DELETE", "/no/such/path")).status == 404
    m = await scrape(client)
    assert value(m, "ai_stream_requests_total", route="unmatched", method="other", status="404") == 5
    assert value(m, "ai_stream_requests_total", route="unmatched", method="DELETE", status="404") == 1
    assert {dict(labels)["method"] for name, labels in m if name == "ai_stream_requests_total"} == {"other", "DELETE"}  # the scrape itself is counted after it


async def test_the_circuit_gauge_follows_an_open_circuit_back_to_closed(make_client, fake_upstream):
    client = await make_client(cooldown_failures=1, cooldown_seconds=60)
    fake_upstream.script("claude-primary", Scenario(kind="http_error", status=500), Scenario())
    await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read()  # the backup answers
    assert value(await scrape(client), "ai_stream_model_circuit_state", model="anthropic/claude-primary") == 2
    circuit = client.app[CHAIN].circuits["anthropic/claude-primary"]
    circuit.open_until = 0.0  # the cool-down is over: half open
    await (await client.post("/ai/stream/generate", json={"prompt": "x", "model": "claude-backup"})).read()
    # Written by the answer's end, not only by the scrape.
    registry = client.app[METRICS].registry
    assert registry.get_sample_value("ai_stream_model_circuit_state", {"model": "anthropic/claude-primary"}) == 1
    await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read()  # the probe succeeds
    assert value(await scrape(client), "ai_stream_model_circuit_state", model="anthropic/claude-primary") == 0


async def test_metrics_can_require_a_key(make_client):
    client = await make_client(api_keys=f"ops:{KEY}", metrics_public=False)
    assert (await client.get("/metrics")).status == 401
    await scrape(client, headers={"Authorization": f"Bearer {KEY}"})
    public = await make_client(api_keys=f"ops:{KEY}")
    await scrape(public)


async def test_storage_write_failures_are_counted(make_client, pg_url, fake_upstream):
    from tests.storage_fixtures import TcpProxy, with_address

    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    try:
        client = await make_client(database_url=with_address(pg_url, "127.0.0.1", proxy.port), request_timeout=1.0)
        fake_upstream.script("claude-primary", Scenario(tokens=["a", "b"], token_delay=0.2))
        resp = await client.post("/ai/stream/chat", json={"messages": [{"role": "user", "content": "x"}], "thread_id": "m"})
        await resp.content.readuntil(b"\n\n")
        await proxy.stop()
        assert parse_events(await resp.read())[-1]["persisted"] is False
        m = await scrape(client)
        assert value(m, "ai_stream_storage_write_failures_total") == 1
    finally:
        await proxy.stop()
