"""Join a verified consensus with its microdescriptors into a `NetDir` (spec-map §5).

Relays whose microdescriptor is not known yet keep ``ntor_key=None`` (so
``Relay.has_md`` is False); rebuilding after more microdescriptors arrive is
cheap (one pass, values are shared with the consensus).
"""

from __future__ import annotations

from collections.abc import Mapping

from puretor.dir.consensus import Consensus, RouterStatus
from puretor.dir.microdesc import Microdesc
from puretor.dir.netdir import NetDir, Relay

__all__ = ["build_netdir", "relay_from"]


def relay_from(rs: RouterStatus, md: Microdesc | None) -> Relay:
    """One `Relay` from its consensus entry and (optional) microdescriptor."""
    if md is None:
        return Relay(
            rs.nickname,
            rs.rsa_id,
            rs.address,
            rs.or_port,
            rs.dir_port,
            rs.flags,
            rs.bandwidth,
            rs.unmeasured,
            rs.version,
            rs.protocols,
            rs.ipv6,
            rs.md_digest or b"",
        )
    # dir-spec §3.3: ignore `id ed25519` when the consensus entry says NoEdConsensus.
    ed_id = None if "NoEdConsensus" in rs.flags else md.ed_id
    return Relay(
        rs.nickname,
        rs.rsa_id,
        rs.address,
        rs.or_port,
        rs.dir_port,
        rs.flags,
        rs.bandwidth,
        rs.unmeasured,
        rs.version,
        rs.protocols,
        rs.ipv6,
        md.digest,
        md.ntor_key,
        ed_id,
        md.family,
        md.family_ids,
        md.policy,
        md.policy6,
    )


def build_netdir(consensus: Consensus, microdescs: Mapping[bytes, Microdesc]) -> NetDir:
    """The network view for ``consensus`` (which the caller has verified)."""
    get = microdescs.get
    relays = tuple(
        relay_from(rs, get(rs.md_digest) if rs.md_digest is not None else None)
        for rs in consensus.routers
    )
    srv_cur = consensus.shared_rand_current
    srv_prev = consensus.shared_rand_previous
    return NetDir(
        valid_after=consensus.valid_after,
        fresh_until=consensus.fresh_until,
        valid_until=consensus.valid_until,
        voting_interval=int((consensus.fresh_until - consensus.valid_after).total_seconds()),
        params=consensus.params,
        bandwidth_weights=consensus.bandwidth_weights,
        relays=relays,
        shared_rand_current=srv_cur.value if srv_cur else None,
        shared_rand_previous=srv_prev.value if srv_prev else None,
        consensus_digest=consensus.digest_sha3_256,
    )
