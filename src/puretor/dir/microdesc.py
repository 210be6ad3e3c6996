"""Microdescriptors (dir-spec §3.3; spec-map §5.5).

A response to ``/tor/micro/d/...`` (or C tor's ``cached-microdescs``) is a
concatenation of microdescriptors.  Each one starts at a line beginning with
``onion-key`` and runs up to the next such line or ``@`` annotation line (C
tor's find_start_of_next_microdesc); its digest is the SHA-256 of exactly
those bytes.  The RSA object after ``onion-key`` is optional since the TAP
removal; nothing here reads it.

Values shared by many relays (family sets, which all members of a family list
identically since consensus method 29, and port-policy summaries) are interned.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from puretor.dir.netdir import REJECT_ALL, PortPolicy
from puretor.dir.netdoc import Item, b64decode_unpadded, b64encode_unpadded, tokenize
from puretor.errors import DocumentError

__all__ = [
    "Microdesc",
    "normalise_family",
    "parse_microdesc",
    "parse_microdescs",
    "parse_port_policy",
    "split_microdescs",
]

# A line starting with "onion-key" (keyword alone, or followed by whitespace).
_START = re.compile(rb"^onion-key(?=[ \t\r\n]|$)", re.M)
_ANNOTATION = re.compile(rb"^@", re.M)
_HEX = frozenset("0123456789abcdefABCDEF")
_INTERN_LIMIT = 65536
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Microdesc:
    digest: bytes  # SHA-256 of the exact text: what the consensus `m` line names
    ntor_key: bytes  # 32-byte curve25519 onion key
    ed_id: bytes | None = None  # `id ed25519` (ignore if the consensus says NoEdConsensus)
    family: frozenset[str] = frozenset()
    family_ids: frozenset[str] = frozenset()
    policy: PortPolicy = REJECT_ALL  # `p`; missing means reject all
    policy6: PortPolicy = REJECT_ALL  # `p6`; missing means reject all
    raw: bytes = field(default=b"", repr=False, compare=False)  # exact text, for the cache


# ---------------------------------------------------------------------------
# Field parsers

_policy_cache: dict[str, PortPolicy] = {}
_family_cache: dict[tuple[str, ...], frozenset[str]] = {}
_strings: dict[str, str] = {}


def _intern(cache: dict[K, V], key: K, value: V) -> V:
    if len(cache) >= _INTERN_LIMIT:  # bounded: hostile input cannot grow it forever
        cache.clear()
    cache[key] = value
    return value


def parse_port_policy(item: Item, args: Sequence[str]) -> PortPolicy:
    """``accept|reject PortList`` (dir-spec §3.8.2), e.g. ``accept 80,443,6660-6669``."""
    if len(args) < 2 or args[0] not in ("accept", "reject"):
        raise item.error("expected 'accept|reject PORTLIST'")
    key = args[0] + " " + args[1]
    cached = _policy_cache.get(key)
    if cached is not None:
        return cached
    ranges: list[tuple[int, int]] = []
    for part in args[1].split(","):
        lo_s, dash, hi_s = part.partition("-")
        if (
            not lo_s.isascii()
            or not lo_s.isdigit()
            or (dash and (not hi_s.isascii() or not hi_s.isdigit()))
            or len(lo_s) > 5
            or len(hi_s) > 5
        ):
            raise item.error(f"bad port range {part[:30]!r}")
        lo = int(lo_s)
        hi = int(hi_s) if dash else lo
        if not 1 <= lo <= hi <= 65535:
            raise item.error(f"bad port range {part[:30]!r}")
        ranges.append((lo, hi))
    policy = PortPolicy(accept=args[0] == "accept", ranges=tuple(ranges))
    return _intern(_policy_cache, key, policy)


def _normalise_entry(entry: str) -> str | None:
    """dir-spec §3.3 family canonicalisation for one entry (None = drop it)."""
    hexpart = entry[1:] if entry.startswith("$") else entry
    # "$hexid=name" / "$hexid~name": keep only the hexid.
    for sep in ("=", "~"):
        if sep in hexpart:
            hexpart = hexpart.split(sep, 1)[0]
    if entry.startswith("$"):
        if len(hexpart) == 40 and _HEX.issuperset(hexpart):
            return "$" + hexpart.upper()
        return None  # "$hexid" that is not 40 hex digits: removed
    if len(hexpart) == 40 and _HEX.issuperset(hexpart):
        return "$" + hexpart.upper()  # C tor also accepts a hex id without '$'
    if 0 < len(entry) <= 19 and entry.isascii() and entry.isalnum():
        return entry.lower()  # a nickname
    return entry  # unknown form: unchanged (forward compatibility)


def normalise_family(args: Sequence[str]) -> frozenset[str]:
    """The members of a ``family`` line: ``$HEX`` upper-case, nicknames lower-case."""
    key = tuple(args)
    cached = _family_cache.get(key)
    if cached is not None:
        return cached
    members = set()
    for entry in key:
        norm = _normalise_entry(entry)
        if norm is not None:
            members.add(_strings.get(norm) or _intern(_strings, norm, norm))
    return _intern(_family_cache, key, frozenset(members))


# ---------------------------------------------------------------------------
# Documents


def split_microdescs(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the microdescriptors in a concatenation.

    Each range starts at an ``onion-key`` line and ends before the next
    ``onion-key`` line, the next ``@`` annotation line, or the end of data.
    Anything but annotations and blank lines before the first one is an error.
    """
    starts = [m.start() for m in _START.finditer(data)]
    head = data[: starts[0]] if starts else data
    for line in head.split(b"\n"):
        if line.strip() and not line.startswith(b"@"):
            raise DocumentError(
                f"microdescriptors: unexpected text before the first onion-key: {line[:40]!r}"
            )
    ranges: list[tuple[int, int]] = []
    for idx, start in enumerate(starts):
        end = starts[idx + 1] if idx + 1 < len(starts) else len(data)
        ann = _ANNOTATION.search(data, start, end)
        ranges.append((start, ann.start() if ann else end))
    return ranges


_SINGLE = frozenset({"onion-key", "ntor-onion-key", "family", "family-ids", "p", "p6"})


def parse_microdesc(data: bytes, start: int = 0, end: int | None = None) -> Microdesc:
    """Parse the microdescriptor in ``data[start:end]``."""
    if end is None:
        end = len(data)
    raw = data[start:end]
    digest = hashlib.sha256(raw).digest()
    what = f"microdescriptor {b64encode_unpadded(digest)}"
    items = tokenize(raw, what=what)
    if not items or items[0].keyword != "onion-key":
        raise DocumentError(f"{what}: does not start with 'onion-key'")
    seen: set[str] = set()
    ntor_key: bytes | None = None
    ed_id: bytes | None = None
    family: frozenset[str] = frozenset()
    family_ids: frozenset[str] = frozenset()
    policy = policy6 = REJECT_ALL
    id_types: set[str] = set()
    for item in items:
        kw = item.keyword
        if kw in _SINGLE:
            if kw in seen:
                raise item.error(f"duplicate {kw!r}")
            seen.add(kw)
        if kw == "ntor-onion-key":
            ntor_key = b64decode_unpadded(item, item.arg(0), 32)
        elif kw == "id":
            key_type = item.arg(0)
            if key_type in id_types:
                raise item.error(f"duplicate 'id {key_type}'")
            id_types.add(key_type)
            if key_type == "ed25519":
                ed_id = b64decode_unpadded(item, item.arg(1), 32)
        elif kw == "family":
            family = normalise_family(item.args)
        elif kw == "family-ids":
            # proposal 321: opaque family IDs; accept formats we do not know.
            family_ids = frozenset(item.args)
        elif kw == "p":
            policy = parse_port_policy(item, item.args)
        elif kw == "p6":
            policy6 = parse_port_policy(item, item.args)
    if ntor_key is None:
        raise DocumentError(f"{what}: missing 'ntor-onion-key'")
    return Microdesc(digest, ntor_key, ed_id, family, family_ids, policy, policy6, raw)


def parse_microdescs(data: bytes, errors: list[DocumentError] | None = None) -> list[Microdesc]:
    """Parse a concatenation of microdescriptors.

    If ``errors`` is None the first malformed one raises; otherwise malformed
    ones are skipped and their errors appended to ``errors``.
    """
    out: list[Microdesc] = []
    for start, end in split_microdescs(data):
        try:
            out.append(parse_microdesc(data, start, end))
        except DocumentError as e:
            if errors is None:
                raise
            errors.append(e)
    return out
