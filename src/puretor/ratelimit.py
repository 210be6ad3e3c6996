"""Rate limits for repeated log lines, as C tor's ``log_fn_ratelim`` (ratelim.c)."""

from __future__ import annotations


class RateLimit:
    """At most one event per ``interval`` seconds; `allow` takes the current time."""

    __slots__ = ("interval", "_next", "suppressed")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next: float | None = None
        self.suppressed = 0  # events refused since the last one allowed

    def allow(self, now: float) -> bool:
        if self._next is not None and now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.interval
        self.suppressed = 0
        return True
