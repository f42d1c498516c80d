"""Where the parts of a request go, the same for every dialect: the stable prefix (system
prompt, earlier messages) first, byte-identical from turn to turn, and what changes (the
request's `context`, the date and time) inside the last user message, after it."""

from __future__ import annotations

from collections.abc import Sequence

from providers.base import Message


def last_user_index(messages: Sequence[Message]) -> int | None:
    """The index of the last user message: where the new turn (and the context) is."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return index
    return None


def stable_prefix_end(messages: Sequence[Message]) -> int:
    """How many messages come before the new turn: the ones a prompt cache can hold."""
    last_user = last_user_index(messages)
    return last_user if last_user is not None else len(messages)


def joined(text: str | None, context: str) -> str:
    """`context` after `text`, for a dialect whose messages are plain strings."""
    return f"{text}\n\n{context}" if text else context
