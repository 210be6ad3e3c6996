"""Path selection: weights, constraints and statistics (path-spec §2.2, spec-map §6)."""

from __future__ import annotations

import math
import random
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from path_netbuild import (
    ACCEPT_ALL,
    LIVE_WEIGHTS,
    MIXED_WEIGHTS,
    NO_SMTP,
    SSH_ONLY,
    WEB,
    build_netdir,
    chi2_sf,
    chi2_test,
    expected_weight,
    make_relay,
    rsa_id,
    synthetic_network,
)

from puretor.dir.netdir import REJECT_ALL, NetDir, Relay
from puretor.errors import NoPathError
from puretor.path import choose_path_with_guards
from puretor.path.guards import GuardManager
from puretor.path.relations import in_same_family, related
from puretor.path.select import LONG_LIVED_PORTS, PathRequest, PathSelector, Position

N_DRAWS = 3000
P_MIN = 0.001

# -- independent eligibility rules (spec-map §6.2) ---------------------------------------


def _basic(r: Relay, stable: bool) -> bool:
    return (
        {"Running", "Valid", "Fast"} <= r.flags and r.has_md and (not stable or "Stable" in r.flags)
    )


def exit_ok(r: Relay, port: int, stable: bool = False, ipv6: bool = False) -> bool:
    policy = r.policy6 if ipv6 else r.policy
    return (
        _basic(r, stable)
        and "BadExit" not in r.flags
        and "MiddleOnly" not in r.flags
        and policy.allows(port)
    )


def guard_ok(r: Relay, stable: bool = False) -> bool:
    return _basic(r, stable) and "Guard" in r.flags and "MiddleOnly" not in r.flags


def middle_ok(r: Relay, stable: bool = False) -> bool:
    return _basic(r, stable)


def normalise(weights: dict[bytes, float]) -> dict[bytes, float]:
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


# -- weights -------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [LIVE_WEIGHTS, MIXED_WEIGHTS], ids=["live", "mixed"])
def test_weight_table_matches_spec(weights: dict[str, int]) -> None:
    netdir = synthetic_network(300, seed=1, weights=weights)
    sel = PathSelector(netdir, rng=random.Random(0))
    scale = 10000 * 10000  # our integer weights carry W × Wxb without dividing by scale²
    for r in netdir.relays:
        for pos in Position:
            got = sel.weights.weight(r, pos)
            assert math.isclose(got, expected_weight(r, pos.value, weights) * scale), (r, pos)


def test_missing_weights_default_to_10000_and_negative_ones_are_ignored() -> None:
    relays = [make_relay(0, flags={"Guard"}, bw=100), make_relay(1, flags={"Exit"}, bw=300)]
    for weights in ({}, {"Wgg": -5, "Wee": 7}):
        sel = PathSelector(build_netdir(relays, weights), rng=random.Random(0))
        assert sel.weights.weight(relays[0], Position.GUARD) == 100 * 10000 * 10000
        assert sel.weights.weight(relays[1], Position.EXIT) == 300 * 10000 * 10000
    # Exit-only relays never weigh anything in the guard position.
    assert sel.weights.weight(relays[1], Position.GUARD) == 0


def test_bwweightscale_param_is_used() -> None:
    r = make_relay(0, flags={"Guard"}, bw=10, base=frozenset({"Running", "Valid"}))
    netdir = build_netdir([r], {"Wgg": 500}, params={"bwweightscale": 1000})
    assert PathSelector(netdir).weights.weight(r, Position.GUARD) == 10 * 500 * 1000


# -- χ² on simulated choices ----------------------------------------------------------------


@pytest.mark.parametrize("weights", [LIVE_WEIGHTS, MIXED_WEIGHTS], ids=["live", "mixed"])
def test_exit_choice_frequencies(weights: dict[str, int]) -> None:
    netdir = synthetic_network(400, seed=2, weights=weights)
    sel = PathSelector(netdir, rng=random.Random(12345))
    req = PathRequest(exit_port=443)
    counts = Counter(sel.choose_exit(req).rsa_id for _ in range(N_DRAWS))
    expected = normalise(
        {r.rsa_id: expected_weight(r, "exit", weights) for r in netdir.relays if exit_ok(r, 443)}
    )
    stat, dof, p = chi2_test(counts, expected, N_DRAWS)
    print(f"exit χ²={stat:.1f} dof={dof} p={p:.3f}")
    assert p > P_MIN


def _path_marginals(
    netdir: NetDir, weights: dict[str, int], port: int
) -> tuple[dict[bytes, float], dict[bytes, float], dict[bytes, float]]:
    """Exact marginal distributions of (guard, middle, exit) for exit → guard → middle
    selection on a network where only identical relays clash (distinct /16s, no families)."""
    E = {r.rsa_id: expected_weight(r, "exit", weights) for r in netdir.relays if exit_ok(r, port)}
    G = {r.rsa_id: expected_weight(r, "guard", weights) for r in netdir.relays if guard_ok(r)}
    M = {r.rsa_id: expected_weight(r, "middle", weights) for r in netdir.relays if middle_ok(r)}
    p_exit = normalise(E)
    WG, WM = sum(G.values()), sum(M.values())
    p_guard: dict[bytes, float] = dict.fromkeys(G, 0.0)
    total = 0.0
    by_exit: dict[bytes, float] = {}
    by_guard: dict[bytes, float] = {}
    for e, pe in p_exit.items():
        dg = WG - G.get(e, 0.0)
        for g, wg in G.items():
            if g == e or wg == 0:
                continue
            peg = pe * wg / dg
            p_guard[g] += peg
            q = peg / (WM - M.get(e, 0.0) - M.get(g, 0.0))
            total += q
            by_exit[e] = by_exit.get(e, 0.0) + q
            by_guard[g] = by_guard.get(g, 0.0) + q
    p_middle = {m: wm * (total - by_exit.get(m, 0.0) - by_guard.get(m, 0.0)) for m, wm in M.items()}
    return p_guard, p_middle, p_exit


@pytest.mark.parametrize("weights", [LIVE_WEIGHTS, MIXED_WEIGHTS], ids=["live", "mixed"])
def test_full_path_frequencies_per_position(weights: dict[str, int]) -> None:
    netdir = synthetic_network(160, seed=3, weights=weights)
    sel = PathSelector(netdir, rng=random.Random(2024))
    req = PathRequest(exit_port=80)
    counts: list[Counter[bytes]] = [Counter(), Counter(), Counter()]
    for _ in range(N_DRAWS):
        path = sel.choose_path(req)
        for i, relay in enumerate(path):
            counts[i][relay.rsa_id] += 1
    expected = _path_marginals(netdir, weights, 80)
    assert math.isclose(sum(expected[1].values()), 1.0, rel_tol=1e-9)
    for name, observed, probs in zip(("guard", "middle", "exit"), counts, expected, strict=True):
        stat, dof, p = chi2_test(observed, probs, N_DRAWS)
        print(f"{name} χ²={stat:.1f} dof={dof} p={p:.3f}")
        assert p > P_MIN, name


def test_directory_cache_frequencies() -> None:
    netdir = synthetic_network(300, seed=4, weights=MIXED_WEIGHTS)
    sel = PathSelector(netdir, rng=random.Random(7))
    counts = Counter(sel.choose_directory_cache().rsa_id for _ in range(N_DRAWS))
    expected = normalise(
        {
            r.rsa_id: expected_weight(r, "directory", MIXED_WEIGHTS)
            for r in netdir.relays
            if {"Running", "Valid", "V2Dir"} <= r.flags
        }
    )
    stat, dof, p = chi2_test(counts, expected, N_DRAWS)
    print(f"directory χ²={stat:.1f} dof={dof} p={p:.3f}")
    assert p > P_MIN


def test_rejection_fallback_keeps_the_distribution() -> None:
    """Excluding the relays that carry nearly all the weight forces the exact fallback."""
    heavy = [make_relay(i, flags={"Exit"}, bw=10**7, policy=ACCEPT_ALL) for i in range(5)]
    light = [make_relay(10 + i, flags={"Exit"}, bw=1 + i, policy=ACCEPT_ALL) for i in range(6)]
    netdir = build_netdir(heavy + light)
    sel = PathSelector(netdir, rng=random.Random(5))
    req = PathRequest(exit_port=80, exclude=frozenset(r.rsa_id for r in heavy))
    counts = Counter(sel.choose_exit(req).rsa_id for _ in range(N_DRAWS))
    expected = normalise({r.rsa_id: float(r.bandwidth) for r in light})
    stat, dof, p = chi2_test(counts, expected, N_DRAWS)
    assert p > P_MIN


def test_chi2_sf_matches_known_values() -> None:
    # Reference values (scipy.stats.chi2.sf): dof 1 at 3.841 → 0.05; dof 10 at 23.209 → 0.01.
    assert math.isclose(chi2_sf(3.841458820694124, 1), 0.05, rel_tol=1e-6)
    assert math.isclose(chi2_sf(23.209251158954356, 10), 0.01, rel_tol=1e-6)
    assert math.isclose(chi2_sf(100.0, 120), 0.9077349480, rel_tol=1e-8)
    # scipy.stats.chi2.sf(x, k) for these, written down once so that no test needs scipy.
    for x, k, sf in [
        (0.5, 3, 0.9188914116546758),
        (50.0, 40, 0.1335748340856504),
        (300.0, 250, 0.016518273157868715),
        (12.0, 2, 0.002478752176666357),
    ]:
        assert math.isclose(chi2_sf(x, k), sf, rel_tol=1e-9)


# -- position requirements --------------------------------------------------------------------


def test_exit_port_filtering_and_message() -> None:
    relays = [
        make_relay(0, flags={"Exit"}, policy=NO_SMTP),
        make_relay(1, flags={"Exit"}, policy=WEB),
        make_relay(2, flags={"Exit", "BadExit"}, policy=ACCEPT_ALL),
        make_relay(3, flags={"Guard"}),
        make_relay(4, flags={"Exit", "MiddleOnly"}, policy=ACCEPT_ALL),
    ]
    sel = PathSelector(build_netdir(relays), rng=random.Random(1))
    for _ in range(200):
        assert sel.choose_exit(PathRequest(exit_port=443)).nickname in {"relay0", "relay1"}
        assert sel.choose_exit(PathRequest(exit_port=8080)).nickname == "relay0"
    with pytest.raises(NoPathError, match="no exit allows port 25"):
        sel.choose_exit(PathRequest(exit_port=25))


def test_ipv6_targets_use_the_p6_summary() -> None:
    relays = [
        make_relay(0, flags={"Exit"}, policy=ACCEPT_ALL, policy6=REJECT_ALL),
        make_relay(1, flags={"Exit"}, policy=ACCEPT_ALL, policy6=WEB),
    ]
    sel = PathSelector(build_netdir(relays), rng=random.Random(1))
    assert {sel.choose_exit(PathRequest(exit_port=443, ipv6=True)).nickname for _ in range(50)} == {
        "relay1"
    }
    with pytest.raises(NoPathError, match="port 22 over IPv6"):
        sel.choose_exit(PathRequest(exit_port=22, ipv6=True))


def test_long_lived_ports_need_stable_relays() -> None:
    not_stable = frozenset({"Running", "Valid", "Fast", "V2Dir"})
    relays = [
        make_relay(0, flags={"Exit"}, policy=ACCEPT_ALL, base=not_stable, bw=10**6),
        make_relay(1, flags={"Exit"}, policy=ACCEPT_ALL),
        make_relay(2, flags={"Guard"}),
        make_relay(3, flags={"Guard"}, base=not_stable, bw=10**6),
        make_relay(4),
        make_relay(5, base=not_stable, bw=10**6),
    ]
    sel = PathSelector(build_netdir(relays), rng=random.Random(3))
    assert 22 in LONG_LIVED_PORTS and 6667 in LONG_LIVED_PORTS and 443 not in LONG_LIVED_PORTS
    for _ in range(100):
        path = sel.choose_path(PathRequest(exit_port=22))
        assert [r.nickname for r in path] == ["relay2", "relay4", "relay1"]
        assert sel.choose_path(PathRequest(exit_port=80, need_stable=True))[1].nickname == "relay4"
    # Port 443 is not long-lived: the heavy non-Stable exit is allowed (and nearly always wins).
    assert "relay0" in {sel.choose_exit(PathRequest(exit_port=443)).nickname for _ in range(20)}


def test_fast_md_running_valid_required_but_fast_can_be_waived() -> None:
    slow = frozenset({"Running", "Valid", "Stable", "V2Dir"})
    relays = [
        make_relay(0, flags={"Exit"}, policy=ACCEPT_ALL),
        make_relay(1, flags={"Guard"}),
        make_relay(2, base=slow),  # not Fast
        make_relay(3, has_md=False),
        make_relay(4, base=frozenset({"Valid", "Fast"})),  # not Running
        make_relay(5, base=frozenset({"Running", "Fast"})),  # not Valid
        make_relay(6),
    ]
    sel = PathSelector(build_netdir(relays), rng=random.Random(4))
    middles = {
        sel.choose_middle([relays[0], relays[1]], PathRequest()).nickname for _ in range(200)
    }
    assert middles == {"relay6"}
    relaxed = PathRequest(need_fast=False)
    middles = {sel.choose_middle([relays[0], relays[1]], relaxed).nickname for _ in range(300)}
    assert middles == {"relay2", "relay6"}


def test_exit_flag_not_required_unless_asked() -> None:
    relays = [make_relay(0, policy=SSH_ONLY), make_relay(1, flags={"Exit"}, policy=WEB)]
    netdir = build_netdir(relays)
    assert PathSelector(netdir).choose_exit(PathRequest(exit_port=22)).nickname == "relay0"
    with pytest.raises(NoPathError):
        PathSelector(netdir, require_exit_flag=True).choose_exit(PathRequest(exit_port=22))


def test_unknown_port_needs_an_exit_that_allows_something() -> None:
    relays = [make_relay(0), make_relay(1, flags={"Exit"}, policy=WEB)]
    sel = PathSelector(build_netdir(relays), rng=random.Random(0))
    assert sel.choose_exit(PathRequest(exit_port=None)).nickname == "relay1"
    with pytest.raises(NoPathError, match="no exit allows any port"):
        PathSelector(build_netdir(relays[:1])).choose_exit(PathRequest())


def test_exclude_and_middle_only() -> None:
    relays = [
        make_relay(0, flags={"Exit"}, policy=ACCEPT_ALL, bw=10**6),
        make_relay(1, flags={"Exit"}, policy=ACCEPT_ALL),
        make_relay(2, flags={"Guard", "MiddleOnly"}, bw=10**6),
        make_relay(3, flags={"Guard"}),
        make_relay(4),
    ]
    sel = PathSelector(build_netdir(relays), rng=random.Random(9))
    req = PathRequest(exit_port=80, exclude=frozenset({relays[0].rsa_id}))
    for _ in range(100):
        guard, _middle, exit_ = sel.choose_path(req)
        assert exit_.nickname == "relay1"
        assert guard.nickname == "relay3"  # MiddleOnly never guards


def test_internal_last_hop_is_weighted_like_a_middle() -> None:
    relays = [make_relay(i, bw=100 * (i + 1)) for i in range(5)]
    relays.append(make_relay(9, flags={"Guard"}))
    sel = PathSelector(build_netdir(relays, MIXED_WEIGHTS), rng=random.Random(11))
    # ``exclude`` keeps the only guard out of the other positions (it never applies to guards).
    req = PathRequest(internal=True, exclude=frozenset({relays[5].rsa_id}))
    counts = Counter(sel.choose_path(req)[2].rsa_id for _ in range(N_DRAWS))
    assert relays[5].rsa_id not in counts
    expected = normalise(
        {r.rsa_id: expected_weight(r, "middle", MIXED_WEIGHTS) for r in relays[:5]}
    )
    _stat, _dof, p = chi2_test(counts, expected, N_DRAWS)
    assert p > P_MIN
    with pytest.raises(ValueError):
        sel.choose_exit(req)


def test_directory_cache_needs_v2dir_but_no_microdescriptor() -> None:
    no_dir = frozenset({"Running", "Valid", "Fast", "Stable"})
    relays = [make_relay(0, base=no_dir, bw=10**6), make_relay(1, has_md=False)]
    sel = PathSelector(build_netdir(relays), rng=random.Random(0))
    assert {sel.choose_directory_cache().nickname for _ in range(50)} == {"relay1"}
    with pytest.raises(NoPathError):
        sel.choose_directory_cache(exclude=[relays[1].rsa_id])


def test_all_zero_weights_choose_uniformly() -> None:
    relays = [make_relay(i, bw=0, flags={"Exit"}, policy=ACCEPT_ALL) for i in range(4)]
    sel = PathSelector(build_netdir(relays), rng=random.Random(0))
    counts = Counter(sel.choose_exit(PathRequest(exit_port=80)).rsa_id for _ in range(2000))
    _stat, _dof, p = chi2_test(counts, {r.rsa_id: 0.25 for r in relays}, 2000)
    assert p > P_MIN


def test_no_path_errors_are_clear() -> None:
    relays = [make_relay(0, flags={"Exit", "Guard"}, policy=ACCEPT_ALL)]
    sel = PathSelector(build_netdir(relays))
    with pytest.raises(NoPathError, match="middle|guard|clash"):
        sel.choose_path(PathRequest(exit_port=80))
    with pytest.raises(NoPathError, match="no usable guard"):
        PathSelector(build_netdir([make_relay(1)])).choose_guard(PathRequest())


# -- families and subnets -----------------------------------------------------------------------


def test_family_rules() -> None:
    a = make_relay(1, nickname="Alpha", family={"$" + rsa_id(2).hex().upper()})
    b = make_relay(2, nickname="Beta", family={"alpha"})  # by (lower-cased) nickname
    c = make_relay(3, family={"$" + a.fingerprint})  # one-sided: c claims a, a does not claim c
    d = make_relay(4, family_ids={"ed25519:abc"})
    e = make_relay(5, family_ids={"ed25519:abc", "ed25519:zzz"})
    assert in_same_family(a, b) and in_same_family(b, a)
    assert not in_same_family(a, c) and not in_same_family(c, a)
    assert in_same_family(d, e) and not in_same_family(a, d)
    sel = PathSelector(build_netdir([a, b, c, d, e]))
    for x, y in [(a, b), (d, e), (a, a)]:
        assert sel.related(x, y) and related(x, y)
    for x, y in [(a, c), (a, d), (b, e)]:
        assert not sel.related(x, y) and not related(x, y)


def test_subnet_rules() -> None:
    a = make_relay(1, address="10.1.2.3", ipv6=("2001:db8:1::1", 9001))
    b = make_relay(2, address="10.1.200.9")  # same /16 as a
    c = make_relay(3, address="10.2.0.1", ipv6=("[2001:db8:ffff::5]", 9001))  # same /32 as a
    d = make_relay(4, address="10.3.0.1", ipv6=("2001:db9::1", 9001))
    sel = PathSelector(build_netdir([a, b, c, d]))
    loose = PathSelector(build_netdir([a, b, c, d]), enforce_distinct_subnets=False)
    assert sel.related(a, b) and sel.related(a, c)
    assert not sel.related(a, d) and not sel.related(b, c)
    assert not loose.related(a, b) and not loose.related(a, c)


def test_test_network_on_one_address_needs_enforce_off() -> None:
    relays = [
        make_relay(0, address="127.0.0.1", flags={"Exit"}, policy=ACCEPT_ALL),
        make_relay(1, address="127.0.0.1", flags={"Guard"}),
        make_relay(2, address="127.0.0.1"),
    ]
    netdir = build_netdir(relays)
    with pytest.raises(NoPathError):
        PathSelector(netdir).choose_path(PathRequest(exit_port=80))
    path = PathSelector(netdir, enforce_distinct_subnets=False).choose_path(
        PathRequest(exit_port=80)
    )
    assert [r.nickname for r in path] == ["relay1", "relay2", "relay0"]


def _violations(path: list[Relay], enforce: bool) -> list[str]:
    """Independent check of path-spec §2.2 constraints."""
    import ipaddress

    found = []
    for i, x in enumerate(path):
        for y in path[i + 1 :]:
            if x.rsa_id == y.rsa_id:
                found.append("same relay twice")
            fx = {"$" + x.fingerprint, x.nickname.lower()}
            fy = {"$" + y.fingerprint, y.nickname.lower()}
            if fx & y.family and fy & x.family:
                found.append(f"mutual family {x.nickname}/{y.nickname}")
            if x.family_ids & y.family_ids:
                found.append(f"family-ids {x.nickname}/{y.nickname}")
            if enforce:
                nx = ipaddress.ip_network(x.address + "/16", strict=False)
                if ipaddress.ip_address(y.address) in nx:
                    found.append(f"/16 {x.address} {y.address}")
                if x.ipv6 and y.ipv6:
                    n6 = ipaddress.ip_network(x.ipv6[0] + "/32", strict=False)
                    if ipaddress.ip_address(y.ipv6[0]) in n6:
                        found.append(f"/32 {x.ipv6[0]} {y.ipv6[0]}")
    return found


IPV6_CHOICES: list[tuple[str, int] | None] = [None, ("2001:db8::1", 1), ("2001:db9::2", 1)]
ROLE_FLAGS = {"guard": {"Guard"}, "exit": {"Exit"}, "both": {"Guard", "Exit"}, "none": set()}


@st.composite
def clashing_networks(draw: st.DrawFn) -> tuple[NetDir, list[Relay]]:
    """Small networks dense with families, family-ids and shared subnets."""
    n = draw(st.integers(4, 16))
    relays = []
    for i in range(n):
        role = draw(st.sampled_from(["guard", "exit", "both", "none"]))
        flags = ROLE_FLAGS[role]
        family = set()
        for j in draw(st.lists(st.integers(0, n - 1), max_size=3)):
            family.add(draw(st.sampled_from(["$" + rsa_id(j).hex().upper(), f"relay{j}"])))
        relays.append(
            make_relay(
                i,
                flags=flags,
                bw=draw(st.integers(0, 5000)),
                address=f"10.{draw(st.integers(0, 4))}.{i}.1",
                ipv6=draw(st.sampled_from([*IPV6_CHOICES, (f"2002:{i:x}::1", 1)])),
                family=family,
                family_ids=draw(st.sets(st.sampled_from(["k1", "k2", "k3"]), max_size=1)),
                policy=ACCEPT_ALL if "Exit" in flags else REJECT_ALL,
            )
        )
    return build_netdir(relays), relays


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    net=clashing_networks(),
    enforce=st.booleans(),
    internal=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_paths_never_violate_family_or_subnet_rules(
    net: tuple[NetDir, list[Relay]], enforce: bool, internal: bool, seed: int
) -> None:
    netdir, _ = net
    sel = PathSelector(netdir, enforce_distinct_subnets=enforce, rng=random.Random(seed))
    req = PathRequest(exit_port=None if internal else 443, internal=internal)
    for _ in range(10):
        try:
            path = sel.choose_path(req)
        except NoPathError:
            continue
        assert len(path) == 3
        assert not _violations(path, enforce), [r.nickname for r in path]
        assert "Guard" in path[0].flags


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=clashing_networks(), enforce=st.booleans(), seed=st.integers(0, 2**32))
def test_paths_with_guard_manager_never_violate_rules(
    net: tuple[NetDir, list[Relay]], enforce: bool, seed: int
) -> None:
    netdir, relays = net
    # Our tiny networks rarely have V2Dir+Stable+Fast guards in the GUARDS sense; they do here.
    rng = random.Random(seed)
    sel = PathSelector(netdir, enforce_distinct_subnets=enforce, rng=rng)
    guards = GuardManager(rng=rng, enforce_distinct_subnets=enforce)
    guards.set_netdir(netdir, now=1e9)
    for _ in range(5):
        try:
            path, _usage = choose_path_with_guards(sel, guards, PathRequest(exit_port=80), 1e9)
        except NoPathError:
            continue
        assert not _violations(path, enforce)


# -- scale -------------------------------------------------------------------------------------


def test_selection_is_fast_on_a_full_size_network() -> None:
    netdir = synthetic_network(8000, seed=8)
    sel = PathSelector(netdir, rng=random.Random(1))
    start = time.perf_counter()
    for i in range(2000):
        sel.choose_path(PathRequest(exit_port=(80, 443, 22)[i % 3]))
    elapsed = time.perf_counter() - start
    print(f"2000 paths over 8000 relays in {elapsed:.2f}s")
    assert elapsed < 10.0
