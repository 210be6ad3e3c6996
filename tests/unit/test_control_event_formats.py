"""The newer control-port events as control-spec text, and when the library emits them:
CIRC_BW, GUARD, NETWORK_LIVENESS, BUILDTIMEOUT_SET, CIRC_MINOR PURPOSE_CHANGED."""

from __future__ import annotations

import re

from puretor.aio.observe import Observer
from puretor.app.control.formats import event_text
from puretor.client import (
    BuildTimeoutEvent,
    CircuitBandwidthEvent,
    CircuitEvent,
    GuardEvent,
    NetworkLivenessEvent,
    RelayRef,
)
from puretor.path.cbt import BuildTimeout

FP = "A" * 40


def test_circ_bw_guard_and_liveness_text() -> None:
    name, text = event_text(CircuitBandwidthEvent(7, 5140, 1028)) or ("", "")
    assert name == "CIRC_BW"
    assert re.fullmatch(r"ID=7 READ=5140 WRITTEN=1028 TIME=\d{4}-\d\d-\d\dT[\d:]{8}\.\d{6}", text)
    assert event_text(GuardEvent(RelayRef(FP, "g1"), "DROPPED")) == (
        "GUARD",
        f"ENTRY ${FP}~g1 DROPPED",
    )
    assert event_text(NetworkLivenessEvent(False)) == ("NETWORK_LIVENESS", "DOWN")


def test_buildtimeout_set_as_c_tor_prints_it() -> None:
    ev = BuildTimeoutEvent(120, 1.5, 0.3125, 2.5, 0.8, 0.05)
    assert event_text(ev) == (
        "BUILDTIMEOUT_SET",
        "COMPUTED TOTAL_TIMES=120 TIMEOUT_MS=1500 XM=312 ALPHA=2.500000 "
        "CUTOFF_QUANTILE=0.800000 TIMEOUT_RATE=0.050000 CLOSE_MS=1500 CLOSE_RATE=0.050000",
    )


def test_purpose_changed_is_a_minor_event_and_keeps_the_state() -> None:
    observer = Observer()
    seen: list[object] = []
    observer.add_listener(seen.append, (CircuitEvent,))
    observer.emit(CircuitEvent(3, "BUILT", (RelayRef(FP),), "CONTROLLER"))
    observer.emit(
        CircuitEvent(3, "PURPOSE_CHANGED", (RelayRef(FP),), "GENERAL", old_purpose="CONTROLLER")
    )
    assert observer.circuits[3].status == "BUILT" and observer.circuits[3].purpose == "GENERAL"
    name, text = event_text(seen[-1]) or ("", "")
    assert name == "CIRC_MINOR"
    assert text.startswith(f"3 PURPOSE_CHANGED ${FP} PURPOSE=GENERAL") and text.endswith(
        "OLD_PURPOSE=CONTROLLER"
    )


def test_liveness_reports_only_changes() -> None:
    observer = Observer()
    seen: list[object] = []
    observer.add_listener(seen.append, (NetworkLivenessEvent,))
    for up in (True, True, False, False, True):
        observer.liveness(up)
    assert seen == [
        NetworkLivenessEvent(True),
        NetworkLivenessEvent(False),
        NetworkLivenessEvent(True),
    ]


def test_build_timeout_reports_a_changed_fit() -> None:
    cbt = BuildTimeout(min_builds=20, min_timeout=0.01)
    changed = [cbt.record_success(0.1 + (i % 7) * 0.05) for i in range(40)]
    assert not any(changed[:19]) and changed[19]
    assert cbt.xm > 0 and cbt.alpha > 0 and cbt.recorded == 40
    cbt.record_timeout()
    assert cbt.timeout_rate == 1 / 41


def test_clock_skew_from_an_authority_is_a_status_general_warning() -> None:
    from puretor.aio.channel import ChannelManager, ChannelTarget
    from puretor.client import GeneralStatusEvent

    chanmgr = ChannelManager()
    authority = ChannelTarget("127.1.0.1", 9001, b"\x01" * 20, nickname="auth1")
    relay = ChannelTarget("127.4.0.1", 9001, b"\x02" * 20, nickname="relay")
    chanmgr.trusted_ids = frozenset({authority.rsa_id})
    seen: list[object] = []
    chanmgr.reactor.observer.add_listener(seen.append, (GeneralStatusEvent,))
    chanmgr._check_clock(-1800.0, authority)  # within an hour: nothing
    chanmgr._check_clock(-7200.0, relay)  # not trusted: only logged
    chanmgr._check_clock(-7200.0, authority)  # their clock is behind: ours is ahead
    assert seen == [
        GeneralStatusEvent(
            "WARN", "CLOCK_SKEW", (("SKEW", "7200"), ("SOURCE", "OR:127.1.0.1:9001"))
        )
    ]
    assert event_text(seen[0]) == (
        "STATUS_GENERAL",
        "WARN CLOCK_SKEW SKEW=7200 SOURCE=OR:127.1.0.1:9001",
    )
