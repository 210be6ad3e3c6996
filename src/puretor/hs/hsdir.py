"""The HSDir hash ring: which relays hold a service's descriptor (rend-spec-v3 §2.2.3–§2.3.1).

Client side only: clients always fetch for the *current* time period (§2.2.4.1),
with the SRV chosen by where the consensus valid-after falls::

    SRV run start  ─── "=" ───►  time period start  ─── "-" ───►  next SRV run start
                  (previous SRV)                    (current SRV)

(C tor ``hs_in_period_between_tp_and_srv()`` returns true in the "-" part.)
A missing SRV is replaced by the disaster SRV of §2.3.1 for the current period.

Index formulas — note the *different order* of period_num and period_length::

    hs_relay_index   = SHA3-256("node-idx"     | ed_id | SRV | INT_8(period_num) | INT_8(period_length))
    hs_service_index = SHA3-256("store-at-idx" | A' | INT_8(replica) | INT_8(period_length) | INT_8(period_num))
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Iterable

from puretor.dir.netdir import NetDir, Relay
from puretor.hs.keys import HsTimeParams, unix_time

__all__ = [
    "disaster_srv",
    "fetch_srv",
    "hs_relay_index",
    "hs_service_index",
    "in_period_between_tp_and_srv",
    "is_v3_hsdir",
    "responsible_hsdirs",
]

_U64 = struct.Struct(">Q")

# C tor hs_common.h HS_DEFAULT_HSDIR_N_REPLICAS / HS_DEFAULT_HSDIR_SPREAD_FETCH,
# clamped to the ranges of rend-spec §2.2.3.
N_REPLICAS_DEFAULT = 2
SPREAD_FETCH_DEFAULT = 3


def disaster_srv(period_num: int, period_length: int) -> bytes:
    """§2.3.1: ``SHA3-256("shared-random-disaster" | INT_8(period_length) | INT_8(period_num))``."""
    return hashlib.sha3_256(
        b"shared-random-disaster" + _U64.pack(period_length) + _U64.pack(period_num)
    ).digest()


def hs_relay_index(ed_id: bytes, srv: bytes, period_num: int, period_length: int) -> bytes:
    """A relay's position on the ring (C tor hs_build_hsdir_index())."""
    return hashlib.sha3_256(
        b"node-idx" + ed_id + srv + _U64.pack(period_num) + _U64.pack(period_length)
    ).digest()


def hs_service_index(
    blinded_key: bytes, replica: int, period_num: int, period_length: int
) -> bytes:
    """Where replica ``replica`` (1-based) of a descriptor lives (C tor hs_build_hs_index())."""
    return hashlib.sha3_256(
        b"store-at-idx"
        + blinded_key
        + _U64.pack(replica)
        + _U64.pack(period_length)
        + _U64.pack(period_num)
    ).digest()


def in_period_between_tp_and_srv(valid_after: int, tp: HsTimeParams) -> bool:
    """True in the "-" segment (new time period, SRV not yet rotated): use the current SRV.

    Mirrors C tor hs_in_period_between_tp_and_srv(): find the start of the SR
    protocol run containing valid-after (runs are 24 voting intervals, aligned
    to the epoch), then the first time-period start after it.  Valid-after in
    [run start, that period start) is the "=" segment (previous SRV).
    """
    vi = tp.voting_interval
    slot = (valid_after // vi) % (tp.srv_run_length // vi)
    srv_start = valid_after - slot * vi
    next_tp_start = tp.period_start(tp.period_num(srv_start) + 1)
    return not (srv_start <= valid_after < next_tp_start)


def fetch_srv(netdir: NetDir, tp: HsTimeParams) -> bytes:
    """The SRV a client uses to build the ring for ``netdir`` (§2.2.4.1, §2.3.1)."""
    valid_after = unix_time(netdir.valid_after)
    period_num = tp.period_num(valid_after)
    if in_period_between_tp_and_srv(valid_after, tp):
        srv = netdir.shared_rand_current
    else:
        srv = netdir.shared_rand_previous
    # C tor (hs_get_{current,previous}_srv) falls back to the disaster SRV of
    # the *current* period in both cases.
    return srv if srv is not None else disaster_srv(period_num, tp.period_length)


def is_v3_hsdir(relay: Relay) -> bool:
    """Has the HSDir flag, an Ed25519 id, and (if protocols are known) HSDir=2.

    C tor (hs_get_responsible_hsdirs) requires rs->is_hs_dir and
    node_supports_v3_hsdir(); a relay whose ``pr`` line we don't know is
    given the benefit of the doubt rather than silently shrinking the ring.
    """
    if "HSDir" not in relay.flags or relay.ed_id is None:
        return False
    return not relay.protocols or relay.supports("HSDir", 2)


def responsible_hsdirs(
    netdir: NetDir,
    blinded_key: bytes,
    period_num: int,
    period_length: int,
    *,
    srv: bytes | None = None,
    relays: Iterable[Relay] | None = None,
    spread: int | None = None,
) -> list[Relay]:
    """The HSDirs to fetch ``blinded_key``'s descriptor from, in ring order.

    For each replica 1..``hsdir_n_replicas`` take the first
    ``hsdir_spread_fetch`` relays at or after the service index (wrapping),
    skipping relays already chosen for an earlier replica (§2.2.3; C tor
    hs_get_responsible_hsdirs()).  A client should try them in random order.
    ``srv`` defaults to :func:`fetch_srv` for the netdir; ``relays`` (default:
    every relay of the netdir) lets a caller exclude relays.  ``spread``: relays per
    replica (default the consensus ``hsdir_spread_fetch``; a service uploading passes
    ``hsdir_spread_store``).
    """
    if srv is None:
        tp = HsTimeParams(period_length=period_length, voting_interval=netdir.voting_interval)
        srv = fetch_srv(netdir, tp)
    n_replicas = netdir.param("hsdir_n_replicas", N_REPLICAS_DEFAULT, 1, 16)
    if spread is None:
        spread = netdir.param("hsdir_spread_fetch", SPREAD_FETCH_DEFAULT, 1, 128)

    ring = sorted(
        (
            (hs_relay_index(r.ed_id, srv, period_num, period_length), r)
            for r in (netdir.relays if relays is None else relays)
            if is_v3_hsdir(r) and r.ed_id is not None
        ),
        key=lambda entry: entry[0],
    )
    if not ring:
        return []
    indices = [idx for idx, _ in ring]
    chosen: list[Relay] = []
    seen: set[bytes] = set()
    for replica in range(1, n_replicas + 1):
        key = hs_service_index(blinded_key, replica, period_num, period_length)
        start = bisect.bisect_left(indices, key) % len(ring)
        i, added = start, 0
        while added < spread:
            relay = ring[i][1]
            if relay.rsa_id not in seen:
                seen.add(relay.rsa_id)
                chosen.append(relay)
                added += 1
            i = (i + 1) % len(ring)
            if i == start:
                break  # went round the whole ring
    return chosen
