"""What of a thread's stored history is replayed with a new turn.

The replay always has room for the new turn: the oldest whole turns (a user message and its
answer) are left out first until the history, the new turn and the system prompt fit the
budget, and a single message larger than what is left is cut, with a marker, rather than sent
whole. Roles alternate, as the models require: an unanswered question (its answer failed
with no text) is left out, and two answers in a row are joined.

The budget is counted in characters today; `measure` is the seam for counting tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from providers.base import Message
from storage import ClientMessage, StoredMessage

TRUNCATED_MARKER = "[... the start of this message was cut to fit the conversation's size limit ...]\n"


def fit_history(
    history: Sequence[StoredMessage],
    new_turn: tuple[Message, ...],
    system: str | None,
    budget: int,
    measure: Callable[[str], int] = len,
) -> tuple[Message, ...]:
    """The messages to send: as much of `history` as fits `budget`, then `new_turn`."""
    turns = _turns(history)
    left = budget - measure(system or "") - sum(measure(m.content) for m in new_turn)
    if new_turn and new_turn[0].role == "user" and turns and len(turns[-1]) == 1:
        turns.pop()  # history ends with a question the new turn follows: never two in a row
    kept: list[list[Message]] = []
    for turn in reversed(turns):
        size = sum(measure(m.content) for m in turn)
        if size <= left:
            kept.append(turn)
            left -= size
            continue
        if not kept and left > len(TRUNCATED_MARKER) * 2:
            kept.append(_cut(turn, left))  # the newest turn alone is too large: keep its end
        break
    replay = [message for turn in reversed(kept) for message in turn]
    return tuple(replay) + new_turn


def _turns(history: Sequence[StoredMessage]) -> list[list[Message]]:
    """The history as turns: a user message, then its answer (joined when there were several)."""
    turns: list[list[Message]] = []
    for stored in history:
        if stored.role == "user":
            if turns and len(turns[-1]) == 1:
                turns.pop()  # a question whose answer never came: its pair is broken
            turns.append([Message("user", stored.content)])
        elif stored.role == "assistant" and turns:  # an answer before any question is left out
            turn = turns[-1]
            if len(turn) == 1:
                turn.append(Message("assistant", stored.content))
            else:
                turn[1] = Message("assistant", f"{turn[1].content}\n\n{stored.content}")
    return turns


def _cut(turn: list[Message], room: int) -> list[Message]:
    """`turn` within `room` characters: the question keeps up to half, the answer the rest,
    each losing its beginning (the end is what the new turn follows)."""
    shares = [room // 2, room - room // 2] if len(turn) == 2 else [room]
    cut = []
    for message, share in zip(turn, shares):
        if len(message.content) > share:
            keep = max(share - len(TRUNCATED_MARKER), 0)
            content = TRUNCATED_MARKER + (message.content[-keep:] if keep else "")
            message = Message(message.role, content)
        cut.append(message)
    return cut


def as_turn(messages: Sequence[ClientMessage]) -> tuple[Message, ...]:
    """A client's messages as the models take them: no empty ones (an answer that failed
    before its text), and neighbours of one role joined, so that roles alternate."""
    turn: list[Message] = []
    for message in messages:
        if not message.content:
            continue
        if turn and turn[-1].role == message.role:
            turn[-1] = Message(turn[-1].role, f"{turn[-1].content}\n\n{message.content}")
        else:
            turn.append(Message(message.role, message.content))  # type: ignore[arg-type]
    return tuple(turn)
