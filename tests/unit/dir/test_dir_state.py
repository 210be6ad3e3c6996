"""DirState: the sans-I/O bootstrap, verification and refresh logic."""

from __future__ import annotations

import base64
import hashlib
import random
from datetime import UTC, datetime

import pytest
from dir_testlib import small_network

from puretor.dir.consensus import parse_consensus
from puretor.dir.microdesc import split_microdescs
from puretor.dir.state import (
    MAX_MICRODESCS_PER_REQUEST,
    BootstrapPhase,
    DirRequest,
    DirState,
    refetch_time,
)
from puretor.dir.synth import SynthNetwork, make_authority, sign_document, synth_network
from puretor.errors import DirectoryError, DocumentError


def md_server(net: SynthNetwork) -> dict[bytes, bytes]:
    """What a directory cache would serve: digest -> microdesc text."""
    out = {}
    for start, end in split_microdescs(net.microdescs):
        text = net.microdescs[start:end]
        out[hashlib.sha256(text).digest()] = text
    return out


def serve(state: DirState, net: SynthNetwork, req: DirRequest, now: float) -> None:
    if req.kind == "consensus":
        state.add_consensus(net.consensus, now)
    elif req.kind == "certs":
        state.add_certs(net.certs, now, req.digests)
    else:
        mds = md_server(net)
        state.add_microdescs(b"".join(mds[d] for d in req.digests), req.digests, now)


def bootstrap(net: SynthNetwork, now: float) -> DirState:
    state = DirState(net.authority_list, rng=random.Random(1))
    for _ in range(10):
        reqs = state.next_requests(now)
        if not reqs:
            break
        for req in reqs:
            serve(state, net, req, now)
    return state


def test_full_bootstrap_with_c_tor_phases() -> None:
    net = small_network()
    now = net.now
    state = DirState(net.authority_list, rng=random.Random(1))
    assert str(state.bootstrap_status(now)) == "Bootstrapped 0% (starting): Starting"
    state.note_phase(BootstrapPhase.ONEHOP_CREATE)
    assert state.bootstrap_status(now).percent == 20

    [req] = state.next_requests(now)
    assert req.kind == "consensus"
    prefixes = sorted(a.v3ident[:3].hex().upper() for a in net.authorities)
    assert req.path == "/tor/status-vote/current/consensus-microdesc/" + "+".join(prefixes)
    assert state.next_requests(now) == []  # already in flight
    assert state.bootstrap_status(now).tag == "requesting_status"

    assert state.add_consensus(net.consensus, now) is False  # no certificates yet
    status = state.bootstrap_status(now)
    assert (status.percent, status.summary) == (40, "Loading authority key certs")
    [certs] = state.next_requests(now)
    assert certs.kind == "certs"
    assert certs.path == "/tor/keys/fp/" + "+".join(
        sorted(a.v3ident.hex().upper() for a in net.authorities)
    )
    assert state.add_certs(net.certs, now, certs.digests) == 5
    assert state.consensus is not None and state.pending is None
    assert state.bootstrap_status(now).tag == "requesting_descriptors"
    nd = state.netdir(now)
    assert nd is not None and not any(r.has_md for r in nd.relays)

    md_reqs = state.next_requests(now)
    assert [len(r.digests) for r in md_reqs] == [92, 92, 92, 24]
    first = md_reqs[0]
    encoded = first.path.removeprefix("/tor/micro/d/").split("-")
    assert "=" not in first.path and len(encoded) == 92
    assert [base64.b64decode(e + "=") for e in encoded] == list(first.digests)
    percents = []
    for req in md_reqs:
        serve(state, net, req, now)
        percents.append(state.bootstrap_status(now).percent)
    assert percents == sorted(percents) and percents[-1] == 75
    assert 50 <= percents[0] < 75
    assert state.have_enough_dir_info(now)
    assert str(state.bootstrap_progress) == (
        "Bootstrapped 75% (enough_dirinfo): Loaded enough directory info to build circuits"
    )
    nd = state.netdir(now)
    assert nd is not None and all(r.has_md for r in nd.relays)
    assert state.next_requests(now) == []
    state.note_phase(BootstrapPhase.DONE)
    assert state.bootstrap_status(now).percent == 100


def test_microdescs_not_requested_or_wrong_are_discarded() -> None:
    net = small_network()
    state = DirState(net.authority_list, rng=random.Random(2))
    state.next_requests(net.now)
    state.add_consensus(net.consensus, net.now)
    state.add_certs(net.certs, net.now)
    req = state.next_requests(net.now)[0]
    mds = md_server(net)
    asked = req.digests[:3]
    others = [d for d in mds if d not in req.digests][:2]
    # The server "answers" with one altered microdesc, plus two we did not ask for.
    altered = mds[asked[2]].replace(b"ntor-onion-key ", b"ntor-onion-key  ")
    body = mds[asked[0]] + mds[asked[1]] + altered + b"".join(mds[d] for d in others)
    assert state.add_microdescs(body, asked, net.now) == 2
    assert set(state.microdescs) == set(asked[:2])
    # The missing one is retried later, not immediately.
    assert all(asked[2] not in r.digests for r in state.next_requests(net.now))
    later = [r for r in state.next_requests(net.now + 700) if asked[2] in r.digests]
    assert later


def test_bad_consensus_is_dropped_with_backoff() -> None:
    net = small_network()
    now = net.now
    state = DirState(net.authority_list, rng=random.Random(3))
    req = state.next_requests(now)[0]
    tampered = net.consensus.replace(b"w Bandwidth=", b"w Bandwidth=1", 1)
    state.add_certs(net.certs, now)
    with pytest.raises(DocumentError, match=r"insufficiently signed: 0 valid signature\(s\) of 3"):
        state.add_consensus(tampered, now)
    assert state.consensus is None and state.pending is None and state.last_error
    assert state.next_requests(now) == []  # backing off
    wake = state.next_wakeup(now)
    assert wake is not None and now + 1 <= wake <= now + 2
    assert state.next_requests(wake)[0] == req
    with pytest.raises(DocumentError, match="does not start with 'network-status-version'"):
        state.add_consensus(b"garbage\n", wake)


def test_insufficient_signers_refused_at_once() -> None:
    net = synth_network(60, 5, n_authorities=5, signers=[0, 1])
    state = DirState(net.authority_list)
    with pytest.raises(DocumentError, match="2 valid signature|0 valid signature"):
        state.add_consensus(net.consensus, net.now)
    assert state.pending is None


def test_pending_consensus_dropped_when_certificates_show_bad_signatures() -> None:
    net = synth_network(60, 6, n_authorities=3)
    real = [make_authority(i) for i in range(3)]
    signed = parse_consensus(net.consensus).signed_bytes
    liar = make_authority(0, signing_key=make_authority(40).signing_key)
    forged = sign_document(signed, [liar, liar]).decode()
    for a in real[:1]:
        forged = forged.replace(
            liar.signing_key_digest.hex().upper(), a.signing_key_digest.hex().upper()
        )
    forged_sig = sign_document(signed, [real[1]]).decode().split("directory-signature ", 1)[1]
    doc = (forged + "directory-signature " + forged_sig).encode()
    state = DirState(net.authority_list)
    assert state.add_consensus(doc, net.now) is False  # could still reach 2 of 3
    with pytest.raises(DocumentError, match="consensus dropped: 1 valid signature"):
        state.add_certs(net.certs, net.now)
    assert state.pending is None and len(state.certs) == 3


def test_time_rules() -> None:
    net = small_network()
    state = DirState(net.authority_list)
    state.add_certs(net.certs, net.now)
    with pytest.raises(DirectoryError, match="not yet valid"):
        state.add_consensus(net.consensus, net.now - 7200)
    with pytest.raises(DirectoryError, match="expired"):
        state.add_consensus(net.consensus, net.now + 4 * 86400)
    assert DirState(net.authority_list, allow_expired=True).add_certs(net.certs, net.now) == 5
    lenient = DirState(net.authority_list, allow_expired=True)
    lenient.add_certs(net.certs, net.now)
    assert lenient.add_consensus(net.consensus, net.now + 2 * 86400)

    assert state.add_consensus(net.consensus, net.now)
    va, fu, vu = state.consensus.lifetime  # type: ignore[union-attr]
    assert state.is_live(va) and not state.is_live(vu)
    assert state.is_reasonably_live(vu + 86399) and not state.is_reasonably_live(vu + 86400)
    assert state.netdir(vu + 86400) is None and state.netdir() is not None
    assert state.next_requests(vu)[0].kind == "consensus"  # no longer live: fetch
    with pytest.raises(DirectoryError, match="not newer"):
        state.add_consensus(net.consensus, vu)


def test_refetch_time_matches_dir_spec_example() -> None:
    net = synth_network(
        20, 1, n_authorities=3, valid_after=datetime(2025, 1, 1, 1, 0, tzinfo=UTC)
    )  # VA 1:00, FU 2:00, VU 4:00
    consensus = parse_consensus(net.consensus)
    lo = datetime(2025, 1, 1, 2, 45, tzinfo=UTC).timestamp()
    hi = datetime(2025, 1, 1, 3, 50, 38, tzinfo=UTC).timestamp()
    times = [refetch_time(consensus, random.Random(i)) for i in range(200)]
    assert all(lo <= t <= hi for t in times)
    assert min(times) < lo + 600 and max(times) > hi - 600
    state = bootstrap(net, net.now)
    assert state.refetch_at is not None and lo <= state.refetch_at <= hi
    assert lo <= (state.refetch_time(random.Random(5)) or 0) <= hi
    assert state.next_requests(lo - 1) == []
    assert state.next_wakeup(lo - 1) == state.refetch_at
    assert state.next_requests(state.refetch_at)[0].kind == "consensus"


def test_newer_consensus_replaces_and_keeps_microdescs() -> None:
    net1 = synth_network(80, 9, n_authorities=3)
    later = datetime(2025, 1, 1, 13, 0, tzinfo=UTC)
    net2 = synth_network(80, 9, n_authorities=3, valid_after=later)
    state = bootstrap(net1, net1.now)
    assert len(state.microdescs) == 80
    assert state.add_consensus(net2.consensus, net2.now)
    # Same relays, same microdescs: nothing left to fetch.
    assert [r for r in state.next_requests(net2.now) if r.kind == "microdescs"] == []
    assert state.netdir(net2.now).valid_after == later  # type: ignore[union-attr]
    # A week later, microdescs nobody lists any more are forgotten.
    net3 = synth_network(80, 10, n_authorities=3, valid_after=datetime(2025, 1, 9, tzinfo=UTC))
    state.add_consensus(net3.consensus, net3.now)
    assert state.microdescs == {}


def test_request_failed_backoff_grows_with_jitter() -> None:
    net = small_network()
    state = DirState(net.authority_list, rng=random.Random(4))
    now = net.now
    delays = []
    for _ in range(8):
        [req] = state.next_requests(now)
        state.request_failed(req, now, "connection refused")
        wake = state.next_wakeup(now)
        assert wake is not None
        delays.append(wake - now)
        now = wake
    assert delays[0] <= 2 and max(delays) <= 600 and delays[-1] > delays[0]
    assert state.last_error == "connection refused"


def test_enough_dir_info_rules() -> None:
    net = small_network()
    state = bootstrap(net, net.now)
    ok, status = state.dir_info_status(net.now)
    assert ok and "of path bw" in status
    nd = state.netdir(net.now)
    assert nd is not None
    some_guard = next(r for r in nd.relays if "Guard" in r.flags)
    del state.microdescs[some_guard.md_digest]
    state._netdir = None
    assert state.have_enough_dir_info(net.now)
    ok, why = state.dir_info_status(net.now, [some_guard.rsa_id])
    assert not ok and some_guard.fingerprint in why
    empty = DirState(net.authority_list)
    assert empty.dir_info_status(net.now) == (False, "We have no usable consensus.")
    state.paths_needed = 0.999
    ok, why = state.dir_info_status(net.now)
    assert not ok and why.startswith("We need more microdescriptors")


def test_configuration() -> None:
    with pytest.raises(DirectoryError, match="no v3 directory authorities"):
        DirState([])
    assert MAX_MICRODESCS_PER_REQUEST == 92


def test_pending_consensus_does_not_block_forever() -> None:
    net = small_network()
    state = DirState(net.authority_list, rng=random.Random(6))
    state.next_requests(net.now)
    assert state.add_consensus(net.consensus, net.now) is False
    for req in state.next_requests(net.now):
        state.request_failed(req, net.now)  # the certificates never come
    kinds = [r.kind for r in state.next_requests(net.now + 60)]
    assert kinds == ["certs"]  # retried, but no second consensus yet
    assert "consensus" in [r.kind for r in state.next_requests(net.now + 130)]
    # Once the pending consensus is no longer live it is dropped.
    later = net.valid_after.timestamp() + 3 * 3600 + 1
    state.next_requests(later)
    assert state.pending is None and "expired" in (state.last_error or "")
