"""The hot path's JSON codec (providers/codec.py): orjson where it is a drop-in for `json`, and
`json` itself for what orjson refuses, so that nothing a client or a model sends is read or
written differently."""

from __future__ import annotations

import json

import pytest

from providers.codec import dumps, loads
from providers.sse import repaired

_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def test_text_is_written_byte_for_byte_as_json_writes_it():
    every_char = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert dumps(every_char) == _json(every_char).encode()
    event = {"type": "content", "text": 'say "hi"\n\t\u2028</script>\u00e9\U0001f600', "n": [1, 2.5, None, True]}
    assert dumps(event) == _json(event).encode()


@pytest.mark.parametrize("value", [{1: "int key"}, {"big": 10**30}])
def test_what_orjson_refuses_to_write_is_written_as_json_writes_it(value):
    assert dumps(value) == _json(value).encode()


def test_a_lone_surrogate_is_refused_on_the_way_out_as_before():
    with pytest.raises(UnicodeEncodeError):
        dumps({"text": "half \ud800 a pair"})


@pytest.mark.parametrize(
    "raw, value",
    [
        (b'{"text":"\\ud83d\\ude00"}', {"text": "\U0001f600"}),
        (b'{"text":"half \\ud800 a pair"}', {"text": "half \ud800 a pair"}),  # json's reading: the caller repairs it
        (b'{"n":1.5e3,"m":-7,"s":"\\u00e9\\n"}', {"n": 1500.0, "m": -7, "s": "\u00e9\n"}),
    ],
)
def test_documents_are_read_as_json_reads_them(raw, value):
    assert loads(raw) == json.loads(raw) == value


def test_the_documented_differences_from_json():
    assert loads(b"123456789012345678901234567890") == 1.2345678901234568e29  # json: the exact int
    assert dumps(float("nan")) == b"null"  # json: NaN, which is not JSON


def test_a_lone_surrogate_read_is_repaired_by_the_caller():
    assert repaired(loads(b'"a\\udc00b"')) == "a\ufffdb"


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a":1,}', b"\xff\xfe", b"[" * 100_000])
def test_what_is_not_json_fails_as_json_fails(raw):
    with pytest.raises((ValueError, RecursionError)) as ours:
        loads(raw)
    with pytest.raises((ValueError, RecursionError)) as theirs:
        json.loads(raw)
    assert type(ours.value) is type(theirs.value)
