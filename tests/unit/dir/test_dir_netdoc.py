"""The dir-spec §1.2 tokenizer and its helpers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puretor.dir.netdoc import (
    b64decode_unpadded,
    b64encode_unpadded,
    parse_datetime,
    parse_int,
    tokenize,
)
from puretor.errors import DocumentError

DOC = (
    b"first-item a b\tc\n"
    b"\n"
    b"with-object\n"
    b"-----BEGIN ID SIGNATURE-----\n"
    b"AAEC\n"
    b"AwQ=\n"
    b"-----END ID SIGNATURE-----\n"
    b"last\n"
)


def test_items_offsets_and_objects() -> None:
    items = tokenize(DOC, what="test doc")
    assert [i.keyword for i in items] == ["first-item", "with-object", "last"]
    first, obj, last = items
    assert list(first.args) == ["a", "b", "c"]  # tabs separate arguments too
    assert (first.line, obj.line, last.line) == (1, 3, 8)
    # Offsets are exact byte offsets; `end` is the next item's start.
    assert DOC[first.start : first.end] == b"first-item a b\tc\n"
    assert DOC[obj.start : obj.end].endswith(b"-----END ID SIGNATURE-----\n")
    assert last.start == obj.end and last.end == len(DOC)
    assert obj.obj_label == "ID SIGNATURE"
    assert obj.object_bytes() == bytes(range(5))
    assert obj.object_bytes("SIGNATURE", "ID SIGNATURE") == bytes(range(5))
    with pytest.raises(DocumentError, match="expected RSA PUBLIC KEY"):
        obj.object_bytes("RSA PUBLIC KEY")
    with pytest.raises(DocumentError, match="missing object"):
        last.object_bytes()


def test_start_end_window_and_missing_final_newline() -> None:
    data = b"junk\nkw 1\nkw2"
    items = tokenize(data, start=5)
    assert [(i.keyword, i.start, i.end) for i in items] == [("kw", 5, 10), ("kw2", 10, 13)]


def test_annotations_only_when_allowed() -> None:
    assert [i.keyword for i in tokenize(b"@last-listed x\nkw\n", annotations=True)] == ["kw"]
    with pytest.raises(DocumentError, match="line 1"):
        tokenize(b"@last-listed x\nkw\n")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"ok\n bad leading space\n", "line 2: line starts with whitespace"),
        (b"ok\n-bad\n", "line 2: malformed keyword"),
        (b"ok\nb\xe4d\n", "line 2: malformed keyword"),
        (b"kw\n-----BEGIN X-----\nAAAA\n", "line 1: object 'X' has no END line"),
        (b"kw\n-----BEGIN X-----\nAAAA\n-----END Y-----\n", "line 4: expected"),
        (b"kw\n-----BEGIN X----\nAAAA\n-----END X-----\n", "line 2: malformed object BEGIN"),
        (b"-----BEGIN X-----\nAAAA\n-----END X-----\n", "line 1: malformed keyword"),
    ],
)
def test_malformed_lines_name_the_line(doc: bytes, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        tokenize(doc, what="doc")


def test_bad_object_base64_is_reported_on_access() -> None:
    item = tokenize(b"kw\n-----BEGIN X-----\nA!AA\n-----END X-----\n")[0]
    with pytest.raises(DocumentError, match="bad base64"):
        item.object_bytes()


def test_helpers() -> None:
    item = tokenize(b"kw 1 2\n")[0]
    assert item.arg(1) == "2"
    with pytest.raises(DocumentError, match="needs at least 3"):
        item.arg(2)
    assert parse_int(item, "65535", 0, 65535) == 65535
    assert parse_int(item, "-5", -10, 10) == -5
    for bad in ("", "+1", "1_0", " 1", "70000", "-1", "١"):
        with pytest.raises(DocumentError):
            parse_int(item, bad, 0, 65535)
    when = parse_datetime(item, "2038-01-01", "00:00:00")
    assert when.year == 2038 and when.utcoffset() is not None
    for date, time in (("2020-13-01", "00:00:00"), ("2020-01-01", "24:00:00"), ("20-01-01", "x")):
        with pytest.raises(DocumentError):
            parse_datetime(item, date, time)
    raw = bytes(range(20))
    text = b64encode_unpadded(raw)
    assert "=" not in text
    assert b64decode_unpadded(item, text, 20) == raw
    assert b64decode_unpadded(item, text + "=", 20) == raw  # padded input is accepted too
    for bad in ("A", "AA!A", "AAAA"):
        with pytest.raises(DocumentError):
            b64decode_unpadded(item, bad, 20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        items = tokenize(data)
    except DocumentError:
        return
    for item in items:
        assert 0 <= item.start < item.end <= len(data)
        if item.obj_label is not None:
            with contextlib.suppress(DocumentError):
                item.object_bytes()


_LINE = st.sampled_from(
    [
        "kw a b",
        "other-kw",
        "",
        " lead",
        "-----BEGIN SIGNATURE-----",
        "-----END SIGNATURE-----",
        "-----BEGIN X-----",
        "AAAA",
        "@ann",
        "a\tb",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=12))
def test_fuzz_line_soup(lines: list[str]) -> None:
    data = "\n".join(lines).encode()
    try:
        items = tokenize(data, annotations=True)
    except DocumentError:
        return
    for item in items:
        if item.obj_label is not None:
            with contextlib.suppress(DocumentError):
                item.object_bytes()
