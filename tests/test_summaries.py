"""Summaries of what no longer fits the token budget (AI_SUMMARY_MODEL), over HTTP on both
stores: written once in the background, replayed as a note, covered range in the thread's
detail, and a failing summary model that changes nothing but a log line and a metric."""

from __future__ import annotations

import asyncio

import pytest

from service.app_keys import SUMMARIZER
from tests.fake_upstream import Scenario
from tests.support.prompts import conversation
from tests.support.threads import Clock, app_client, chat, messages, turn

QUESTION = "q" * 396  # 99 tokens
ANSWER = "a" * 400  # 100
SUMMARY = "The user plans a day in Lisbon."


@pytest.fixture
async def summary_client(aiohttp_client, make_settings, store_target, fake_upstream):
    fake_upstream.count_tokens = True
    fake_upstream.script("claude-primary", Scenario(tokens=[ANSWER]))
    client = await app_client(aiohttp_client, make_settings, Clock(), database_url=store_target.url,
                              history_token_budget=500, summary_model="anthropic/claude-backup")
    return client, store_target


async def settled(client) -> None:
    """Wait for the summaries in progress (they run after the answer, in the background)."""
    tasks = list(client.app[SUMMARIZER].tasks)
    if tasks:
        await asyncio.wait(tasks, timeout=5)


async def test_left_out_turns_are_summarized_once_and_replayed(summary_client, fake_upstream):
    client, target = summary_client
    fake_upstream.script("claude-backup", Scenario(tokens=[SUMMARY]))
    for n in range(3):
        await chat(client, turn(f"{n} {QUESTION}"))
        await settled(client)
    # The third turn could not hold the first: it was summarized after the answer.
    assert len(conversation(fake_upstream.requests_for("claude-primary")[2].body)) == 3
    [asked] = fake_upstream.requests_for("claude-backup")
    assert asked.body["messages"][0]["content"] .startswith("The conversation:") and f"User: 0 {QUESTION}" in asked.body["messages"][0]["content"]
    [(from_seq, through_seq, content)] = await target.fetch("SELECT from_seq, through_seq, content FROM summaries")
    assert (from_seq, through_seq, content) == (1, 2, SUMMARY)

    await chat(client, turn(f"3 {QUESTION}"))
    await settled(client)
    fourth = fake_upstream.requests_for("claude-primary")[3].body
    assert fourth["system"] == f"Summary of the earlier conversation: {SUMMARY}"
    sent = conversation(fourth)
    assert all(not m["content"].startswith("0 ") for m in sent)  # the summarized turn is not replayed
    assert sent[-1]["content"].startswith("3 ")

    # With the note, the fourth turn could not hold the second either: the next summary
    # starts from the first and covers both.
    second_ask = fake_upstream.requests_for("claude-backup")[1].body["messages"][0]["content"]
    assert second_ask.startswith(f"Summary so far: {SUMMARY}") and f"User: 1 {QUESTION}" in second_ask
    assert "User: 0 " not in second_ask
    rows = await target.fetch("SELECT from_seq, through_seq FROM summaries ORDER BY through_seq")
    assert rows == [(1, 2), (1, 4)]
    page = await messages(client)
    assert len(page["messages"]) == 8  # summaries are not messages
    assert page["summary"]["from_message_id"] == page["messages"][0]["id"]
    assert page["summary"]["through_message_id"] == page["messages"][3]["id"]
    assert page["summary"]["model"] == "claude-backup"


async def test_nothing_left_out_means_no_summary(summary_client, fake_upstream):
    client, target = summary_client
    await chat(client, turn("short"))
    await chat(client, turn("also short"))
    await settled(client)
    assert fake_upstream.requests_for("claude-backup") == []
    assert await target.fetch("SELECT count(*) FROM summaries") == [(0,)]
    assert (await messages(client))["summary"] is None


async def test_a_failing_summary_model_changes_nothing_and_is_retried(summary_client, fake_upstream):
    client, target = summary_client
    fake_upstream.script("claude-backup", Scenario(kind="http_error", status=529), Scenario(tokens=[SUMMARY]))
    for n in range(3):
        done = (await chat(client, turn(f"{n} {QUESTION}")))[-1]
        assert done["type"] == "done" and done["persisted"] is True
        await settled(client)
    assert len(fake_upstream.requests_for("claude-backup")) == 1
    assert await target.fetch("SELECT count(*) FROM summaries") == [(0,)]
    metrics = await (await client.get("/metrics")).text()
    assert 'ai_stream_summaries_total{outcome="error"} 1.0' in metrics
    # The next turn leaves the same turn out again, and its summary is written this time.
    await chat(client, turn(f"3 {QUESTION}"))
    await settled(client)
    assert len(fake_upstream.requests_for("claude-backup")) == 2
    assert [row[0] for row in await target.fetch("SELECT content FROM summaries")] == [SUMMARY]
    metrics = await (await client.get("/metrics")).text()
    assert 'ai_stream_summaries_total{outcome="written"} 1.0' in metrics


async def test_summary_model_must_be_configured(make_settings):
    from service.settings import ConfigError

    with pytest.raises(ConfigError, match="AI_SUMMARY_MODEL.*not a configured model"):
        make_settings(summary_model="anthropic/nope")
