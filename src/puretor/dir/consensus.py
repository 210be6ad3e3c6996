"""The microdesc-flavour consensus (dir-spec §3.4.1, §3.9.2).

`parse_consensus` turns the exact bytes served at
``/tor/status-vote/current/consensus-microdesc`` into an immutable `Consensus`.
It checks syntax only; `puretor.dir.verify.verify_consensus` checks the
signatures and the validity period.

The signed part runs from ``network-status-version`` through the space after
the first ``directory-signature`` keyword (dir-spec §3.4.1 "the signature
covers ..."); its SHA-1 / SHA-256 digests are what the authorities sign, and
its SHA3-256 names the consensus for diffs (dir-spec §4.5).

Speed matters here (the live consensus has ~8000 entries, 3 MB), so router
entries are parsed in one loop without per-line regexes, and values shared by
many relays (flag sets, protocol maps, versions, the 2038-01-01 "published"
time) are interned.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from puretor.dir.netdoc import (
    Item,
    b64decode_unpadded,
    check_unique,
    iter_items,
    parse_datetime,
    parse_int,
    parse_kv_ints,
)
from puretor.errors import DocumentError

__all__ = [
    "Consensus",
    "DirSource",
    "DirectorySignature",
    "RouterStatus",
    "SharedRandom",
    "parse_consensus",
    "parse_protocols",
]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# Flags implied by being listed (dir-spec §3.4.1: since consensus methods 4 and 24).
_IMPLIED_FLAGS = frozenset({"Running", "Valid"})
_SIG_KEYWORD = "directory-signature"
_FOOTER_START = frozenset({"directory-footer", _SIG_KEYWORD})


@dataclass(frozen=True, slots=True)
class SharedRandom:
    """``shared-rand-{previous,current}-value NumReveals Value`` (dir-spec §3.4.1)."""

    n_reveals: int
    value: bytes  # 32 bytes


@dataclass(frozen=True, slots=True)
class DirSource:
    """An authority that contributed a vote (``dir-source`` + ``contact`` + ``vote-digest``)."""

    nickname: str
    identity: bytes  # v3ident
    hostname: str
    address: str
    dir_port: int
    or_port: int
    contact: str | None = None
    vote_digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class DirectorySignature:
    """``directory-signature [algorithm] identity signing-key-digest`` + SIGNATURE object."""

    algorithm: str  # "sha1" (also when absent), "sha256", or something we ignore
    identity: bytes  # v3ident of the signing authority
    signing_key_digest: bytes  # SHA-1 of the DER signing key: which cert to use
    signature: bytes


@dataclass(frozen=True, slots=True)
class RouterStatus:
    """One router entry of a microdesc consensus."""

    nickname: str
    rsa_id: bytes  # 20 bytes
    published: datetime  # C tor >= 0.4.8 authorities write 2038-01-01 00:00:00
    address: str
    or_port: int
    dir_port: int
    ipv6: tuple[str, int] | None  # first IPv6 `a` line
    flags: frozenset[str]  # interned; always includes Running and Valid
    version: str | None
    protocols: dict[str, frozenset[int]]  # interned and shared: do not mutate
    bandwidth: int
    unmeasured: bool
    md_digest: bytes | None  # 32 bytes; None if the entry has no `m` line


@dataclass(frozen=True)
class Consensus:
    """A parsed (not yet verified) microdesc consensus."""

    flavor: str
    consensus_method: int
    valid_after: datetime
    fresh_until: datetime
    valid_until: datetime
    voting_delay: tuple[int, int]  # (VoteSeconds, DistSeconds)
    known_flags: tuple[str, ...]
    client_versions: tuple[str, ...]
    server_versions: tuple[str, ...]
    recommended_client_protocols: dict[str, frozenset[int]]
    required_client_protocols: dict[str, frozenset[int]]
    recommended_relay_protocols: dict[str, frozenset[int]]
    required_relay_protocols: dict[str, frozenset[int]]
    params: dict[str, int]
    shared_rand_previous: SharedRandom | None
    shared_rand_current: SharedRandom | None
    dir_sources: tuple[DirSource, ...]
    routers: tuple[RouterStatus, ...] = field(repr=False)
    bandwidth_weights: dict[str, int]
    signatures: tuple[DirectorySignature, ...] = field(repr=False)
    signed_range: tuple[int, int]  # byte offsets of the signed part in `raw`
    digest_sha1: bytes = field(repr=False)
    digest_sha256: bytes = field(repr=False)
    digest_sha3_256: bytes = field(repr=False)  # names the consensus for diffs (dir-spec §4.5)
    raw: bytes = field(repr=False, compare=False)

    @property
    def signed_bytes(self) -> bytes:
        lo, hi = self.signed_range
        return self.raw[lo:hi]

    def digest(self, algorithm: str) -> bytes | None:
        """The signed-part digest a ``directory-signature`` with ``algorithm`` covers."""
        if algorithm == "sha256":
            return self.digest_sha256
        if algorithm == "sha1":
            return self.digest_sha1
        return None

    @property
    def lifetime(self) -> tuple[float, float, float]:
        """(valid_after, fresh_until, valid_until) as unix times."""
        return (
            self.valid_after.timestamp(),
            self.fresh_until.timestamp(),
            self.valid_until.timestamp(),
        )

    def is_live(self, now: float) -> bool:
        """valid-after <= now < valid-until (dir-spec §1.4)."""
        va, _, vu = self.lifetime
        return va <= now < vu

    def is_reasonably_live(self, now: float, tolerance: float = 24 * 3600.0) -> bool:
        """Usable: not before valid-after, at most 24 h past valid-until (spec-map §5.6)."""
        va, _, vu = self.lifetime
        return va <= now < vu + tolerance


# ---------------------------------------------------------------------------
# Small field parsers


_PROTO_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_range_cache: dict[str, frozenset[int]] = {}


def _parse_ranges(item: Item, text: str) -> frozenset[int]:
    cached = _range_cache.get(text)
    if cached is not None:
        return cached
    versions: set[int] = set()
    if text:
        for part in text.split(","):
            lo_s, dash, hi_s = part.partition("-")
            lo = parse_int(item, lo_s, 0, 63)
            hi = parse_int(item, hi_s, 0, 63) if dash else lo
            if hi < lo:
                raise item.error(f"bad protocol range {part!r}")
            versions.update(range(lo, hi + 1))
    result = frozenset(versions)
    if len(_range_cache) < 4096:  # bounded: hostile input must not grow it forever
        _range_cache[text] = result
    return result


def parse_protocols(item: Item, args: Sequence[str]) -> dict[str, frozenset[int]]:
    """``Name=1-4,6 Name2=1`` (dir-spec §2.1.1 "proto"; each number is its own capability)."""
    out: dict[str, frozenset[int]] = {}
    for entry in args:
        name, eq, ranges = entry.partition("=")
        if not eq or not name or not _PROTO_NAME_CHARS.issuperset(name):
            raise item.error(f"bad protocol entry {entry[:40]!r}")
        if name in out:
            raise item.error(f"duplicate protocol {name!r}")
        out[name] = _parse_ranges(item, ranges)
    return out


def _valid_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(
        p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts
    )


def _parse_ipv6_orport(item: Item, text: str) -> tuple[str, int] | None:
    """``[addr]:port``; IPv4 `a` entries are ignored (dir-spec §3.3), so they give None."""
    if not text.startswith("["):
        host, _, port = text.rpartition(":")
        if _valid_ipv4(host) and port.isdigit():
            return None
        raise item.error(f"bad address {text[:60]!r}")
    host, sep, port = text[1:].partition("]:")
    if not sep or ":" not in host:
        raise item.error(f"bad IPv6 address {text[:60]!r}")
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise item.error(f"bad IPv6 address {text[:60]!r}") from None
    return (host, parse_int(item, port, 1, 65535))


def _is_nickname(text: str) -> bool:
    return 0 < len(text) <= 19 and text.isascii() and text.isalnum()


def _hex20(item: Item, text: str) -> bytes:
    if len(text) != 40:
        raise item.error(f"expected 40 hex digits, got {text[:50]!r}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise item.error(f"expected 40 hex digits, got {text[:50]!r}") from None


def _shared_random(item: Item) -> SharedRandom:
    n, value = item.need_args(2)[:2]
    return SharedRandom(parse_int(item, n, 0, INT32_MAX), b64decode_unpadded(item, value, 32))


# ---------------------------------------------------------------------------
# The document


_PREAMBLE_SINGLE = (
    "network-status-version",
    "vote-status",
    "consensus-method",
    "valid-after",
    "fresh-until",
    "valid-until",
    "voting-delay",
    "client-versions",
    "server-versions",
    "known-flags",
    "recommended-client-protocols",
    "recommended-relay-protocols",
    "required-client-protocols",
    "required-relay-protocols",
    "params",
    "shared-rand-previous-value",
    "shared-rand-current-value",
)
_PREAMBLE_REQUIRED = (
    "vote-status",
    "consensus-method",
    "valid-after",
    "fresh-until",
    "valid-until",
    "voting-delay",
    "known-flags",
)
_ROUTER_SINGLE = frozenset({"r", "s", "v", "pr", "w", "m"})


def parse_consensus(data: bytes) -> Consensus:
    """Parse a microdesc consensus; raise `DocumentError` naming the offending line."""
    # Items are consumed as they are produced: holding all ~60000 of a live
    # consensus at once would cost ~30 MiB.
    items = iter_items(data, what="consensus")
    first = next(items, None)
    if first is None or first.keyword != "network-status-version":
        raise DocumentError("consensus: does not start with 'network-status-version'")
    # Sections: preamble | router entries (from the first `r`) | footer.
    preamble = [first]
    boundary: Item | None = None
    for item in items:
        if item.keyword == "r" or item.keyword in _FOOTER_START:
            boundary = item
            break
        preamble.append(item)
    fields = _parse_preamble(preamble)
    routers: tuple[RouterStatus, ...] = ()
    if boundary is not None and boundary.keyword == "r":
        routers, boundary = _parse_routers(boundary, items)
    if boundary is None:
        raise DocumentError("consensus: no directory-signature (truncated?)")
    weights, signatures, first_sig = _parse_footer([boundary, *items])

    # Signed part (dir-spec §3.4.1): through the space after the first "directory-signature".
    lo = first.start
    hi = first_sig.start + len(_SIG_KEYWORD) + 1
    if data[hi - 1 : hi] not in (b" ", b"\t"):
        raise first_sig.error("expected whitespace after the keyword")
    signed = data[lo:hi]
    return Consensus(
        **fields,
        routers=routers,
        bandwidth_weights=weights,
        signatures=signatures,
        signed_range=(lo, hi),
        digest_sha1=hashlib.sha1(signed).digest(),
        digest_sha256=hashlib.sha256(signed).digest(),
        digest_sha3_256=hashlib.sha3_256(signed).digest(),
        raw=data,
    )


def _parse_preamble(items: list[Item]) -> dict[str, Any]:
    found = check_unique(items, _PREAMBLE_SINGLE, "consensus preamble")
    for kw in _PREAMBLE_REQUIRED:
        if kw not in found:
            raise DocumentError(f"consensus: missing {kw!r} in the preamble")

    version = found["network-status-version"]
    if version.args[:2] != ["3", "microdesc"]:
        raise version.error(f"not a microdesc consensus: {version.rest!r}")
    status = found["vote-status"]
    if status.arg(0) != "consensus":
        raise status.error(f"vote-status is {status.args[0]!r}, not 'consensus'")
    method_item = found["consensus-method"]
    method = parse_int(method_item, method_item.arg(0), 1, INT32_MAX)

    def when(kw: str) -> datetime:
        it = found[kw]
        return parse_datetime(it, *it.need_args(2)[:2])

    va, fu, vu = when("valid-after"), when("fresh-until"), when("valid-until")
    if not va < fu <= vu:
        raise found["fresh-until"].error("need valid-after < fresh-until <= valid-until")
    delay = found["voting-delay"]
    vote_s, dist_s = delay.need_args(2)[:2]
    voting_delay = (parse_int(delay, vote_s, 0, INT32_MAX), parse_int(delay, dist_s, 0, INT32_MAX))

    def versions(kw: str) -> tuple[str, ...]:
        it = found.get(kw)
        if it is None or not it.args:
            return ()
        return tuple(v for v in ",".join(it.args).split(",") if v)

    def protocols(kw: str) -> dict[str, frozenset[int]]:
        it = found.get(kw)
        return parse_protocols(it, it.args) if it is not None else {}

    params_item = found.get("params")
    params = (
        parse_kv_ints(params_item, params_item.args, INT32_MIN, INT32_MAX) if params_item else {}
    )
    srv_prev = found.get("shared-rand-previous-value")
    srv_cur = found.get("shared-rand-current-value")
    return {
        "flavor": "microdesc",
        "consensus_method": method,
        "valid_after": va,
        "fresh_until": fu,
        "valid_until": vu,
        "voting_delay": voting_delay,
        "known_flags": tuple(found["known-flags"].args),
        "client_versions": versions("client-versions"),
        "server_versions": versions("server-versions"),
        "recommended_client_protocols": protocols("recommended-client-protocols"),
        "required_client_protocols": protocols("required-client-protocols"),
        "recommended_relay_protocols": protocols("recommended-relay-protocols"),
        "required_relay_protocols": protocols("required-relay-protocols"),
        "params": params,
        "shared_rand_previous": _shared_random(srv_prev) if srv_prev else None,
        "shared_rand_current": _shared_random(srv_cur) if srv_cur else None,
        "dir_sources": _parse_dir_sources(items),
    }


def _parse_dir_sources(items: list[Item]) -> tuple[DirSource, ...]:
    sources: list[DirSource] = []
    current: dict[str, Any] | None = None
    for item in items:
        kw = item.keyword
        if kw == "dir-source":
            if current is not None:
                sources.append(DirSource(**current))
            nick, ident, host, addr, dport, oport = item.need_args(6)[:6]
            current = {
                "nickname": nick,
                "identity": _hex20(item, ident),
                "hostname": host,
                "address": addr,
                "dir_port": parse_int(item, dport, 0, 65535),
                "or_port": parse_int(item, oport, 0, 65535),
            }
        elif current is not None and kw == "contact":
            current["contact"] = item.rest
        elif current is not None and kw == "vote-digest":
            current["vote_digest"] = _hex20(item, item.arg(0))
    if current is not None:
        sources.append(DirSource(**current))
    return tuple(sources)


def _parse_routers(
    first: Item, items: Iterator[Item]
) -> tuple[tuple[RouterStatus, ...], Item | None]:
    """Router entries: each starts at an `r` item and runs to the next one.

    Returns the entries and the first footer item (None if the input ended).
    """
    routers: list[RouterStatus] = []
    flag_cache: dict[tuple[str, ...], frozenset[str]] = {}
    proto_cache: dict[tuple[str, ...], dict[str, frozenset[int]]] = {}
    version_cache: dict[tuple[str, ...], str] = {}
    time_cache: dict[tuple[str, str], datetime] = {}
    prev_id = b""
    nxt: Item | None = first
    while nxt is not None and nxt.keyword == "r":
        r = nxt
        nxt = None
        args = r.args
        if len(args) < 7:
            raise r.error(f"needs 7 arguments in a microdesc consensus, has {len(args)}")
        nickname = args[0]
        if not _is_nickname(nickname):
            raise r.error(f"bad nickname {nickname[:40]!r}")
        rsa_id = b64decode_unpadded(r, args[1], 20)
        if rsa_id <= prev_id:  # C tor: "entries not sorted by identity digest"
            raise r.error("router entries not sorted by identity (or duplicated)")
        prev_id = rsa_id
        tkey = (args[2], args[3])
        published = time_cache.get(tkey)
        if published is None:
            published = time_cache[tkey] = parse_datetime(r, args[2], args[3])
        address = args[4]
        if not _valid_ipv4(address):
            raise r.error(f"bad IPv4 address {address[:40]!r}")
        or_port = parse_int(r, args[5], 0, 65535)
        dir_port = parse_int(r, args[6], 0, 65535)

        ipv6: tuple[str, int] | None = None
        flags: frozenset[str] | None = None
        version: str | None = None
        protocols: dict[str, frozenset[int]] | None = None
        bandwidth = 0
        unmeasured = False
        md_digest: bytes | None = None
        seen: set[str] = set()
        for item in items:
            kw = item.keyword
            if kw == "r" or kw in _FOOTER_START:
                nxt = item
                break
            if kw in _ROUTER_SINGLE:
                if kw in seen:
                    raise item.error(f"duplicate {kw!r} in the entry for {nickname}")
                seen.add(kw)
            if kw == "s":
                key = tuple(item.args)
                flags = flag_cache.get(key)
                if flags is None:
                    flags = flag_cache[key] = frozenset(key) | _IMPLIED_FLAGS
            elif kw == "m":
                md_digest = b64decode_unpadded(item, item.arg(0), 32)
            elif kw == "w":
                for arg in item.args:
                    name, _, value = arg.partition("=")
                    if name == "Bandwidth":
                        bandwidth = parse_int(item, value, 0, 2**32 - 1)
                    elif name == "Unmeasured":
                        unmeasured = value == "1"
            elif kw == "pr":
                key = tuple(item.args)
                protocols = proto_cache.get(key)
                if protocols is None:
                    protocols = proto_cache[key] = parse_protocols(item, item.args)
            elif kw == "v":
                key = tuple(item.args)
                version = version_cache.get(key)
                if version is None:
                    version = version_cache[key] = " ".join(key)
            elif kw == "a" and ipv6 is None:
                ipv6 = _parse_ipv6_orport(item, item.arg(0))
        if flags is None:  # C tor: `s` is required (T1 in rtrstatus_token_table)
            raise r.error(f"entry for {nickname} has no 's' line")
        routers.append(
            RouterStatus(
                nickname,
                rsa_id,
                published,
                address,
                or_port,
                dir_port,
                ipv6,
                flags,
                version,
                protocols if protocols is not None else {},
                bandwidth,
                unmeasured,
                md_digest,
            )
        )
    return tuple(routers), nxt


def _parse_footer(
    items: list[Item],
) -> tuple[dict[str, int], tuple[DirectorySignature, ...], Item]:
    weights: dict[str, int] = {}
    signatures: list[DirectorySignature] = []
    first_sig: Item | None = None
    for idx, item in enumerate(items):
        kw = item.keyword
        if kw == "directory-footer":
            if idx != 0:
                raise item.error("misplaced directory-footer")
        elif kw == "bandwidth-weights":
            if first_sig is not None:
                raise item.error("bandwidth-weights after directory-signature")
            if weights:
                raise item.error("duplicate bandwidth-weights")
            weights = parse_kv_ints(item, item.args, INT32_MIN, INT32_MAX)
        elif kw == _SIG_KEYWORD:
            first_sig = first_sig or item
            args = item.args
            if len(args) == 2:
                alg, ident, skd = "sha1", args[0], args[1]
            elif len(args) >= 3:
                alg, ident, skd = args[0], args[1], args[2]
            else:
                raise item.error("needs [algorithm] identity signing-key-digest")
            signatures.append(
                DirectorySignature(
                    alg, _hex20(item, ident), _hex20(item, skd), item.object_bytes("SIGNATURE")
                )
            )
        elif first_sig is not None:
            # C tor: "Extraneous token after first directory-signature".
            raise item.error("only directory-signature items may follow the first one")
        elif kw == "r" or kw in _PREAMBLE_SINGLE:
            raise item.error("out of place in the consensus footer")
    if first_sig is None:
        raise DocumentError("consensus: no directory-signature")
    return weights, tuple(signatures), first_sig
