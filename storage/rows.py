"""What both stores write and check alike: ids (owner-namespaced thread ids, message ids),
text made storable, titles, and the rows of a turn or of a followed chat."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from .base import (
    COMPLETE,
    FINISHED_STATUSES,
    PENDING,
    ROLES,
    ClientMessage,
    Cut,
    Owner,
    StoredMessage,
    UnknownMessage,
)

# Pending rows from before writers were recorded are closed once they are this old (seconds):
# no answer lasts that long.
LEGACY_PENDING_AFTER = 900.0


def scoped_thread_id(owner: Owner, thread_id: str) -> str:
    """The stored id of the thread `owner` calls `thread_id`.

    Thread ids are namespaced by owner: two owners (API key name plus `user_id`) using the same
    id have two threads, so no owner can claim, block or probe for another's id. Unambiguous:
    a key name holds no `/` and a thread id holds none either, whatever the user id holds."""
    return f"{owner.key_name}/{owner.user_id or ''}/{thread_id}"


def client_thread_id(stored_id: str) -> str:
    """The id the owner knows a stored thread by (the inverse of `scoped_thread_id`)."""
    return stored_id.rsplit("/", 1)[-1]


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def clean_text(text: str) -> str:
    """Make text storable identically on both backends.

    PostgreSQL `text` cannot hold NUL and neither driver can encode lone surrogates (which
    JSON "\\ud800" escapes produce), so both are replaced rather than failing the write.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


TITLE_LENGTH = 80  # characters of a title taken from the first user message


def thread_title(messages: Sequence[tuple[str, str]]) -> str | None:
    """A thread's title from a turn's messages: the first line of the first user message with
    text, white space collapsed, at most TITLE_LENGTH characters (cut with an ellipsis)."""
    for role, content in messages:
        if role != "user":
            continue
        for line in content.splitlines():
            words = line.split()
            if words:
                title = " ".join(words)
                if len(title) > TITLE_LENGTH:
                    title = title[: TITLE_LENGTH - 1].rstrip() + "\u2026"
                return title
    return None


def check_limit(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def check_new_messages(messages: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Validate roles and clean contents of the messages `begin_turn` appends."""
    cleaned = []
    for role, content in messages:
        if role not in ROLES:
            raise ValueError(f"message role must be 'user' or 'assistant', got {role!r}")
        cleaned.append((role, clean_text(content)))
    return cleaned


def turn_rows(
    thread_id: str,
    last_seq: int,
    messages: list[tuple[str, str]],
    user_ids: list[str],
    assistant_id: str,
    writer: str | None = None,
) -> list[tuple[str, str, int, str, str, str, str | None]]:
    """(id, thread_id, seq, role, content, status, writer) of a turn's new rows, numbered after
    `last_seq`: the given messages as "complete", then the pending assistant row."""
    rows = [
        (message_id, thread_id, last_seq + offset, role, content, COMPLETE, writer)
        for offset, (message_id, (role, content)) in enumerate(zip(user_ids, messages), 1)
    ]
    rows.append((assistant_id, thread_id, last_seq + len(rows) + 1, "assistant", "", PENDING, writer))
    return rows


def check_client_messages(messages: Sequence[ClientMessage]) -> list[ClientMessage]:
    """Validate roles and ids, and clean contents, of the conversation `follow_chat` follows."""
    cleaned, seen = [], set()
    for message in messages:
        if message.role not in ROLES:
            raise ValueError(f"message role must be 'user' or 'assistant', got {message.role!r}")
        if not message.id or message.id in seen:
            raise ValueError(f"message ids must be unique and not empty, got {message.id!r}")
        seen.add(message.id)
        cleaned.append(ClientMessage(message.id, message.role, clean_text(message.content)))
    return cleaned


def kept_start(stored: Sequence[StoredMessage], messages: Sequence[ClientMessage]) -> int:
    """How many messages, from the start, the stored thread and the client's list share."""
    kept = 0
    for mine, theirs in zip(stored, messages):
        if (mine.chat_id, mine.role, mine.content) != (theirs.id, theirs.role, theirs.content):
            break
        kept += 1
    return kept


def replayable(messages: Sequence[StoredMessage], limit: int) -> list[StoredMessage]:
    """The newest `limit` of `messages` that a new turn replays: no pending or empty answers."""
    usable = [m for m in messages if m.status != PENDING and m.content != ""]
    return usable[len(usable) - limit :] if limit else []


def chat_rows(
    thread_id: str,
    last_seq: int,
    messages: Sequence[ClientMessage],
    new_ids: list[str],
    assistant_id: str,
    writer: str | None = None,
) -> list[tuple[str, str, int, str, str, str, str | None, str | None]]:
    """(id, thread_id, seq, role, content, status, writer, client_message_id) of the rows
    `follow_chat` appends after `last_seq`: `messages` as "complete", then the pending row."""
    rows: list[tuple[str, str, int, str, str, str, str | None, str | None]] = [
        (message_id, thread_id, last_seq + offset, m.role, m.content, COMPLETE, writer, m.id)
        for offset, (message_id, m) in enumerate(zip(new_ids, messages), 1)
    ]
    rows.append((assistant_id, thread_id, last_seq + len(rows) + 1, "assistant", "", PENDING, writer, None))
    return rows


def first_removed_seq(cut: Cut, found: tuple[int, str] | None) -> int:
    """The first seq `cut` removes, given the (seq, role) of the message it names (for
    `message_id` None: of the thread's last user message), or None when there is none."""
    if found is None:
        if cut.message_id is None:
            raise UnknownMessage("the thread has no user message to answer again")
        raise UnknownMessage("the message is not in this thread")
    seq, role = found
    if not cut.keep and role != "user":
        raise UnknownMessage("the message is not a user message of this thread")
    return seq + 1 if cut.keep else seq


def check_finish_status(status: str) -> None:
    if status not in FINISHED_STATUSES:
        raise ValueError(
            f"status must be one of {sorted(FINISHED_STATUSES)}, got {status!r}"
        )
