"""Consensus signature checks: real C tor consensuses, and tampering with synthetic ones."""

from __future__ import annotations

import pytest
from dir_testlib import MD1_AUTHS, MD1_NOW, TD2_NOW, data, small_network

from puretor.dir.authcert import parse_authcerts
from puretor.dir.authorities import Authority
from puretor.dir.consensus import parse_consensus
from puretor.dir.synth import make_authority, sign_document, synth_network
from puretor.dir.verify import check_signatures, missing_certs, verify_consensus
from puretor.errors import DirectoryError, DocumentError

MD1 = data("arti-dirmgr-mdconsensus1.txt")
MD1_CERTS = [
    c for n in ("5696", "5A23", "7C47") for c in parse_authcerts(data(f"arti-dirmgr-cert-{n}.txt"))
]


def test_c_tor_035_consensus_verifies() -> None:
    status = verify_consensus(parse_consensus(MD1), MD1_CERTS, MD1_AUTHS, MD1_NOW)
    assert status.ok and len(status.good) == 3 and status.needed == 2
    # Like Arti's test: trusting only two of the three authorities is enough (2/2+1 = 2).
    assert verify_consensus(parse_consensus(MD1), MD1_CERTS, MD1_AUTHS[:2], MD1_NOW).ok
    # Only one certificate: 1 valid of 2 needed.
    with pytest.raises(DocumentError, match="1 valid signature.*of 2 needed"):
        verify_consensus(parse_consensus(MD1), MD1_CERTS[:1], MD1_AUTHS, MD1_NOW)


def test_c_tor_049_consensus_verifies() -> None:
    consensus = parse_consensus(data("arti-testdata2-cached-microdesc-consensus"))
    certs = parse_authcerts(data("arti-testdata2-cached-certs"))
    idents = [s.identity for s in consensus.dir_sources]
    assert len(verify_consensus(consensus, certs, idents, TD2_NOW).good) == 4


def test_one_byte_changed_is_refused() -> None:
    i = MD1.index(b"w Bandwidth=0") + len(b"w Bandwidth=")
    tampered = MD1[:i] + b"9" + MD1[i + 1 :]
    with pytest.raises(DocumentError, match=r"0 valid signature\(s\) of 2 needed.*bad signature"):
        verify_consensus(parse_consensus(tampered), MD1_CERTS, MD1_AUTHS, MD1_NOW)


def test_time_checks() -> None:
    c = parse_consensus(MD1)
    va, _, vu = c.lifetime
    with pytest.raises(DirectoryError, match="not yet valid"):
        verify_consensus(c, MD1_CERTS, MD1_AUTHS, va - 3600)
    # Within 24 h after valid-until: "reasonably live", accepted.
    verify_consensus(c, MD1_CERTS, MD1_AUTHS, vu + 23 * 3600)
    with pytest.raises(DirectoryError, match="expired"):
        verify_consensus(c, MD1_CERTS, MD1_AUTHS, vu + 25 * 3600)
    # Certificates expire a year later; older consensuses pass only with the flag.
    verify_consensus(c, MD1_CERTS, MD1_AUTHS, vu + 25 * 3600, allow_expired=True)


def test_synthetic_network_verifies_and_tampering_is_caught() -> None:
    net = small_network()
    auths = net.authority_list
    consensus = parse_consensus(net.consensus)
    status = verify_consensus(consensus, parse_authcerts(net.certs), auths, net.now)
    assert len(status.good) == 5 and status.needed == 3
    for offset in (100, len(net.consensus) // 2, consensus.signed_range[1] - 2):
        buf = bytearray(net.consensus)
        buf[offset] = ord("0") if buf[offset] != ord("0") else ord("1")
        try:
            tampered = parse_consensus(bytes(buf))
        except DocumentError:
            continue
        with pytest.raises(DocumentError, match="insufficiently signed"):
            verify_consensus(tampered, parse_authcerts(net.certs), auths, net.now)


def test_wrong_signing_key_is_refused() -> None:
    net = small_network()
    signed_part = parse_consensus(net.consensus).signed_bytes
    # Signed with keys that no certificate of a trusted authority certifies.
    impostors = [
        make_authority(i, signing_key=make_authority(i + 10).signing_key) for i in range(5)
    ]
    forged = parse_consensus(sign_document(signed_part, impostors))
    certs = parse_authcerts(net.certs)
    with pytest.raises(DocumentError, match="0 valid signature.*certificate missing"):
        verify_consensus(forged, certs, net.authority_list, net.now)
    # Genuine signatures, but by authorities we do not trust.
    strangers = [make_authority(i + 20).authority for i in range(5)]
    with pytest.raises(DocumentError, match="0 valid signature.*not signed by"):
        verify_consensus(parse_consensus(net.consensus), certs, strangers, net.now)


def test_signature_by_key_not_matching_certificate() -> None:
    net = small_network()
    signed_part = parse_consensus(net.consensus).signed_bytes
    real = [make_authority(i) for i in range(5)]
    # Claim the real signing-key digest but sign with another key.
    liar = make_authority(0, signing_key=make_authority(30).signing_key)
    text = sign_document(signed_part, [liar]).decode()
    text = text.replace(
        liar.signing_key_digest.hex().upper(), real[0].signing_key_digest.hex().upper()
    )
    consensus = parse_consensus(text.encode())
    status = check_signatures(consensus, parse_authcerts(net.certs), net.authority_list, net.now)
    assert status.bad == (real[0].v3ident,) and not status.good


def test_insufficient_signatures_and_missing_certs() -> None:
    net = synth_network(50, 1, n_authorities=5, signers=[0, 1])
    consensus = parse_consensus(net.consensus)
    certs = parse_authcerts(net.certs)
    with pytest.raises(DocumentError) as info:
        verify_consensus(consensus, certs, net.authority_list, net.now)
    message = str(info.value)
    assert "2 valid signature(s) of 3 needed (from 5 trusted authorities)" in message
    assert "not signed by: synth2, synth3, synth4" in message
    # Missing-certificate helper.
    assert missing_certs(consensus, [], net.authority_list, net.now) == [
        (a.v3ident, a.signing_key_digest) for a in net.authorities[:2]
    ]
    assert missing_certs(consensus, certs, net.authority_list, net.now) == []


def test_each_authority_counts_once_and_unknown_algorithms_are_ignored() -> None:
    net = synth_network(30, 2, n_authorities=3, signers=[0])
    consensus = parse_consensus(net.consensus)
    signed = consensus.signed_bytes
    a0 = net.authorities[0]
    doubled = sign_document(signed, [a0, a0, a0], "sha256")
    status = check_signatures(
        parse_consensus(doubled), parse_authcerts(net.certs), net.authority_list, net.now
    )
    assert status.good == (a0.v3ident,) and not status.ok
    text = doubled.decode().replace("directory-signature sha256", "directory-signature md5", 1)
    status = check_signatures(
        parse_consensus(text.encode()), parse_authcerts(net.certs), net.authority_list, net.now
    )
    assert status.good == (a0.v3ident,)


def test_sha1_signatures() -> None:
    net = synth_network(30, 3, n_authorities=3, algorithm="sha1")
    consensus = parse_consensus(net.consensus)
    assert {s.algorithm for s in consensus.signatures} == {"sha1"}
    assert b"directory-signature sha1" not in net.consensus  # no algorithm => sha1
    verify_consensus(consensus, parse_authcerts(net.certs), net.authority_list, net.now)


def test_expired_or_bad_certificates_are_not_used() -> None:
    net = synth_network(30, 4, n_authorities=3)
    consensus = parse_consensus(net.consensus)
    certs = parse_authcerts(net.certs)
    later = certs[0].expires.timestamp() + 1
    status = check_signatures(consensus, certs, net.authority_list, later)
    assert not status.good and len(status.missing) == 3


def test_configuration_errors() -> None:
    consensus = parse_consensus(MD1)
    bridge_only = [
        Authority("b", "1.2.3.4", 1, 2, None, bytes(20), bridge=True)
    ]  # no v3ident: does not count
    with pytest.raises(DirectoryError, match="no v3 directory authorities"):
        verify_consensus(consensus, MD1_CERTS, bridge_only, MD1_NOW)


def test_c_tor_0_4_9_11_private_network() -> None:
    """Documents written by the tor that the integration tests run (Debian 0.4.9.11)."""
    from dir_testlib import ts

    from puretor.dir.authorities import parse_dir_authority_line
    from puretor.dir.build import build_netdir
    from puretor.dir.microdesc import parse_microdescs

    lines = data("ctor-0.4.9.11-testnet-authorities").decode().splitlines()
    auths = [parse_dir_authority_line(line) for line in lines]
    consensus = parse_consensus(data("ctor-0.4.9.11-testnet-microdesc-consensus"))
    certs = parse_authcerts(data("ctor-0.4.9.11-testnet-certs"))
    now = ts(2026, 11, 25, 1, 19, 30)
    assert len(verify_consensus(consensus, certs, auths, now).good) == 3
    mds = {m.digest: m for m in parse_microdescs(data("ctor-0.4.9.11-testnet-microdescs"))}
    nd = build_netdir(consensus, mds)
    assert nd.voting_interval == 20 and len(nd.relays) == 9
    assert all(r.has_md and r.ed_id is not None for r in nd.relays)
    exits = {r.nickname: r for r in nd.relays if "Exit" in r.flags}
    assert exits["exit2"].policy.allows(8443) and not exits["exit2"].policy.allows(22)
    assert nd.weight("Wgd") == 0 and nd.param("cc_alg", 0) == 2
