"""Regenerate and edit on /ai/stream/chat, over HTTP on both stores: the stored thread is cut
(its last answer replaced, or cut at a user message that the new turn replaces), and every
mistake is a JSON 400/404 before any model is called, with the thread left as it was."""

from __future__ import annotations

import pytest

from tests.fake_upstream import Scenario
from tests.support.prompts import conversation
from tests.support.threads import chat, messages, turn


@pytest.fixture
async def two_turns(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url)
    fake_upstream.script("claude-primary", Scenario(tokens=["first answer"]), Scenario(tokens=["second answer"]),
                         Scenario(tokens=["new answer"]))
    await chat(client, turn("first question", user_id="ada"))
    await chat(client, turn("second question", user_id="ada"))
    return client


def contents(page):
    return [(m["role"], m["content"]) for m in page["messages"]]


async def test_regenerate_replaces_the_last_answer(two_turns, fake_upstream):
    before = await messages(two_turns, user_id="ada")
    done = (await chat(two_turns, {"thread_id": "t-1", "user_id": "ada", "regenerate": True}))[-1]
    sent = conversation(fake_upstream.requests_for("claude-primary")[-1].body)
    assert sent == [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "first answer"},
                    {"role": "user", "content": "second question"}]
    page = await messages(two_turns, user_id="ada")
    assert contents(page) == [("user", "first question"), ("assistant", "first answer"),
                              ("user", "second question"), ("assistant", "new answer")]
    assert page["messages"][-1]["id"] == done["message_id"] != before["messages"][-1]["id"]
    assert [m["id"] for m in page["messages"][:3]] == [m["id"] for m in before["messages"][:3]]


async def test_edit_from_cuts_the_thread_at_that_question(two_turns, fake_upstream):
    before = await messages(two_turns, user_id="ada")
    second_question = before["messages"][2]["id"]
    await chat(two_turns, {**turn("second question, edited", user_id="ada"), "edit_from": second_question})
    sent = conversation(fake_upstream.requests_for("claude-primary")[-1].body)
    assert sent == [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "first answer"},
                    {"role": "user", "content": "second question, edited"}]
    assert contents(await messages(two_turns, user_id="ada")) == [
        ("user", "first question"), ("assistant", "first answer"),
        ("user", "second question, edited"), ("assistant", "new answer"),
    ]
    # Editing the first question leaves only the new turn.
    first_question = before["messages"][0]["id"]
    await chat(two_turns, {**turn("only question", user_id="ada"), "edit_from": first_question})
    assert conversation(fake_upstream.requests_for("claude-primary")[-1].body) == [{"role": "user", "content": "only question"}]
    assert [role for role, _ in contents(await messages(two_turns, user_id="ada"))] == ["user", "assistant"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"messages": [{"role": "user", "content": "x"}], "regenerate": True}, 400, "regenerate"),  # no thread
        ({**turn("x", user_id="ada"), "regenerate": True}, 400, "messages"),  # regenerate takes no new turn
        ({**turn("x", user_id="ada"), "edit_from": "msg_unknown"}, 400, "edit_from"),
        ({**turn("x", user_id="ada"), "edit_from": "no spaces allowed"}, 400, "edit_from"),
        ({**turn("x", user_id="ada"), "edit_from": "ANSWER", "regenerate": True}, 400, "edit_from"),
        ({**turn("x", user_id="ada"), "edit_from": "ANSWER"}, 400, "edit_from"),  # not a user message
        ({"thread_id": "t-1", "user_id": "ada", "edit_from": "QUESTION",
          "messages": [{"role": "assistant", "content": "x"}]}, 400, "messages"),
        ({**turn("x", user_id="bob"), "edit_from": "QUESTION"}, 404, None),  # another owner's thread
        ({"thread_id": "t-1", "user_id": "bob", "regenerate": True}, 404, None),
        ({"thread_id": "t-other", "user_id": "ada", "regenerate": True}, 404, None),  # unknown thread
    ],
)
async def test_mistakes_are_json_errors_before_any_model_call(two_turns, fake_upstream, store_target, body, status, field):
    before = await messages(two_turns, user_id="ada")
    ids = {"ANSWER": before["messages"][-1]["id"], "QUESTION": before["messages"][0]["id"]}
    if body.get("edit_from") in ids:
        body = {**body, "edit_from": ids[body["edit_from"]]}
    calls = len(fake_upstream.requests)
    resp = await two_turns.post("/ai/stream/chat", json=body)
    assert resp.status == status, await resp.text()
    error = await resp.json()
    assert error["code"] == ("validation_error" if status == 400 else "not_found")
    if field is not None:
        assert [d["field"] for d in error["details"]] == [field], error
    assert len(fake_upstream.requests) == calls
    assert await messages(two_turns, user_id="ada") == before  # nothing changed
    assert await store_target.fetch("SELECT count(*) FROM threads") == [(1,)]  # nothing was created


async def test_regenerate_a_thread_without_a_question(make_client, store_target, fake_upstream):
    client = await make_client(database_url=store_target.url)
    await chat(client, {"thread_id": "t-1", "messages": [{"role": "assistant", "content": "Welcome!"}]})
    resp = await client.post("/ai/stream/chat", json={"thread_id": "t-1", "regenerate": True})
    assert resp.status == 400
    assert (await resp.json())["details"] == [{"field": "regenerate", "message": "regenerate: the thread has no user message to answer again"}]
