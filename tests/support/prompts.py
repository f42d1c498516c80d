"""Reading the prompts the fake upstream received, whatever their layout (plain strings or
text blocks with cache markers, the date context after the last question)."""

from __future__ import annotations

from typing import Any

DATE_CONTEXT = "Current date and time: "


def conversation(body: dict[str, Any]) -> list[dict[str, str]]:
    """The messages of a Messages or Chat Completions request as {"role", "content"} strings,
    without the date context and cache markers (OpenAI's system message left out)."""
    result = []
    for message in body["messages"]:
        if message["role"] == "system":
            continue
        content = message["content"]
        if isinstance(content, list):
            texts = [block["text"] for block in content if not block["text"].startswith(DATE_CONTEXT)]
            content = "\n\n".join(texts)
        else:
            content = content.split("\n\n" + DATE_CONTEXT)[0]
        result.append({"role": message["role"], "content": content})
    return result


def date_context(body: dict[str, Any]) -> str | None:
    """The date context of a request: the last text block of its last user message (Messages),
    or what follows the question in it (Chat Completions)."""
    last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(last, list):
        text = last[-1]["text"]
        return text if text.startswith(DATE_CONTEXT) else None
    _, found, rest = last.partition("\n\n" + DATE_CONTEXT)
    return DATE_CONTEXT + rest if found else None
