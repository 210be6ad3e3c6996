"""The sans-I/O onion-service client planner."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hs_testlib import relay

from puretor.dir.netdir import NetDir, Relay
from puretor.errors import OnionError
from puretor.hs.client import (
    descriptor_url,
    intro_points_in_order,
    introduce1_extensions,
    plan_descriptor_fetch,
    rp_link_specifiers,
)
from puretor.hs.keys import blind_public_key
from puretor.proto.relaymsg import LinkSpecifier

DATA = Path(__file__).parent / "data"
# Arti tor-netdoc hsdesc.rs test_data: TEST_DATA_2 is for this address (TEST_HSID_2),
# time period 19397 (valid at 2023-02-09T12:00:00Z), decryptable with TEST_SECKEY_2.
ADDR2 = "paozpdhgz2okvc6kgbxvh2bnfsmt4xergrtcl4obkhopyvwxkpjzvoad.onion"
SECKEY2 = bytes.fromhex("90F2D60F917F2423F0989CE9979639435A5B01CF7AB3E0A1B900BEB892BAE443")
BLIND2 = bytes.fromhex("706628758208395D461AA0F460A5E76E7B828C66B5E794768592B451302E961D")


def netdir(
    va: datetime, *, vi: int = 3600, relays: list[Relay] | None = None, **params: int
) -> NetDir:
    return NetDir(
        valid_after=va,
        fresh_until=va + timedelta(seconds=vi),
        valid_until=va + timedelta(seconds=3 * vi),
        voting_interval=vi,
        params=params,
        bandwidth_weights={},
        relays=tuple(relays if relays is not None else [relay(i) for i in range(30)]),
        shared_rand_current=b"\x01" * 32,
        shared_rand_previous=b"\x02" * 32,
    )


VA = datetime(2023, 2, 9, 12, tzinfo=UTC)


def test_plan_and_decode_arti_hsdesc2() -> None:
    nd = netdir(VA, cc_sendme_inc=31)
    plan = plan_descriptor_fetch(nd, "www." + ADDR2.upper(), rng=random.Random(1))
    assert (plan.period_num, plan.period_length) == (19397, 1440)
    assert plan.blinded_key == BLIND2
    assert plan.url == "/tor/hs/3/" + base64.b64encode(BLIND2).decode().rstrip("=")
    assert len(plan.url) == len("/tor/hs/3/") + 43
    assert len(plan.hsdirs) == 6
    desc = plan.decode(
        (DATA / "hsdesc2.txt").read_bytes(), now=VA, client_auth_key=SECKEY2, netdir=nd
    )
    assert len(desc.intro_points) == 3
    with pytest.raises(OnionError) as exc:
        plan.decode((DATA / "hsdesc2.txt").read_bytes(), now=VA, netdir=nd)
    assert exc.value.socks_code == 0xF4
    # a consensus that makes the flow-control line out of range (C tor: factor 2 of ours)
    with pytest.raises(OnionError):
        plan.decode(
            (DATA / "hsdesc2.txt").read_bytes(),
            now=VA,
            client_auth_key=SECKEY2,
            netdir=netdir(VA, cc_sendme_inc=100),
        )
    order = intro_points_in_order(desc, rng=random.Random(3))
    assert sorted(ip.auth_key for ip in order) == sorted(ip.auth_key for ip in desc.intro_points)
    first = order[0].auth_key
    assert first not in [
        ip.auth_key for ip in intro_points_in_order(desc, exclude_auth_keys={first})
    ]
    with pytest.raises(OnionError) as exc:
        intro_points_in_order(desc, exclude_auth_keys={ip.auth_key for ip in desc.intro_points})
    assert exc.value.socks_code == 0xF2
    assert introduce1_extensions(desc, nd, congestion_control=True) == [(1, b"")]
    assert introduce1_extensions(desc, nd, congestion_control=False) == []
    assert introduce1_extensions(desc, netdir(VA, cc_alg=0), congestion_control=True) == []


def test_plan_errors_and_exclusion() -> None:
    with pytest.raises(OnionError) as exc:
        plan_descriptor_fetch(netdir(VA), "nope.onion")
    assert exc.value.socks_code == 0xF6
    with pytest.raises(OnionError) as exc:
        plan_descriptor_fetch(netdir(VA, relays=[]), ADDR2)
    assert exc.value.socks_code == 0xF0
    nd = netdir(VA)
    full = plan_descriptor_fetch(nd, ADDR2)
    fewer = plan_descriptor_fetch(nd, ADDR2, exclude={full.hsdirs[0].rsa_id})
    assert full.hsdirs[0] not in fewer.hsdirs and len(fewer.hsdirs) == 5
    # random order, but the same set
    orders = {tuple(r.rsa_id for r in plan_descriptor_fetch(nd, ADDR2).hsdirs) for _ in range(20)}
    assert len(orders) > 1 and len({frozenset(o) for o in orders}) == 1


def test_testing_network_periods() -> None:
    # 20 s voting interval with TestingTorNetwork: 8-minute periods, 4-minute offset.
    va = datetime(2024, 1, 1, 0, 4, tzinfo=UTC)
    plan = plan_descriptor_fetch(netdir(va, vi=20), ADDR2, testing_network=True)
    assert plan.period_length == 8
    assert plan.period_num == (int(va.timestamp()) // 60 - 4) // 8
    identity = plan.identity_key
    assert plan.blinded_key == blind_public_key(identity, plan.period_num, 8)
    live = plan_descriptor_fetch(netdir(va, vi=20), ADDR2)
    assert live.period_length == 1440


def test_rp_link_specifiers_order() -> None:
    r = relay(7)
    specs = rp_link_specifiers(r)
    assert [s.type for s in specs] == [0, 2, 3]
    assert specs[0] == LinkSpecifier(0, bytes([10, 0, 0, 7, 0x23, 0x29]))
    assert specs[1].data == r.rsa_id and specs[2].data == r.ed_id
    import dataclasses

    with6 = dataclasses.replace(r, ipv6=("2001:db8::1", 9001))
    assert [s.type for s in rp_link_specifiers(with6)] == [0, 2, 3, 1]


def test_descriptor_url() -> None:
    assert descriptor_url(bytes(32)) == "/tor/hs/3/" + "A" * 43
