"""From a validated request to its answer, the same for every route and wire format: the model
chain to ask, the end user's limits, the stored thread, then the relay."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from aiohttp import web

from providers.base import ModelRequest, Provider
from providers.fallback import FallbackChain
from service.answer import AnswerEnd, collect_answer, stream_answer
from service.answer_log import AnswerInfo
from service.app_keys import (
    CHAIN,
    CLOCK,
    IN_FLIGHT,
    REGISTRY,
    SETTINGS,
    STORAGE,
    SUMMARIZER,
    USER_LIMITER,
)
from service.body import invalid
from service.conversations import begin_turn, follow_chat, owner_of, store_answer
from service.datecontext import date_context
from service.errors import ApiError, request_log
from service.event_ids import new_answer_id
from service.formats import WireFormat
from service.history import Budget, as_turn
from service.limits import end_user_of
from service.outcome import Outcome, Receipt
from service.prompting import RetryShorter, ThreadPrompt, cache_marker
from service.resumable import stream_resumable
from storage import ClientMessage, Cut

NO_MODELS = (
    "No model is configured with credentials: set ANTHROPIC_API_KEY, OPENAI_API_KEY or "
    "AI_ENDPOINT_<NAME>_API_KEY for an endpoint of a model in AI_MODELS."
)


@dataclass(frozen=True, slots=True)
class Asked:
    """What a handler made of its body: the chain to ask, the request for it (the new turn
    only; a thread's history is added here), whether to stream, and the thread, if any."""

    provider: Provider
    model_request: ModelRequest
    stream: bool = True
    thread_id: str | None = None
    user_id: str | None = None
    # The client's whole conversation, which the stored thread follows (/ai/ui/chat); without
    # it, `model_request.messages` is the new turn, stored after the thread's history.
    conversation: tuple[ClientMessage, ...] | None = None
    timezone: str | None = None  # for the date context; None: AI_DEFAULT_TIMEZONE
    cut: Cut | None = None  # regenerate or edit: where the stored thread is cut first
    date_context: bool = True  # False: the route's setting leaves the date out (see AI_COMPAT_DATE_CONTEXT)
    # The body's `resumable`: None for the default (a streamed answer of a stored thread is).
    resumable: bool | None = None

    @property
    def is_resumable(self) -> bool:
        if not self.stream:
            return False
        return self.resumable if self.resumable is not None else self.thread_id is not None


def chain_for(request: web.Request, model: str | None) -> FallbackChain:
    """The fallback chain, started at the requested model when one is named."""
    chain = request.app[CHAIN]
    if model is None:
        if not chain.models:
            raise ApiError(503, "no_models_available", NO_MODELS)
        return chain
    registry = request.app[REGISTRY]
    name = registry.resolve(model)
    if name is None:
        configured = ", ".join(info.name for info in registry.info)
        raise invalid([{"field": "model", "message": f"model {model[:100]!r} is not configured; choose one of: {configured}"}])
    # A configured model without credentials is skipped: start at the next usable one after it.
    usable = {m.name for m in chain.models}
    names = [info.name for info in registry.info]
    for candidate in names[names.index(name) :]:
        if candidate in usable:
            return chain.starting_at(candidate)
    raise ApiError(503, "no_models_available", "No model from the requested one on is configured with credentials.")


def history_budget(request: web.Request, provider: Provider) -> Budget:
    """The budget of a thread's prompt: the token budget of the model the chain starts at (its
    own `history_token_budget`, else AI_HISTORY_TOKEN_BUDGET), and the character bound."""
    settings = request.app[SETTINGS]
    tokens = settings.history_token_budget
    models = getattr(provider, "models", ())
    if models and (info := request.app[REGISTRY].info_for(models[0].name)) is not None:
        tokens = info.options.history_token_budget or tokens
    return Budget(settings.history_max_chars, tokens)


async def answer(request: web.Request, asked: Asked, wire: WireFormat) -> web.StreamResponse:
    """Answer `asked` in `wire`'s format (the client's own stream slot is already held: see
    `service.security.opens_answer`)."""
    settings = request.app[SETTINGS]
    if asked.resumable and not asked.stream:
        raise invalid([{"field": "resumable",
                        "message": "resumable needs a streamed answer: leave stream out or set it to true"}])
    started = time.monotonic()
    user_limiter = request.app[USER_LIMITER]
    end_user = end_user_of(request, asked.user_id) if asked.user_id is not None else None
    if end_user is not None:
        await user_limiter.admit(end_user)
    async with user_limiter.stream(end_user) if end_user is not None else _NO_SLOT:
        model_request = asked.model_request
        context = None
        if settings.date_context and asked.date_context:
            # After the stable prefix (see providers/prompt.py), so that it never breaks a prompt cache.
            context = date_context(asked.timezone or settings.default_timezone, request.app[CLOCK]())
        provider = asked.provider
        outcome = Outcome()
        store = None
        turn = None
        if asked.thread_id is not None:
            if context is not None:
                model_request = replace(model_request, context=context)
            request_log(request)["thread_id"] = asked.thread_id
            if asked.conversation is None:
                turn = await begin_turn(request, asked.thread_id, asked.user_id, model_request.messages, cut=asked.cut)
            else:
                turn = await follow_chat(request, asked.thread_id, asked.user_id, asked.conversation)
                new = asked.conversation[len(asked.conversation) - len(turn.user_message_ids) :]
                model_request = replace(model_request, messages=as_turn(new))
            prompt = ThreadPrompt(turn, model_request, history_budget(request, provider), settings.prompt_cache)
            model_request, provider = prompt.request, RetryShorter(provider, prompt)
            store = _and_summarize(
                request, asked, prompt,
                store_answer(request, asked.thread_id, turn.assistant_message_id, started + settings.request_timeout,
                             shape=lambda: prompt.shape),
            )
            # Its text is saved as it grows, so that a crash of this process loses little of it.
            request.app[STORAGE].partials.track(turn.assistant_message_id, outcome.text)
        else:
            # One copy of the request, with what this answer adds to it.
            cache = cache_marker(settings.prompt_cache, model_request)
            if context is not None or cache is not None:
                model_request = replace(model_request, context=context, cache=cache)
        end = AnswerEnd(request, store)
        answer_id = turn.assistant_message_id if turn is not None else new_answer_id()
        if asked.stream and asked.is_resumable and wire.event_ids:
            # A UI chat's answer is also found by its chat, for `useChat({ resume: true })`.
            chat_id = asked.thread_id if asked.conversation is not None else None
            info = AnswerInfo(answer_id, owner_of(request, asked.user_id), wire.name, chat_id)
            return await stream_resumable(
                request, provider, model_request, wire, end, info,
                deadline=settings.request_timeout, in_flight=request.app[IN_FLIGHT], outcome=outcome,
            )
        if asked.stream:
            return await stream_answer(
                request,
                provider,
                model_request,
                wire,
                end,
                deadline=settings.request_timeout,
                ping_interval=settings.keepalive_interval,
                in_flight=request.app[IN_FLIGHT],
                outcome=outcome,
                answer_id=answer_id,
            )
        return await collect_answer(
            provider,
            model_request,
            wire,
            end,
            deadline=settings.request_timeout,
            in_flight=request.app[IN_FLIGHT],
            outcome=outcome,
        )


def _and_summarize(
    request: web.Request, asked: Asked, prompt: ThreadPrompt, store: Callable[[Outcome], Awaitable[Receipt]]
) -> Callable[[Outcome], Awaitable[Receipt]]:
    """`store`, then (for a complete answer whose prompt left turns out) a summary of them in
    the background: never on the path of the stream."""
    summarizer = request.app.get(SUMMARIZER)
    if summarizer is None or not summarizer.enabled:
        return store
    owner = owner_of(request, asked.user_id)
    thread_id = asked.thread_id
    assert thread_id is not None

    async def store_then_summarize(outcome: Outcome) -> Receipt:
        receipt = await store(outcome)
        if outcome.status == "complete" and prompt.replay.left_out:
            summarizer.schedule(thread_id, owner, prompt.turn.summary, prompt.replay.left_out)
        return receipt

    return store_then_summarize


class _NoSlot:
    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_NO_SLOT = _NoSlot()
