"""Prompt caching over HTTP, on both stores: cache markers, a prefix that stays byte-identical
across turns minutes apart (the date context after it), and the cache figures in `done`, in
storage and in the metrics, measured by a fake upstream that does prefix-cache accounting."""

from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest

from tests.fake_upstream import PromptCache, Scenario, count_tokens
from tests.support.prompts import conversation, date_context
from tests.support.threads import Clock, app_client, chat, messages, turn

SYSTEM = "You are a patient travel guide for Lisbon. " * 120  # over 1024 tokens: worth caching alone


def without_markers(value):
    """The request as the cache sees it: `cache_control` markers are not part of the prefix."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        value.pop("cache_control", None)
        return {k: without_markers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_markers(v) for v in value]
    return value


def as_text(value) -> str:
    return json.dumps(without_markers(value), ensure_ascii=False, sort_keys=True)


@pytest.fixture
async def clocked(aiohttp_client, make_settings, store_target):
    clock = Clock()
    client = await app_client(aiohttp_client, make_settings, clock, database_url=store_target.url)
    return client, clock


async def test_prefix_is_byte_identical_across_turns_minutes_apart(clocked, fake_upstream):
    client, clock = clocked
    fake_upstream.prompt_cache = PromptCache()
    fake_upstream.script("claude-primary", Scenario(tokens=["Start in Alfama", ", early."]))
    await chat(client, turn("Where do I start?", system=SYSTEM))
    clock.now += timedelta(minutes=7)
    await chat(client, turn("And for lunch?", system=SYSTEM))
    clock.now += timedelta(minutes=7)
    third_done = (await chat(client, turn("And the evening?", system=SYSTEM)))[-1]
    first, second, third = (r.body for r in fake_upstream.requests_for("claude-primary"))

    # The system prompt is the caller's, byte for byte, every turn; the time is not in it.
    assert first["system"][0]["text"] == second["system"] == third["system"] == SYSTEM
    # Each turn's messages start with the previous turn's history, byte for byte.
    assert as_text(third["messages"][:2]) == as_text(second["messages"][:2])
    assert conversation(second)[:1] == conversation(first)
    # ... and the model still hears the time of its own turn, after that prefix.
    assert "2026-03-02 10:00" in date_context(first)
    assert "2026-03-02 10:07" in date_context(second) and "10:00" not in as_text(second)
    assert "2026-03-02 10:14" in date_context(third)

    # The markers: top-level, and on the block before the new turn (the system prompt when
    # there is no history yet).
    for body in (first, second, third):
        assert body["cache_control"] == {"type": "ephemeral"}
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert second["messages"][1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert third["messages"][3]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in third["messages"][1]["content"][-1]

    # The third turn read the second's prefix (system, first question, first answer) from the cache.
    read = count_tokens(SYSTEM) + count_tokens("Where do I start?") + count_tokens("Start in Alfama, early.")
    sc = fake_upstream.requests_for("claude-primary")[2].scenario
    assert sc.cache_read_input_tokens == read and sc.cache_creation_input_tokens > 0
    total = sc.input_tokens + sc.cache_read_input_tokens + sc.cache_creation_input_tokens
    assert third_done["usage"] == {
        "input_tokens": total,  # every prompt token
        "output_tokens": count_tokens("Start in Alfama, early."),
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": sc.cache_creation_input_tokens,
    }
    # Stored with the answer, and shown with it.
    stored = (await messages(client))["messages"][-1]
    assert stored["id"] == third_done["message_id"] and stored["usage"] == third_done["usage"]
    # Counted in the metrics, by direction.
    metrics = await (await client.get("/metrics")).text()
    assert f'ai_stream_tokens_total{{direction="cache_read",model="anthropic/claude-primary"}} {float(read + count_tokens(SYSTEM))}' in metrics
    assert 'direction="cache_write"' in metrics


async def test_no_marker_when_nothing_is_worth_caching_or_caching_is_off(make_client, fake_upstream):
    client = await make_client()
    await (await client.post("/ai/stream/generate", json={"prompt": "hi", "system_prompt": "Be brief."})).read()
    body = fake_upstream.requests[-1].body
    assert "cache_control" not in body and body["system"] == "Be brief."
    assert "cache_control" not in json.dumps(body)
    done = (await chat(client, {"messages": [{"role": "user", "content": "hi"}]}))[-1]
    assert done["usage"] == {"input_tokens": 11, "output_tokens": 4}  # no cache figures when none were reported

    off = await make_client(prompt_cache="off")
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    await chat(off, {"messages": history, "system": SYSTEM})
    assert "cache_control" not in json.dumps(fake_upstream.requests[-1].body)


async def test_one_hour_cache(make_client, fake_upstream):
    client = await make_client(prompt_cache="1h")
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    await chat(client, {"messages": history})
    body = fake_upstream.requests[-1].body
    marker = {"type": "ephemeral", "ttl": "1h"}
    assert body["cache_control"] == marker and body["messages"][1]["content"][-1]["cache_control"] == marker


async def test_openai_cached_tokens_are_cache_reads(make_client, fake_upstream):
    client = await make_client()
    fake_upstream.prompt_cache = PromptCache()
    body = {"messages": [{"role": "user", "content": "x" * 400}, {"role": "assistant", "content": "y" * 400},
                         {"role": "user", "content": "z"}], "model": "openai/gpt-fallback", "system": "s" * 400}
    await chat(client, body)
    done = (await chat(client, {**body, "messages": [*body["messages"], {"role": "assistant", "content": "w"},
                                                      {"role": "user", "content": "v"}]}))[-1]
    # The second request repeats the first's system prompt and first two messages.
    assert done["usage"]["cache_read_input_tokens"] == 300 and done["usage"]["cache_creation_input_tokens"] == 0
    sent = fake_upstream.requests_for("gpt-fallback")[-1].body
    assert "cache_control" not in json.dumps(sent)
    assert done["usage"]["input_tokens"] == sum(count_tokens(m["content"]) for m in sent["messages"])
