"""`GET /ai/status` and the recent activity behind its charts; the failed attempts in `done`."""

from __future__ import annotations

from providers.base import AttemptFailed, Finish, Usage
from service.outcome import Outcome
from service.status import RecentActivity
from tests.conftest import parse_events
from tests.fake_upstream import Scenario

FAIL_529 = Scenario(kind="http_error", status=529)


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def answered(ttft: float | None = 100.0, failed: int = 0) -> Outcome:
    attempts = [AttemptFailed(f"anthropic/m{n}", "anthropic", "upstream_unavailable", 529) for n in range(failed)]
    return Outcome(finish=Finish("m", "anthropic", "end_turn", Usage(1, 1)), attempts=attempts, first_token_ms=ttft)


def test_activity_totals_per_interval() -> None:
    clock = Clock(1_000.0)
    activity = RecentActivity(interval=10, intervals=3, clock=clock)
    activity.record(answered(ttft=100.0))
    activity.record(answered(ttft=300.0, failed=2))
    activity.record(Outcome(client_gone=True))
    activity.record(Outcome())  # an error: no finish, client still there
    clock.now = 1_012.0
    activity.record(answered(ttft=None))  # an answer without text has no time to first token
    stats = activity.snapshot()
    assert [s.start for s in stats] == [990.0, 1_000.0, 1_010.0]
    assert [(s.answers, s.errors, s.fallbacks, s.ttft_ms) for s in stats] == [
        (0, 0, 0, None),
        (4, 1, 2, 200.0),
        (1, 0, 0, None),
    ]


def test_activity_keeps_only_the_window_and_shows_idle_intervals() -> None:
    clock = Clock(0.0)
    activity = RecentActivity(interval=10, intervals=3, clock=clock)
    for n in range(6):
        clock.now = n * 10.0
        activity.record(answered(ttft=float(n)))
    clock.now = 75.0  # two idle intervals since the last answer
    stats = activity.snapshot()
    assert [s.start for s in stats] == [50.0, 60.0, 70.0]
    assert [s.answers for s in stats] == [1, 0, 0]
    assert stats[0].ttft_ms == 5.0


async def test_status_reports_models_storage_and_recent_answers(make_client, fake_upstream):
    client = await make_client(cooldown_failures=2, openai_api_key=None)
    fake_upstream.script("claude-primary", FAIL_529, FAIL_529, Scenario())
    for _ in range(3):
        resp = await client.post("/ai/stream/generate", json={"prompt": "Hi"})
        assert parse_events(await resp.read())[-1]["type"] == "done"
    resp = await client.get("/ai/status")
    assert resp.status == 200
    status = await resp.json()
    assert set(status) == {"models", "storage", "open_streams", "recent"}
    models = {m["name"]: m for m in status["models"]}
    assert list(models) == ["anthropic/claude-primary", "anthropic/claude-backup", "openai/gpt-fallback"]
    primary = models["anthropic/claude-primary"]
    assert primary["has_credentials"] is True
    assert primary["circuit"]["state"] == "open" and primary["circuit"]["consecutive_failures"] == 2
    assert primary["circuit"]["retry_in_seconds"] > 0
    assert models["anthropic/claude-backup"]["circuit"]["state"] == "closed"
    assert models["openai/gpt-fallback"] == {
        "name": "openai/gpt-fallback", "provider": "openai", "model": "gpt-fallback", "has_credentials": False, "circuit": None,
    }
    assert status["storage"] == {"backend": "sqlite", "ok": True}
    assert status["open_streams"] == 0
    recent = status["recent"]
    assert recent["interval_seconds"] == 10
    intervals = recent["intervals"]
    assert len(intervals) == 30
    assert [i["start"] for i in intervals] == sorted(i["start"] for i in intervals)
    # The three answers may straddle an interval boundary: count them over the window.
    assert sum(i["answers"] for i in intervals) == 3
    assert sum(i["fallbacks"] for i in intervals) == 2  # the primary failed twice, then its circuit opened
    assert sum(i["errors"] for i in intervals) == 0
    assert all(i["ttft_ms"] is None or i["ttft_ms"] > 0 for i in intervals)
    assert any(i["ttft_ms"] is not None for i in intervals)


async def test_status_counts_an_open_stream(make_client, fake_upstream):
    client = await make_client()
    fake_upstream.script("claude-primary", Scenario(tokens=["a", "b"], token_delay=30))
    resp = await client.post("/ai/stream/generate", json={"prompt": "Hi"})
    assert await resp.content.readuntil(b"\n\n")  # the first token is out: the answer is open
    status = await (await client.get("/ai/status")).json()
    assert status["open_streams"] == 1
    resp.close()
    await fake_upstream.wait_for_disconnect(timeout=5)


async def test_status_needs_a_key_like_every_ai_route(make_client):
    client = await make_client(api_keys="ops:0123456789abcdef-ops")
    resp = await client.get("/ai/status")
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"
    resp = await client.get("/ai/status", headers={"Authorization": "Bearer 0123456789abcdef-ops"})
    assert resp.status == 200


async def test_done_names_the_failed_attempts_after_a_fallback(client, fake_upstream):
    fake_upstream.script("claude-primary", FAIL_529)
    fake_upstream.script("claude-backup", Scenario(kind="http_error", status=500))
    resp = await client.post("/ai/stream/chat", json={"messages": [{"role": "user", "content": "Hi"}]})
    done = parse_events(await resp.read())[-1]
    assert done["type"] == "done" and done["model"] == "gpt-fallback"
    assert done["attempts"] == [
        {"model": "anthropic/claude-primary", "code": "upstream_unavailable"},
        {"model": "anthropic/claude-backup", "code": "upstream_unavailable"},
    ]
    resp = await client.post("/ai/stream/generate", json={"prompt": "Hi", "stream": False})
    whole = await resp.json()
    assert whole["text"] == "Hello, world!" and [a["model"] for a in whole["attempts"]] == [
        "anthropic/claude-primary", "anthropic/claude-backup",
    ]


async def test_done_has_no_attempts_without_a_fallback(client):
    resp = await client.post("/ai/stream/generate", json={"prompt": "Hi"})
    assert "attempts" not in parse_events(await resp.read())[-1]
    resp = await client.post("/ai/stream/generate", json={"prompt": "Hi", "stream": False})
    assert "attempts" not in await resp.json()
