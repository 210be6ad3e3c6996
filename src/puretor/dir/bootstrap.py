"""Bootstrap progress and problems, reported as C tor reports them (control_bootstrap.c).

`BootstrapReporter` is told of progress and of problems (a connection that failed, a
document refused) and says what to log: ``Bootstrapped N% (tag): summary`` once per
step forward, and ``Problem bootstrapping. Stuck at N% (tag): summary. (warning;
REASON; count K; recommendation warn|ignore; host ID at ADDR)`` for problems.  As in C
tor, a problem is a warning when its reason says the network itself is unreachable,
or from the tenth problem since the last progress on; before that it is info.  Unlike
C tor, warnings are rate-limited (one per `WARN_INTERVAL`): a client offline for an
hour should not print hundreds of them.  Sans-I/O: times are passed in.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from puretor.dir.state import BootstrapPhase, BootstrapStatus
from puretor.ratelimit import RateLimit

PROBLEM_THRESHOLD = 10  # C tor BOOTSTRAP_PROBLEM_THRESHOLD
WARN_INTERVAL = 30.0
MAX_STATES_REPORTED = 10  # C tor MAX_REASONS_TO_REPORT
# C tor's orconn end reasons that warn at once (control_event_bootstrap_prob_or).
_WARN_AT_ONCE = frozenset({"NOROUTE"})


@dataclass
class BootstrapReporter:
    """Where bootstrapping stands, and what to log about it."""

    status: BootstrapStatus = field(
        default_factory=lambda: BootstrapStatus(0, BootstrapPhase.STARTING)
    )
    problems: int = 0  # since the last step forward
    last_message: str = ""  # the latest STATUS_CLIENT BOOTSTRAP text, for controllers
    _broken_states: Counter[str] = field(default_factory=Counter)
    _warnings: RateLimit = field(default_factory=lambda: RateLimit(WARN_INTERVAL))

    @property
    def done(self) -> bool:
        return self.status.percent >= 100

    def progress(self, status: BootstrapStatus) -> bool:
        """A new status; True if it is a step forward (to log and announce)."""
        if status.percent <= self.status.percent:
            return False
        self.status = status
        self.problems = 0
        self.last_message = (
            f"NOTICE BOOTSTRAP PROGRESS={status.percent} TAG={status.tag} "
            f'SUMMARY="{status.summary}"'
        )
        return True

    def connection_failed(self, state: str) -> None:
        """A connection to a relay died in ``state`` (C tor's broken-state counts)."""
        self._broken_states[state] += 1

    def problem(
        self,
        warning: str,
        reason: str,
        now: float,
        *,
        host_id: str = "?",
        host_addr: str = "?",
        warn: bool = False,
    ) -> list[tuple[int, str]]:
        """A failure that holds bootstrapping up: the (level, line) pairs to log."""
        if self.done:
            return []
        self.problems += 1
        warn = warn or reason in _WARN_AT_ONCE or self.problems >= PROBLEM_THRESHOLD
        if warn and not self._warnings.allow(now):
            warn = False  # said recently: the rest go to the info log
        level = logging.WARNING if warn else logging.INFO
        st = self.status
        recommendation = "warn" if warn else "ignore"
        lines = [
            (
                level,
                f"Problem bootstrapping. Stuck at {st.percent}% ({st.tag}): {st.summary}. "
                f"({warning}; {reason}; count {self.problems}; recommendation {recommendation}; "
                f"host {host_id} at {host_addr})",
            )
        ]
        lines += [(level, line) for line in self._broken_state_lines()]
        self.last_message = (
            f'WARN BOOTSTRAP PROGRESS={st.percent} TAG={st.tag} SUMMARY="{st.summary}" '
            f'WARNING="{warning}" REASON={reason} COUNT={self.problems} '
            f'RECOMMENDATION={recommendation} HOSTID="{host_id}" HOSTADDR="{host_addr}"'
        )
        return lines

    def _broken_state_lines(self) -> list[str]:
        if not self._broken_states:
            return []
        total = sum(self._broken_states.values())
        top = self._broken_states.most_common()
        head = ". Top reasons:" if len(top) > MAX_STATES_REPORTED else ":"
        lines = [f"{total} connections have failed{head}"]
        lines += [
            f" {count} connections died in state {state}"
            for state, count in top[:MAX_STATES_REPORTED]
        ]
        return lines
