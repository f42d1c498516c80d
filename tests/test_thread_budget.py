"""The token budget of a thread's prompt over HTTP, on both stores: the cut at the right turn
with the counts the model reported, per-model budgets, and one retry with a shorter history
when the model says the prompt is too long."""

from __future__ import annotations

import pytest

from service.history import TRUNCATED_MARKER
from tests.fake_upstream import Scenario, count_tokens
from tests.support.prompts import conversation
from tests.support.threads import Clock, app_client, chat, messages, turn

QUESTION = "q" * 196  # 49 tokens as the fake counts
ANSWER = "a" * 200  # 50


def prompt_tokens(record) -> int:
    sc = record.scenario
    return sc.input_tokens + sc.cache_read_input_tokens + sc.cache_creation_input_tokens


@pytest.fixture
async def budget_client(aiohttp_client, make_settings, store_target):
    return await app_client(aiohttp_client, make_settings, Clock(), database_url=store_target.url, history_token_budget=400)


async def test_budget_cuts_at_the_right_turn_with_the_reported_counts(budget_client, fake_upstream):
    fake_upstream.count_tokens = True
    fake_upstream.script("claude-primary", Scenario(tokens=[ANSWER]))
    dones = [(await chat(budget_client, turn(f"{n} {QUESTION}")))[-1] for n in range(8)]
    requests = fake_upstream.requests_for("claude-primary")
    turn_size = count_tokens(f"0 {QUESTION}") + count_tokens(ANSWER)
    replayed = []
    for record, done in zip(requests, dones):
        sent = conversation(record.body)
        size = prompt_tokens(record)
        assert done["usage"]["input_tokens"] == size  # what the model counted, reported as it is
        assert size <= 400, (size, len(sent))
        kept_turns = (len(sent) - 1) // 2
        older_left = len(replayed) < 8 and kept_turns < len(replayed) + 1
        if kept_turns < requests.index(record):
            # The next older turn would not have fitted: the cut is where it must be.
            assert size + turn_size > 400, (size, kept_turns)
        replayed.append(kept_turns)
        assert older_left is not None
        # The oldest whole turns went first: what is sent is the newest turns, in order.
        n = requests.index(record)
        assert [m["content"][0] for m in sent] == [c for k in range(n - kept_turns, n) for c in (str(k), "a")] + [str(n)]
    assert replayed[:3] == [0, 1, 2] and replayed[-1] < 7  # grew, then was cut
    stored = (await messages(budget_client))["messages"]
    assert len(stored) == 16  # everything is kept in storage; only the replay is cut


async def test_the_reported_size_of_the_last_prompt_counts_not_an_estimate(budget_client, fake_upstream):
    # The model counted the first prompt as 395 tokens (our estimate of it is some 30).
    fake_upstream.script("claude-primary", Scenario(input_tokens=395), Scenario())
    await chat(budget_client, turn("hi"))
    await chat(budget_client, turn("again"))
    second = fake_upstream.requests_for("claude-primary")[1]
    # 395 + 4 (the answer) + 2 (the new question) is over 400: the first turn is left out.
    assert conversation(second.body) == [{"role": "user", "content": "again"}]


async def test_a_model_s_own_budget_wins(aiohttp_client, make_settings, store_target, fake_upstream, tmp_path):
    config = tmp_path / "models.toml"
    config.write_text('[[models]]\nname = "anthropic/claude-primary"\nhistory_token_budget = 150\n\n'
                      '[[models]]\nname = "anthropic/claude-backup"\n', encoding="utf-8")
    client = await app_client(aiohttp_client, make_settings, Clock(), database_url=store_target.url,
                              models="anthropic/claude-primary,anthropic/claude-backup", config=config,
                              history_token_budget=100_000)
    fake_upstream.count_tokens = True
    for model in ("claude-primary", "claude-backup"):
        fake_upstream.script(model, Scenario(tokens=[ANSWER]))
    for n in range(3):
        await chat(client, turn(f"{n} {QUESTION}"))
    last = fake_upstream.requests_for("claude-primary")[-1]
    # 150 holds no whole older turn: the newest is cut to what is left, with a marker.
    assert prompt_tokens(last) <= 150
    assert conversation(last.body)[0]["content"].startswith(TRUNCATED_MARKER)
    await chat(client, turn(f"3 {QUESTION}", model="anthropic/claude-backup"))
    assert len(conversation(fake_upstream.requests_for("claude-backup")[-1].body)) == 7  # the service-wide budget


TOO_LONG = Scenario(kind="http_error", status=400, error_message="prompt is too long: 250000 tokens > 200000 maximum")


async def thread_of(client, turns: int) -> None:
    for n in range(turns):
        await chat(client, turn(f"question {n} " + "x" * 400))


async def test_too_long_is_retried_once_with_a_shorter_history(budget_client, fake_upstream):
    await thread_of(budget_client, 3)
    fake_upstream.script("claude-primary", TOO_LONG, Scenario())
    events = await chat(budget_client, turn("question 3"))
    done = events[-1]
    assert done["type"] == "done" and "".join(e["text"] for e in events[:-1]) == "Hello, world!"
    assert done["attempts"] == [{"model": "anthropic/claude-primary", "code": "prompt_too_long"}]
    tried, retried = fake_upstream.requests_for("claude-primary")[-2:]
    assert len(conversation(retried.body)) < len(conversation(tried.body))
    assert conversation(retried.body)[-1]["content"] == "question 3"
    assert conversation(tried.body)[-2:] == conversation(retried.body)[-2:] or len(conversation(retried.body)) == 1
    # No other model was asked: the prompt, not the model, was the problem.
    assert fake_upstream.requests_for("claude-backup") == []
    stored = (await messages(budget_client))["messages"][-1]
    assert stored["status"] == "complete" and stored["content"] == "Hello, world!"


async def test_openai_context_length_exceeded_is_retried(budget_client, fake_upstream):
    too_long = Scenario(kind="http_error", status=400, error_code="context_length_exceeded",
                        error_message="This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.")
    fake_upstream.script("gpt-fallback", Scenario(), Scenario(), too_long, Scenario())
    for n in range(2):
        await chat(budget_client, turn(f"question {n}", model="openai/gpt-fallback"))
    done = (await chat(budget_client, turn("question 2", model="openai/gpt-fallback")))[-1]
    assert done["type"] == "done" and done["attempts"] == [{"model": "openai/gpt-fallback", "code": "prompt_too_long"}]
    tried, retried = fake_upstream.requests_for("gpt-fallback")[-2:]
    assert len(conversation(retried.body)) < len(conversation(tried.body))


async def test_too_long_twice_fails_with_one_error_event(budget_client, fake_upstream):
    await thread_of(budget_client, 3)
    fake_upstream.script("claude-primary", TOO_LONG)
    events = await chat(budget_client, turn("question 3"))
    assert events == [{"type": "error", "error": events[0]["error"], "code": "invalid_request", "answer_id": events[0]["answer_id"]}]
    assert "too long" in events[0]["error"] and "250000" not in events[0]["error"]
    assert len(fake_upstream.requests_for("claude-primary")) == 3 + 2  # asked once, retried once, no more
    stored = (await messages(budget_client))["messages"][-1]
    assert stored["role"] == "assistant" and stored["status"] == "error"


async def test_too_long_without_history_to_leave_out_is_not_retried(budget_client, fake_upstream):
    fake_upstream.script("claude-primary", TOO_LONG)
    events = await chat(budget_client, turn("a long first question"))
    assert [e["type"] for e in events] == ["error"] and events[0]["code"] == "invalid_request"
    assert len(fake_upstream.requests_for("claude-primary")) == 1
