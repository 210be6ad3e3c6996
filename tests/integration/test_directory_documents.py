"""Acceptance: parsing directory documents captured from the private network's REAL C tor
authorities at run time (not stored vectors): the microdesc consensus, the key certificates and
every microdescriptor, fetched over BEGIN_DIR on CREATE_FAST circuits to each authority, then
parsed, verified and joined into a NetDir that must match network.json.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.aio.circuit import HopSpec, build_circuit
from puretor.aio.dirclient import fetch_raw
from puretor.dir.authcert import parse_authcerts
from puretor.dir.authorities import Authority, parse_dir_authority_line
from puretor.dir.build import build_netdir
from puretor.dir.consensus import Consensus, parse_consensus
from puretor.dir.http import HttpResponseParser, build_request
from puretor.dir.microdesc import parse_microdescs
from puretor.dir.netdoc import b64encode_unpadded
from puretor.dir.state import DirState
from puretor.dir.verify import verify_consensus
from puretor.errors import DocumentError
from puretor.testnet import NetworkInfo, TestNetwork

pytestmark = pytest.mark.testnet


@dataclass
class Capture:
    authority: str
    consensus: bytes
    certs: bytes
    microdescs: bytes
    md_digests: tuple[bytes, ...]


def _authorities(info: NetworkInfo) -> list[Authority]:
    return [
        parse_dir_authority_line(line.split(None, 1)[1]) for line in info["dir_authority_lines"]
    ]


async def _capture(auths: list[Authority]) -> list[Capture]:
    chanmgr = ChannelManager()
    out = []
    try:
        for auth in auths:
            target = ChannelTarget(auth.address, auth.or_port, auth.rsa_id, None, auth.nickname)
            handle = await build_circuit(chanmgr, [HopSpec(target, None)], timeout=30)

            async def get(path: str, handle=handle, nick=auth.nickname) -> bytes:  # type: ignore[no-untyped-def]
                raw = await fetch_raw(handle, build_request(path), timeout=60, max_size=64 << 20)
                parser = HttpResponseParser()
                parser.feed(raw)
                resp = parser.finish()
                assert resp.status == 200, f"{nick} {path}: HTTP {resp.status} {resp.reason}"
                return resp.body

            consensus = await get(DirState(auths).consensus_path())
            certs = await get("/tor/keys/all")
            digests = tuple(
                rs.md_digest for rs in parse_consensus(consensus).routers if rs.md_digest
            )
            mds = await get("/tor/micro/d/" + "-".join(b64encode_unpadded(d) for d in digests))
            out.append(Capture(auth.nickname, consensus, certs, mds, digests))
            handle.close()
    finally:
        chanmgr.close_all()
    return out


@pytest.fixture(scope="module")
def captures(testnet: TestNetwork) -> list[Capture]:
    return asyncio.run(asyncio.wait_for(_capture(_authorities(testnet.info)), 120))


def _ntor_public_keys(node_dir: Path) -> set[bytes]:
    """The relay's own curve25519 onion keys (C tor's file: 32-byte tag, secret, public)."""
    keys = set()
    for name in ("secret_onion_key_ntor", "secret_onion_key_ntor.old"):
        path = node_dir / "keys" / name
        if path.exists():
            data = path.read_bytes()
            assert data.startswith(b"== c25519v1: onion =="), name
            keys.add(data[64:96])
    return keys


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def test_every_authority_serves_a_verified_consensus(
    captures: list[Capture], testnet: TestNetwork
) -> None:
    info = testnet.info
    auths = _authorities(info)
    assert [c.authority for c in captures] == [a["nickname"] for a in info["authorities"]]
    now = time.time()
    valid_afters = set()
    for cap in captures:
        consensus = parse_consensus(cap.consensus)
        certs = parse_authcerts(cap.certs)
        assert {c.fingerprint.hex().upper() for c in certs} == {
            a["v3ident"] for a in info["authorities"]
        }
        for cert in certs:
            cert.verify(now)
        status = verify_consensus(consensus, certs, auths, now)
        assert len(status.good) == 3 and not status.bad, (cap.authority, status)
        assert consensus.is_live(now)
        assert _lifetime_matches(consensus, info["voting_interval"])
        valid_afters.add(consensus.valid_after)
        # Preamble: our authorities as dir-sources, the voted parameters, real weights.
        assert {s.identity.hex().upper() for s in consensus.dir_sources} == {
            a["v3ident"] for a in info["authorities"]
        }
        for key, value in info["consensus_params"].items():
            assert consensus.params.get(key) == value, key
        for w in ("Wgg", "Wgd", "Wee", "Wed", "Wmg", "Wmm", "Wbd"):
            assert w in consensus.bandwidth_weights, w
    # At most one voting period apart (a new consensus may appear between two fetches).
    assert len(valid_afters) <= 2


def _lifetime_matches(consensus: Consensus, interval: int) -> bool:
    va, fu, vu = consensus.lifetime
    return fu - va == interval and vu > fu


def test_microdescriptors_and_netdir_match_the_network(
    captures: list[Capture], testnet: TestNetwork
) -> None:
    info = testnet.info
    workdir = Path(info["workdir"])
    for cap in captures:
        consensus = parse_consensus(cap.consensus)
        errors: list[DocumentError] = []
        mds = parse_microdescs(cap.microdescs, errors)
        assert not errors, errors
        by_digest = {md.digest: md for md in mds}
        # Every digest arrived, and each microdescriptor hashes to what the consensus says.
        assert set(by_digest) == set(cap.md_digests), cap.authority
        netdir = build_netdir(consensus, by_digest)
        by_fp = {r.fingerprint: r for r in netdir.relays}
        assert set(by_fp) == {n["fingerprint"] for n in info["relays"]}
        exits = {e["nickname"]: e for e in info["exits"]}
        for node in info["relays"]:
            name = node["nickname"]
            relay = by_fp[node["fingerprint"] or ""]
            assert relay.nickname == name
            assert (relay.address, relay.or_port) == (node["address"], node["orport"]), name
            assert set(node["expected_flags"]) <= relay.flags, (name, relay.flags)
            assert ("Guard" in relay.flags) == (node["role"] == "guard"), name
            assert ("Exit" in relay.flags) == (node["role"] == "exit"), name
            assert relay.has_md, name
            assert relay.ed_id == _b64(node["ed25519"] or ""), name
            assert relay.ntor_key in _ntor_public_keys(workdir / "nodes" / name), name
            if node["role"] != "authority":
                assert relay.bandwidth == node["bandwidth_kb"], name
            policy = relay.policy
            if name in exits:
                open_ports = exits[name]["open_ports"]
                if open_ports == "all":
                    assert policy.accept and policy.ranges == ((1, 65535),), name
                else:
                    ports = {int(p) for p in open_ports.split(",")}
                    assert policy.accept, name
                    assert {lo for lo, hi in policy.ranges if lo == hi} == ports, name
                    assert all(lo == hi for lo, hi in policy.ranges), name
            else:
                assert not policy.allows_any, name
        assert len(netdir.usable_relays()) == len(info["relays"])


def test_captured_documents_bootstrap_a_dirstate(
    captures: list[Capture], testnet: TestNetwork
) -> None:
    """The sans-I/O bootstrap logic accepts the captures as if fetched by the client."""
    auths = _authorities(testnet.info)
    cap = captures[0]
    state = DirState(auths)
    now = time.time()
    assert state.add_consensus(cap.consensus, now) is False  # waits for certificates
    reqs = state.next_requests(now)
    assert [r.kind for r in reqs] == ["certs"]
    state.add_certs(cap.certs, now, reqs[0].digests)
    assert state.consensus is not None
    md_reqs = state.next_requests(now)
    assert {r.kind for r in md_reqs} == {"microdescs"}
    for req in md_reqs:
        state.add_microdescs(cap.microdescs, req.digests, now)
    ok, why = state.dir_info_status(now)
    assert ok, why
    assert state.bootstrap_status(now).percent == 75
    assert not state.missing_microdescs()
