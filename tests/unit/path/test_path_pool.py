"""Circuit policy with a fake clock: which circuit a stream uses, what is built ahead,
what is closed, hedging, conflux back-off and guard-spec §4.9 waiting (puretor.path.pool)."""

from __future__ import annotations

import random

from path_netbuild import ACCEPT_ALL, SSH_ONLY, WEB, build_netdir, make_relay

from puretor.path.cbt import BuildTimeout
from puretor.path.guards import CircGuardState, GuardManager
from puretor.path.pool import (
    HEDGE_DELAY_UNLEARNED,
    PREDICTED_PORT_LIFETIME,
    CircuitPool,
    ConfluxBackoff,
    GuardWaits,
    Slot,
    SlotState,
    hedge_avoids,
    hedge_delay,
)

T0 = 1000.0
WEB_EXIT = make_relay(1, flags={"Exit"}, policy=WEB)
ANY_EXIT = make_relay(2, flags={"Exit"}, policy=ACCEPT_ALL)
SSH_EXIT = make_relay(3, flags={"Exit"}, policy=SSH_ONLY)


def open_slot(pool: CircuitPool, exit_relay=WEB_EXIT, now: float = T0, **kw: object) -> Slot:  # type: ignore[no-untyped-def]
    slot = pool.add(exit_relay, now, **kw)  # type: ignore[arg-type]
    pool.opened(slot, object())
    return slot


# -- which circuit a stream uses -----------------------------------------------------------


def test_preference_order_ours_built_then_ours_building_then_clean() -> None:
    pool = CircuitPool(now=T0)
    clean_building = pool.add(WEB_EXIT, T0)
    clean_built = open_slot(pool)
    ours_building = pool.add(WEB_EXIT, T0)
    pool.claim(ours_building, "a")
    assert pool.find(80, "a", T0) is ours_building
    ours_built = open_slot(pool)
    pool.claim(ours_built, "a")
    assert pool.find(80, "a", T0) is ours_built
    # Another isolation key never gets a claimed circuit: a clean one, built first.
    assert pool.find(80, "b", T0) is clean_built
    pool.claim(clean_built, "b")
    assert pool.find(80, "c", T0) is clean_building


def test_conflux_set_preferred_among_equals() -> None:
    pool = CircuitPool(now=T0)
    open_slot(pool)
    linked = open_slot(pool, conflux=True)
    assert pool.find(80, "a", T0) is linked


def test_exit_policy_exclusion_and_closed_circuits() -> None:
    pool = CircuitPool(now=T0)
    web = open_slot(pool)
    assert pool.find(22, "a", T0) is None
    ssh = open_slot(pool, SSH_EXIT)
    assert pool.find(22, "a", T0) is ssh
    assert pool.find(80, "a", T0, exclude=frozenset({WEB_EXIT.rsa_id})) is None
    assert pool.find(80, "a", T0, is_open=lambda s: s is not web) is None
    pool.closed(web)
    assert web.state is SlotState.CLOSED and pool.find(80, "a", T0) is None


def test_dirty_circuit_takes_no_new_streams_after_max_dirtiness() -> None:
    pool = CircuitPool(max_dirtiness=600, now=T0)
    slot = open_slot(pool)
    pool.claim(slot, "a")
    assert slot.dirty_since is None  # claimed is not dirty: no stream yet
    pool.used(slot, T0 + 10)
    pool.used(slot, T0 + 500)  # dirty from the first stream on, not the last
    assert slot.dirty_since == T0 + 10
    assert pool.find(80, "a", T0 + 610) is slot
    assert pool.find(80, "a", T0 + 611) is None


def test_newnym_and_retired_circuits_take_no_new_streams() -> None:
    pool = CircuitPool(now=T0)
    old = open_slot(pool)
    pool.new_identity()
    assert pool.find(80, "a", T0) is None
    new = open_slot(pool)
    assert pool.find(80, "a", T0) is new
    pool.retire(new)
    assert pool.find(80, "a", T0) is None
    assert old.generation == 0


def test_guard_waiting_circuit_counts_as_building() -> None:
    pool = CircuitPool(now=T0)
    slot = pool.add(WEB_EXIT, T0)
    pool.opened(slot, object(), usable=False)
    assert slot.state is SlotState.GUARD_WAIT
    assert pool.find(80, "a", T0) is slot  # streams wait for it, as for a build


# -- expiry ----------------------------------------------------------------------------


def test_expire_closes_idle_dirty_stale_and_old_clean_circuits_only() -> None:
    pool = CircuitPool(max_dirtiness=600, clean_lifetime=3600, now=T0)
    dirty_idle = open_slot(pool)
    pool.claim(dirty_idle, "a")
    pool.used(dirty_idle, T0)
    dirty_busy = open_slot(pool)
    pool.claim(dirty_busy, "b")
    pool.used(dirty_busy, T0)
    fresh_clean = open_slot(pool, now=T0 + 500)
    old_clean = open_slot(pool)
    building = pool.add(WEB_EXIT, T0)
    busy = {dirty_busy}
    assert pool.expire(T0 + 600, lambda s: s not in busy) == []
    assert pool.expire(T0 + 601, lambda s: s not in busy) == [dirty_idle]
    assert pool.expire(T0 + 3601, lambda s: s not in busy) == [old_clean]
    assert set(pool.slots) == {dirty_busy, fresh_clean, building}
    pool.new_identity()
    assert pool.expire(T0 + 3602, lambda s: s not in busy) == [fresh_clean]
    busy.clear()
    assert pool.expire(T0 + 3603, lambda s: True) == [dirty_busy]
    assert pool.slots == [building]


# -- building ahead of need ------------------------------------------------------------


def launch_all(pool: CircuitPool, now: float) -> list[int]:
    launched = []
    while (port := pool.circuit_wanted(now)) is not None:
        pool.add(ANY_EXIT if port != 80 else WEB_EXIT, now)
        launched.append(port)
    return launched


def test_two_clean_circuits_per_predicted_port() -> None:
    pool = CircuitPool(now=T0)
    assert sorted(launch_all(pool, T0)) == [80, 80]  # two web exits also serve 443
    pool.note_port(22, T0 + 1)
    assert launch_all(pool, T0 + 1) == [22, 22]
    assert pool.circuit_wanted(T0 + 1) is None
    # A claimed circuit is not clean: replaced (the web exits' do not serve port 22).
    pool.claim(pool.slots[-1], "a")
    assert pool.circuit_wanted(T0 + 2) == 22


def test_predicted_ports_forgotten_after_an_hour_but_80_and_443() -> None:
    pool = CircuitPool(now=T0)
    pool.note_port(22, T0 + 1)
    pool.note_port(443, T0 + 10)
    assert pool.predicted_ports(T0 + 10) == [443, 22, 80]
    assert pool.predicted_ports(T0 + PREDICTED_PORT_LIFETIME + 2) == [443, 80]


def test_nothing_built_past_max_pending() -> None:
    pool = CircuitPool(max_pending=3, now=T0)
    pool.note_port(22, T0)
    assert len(launch_all(pool, T0)) == 3
    assert pool.pending_builds() == 3 and not pool.may_launch()
    pool.opened(pool.slots[0], object())
    assert pool.may_launch() and pool.pending_peak == 3


def test_conflux_sets_wanted_for_the_latest_port_first() -> None:
    pool = CircuitPool(now=T0)
    pool.note_port(443, T0 + 5)
    assert pool.conflux_set_wanted(T0 + 5, sets=2) == 443
    pool.add(ANY_EXIT, T0, conflux=True)
    pool.add(ANY_EXIT, T0, conflux=True)
    assert pool.conflux_set_wanted(T0 + 5, sets=2) is None
    # The clean sets count for every port their exit allows: no more ordinary circuits.
    assert pool.circuit_wanted(T0 + 5) is None


# -- hedging and back-off --------------------------------------------------------------


def test_hedge_delay_follows_the_learned_build_timeout() -> None:
    cbt = BuildTimeout(min_builds=20, min_timeout=0.5)
    assert hedge_delay(cbt) == HEDGE_DELAY_UNLEARNED
    rng = random.Random(1)
    for _ in range(40):
        cbt.record_success(0.3 + rng.random() * 0.2)
    assert cbt.learned and hedge_delay(cbt) == cbt.timeout() < HEDGE_DELAY_UNLEARNED


def test_hedge_avoids_the_relays_past_the_guard_of_the_slow_builds() -> None:
    pool = CircuitPool(now=T0)
    a, b = pool.add(WEB_EXIT, T0), pool.add(WEB_EXIT, T0)
    a.building_through = frozenset({b"m1", b"x1"})
    b.building_through = frozenset({b"m2", b"x1"})
    assert hedge_avoids([a, b]) == {b"m1", b"m2", b"x1"}


def test_conflux_backoff_doubles_and_resets() -> None:
    backoff = ConfluxBackoff()
    assert backoff.allows(T0)
    waits = [backoff.failed(T0) for _ in range(10)]
    assert waits[:4] == [5, 10, 20, 40] and waits[-1] == 600
    assert not backoff.allows(T0 + 599) and backoff.allows(T0 + 600)
    backoff.succeeded()
    assert backoff.failed(T0) == 5


def test_initial_build_timeout_is_the_configured_one_until_learned() -> None:
    cbt = BuildTimeout(initial_timeout=30, min_timeout=0.5)
    assert cbt.timeout() == 30
    for _ in range(20):
        cbt.record_success(0.4)
    assert cbt.timeout() < 30


# -- guard-spec §4.9: circuits waiting for a better guard ------------------------------


def guards_with_primaries_down(now: float) -> tuple[GuardManager, list[bytes]]:
    relays = [make_relay(i, flags={"Guard"}, bw=1000 + 37 * i) for i in range(40)]
    relays += [make_relay(1000 + i) for i in range(5)]
    mgr = GuardManager(rng=random.Random(3))
    mgr.set_netdir(build_netdir(relays), now)
    primaries = mgr.primary_guards(now)
    for _ in primaries:  # each primary worked once (confirmed), then went down
        _, usage = mgr.select_guard(now)
        mgr.record_success(usage, now)
        mgr.record_failure(usage, now)
    assert mgr.all_primary_down(now)
    return mgr, primaries


def test_circuit_through_lesser_guard_used_once_primaries_are_down() -> None:
    now = 1.7e9
    mgr, _ = guards_with_primaries_down(now)
    waits = GuardWaits(mgr)
    _, usage = mgr.select_guard(now)
    assert usage.state is CircGuardState.USABLE_IF_NO_BETTER_GUARD
    waits.building(usage)
    assert waits.built(usage, "circ-d", now + 1) is False  # not primary: it waits
    assert waits.waiting() == ["circ-d"]
    assert waits.settle(now + 1) == (["circ-d"], [])  # every primary is down: go
    assert waits.waiting() == []


def test_waiting_circuit_held_while_a_primary_is_worth_retrying_then_expires() -> None:
    now = 1.7e9
    mgr, primaries = guards_with_primaries_down(now)
    waits = GuardWaits(mgr)
    _, usage = mgr.select_guard(now)
    waits.building(usage)
    # Ten minutes later the first primary is due for a retry (guard-spec A.1): it might
    # work again, so the circuit through the lesser guard keeps waiting for it...
    later = now + 600 + 1
    assert waits.built(usage, "circ-d", later) is False
    assert not mgr.all_primary_down(later)
    assert waits.settle(later) == ([], [])
    # ... and a circuit through that primary is built meanwhile: it is used at once.
    relay, primary_usage = mgr.select_guard(later)
    assert relay.rsa_id == primaries[0]
    waits.building(primary_usage)
    assert waits.built(primary_usage, "circ-p", later + 1) is True
    assert waits.settle(later + 1) == ([], [])
    # The waiting one is closed after guard-nonprimary-guard-idle-timeout (10 min).
    assert waits.settle(later + 600) == ([], [])
    assert waits.settle(later + 602) == ([], ["circ-d"])
    assert waits.waiting() == []


def test_failed_builds_and_closed_circuits_are_forgotten() -> None:
    now = 1.7e9
    mgr, _ = guards_with_primaries_down(now)
    waits = GuardWaits(mgr)
    _, u1 = mgr.select_guard(now)
    _, u2 = mgr.select_guard(now)
    waits.building(u1)
    waits.building(u2)
    waits.failed(u1)
    waits.built(u2, "circ", now)
    waits.prune(lambda key: key != "circ")
    assert waits.waiting() == [] and waits.settle(now) == ([], [])
