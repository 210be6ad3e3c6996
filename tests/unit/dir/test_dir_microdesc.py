"""Microdescriptors (dir-spec §3.3): splitting, digests, family canonicalisation, policies."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from dir_testlib import data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puretor.dir.consensus import parse_consensus
from puretor.dir.microdesc import (
    normalise_family,
    parse_microdesc,
    parse_microdescs,
    split_microdescs,
)
from puretor.dir.netdir import REJECT_ALL, PortPolicy
from puretor.errors import DocumentError

NTOR = "ntor-onion-key UTHMgMUssIcB0r5wY9b+3sfmFW9ii/Kktx/nMrZnaz8\n"


def md(*lines: str, onion_key: bool = False) -> bytes:
    head = "onion-key\n"
    if onion_key:
        head += "-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n"
    return (head + NTOR + "".join(line + "\n" for line in lines)).encode()


def test_c_tor_microdescs_match_their_consensus() -> None:
    # C tor 0.4.9.6 test network: every md digest is listed in the consensus.
    consensus = parse_consensus(data("arti-testdata2-cached-microdesc-consensus"))
    mds = parse_microdescs(data("arti-testdata2-cached-microdescs.new"))
    listed = {r.md_digest for r in consensus.routers}
    assert len(mds) == 7 and {m.digest for m in mds} == listed
    exit_md = [m for m in mds if m.policy.accept]
    assert len(exit_md) == 2 and exit_md[0].policy == PortPolicy(True, ((1, 65535),))
    assert all(m.ed_id is not None and len(m.ed_id) == 32 for m in mds)


def test_digest_is_over_exact_bytes() -> None:
    text = data("arti-dirmgr-microdescs.txt")
    consensus = parse_consensus(data("arti-dirmgr-mdconsensus2.txt"))
    mds = parse_microdescs(text)
    assert [m.digest for m in mds] == [r.md_digest for r in consensus.routers]
    ranges = split_microdescs(text)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(text)
    for (start, end), m in zip(ranges, mds, strict=True):
        assert m.digest == hashlib.sha256(text[start:end]).digest()
        assert m.raw == text[start:end]
    last = mds[-1]
    assert last.ntor_key.hex().startswith("49094f88")
    assert last.policy.allows(80) and last.policy6 is REJECT_ALL


def test_onion_key_object_is_optional() -> None:
    a, b = parse_microdescs(md("id ed25519 " + "A" * 43) + md(onion_key=True))
    assert a.ed_id == bytes(32) and b.ed_id is None


def test_annotations_are_outside_the_digest() -> None:
    body = md("p accept 80")
    blob = b"@last-listed 2025-01-01 00:00:00\n" + body + b"@annotation\n" + body
    mds = parse_microdescs(blob)
    assert [m.digest for m in mds] == [hashlib.sha256(body).digest()] * 2
    with pytest.raises(DocumentError, match="before the first onion-key"):
        split_microdescs(b"garbage\n" + body)
    assert split_microdescs(b"") == []


def test_family_canonicalisation() -> None:
    hex_a = "a" * 40
    family = normalise_family(
        [
            f"${hex_a}",
            f"${'B' * 40}=Nick",
            f"$C{'c' * 39}~other",
            "MyNick",
            "$DEAD",
            "x.y",
            "d" * 40,
        ]
    )
    assert family == frozenset(
        {"$" + "A" * 40, "$" + "B" * 40, "$" + "C" * 40, "mynick", "x.y", "$" + "D" * 40}
    )
    m = parse_microdesc(md(f"family ${hex_a} Nick", "family-ids ed25519:abc future:xyz"))
    assert m.family == frozenset({"$" + "A" * 40, "nick"})
    assert m.family_ids == frozenset({"ed25519:abc", "future:xyz"})
    # Interned: every member of a family lists the same line.
    assert normalise_family([f"${hex_a}", "Nick"]) is normalise_family([f"${hex_a}", "Nick"])


def test_port_policies() -> None:
    m = parse_microdesc(md("p reject 25,119,135-139", "p6 accept 80,443"))
    assert m.policy == PortPolicy(False, ((25, 25), (119, 119), (135, 139)))
    assert m.policy.allows(80) and not m.policy.allows(137)
    assert m.policy6.allows(443) and not m.policy6.allows(22)
    assert parse_microdesc(md()).policy is REJECT_ALL  # missing `p` means reject all
    for bad in ("p accept 0", "p accept 1-", "p accept 80-79", "p deny 80", "p accept 70000"):
        with pytest.raises(DocumentError, match="line 3"):
            parse_microdesc(md(bad))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["ntor-onion-key AAAA"], "duplicate 'ntor-onion-key'"),
        (["p accept 80", "p accept 81"], "duplicate 'p'"),
        (["id ed25519 AAAA", "id ed25519 AAAA"], "expected 32 bytes|duplicate"),
        (["id ed25519 " + "A" * 43, "id ed25519 " + "A" * 43], "duplicate 'id ed25519'"),
        (["family a", "family b"], "duplicate 'family'"),
    ],
)
def test_malformed(lines: list[str], message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        parse_microdesc(md(*lines))


def test_missing_ntor_key_and_error_collection() -> None:
    bad = b"onion-key\nid ed25519 " + b"A" * 43 + b"\n"
    with pytest.raises(DocumentError, match="missing 'ntor-onion-key'"):
        parse_microdescs(bad)
    errors: list[DocumentError] = []
    good = parse_microdescs(md() + bad + md("p accept 1-65535"), errors)
    assert len(good) == 2 and len(errors) == 1
    # Unknown items and `id` key types are ignored.
    parse_microdesc(md("id rsa1024 AAAA", "id x25519 whatever", "a [::1]:9001", "x-new 1"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutations(draw: st.DataObject) -> None:
    buf = bytearray(data("arti-testdata2-cached-microdescs.new"))
    for _ in range(draw.draw(st.integers(1, 4))):
        pos = draw.draw(st.integers(0, len(buf) - 1)) if buf else 0
        op = draw.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw.draw(st.integers(0, 7))
        elif op == "delete":
            del buf[pos : pos + draw.draw(st.integers(1, 40))]
        elif op == "insert":
            buf[pos:pos] = draw.draw(
                st.one_of(
                    st.binary(min_size=1, max_size=12),
                    st.sampled_from([b"\nfamily $", b"\np accept ", b"\nonion-key\n", b"@", b"~"]),
                )
            )
        else:
            del buf[pos:]
    errors: list[DocumentError] = []
    try:
        parse_microdescs(bytes(buf), errors)
        parse_microdescs(bytes(buf))
    except DocumentError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random(data_: bytes) -> None:
    with contextlib.suppress(DocumentError):
        parse_microdescs(b"onion-key\n" + data_)
