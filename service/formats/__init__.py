"""Wire formats: how one answer is written for a kind of client.

The relay (`service.answer`) produces an answer's events and owns its end; a format only says
how they look on the wire: the headers, each text piece, the terminal event, the keep-alive,
and the body of an answer that is not streamed. A format object serves one answer, so it may
keep what it needs between events (an id, whether it has opened a block).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from providers.base import ProviderError
from service.outcome import Outcome, Receipt


class WireFormat(Protocol):
    name: str  # for logs and metrics
    headers: Mapping[str, str]  # beyond the event-stream headers every format sends
    keepalive: bytes  # written while the answer is silent
    # Its events carry SSE `id:` lines and its answers may be resumable (the service's own
    # formats); the OpenAI- and Anthropic-compatible ones stay exactly as their SDKs know them.
    event_ids: bool

    def opening(self, answer_id: str | None) -> bytes:
        """Written right after the headers (may be empty); `answer_id` is the answer's id (for a
        stored answer, its message id), which the format may name in its first events."""
        ...

    def answering(self, provider: str, model: str) -> bytes:
        """Written when a model of the chain starts answering (once, before its first text or its
        end): the format may name that model here (may be empty)."""
        ...

    def text(self, text: str) -> bytes:
        """One text piece: the hot path."""
        ...

    def restart(self) -> bytes:
        """The text sent so far is void: the next model answers from the start. Only formats
        whose clients can take text back support it; the chain restarts only when a route
        asks for it (see `FallbackChain.restarting`)."""
        ...

    def done(self, outcome: Outcome, receipt: Receipt | None) -> bytes:
        """The end of an answer that finished: its terminal event(s)."""
        ...

    def failure(self, error: ProviderError) -> bytes:
        """The end of an answer that failed after the headers: its terminal event(s)."""
        ...

    def body(self, outcome: Outcome, receipt: Receipt | None) -> tuple[int, dict[str, Any]]:
        """The status and JSON body of an answer that is not streamed."""
        ...
