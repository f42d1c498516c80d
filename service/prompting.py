"""The prompt of one answer: a thread's replay within its budget, the prompt-cache marker, and
one retry with a shorter history when the model says the prompt is too long."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Literal

from providers.base import AttemptFailed, ModelRequest, Provider, StreamEvent, TextDelta
from providers.errors import PromptTooLong
from providers.prompt import stable_prefix_end
from service.history import Budget, Replay, estimate_tokens, plan_replay, with_summary
from storage import Turn

# A system prompt at least this long (in estimated tokens) is worth caching on its own: the
# smallest prefix Claude caches is 1024 tokens.
CACHEABLE_SYSTEM_TOKENS = 1024
# The retried prompt aims this far below the limit the model named (our count is an estimate).
RETRY_MARGIN = 0.9


def cache_marker(setting: str, request: ModelRequest) -> Literal["5m", "1h"] | None:
    """The cache lifetime to mark `request` with: only when something is worth caching, a
    history before the new turn or a long system prompt."""
    if setting == "off":
        return None
    worth = stable_prefix_end(request.messages) > 0 or estimate_tokens(request.system or "") >= CACHEABLE_SYSTEM_TOKENS
    if not worth:
        return None
    return "1h" if setting == "1h" else "5m"


@dataclass(frozen=True, slots=True)
class PromptShape:
    """What an answer's row keeps about its prompt, so that the next turn can count it."""

    replay_from_seq: int | None  # the first replayed message; 0: none was replayed; None: one was cut
    summary_through_seq: int | None  # the last message the summary note covered; None: no note


class ThreadPrompt:
    """A thread's stored turn made into the prompt for its answer (`request`), planned within
    `budget`; `shorter()` plans it again, smaller, after the model found it too long."""

    def __init__(self, turn: Turn, asked: ModelRequest, budget: Budget, cache_setting: str) -> None:
        self.turn = turn
        self.asked = asked
        self.budget = budget
        self.cache_setting = cache_setting
        self.system = with_summary(asked.system, turn.summary)
        self.replay = self._plan(budget)
        self.request = self._request(self.replay)
        self.retried = False

    def _plan(self, budget: Budget) -> Replay:
        return plan_replay(
            self.turn.history, self.asked.messages, self.system, budget, context=self.asked.context, summary=self.turn.summary
        )

    def _request(self, replay: Replay) -> ModelRequest:
        request = replace(self.asked, messages=replay.messages, system=self.system)
        return replace(request, cache=cache_marker(self.cache_setting, request))

    @property
    def shape(self) -> PromptShape:
        summary = self.turn.summary
        through = summary.through_seq if summary is not None else None
        # A replay whose oldest message was cut to fit cannot be counted on by the next turn.
        return PromptShape(None if self.replay.cut else self.replay.first_seq or 0, through)

    def shorter(self, error: PromptTooLong) -> ModelRequest | None:
        """The prompt planned again within a budget the model's answer suggests (the limit it
        named, scaled by how far our count was from its count; else half the prompt), or None
        when leaving out more history cannot make it smaller."""
        current = self.replay
        tokens = current.tokens if current.tokens is not None else self._count(current)
        if error.sent and error.limit and error.sent > error.limit:
            target = int(tokens * error.limit / error.sent * RETRY_MARGIN)
        else:
            target = tokens // 2
        chars = sum(len(m.content) for m in current.messages) + len(self.system or "")
        smaller = self._plan(Budget(max_chars=min(self.budget.max_chars, max(chars // 2, 1)), max_tokens=max(target, 1)))
        if len(smaller.left_out) == len(current.left_out) and smaller.messages == current.messages:
            return None
        self.replay = smaller
        self.request = self._request(smaller)
        self.retried = True
        return self.request

    def _count(self, replay: Replay) -> int:
        return estimate_tokens(self.system or "") + sum(estimate_tokens(m.content) for m in replay.messages)


class RetryShorter:
    """A provider around the chain that, when the prompt is too long for the model (before any
    text: the model says so instead of answering), asks once more with `prompt.shorter()`."""

    def __init__(self, inner: Provider, prompt: ThreadPrompt) -> None:
        self.inner = inner
        self.prompt = prompt
        self.name = inner.name

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        started = False
        try:
            async with aclosing(self.inner.stream(request)) as events:
                async for event in events:
                    started = started or type(event) is TextDelta
                    yield event
            return
        except PromptTooLong as exc:
            shorter = None if started else self.prompt.shorter(exc)
            if shorter is None:
                raise
            failed = exc
        yield AttemptFailed(f"{failed.provider}/{failed.model}", failed.provider, "prompt_too_long", failed.status)
        async with aclosing(self.inner.stream(shorter)) as events:
            async for event in events:
                yield event
