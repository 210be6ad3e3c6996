"""Bootstrap progress and "Problem bootstrapping" lines, as C tor's control_bootstrap.c says them."""

from __future__ import annotations

import logging

from puretor.dir.bootstrap import PROBLEM_THRESHOLD, WARN_INTERVAL, BootstrapReporter
from puretor.dir.state import BootstrapPhase, BootstrapStatus
from puretor.ratelimit import RateLimit

AUTH = "7EA6EAD6FD83083C538F44038BBFA077587DD755"


def test_progress_only_forward_and_it_resets_the_problem_count() -> None:
    r = BootstrapReporter()
    assert r.progress(BootstrapStatus(5, BootstrapPhase.CONN))
    assert not r.progress(BootstrapStatus(5, BootstrapPhase.CONN))
    r.problem("Connection refused", "CONNECTREFUSED", 0.0)
    assert r.problems == 1
    assert r.progress(BootstrapStatus(10, BootstrapPhase.CONN_DONE))
    assert r.problems == 0
    assert r.last_message.startswith("NOTICE BOOTSTRAP PROGRESS=10 TAG=conn_done")


def test_unreachable_network_warns_at_once_in_c_tors_words() -> None:
    r = BootstrapReporter()
    r.progress(BootstrapStatus(5, BootstrapPhase.CONN))
    r.connection_failed("connect()ing with SSL state (No SSL object)")
    lines = r.problem(
        "Network is unreachable", "NOROUTE", 100.0, host_id=AUTH, host_addr="45.66.33.45:443"
    )
    assert [level for level, _ in lines] == [logging.WARNING] * 3
    assert lines[0][1] == (
        "Problem bootstrapping. Stuck at 5% (conn): Connecting to a relay. "
        "(Network is unreachable; NOROUTE; count 1; recommendation warn; "
        f"host {AUTH} at 45.66.33.45:443)"
    )
    assert lines[1][1] == "1 connections have failed:"
    assert lines[2][1] == " 1 connections died in state connect()ing with SSL state (No SSL object)"
    assert 'WARNING="Network is unreachable" REASON=NOROUTE COUNT=1' in r.last_message


def test_other_problems_warn_from_the_tenth_and_warnings_are_rate_limited() -> None:
    r = BootstrapReporter()
    r.progress(BootstrapStatus(5, BootstrapPhase.CONN))
    levels = [r.problem("Connection refused", "CONNECTREFUSED", float(i))[0][0] for i in range(12)]
    assert levels[: PROBLEM_THRESHOLD - 1] == [logging.INFO] * (PROBLEM_THRESHOLD - 1)
    assert levels[PROBLEM_THRESHOLD - 1] == logging.WARNING
    assert levels[PROBLEM_THRESHOLD:] == [logging.INFO] * 2  # said one second ago
    later = r.problem("Connection refused", "CONNECTREFUSED", 9.0 + WARN_INTERVAL)
    assert later[0][0] == logging.WARNING and "count 13" in later[0][1]


def test_nothing_to_say_once_bootstrapped() -> None:
    r = BootstrapReporter()
    r.progress(BootstrapStatus(100, BootstrapPhase.DONE))
    assert r.problem("Network is unreachable", "NOROUTE", 0.0) == []


def test_rate_limit() -> None:
    limit = RateLimit(5.0)
    assert limit.allow(0.0) and not limit.allow(4.9) and not limit.allow(1.0)
    assert limit.suppressed == 2
    assert limit.allow(5.0) and limit.suppressed == 0
