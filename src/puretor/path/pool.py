"""Circuit policy, sans-I/O: which circuit carries a stream, which to build, which to close.

The asyncio circuit manager (`puretor.aio.circmgr`) builds and closes circuits; every
decision about them is made here, from the time it is given (``now``, seconds on a
monotonic clock; guard decisions use the guard manager's wall clock):

* `CircuitPool` - the exit circuits built or being built ("slots"), which one a stream
  may use (isolation, dirtiness, NEWNYM), which idle ones to close (MaxCircuitDirtiness,
  NewCircuitPeriod), and which to build ahead of need (path-spec §2.1.1 predicted ports,
  and C tor's prebuilt conflux sets);
* `hedge_delay`: when to start a second build of the same circuit;
* `ConfluxBackoff`: how long to wait after a conflux set failed to link;
* `GuardWaits`: circuits through a guard that is not (yet) good enough wait until the
  guard manager says so, or are closed (guard-spec §4.7-§4.9).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from puretor.dir.netdir import Relay
from puretor.path.cbt import BuildTimeout
from puretor.path.guards import CircGuardState, GuardManager, GuardUsage

# path-spec §2.1.1: keep clean circuits for the ports used in the last hour; 80 and 443
# are predicted from the start (C tor predicts port 80 at startup).
PREEMPTIVE_PORTS = (80, 443)
PREEMPTIVE_CLEAN_CIRCUITS = 2
PREDICTED_PORT_LIFETIME = 3600.0  # C tor's PredictedPortsRelevanceTime
IDLE_CLEAN_LIFETIME = 3600.0  # a clean circuit nobody used is closed after this
# Before enough builds are timed to learn a timeout, hedge a build after this long.
HEDGE_DELAY_UNLEARNED = 5.0
MAX_HEDGES = 3


class SlotState(enum.Enum):
    BUILDING = "building"
    GUARD_WAIT = "guard_wait"  # built, waiting for a better guard (guard-spec §4.9)
    OPEN = "open"
    CLOSED = "closed"


@dataclass(eq=False)
class Slot:
    """An exit circuit (or conflux set), built or being built, and who may use it."""

    exit: Relay
    created: float
    generation: int
    conflux: bool = False  # a conflux set (prop 329), or being built as one
    isolation: Hashable | None = None  # whose streams it carries once claimed
    claimed: bool = False
    state: SlotState = SlotState.BUILDING
    dirty_since: float | None = None  # when it first carried a stream
    last_used: float = 0.0
    # RSA ids beyond the guard of the build in progress: a hedge avoids them.
    building_through: frozenset[bytes] = frozenset()
    circuit: Any = None  # what the asyncio layer built (a TunnelHandle)

    def allows(self, port: int) -> bool:
        return self.exit.policy.allows(port)

    @property
    def live(self) -> bool:
        return self.state is not SlotState.CLOSED


class CircuitPool:
    """The exit circuits of one client and the rules for using, building and closing them."""

    def __init__(
        self,
        *,
        max_dirtiness: float = 600.0,
        max_pending: int = 32,
        clean_lifetime: float = IDLE_CLEAN_LIFETIME,
        now: float = 0.0,
    ) -> None:
        self.max_dirtiness = max_dirtiness  # MaxCircuitDirtiness
        self.max_pending = max_pending  # MaxClientCircuitsPending
        self.clean_lifetime = clean_lifetime
        self.slots: list[Slot] = []
        self.generation = 0  # NEWNYM bumps it: older circuits take no new streams
        self.ports_used: dict[int, float] = {p: now for p in PREEMPTIVE_PORTS}
        self.pending_peak = 0

    # -- the slots ---------------------------------------------------------------------

    def add(self, exit_relay: Relay, now: float, *, conflux: bool = False) -> Slot:
        """A build about to start."""
        slot = Slot(exit_relay, created=now, generation=self.generation, conflux=conflux)
        slot.last_used = now
        self.slots.append(slot)
        self.pending_peak = max(self.pending_peak, self.pending_builds())
        return slot

    def opened(self, slot: Slot, circuit: Any, *, usable: bool = True) -> None:
        """The build finished; ``usable`` False: it waits for a better guard first."""
        slot.circuit = circuit
        slot.state = SlotState.OPEN if usable else SlotState.GUARD_WAIT

    def closed(self, slot: Slot) -> None:
        slot.state = SlotState.CLOSED
        if slot in self.slots:
            self.slots.remove(slot)

    def pending_builds(self) -> int:
        """Builds in progress (what MaxClientCircuitsPending limits)."""
        return sum(1 for s in self.slots if s.state is SlotState.BUILDING)

    def may_launch(self) -> bool:
        return self.pending_builds() < self.max_pending

    def new_identity(self) -> None:
        """NEWNYM: no existing circuit takes new streams."""
        self.generation += 1

    def retire(self, slot: Slot) -> None:
        """A stream attempt on it failed (the exit did not answer): no new streams."""
        slot.generation = -1

    # -- which circuit carries a stream ------------------------------------------------

    def note_port(self, port: int, now: float) -> None:
        self.ports_used[port] = now

    def find(
        self,
        port: int,
        isolation: Hashable,
        now: float,
        exclude: frozenset[bytes] = frozenset(),
        is_open: Callable[[Slot], bool] = lambda s: True,
    ) -> Slot | None:
        """The best slot for a stream to ``port`` under ``isolation``, in C tor's order:
        ours and built, ours and building, clean and built, clean and building; among
        equals a conflux set first.  ``is_open``: whether a built slot's circuit is
        still up (the asyncio layer knows)."""
        best: Slot | None = None
        best_rank = 99
        for slot in self.slots:
            if slot.generation != self.generation or not slot.allows(port):
                continue
            if slot.exit.rsa_id in exclude or (slot.claimed and slot.isolation != isolation):
                continue
            if slot.state is SlotState.OPEN:
                if not is_open(slot) or self._too_dirty(slot, now):
                    continue
                built = 0
            elif slot.state is SlotState.BUILDING or slot.state is SlotState.GUARD_WAIT:
                built = 1
            else:
                continue
            rank = 2 * ((0 if slot.claimed else 2) + built) + (0 if slot.conflux else 1)
            if rank < best_rank:
                best, best_rank = slot, rank
        return best

    def claim(self, slot: Slot, isolation: Hashable) -> None:
        """``slot`` carries streams of ``isolation`` from now on (C tor: a circuit takes
        the isolation of its first stream)."""
        slot.isolation, slot.claimed = isolation, True

    def used(self, slot: Slot, now: float) -> None:
        """A stream was attached: the circuit is dirty from its first stream on."""
        slot.last_used = now
        if slot.dirty_since is None:
            slot.dirty_since = now

    def _too_dirty(self, slot: Slot, now: float) -> bool:
        return slot.dirty_since is not None and now - slot.dirty_since > self.max_dirtiness

    # -- upkeep --------------------------------------------------------------------------

    def expire(self, now: float, is_idle: Callable[[Slot], bool]) -> list[Slot]:
        """Every NewCircuitPeriod (C tor's circuit_expire_old_circs_as_needed): the idle
        circuits past MaxCircuitDirtiness, from before a NEWNYM, or clean and unused for
        `clean_lifetime`.  They leave the pool; the caller closes them."""
        gone = []
        for slot in list(self.slots):
            if slot.state is not SlotState.OPEN:
                continue
            if not is_idle(slot):
                continue
            stale = slot.generation != self.generation
            old_clean = not slot.claimed and now - slot.created > self.clean_lifetime
            if self._too_dirty(slot, now) or stale or old_clean:
                self.closed(slot)
                gone.append(slot)
        return gone

    def predicted_ports(self, now: float) -> list[int]:
        """Ports used in the last hour (and the always-predicted ones), most recent first."""
        for port, last in list(self.ports_used.items()):
            if now - last > PREDICTED_PORT_LIFETIME and port not in PREEMPTIVE_PORTS:
                del self.ports_used[port]
        return sorted(self.ports_used, key=self.ports_used.__getitem__, reverse=True)

    def clean_circuits(self, port: int | None = None, *, conflux: bool | None = None) -> int:
        """Unclaimed, live slots of this generation (allowing ``port``; conflux or not)."""
        return sum(
            1
            for s in self.slots
            if s.live
            and not s.claimed
            and s.generation == self.generation
            and (port is None or s.allows(port))
            and (conflux is None or s.conflux == conflux)
        )

    def conflux_set_wanted(self, now: float, sets: int) -> int | None:
        """The port to build a conflux set for ahead of need, if one is wanted (C tor's
        conflux_predict_new): ``sets`` clean sets, for the most recently used port.
        Ask again after each launch; ask before `circuit_wanted`, as a set counts for
        every port its exit allows."""
        ports = self.predicted_ports(now)
        if not ports or self._room() <= 0 or self.clean_circuits(conflux=True) >= sets:
            return None
        return ports[0]

    def circuit_wanted(self, now: float, skip: Iterable[int] = ()) -> int | None:
        """The port to build a circuit for ahead of need, if any (path-spec §2.1.1):
        `PREEMPTIVE_CLEAN_CIRCUITS` clean circuits per predicted port, never past
        MaxClientCircuitsPending.  Ask again after each launch; ``skip``: ports no
        circuit can be built for now."""
        if self._room() <= 0:
            return None
        skipped = set(skip)
        for port in self.predicted_ports(now):
            if port not in skipped and self.clean_circuits(port) < PREEMPTIVE_CLEAN_CIRCUITS:
                return port
        return None

    def _room(self) -> int:
        return self.max_pending - self.pending_builds()


def hedge_delay(cbt: BuildTimeout) -> float:
    """How long a build may run before a second one is started beside it: the learned
    build timeout, or `HEDGE_DELAY_UNLEARNED` until there is one."""
    return cbt.timeout() if cbt.learned else HEDGE_DELAY_UNLEARNED


def hedge_avoids(building: Iterable[Slot]) -> frozenset[bytes]:
    """The relays a hedge stays away from: those past the guard of the builds it backs up."""
    return frozenset().union(*(s.building_through for s in building))


class ConfluxBackoff:
    """After a conflux set failed to link, wait before prebuilding another: 5 s, doubling
    with each failure in a row, at most 10 minutes."""

    FIRST = 5.0
    MOST = 600.0

    def __init__(self) -> None:
        self.failures_in_a_row = 0
        self.retry_at = 0.0

    def allows(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, now: float) -> float:
        """Returns the wait."""
        self.failures_in_a_row += 1
        wait = min(self.MOST, self.FIRST * 2 ** (self.failures_in_a_row - 1))
        self.retry_at = now + wait
        return wait

    def succeeded(self) -> None:
        self.failures_in_a_row = 0


class GuardWaits:
    """The guard side of every live circuit (guard-spec §4.7-§4.9).

    A circuit built through a guard the manager only allowed "if no better guard" (a
    non-primary guard while primaries are unknown) is not used at once: it waits until
    `GuardManager.upgrade_waiting` says no better circuit is coming (then it is used),
    or `GuardManager.usage_expired` says it waited too long (then it is closed).  Keys
    are whatever identifies a circuit to the caller.
    """

    def __init__(self, guards: GuardManager) -> None:
        self.guards = guards
        self._usages: dict[GuardUsage, Hashable | None] = {}  # live, building ones: None

    def building(self, usage: GuardUsage) -> None:
        """A build through ``usage``'s guard started (it may block worse circuits)."""
        self._usages[usage] = None

    def failed(self, usage: GuardUsage) -> None:
        self._usages.pop(usage, None)

    def built(self, usage: GuardUsage, key: Hashable, now: float) -> bool:
        """The first hop worked.  True: use the circuit now; False: it waits."""
        self._usages[usage] = key
        return self.guards.record_success(usage, now)

    def closed(self, key: Hashable) -> None:
        for usage, k in list(self._usages.items()):
            if k == key:
                del self._usages[usage]

    def prune(self, alive: Callable[[Any], bool]) -> None:
        """Forget the circuits that closed."""
        for usage, key in list(self._usages.items()):
            if key is not None and not alive(key):
                del self._usages[usage]

    def waiting(self) -> list[Hashable]:
        return [
            k
            for u, k in self._usages.items()
            if k is not None and u.state is CircGuardState.WAITING_FOR_BETTER_GUARD
        ]

    def settle(self, now: float) -> tuple[list[Hashable], list[Hashable]]:
        """(circuits that may be used now, circuits to close) among the waiting ones."""
        upgraded = self.guards.upgrade_waiting(list(self._usages), now)
        usable = [k for u in upgraded if (k := self._usages.get(u)) is not None]
        expired = [
            k
            for u, k in list(self._usages.items())
            if k is not None and self.guards.usage_expired(u, now)
        ]
        for key in expired:
            self.closed(key)
        return usable, expired
