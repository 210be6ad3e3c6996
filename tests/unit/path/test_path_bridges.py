"""Bridges as guards (GuardManager.set_bridges): C tor's "bridges" guard selection."""

from __future__ import annotations

import dataclasses
import random

from path_netbuild import build_netdir, make_relay

from puretor.dir.netdir import Relay
from puretor.dir.routerdesc import BRIDGE_FLAGS
from puretor.path.guards import GuardManager

T0 = 1_700_000_000.0


def _bridge(n: int) -> Relay:
    # Not in the consensus; flags as routerdesc.bridge_relay gives them.
    relay = make_relay(5000 + n, address=f"127.{12 + n}.0.1", nickname=f"bridge{n}")
    return dataclasses.replace(relay, flags=BRIDGE_FLAGS)


def test_only_bridges_are_chosen_and_persisted() -> None:
    netdir = build_netdir([make_relay(i, flags={"Guard", "Exit"}) for i in range(30)])
    bridges = [_bridge(0), _bridge(1)]
    mgr = GuardManager(rng=random.Random(1))
    mgr.set_bridges(bridges, T0)
    mgr.set_netdir(netdir, T0)
    bridge_ids = {b.rsa_id for b in bridges}
    for _ in range(50):
        relay, usage = mgr.select_guard(T0)
        assert relay.rsa_id in bridge_ids
        mgr.cancel(usage)
    assert set(mgr.sampled_guards()) == bridge_ids
    state = mgr.to_json()
    restored, problem = GuardManager.from_json(state, T0)
    assert problem is None and set(restored.sampled_guards()) == bridge_ids


def test_a_bridge_without_descriptor_is_not_usable() -> None:
    netdir = build_netdir([make_relay(i, flags={"Guard"}) for i in range(10)])
    b0, b1 = _bridge(0), _bridge(1)
    mgr = GuardManager(rng=random.Random(2))
    mgr.set_bridges([b0, b1], T0)
    mgr.set_netdir(netdir, T0)
    mgr.set_bridges([b1], T0 + 1)  # b0's descriptor is gone: unlisted, never chosen
    for _ in range(20):
        relay, usage = mgr.select_guard(T0 + 2)
        assert relay.rsa_id == b1.rsa_id
        mgr.cancel(usage)
