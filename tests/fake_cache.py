"""Prefix-cache accounting for the fake upstream, as the vendors' prompt caches count."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


def count_tokens(text: str) -> int:
    """How the fake counts tokens, when it counts them (`FakeUpstream.count_tokens`): one per
    four characters, rounded up, for each text block."""
    return (len(text) + 3) // 4


@dataclass
class PromptCache:
    """Prefix-cache accounting as the vendors do it, keyed by hashes of request prefixes.

    Anthropic: entries are written at the blocks marked `cache_control` (the top-level marker
    marks the last block); a request reads the longest cached prefix that ends at a block
    boundary within 20 blocks before one of its markers. OpenAI: automatic; a request reads the
    longest prefix (at a message boundary) that an earlier request had. Prefixes shorter than
    `min_tokens` are not cached."""

    min_tokens: int = 0
    entries: set[str] = field(default_factory=set)

    def anthropic(self, body: dict[str, Any]) -> tuple[int, int, int]:
        """(total prompt tokens, read from the cache, written to it) of a Messages request."""
        blocks: list[tuple[str, int, bool]] = []
        system = body.get("system")
        for block in [{"type": "text", "text": system}] if isinstance(system, str) else (system or []):
            blocks.append((json.dumps(["system", block.get("text")]), count_tokens(str(block.get("text", ""))), "cache_control" in block))
        for message in body.get("messages") or []:
            content = message.get("content")
            for index, block in enumerate([{"type": "text", "text": content}] if isinstance(content, str) else content or []):
                key = json.dumps([message.get("role"), index, block.get("text")])
                blocks.append((key, count_tokens(str(block.get("text", ""))), "cache_control" in block))
        if body.get("cache_control") and blocks:
            blocks[-1] = (blocks[-1][0], blocks[-1][1], True)
        hashes, sizes = self._prefixes([(key, tokens) for key, tokens, _ in blocks])
        total = sizes[-1] if sizes else 0
        marks = [i for i, (_, _, marked) in enumerate(blocks) if marked]
        read = 0
        for mark in marks:
            for j in range(mark, max(mark - 20, -1), -1):
                if hashes[j] in self.entries:
                    read = max(read, sizes[j])
                    break
        written = 0
        if marks and sizes[marks[-1]] >= max(self.min_tokens, 1):
            written = max(sizes[marks[-1]] - read, 0)
        for mark in marks:
            if sizes[mark] >= self.min_tokens:
                self.entries.add(hashes[mark])
        return total, read, written

    def openai(self, body: dict[str, Any]) -> tuple[int, int, int]:
        messages = body.get("messages") or []
        hashes, sizes = self._prefixes([(json.dumps([m.get("role"), m.get("content")]), count_tokens(str(m.get("content") or ""))) for m in messages])
        read = max((size for h, size in zip(hashes, sizes) if h in self.entries and size >= self.min_tokens), default=0)
        self.entries.update(hashes)
        return (sizes[-1] if sizes else 0), read, 0

    @staticmethod
    def _prefixes(items: list[tuple[str, int]]) -> tuple[list[str], list[int]]:
        running, total, hashes, sizes = hashlib.sha256(), 0, [], []
        for key, tokens in items:
            running.update(key.encode("utf-8", "surrogatepass") + b"\x00")
            total += tokens
            hashes.append(running.copy().hexdigest())
            sizes.append(total)
        return hashes, sizes
