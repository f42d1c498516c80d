"""The upstream SSE decoder on the hot path: every framing the vendors (and proxies) produce."""

from __future__ import annotations

import pytest

from providers.sse import SSEDecoder

STREAM = (
    b'event: message_start\ndata: {"type":"message_start"}\n\n'
    b"event: ping\ndata: {\"type\": \"ping\"}\n\n"
    b": a comment line\n\n"
    b'data: {"a":1}\n\n'
    b"data:no-space\n\n"
    b"data: line one\ndata: line two\n\n"
    b"id: 7\nevent: x\ndata: with id\nretry: 10\n\n"
    b"event: x\ndata:first\ndata: second\n\n"
    b"event: x\nid: 8\ndata: after an id\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    b'{"type":"message_start"}',
    b'{"type": "ping"}',
    b'{"a":1}',
    b"no-space",
    b"line one\nline two",
    b"with id",
    b"first\nsecond",
    b"after an id",
    b"[DONE]",
]


def test_whole_stream_at_once():
    assert SSEDecoder().feed(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 64])
def test_any_chunking_gives_the_same_events(size):
    decoder = SSEDecoder()
    out = []
    for i in range(0, len(STREAM), size):
        out += decoder.feed(STREAM[i : i + size])
    assert out == EXPECTED
    assert not decoder.pending


def test_crlf_and_cr_line_endings():
    crlf = STREAM.replace(b"\n", b"\r\n")
    assert SSEDecoder().feed(crlf) == EXPECTED
    decoder = SSEDecoder()
    out = []
    for i in range(0, len(crlf), 5):  # a \r\n pair split across chunks
        out += decoder.feed(crlf[i : i + 5])
    assert out == EXPECTED


def test_crlf_split_between_chunks_inside_an_event():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: line one\r") == []
    assert decoder.feed(b"\ndata: line two\r\n\r") == []
    assert decoder.feed(b"\n") == [b"line one\nline two"]


def test_unfinished_event_is_pending():
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"half"') == []
    assert decoder.pending
    assert decoder.feed(b":true}\n\n") == [b'{"half":true}']
