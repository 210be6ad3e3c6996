"""Microdesc consensus parsing (dir-spec §3.4.1, §3.9.2) on C tor output and synthetic documents."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import UTC, datetime

import pytest
from dir_testlib import data, small_network
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puretor.dir.consensus import parse_consensus
from puretor.dir.netdoc import b64encode_unpadded
from puretor.errors import DocumentError

MD1 = data("arti-dirmgr-mdconsensus1.txt")
TD2 = data("arti-testdata2-cached-microdesc-consensus")
LIVE = data("arti-live-consensus-microdesc")


def test_c_tor_035_consensus() -> None:
    c = parse_consensus(MD1)
    assert c.flavor == "microdesc" and c.consensus_method == 28
    assert c.valid_after == datetime(2020, 8, 7, 12, 42, 40, tzinfo=UTC)
    assert c.fresh_until == datetime(2020, 8, 7, 12, 43, 0, tzinfo=UTC)
    assert c.valid_until == datetime(2020, 8, 7, 12, 43, 20, tzinfo=UTC)
    assert c.voting_delay == (4, 4)
    assert c.client_versions == ()  # "client-versions " with nothing after it
    assert "NoEdConsensus" in c.known_flags
    assert c.required_relay_protocols["Link"] == frozenset({3, 4})
    assert [s.nickname for s in c.dir_sources] == ["test001a", "test000a", "test002a"]
    assert c.dir_sources[0].contact == "auth1@test.test"
    assert len(c.routers) == 6
    r0 = c.routers[0]
    assert r0.nickname == "test002a"
    assert b64encode_unpadded(r0.rsa_id) == "CjBXrykQQVeU2OpDAwnZrF9dUks"
    assert r0.md_digest is not None
    assert r0.md_digest.hex() == "73dabe0a0468f4f7a67810a18d11e36731bb1d2ec3634db459100609f3b3f535"
    assert (r0.address, r0.or_port, r0.dir_port) == ("127.0.0.1", 5002, 7002)
    assert r0.ipv6 == ("::1", 5002)
    assert r0.version == "Tor 0.3.5.11-dev"
    assert r0.protocols["LinkAuth"] == frozenset({1, 3})
    assert r0.protocols["Link"] == frozenset({1, 2, 3, 4, 5})
    assert (r0.bandwidth, r0.unmeasured) == (0, True)
    assert {"Authority", "Guard", "Running", "Valid"} <= r0.flags
    assert c.bandwidth_weights["Wgd"] == 3333 and len(c.bandwidth_weights) == 19
    assert [s.algorithm for s in c.signatures] == ["sha256"] * 3
    assert c.signatures[0].signing_key_digest.hex().upper() == (
        "F6ED4AA64D83CAEDE34E19693A7FCF331AAE8A6A"
    )
    # Interning: identical lines share one object.
    assert c.routers[1].protocols is c.routers[2].protocols


def test_signed_range_and_digests() -> None:
    c = parse_consensus(MD1)
    lo, hi = c.signed_range
    assert lo == 0
    first_sig = MD1.index(b"\ndirectory-signature ") + 1
    assert hi == first_sig + len(b"directory-signature ")
    assert MD1[hi - 1 : hi] == b" " and c.signed_bytes == MD1[:hi]
    assert c.digest_sha256 == hashlib.sha256(MD1[:hi]).digest()
    assert c.digest_sha1 == hashlib.sha1(MD1[:hi]).digest()
    assert c.digest_sha3_256 == hashlib.sha3_256(MD1[:hi]).digest()
    assert c.digest("sha256") == c.digest_sha256 and c.digest("md5") is None


def test_c_tor_049_consensus() -> None:
    c = parse_consensus(TD2)
    assert c.consensus_method == 35
    assert len(c.routers) == 7 and len(c.signatures) == 4
    # C tor >= 0.4.8 authorities no longer publish descriptor times: 2038-01-01.
    assert all(r.published == datetime(2038, 1, 1, tzinfo=UTC) for r in c.routers)
    assert c.routers[0].published is c.routers[1].published  # interned
    assert c.params == {"AuthDirMaxServersPerAddr": 0, "cc_alg": 2}
    assert c.routers[0].protocols["Relay"] == frozenset(range(2, 7))
    assert all(r.ipv6 is None for r in c.routers)


def test_live_network_sample() -> None:
    c = parse_consensus(LIVE)
    assert c.voting_delay == (300, 300)
    assert c.client_versions[0] == "0.4.9.4-rc"
    assert c.params["guard-n-primary-guards-to-use"] == 2
    assert c.shared_rand_current is not None and c.shared_rand_current.n_reveals == 9
    assert len(c.shared_rand_current.value) == 32
    assert len(c.dir_sources) == 9 and c.dir_sources[3].nickname == "tor26"
    assert {"BadExit", "MiddleOnly", "Sybil"} <= set(c.known_flags)
    lisdex = c.routers[0]
    assert lisdex.ipv6 == ("2a0a:4cc0:c1:2aac::1", 8443)
    assert lisdex.bandwidth == 53000
    assert c.bandwidth_weights["Wmg"] == 4040
    assert c.is_live(datetime(2026, 7, 27, 12, tzinfo=UTC).timestamp())
    assert not c.is_live(datetime(2026, 7, 27, 13, tzinfo=UTC).timestamp())
    assert c.is_reasonably_live(datetime(2026, 7, 28, 12, tzinfo=UTC).timestamp())
    assert not c.is_reasonably_live(datetime(2026, 7, 28, 13, tzinfo=UTC).timestamp())


def test_synthetic_consensus() -> None:
    net = small_network()
    c = parse_consensus(net.consensus)
    assert len(c.routers) == 300 and len(c.signatures) == 5
    assert [r.md_digest for r in c.routers] == list(net.md_digests)
    assert all(c.routers[i].rsa_id < c.routers[i + 1].rsa_id for i in range(299))


def _edit(doc: bytes, old: bytes, new: bytes) -> bytes:
    assert old in doc, old
    return doc.replace(old, new, 1)


R0 = b"r test002a CjBXrykQQVeU2OpDAwnZrF9dUks 2020-08-07 12:40:41 127.0.0.1 5002 7002\n"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b"network-status-version 3 microdesc", b"network-status-version 3", "not a microdesc"),
        (b"vote-status consensus", b"vote-status vote", "vote-status is 'vote'"),
        (b"valid-after 2020-08-07 12:42:40", b"valid-after 2020-08-07 12:44:40", "valid-after <"),
        (b"voting-delay 4 4", b"voting-delay 4", "needs at least 2"),
        (b"consensus-method 28\n", b"", "missing 'consensus-method'"),
        (b"known-flags", b"known-flags A\nknown-flags", "duplicate 'known-flags'"),
        (R0, R0.replace(b"127.0.0.1", b"127.0.0.256"), "line 24.*bad IPv4"),
        (R0, R0.replace(b"test002a", b"test-002a"), "bad nickname"),
        (R0, R0.replace(b" 7002", b""), "needs 7 arguments"),
        (R0, R0.replace(b"12:40:41", b"12:60:41"), "bad time"),
        (R0, R0.replace(b"CjBXr", b"CjB!r"), "bad base64"),
        (b"m c9q+CgRo9PemeBChjRHjZzG7HS7DY020WRAGCfOz9TU", b"m c9q+Cg", "expected 32 bytes"),
        (b"w Bandwidth=0", b"w Bandwidth=x", "bad integer"),
        (b"a [::1]:5002", b"a [::1]:5002\na [zz]:1", ""),  # only the first `a` is used
        (b"a [::1]:5002", b"a [:::1]:5002", "bad IPv6"),
        (b"\ns Authority Exit", b"\ns Authority Exit\ns Fast", "duplicate 's'"),
        (b"pr Cons=1-2", b"pr Cons=2-1", "bad protocol range"),
        (b"pr Cons=1-2", b"pr Cons=1-64", "out of range"),
        (b"pr Cons=1-2", b"pr Cons", "bad protocol entry"),
        (
            b"directory-footer\n",
            b"directory-footer\nr x AAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "out of place",
        ),
        (b"Wmm=10000", b"Wmm=1e4", "bad integer"),
        (
            b"directory-signature sha256 5696AB38CB3852AFA476A5C07B2D4788963D5567",
            b"directory-signature sha256 5696AB38CB3852AFA476A5C07B2D4788963D556",
            "40 hex",
        ),
    ],
)
def test_malformed(old: bytes, new: bytes, message: str) -> None:
    doc = _edit(MD1, old, new)
    if not message:
        parse_consensus(doc)
        return
    with pytest.raises(DocumentError, match=message):
        parse_consensus(doc)


def test_structure_errors() -> None:
    with pytest.raises(DocumentError, match="does not start"):
        parse_consensus(b"vote-status consensus\n" + MD1)
    with pytest.raises(DocumentError, match="no directory-signature"):
        parse_consensus(MD1[: MD1.index(b"directory-footer")])
    # Entries must be sorted by identity (C tor: "entries not sorted").
    entries = MD1.split(b"\nr ")
    swapped = b"\nr ".join([entries[0], entries[2], entries[1], *entries[3:]])
    with pytest.raises(DocumentError, match="not sorted"):
        parse_consensus(swapped)
    # Nothing but signatures after the first signature.
    with pytest.raises(DocumentError, match="only directory-signature"):
        parse_consensus(MD1 + b"extra-item\n")
    # A missing `s` line.
    with pytest.raises(DocumentError, match="no 's' line"):
        parse_consensus(
            _edit(MD1, b"s Authority Exit Fast Guard HSDir Running Stable V2Dir Valid\n", b"")
        )


def test_unknown_items_and_sha1_signatures_tolerated() -> None:
    doc = _edit(MD1, b"vote-status consensus\n", b"vote-status consensus\nx-future 1 2 3\n")
    doc = _edit(doc, b"w Bandwidth=0", b"x-new-item\nw Bandwidth=0 Future=9")
    doc = _edit(doc, b"directory-signature sha256 5696", b"directory-signature 5696")
    c = parse_consensus(doc)
    assert c.signatures[0].algorithm == "sha1"
    # Implied flags are added even if `s` omits them (consensus methods >= 4 / 24).
    doc2 = _edit(MD1, b"HSDir Running Stable V2Dir Valid\n", b"HSDir\n")
    assert {"Running", "Valid"} <= parse_consensus(doc2).routers[0].flags
    # An entry without `m` is kept (C tor only logs it); md_digest is None.
    doc3 = _edit(MD1, b"m c9q+CgRo9PemeBChjRHjZzG7HS7DY020WRAGCfOz9TU\n", b"")
    assert parse_consensus(doc3).routers[0].md_digest is None


def _mutate(draw: st.DataObject, doc: bytes) -> bytes:
    buf = bytearray(doc)
    for _ in range(draw.draw(st.integers(1, 4))):
        op = draw.draw(st.sampled_from(["flip", "delete", "insert", "truncate", "dupline"]))
        pos = draw.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw.draw(st.integers(0, 7))
        elif op == "delete":
            del buf[pos : pos + draw.draw(st.integers(1, 60))]
        elif op == "insert":
            buf[pos:pos] = draw.draw(
                st.one_of(
                    st.binary(min_size=1, max_size=20),
                    st.sampled_from(
                        [b"\n", b" ", b"=", b"-", b"r ", b"\ns \n", b"\nm x\n", b"\n-----BEGIN "]
                    ),
                )
            )
        elif op == "dupline":
            start = buf.rfind(b"\n", 0, pos) + 1
            end = buf.find(b"\n", pos)
            if end != -1:
                buf[start:start] = buf[start : end + 1]
        else:
            del buf[pos:]
    return bytes(buf)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_consensus(draw: st.DataObject) -> None:
    with contextlib.suppress(DocumentError):
        parse_consensus(_mutate(draw, MD1))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500))
def test_fuzz_random_bytes(data_: bytes) -> None:
    with contextlib.suppress(DocumentError):
        parse_consensus(b"network-status-version 3 microdesc\n" + data_)
