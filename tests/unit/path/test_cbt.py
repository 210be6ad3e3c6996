"""The learned circuit build timeout."""

from __future__ import annotations

import random

from puretor.path.cbt import INITIAL_TIMEOUT, BuildTimeout


def test_initial_timeout_until_enough_builds() -> None:
    cbt = BuildTimeout(min_builds=20)
    for _ in range(19):
        cbt.record_success(0.2)
    assert not cbt.learned and cbt.timeout() == INITIAL_TIMEOUT
    cbt.record_success(0.2)
    assert cbt.learned and cbt.timeout() < INITIAL_TIMEOUT


def test_pareto_fit_tracks_the_quantile() -> None:
    rng = random.Random(7)
    xm, alpha = 0.3, 2.5
    times = [xm / (1 - rng.random()) ** (1 / alpha) for _ in range(1000)]
    cbt = BuildTimeout(min_builds=20, min_timeout=0.0)
    for t in times:
        cbt.record_success(t)
    expected = xm / (1 - 0.8) ** (1 / alpha)  # the true 80th percentile
    assert 0.75 * expected < cbt.timeout() < 1.33 * expected
    share_over = sum(t > cbt.timeout() for t in times) / len(times)
    assert 0.1 < share_over < 0.3


def test_floor_and_ceiling() -> None:
    fast = BuildTimeout(min_builds=5, min_timeout=2.0)
    for _ in range(50):
        fast.record_success(0.01)
    assert fast.timeout() == 2.0
    slow = BuildTimeout(min_builds=5, max_timeout=60.0)
    for i in range(50):
        slow.record_success(100.0 + i)
    assert slow.timeout() == 60.0


def test_learned_times_survive_a_restart_and_bad_state_changes_nothing() -> None:
    import pytest

    first = BuildTimeout(min_builds=20)
    for i in range(30):
        first.record_success(0.2 + (i % 5) * 0.1)
    first.record_timeout()
    state = first.to_state()
    second = BuildTimeout(min_builds=20)
    second.load_state(state)
    assert second.learned and second.timeout() == first.timeout() and second.timeouts == 1
    fresh = BuildTimeout(min_builds=20)
    for bad in (
        {"build_times_ms": "x"},
        {"build_times_ms": [100, -5]},
        {"build_times_ms": [100, True]},
        {"build_times_ms": [10**9]},
        {"build_times_ms": [100], "timeouts": -1},
        {},
        [],
    ):
        with pytest.raises(ValueError):
            fresh.load_state(bad)  # type: ignore[arg-type]
        assert fresh.recorded == 0 and fresh.timeout() == 60.0
