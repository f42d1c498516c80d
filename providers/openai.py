"""Any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama, llama.cpp...).

As for Anthropic, the SDK says what the request is (captured once per model, see
`providers.transport`) and the hot path sends it and decodes the raw chunk stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import openai

from providers.base import (
    Finish,
    Message,
    ModelRequest,
    ProviderError,
    StreamEvent,
    TextDelta,
    Usage,
)
from providers.codec import dumps, loads
from providers.endpoints import Endpoint
from providers.errors import UpstreamErrors, interrupted
from providers.prompt import joined, last_user_index
from providers.sse import SSEDecoder, may_hold_surrogates, repaired
from providers.transport import Upstream, create_sdk_client

# This SDK adds its retry count and read timeout after the client's headers unless the request
# itself removes them.
_REQUEST_HEADERS = {"x-stainless-retry-count": openai.omit, "x-stainless-read-timeout": openai.omit}

# Stop reasons in the vocabulary the `done` event uses for every provider.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


# Sent by this SDK when OPENAI_ORG_ID / OPENAI_PROJECT_ID are set: meant for OpenAI's own API, so
# left out for every other endpoint (an endpoint's own `headers` may still set them).
_OPENAI_ACCOUNT_HEADERS = ("OpenAI-Organization", "OpenAI-Project")


# The request the SDK is asked for once per model, to learn its URL and headers.
_SAMPLE = ModelRequest(messages=(Message("user", "x"),), max_tokens=1)


def create_client(endpoint: Endpoint, *, connect_timeout: float, idle_timeout: float) -> Upstream:
    headers: dict[str, Any] = dict(endpoint.headers)
    if not endpoint.builtin:
        given = {name.lower() for name in headers}
        headers.update({name: openai.omit for name in _OPENAI_ACCOUNT_HEADERS if name.lower() not in given})
    client, http = create_sdk_client(
        openai,
        openai.AsyncOpenAI,
        api_key=endpoint.api_key or "",
        base_url=endpoint.base_url,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        headers=headers,
    )
    return Upstream(openai, client, http, connect_timeout=connect_timeout, idle_timeout=idle_timeout)


def create_model(upstream: Upstream, model: str, endpoint: Endpoint) -> OpenAIModel:
    return OpenAIModel(upstream, model, endpoint=endpoint.name, max_tokens_field=endpoint.max_tokens_field or "max_tokens")


class OpenAIModel:
    def __init__(
        self, upstream: Upstream, model: str, *, endpoint: str = "openai", max_tokens_field: str = "max_tokens"
    ) -> None:
        self.upstream = upstream
        self.model = model
        self.provider = endpoint
        self.name = f"{endpoint}/{model}"
        # Resolved once, here: the SDK imports its resource modules on first use, and they belong
        # with the rest of startup (see `service.__main__._freeze_heap`).
        self._completions = upstream.client.chat.completions
        self.errors = UpstreamErrors.of_sdk(openai, endpoint, model)
        # OpenAI's own newer models want `max_completion_tokens`; compatible servers know `max_tokens`.
        self.max_tokens_field = max_tokens_field

    async def prepare(self) -> None:
        """Capture the model's request from its SDK now rather than on the first answer."""
        await self.upstream.template(self.model, self._sdk_stream)

    def _sdk_stream(self) -> Any:
        """The SDK's own streaming call (captured once, see `providers.transport`)."""
        return self._completions.create(**self._params(_SAMPLE), extra_headers=_REQUEST_HEADERS)

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        system = request.system
        turns = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.context:
            # After the stable prefix, which OpenAI's automatic prompt caching matches: at the end
            # of the last user message, as text (compatible servers do not all take content parts).
            last_user = last_user_index(request.messages)
            if last_user is None:
                system = joined(system, request.context)
            else:
                turns[last_user]["content"] = joined(request.messages[last_user].content, request.context)
        messages = [{"role": "system", "content": system}] if system else []
        messages += turns
        params: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            self.max_tokens_field: request.max_tokens,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.stop:
            params["stop"] = list(request.stop)
        return params

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        with self.errors:
            template = await self.upstream.template(self.model, self._sdk_stream)
            async with self.upstream.send(template, dumps(self._params(request))) as body:
                chunks = _CompletionChunks(self.provider, self.model)
                read = body.readany
                while chunk := await read():
                    if not chunks.done:  # else read the body to its end: the connection is reused
                        for text in chunks.feed(chunk):
                            yield text
                        if chunks.error is not None:
                            raise chunks.error
        # Some compatible servers end the body after the finish reason without `[DONE]`.
        if not chunks.done and chunks.stop_reason is None:
            raise interrupted(self.provider, self.model)
        yield Finish(chunks.model, self.provider, chunks.stop_reason, chunks.usage)


class _CompletionChunks:
    """One chunk stream, decoded: text pieces out, the rest kept for `Finish` (as for Anthropic,
    no parsed chunk outlives the bytes it came in)."""

    __slots__ = ("sse", "provider", "requested", "model", "usage", "stop_reason", "done", "error")

    def __init__(self, provider: str, model: str) -> None:
        self.sse = SSEDecoder()
        self.provider = provider
        self.requested = self.model = model
        self.usage = Usage()
        self.stop_reason: str | None = None
        self.done = False
        self.error: Exception | None = None  # raised after the text that came before it

    def feed(self, chunk: bytes) -> list[TextDelta]:
        texts: list[TextDelta] = []
        try:
            for data in self.sse.feed(chunk):
                if data == b"[DONE]":
                    self.done = True
                    break
                event = loads(data)
                for choice in event.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        # Text that UTF-8 cannot encode is repaired here, not met on the way out.
                        texts.append(TextDelta(repaired(content) if may_hold_surrogates(data) else content))
                    if reason := choice.get("finish_reason"):
                        self.stop_reason = STOP_REASONS.get(reason, reason)
                if counts := event.get("usage"):
                    cached = (counts.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                    self.usage = Usage(counts.get("prompt_tokens") or 0, counts.get("completion_tokens") or 0, cached)
                if "error" in event:
                    self.error = _stream_error(self.provider, self.requested)
                    break
                self.model = event.get("model") or self.model
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.error = exc  # unreadable: mapped by `UpstreamErrors`, after the text before it
        return texts


def _stream_error(provider: str, model: str) -> ProviderError:
    return ProviderError(
        "upstream_error",
        "The model service reported an error while answering.",
        provider=provider,
        model=model,
        fallback=True,
    )
