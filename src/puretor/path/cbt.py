"""Learned circuit build timeout (path-spec §2.4), sans-I/O.

C tor records how long circuits take to build, fits a Pareto distribution to
the times and abandons builds that take longer than its `cbtquantile` (80 %)
point.  A stuck relay then costs a second or two instead of the 60 s initial
timeout.  We follow the same fit: Xm from the histogram's most frequent bins,
alpha by maximum likelihood, timeout = Xm / (1 - q)^(1/alpha).

Differences from C tor, on purpose: we start fitting after fewer builds
(`min_builds`, default 20, where C tor waits for `cbtmincircs` = 100) and keep
a floor (`min_timeout`) well above loopback build times, so a busy machine's
scheduling jitter does not turn into spurious timeouts.
"""

from __future__ import annotations

import math
from collections import Counter, deque

INITIAL_TIMEOUT = 60.0  # cbtinitialtimeout
BIN_WIDTH = 0.010  # C tor's CBT_BIN_WIDTH: 10 ms
N_MODES = 10  # cbtnummodes
QUANTILE = 0.80  # cbtquantile
MAX_RECORDED = 1000  # cbtrecentcount-ish window of build times kept


class BuildTimeout:
    def __init__(
        self,
        *,
        min_builds: int = 20,
        min_timeout: float = 2.0,
        initial_timeout: float = INITIAL_TIMEOUT,
        max_timeout: float = INITIAL_TIMEOUT,
        quantile: float = QUANTILE,
    ) -> None:
        """``initial_timeout``: until enough builds were seen (C tor: CircuitBuildTimeout
        if set, else 60 s); ``max_timeout``: the most a learned timeout may be."""
        self.min_builds = min_builds
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.quantile = quantile
        self._times: deque[float] = deque(maxlen=MAX_RECORDED)
        self._timeout = initial_timeout
        self.timeouts = 0  # builds abandoned at the learned timeout
        self.xm = 0.0  # the last fit's parameters (BUILDTIMEOUT_SET), 0 before one
        self.alpha = 0.0

    def record_success(self, seconds: float) -> bool:
        """A circuit completed after ``seconds``; True if the timeout changed."""
        self._times.append(max(seconds, BIN_WIDTH / 2))
        if len(self._times) < self.min_builds:
            return False
        before = self._timeout
        self._timeout = self._fit()
        return self._timeout != before

    def to_state(self) -> dict[str, object]:
        """What a later run starts from: the recorded times (ms) and timeouts."""
        return {"build_times_ms": [round(t * 1000) for t in self._times], "timeouts": self.timeouts}

    def load_state(self, state: dict[str, object]) -> None:
        """Start from an earlier run's `to_state`; ValueError/TypeError if it is not one
        (nothing is changed then)."""
        if not isinstance(state, dict):
            raise ValueError("not an object")
        raw = state.get("build_times_ms")
        timeouts = state.get("timeouts", 0)
        if not isinstance(raw, list) or not isinstance(timeouts, int) or timeouts < 0:
            raise ValueError("not a list of build times")
        limit = self.max_timeout * 1000
        times = []
        for ms in raw[-MAX_RECORDED:]:
            if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 < ms <= limit:
                raise ValueError(f"build time {ms!r} out of range")
            times.append(ms / 1000)
        self._times.clear()
        self._times.extend(times)
        self.timeouts = timeouts
        if self.learned:
            self._timeout = self._fit()

    @property
    def recorded(self) -> int:
        return len(self._times)

    @property
    def timeout_rate(self) -> float:
        """Share of builds abandoned at the timeout."""
        total = len(self._times) + self.timeouts
        return self.timeouts / total if total else 0.0

    def record_timeout(self) -> None:
        self.timeouts += 1

    def timeout(self) -> float:
        """How long a new build may take before it is abandoned."""
        return self._timeout

    @property
    def learned(self) -> bool:
        return len(self._times) >= self.min_builds

    def _fit(self) -> float:
        times = list(self._times)
        bins = Counter(int(t / BIN_WIDTH) for t in times)
        # Xm: the weighted average of the most frequent bins' midpoints (C tor).
        modes = bins.most_common(N_MODES)
        total = sum(count for _, count in modes)
        xm = sum((b + 0.5) * BIN_WIDTH * count for b, count in modes) / total
        self.xm = xm
        logs = sum(math.log(t / xm) for t in times if t > xm)
        if logs <= 0:
            return self.min_timeout
        alpha = self.alpha = len(times) / logs
        fitted = xm / (1.0 - self.quantile) ** (1.0 / alpha)
        return min(max(fitted, self.min_timeout), self.max_timeout)
