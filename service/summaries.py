"""Summaries of what no longer fits a thread's token budget (AI_SUMMARY_MODEL).

After a complete answer whose prompt left whole turns out, those turns (with the summary
before them, if any) are summarized by the summary model in the background, never on the path
of a stream, and stored with the range of messages they cover. The next turns replay that
summary as a note in the system prompt instead of the turns. A failed summary changes nothing
but a log line and a metric: the turns are still left out, so the next turn tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import structlog
from aiohttp import web

from providers.base import (
    Finish,
    Message,
    ModelRequest,
    Provider,
    ProviderError,
    TextDelta,
)
from service.app_keys import METRICS, MODEL_LOADING, REGISTRY, SETTINGS, STORAGE, SUMMARIZER
from storage import Owner, StoredMessage, Summary

log = structlog.get_logger("ai_stream")

SUMMARY_MAX_TOKENS = 600
SUMMARY_SYSTEM = (
    "You summarize conversations between a user and an assistant. Write a short summary of the "
    "conversation you are given, keeping what the assistant needs to continue it: facts about "
    "the user, names, numbers, decisions, open questions. Write only the summary, in the "
    "conversation's language."
)


def summary_prompt(previous: Summary | None, messages: Sequence[StoredMessage]) -> str:
    parts = [f"Summary so far: {previous.content}\n\nWhat followed:"] if previous is not None else ["The conversation:"]
    for message in messages:
        parts.append(f"{'User' if message.role == 'user' else 'Assistant'}: {message.content}")
    return "\n\n".join(parts)


class Summarizer:
    """Writes summaries in tasks of its own; shutdown waits for them (see `summaries_context`)."""

    def __init__(self, app: web.Application, provider: Provider | None, timeout: float) -> None:
        self.app = app
        self.provider = provider
        self.timeout = timeout
        self.tasks: set[asyncio.Task[None]] = set()
        self._running: set[tuple[Owner, str]] = set()  # one summary at a time per thread

    @property
    def enabled(self) -> bool:
        return self.app[SETTINGS].summary_model is not None

    def schedule(self, thread_id: str, owner: Owner, previous: Summary | None, left_out: Sequence[StoredMessage]) -> None:
        key = (owner, thread_id)
        if key in self._running or not left_out:
            return
        self._running.add(key)
        task = asyncio.ensure_future(self._summarize(thread_id, owner, previous, tuple(left_out)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(lambda _: self._running.discard(key))

    async def _summarize(
        self, thread_id: str, owner: Owner, previous: Summary | None, left_out: tuple[StoredMessage, ...]
    ) -> None:
        metrics = self.app[METRICS]
        try:
            summary = await self._ask(thread_id, previous, left_out)
            state = self.app[STORAGE]
            await state.ensure_open()
            stored = await state.store.save_summary(thread_id, owner, summary)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the model or the store failed: the next turn tries again
            code = exc.code if isinstance(exc, ProviderError) else type(exc).__name__
            metrics.summaries.labels("error").inc()
            log.warning("summary_failed", thread_id=thread_id, error=code)
            return
        metrics.summaries.labels("written" if stored else "already_written").inc()
        if stored:
            log.info("summary_written", thread_id=thread_id, through_message_id=summary.through_message_id,
                     messages=len(left_out), model=summary.model)

    async def _ask(self, thread_id: str, previous: Summary | None, left_out: tuple[StoredMessage, ...]) -> Summary:
        if self.provider is None:
            raise ProviderError("no_models_available", "The summary model has no credentials.")
        request = ModelRequest(
            messages=(Message("user", summary_prompt(previous, left_out)),),
            max_tokens=SUMMARY_MAX_TOKENS,
            system=SUMMARY_SYSTEM,
        )
        text: list[str] = []
        finish: Finish | None = None
        async with asyncio.timeout(self.timeout):
            async for event in self.provider.stream(request):
                if type(event) is TextDelta:
                    text.append(event.text)
                elif type(event) is Finish:
                    finish = event
        content = "".join(text).strip()
        if finish is None or not content:
            raise ProviderError("upstream_error", "The summary model gave no summary.")
        # Cumulative: it covers what the previous summary covered, and the turns after it.
        return Summary(
            thread_id=thread_id,
            from_seq=previous.from_seq if previous is not None else left_out[0].seq,
            through_seq=left_out[-1].seq,
            from_message_id=previous.from_message_id if previous is not None else left_out[0].id,
            through_message_id=left_out[-1].id,
            content=content,
            model=finish.model,
            provider=finish.provider,
        )


async def summaries_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx, after the models' (so its cleanup runs first): summaries still being
    written get AI_SHUTDOWN_WRITE_TIMEOUT seconds, then are cancelled (the next turn retries)."""
    settings = app[SETTINGS]
    summarizer = app[SUMMARIZER] = Summarizer(app, None, settings.request_timeout)
    if settings.summary_model is not None:
        registry = app[REGISTRY]
        name = registry.resolve(settings.summary_model)
        if name not in registry.usable:
            log.warning("summary_model_unusable", model=settings.summary_model, reason="no credentials")
        else:

            def find_provider() -> None:  # once the models exist (see service/model_loading.py)
                summarizer.provider = next(model for model in registry.models if model.name == name)

            app[MODEL_LOADING].after_load(find_provider)
    yield
    if summarizer.tasks:
        await asyncio.wait(summarizer.tasks, timeout=settings.shutdown_write_timeout)
    for task in list(summarizer.tasks):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
