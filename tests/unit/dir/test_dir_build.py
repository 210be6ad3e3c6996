"""Consensus + microdescs -> NetDir, and the synthetic network generator."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from dir_testlib import data, small_network

from puretor.dir.authcert import parse_authcerts
from puretor.dir.build import build_netdir
from puretor.dir.consensus import parse_consensus
from puretor.dir.microdesc import parse_microdescs
from puretor.dir.synth import synth_netdir, synth_network
from puretor.dir.verify import verify_consensus


def test_c_tor_network_joined() -> None:
    consensus = parse_consensus(data("arti-testdata2-cached-microdesc-consensus"))
    mds = {m.digest: m for m in parse_microdescs(data("arti-testdata2-cached-microdescs.new"))}
    nd = build_netdir(consensus, mds)
    assert nd.voting_interval == 20  # fresh-until - valid-after in this test network
    assert nd.consensus_digest == consensus.digest_sha3_256
    assert nd.weight("Wgd") == 3333 and nd.param("cc_alg", 0) == 2
    assert len(nd.usable_relays()) == 7
    r = nd.relays[0]
    assert r.ntor_key is not None and r.ed_id is not None and r.supports("Relay", 6)
    assert nd.by_rsa_id(r.rsa_id) is r
    exits = [x for x in nd.relays if x.policy.allows(443)]
    assert len(exits) == 2


def test_missing_microdescs_and_no_ed_consensus() -> None:
    text = data("arti-dirmgr-mdconsensus2.txt")
    consensus = parse_consensus(text)
    mds = {m.digest: m for m in parse_microdescs(data("arti-dirmgr-microdescs.txt"))}
    some = dict(list(mds.items())[:2])
    nd = build_netdir(consensus, some)
    assert [r.has_md for r in nd.relays] == [True, True, False, False]
    assert nd.relays[3].md_digest == consensus.routers[3].md_digest
    assert len(nd.usable_relays()) == 2
    # NoEdConsensus: the microdesc's ed25519 id must be ignored (dir-spec §3.3).
    flagged = text.replace(b"\ns Exit Fast", b"\ns NoEdConsensus Exit Fast", 1)
    if flagged != text:
        nd2 = build_netdir(parse_consensus(flagged), mds)
        assert any(r.ed_id is None and r.has_md for r in nd2.relays)


def test_synth_netdir_equals_parsed_network() -> None:
    net = synth_network(500, 11, n_authorities=3)
    consensus = parse_consensus(net.consensus)
    verify_consensus(consensus, parse_authcerts(net.certs), net.authority_list, net.now)
    mds = {m.digest: m for m in parse_microdescs(net.microdescs)}
    parsed = build_netdir(consensus, mds)
    direct = synth_netdir(500, 11)
    assert parsed.relays == direct.relays
    assert parsed.bandwidth_weights == direct.bandwidth_weights
    assert parsed.params == direct.params
    assert (parsed.valid_after, parsed.voting_interval) == (direct.valid_after, 3600)
    assert synth_netdir(500, 11) is direct  # cached


def test_synthetic_distributions_look_like_the_live_network() -> None:
    nd = synth_netdir(8000, 0)
    flags = Counter(f for r in nd.relays for f in r.flags)
    n = len(nd.relays)
    assert n == 8000
    assert 0.85 < flags["Fast"] / n < 0.95
    assert 0.15 < flags["Guard"] / n < 0.5
    assert 0.15 < flags["Exit"] / n < 0.25
    assert 0 < flags["BadExit"] < 40
    assert 0.2 < sum(1 for r in nd.relays if r.family) / n < 0.45
    assert 0.25 < sum(1 for r in nd.relays if r.ipv6) / n < 0.45
    families = {r.family for r in nd.relays if r.family}
    assert max(len(f) for f in families) <= 40
    # Every member of a family lists the others (mutual) and the same interned set.
    for fam in list(families)[:50]:
        members = [r for r in nd.relays if "$" + r.fingerprint in fam]
        assert len(members) == len(fam) and all(m.family is fam for m in members)
    exits = [r for r in nd.relays if "Exit" in r.flags]
    assert all(r.policy.allows_any for r in exits)
    assert not any(r.policy.allows_any for r in nd.relays if "Exit" not in r.flags)
    assert len({r.flags for r in nd.relays}) < 200  # interned flag sets
    assert nd.valid_after == datetime(2025, 1, 1, 12, tzinfo=UTC)


def test_small_network_is_reused() -> None:
    assert small_network() is small_network()
