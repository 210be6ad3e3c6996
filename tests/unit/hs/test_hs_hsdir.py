"""HSDir hash ring (rend-spec-v3 §2.2.3, §2.2.4.1, §2.3.1)."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime

from hs_testlib import relay
from hypothesis import given, settings
from hypothesis import strategies as st

from puretor.dir.netdir import NetDir, Relay
from puretor.hs.hsdir import (
    disaster_srv,
    fetch_srv,
    hs_relay_index,
    hs_service_index,
    in_period_between_tp_and_srv,
    responsible_hsdirs,
)
from puretor.hs.keys import HsTimeParams, unix_time


def ts(text: str) -> int:
    return unix_time(datetime.fromisoformat(text).replace(tzinfo=UTC))


def test_c_tor_index_vectors() -> None:
    # C tor src/test/test_hs_common.c test_hs_indexes: key = 32 × 0x42, SRV = 32 × 0x43,
    # period 42, length 1440 (the default).
    key, srv = b"\x42" * 32, b"\x43" * 32
    assert (
        hs_service_index(key, 1, 42, 1440).hex()
        == "37e5cbbd56a22823714f18f1623ece5983a0d64c78495a8cfab854245e5f9a8a"
    )
    assert (
        hs_relay_index(key, srv, 42, 1440).hex()
        == "db475361014a09965e7e5e4d4a25b8f8d4b8f16cb1d8a7e95eed50249cc1a2d5"
    )


def test_c_tor_disaster_srv() -> None:
    # C tor test_hs_common.c test_disaster_srv: period 1, length 1440 (0x5A0).
    expected = "F8A4948707653837FA44ABB5BBC75A12F6F101E7F8FAF699B9715F4965D3507D"
    assert disaster_srv(1, 1440).hex().upper() == expected
    raw = b"shared-random-disaster" + bytes.fromhex("00000000000005A00000000000000001")
    assert disaster_srv(1, 1440) == hashlib.sha3_256(raw).digest()


def test_c_tor_time_between_tp_and_srv() -> None:
    # C tor test_hs_common.c test_time_between_tp_and_srv (1 h voting interval).
    tp = HsTimeParams(1440, 3600)
    cases = {
        "1985-10-26 00:00:00": False,
        "1985-10-26 11:00:00": False,
        "1985-10-26 12:00:00": True,
        "1985-10-26 23:00:00": True,
        "1985-10-27 00:00:00": False,
    }
    for when, expected in cases.items():
        assert in_period_between_tp_and_srv(ts(when), tp) is expected, when


def test_20s_test_network_segments() -> None:
    # 20 s voting, TestingTorNetwork: SR runs of 8 min starting at multiples of 480 s,
    # periods of 8 min starting 4 min into each run.
    tp = HsTimeParams(8, 20)
    run = ts("2024-01-01 00:00:00")
    assert run % 480 == 0
    for offset in range(0, 480, 20):
        assert in_period_between_tp_and_srv(run + offset, tp) is (offset >= 240), offset


def netdir(relays: list[Relay], *, when: str = "2016-04-13 13:00:00", **kw: object) -> NetDir:
    va = datetime.fromisoformat(when).replace(tzinfo=UTC)
    return NetDir(
        valid_after=va,
        fresh_until=va.replace(hour=va.hour + 1),
        valid_until=va.replace(hour=va.hour + 3),
        voting_interval=3600,
        params=dict(kw.pop("params", {})),  # type: ignore[call-overload]
        bandwidth_weights={},
        relays=tuple(relays),
        **kw,  # type: ignore[arg-type]
    )


def test_fetch_srv_choice() -> None:
    cur, prev = b"\x01" * 32, b"\x02" * 32
    tp = HsTimeParams(1440, 3600)
    # 13:00 is after the period start (12:00) and before the next SRV (00:00): current.
    assert fetch_srv(netdir([], shared_rand_current=cur, shared_rand_previous=prev), tp) == cur
    # 01:00 is after a new SRV but before the new period: previous.
    nd = netdir([], when="2016-04-14 01:00:00", shared_rand_current=cur, shared_rand_previous=prev)
    assert fetch_srv(nd, tp) == prev
    # Missing SRV: the disaster SRV of the current period (16904 at 2016-04-14 01:00).
    nd = netdir([], when="2016-04-14 01:00:00", shared_rand_current=cur)
    assert fetch_srv(nd, tp) == disaster_srv(16904, 1440)


def reference_ring(
    relays: list[Relay], key: bytes, srv: bytes, n: int, spread: int, num: int, length: int
) -> list[bytes]:
    """Direct reading of §2.2.3, written differently from the module."""
    usable = [r for r in relays if "HSDir" in r.flags and r.ed_id is not None]
    ordered = sorted(usable, key=lambda r: hs_relay_index(r.ed_id or b"", srv, num, length))
    out: list[bytes] = []
    for replica in range(1, n + 1):
        idx = hs_service_index(key, replica, num, length)
        after = [r for r in ordered if hs_relay_index(r.ed_id or b"", srv, num, length) >= idx]
        before = [r for r in ordered if r not in after]
        picked = [r for r in after + before if r.rsa_id not in out][:spread]
        out += [r.rsa_id for r in picked]
    return out


@settings(max_examples=60, deadline=None)
@given(
    n_relays=st.integers(0, 12),
    key=st.binary(min_size=32, max_size=32),
    replicas=st.integers(1, 4),
    spread=st.integers(1, 5),
)
def test_ring_matches_reference(n_relays: int, key: bytes, replicas: int, spread: int) -> None:
    relays = [relay(i) for i in range(n_relays)] + [relay(100, hsdir=False), relay(101, ed=False)]
    srv = b"\x07" * 32
    nd = netdir(
        relays,
        params={"hsdir_n_replicas": replicas, "hsdir_spread_fetch": spread},
        shared_rand_current=srv,
    )
    got = responsible_hsdirs(nd, key, 16903, 1440)
    assert [r.rsa_id for r in got] == reference_ring(
        relays, key, srv, replicas, spread, 16903, 1440
    )
    assert len(got) == min(n_relays, replicas * spread)
    assert len({r.rsa_id for r in got}) == len(got)


def test_defaults_give_six_and_filter_non_hsdirs() -> None:
    relays = [relay(i) for i in range(20)]
    relays += [relay(50, hsdir=False), relay(51, ed=False)]
    relays.append(dataclasses.replace(relay(52), protocols={"HSDir": frozenset({1})}))
    relays.append(relay(53, protos=False))  # unknown protocols: kept
    nd = netdir(relays, shared_rand_current=b"\x09" * 32)
    got = responsible_hsdirs(nd, b"\x42" * 32, 16903, 1440)
    assert len(got) == 6
    names = {r.nickname for r in got}
    assert not names & {"r50", "r51", "r52"}
