"""Replayed history is bounded in size, not only in count: the history, the new turn and the
system prompt stay within AI_HISTORY_MAX_CHARS, the oldest whole turns go first, a single
message too large is cut with a marker, roles alternate, and a thread can always take a turn."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from providers.base import Message
from service.history import TRUNCATED_MARKER, fit_history
from storage import StoredMessage
from tests.conftest import parse_events
from tests.support.prompts import conversation


def stored(role: str, content: str, seq: int) -> StoredMessage:
    return StoredMessage(f"msg_{seq}", "t", seq, role, content, None, None, None, "complete", None, None,
                         datetime(2026, 1, 1, tzinfo=UTC))


def history(*contents: tuple[str, str]) -> list[StoredMessage]:
    return [stored(role, content, n) for n, (role, content) in enumerate(contents, 1)]


def sent_size(messages: tuple[Message, ...], system: str | None = None) -> int:
    return len(system or "") + sum(len(m.content) for m in messages)


def test_the_oldest_whole_turns_go_first() -> None:
    past = history(("user", "q1" * 100), ("assistant", "a1" * 100), ("user", "q2" * 100), ("assistant", "a2" * 100),
                   ("user", "q3" * 100), ("assistant", "a3" * 100))
    new = (Message("user", "now"),)
    sent = fit_history(past, new, "sys", budget=900)
    assert [m.content[:2] for m in sent] == ["q2", "a2", "q3", "a3", "no"]
    assert sent_size(sent, "sys") <= 900


def test_a_single_message_larger_than_the_budget_is_cut_with_a_marker() -> None:
    past = history(("user", "x" * 10 + "END-OF-QUESTION"), ("assistant", "y" * 5000 + "END-OF-ANSWER"))
    new = (Message("user", "next"),)
    sent = fit_history(past, new, None, budget=1000)
    question, answer, turn = sent
    assert answer.content.startswith(TRUNCATED_MARKER) and answer.content.endswith("END-OF-ANSWER")
    assert question.content == "x" * 10 + "END-OF-QUESTION"  # what fits is kept whole
    assert turn == new[0]
    assert sent_size(sent) <= 1000


def test_roles_alternate_whatever_was_stored() -> None:
    # A question whose answer failed with no text (not stored as history), then another; two
    # answers in a row (a regenerate stored beside the first).
    past = history(("user", "lost"), ("user", "q"), ("assistant", "a"), ("assistant", "b"), ("user", "unanswered"))
    sent = fit_history(past, (Message("user", "new"),), None, budget=10_000)
    assert [(m.role, m.content) for m in sent] == [("user", "q"), ("assistant", "a\n\nb"), ("user", "new")]


def test_no_room_for_history_still_takes_the_turn() -> None:
    past = history(("user", "q" * 500), ("assistant", "a" * 500))
    new = (Message("user", "n" * 990),)
    assert fit_history(past, new, None, budget=1000) == new


@pytest.fixture
async def small_budget(make_client, store_target):
    return await make_client(database_url=store_target.url, history_max_chars=1000, date_context=False)


async def chat(client, content: str, **extra) -> list[dict]:
    resp = await client.post("/ai/stream/chat", json={"messages": [{"role": "user", "content": content}],
                                                      "thread_id": "budget", **extra})
    assert resp.status == 200, await resp.text()
    return parse_events(await resp.read())


async def test_a_thread_cut_at_the_right_turn_over_http(small_budget, fake_upstream):
    for n in range(4):
        assert (await chat(small_budget, f"{n}" * 300))[-1]["persisted"] is True
    await chat(small_budget, "z" * 300)
    sent = conversation(fake_upstream.requests_for("claude-primary")[-1].body)
    # 300 for the new turn leaves 700: the newest two turns (300 + 13 each) fit, the third does not.
    assert [m["content"][:1] for m in sent] == ["2", "H", "3", "H", "z"]
    assert sum(len(m["content"]) for m in sent) <= 1000


async def test_a_huge_thread_always_takes_a_new_turn_and_sends_a_bounded_request(small_budget, fake_upstream):
    for _ in range(3):
        await chat(small_budget, "w" * 20_000)
    events = await chat(small_budget, "and now?")
    assert events[-1]["type"] == "done" and events[-1]["persisted"] is True
    sent = conversation(fake_upstream.requests_for("claude-primary")[-1].body)
    assert sum(len(m["content"]) for m in sent) <= 1000
    assert sent[-1] == {"role": "user", "content": "and now?"}
    assert sent[0]["role"] == "user" and sent[0]["content"].startswith(TRUNCATED_MARKER)
