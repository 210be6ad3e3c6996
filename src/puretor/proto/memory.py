"""What a client holds queued, against ``MaxMemInQueues`` (C tor's OOM handler), sans-I/O.

Three places hold cell data a client has not got rid of yet:

* stream data received for an application that is not reading (`StreamFlow.held`, on a
  congestion-controlled tunnel: the XON/XOFF buffer);
* a conflux set's out-of-order cells, waiting for the ones before them
  (`ConfluxSet.queued_bytes`);
* sealed cells waiting in a channel's `CircuitMux` for the TLS connection to take them.

Each adds and removes its bytes on one shared `QueueBudget` as it queues and drains them,
in batches (a run of cells, a flush), so the total is always known in O(1).  Once it
reaches the limit, `relieve` closes tunnels - the one whose queued data is oldest first,
as C tor's ``circuits_handle_oom`` - until the total is at most
`FRACTION_TO_RETAIN` of the limit.  Their streams end with an error; nothing else does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from puretor.proto.cells import CELL_LEN, DestroyReason

if TYPE_CHECKING:
    from puretor.proto.channel import Channel
    from puretor.proto.tunnel import Tunnel

# C tor's FRACTION_OF_DATA_TO_RETAIN_ON_OOM (circuitlist.c).
FRACTION_TO_RETAIN = 0.90


_MB = 1 << 20
_GB = 1 << 30
# C tor's compute_real_max_mem_in_queues (config.c), for a 64-bit client.
LOW_CLIENT_LIMIT = 64 * _MB  # below this C tor warns a client it may not work
_DEFAULT_MIN, _DEFAULT_MAX = _GB // 4, 8 * _GB


def choose_limit(configured: int | None, ram: int | None) -> tuple[int, str | None]:
    """The MaxMemInQueues to use and a warning, if any, as C tor: a configured value as
    it is (warning below 64 MB); unset (0), 3/4 of the machine's memory (2/5 from 8 GB
    on), between 256 MB and 8 GB; 8 GB when the memory size is unknown."""
    if configured:
        if configured < LOW_CLIENT_LIMIT:
            return configured, (
                "MaxMemInQueues is set to a low value; if your client doesn't work, "
                "this may be the reason why."
            )
        return configured, None
    if not ram:
        return _DEFAULT_MAX, None
    avail = ram // 5 * 2 if ram >= 8 * _GB else ram // 4 * 3
    return min(max(avail, _DEFAULT_MIN), _DEFAULT_MAX), None


class QueueBudget:
    """The bytes queued across every channel and tunnel of one client."""

    __slots__ = ("limit", "total", "peak", "ooms", "tunnels_closed", "bytes_removed")

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit  # MaxMemInQueues in bytes; 0: no limit
        self.total = 0
        self.peak = 0
        self.ooms = 0  # times the limit was reached
        self.tunnels_closed = 0
        self.bytes_removed = 0

    def add(self, nbytes: int) -> None:
        total = self.total + nbytes
        self.total = total
        if total > self.peak:
            self.peak = total

    def remove(self, nbytes: int) -> None:
        self.total -= nbytes

    @property
    def over_limit(self) -> bool:
        return 0 < self.limit <= self.total

    def stats(self) -> dict[str, int]:
        return {
            "queued_bytes": self.total,
            "queued_bytes_peak": self.peak,
            "max_mem_in_queues": self.limit,
            "oom_events": self.ooms,
            "oom_tunnels_closed": self.tunnels_closed,
            "oom_bytes_removed": self.bytes_removed,
        }


@dataclass(frozen=True, slots=True)
class Queued:
    """What one tunnel holds: ``nbytes`` queued, the oldest since ``since`` (its clock)."""

    key: Any
    nbytes: int
    since: float


def choose_victims(queued: Iterable[Queued], to_recover: int) -> list[Queued]:
    """The tunnels to close to free ``to_recover`` bytes: oldest queued data first (C tor
    sorts circuits by the age of their oldest queued item).  Tunnels holding nothing are
    never chosen: closing them would free nothing we count."""
    chosen: list[Queued] = []
    freed = 0
    for item in sorted((q for q in queued if q.nbytes > 0), key=lambda q: q.since):
        if freed >= to_recover:
            break
        chosen.append(item)
        freed += item.nbytes
    return chosen


def tunnel_queued(tunnel: Tunnel) -> Queued:
    """The bytes ``tunnel`` holds queued and when the oldest of them was queued."""
    nbytes = 0
    since = float("inf")
    for stream in [*tunnel.streams.streams.values(), *tunnel.streams.ended_holding]:
        flow = stream.flow
        if flow is not None and flow.held_bytes:
            nbytes += flow.held_bytes
            since = min(since, flow.held_since)
    cfx = tunnel.conflux
    if cfx is not None and cfx.queued_bytes:
        nbytes += cfx.queued_bytes
        since = min(since, cfx.queued_since)
    for circuit in tunnel.circuits:
        cells = circuit.channel.mux.queued_cells(circuit)
        if cells:
            nbytes += cells * CELL_LEN
            since = min(since, circuit.channel.mux.queued_since(circuit))
    return Queued(tunnel, nbytes, since)


@dataclass(frozen=True, slots=True)
class Relief:
    """What `relieve` did, for the log line."""

    total_before: int
    limit: int
    tunnels_closed: int
    bytes_removed: int
    tunnels_left: int


def relieve(budget: QueueBudget, channels: Sequence[Channel]) -> Relief | None:
    """Over the limit: close the tunnels with the oldest queued data until the total is
    at most `FRACTION_TO_RETAIN` of it.  None when under the limit."""
    if not budget.over_limit:
        return None
    before = budget.total
    to_recover = before - int(budget.limit * FRACTION_TO_RETAIN)
    tunnels: dict[Tunnel, None] = {}
    for channel in channels:
        for circuit in channel.circuits.values():
            if circuit.tunnel.closed_reason is None:  # a closing one frees its data anyway
                tunnels[circuit.tunnel] = None
    victims = choose_victims((tunnel_queued(t) for t in tunnels), to_recover)
    for victim in victims:
        tunnel: Tunnel = victim.key
        tunnel.destroy(
            DestroyReason.RESOURCELIMIT,
            f"MaxMemInQueues reached: {victim.nbytes} bytes queued on this circuit",
        )
    removed = before - budget.total
    budget.ooms += 1
    budget.tunnels_closed += len(victims)
    budget.bytes_removed += removed
    return Relief(before, budget.limit, len(victims), removed, len(tunnels) - len(victims))
