"""Entry guards (guard-spec §4, A.1): sampling, primaries, retries, expiry, persistence."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from path_netbuild import (
    MIXED_WEIGHTS,
    build_netdir,
    chi2_test,
    expected_weight,
    make_relay,
    rsa_id,
    synthetic_network,
)

from puretor.dir.netdir import NetDir, Relay
from puretor.errors import NoPathError
from puretor.path.guards import (
    DAY,
    STATE_VERSION,
    CircGuardState,
    GuardManager,
    GuardParams,
    Reachable,
    is_possible_guard,
    retry_delay,
)

T0 = 1_700_000_000.0
MIN = 60.0
HOUR = 3600.0


def guard_net(n_guards: int, *, extra: list[Relay] | None = None, **kw: object) -> NetDir:
    relays = [make_relay(i, flags={"Guard"}, bw=1000 + 37 * i) for i in range(n_guards)]
    relays += [make_relay(1000 + i) for i in range(5)]
    return build_netdir(relays + (extra or []), **kw)  # type: ignore[arg-type]


def manager(netdir: NetDir, seed: int = 1, now: float = T0, **kw: object) -> GuardManager:
    mgr = GuardManager(rng=random.Random(seed), **kw)  # type: ignore[arg-type]
    mgr.set_netdir(netdir, now)
    return mgr


def without(netdir: NetDir, *ids: bytes) -> NetDir:
    return build_netdir(
        [r for r in netdir.relays if r.rsa_id not in ids], netdir.bandwidth_weights, netdir.params
    )


# -- sampling and primaries ----------------------------------------------------------------


def test_sample_size_and_primary_guards() -> None:
    netdir = guard_net(400)
    mgr = manager(netdir)
    primary = mgr.primary_guards(T0)
    sampled = mgr.sampled_guards()
    assert len(sampled) == 20  # MIN_FILTERED_SAMPLE: enough once 20 are usable
    assert primary == sampled[:3]  # nothing confirmed yet: sample order
    relay, usage = mgr.select_guard(T0)
    assert relay.rsa_id == primary[0]  # guard-n-primary-guards-to-use = 1
    assert usage.state is CircGuardState.USABLE_ON_COMPLETION
    assert all(is_possible_guard(netdir.by_rsa_id(i)) for i in sampled)


def test_sample_never_exceeds_its_maximum() -> None:
    # 200 guards ⇒ max(min(20 % of 200, 60), 20) = 40 sampled at most, even if all fail.
    mgr = manager(guard_net(200))
    now = T0
    for _ in range(200):
        try:
            _, usage = mgr.select_guard(now)
        except NoPathError:
            break
        mgr.record_failure(usage, now)
        now += 1
    assert len(mgr.sampled_guards()) == 40


def test_only_guard_flagged_stable_fast_v2dir_relays_are_sampled() -> None:
    no_v2dir = frozenset({"Running", "Valid", "Fast", "Stable"})
    extra = [make_relay(500, flags={"Guard"}, base=no_v2dir, bw=10**8),
             make_relay(501, flags={"Guard", "MiddleOnly"}, bw=10**8)]  # fmt: skip
    mgr = manager(guard_net(3, extra=extra))
    assert sorted(mgr.sampled_guards()) == sorted(rsa_id(i) for i in range(3))


def test_tiny_network_samples_everything_and_recovers_when_all_fail() -> None:
    mgr = manager(guard_net(4))
    assert len(mgr.sampled_guards()) == 4
    now = T0
    for _ in range(4):
        _, usage = mgr.select_guard(now)
        mgr.record_failure(usage, now)
    with pytest.raises(NoPathError, match="no usable entry guard"):
        mgr.select_guard(now)
    # guard-spec §4.6: every guard was marked for retry, so the next attempt works.
    relay, _ = mgr.select_guard(now)
    assert relay.rsa_id == mgr.primary_guards(now)[0]


def test_first_sampled_guard_follows_guard_weights() -> None:
    """χ² over 2000 fresh clients: the first sampled guard ∝ bandwidth × Wgg/Wgd (× Wgb)."""
    netdir = synthetic_network(200, seed=21, weights=MIXED_WEIGHTS)
    guards = [r for r in netdir.relays if is_possible_guard(r)]
    expected_w = {r.rsa_id: expected_weight(r, "guard", MIXED_WEIGHTS) for r in guards}
    total = sum(expected_w.values())
    expected = {k: v / total for k, v in expected_w.items()}
    counts: Counter[bytes] = Counter()
    rng = random.Random(99)
    for _ in range(2000):
        mgr = GuardManager(rng=rng)
        mgr.set_netdir(netdir, T0)
        counts[mgr.primary_guards(T0)[0]] += 1
    stat, dof, p = chi2_test(counts, expected, 2000)
    print(f"first sampled guard χ²={stat:.1f} dof={dof} p={p:.3f}")
    assert p > 0.001


def test_consensus_parameters_are_used() -> None:
    netdir = guard_net(
        100, params={"guard-n-primary-guards": 5, "guard-n-primary-guards-to-use": 2}
    )
    mgr = manager(netdir)
    primary = mgr.primary_guards(T0)
    assert len(primary) == 5
    seen = {mgr.select_guard(T0)[0].rsa_id for _ in range(200)}
    assert seen == set(primary[:2])


def test_no_consensus_means_no_guard() -> None:
    with pytest.raises(NoPathError, match="no consensus"):
        GuardManager().select_guard(T0)


# -- restrictions and directory guards ---------------------------------------------------------


def test_guard_avoids_the_exit_and_its_family() -> None:
    netdir = guard_net(50)
    mgr = manager(netdir)
    first, second = mgr.primary_guards(T0)[:2]
    a = netdir.by_rsa_id(first)
    assert a is not None
    exit_in_family = make_relay(
        900, flags={"Exit"}, family={"$" + a.fingerprint}, nickname="sibling"
    )
    a_with_family = make_relay(
        int.from_bytes(first[:4], "big"), flags={"Guard"}, family={"sibling"}, bw=a.bandwidth
    )
    netdir2 = build_netdir(
        [a_with_family if r.rsa_id == first else r for r in netdir.relays] + [exit_in_family]
    )
    mgr.set_netdir(netdir2, T0)
    relay, usage = mgr.select_guard(T0, avoid=[exit_in_family])
    assert relay.rsa_id == second
    assert usage.state is CircGuardState.USABLE_ON_COMPLETION
    assert mgr.select_guard(T0, avoid=[a_with_family])[0].rsa_id == second  # the guard itself
    assert mgr.select_guard(T0)[0].rsa_id == first


def test_conflux_legs_take_the_other_primary_guard_in_use() -> None:
    """prop 354: a conflux leg excludes the other legs' guards; it takes another of the
    primary guards in use (guard-n-primary-guards-to-use), and only when they are all
    taken the next primary."""
    netdir = guard_net(50, params={"guard-n-primary-guards-to-use": 2})
    mgr = manager(netdir)
    first, second, third = (netdir.by_rsa_id(i) for i in mgr.primary_guards(T0)[:3])
    assert first is not None and second is not None and third is not None
    for _ in range(20):
        relay, usage = mgr.select_guard(T0, exclude=[first])
        assert relay.rsa_id == second.rsa_id
        mgr.cancel(usage)
        relay, usage = mgr.select_guard(T0, exclude=[second])
        assert relay.rsa_id == first.rsa_id
        mgr.cancel(usage)
    relay, usage = mgr.select_guard(T0, exclude=[first, second])
    assert relay.rsa_id == third.rsa_id
    assert usage.state is CircGuardState.USABLE_ON_COMPLETION


def test_excluding_every_live_guard_does_not_reset_a_dead_one() -> None:
    """When only the other conflux legs' guards are left, that is no news about dead guards:
    NoPathError, and a guard known to be down stays down (the guard-spec §4.6 "all down,
    retry them all" reset would send the next circuit to it)."""
    netdir = guard_net(3, params={"guard-n-primary-guards-to-use": 2})
    mgr = manager(netdir)
    ids = mgr.primary_guards(T0)
    dead, a, b = (netdir.by_rsa_id(i) for i in ids)
    assert dead is not None and a is not None and b is not None
    relay, usage = mgr.select_guard(T0)
    while relay.rsa_id != dead.rsa_id:
        mgr.cancel(usage)
        relay, usage = mgr.select_guard(T0)
    mgr.record_failure(usage, T0)
    assert mgr.reachability(dead.rsa_id) is Reachable.NO
    with pytest.raises(NoPathError, match="other conflux legs"):
        mgr.select_guard(T0 + 1, exclude=[a, b])
    assert mgr.reachability(dead.rsa_id) is Reachable.NO


def test_directory_guards_use_the_first_three_primaries_and_need_no_md() -> None:
    netdir = guard_net(60)
    mgr = manager(netdir)
    primary = mgr.primary_guards(T0)
    assert {mgr.select_directory_guard(T0)[0].rsa_id for _ in range(300)} == set(primary)
    # Without a microdescriptor the first primary can serve directories but not circuits.
    n = int.from_bytes(primary[0][:4], "big")
    stripped = make_relay(n, flags={"Guard"}, has_md=False, bw=1000 + 37 * n)
    mgr.set_netdir(
        build_netdir([stripped if r.rsa_id == primary[0] else r for r in netdir.relays]), T0
    )
    assert mgr.select_guard(T0)[0].rsa_id == primary[1]
    assert primary[0] in {mgr.select_directory_guard(T0)[0].rsa_id for _ in range(100)}


# -- failures, retries, waiting circuits -------------------------------------------------------


def test_primary_failover_and_waiting_for_better_guards() -> None:
    mgr = manager(guard_net(100))
    a, b, c = mgr.primary_guards(T0)
    now = T0
    for g in (a, b, c):  # each primary works once (confirmed), then goes down
        relay, usage = mgr.select_guard(now)
        assert relay.rsa_id == g
        assert mgr.record_success(usage, now) is True
        mgr.record_failure(usage, now)  # ... and then it went down
    assert mgr.confirmed_guards() == [a, b, c]
    assert mgr.all_primary_down(now)
    relay, usage = mgr.select_guard(now)
    d = relay.rsa_id
    assert d not in (a, b, c) and d == mgr.sampled_guards()[3]
    assert usage.state is CircGuardState.USABLE_IF_NO_BETTER_GUARD
    # A second circuit does not pick the pending guard again but the next one.
    _, usage_e = mgr.select_guard(now)
    assert usage_e.rsa_id == mgr.sampled_guards()[4]
    now += 5
    assert mgr.record_success(usage, now) is False  # confirmed, but not primary
    assert usage.state is CircGuardState.WAITING_FOR_BETTER_GUARD
    assert mgr.confirmed_guards() == [a, b, c, d]
    # usage_e is still pending (< 15 s) but has lower priority than the confirmed d: no block.
    assert mgr.upgrade_waiting([usage, usage_e], now) == [usage]
    assert usage.state is CircGuardState.COMPLETE


def test_waiting_circuit_blocked_by_a_better_complete_one() -> None:
    mgr = manager(guard_net(100))
    now = T0
    usages = []
    for _ in range(3):
        _, u = mgr.select_guard(now)
        mgr.record_success(u, now)
        mgr.record_failure(u, now)
    for _ in range(2):
        _, u = mgr.select_guard(now)
        usages.append(u)
    d_usage, e_usage = usages
    mgr.record_success(e_usage, now)  # e confirmed first: higher priority than d
    mgr.record_success(d_usage, now)
    assert e_usage.state is d_usage.state is CircGuardState.WAITING_FOR_BETTER_GUARD
    e_usage.state = CircGuardState.COMPLETE  # pretend e was upgraded earlier
    assert mgr.upgrade_waiting([d_usage, e_usage], now) == []
    assert mgr.usage_expired(d_usage, now + 601)
    assert not mgr.usage_expired(d_usage, now + 599)


def test_retry_schedule_values() -> None:
    assert retry_delay(T0, T0, primary=True) == 10 * MIN
    assert retry_delay(T0, T0, primary=False) == 1 * HOUR
    assert retry_delay(T0, T0 + 6 * HOUR, primary=True) == 10 * MIN
    assert retry_delay(T0, T0 + 6 * HOUR + 1, primary=True) == 90 * MIN
    assert retry_delay(T0, T0 + 6 * HOUR + 1, primary=False) == 4 * HOUR
    assert retry_delay(T0, T0 + 4 * DAY + 1, primary=True) == 4 * HOUR
    assert retry_delay(T0, T0 + 4 * DAY + 1, primary=False) == 18 * HOUR
    assert retry_delay(T0, T0 + 7 * DAY + 1, primary=True) == 9 * HOUR
    assert retry_delay(T0, T0 + 70 * DAY, primary=False) == 36 * HOUR


def test_failed_primary_is_retried_after_ten_minutes() -> None:
    mgr = manager(guard_net(100))
    a, b, _c = mgr.primary_guards(T0)
    _, usage = mgr.select_guard(T0)
    mgr.record_failure(usage, T0)
    assert mgr.reachability(a) is Reachable.NO
    assert mgr.select_guard(T0 + 10 * MIN - 1)[0].rsa_id == b
    assert mgr.select_guard(T0 + 10 * MIN)[0].rsa_id == a
    assert mgr.reachability(a) is Reachable.UNKNOWN


def test_failing_primary_backs_off_after_six_hours() -> None:
    mgr = manager(guard_net(100))
    a, b, _c = mgr.primary_guards(T0)
    now = T0
    while now <= T0 + 6 * HOUR:  # keep failing every time it is retried
        relay, usage = mgr.select_guard(now)
        if relay.rsa_id == a:
            mgr.record_failure(usage, now)
            last_try = now
        now += MIN
    # Failing for over 6 h now: the next retry comes 90 minutes after the last attempt.
    assert mgr.select_guard(last_try + 89 * MIN)[0].rsa_id == b
    assert mgr.select_guard(last_try + 90 * MIN)[0].rsa_id == a


def test_non_primary_guards_retry_hourly() -> None:
    mgr = manager(guard_net(100))
    for _ in range(3):
        mgr.record_failure(mgr.select_guard(T0)[1], T0)
    relay_d, usage_d = mgr.select_guard(T0)
    mgr.record_failure(usage_d, T0)
    _, usage_e = mgr.select_guard(T0 + 1)
    assert usage_e.rsa_id != relay_d.rsa_id
    mgr.cancel(usage_e)
    mgr.record_failure(usage_e, T0 + 1)
    # At +59 min only the (10-minute) primaries came back.
    assert mgr.select_guard(T0 + 59 * MIN)[1].state is CircGuardState.USABLE_ON_COMPLETION
    assert mgr.reachability(relay_d.rsa_id) is Reachable.NO
    for _ in range(3):
        mgr.record_failure(mgr.select_guard(T0 + 59 * MIN)[1], T0 + 59 * MIN)
    assert mgr.select_guard(T0 + HOUR)[0].rsa_id == relay_d.rsa_id


def test_success_after_being_offline_retries_the_primaries() -> None:
    mgr = manager(guard_net(100))
    now = T0
    for _ in range(3):
        mgr.record_failure(mgr.select_guard(now)[1], now)
    _, usage = mgr.select_guard(now)
    # Never been online before (last_time_on_internet = -inf): primaries become retriable.
    mgr.record_success(usage, now + 1)
    assert not mgr.all_primary_down(now + 1)


def test_record_success_accepts_a_relay() -> None:
    mgr = manager(guard_net(30))
    relay, _ = mgr.select_guard(T0)
    assert mgr.record_success(relay, T0) is True
    assert mgr.confirmed_guards() == [relay.rsa_id]
    mgr.record_failure(relay, T0)
    assert mgr.reachability(relay.rsa_id) is Reachable.NO


# -- expiry --------------------------------------------------------------------------------------


def test_unlisted_guard_is_skipped_then_removed_after_twenty_days() -> None:
    netdir = guard_net(100)
    mgr = manager(netdir)
    a, b, c = mgr.primary_guards(T0)
    gone = without(netdir, a)
    mgr.set_netdir(gone, T0)
    assert a in mgr.sampled_guards()
    primary = mgr.primary_guards(T0)
    assert primary[:2] == [b, c] and a not in primary
    assert mgr.select_guard(T0)[0].rsa_id == b
    # Back in the next consensus: listed again, but primaries are sticky (guard-spec §4.4:
    # only a confirmed guard displaces one), so a waits in the sample.
    mgr.set_netdir(netdir, T0 + HOUR)
    assert mgr.primary_guards(T0 + HOUR) == primary
    mgr.set_netdir(gone, T0 + 2 * HOUR)
    # unlisted_since is randomised up to 4 days (20 % of 20) into the past.
    mgr.set_netdir(gone, T0 + 2 * HOUR + 15.9 * DAY)
    assert a in mgr.sampled_guards()
    mgr.set_netdir(gone, T0 + 2 * HOUR + 20 * DAY + 1)
    assert a not in mgr.sampled_guards()


def test_guard_lifetime_expiry_spares_recently_confirmed_guards() -> None:
    netdir = guard_net(100)
    mgr = manager(netdir)
    a, b, _ = mgr.primary_guards(T0)
    # sampled_on is randomised up to 12 days (lifetime / 10) into the past.
    mgr.set_netdir(netdir, T0 + 100 * DAY)
    _, usage = mgr.select_guard(T0 + 100 * DAY)
    mgr.record_success(usage, T0 + 100 * DAY)  # a confirmed on day ~88-100
    mgr.set_netdir(netdir, T0 + 107 * DAY)
    assert b in mgr.sampled_guards()
    mgr.set_netdir(netdir, T0 + 120 * DAY + 1)
    assert b not in mgr.sampled_guards()  # never confirmed: gone after GUARD_LIFETIME
    assert a in mgr.sampled_guards()  # confirmed < 60 days ago: kept
    mgr.set_netdir(netdir, T0 + 160 * DAY + 1)
    assert a not in mgr.sampled_guards()
    assert len(mgr.sampled_guards()) >= 20  # refilled


# -- persistence ----------------------------------------------------------------------------------


def test_same_guard_after_restart() -> None:
    netdir = guard_net(300)
    for confirm in (False, True):
        mgr = manager(netdir, seed=5)
        relay, usage = mgr.select_guard(T0)
        if confirm:
            mgr.record_success(usage, T0)
        text = json.dumps(mgr.to_json())
        restored, problem = GuardManager.from_json(json.loads(text), T0 + HOUR)
        assert problem is None
        restored.set_netdir(netdir, T0 + HOUR)
        assert restored.sampled_guards() == mgr.sampled_guards()
        assert restored.confirmed_guards() == mgr.confirmed_guards()
        assert restored.primary_guards(T0 + HOUR) == mgr.primary_guards(T0)
        assert restored.select_guard(T0 + HOUR)[0].rsa_id == relay.rsa_id


def test_state_format() -> None:
    mgr = manager(guard_net(30))
    version = mgr.state_version
    _, usage = mgr.select_guard(T0)
    mgr.record_success(usage, T0)
    assert mgr.state_version > version
    state = mgr.to_json()
    assert state["version"] == STATE_VERSION
    entry = state["guards"][0]
    assert entry["rsa_id"] == usage.rsa_id.hex().upper()
    assert entry["listed"] is True and entry["confirmed_idx"] == 0
    assert T0 - 12 * DAY <= entry["sampled_on"] <= T0
    assert T0 - 12 * DAY <= entry["confirmed_on"] <= T0


@pytest.mark.parametrize(
    "data",
    [None, "garbage", [], {"version": 99, "guards": []}, {"guards": []}, {"version": 1}],
)
def test_unreadable_state_starts_fresh_with_a_reason(data: object) -> None:
    mgr, problem = GuardManager.from_json(data, T0)
    assert problem and "fresh" in problem
    assert mgr.sampled_guards() == []
    mgr.set_netdir(guard_net(30), T0)
    assert mgr.select_guard(T0)


def test_malformed_entries_are_dropped_and_the_rest_kept() -> None:
    good = {"rsa_id": rsa_id(3).hex(), "nickname": "relay3", "sampled_on": T0 - DAY,
            "listed": True, "confirmed_on": T0 + 10 * DAY, "confirmed_idx": 7,
            "pb_use_attempts": "1.0"}  # fmt: skip
    data = {
        "version": 1,
        "guards": [
            {"rsa_id": "zz", "sampled_on": 1, "listed": True},
            good,
            {"rsa_id": rsa_id(4).hex(), "listed": True},  # no sampled_on
            {"rsa_id": rsa_id(5).hex(), "sampled_on": "yesterday", "listed": True},
            dict(good),  # duplicate
            "not an object",
        ],
    }
    mgr, problem = GuardManager.from_json(data, T0)
    assert problem is not None and problem.count("entry") == 5
    assert mgr.sampled_guards() == [rsa_id(3)]
    assert mgr.confirmed_guards() == [rsa_id(3)]
    saved = mgr.to_json()["guards"][0]
    assert saved["confirmed_on"] == T0  # a date in the future is clamped to now
    assert saved["confirmed_idx"] == 0  # renumbered densely
    assert saved["pb_use_attempts"] == "1.0"  # unknown keys survive (guard-spec A.5)


def test_fixed_params_override_the_consensus() -> None:
    netdir = guard_net(100, params={"guard-n-primary-guards": 5})
    mgr = manager(netdir, params=GuardParams(n_primary=2, min_filtered_sample=5))
    assert len(mgr.primary_guards(T0)) == 2
    assert len(mgr.sampled_guards()) == 5
