"""`Store.follow_chat`: the stored thread follows a chat client's whole conversation (the
`/ai/ui/chat` semantics), on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest

from storage import ClientMessage, Owner, Store, StoredMessage, ThreadNotFound, Turn
from tests.storage_fixtures import StoreTarget, pg_url, store, store_target  # noqa: F401

OWNER = Owner(key_name="key-a", user_id="user-1")


def user(id_: str, text: str) -> ClientMessage:
    return ClientMessage(id_, "user", text)


def assistant(id_: str, text: str) -> ClientMessage:
    return ClientMessage(id_, "assistant", text)


async def follow(store: Store, *messages: ClientMessage, thread: str = "chat-1", limit: int = 50) -> Turn:
    return await store.follow_chat(thread, OWNER, list(messages), limit)


async def answer(store: Store, turn: Turn, text: str) -> ClientMessage:
    """Finish the reserved answer; the client's copy of it carries the stored id."""
    assert await store.finish_assistant_message(
        turn.assistant_message_id, content=text, status="complete", model="m-1", provider="prov",
        stop_reason="end_turn", input_tokens=3, output_tokens=2,
    )
    return assistant(turn.assistant_message_id, text)


def shape(messages: list[StoredMessage]) -> list[tuple[str, str, str, str]]:
    return [(m.chat_id, m.role, m.content, m.status) for m in messages]


async def test_first_request_stores_the_conversation_with_client_ids(store: Store) -> None:
    turn = await follow(store, user("u1", "Hi"), assistant("a1", "Hello"), user("u2", "Again"))
    assert turn.history == []
    assert len(turn.user_message_ids) == 3
    stored = await store.list_messages("chat-1", OWNER)
    assert shape(stored) == [
        ("u1", "user", "Hi", "complete"),
        ("a1", "assistant", "Hello", "complete"),
        ("u2", "user", "Again", "complete"),
        (turn.assistant_message_id, "assistant", "", "pending"),
    ]
    assert [m.client_message_id for m in stored] == ["u1", "a1", "u2", None]
    assert [m.id for m in stored[:3]] == turn.user_message_ids


async def test_messages_already_stored_are_not_stored_again(store: Store) -> None:
    first = await follow(store, user("u1", "Hi"))
    a1 = await answer(store, first, "Hello")
    second = await follow(store, user("u1", "Hi"), a1, user("u2", "More"))
    assert len(second.user_message_ids) == 1
    assert [(m.chat_id, m.content) for m in second.history] == [("u1", "Hi"), (a1.id, "Hello")]
    stored = await store.list_messages("chat-1", OWNER)
    assert [m.chat_id for m in stored] == ["u1", a1.id, "u2", second.assistant_message_id]
    assert stored[1].id == a1.id and stored[1].client_message_id is None  # the service's own row, kept


async def test_an_edited_message_replaces_it_and_everything_after(store: Store) -> None:
    first = await follow(store, user("u1", "Hi"))
    a1 = await answer(store, first, "Hello")
    second = await follow(store, user("u1", "Hi"), a1, user("u2", "What is 2+2?"))
    await answer(store, second, "4")
    # The client edits u2 (same id, new text): the old u2 and its answer go.
    third = await follow(store, user("u1", "Hi"), a1, user("u2", "What is 3+3?"))
    assert [m.content for m in third.history] == ["Hi", "Hello"]
    stored = await store.list_messages("chat-1", OWNER)
    assert shape(stored) == [
        ("u1", "user", "Hi", "complete"),
        (a1.id, "assistant", "Hello", "complete"),
        ("u2", "user", "What is 3+3?", "complete"),
        (third.assistant_message_id, "assistant", "", "pending"),
    ]


async def test_regenerate_drops_the_answer_the_client_dropped(store: Store) -> None:
    first = await follow(store, user("u1", "Hi"))
    a1 = await answer(store, first, "Hello")
    again = await follow(store, user("u1", "Hi"))  # useChat's regenerate sends the list without a1
    assert again.user_message_ids == [] and [m.content for m in again.history] == ["Hi"]
    stored = await store.list_messages("chat-1", OWNER)
    assert [m.id for m in stored] == [stored[0].id, again.assistant_message_id]
    assert a1.id not in {m.id for m in stored}
    assert again.assistant_message_id != first.assistant_message_id


async def test_a_shorter_or_different_start_makes_the_thread_follow(store: Store) -> None:
    await follow(store, user("u1", "one"), assistant("a1", "two"), user("u2", "three"))
    turn = await follow(store, user("x1", "other"))
    assert turn.history == [] and len(turn.user_message_ids) == 1
    stored = await store.list_messages("chat-1", OWNER)
    assert shape(stored) == [("x1", "user", "other", "complete"), (turn.assistant_message_id, "assistant", "", "pending")]


async def test_a_pending_answer_the_client_has_with_text_is_taken_from_the_client(store: Store) -> None:
    # The answer's write had not reached the store (persisted: false) when the client went on.
    first = await follow(store, user("u1", "Hi"))
    turn = await follow(store, user("u1", "Hi"), assistant(first.assistant_message_id, "Hello"), user("u2", "And?"))
    assert [m.content for m in turn.history] == ["Hi"]
    stored = await store.list_messages("chat-1", OWNER)
    assert shape(stored)[:3] == [
        ("u1", "user", "Hi", "complete"),
        (first.assistant_message_id, "assistant", "Hello", "complete"),
        ("u2", "user", "And?", "complete"),
    ]
    # The late write finds no pending row to finish.
    assert not await store.finish_assistant_message(
        first.assistant_message_id, content="Hello", status="complete", model=None, provider=None,
        stop_reason=None, input_tokens=None, output_tokens=None,
    )


async def test_history_is_limited_and_skips_empty_answers(store: Store) -> None:
    first = await follow(store, user("u1", "q1"))
    await store.finish_assistant_message(
        first.assistant_message_id, content="", status="error", model=None, provider=None,
        stop_reason=None, input_tokens=None, output_tokens=None,
    )
    empty = assistant(first.assistant_message_id, "")
    turn = await follow(store, user("u1", "q1"), empty, user("u2", "q2"), limit=1)
    assert [m.content for m in turn.history] == ["q1"]
    turn = await follow(store, user("u1", "q1"), empty, user("u2", "q2"), limit=0)
    assert turn.history == []


async def test_threads_of_the_typed_chat_route_are_matched_by_stored_id(store: Store) -> None:
    turn = await store.begin_turn("chat-1", OWNER, [("user", "Hi")], 50)
    a1 = await answer(store, turn, "Hello")
    [u1] = turn.user_message_ids
    chat = await follow(store, user(u1, "Hi"), a1, user("u2", "Next"))
    assert len(chat.user_message_ids) == 1 and len(chat.history) == 2


async def test_another_owner_following_the_same_chat_id_has_a_chat_of_its_own(store: Store) -> None:
    await follow(store, user("u1", "Hi"))
    for other in (Owner("key-a", "user-2"), Owner("key-b", "user-1")):
        turn = await store.follow_chat("chat-1", other, [user("u9", "Mine")], 50)
        assert turn.history == []
        assert [m.content for m in await store.list_messages("chat-1", other)] == ["Mine", ""]
    assert [m.content for m in await store.list_messages("chat-1", OWNER)][0] == "Hi"
    assert len(await store.list_messages("chat-1", OWNER)) == 2


async def test_the_same_client_id_in_two_chats_is_two_messages(store: Store) -> None:
    await follow(store, user("u1", "Hi"), thread="chat-1")
    await follow(store, user("u1", "Hi"), thread="chat-2")
    assert [m.chat_id for m in await store.list_messages("chat-2", OWNER)][0] == "u1"


@pytest.mark.parametrize(
    "messages",
    [
        [ClientMessage("u1", "system", "x")],
        [user("u1", "a"), user("u1", "b")],
        [user("", "a")],
    ],
)
async def test_invalid_conversations_raise_value_error(store: Store, messages: list[ClientMessage]) -> None:
    with pytest.raises(ValueError):
        await store.follow_chat("chat-1", OWNER, messages, 50)
    with pytest.raises(ThreadNotFound):
        await store.list_messages("chat-1", OWNER)  # nothing was written


async def test_text_that_cannot_be_stored_as_is_still_matches(store: Store) -> None:
    first = await follow(store, user("u1", "nul\x00 and \ud800"))
    second = await follow(store, user("u1", "nul\x00 and \ud800"), user("u2", "next"))
    assert len(second.user_message_ids) == 1 and first.assistant_message_id not in second.user_message_ids


async def test_migration_004_is_recorded(store_target: StoreTarget, store: Store) -> None:
    versions = {row[0] for row in await store_target.fetch("SELECT version FROM schema_migrations")}
    assert 4 in versions
