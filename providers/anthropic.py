"""Claude through the Anthropic Messages API.

The SDK says what the request is (URL, auth and version headers, error classes): its own
`messages.create` is captured once per model (`providers.transport`); each answer sends that
request with its own body and decodes the raw event stream itself, which costs a fraction of
the SDK's request pipeline and typed stream helpers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anthropic

from providers.base import (
    Finish,
    Message,
    ModelRequest,
    StreamEvent,
    TextDelta,
    Usage,
)
from providers.codec import dumps, loads
from providers.endpoints import Endpoint
from providers.errors import UpstreamErrors, interrupted, stream_error
from providers.prompt import joined, last_user_index, stable_prefix_end
from providers.sse import SSEDecoder, may_hold_surrogates, repaired
from providers.transport import Upstream, create_sdk_client

# The request the SDK is asked for once per model, to learn its URL and headers.
_SAMPLE = ModelRequest(messages=(Message("user", "x"),), max_tokens=1)


def create_client(endpoint: Endpoint, *, connect_timeout: float, idle_timeout: float) -> Upstream:
    client, http = create_sdk_client(
        anthropic,
        anthropic.AsyncAnthropic,
        api_key=endpoint.api_key or "",
        base_url=endpoint.base_url,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        headers=dict(endpoint.headers),
    )
    return Upstream(anthropic, client, http, connect_timeout=connect_timeout, idle_timeout=idle_timeout)


def create_model(upstream: Upstream, model: str, endpoint: Endpoint) -> AnthropicModel:
    return AnthropicModel(upstream, model, endpoint=endpoint.name, max_tokens_field=endpoint.max_tokens_field or "max_tokens")


class AnthropicModel:
    def __init__(
        self, upstream: Upstream, model: str, *, endpoint: str = "anthropic", max_tokens_field: str = "max_tokens"
    ) -> None:
        self.upstream = upstream
        self.model = model
        self.provider = endpoint
        self.name = f"{endpoint}/{model}"
        self.max_tokens_field = max_tokens_field
        # Resolved once, here: the SDK imports its resource modules on first use, and they belong
        # with the rest of startup (see `service.__main__._freeze_heap`).
        self._messages = upstream.client.messages
        self.errors = UpstreamErrors.of_sdk(anthropic, endpoint, model)

    async def prepare(self) -> None:
        """Capture the model's request from its SDK now rather than on the first answer."""
        await self.upstream.template(self.model, self._sdk_stream)

    def _sdk_stream(self) -> Any:
        """The SDK's own streaming call (captured once, see `providers.transport`)."""
        return self._messages.create(**self._params(_SAMPLE))

    def _sdk_count(self) -> Any:
        return self._messages.count_tokens(**self._count_params(_SAMPLE))

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in request.messages]
        system: str | list[dict[str, Any]] | None = request.system
        if request.context:
            # After the stable prefix, as a block of its own in the last user message.
            last_user = last_user_index(request.messages)
            if last_user is None:
                system = joined(request.system, request.context)
            else:
                messages[last_user]["content"] = [_text(request.messages[last_user].content), _text(request.context)]
        params: dict[str, Any] = {
            "model": self.model,
            self.max_tokens_field: request.max_tokens,
            "messages": messages,
            "stream": True,
        }
        if request.cache is not None:
            marker = {"type": "ephemeral"} if request.cache == "5m" else {"type": "ephemeral", "ttl": "1h"}
            # The top-level marker caches up to the last block, which moves on with every turn;
            # the block before the new turn is marked too, so that the next turn, which repeats
            # everything up to there byte for byte, reads it from the cache.
            params["cache_control"] = marker
            # Every message as text blocks, marked or not, so that a message is sent alike
            # from turn to turn whichever block carries the marker.
            for message in messages:
                if isinstance(message["content"], str):
                    message["content"] = [_text(message["content"])]
            end = stable_prefix_end(request.messages)
            if end > 0:
                blocks = messages[end - 1]["content"]
                blocks[-1] = {**blocks[-1], "cache_control": marker}
            elif isinstance(system, str) and system == request.system:
                system = [{**_text(system), "cache_control": marker}]
        if system:
            params["system"] = system
        if request.stop:
            params["stop_sequences"] = list(request.stop)
        # No `temperature`: the Messages API (version 2026-10-21, the SDK's default) rejects every
        # sampling parameter with a 400, so sending it would fail requests that set it.
        return params

    def _count_params(self, request: ModelRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if request.system:
            params["system"] = request.system
        return params

    async def count_tokens(self, request: ModelRequest) -> int:
        """The input tokens of `request`, from the Messages API's token-counting endpoint."""
        with self.errors:
            template = await self.upstream.template(self.model + " count_tokens", self._sdk_count)
            counted = await self.upstream.fetch_json(template, dumps(self._count_params(request)))
            return int(counted["input_tokens"])

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamEvent, None]:
        with self.errors:
            template = await self.upstream.template(self.model, self._sdk_stream)
            async with self.upstream.send(template, dumps(self._params(request))) as body:
                events = _MessageEvents(self.provider, self.model)
                read = body.readany
                while chunk := await read():
                    if events.finish is None:  # else read the body to its end: the connection is reused
                        for text in events.feed(chunk):
                            yield text
                        if events.error is not None:
                            raise events.error
        if events.finish is None:
            raise interrupted(self.provider, self.model)  # the body ended before `message_stop`
        yield events.finish


class _MessageEvents:
    """One Messages event stream, decoded: text pieces out, the rest kept for `Finish`.

    Decoding happens here rather than in the generator so that no parsed event outlives the
    chunk it came in: an idle stream keeps only these few fields.
    """

    __slots__ = (
        "sse", "provider", "requested", "model", "input_tokens", "output_tokens", "cache_read", "cache_write",
        "stop_reason", "finish", "error",
    )

    def __init__(self, provider: str, model: str) -> None:
        self.sse = SSEDecoder()
        self.provider = provider
        self.requested = self.model = model
        self.input_tokens = self.output_tokens = 0
        self.cache_read = self.cache_write = 0
        self.stop_reason: str | None = None
        self.finish: Finish | None = None
        self.error: Exception | None = None  # raised after the text that came before it

    def feed(self, chunk: bytes) -> list[TextDelta]:
        texts: list[TextDelta] = []
        try:
            for data in self.sse.feed(chunk):
                event = loads(data)
                kind = event["type"]
                if kind == "content_block_delta":
                    delta = event["delta"]
                    if delta["type"] == "text_delta" and (text := delta["text"]):
                        # Text that UTF-8 cannot encode is repaired here, not met on the way out.
                        texts.append(TextDelta(repaired(text) if may_hold_surrogates(data) else text))
                elif kind == "message_start":
                    message = event["message"]
                    self.model = message.get("model") or self.model
                    self._prompt_usage(message.get("usage") or {})
                elif kind == "message_delta":
                    self.stop_reason = event["delta"].get("stop_reason") or self.stop_reason
                    usage = event.get("usage") or {}
                    self.output_tokens = usage.get("output_tokens", self.output_tokens)
                    self._prompt_usage(usage)
                elif kind == "message_stop":
                    usage = Usage(self.input_tokens, self.output_tokens, self.cache_read, self.cache_write)
                    self.finish = Finish(self.model, self.provider, self.stop_reason, usage)
                    break
                elif kind == "error":
                    error = event.get("error") or {}
                    self.error = stream_error(str(error.get("type")), provider=self.provider, model=self.requested)
                    break
                # ping, content_block_start/stop and future event types need nothing.
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.error = exc  # unreadable: mapped by `UpstreamErrors`, after the text before it
        return texts

    def _prompt_usage(self, usage: dict[str, Any]) -> None:
        """The prompt's counts, from `message_start` (or later, cumulative, in `message_delta`).
        Anthropic's `input_tokens` leaves out the cached tokens; ours is the whole prompt."""
        read = usage.get("cache_read_input_tokens") or 0
        write = usage.get("cache_creation_input_tokens") or 0
        total = (usage.get("input_tokens") or 0) + read + write
        if total:
            self.input_tokens, self.cache_read, self.cache_write = total, read, write


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}
