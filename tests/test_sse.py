"""Tests for gateway.sse: WHATWG §9.2 parsing rules, bounds, encoder bytes, and properties."""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sse import (
    Discarded,
    Event,
    IdUpdate,
    Item,
    Retry,
    SSEParser,
    encode_comment,
    encode_event,
    encode_id_only,
    encode_retry,
)

BOM = b"\xef\xbb\xbf"


def parse_chunks(chunks: Sequence[bytes], **kwargs: Any) -> list[Item]:
    parser = SSEParser(**kwargs)
    out: list[Item] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    out.extend(parser.close())
    return out


def parse(stream: bytes, **kwargs: Any) -> list[Item]:
    """Parse whole, byte by byte, and split in two at each position. All must agree."""
    whole = parse_chunks([stream], **kwargs)
    assert parse_chunks([stream[i : i + 1] for i in range(len(stream))], **kwargs) == whole
    # Every cut under 256 bytes; the few longer streams (5000-digit retry) use a stride.
    for cut in range(1, len(stream), 1 + len(stream) // 256):
        assert parse_chunks([stream[:cut], stream[cut:]], **kwargs) == whole, cut
    return whole


def ev(data: str, type: str = "message", id: str = "", id_field: bool = False) -> Event:
    return Event(data=data, type=type, id=id, id_field=id_field)


# ---------------------------------------------------------------------------
# Parser: table of byte-exact cases, each also checked under every 2-way split
# and byte-at-a-time feeding by parse().
# ---------------------------------------------------------------------------

PARSE_CASES: list[tuple[str, bytes, list[Item]]] = [
    # Byte order mark
    ("bom stripped", BOM + b"data: a\n\n", [ev("a")]),
    ("second bom joins field name", BOM + BOM + b"data: a\n\n", []),
    ("bom inside value kept", BOM + b"data: " + BOM + b"x\n\n", [ev("\ufeffx")]),
    ("bom after start kept", b"data: a\n\n" + BOM + b"data: b\n\n", [ev("a")]),
    ("bom alone then event", BOM + b"\ndata: a\n\n", [ev("a")]),
    # Line endings
    ("lf", b"data: a\ndata: b\n\n", [ev("a\nb")]),
    ("cr", b"data: a\rdata: b\r\r", [ev("a\nb")]),
    ("crlf", b"data: a\r\ndata: b\r\n\r\n", [ev("a\nb")]),
    ("mixed endings", b"data: a\r\n\ndata: b\r\rdata: c\n\r\n", [ev("a"), ev("b"), ev("c")]),
    ("lf cr is two breaks", b"data: a\n\rdata: b\n\n", [ev("a"), ev("b")]),
    ("cr cr is two breaks", b"data: a\r\rdata: b\n\n", [ev("a"), ev("b")]),
    # Comments
    ("comment ignored", b": hello\ndata: a\n:\n\n", [ev("a")]),
    ("comment-only block", b": x\n\n", []),
    ("colon-only line", b":\n\n", []),
    ("comment looks like field", b":data: a\n\n", []),
    # Field/value split
    ("one space stripped", b"data:  x\n\n", [ev(" x")]),
    ("no space", b"data:x\n\n", [ev("x")]),
    ("tab not stripped", b"data:\tx\n\n", [ev("\tx")]),
    ("trailing space kept", b"data: x \n\n", [ev("x ")]),
    ("split at first colon", b"data: a:b: c\n\n", [ev("a:b: c")]),
    ("no colon means empty value", b"data\n\n", [ev("")]),
    ("no colon twice", b"data\ndata\n\n", [ev("\n")]),
    ("unknown field ignored", b"foo: bar\ndata: a\n\n", [ev("a")]),
    ("unknown field only", b"foo: bar\n\n", []),
    ("field names case-sensitive", b"Data: a\n\n", []),
    ("space before colon", b"data : a\n\n", []),
    # data
    ("multi-line data", b"data: a\ndata: b\ndata: c\n\n", [ev("a\nb\nc")]),
    ("trailing newline removed once", b"data: a\ndata:\n\n", [ev("a\n")]),
    ("two empty data lines", b"data:\ndata:\n\n", [ev("\n")]),
    ("data alone", b"data:\n\n", [ev("")]),
    ("nul allowed in data", b"data: a\x00b\n\n", [ev("a\x00b")]),
    ("blank lines dispatch nothing", b"\n\n\ndata: a\n\n\n", [ev("a")]),
    # event
    ("type default", b"data: a\n\n", [ev("a", "message")]),
    ("type set", b"event: add\ndata: a\n\n", [ev("a", "add")]),
    ("empty type is message", b"event:\ndata: a\n\n", [ev("a", "message")]),
    ("last type wins", b"event: a\nevent: b\ndata: x\n\n", [ev("x", "b")]),
    ("type reset after event", b"event: add\ndata: a\n\ndata: b\n\n", [ev("a", "add"), ev("b")]),
    ("type reset after empty block", b"event: x\n\ndata: a\n\n", [ev("a")]),
    ("type before and after data", b"data: a\nevent: t\n\n", [ev("a", "t")]),
    # id
    ("id set", b"id: 1\ndata: a\n\n", [ev("a", id="1", id_field=True)]),
    (
        "id persists",
        b"id: 1\ndata: a\n\ndata: b\n\n",
        [ev("a", id="1", id_field=True), ev("b", id="1", id_field=False)],
    ),
    ("last id in block wins", b"id: 1\nid: 2\ndata: a\n\n", [ev("a", id="2", id_field=True)]),
    ("id with nul ignored", b"id: 1\x00\ndata: a\n\n", [ev("a", id="", id_field=False)]),
    (
        "id with nul keeps previous",
        b"id: 7\n\nid: a\x00b\ndata: x\n\n",
        [IdUpdate("7"), ev("x", id="7", id_field=False)],
    ),
    (
        "nul id does not undo earlier id",
        b"id: 3\nid: \x00\ndata: x\n\n",
        [ev("x", id="3", id_field=True)],
    ),
    (
        "empty id resets",
        b"id: 1\ndata: a\n\nid\ndata: b\n\n",
        [ev("a", id="1", id_field=True), ev("b", id="", id_field=True)],
    ),
    ("empty id-only block", b"id: 1\n\nid:\n\n", [IdUpdate("1"), IdUpdate("")]),
    ("id-only block", b"id: 5\n\n", [IdUpdate("5")]),
    ("id and type without data", b"id: 5\nevent: x\n\n", [IdUpdate("5")]),
    ("id spaces kept", b"id:  x \n\n", [IdUpdate(" x ")]),
    ("id unicode", "id: é€\ndata: a\n\n".encode(), [ev("a", id="é€", id_field=True)]),
    # retry
    ("retry", b"retry: 1000\n\n", [Retry(1000)]),
    ("retry zero", b"retry: 0\n\n", [Retry(0)]),
    ("retry leading zeros", b"retry: 007\n\n", [Retry(7)]),
    ("retry letters", b"retry: 10a\n\n", []),
    ("retry negative", b"retry: -1\n\n", []),
    ("retry empty", b"retry: \n\n", []),
    ("retry no colon", b"retry\n\n", []),
    ("retry decimal", b"retry: 1.5\n\n", []),
    ("retry plus", b"retry: +5\n\n", []),
    ("retry two spaces", b"retry:  5\n\n", []),
    ("retry trailing space", b"retry: 5 \n\n", []),
    ("retry arabic-indic digit", "retry: ١\n\n".encode(), []),
    ("retry superscript", "retry: ²\n\n".encode(), []),
    ("retry max u64", b"retry: 18446744073709551615\n\n", [Retry(2**64 - 1)]),
    ("retry over u64 ignored", b"retry: 18446744073709551616\n\n", []),
    ("retry 5000 digits ignored", b"retry: " + b"9" * 5000 + b"\n\n", []),
    ("retry many leading zeros", b"retry: " + b"0" * 5000 + b"42\n\n", [Retry(42)]),
    ("retry before event", b"retry: 5\ndata: a\n\n", [Retry(5), ev("a")]),
    ("retry after data same block", b"data: a\nretry: 5\n\n", [Retry(5), ev("a")]),
    ("last retry in block", b"retry: 1\nretry: 2\nretry: x\n\n", [Retry(2)]),
    (
        "retry in stream order",
        b"data: a\n\nretry: 9\nid: 4\n\ndata: b\n\n",
        [ev("a"), Retry(9), IdUpdate("4"), ev("b", id="4")],
    ),
    # Unterminated blocks are dropped by close()
    ("unterminated data dropped", b"data: a\n", []),
    ("unterminated line dropped", b"data: a", []),
    ("unterminated id dropped", b"data: a\n\nid: 5\ndata: b\n", [ev("a")]),
    ("unterminated retry dropped", b"retry: 5\n", []),
    # UTF-8
    ("multibyte", "data: €😀ü\n\n".encode(), [ev("€😀ü")]),
    ("invalid byte", b"data: \xff\n\n", [ev("\ufffd")]),
    ("truncated sequence", b"data: \xe2\x82\n\n", [ev("\ufffd")]),
    ("bad continuation", b"data: \xc3(\n\n", [ev("\ufffd(")]),
    ("encoded surrogate", b"data: \xed\xa0\x80\n\n", [ev("\ufffd\ufffd\ufffd")]),
    ("invalid in field name", b"d\xffata: a\n\n", []),
    ("truncated at end of stream", b"data: a\n\ndata: \xe2", [ev("a")]),
    ("invalid then cr", b"data: \xe2\rdata: b\n\n", [ev("\ufffd\nb")]),
]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [pytest.param(s, e, id=name) for name, s, e in PARSE_CASES],
)
def test_parse_table(stream: bytes, expected: list[Item]) -> None:
    assert parse(stream) == expected


def test_bom_split_across_feeds() -> None:
    assert parse_chunks([b"\xef", b"\xbb", b"\xbfdata: a\n\n"]) == [ev("a")]
    assert parse_chunks([b"\xef\xbb", b"", b"\xbf", BOM + b"data: a\n\n"]) == []


def test_cr_at_chunk_end_then_lf_is_one_break() -> None:
    # Counted as CR then LF, this would be "data: a", "" and then "data: b".
    assert parse_chunks([b"data: a\r", b"\ndata: b\n\n"]) == [ev("a\nb")]
    assert parse_chunks([b"data: a\r", b"\n\r", b"\n"]) == [ev("a")]


def test_cr_then_lf_across_empty_and_incomplete_chunks() -> None:
    # An empty feed, or one that decodes to nothing, must not forget the pending CR.
    assert parse_chunks([b"data: a\r", b"", b"\n", b"\n"]) == [ev("a")]
    assert parse_chunks([b"data: a\r", b"\xe2", b"\x82\xac\n\n"]) == [ev("a")]


def test_bom_alone_in_first_chunk() -> None:
    assert parse_chunks([BOM, b"\n", b"data: a\n\n"]) == [ev("a")]


def test_dispatch_happens_at_cr_without_waiting() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == [ev("a")]
    assert parser.feed(b"\ndata: b\n\n") == [ev("b")]


def test_multibyte_split_across_chunks() -> None:
    stream = "data: €😀\n\n".encode()
    chunks = [stream[:7], stream[7:8], stream[8:11], stream[11:]]
    assert b"".join(chunks) == stream
    assert parse_chunks(chunks) == [ev("€😀")]


def test_invalid_utf8_split_across_chunks() -> None:
    assert parse_chunks([b"data: \xe2\x82", b"A\n\n"]) == [ev("\ufffdA")]
    assert parse_chunks([b"data: \xf0", b"\x80\n\n"]) == [ev("\ufffd\ufffd")]


def test_items_returned_by_the_feed_that_completes_them() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 1\ndata: a\n") == []
    assert parser.feed(b"\n") == [ev("a", id="1", id_field=True)]
    assert parser.feed(b"retry: 3\n") == []
    assert parser.feed(b"\n") == [Retry(3)]


def test_last_event_id_initial_and_committed() -> None:
    parser = SSEParser(last_event_id="42")
    assert parser.last_event_id == "42"
    assert parser.feed(b"data: a\n\n") == [ev("a", id="42")]
    assert parser.feed(b"id: 43\ndata: b\n") == []
    # Not committed until the block is dispatched.
    assert parser.last_event_id == "42"
    assert parser.feed(b"\n") == [ev("b", id="43", id_field=True)]
    assert parser.last_event_id == "43"
    assert parser.feed(b"id:\n\n") == [IdUpdate("")]
    assert parser.last_event_id == ""


def test_close_drops_pending_id_and_keeps_committed_id() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 1\n\nid: 2\ndata: x\n") == [IdUpdate("1")]
    assert parser.close() == []
    assert parser.last_event_id == "1"


def test_close_resets_for_a_new_stream() -> None:
    parser = SSEParser()
    assert parser.feed(BOM + b"id: 1\n\nevent: t\ndata: half") == [IdUpdate("1")]
    assert parser.close() == []
    # The new stream gets its own BOM handling. Nothing of the half block leaks.
    assert parser.feed(BOM + b"data: b\n\n") == [ev("b", id="1")]
    assert parser.buffered_bytes == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_line_bytes": 0},
        {"max_event_bytes": 0},
        {"last_event_id": "a\nb"},
        {"last_event_id": "a\rb"},
        {"last_event_id": "a\x00b"},
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"max_line_bytes|max_event_bytes|last_event_id"):
        SSEParser(**kwargs)


# ---------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------

BOUND_CASES: list[tuple[str, bytes, dict[str, int], list[Item]]] = [
    (
        "line at limit accepted",
        b"data: " + b"x" * 10 + b"\n\n",
        {"max_line_bytes": 16},
        [ev("x" * 10)],
    ),
    (
        "line over limit discarded, next event parsed",
        b"data: " + b"x" * 11 + b"\n\ndata: ok\n\n",
        {"max_line_bytes": 16},
        [Discarded("line too long", 17), ev("ok")],
    ),
    (
        "limit counts utf-8 bytes",
        "data: €€€€\n\ndata: ok\n\n".encode(),
        {"max_line_bytes": 16},
        [Discarded("line too long", 17), ev("ok")],
    ),
    (
        "line ending not counted",
        b"data: " + b"x" * 10 + b"\r\n\r\n",
        {"max_line_bytes": 16},
        [ev("x" * 10)],
    ),
    (
        "whole block discarded, nothing applied",
        b"id: 1\n\n"
        b"id: 9\nretry: 5\nevent: t\ndata: a\ndata: " + b"x" * 40 + b"\n"
        b"data: after\nid: 10\nretry: 6\n\n"
        b"data: ok\n\n",
        {"max_line_bytes": 16},
        [IdUpdate("1"), Discarded("line too long", 17), ev("ok", id="1")],
    ),
    (
        "one discarded item per block",
        b"data: " + b"x" * 40 + b"\ndata: " + b"y" * 40 + b"\n\ndata: ok\n\n",
        {"max_line_bytes": 16},
        [Discarded("line too long", 17), ev("ok")],
    ),
    (
        "each oversized block reported",
        b"data: " + b"x" * 40 + b"\n\ndata: " + b"y" * 40 + b"\n\n",
        {"max_line_bytes": 16},
        [Discarded("line too long", 17), Discarded("line too long", 17)],
    ),
    (
        "long comment also discards",
        b": " + b"c" * 40 + b"\ndata: a\n\ndata: ok\n\n",
        {"max_line_bytes": 16},
        [Discarded("line too long", 17), ev("ok")],
    ),
    (
        "long line straight before blank line",
        b"data: a\n" + b"x" * 40 + b"\r\ndata: ok\r\n\r\n",
        {"max_line_bytes": 16},
        [Discarded("line too long", 17)],
    ),
    (
        "unterminated long line",
        b"data: ok\n\ndata: " + b"x" * 40,
        {"max_line_bytes": 16},
        [ev("ok"), Discarded("line too long", 17)],
    ),
    (
        "event at limit accepted",
        b"data: aaaa\ndata: bbbb\n\n",
        {"max_event_bytes": 10},
        [ev("aaaa\nbbbb")],
    ),
    (
        "event over limit discarded",
        b"data: aaaa\ndata: bbbb\ndata: cc\ndata: more\n\ndata: ok\n\n",
        {"max_event_bytes": 10},
        [Discarded("event too large", 13), ev("ok")],
    ),
    (
        "event size counts type and id",
        b"event: abcdef\nid: 12345\n\ndata: ok\n\n",
        {"max_event_bytes": 10},
        [Discarded("event too large", 11), ev("ok")],
    ),
    (
        "event size counts data line separators",
        b"data\n" * 11 + b"\ndata: ok\n\n",
        {"max_event_bytes": 10},
        [Discarded("event too large", 11), ev("ok")],
    ),
    (
        "overwritten type counted once",
        b"event: abcdef\n" * 5 + b"data: x\n\n",
        {"max_event_bytes": 10},
        [ev("x", "abcdef")],
    ),
    (
        "ignored nul id not counted",
        b"id: 0123456789\x00\ndata: x\n\n",
        {"max_event_bytes": 10},
        [ev("x")],
    ),
]


@pytest.mark.parametrize(
    ("stream", "kwargs", "expected"),
    [pytest.param(s, k, e, id=name) for name, s, k, e in BOUND_CASES],
)
def test_bounds_table(stream: bytes, kwargs: dict[str, int], expected: list[Item]) -> None:
    assert parse(stream, **kwargs) == expected


def test_discard_reported_once_for_line_spanning_many_chunks() -> None:
    parser = SSEParser(max_line_bytes=16)
    assert parser.feed(b"data: ") == []
    assert parser.feed(b"x" * 10) == []
    assert parser.feed(b"x") == [Discarded("line too long", 17)]
    for _ in range(10):
        assert parser.feed(b"x" * 100) == []
    assert parser.feed(b"\nid: 3\n") == []
    assert parser.feed(b"\n") == []
    assert parser.last_event_id == ""
    assert parser.feed(b"data: ok\n\n") == [ev("ok")]


def test_memory_bounded_for_endless_line() -> None:
    limit = 65536
    parser = SSEParser(max_line_bytes=limit)
    chunk = b"x" * 65536
    items: list[Item] = []
    peak = 0
    for _ in range(20 * 1024 * 1024 // len(chunk)):
        items.extend(parser.feed(chunk))
        peak = max(peak, parser.buffered_bytes)
    assert items == [Discarded("line too long", limit + 1)]
    assert peak <= 2 * limit
    # Nothing of the endless line is held once it is being discarded.
    assert parser.buffered_bytes == 0
    assert parser.feed(b"\n\ndata: ok\n\n") == [ev("ok")]


def test_memory_bounded_for_endless_block() -> None:
    line_limit, event_limit = 1024, 64 * 1024
    parser = SSEParser(max_line_bytes=line_limit, max_event_bytes=event_limit)
    chunk = b"data: " + b"y" * 500 + b"\n"
    items: list[Item] = []
    peak = 0
    for _ in range(4000):
        items.extend(parser.feed(chunk))
        peak = max(peak, parser.buffered_bytes)
    assert items == [Discarded("event too large", 131 * 501)]
    assert peak <= line_limit + event_limit
    assert parser.feed(b"\ndata: ok\n\n") == [ev("ok")]


def test_buffered_bytes_tracks_partial_line_and_block() -> None:
    parser = SSEParser()
    assert parser.buffered_bytes == 0
    parser.feed("data: €".encode())
    assert parser.buffered_bytes == 9
    parser.feed(b"\nevent: ab\nid: c")
    # "€" + "\n" = 4, "ab" = 2, partial "id: c" = 5
    assert parser.buffered_bytes == 11
    parser.feed(b"\n\n")
    assert parser.buffered_bytes == 0


# ---------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------

ENCODE_CASES: list[tuple[str, bytes, bytes]] = [
    ("plain", encode_event("hello"), b"data: hello\n\n"),
    ("empty data", encode_event(""), b"data: \n\n"),
    ("lf", encode_event("a\nb"), b"data: a\ndata: b\n\n"),
    ("crlf", encode_event("a\r\nb"), b"data: a\ndata: b\n\n"),
    ("cr", encode_event("a\rb"), b"data: a\ndata: b\n\n"),
    ("lf cr is two", encode_event("a\n\rb"), b"data: a\ndata: \ndata: b\n\n"),
    ("blank line in data", encode_event("a\r\n\r\nb"), b"data: a\ndata: \ndata: b\n\n"),
    ("trailing newline", encode_event("a\n"), b"data: a\ndata: \n\n"),
    ("only crlf", encode_event("\r\n"), b"data: \ndata: \n\n"),
    ("leading space kept", encode_event(" x"), b"data:  x\n\n"),
    ("unicode", encode_event("€😀", id="é"), "id: é\ndata: €😀\n\n".encode()),
    (
        "all fields in order",
        encode_event("x\ny", type="add", id="7", retry_ms=1500),
        b"id: 7\nevent: add\nretry: 1500\ndata: x\ndata: y\n\n",
    ),
    ("message type omitted", encode_event("x", type="message"), b"data: x\n\n"),
    ("empty type written", encode_event("x", type=""), b"event: \ndata: x\n\n"),
    ("empty id written", encode_event("x", id=""), b"id: \ndata: x\n\n"),
    ("retry zero", encode_event("x", retry_ms=0), b"retry: 0\ndata: x\n\n"),
    ("nul in data", encode_event("a\x00b"), b"data: a\x00b\n\n"),
    ("id only", encode_id_only("5"), b"id: 5\n\n"),
    ("id only empty", encode_id_only(""), b"id: \n\n"),
    ("comment empty", encode_comment(), b":\n\n"),
    ("comment", encode_comment("hi"), b": hi\n\n"),
    ("comment lines", encode_comment("a\nb"), b": a\n: b\n\n"),
    ("comment blank lines", encode_comment("a\r\n\rb"), b": a\n:\n: b\n\n"),
    ("retry", encode_retry(3000), b"retry: 3000\n\n"),
    ("retry zero only", encode_retry(0), b"retry: 0\n\n"),
]


@pytest.mark.parametrize(
    ("actual", "expected"),
    [pytest.param(a, e, id=name) for name, a, e in ENCODE_CASES],
)
def test_encode_table(actual: bytes, expected: bytes) -> None:
    assert actual == expected


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "\n", "a\x00b"])
def test_encode_event_rejects_bad_id(bad: str) -> None:
    with pytest.raises(ValueError, match="id"):
        encode_event("x", id=bad)


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "\r"])
def test_encode_event_rejects_bad_type(bad: str) -> None:
    with pytest.raises(ValueError, match="event type"):
        encode_event("x", type=bad)


def test_encode_rejects_lone_surrogates() -> None:
    # UnicodeEncodeError is a ValueError: no frame half-written with an unencodable char.
    with pytest.raises(ValueError, match="surrogates"):
        encode_event("a\ud800")
    with pytest.raises(ValueError, match="surrogates"):
        encode_id_only("\udfff")


def test_encode_event_allows_nul_in_type() -> None:
    assert encode_event("x", type="a\x00b") == b"event: a\x00b\ndata: x\n\n"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
def test_encode_id_only_rejects_bad_id(bad: str) -> None:
    with pytest.raises(ValueError, match="id"):
        encode_id_only(bad)


@pytest.mark.parametrize("bad", [-1, True, 1.5, "5"])
def test_encode_rejects_bad_retry(bad: object) -> None:
    with pytest.raises(ValueError, match="retry"):
        encode_event("x", retry_ms=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry"):
        encode_retry(bad)  # type: ignore[arg-type]


def test_encoded_control_frames_parse_back() -> None:
    stream = (
        encode_comment("keep\nalive")
        + encode_retry(250)
        + encode_id_only("9")
        + encode_event("a\r\nb", type="t", retry_ms=7)
        + encode_comment()
    )
    assert parse(stream) == [
        Retry(250),
        IdUpdate("9"),
        Retry(7),
        ev("a\nb", "t", id="9", id_field=False),
    ]


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------


def _reference_parse(stream: bytes) -> list[Item]:
    """Spec-literal reference without chunking or bounds.

    It decodes the whole stream at once, then walks the lines. It follows the
    module's documented choices: id and retry apply at dispatch, the last retry
    in a block wins, and retry values over 2**64 - 1 are ignored.
    """
    text = stream.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    *lines, _unterminated = re.split(r"\r\n|\r|\n", text)
    out: list[Item] = []
    last_id = ""
    data, type_, pending_id, retry = "", "", None, None
    for line in lines:
        if line == "":
            if retry is not None:
                out.append(Retry(retry))
            if pending_id is not None:
                last_id = pending_id
            if data:
                out.append(Event(data[:-1], type_ or "message", last_id, pending_id is not None))
            elif pending_id is not None:
                out.append(IdUpdate(last_id))
            data, type_, pending_id, retry = "", "", None, None
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            value = value.removeprefix(" ")
        else:
            name, value = line, ""
        if name == "data":
            data += value + "\n"
        elif name == "event":
            type_ = value
        elif name == "id" and "\x00" not in value:
            pending_id = value
        elif (
            name == "retry"
            and value
            and all(c in "0123456789" for c in value)
            and int(value.lstrip("0") or "0") < 2**64
        ):
            retry = int(value)
    return out


# Mostly well-formed blocks, so events, ids and retries actually get dispatched,
# mixed with near-misses and raw bytes that stress decoding and line splitting.
_FIELD_NAMES = ["data"] * 4 + ["event", "id", "id", "retry", "", "foo", "Data", "\ufeff", "data "]
_SEPARATORS = [": "] * 4 + [":", ":  ", ""]
_ENDINGS = ["\n"] * 3 + ["\r", "\r\n", "\r\n", ""]
_SPECIAL_BYTES = [BOM, b"\xe2\x82", b"\xac", b"\xff", b"\x00", b"\r", b"\n", b"\r\n", b":c", b" "]

_sse_line = st.builds(
    lambda name, sep, value, end: (name + sep + value + end).encode("utf-8"),
    st.sampled_from(_FIELD_NAMES),
    st.sampled_from(_SEPARATORS),
    st.one_of(
        st.text(max_size=12),
        st.from_regex(r"[0-9]{0,4}", fullmatch=True),
        st.sampled_from(["", " ", "x\x00", "\ufeff"]),
    ),
    st.sampled_from(_ENDINGS),
)
_noise = st.one_of(st.sampled_from(_SPECIAL_BYTES), st.binary(max_size=8))
_block = st.builds(
    lambda lines, blank: b"".join(lines) + blank,
    st.lists(st.one_of(_sse_line, _sse_line, _sse_line, _noise), max_size=5),
    st.sampled_from([b"\n", b"\n", b"\r\n", b"\r", b""]),
)
sse_streams = st.lists(_block, max_size=8).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return [stream[a:b] for a, b in pairwise([0, *cuts, len(stream)])]


# Each bound is its default half the time and tiny otherwise, so both discard paths fire.
_limits = st.fixed_dictionaries(
    {
        "max_line_bytes": st.just(65536) | st.integers(1, 64),
        "max_event_bytes": st.just(1048576) | st.integers(1, 64),
    }
)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), stream=sse_streams, limits=_limits)
def test_property_chunking_does_not_change_items(
    data: st.DataObject, stream: bytes, limits: dict[str, int]
) -> None:
    whole = parse_chunks([stream], **limits)
    chunks = data.draw(chunked(stream))
    assert b"".join(chunks) == stream
    parser = SSEParser(
        max_line_bytes=limits["max_line_bytes"], max_event_bytes=limits["max_event_bytes"]
    )
    bound = limits["max_line_bytes"] + limits["max_event_bytes"]
    items: list[Item] = []
    for chunk in chunks:
        items.extend(parser.feed(chunk))
        assert parser.buffered_bytes <= bound
    items.extend(parser.close())
    assert items == whole
    assert parse_chunks([stream[i : i + 1] for i in range(len(stream))], **limits) == whole


@settings(max_examples=300, deadline=None)
@given(stream=sse_streams)
def test_property_matches_reference_within_bounds(stream: bytes) -> None:
    assert parse_chunks([stream]) == _reference_parse(stream)


_no_crlf = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=10)
_no_crlf_nul = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=10
)
_data_text = st.lists(
    st.one_of(st.text(max_size=10), st.sampled_from(["\n", "\r", "\r\n", "\r\r", "\n\r"])),
    max_size=6,
).map("".join)
_events = st.lists(
    st.tuples(
        _data_text,
        st.none() | _no_crlf,
        st.none() | _no_crlf_nul,
        st.none() | st.integers(0, 2**40),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), events=_events)
def test_property_encode_parse_round_trip(
    data: st.DataObject, events: list[tuple[str, str | None, str | None, int | None]]
) -> None:
    stream = b"".join(encode_event(d, type=t, id=i, retry_ms=r) for d, t, i, r in events)
    expected: list[Item] = []
    last_id = ""
    for d, t, i, r in events:
        if r is not None:
            expected.append(Retry(r))
        if i is not None:
            last_id = i
        normalized = d.replace("\r\n", "\n").replace("\r", "\n")
        expected.append(Event(normalized, t or "message", last_id, i is not None))
    assert parse_chunks(data.draw(chunked(stream))) == expected
    assert parse_chunks([stream[i : i + 1] for i in range(len(stream))]) == expected
