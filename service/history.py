"""What of a thread's stored history is replayed with a new turn.

The replay always has room for the new turn: the oldest whole turns (a user message and its
answer) are left out first until the history, the new turn and the system prompt fit the
budget, and a single message larger than what is left is cut, with a marker, rather than sent
whole. Roles alternate, as the models require: an unanswered question (its answer failed
with no text) is left out, and two answers in a row are joined.

Two bounds apply: characters (AI_HISTORY_MAX_CHARS, a hard safety bound) and, when one is
set, tokens (AI_HISTORY_TOKEN_BUDGET, or the model's own `history_token_budget`). Tokens are
counted from what the models reported where they can be: each stored answer keeps the
`input_tokens` of the prompt that produced it and where that prompt's replayed history began,
so the size of that prompt is known exactly, and an answer's own size is its `output_tokens`.
Only text the models have not counted yet (the new turn, questions, a changed summary note)
is estimated, at CHARS_PER_TOKEN characters a token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from providers.base import Message
from storage import ClientMessage, StoredMessage, Summary

TRUNCATED_MARKER = "[... the start of this message was cut to fit the conversation's size limit ...]\n"
SUMMARY_NOTE = "Summary of the earlier conversation: "
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """Tokens of text no model has counted yet: one per CHARS_PER_TOKEN characters, rounded up."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def with_summary(system: str | None, summary: Summary | None) -> str | None:
    """The system prompt with the thread's summary note after it (both stable from turn to turn
    until a new summary is written)."""
    if summary is None:
        return system
    note = SUMMARY_NOTE + summary.content
    return f"{system}\n\n{note}" if system else note


@dataclass(frozen=True, slots=True)
class Budget:
    max_chars: int
    max_tokens: int | None = None  # None: no token budget


@dataclass(frozen=True, slots=True)
class Replay:
    """A planned prompt: the messages to send (the kept history, then the new turn)."""

    messages: tuple[Message, ...]
    first_seq: int | None  # the first replayed stored message; None: nothing replayed
    left_out: tuple[StoredMessage, ...]  # whole turns the budget left out (not already summarized), oldest first
    tokens: int | None  # the prompt's size as counted here, when a token budget applies
    exact: bool  # whether that count rests on a size the model reported
    cut: bool = False  # the oldest replayed message was cut (with TRUNCATED_MARKER) to fit


@dataclass(slots=True)
class _Turn:
    messages: list[Message]
    stored: list[StoredMessage] = field(default_factory=list)

    @property
    def first_seq(self) -> int:
        return self.stored[0].seq

    def tokens(self) -> int:
        return sum(_stored_tokens(m) for m in self.stored)

    def chars(self, measure: Callable[[str], int]) -> int:
        return sum(measure(m.content) for m in self.messages)


def _stored_tokens(message: StoredMessage) -> int:
    if message.role == "assistant" and message.output_tokens is not None and message.status == "complete":
        return message.output_tokens  # counted by the model that wrote it
    return estimate_tokens(message.content)


def fit_history(
    history: Sequence[StoredMessage],
    new_turn: tuple[Message, ...],
    system: str | None,
    budget: int,
    measure: Callable[[str], int] = len,
) -> tuple[Message, ...]:
    """The messages to send: as much of `history` as fits `budget` characters, then `new_turn`."""
    return plan_replay(history, new_turn, system, Budget(budget), measure=measure).messages


def plan_replay(
    history: Sequence[StoredMessage],
    new_turn: tuple[Message, ...],
    system: str | None,
    budget: Budget,
    *,
    context: str | None = None,
    summary: Summary | None = None,
    measure: Callable[[str], int] = len,
) -> Replay:
    """As much of `history` as fits `budget` with `new_turn`, `system` (the summary note
    included) and `context`; messages a summary covers are not replayed."""
    if summary is not None:
        history = [m for m in history if m.seq > summary.through_seq]
    turns = _turns(history)
    if new_turn and new_turn[0].role == "user" and turns and len(turns[-1].messages) == 1:
        turns.pop()  # history ends with a question the new turn follows: never two in a row
    chars_left = budget.max_chars - measure(system or "") - sum(measure(m.content) for m in new_turn)
    sizes = _TokenSizes(turns, new_turn, system, context, summary) if budget.max_tokens is not None else None
    start = len(turns)
    cut: list[Message] | None = None
    while start > 0:
        turn = turns[start - 1]
        chars = turn.chars(measure)
        fits_tokens = sizes is None or sizes.total(start - 1) <= budget.max_tokens  # type: ignore[operator]
        if chars <= chars_left and fits_tokens:
            chars_left -= chars
            start -= 1
            continue
        if start == len(turns):  # the newest turn alone is too large: keep its end
            room = chars_left
            if sizes is not None:
                # Less a token per message: each is counted rounded up.
                tokens_left = budget.max_tokens - sizes.total(start) - len(turn.messages)  # type: ignore[operator]
                room = min(room, tokens_left * CHARS_PER_TOKEN)
            if room > len(TRUNCATED_MARKER) * 2:
                cut = _cut(turn.messages, room)
        break
    kept = [m for turn in turns[start:] for m in turn.messages]
    if cut is not None:
        kept = cut
        start -= 1
    first_seq = turns[start].first_seq if start < len(turns) else None
    left_out = tuple(m for turn in turns[:start] for m in turn.stored)
    tokens = sizes.total(start) if sizes is not None and cut is None else None
    return Replay(tuple(kept) + new_turn, first_seq, left_out, tokens, sizes is not None and sizes.exact, cut is not None)


class _TokenSizes:
    """The prompt's size in tokens when its replay starts at turn `start`.

    With an anchor (the newest answer whose prompt's size and shape were recorded, under the
    same summary), the size is that prompt plus that answer, exact, plus what came after it,
    minus (or plus) the turns between where that prompt's replay began and `start`. Without
    one, everything is summed: answers as the models counted them, the rest estimated."""

    def __init__(
        self,
        turns: list[_Turn],
        new_turn: tuple[Message, ...],
        system: str | None,
        context: str | None,
        summary: Summary | None,
    ) -> None:
        self.turn_tokens = [turn.tokens() for turn in turns]
        new_tokens = sum(estimate_tokens(m.content) for m in new_turn)
        self.base = estimate_tokens(system or "") + estimate_tokens(context or "") + new_tokens
        self.anchor_start = 0
        self.exact = False
        anchor = _anchor(turns, summary)
        if anchor is not None:
            index, message, anchor_start = anchor
            # Everything the anchor's prompt held (system, note, context, its replay) plus itself,
            # then the turns after it and the new turn (the context is in the anchor already).
            after = sum(self.turn_tokens[index + 1 :])
            self.base = message.input_tokens + message.output_tokens + after + new_tokens  # type: ignore[operator]
            self.anchor_start = anchor_start
            self.exact = True
        self.prefix = [0]
        for tokens in self.turn_tokens:
            self.prefix.append(self.prefix[-1] + tokens)

    def total(self, start: int) -> int:
        """The size with turns `start`.. replayed."""
        if not self.exact:
            return self.base + self.prefix[-1] - self.prefix[start]
        # The anchor's prompt replayed turns anchor_start..: add or take away the difference.
        return self.base + self.prefix[self.anchor_start] - self.prefix[start]


def _anchor(turns: list[_Turn], summary: Summary | None) -> tuple[int, StoredMessage, int] | None:
    """(its turn's index, the answer, the index of the turn its prompt's replay began at)."""
    through = summary.through_seq if summary is not None else None
    for index in range(len(turns) - 1, -1, -1):
        answers = [m for m in turns[index].stored if m.role == "assistant"]
        if not answers:
            continue
        answer = answers[-1]
        if (
            answer.status != "complete"
            or answer.input_tokens is None
            or answer.output_tokens is None
            or answer.replay_from_seq is None
            or answer.summary_through_seq != through
            or len(answers) > 1
        ):
            return None  # the newest answer's prompt is not known well enough: estimate all
        if answer.replay_from_seq == 0:  # its prompt replayed nothing before its own question
            return index, answer, index
        starts = [i for i in range(index + 1) if turns[i].first_seq == answer.replay_from_seq]
        return (index, answer, starts[0]) if starts else None
    return None


def _turns(history: Sequence[StoredMessage]) -> list[_Turn]:
    """The history as turns: a user message, then its answer (joined when there were several)."""
    turns: list[_Turn] = []
    for stored in history:
        if stored.role == "user":
            if turns and len(turns[-1].messages) == 1:
                turns.pop()  # a question whose answer never came: its pair is broken
            turns.append(_Turn([Message("user", stored.content)], [stored]))
        elif stored.role == "assistant" and turns:  # an answer before any question is left out
            turn = turns[-1]
            turn.stored.append(stored)
            if len(turn.messages) == 1:
                turn.messages.append(Message("assistant", stored.content))
            else:
                turn.messages[1] = Message("assistant", f"{turn.messages[1].content}\n\n{stored.content}")
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
