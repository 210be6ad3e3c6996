"""The directory-document meta-format shared by every document (dir-spec §1.2).

A document is a sequence of *items*; each item is a keyword line
(``keyword arg arg ...``) optionally followed by one PEM-style object::

    dir-key-crosscert
    -----BEGIN ID SIGNATURE-----
    base64...
    -----END ID SIGNATURE-----

`tokenize` makes one pass over the text with ``str.split("\\n")`` and keeps the
byte offset of every item, so signed ranges (dir-spec §1.3) can be hashed over
the exact received bytes.  The document is decoded as latin-1 so that a string
index *is* a byte offset; non-ASCII text (e.g. in ``contact`` lines) survives as
mojibake, which no parser here looks at.

Objects are decoded lazily (`Item.object_bytes`): a consensus has ~10 of them,
but 8000 microdescriptors may carry 8000 RSA onion keys that nobody reads.

Parsers ignore keywords they do not know (dir-spec §1.2); anything malformed
raises `DocumentError` naming the document and line.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime

from puretor.errors import DocumentError

__all__ = [
    "Item",
    "b64decode_unpadded",
    "b64encode_unpadded",
    "check_unique",
    "first",
    "iter_items",
    "parse_datetime",
    "parse_int",
    "parse_kv_ints",
    "tokenize",
]

_BEGIN = "-----BEGIN "
_END = "-----END "
_DASHES = "-----"
_KEYWORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


class Item:
    """One keyword line and its optional object, with offsets into the document text."""

    __slots__ = ("keyword", "args", "line", "start", "end", "obj_label", "_obj", "_text", "_what")

    keyword: str
    args: Sequence[str]
    line: int  # 1-based line number of the keyword line
    start: int  # offset of the keyword line's first character
    end: int  # offset just past the item (past the object's END line), i.e. next item's start
    obj_label: str | None  # e.g. "RSA PUBLIC KEY", "SIGNATURE", "ID SIGNATURE"

    def __init__(
        self,
        keyword: str,
        args: Sequence[str],
        line: int,
        start: int,
        end: int,
        obj_label: str | None,
        obj: tuple[int, int] | None,
        text: str,
        what: str,
    ) -> None:
        self.keyword = keyword
        self.args = args
        self.line = line
        self.start = start
        self.end = end
        self.obj_label = obj_label
        self._obj = obj
        self._text = text
        self._what = what

    def __repr__(self) -> str:
        obj = f" [{self.obj_label}]" if self.obj_label else ""
        return f"<Item {self._what} line {self.line}: {self.keyword} {' '.join(self.args)}{obj}>"

    def error(self, message: str) -> DocumentError:
        """A `DocumentError` that names this item's document, line and keyword."""
        return DocumentError(f"{self._what} line {self.line} ({self.keyword!r}): {message}")

    def arg(self, index: int) -> str:
        """Argument ``index``, or a clear error when the line is too short."""
        try:
            return self.args[index]
        except IndexError:
            raise self.error(f"needs at least {index + 1} argument(s)") from None

    def need_args(self, n: int) -> Sequence[str]:
        if len(self.args) < n:
            raise self.error(f"needs at least {n} argument(s), has {len(self.args)}")
        return self.args

    @property
    def rest(self) -> str:
        """Everything after the keyword, with runs of whitespace collapsed."""
        return " ".join(self.args)

    def object_bytes(self, *labels: str) -> bytes:
        """The decoded object; if ``labels`` are given the object's label must be one of them."""
        if self._obj is None or self.obj_label is None:
            raise self.error("missing object")
        if labels and self.obj_label not in labels:
            raise self.error(f"object is {self.obj_label!r}, expected {' or '.join(labels)}")
        lo, hi = self._obj
        body = self._text[lo:hi].replace("\n", "")
        try:
            return binascii.a2b_base64(body, strict_mode=True)
        except ValueError as e:  # binascii.Error, or non-ASCII text
            raise self.error(f"bad base64 in {self.obj_label} object: {e}") from None

    def no_object(self) -> None:
        if self._obj is not None:
            raise self.error("unexpected object")


def tokenize(
    data: bytes | str,
    *,
    start: int = 0,
    end: int | None = None,
    what: str = "document",
    annotations: bool = False,
) -> list[Item]:
    """Split ``data[start:end]`` into items (dir-spec §1.2).

    ``what`` names the document in error messages.  With ``annotations=True``
    lines starting with ``@`` (C tor's cache annotations) are skipped.
    Offsets in the returned items are absolute offsets into ``data``.
    """
    return list(iter_items(data, start=start, end=end, what=what, annotations=annotations))


def iter_items(
    data: bytes | str,
    *,
    start: int = 0,
    end: int | None = None,
    what: str = "document",
    annotations: bool = False,
) -> Iterator[Item]:
    """`tokenize` as a generator: a big document need not be held as items all at once."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    if end is None:
        end = len(text)
    lines = text[start:end].split("\n")
    # A final newline leaves an empty last element; a missing one is tolerated.
    if lines and lines[-1] == "":
        lines.pop()
    good_keywords: set[str] = set()
    pos = start
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        line_start = pos
        pos += len(line) + 1
        i += 1
        if not line:
            continue  # blank lines are allowed between items
        first_char = line[0]
        if first_char == "@" and annotations:
            continue
        if first_char in " \t":
            raise DocumentError(f"{what} line {i}: line starts with whitespace")
        parts = line.split()
        if not parts:
            if line.strip(" \t\r"):
                raise DocumentError(f"{what} line {i}: line of control characters")
            continue  # a blank line with a CR (CRLF line ending)
        keyword = parts[0]
        if first_char != keyword[0]:  # started with exotic whitespace (\v, \f, \x85...)
            raise DocumentError(f"{what} line {i}: malformed keyword line")
        if keyword not in good_keywords:
            if keyword[0] == "-" or not _KEYWORD_CHARS.issuperset(keyword):
                raise DocumentError(f"{what} line {i}: malformed keyword {keyword[:40]!r}")
            good_keywords.add(keyword)
        keyword_line = i
        obj_label: str | None = None
        obj: tuple[int, int] | None = None
        if i < n and lines[i].startswith(_BEGIN):
            begin = lines[i]
            if not begin.endswith(_DASHES) or len(begin) <= len(_BEGIN) + len(_DASHES):
                raise DocumentError(f"{what} line {i + 1}: malformed object BEGIN line")
            obj_label = begin[len(_BEGIN) : -len(_DASHES)]
            end_line = _END + obj_label + _DASHES
            pos += len(begin) + 1
            i += 1
            body_start = pos
            while True:
                if i >= n:
                    raise DocumentError(
                        f"{what} line {keyword_line}: object {obj_label!r} has no END line"
                    )
                body_line = lines[i]
                if body_line.startswith("-----"):
                    if body_line != end_line:
                        raise DocumentError(
                            f"{what} line {i + 1}: expected {end_line!r}, got {body_line[:60]!r}"
                        )
                    obj = (body_start, pos)
                    pos += len(body_line) + 1
                    i += 1
                    break
                pos += len(body_line) + 1
                i += 1
        yield Item(
            keyword, parts[1:], keyword_line, line_start, min(pos, end), obj_label, obj, text, what
        )


# ---------------------------------------------------------------------------
# Helpers shared by the document parsers.


def first(items: Iterable[Item], keyword: str) -> Item | None:
    for item in items:
        if item.keyword == keyword:
            return item
    return None


def check_unique(items: Iterable[Item], keywords: Iterable[str], what: str) -> dict[str, Item]:
    """Index ``items`` by keyword, refusing duplicates of any of ``keywords``."""
    wanted = set(keywords)
    found: dict[str, Item] = {}
    for item in items:
        kw = item.keyword
        if kw in wanted:
            if kw in found:
                raise item.error(f"duplicate {kw!r} in {what} (first at line {found[kw].line})")
            found[kw] = item
    return found


def parse_int(item: Item, text: str, lo: int, hi: int) -> int:
    """A decimal integer in [lo, hi] (no sign unless lo < 0, no '_' or spaces)."""
    body = text[1:] if text[:1] == "-" and lo < 0 else text
    if not body.isascii() or not body.isdigit() or len(body) > 20:
        raise item.error(f"bad integer {text[:30]!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise item.error(f"integer {value} out of range [{lo}, {hi}]")
    return value


def parse_kv_ints(item: Item, args: Sequence[str], lo: int, hi: int) -> dict[str, int]:
    """``k=v`` arguments with integer values (``params``, ``bandwidth-weights``)."""
    out: dict[str, int] = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq or not key:
            raise item.error(f"expected key=value, got {arg[:40]!r}")
        out[key] = parse_int(item, value, lo, hi)
    return out


def parse_datetime(item: Item, date: str, time: str) -> datetime:
    """``YYYY-MM-DD HH:MM:SS`` (two tokens) as an aware UTC datetime (dir-spec §1.2)."""
    if (
        len(date) != 10
        or len(time) != 8
        or date[4] != "-"
        or date[7] != "-"
        or time[2] != ":"
        or time[5] != ":"
    ):
        raise item.error(f"bad time {date[:12]!r} {time[:10]!r}")
    try:
        fields = (date[0:4], date[5:7], date[8:10], time[0:2], time[3:5], time[6:8])
        if not all(f.isascii() and f.isdigit() for f in fields):
            raise ValueError("non-digit")
        y, mo, d, h, mi, s = (int(f) for f in fields)
        return datetime(y, mo, d, h, mi, s, tzinfo=UTC)
    except ValueError:
        raise item.error(f"bad time {date!r} {time!r}") from None


_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def b64decode_unpadded(item: Item, text: str, length: int | None = None) -> bytes:
    """Base64 with or without ``=`` padding (identity digests, keys: spec-map §0.2)."""
    body = text.rstrip("=")
    if not _B64_CHARS.issuperset(body) or len(body) % 4 == 1:
        raise item.error(f"bad base64 {text[:60]!r}")
    try:
        raw = binascii.a2b_base64(body + "=" * (-len(body) % 4), strict_mode=True)
    except ValueError:
        raise item.error(f"bad base64 {text[:60]!r}") from None
    if length is not None and len(raw) != length:
        raise item.error(f"expected {length} bytes of base64, got {len(raw)}")
    return raw


def b64encode_unpadded(raw: bytes) -> str:
    """Base64 without ``=``, as C tor writes digests and keys."""
    return binascii.b2a_base64(raw, newline=False).decode("ascii").rstrip("=")
