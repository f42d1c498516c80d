"""The storage interface: conversation threads and their messages, behind one `Store` protocol.

Both backends (PostgreSQL and SQLite) implement `Store` and raise only the errors defined
here (plus `ValueError` for bad arguments), never a driver type. Error messages never hold
connection strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Protocol


class StorageError(Exception):
    """Any storage failure the caller cannot fix by changing its arguments."""


class StorageUnavailable(StorageError):
    """The database cannot be reached (down, refusing connections, pool exhausted, not open)."""


class ThreadNotFound(StorageError):
    """No such thread for this owner; also raised when another owner holds the thread."""


class UnknownMessage(LookupError):
    """A cut names a message the thread does not have (or one of the wrong role): the caller's
    mistake, not a storage failure. The message says which, without the thread's id."""


ROLES = frozenset({"user", "assistant"})
PENDING = "pending"
COMPLETE = "complete"
# Final states of an assistant message once its stream ends.
FINISHED_STATUSES = frozenset({"complete", "interrupted", "error"})


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a thread belongs to; both fields must match exactly (None only matches None)."""

    key_name: str = ""
    user_id: str | None = None

    def matches(self, key_name: str, user_id: str | None) -> bool:
        return self.key_name == key_name and self.user_id == user_id


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    thread_id: str
    seq: int
    role: str
    content: str
    model: str | None
    provider: str | None
    stop_reason: str | None
    status: str
    input_tokens: int | None
    output_tokens: int | None
    created_at: datetime  # timezone-aware UTC
    client_message_id: str | None = None  # the client's id for it (/ai/ui/chat), if it gave one
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    # The prompt that produced an answer: the seq of its first replayed message (None: none
    # replayed, or not recorded) and of the last message its summary note covered (None: none).
    replay_from_seq: int | None = None
    summary_through_seq: int | None = None

    @property
    def chat_id(self) -> str:
        """The message's id as a chat client knows it: the client's own, else the stored one."""
        return self.client_message_id or self.id


# The columns a message is read with, in the order of `StoredMessage`'s fields (both backends
# build a `StoredMessage` from a row).
MESSAGE_FIELDS = tuple(field.name for field in fields(StoredMessage))
MESSAGE_COLUMNS = ", ".join(MESSAGE_FIELDS)


@dataclass(frozen=True, slots=True)
class ThreadSummary:
    """One thread as the thread list shows it."""

    id: str
    title: str | None  # None only for a thread whose turns so far had no user message
    created_at: datetime  # timezone-aware UTC
    updated_at: datetime  # the last turn (or the creation); timezone-aware UTC
    message_count: int  # stored messages, an answer still streaming included


@dataclass(frozen=True, slots=True)
class ThreadPosition:
    """Where a page of the thread list ends: list_threads(before=...) returns the threads after it."""

    updated_at: datetime  # timezone-aware
    thread_id: str


@dataclass(frozen=True, slots=True)
class Summary:
    """A summary of a thread's messages from `from_seq` through `through_seq` (cumulative: it
    includes the summary before it)."""

    thread_id: str
    from_seq: int
    through_seq: int
    from_message_id: str
    through_message_id: str
    content: str
    model: str | None = None
    provider: str | None = None
    created_at: datetime | None = None  # set by the store


SUMMARY_COLUMNS = ", ".join(field.name for field in fields(Summary))


@dataclass(frozen=True, slots=True)
class Cut:
    """Where a turn cuts its thread before it is stored: `message_id` None means the thread's
    last user message. `keep`: keep that message and remove what follows it (regenerate the
    answer); else remove it too, and what follows (it is replaced: edit). Summaries that cover
    a removed message go with it."""

    message_id: str | None = None
    keep: bool = True


@dataclass(frozen=True, slots=True)
class Turn:
    """What `begin_turn` stored: the replay history and the ids of the new rows."""

    history: list[StoredMessage]  # before this turn's messages, oldest first
    user_message_ids: list[str]
    assistant_message_id: str  # the reserved "pending" row, finished when the stream ends
    summary: Summary | None = None  # the thread's newest summary, when it has one
    removed: int = 0  # messages the turn's cut removed


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """One message of a conversation as a chat client holds it (see `Store.follow_chat`)."""

    id: str  # the client's id for it; for an answer of this service, the stored id it was sent
    role: str  # "user" or "assistant"
    content: str


class Store(Protocol):
    """A conversation store. Every method takes a connection for its own duration only."""

    backend: str  # "postgresql" or "sqlite"

    async def open(self) -> None:
        """Connect and apply pending migrations; raises `StorageUnavailable` if unreachable."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True if the database answers within about a second; never raises."""
        ...

    async def begin_turn(
        self,
        thread_id: str,
        owner: Owner,
        messages: Sequence[tuple[str, str]],
        history_limit: int,
        *,
        assistant_message_id: str | None = None,
        writer: str | None = None,
        cut: Cut | None = None,
    ) -> Turn:
        """In one transaction: create the thread if missing (else check its owner), apply the
        `cut` if any (the thread must exist then: ThreadNotFound; a message it does not have:
        UnknownMessage), read the history and the newest summary, append `messages` as
        "complete" and reserve a pending assistant row (with the given id, when the caller
        chose it, and marked as written by `writer`)."""
        ...

    async def cut_thread(self, thread_id: str, owner: Owner, cut: Cut) -> int:
        """Apply `cut` on its own (see `Cut`); returns how many messages were removed."""
        ...

    async def summary_of(self, thread_id: str, owner: Owner) -> Summary | None:
        """The thread's newest summary (ThreadNotFound for another owner's thread)."""
        ...

    async def save_summary(self, thread_id: str, owner: Owner, summary: Summary) -> bool:
        """Store a summary of the thread, once per covered range; False if the thread is gone
        (or another owner's) or the range already has one."""
        ...

    async def save_partial(self, answers: Sequence[tuple[str, str]]) -> None:
        """Write the text so far of pending answers, given as (message id, content); rows no
        longer pending are left as they are."""
        ...

    async def heartbeat(self, writer: str) -> None:
        """Record that the process `writer` is alive (registering it the first time)."""
        ...

    async def retire_writer(self, writer: str) -> None:
        """The process `writer` stops cleanly: forget it."""
        ...

    async def close_abandoned(self, stale_after: float) -> int:
        """Close as `interrupted` (keeping their text) the pending answers of writers that have
        not heart-beaten for `stale_after` seconds (and of writers that never registered, once
        they are older than that and LEGACY_PENDING_AFTER). Returns how many were closed."""
        ...

    async def follow_chat(
        self,
        thread_id: str,
        owner: Owner,
        messages: Sequence[ClientMessage],
        history_limit: int,
        *,
        assistant_message_id: str | None = None,
        writer: str | None = None,
    ) -> Turn:
        """In one transaction: create the thread if missing (else check its owner), make the
        stored thread follow `messages` (the client's whole conversation, oldest first), and
        reserve a pending assistant row (as `begin_turn` does: its id, its writer). The longest start of the stored thread that matches
        `messages` (same ids, roles and contents) is kept, stored messages after it are deleted
        and the rest of `messages` is appended as "complete". `history` is what is replayable
        of the kept start (its newest `history_limit` messages); the appended messages are the
        last `len(user_message_ids)` of `messages`."""
        ...

    async def finish_assistant_message(
        self,
        message_id: str,
        *,
        content: str,
        status: str,
        model: str | None,
        provider: str | None,
        stop_reason: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_read_input_tokens: int | None = None,
        cache_creation_input_tokens: int | None = None,
        replay_from_seq: int | None = None,
        summary_through_seq: int | None = None,
    ) -> bool:
        """Finish a pending assistant row; False if it no longer exists or is not pending
        (e.g. the thread was deleted while the answer streamed)."""
        ...

    async def list_messages(
        self, thread_id: str, owner: Owner, *, limit: int = 50, before: str | None = None
    ) -> list[StoredMessage]:
        """The `limit` messages just before message `before` (the newest when None), oldest
        first, pending rows included. Unknown `before` in this thread -> ValueError."""
        ...

    async def delete_thread(self, thread_id: str, owner: Owner) -> None: ...

    async def list_threads(
        self, owner: Owner, *, limit: int = 50, before: ThreadPosition | None = None
    ) -> list[ThreadSummary]:
        """The owner's threads, most recent activity first (ties: higher id first): the first
        `limit`, or those after `before`."""
        ...

    async def rename_thread(self, thread_id: str, owner: Owner, title: str) -> ThreadSummary:
        """Set the thread's title (activity time unchanged); ThreadNotFound for another owner."""
        ...
