"""Microdescriptors (`puretor.dir.microdesc.parse_microdescs`).

Input: a concatenation of microdescriptors, parsed both strictly (the first bad
one raises) and leniently (bad ones are collected).  Only ``DocumentError`` may
escape.  Checked besides: each descriptor's digest is SHA-256 of its raw text,
the split ranges cover the input in order, the lenient parse keeps at least as
many as the strict one, and port policies are well formed.
"""

from __future__ import annotations

import hashlib

from fuzz.harness import Target, check
from fuzz.seeds import documents
from fuzz.targets._docs import MICRODESC_TOKENS, NETDOC_TOKENS
from puretor.dir import microdesc
from puretor.errors import DocumentError


def one_input(data: bytes) -> None:
    try:
        ranges = microdesc.split_microdescs(data)
    except DocumentError:
        return
    last = 0
    for start, end in ranges:
        check(last <= start <= end <= len(data), f"range {start}..{end} after {last}")
        last = end
    errors: list[DocumentError] = []
    lenient = microdesc.parse_microdescs(data, errors)
    check(len(lenient) + len(errors) == len(ranges), "lenient parse lost descriptors")
    for md in lenient:
        check(md.digest == hashlib.sha256(md.raw).digest(), "digest is not SHA-256 of raw")
        check(len(md.ntor_key) == 32, "ntor key length")
        for policy in (md.policy, md.policy6):
            check(all(1 <= lo <= hi <= 65535 for lo, hi in policy.ranges), "port range")
    try:
        strict = microdesc.parse_microdescs(data)
    except DocumentError:
        check(bool(errors), "strict parse failed where the lenient one had no errors")
        return
    check(len(strict) == len(lenient), "strict and lenient parses differ")


def seeds() -> list[bytes]:
    return documents("microdesc")


TARGET = Target(
    name="microdescs",
    one_input=one_input,
    seeds=seeds,
    max_len=16384,
    dictionary=NETDOC_TOKENS + MICRODESC_TOKENS,
    doc=__doc__ or "",
)
