"""Claude through the Anthropic Messages API.

The SDK makes the request (auth, base URL, error classes); the hot path reads the raw
streaming body and decodes the events itself, which costs a fraction of the SDK's typed
stream helpers per token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import anthropic

from providers.base import (
    Finish,
    ModelRequest,
    StreamEvent,
    TextDelta,
    Usage,
)
from providers.errors import interrupted, stream_error, upstream_errors
from providers.sse import SSEDecoder
from providers.transport import UPSTREAM_LIMITS

PROVIDER = "anthropic"


def create_client(
    *, api_key: str, base_url: str | None, connect_timeout: float, idle_timeout: float
) -> anthropic.AsyncAnthropic:
    # max_retries=0: the fallback chain decides about retries, so a 529 costs no back-off.
    # The aiohttp transport parses HTTP in C: a third of the relay's CPU less than the default.
    timeout = anthropic.Timeout(idle_timeout, connect=connect_timeout)
    return anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=timeout,
        http_client=anthropic.DefaultAioHttpClient(timeout=timeout, limits=UPSTREAM_LIMITS),
    )


class AnthropicModel:
    def __init__(self, client: anthropic.AsyncAnthropic, model: str) -> None:
        self.client = client
        self.model = model
        self.name = f"{PROVIDER}/{model}"

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
        }
        if request.system:
            params["system"] = request.system
        # No `temperature`: the Messages API (version 2026-10-21, the SDK's default) rejects every
        # sampling parameter with a 400, so sending it would fail requests that set it.
        return params

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        model = self.model
        errors = upstream_errors(
            PROVIDER,
            self.model,
            status_error=anthropic.APIStatusError,
            timeout_error=anthropic.APITimeoutError,
            connection_error=anthropic.APIConnectionError,
        )
        with errors:
            async with self.client.messages.with_streaming_response.create(**self._params(request)) as response:
                decoder = SSEDecoder()
                input_tokens = output_tokens = 0
                stop_reason: str | None = None
                finish: Finish | None = None
                async for chunk in response.iter_bytes():
                    if finish is not None:
                        continue  # read the body to its end so the connection goes back to the pool
                    for data in decoder.feed(chunk):
                        event = json.loads(data)
                        kind = event["type"]
                        if kind == "content_block_delta":
                            delta = event["delta"]
                            if delta["type"] == "text_delta" and delta["text"]:
                                yield TextDelta(delta["text"])
                        elif kind == "message_start":
                            message = event["message"]
                            model = message.get("model") or model
                            input_tokens = _input_tokens(message.get("usage") or {})
                        elif kind == "message_delta":
                            stop_reason = event["delta"].get("stop_reason") or stop_reason
                            usage = event.get("usage") or {}
                            output_tokens = usage.get("output_tokens", output_tokens)
                            input_tokens = _input_tokens(usage) or input_tokens
                        elif kind == "message_stop":
                            finish = Finish(model, PROVIDER, stop_reason, Usage(input_tokens, output_tokens))
                            break
                        elif kind == "error":
                            error = event.get("error") or {}
                            raise stream_error(str(error.get("type")), provider=PROVIDER, model=self.model)
                        # ping, content_block_start/stop and future event types need nothing.
        if finish is None:
            raise interrupted(PROVIDER, self.model)  # the body ended before `message_stop`
        yield finish


def _input_tokens(usage: dict[str, Any]) -> int:
    # Cached prompt tokens are billed as input too.
    return (
        (usage.get("input_tokens") or 0)
        + (usage.get("cache_creation_input_tokens") or 0)
        + (usage.get("cache_read_input_tokens") or 0)
    )
