"""Any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama, llama.cpp...).

As for Anthropic, the SDK makes the request and the hot path decodes the raw chunk stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import openai

from providers.base import (
    Finish,
    ModelRequest,
    ProviderError,
    StreamEvent,
    TextDelta,
    Usage,
)
from providers.errors import interrupted, upstream_errors
from providers.sse import SSEDecoder
from providers.transport import UPSTREAM_LIMITS

PROVIDER = "openai"

# Stop reasons in the vocabulary the `done` event uses for every provider.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def create_client(
    *, api_key: str, base_url: str | None, connect_timeout: float, idle_timeout: float
) -> openai.AsyncOpenAI:
    timeout = openai.Timeout(idle_timeout, connect=connect_timeout)
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultAioHttpClient(timeout=timeout, limits=UPSTREAM_LIMITS),
    )


class OpenAIModel:
    def __init__(self, client: openai.AsyncOpenAI, model: str, *, max_tokens_field: str = "max_tokens") -> None:
        self.client = client
        self.model = model
        self.name = f"{PROVIDER}/{model}"
        # OpenAI's own newer models want `max_completion_tokens`; compatible servers know `max_tokens`.
        self.max_tokens_field = max_tokens_field

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        params: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            self.max_tokens_field: request.max_tokens,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        model = self.model
        errors = upstream_errors(
            PROVIDER,
            self.model,
            status_error=openai.APIStatusError,
            timeout_error=openai.APITimeoutError,
            connection_error=openai.APIConnectionError,
        )
        with errors:
            async with self.client.chat.completions.with_streaming_response.create(**self._params(request)) as response:
                decoder = SSEDecoder()
                usage = Usage()
                stop_reason: str | None = None
                done = False
                async for chunk in response.iter_bytes():
                    if done:
                        continue  # read the body to its end so the connection goes back to the pool
                    for data in decoder.feed(chunk):
                        if data == b"[DONE]":
                            done = True
                            break
                        event = json.loads(data)
                        for choice in event.get("choices") or ():
                            content = (choice.get("delta") or {}).get("content")
                            if content:
                                yield TextDelta(content)
                            if reason := choice.get("finish_reason"):
                                stop_reason = STOP_REASONS.get(reason, reason)
                        if counts := event.get("usage"):
                            usage = Usage(counts.get("prompt_tokens") or 0, counts.get("completion_tokens") or 0)
                        if "error" in event:
                            raise _stream_error(self.model)
                        model = event.get("model") or model
        # Some compatible servers end the body after the finish reason without `[DONE]`.
        if not done and stop_reason is None:
            raise interrupted(PROVIDER, self.model)
        yield Finish(model, PROVIDER, stop_reason, usage)


def _stream_error(model: str) -> ProviderError:
    return ProviderError(
        "upstream_error",
        "The model service reported an error while answering.",
        provider=PROVIDER,
        model=model,
        fallback=True,
    )
