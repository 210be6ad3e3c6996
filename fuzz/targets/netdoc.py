"""The directory meta-format tokenizer and its field helpers (`puretor.dir.netdoc`).

Input: ``flags(1) document``; flag bit 0 turns on ``annotations``.  Every item is
then pushed through the shared helpers (objects, integers, times, base64,
``k=v`` lists) the document parsers use.  Only ``DocumentError`` may escape.
Checked besides: item offsets point at the item's keyword in the input.
"""

from __future__ import annotations

import contextlib

from fuzz.harness import Target, check
from fuzz.seeds import all_documents
from fuzz.targets._docs import AUTHCERT_TOKENS, CONSENSUS_TOKENS, MICRODESC_TOKENS, NETDOC_TOKENS
from puretor.dir import netdoc
from puretor.errors import DocumentError


def _helpers(item: netdoc.Item) -> None:
    for call in (
        lambda: item.object_bytes(),
        lambda: netdoc.parse_int(item, item.arg(0), -(2**31), 2**31),
        lambda: netdoc.parse_datetime(item, item.arg(0), item.arg(1)),
        lambda: netdoc.b64decode_unpadded(item, item.arg(0)),
        lambda: netdoc.parse_kv_ints(item, item.args, -(2**31), 2**31),
        lambda: item.no_object(),
    ):
        with contextlib.suppress(DocumentError):
            call()


def one_input(data: bytes) -> None:
    if not data:
        return
    doc = data[1:]
    try:
        items = netdoc.tokenize(doc, annotations=bool(data[0] & 1), what="fuzz")
    except DocumentError:
        return
    for item in items:
        check(0 <= item.start < item.end <= len(doc), f"item offsets {item.start}..{item.end}")
        kw = item.keyword.encode("latin-1")
        check(doc[item.start : item.start + len(kw)] == kw, "item.start is not its keyword")
        repr(item)
        _helpers(item)
    with contextlib.suppress(DocumentError):
        netdoc.check_unique(items, {i.keyword for i in items}, "fuzz")


def seeds() -> list[bytes]:
    out = [b"\x01" + d for d in all_documents()]
    out += [
        b"\x00kw 1 2\nobj\n-----BEGIN X-----\nAAAA\n-----END X-----\n",
        b"\x00published 2025-06-15 12:00:00\nparams a=1 b=-2\nkey AAECAwQ\n",
    ]
    return out


TARGET = Target(
    name="netdoc",
    one_input=one_input,
    seeds=seeds,
    max_len=16384,
    dictionary=NETDOC_TOKENS + CONSENSUS_TOKENS + AUTHCERT_TOKENS + MICRODESC_TOKENS,
    doc=__doc__ or "",
)
