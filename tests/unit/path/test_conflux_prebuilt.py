"""How many conflux sets the circuit manager keeps ready (C tor conflux_params_get_max_prebuilt)."""

from __future__ import annotations

import dataclasses

from path_netbuild import build_netdir, make_relay

from puretor.aio.circmgr import conflux_prebuilt_sets
from puretor.dir.netdir import NetDir, Relay

CONFLUX_PROTOCOLS = {
    "Conflux": frozenset({1}),
    "FlowCtrl": frozenset({1, 2}),
    "Relay": frozenset({1, 2, 3, 4}),
}


def exit_relay(n: int, *, conflux: bool, bad: bool = False) -> Relay:
    relay = make_relay(n, flags={"Exit", "BadExit"} if bad else {"Exit"})
    return dataclasses.replace(relay, protocols=dict(CONFLUX_PROTOCOLS) if conflux else {})


def net(capable: int, other: int, bad_capable: int = 0, **params: int) -> NetDir:
    relays = [exit_relay(i, conflux=True) for i in range(capable)]
    relays += [exit_relay(100 + i, conflux=False) for i in range(other)]
    relays += [exit_relay(200 + i, conflux=True, bad=True) for i in range(bad_capable)]
    return build_netdir(relays, params=params)


def test_max_prebuilt_sets_when_enough_exits_do_conflux() -> None:
    assert conflux_prebuilt_sets(net(7, 3)) == 3
    assert conflux_prebuilt_sets(net(7, 3, cfx_max_prebuilt_set=5)) == 5


def test_one_set_below_the_low_exit_threshold_and_none_without_exits() -> None:
    assert conflux_prebuilt_sets(net(5, 5)) == 1  # 50 % < 60 %
    assert conflux_prebuilt_sets(net(5, 5, cfx_low_exit_threshold=5000)) == 3
    assert conflux_prebuilt_sets(net(0, 4)) == 0
    # BadExits do not count, either way (C tor count_exit_with_conflux_support).
    assert conflux_prebuilt_sets(net(0, 4, bad_capable=6)) == 0
    assert conflux_prebuilt_sets(net(7, 3, bad_capable=10)) == 3


def test_cfx_enabled_is_not_its_business() -> None:
    """ConfluxEnabled 1 overrides a consensus cfx_enabled=0 (C tor conflux_is_enabled);
    the number of sets does not switch conflux off behind that option's back."""
    assert conflux_prebuilt_sets(net(7, 3, cfx_enabled=0)) == 3
