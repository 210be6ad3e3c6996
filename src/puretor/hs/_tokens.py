"""A small tokenizer for the directory meta-format as used by HS descriptors (dir-spec §1.2).

Items are ``Keyword [args...]`` lines, each optionally followed by one object
``-----BEGIN <type>-----`` … ``-----END <type>-----`` holding base64.  Blank
lines are skipped (C tor's tokenizer eats leading whitespace).  Errors are
plain ``ValueError``; the descriptor module turns them into ``OnionError``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

__all__ = ["Item", "b64decode_loose", "tokenize"]

_BEGIN, _END, _DASHES = "-----BEGIN ", "-----END ", "-----"


@dataclass(frozen=True, slots=True)
class Item:
    keyword: str
    args: tuple[str, ...]
    obj_type: str | None = None
    obj: bytes | None = None


def b64decode_loose(text: str) -> bytes:
    """Base64 with or without ``=`` padding (dir documents usually omit it)."""
    text = text.strip()
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"bad base64 {text[:20]!r}") from None


def tokenize(text: str) -> list[Item]:
    lines = text.split("\n")
    items: list[Item] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        words = line.split()
        if not words:
            continue
        if line.startswith(_DASHES):
            raise ValueError(f"object without a keyword: {line[:40]!r}")
        obj_type: str | None = None
        obj: bytes | None = None
        if i < len(lines) and lines[i].startswith(_BEGIN):
            begin = lines[i].rstrip()
            if not begin.endswith(_DASHES) or len(begin) <= len(_BEGIN) + len(_DASHES):
                raise ValueError(f"malformed object header {begin[:40]!r}")
            obj_type = begin[len(_BEGIN) : -len(_DASHES)]
            end_line = f"{_END}{obj_type}{_DASHES}"
            body: list[str] = []
            i += 1
            while True:
                if i >= len(lines):
                    raise ValueError(f"{words[0]}: object {obj_type!r} is not terminated")
                current = lines[i].rstrip()
                i += 1
                if current == end_line:
                    break
                if current.startswith(_DASHES):
                    raise ValueError(f"{words[0]}: mismatched object end {current[:40]!r}")
                body.append(current)
            obj = b64decode_loose("".join(body))
        items.append(Item(words[0], tuple(words[1:]), obj_type, obj))
    return items
