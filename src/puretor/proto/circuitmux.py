"""Which circuit's cells leave a channel next: C tor's circuitmux with its EWMA policy.

Every cell a circuit sends passes its channel's `CircuitMux`: cells are sealed as soon
as there is something to send and the windows allow it (as C tor packages stream data
when it arrives or a SENDME opens a window), and wait, sealed, in their circuit's queue.
The windows bound that queue: at most a congestion window of DATA per circuit.

When several circuits have something to send, the one with the lowest exponentially
weighted count of recently sent cells goes first (C tor's circuitmux_ewma,
proposal 156: ``CircuitPriorityHalflife`` / the consensus ``CircuitPriorityHalflifeMsec``,
30 s by default): a quiet, interactive circuit is served before a bulk one.  Cells of
one circuit always leave in the order they were sealed - relay crypto depends on it.
A half-life of 0 turns the priority off (round robin, C tor's "EWMA disabled").

Sans-I/O: `take` gets the current time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable

from puretor.proto.memory import QueueBudget

CELL_LEN = 514
# Cells a circuit may send in one turn before the others are considered again.
QUANTUM_CELLS = 32
DEFAULT_HALFLIFE = 30.0  # seconds: C tor's CircuitPriorityHalflifeMsec default
_RESCALE_AT = 40.0  # halflives: past this the weights are rescaled (floats stay exact)
_EPSILON = 0.00001  # C tor's EPSILON in circuitmux_ewma.c


def choose_halflife(configured: float, consensus_msec: int | None) -> tuple[float, str | None]:
    """The half-life to use, as C tor's get_circuit_priority_halflife: the torrc
    ``CircuitPriorityHalflife`` unless it is negative, else the consensus
    ``CircuitPriorityHalflifeMsec`` (30 s when absent).  A value too small to be a
    half-life (0 included: C tor no longer has a FIFO mode) falls back to 30 s, with
    the warning returned as the second element."""
    if configured >= -_EPSILON:
        halflife, source = configured, "CircuitPriorityHalflife in configuration"
    else:
        msec = DEFAULT_HALFLIFE * 1000 if consensus_msec is None else consensus_msec
        halflife = min(max(msec, 1), 2**31 - 1) / 1000
        source = "CircuitPriorityHalflifeMsec in consensus"
    if halflife < _EPSILON:
        return DEFAULT_HALFLIFE, (
            f"{source} is too small ({halflife:g}); using the default, {DEFAULT_HALFLIFE:g} seconds"
        )
    return halflife, None


class _Entry:
    __slots__ = ("key", "queue", "queued_cells", "weight", "since")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.queue: deque[bytes | bytearray] = deque()  # sealed cells, in order
        self.queued_cells = 0
        self.weight = 0.0  # EWMA of cells sent, in units of the current scale
        self.since = 0.0  # when the queue last went from empty to not (MaxMemInQueues)


class CircuitMux:
    """The per-channel cell scheduler."""

    def __init__(
        self, halflife: float = DEFAULT_HALFLIFE, queue_budget: QueueBudget | None = None
    ) -> None:
        self.halflife = halflife
        # Counts the circuits' queued cells against MaxMemInQueues (not channel cells).
        self.queue_budget = queue_budget if queue_budget is not None else QueueBudget()
        self._entries: dict[Hashable, _Entry] = {}
        self._active: dict[_Entry, None] = {}  # entries with something to send (ordered)
        self._channel_cells: deque[bytes | bytearray] = deque()  # circuit ID 0, first
        self._ref_time: float | None = None  # weights are relative to 2**(t - ref)/halflife
        self._turn = 0  # round robin when the priority is off

    def set_halflife(self, halflife: float) -> None:
        """A new half-life (a new consensus, as C tor's cmux_ewma_set_options): counts
        start over."""
        self.halflife = halflife
        self._ref_time = None
        self._turn = 0
        for entry in self._entries.values():
            entry.weight = 0.0

    # -- circuits ------------------------------------------------------------------------

    def attach(self, key: Hashable) -> None:
        if key not in self._entries:
            self._entries[key] = _Entry(key)

    def detach(self, key: Hashable, *, keep_queued: bool = False) -> None:
        """The circuit is gone.  Its sealed cells are dropped - or, with ``keep_queued``,
        sent first, ahead of the DESTROY the caller queues as a channel cell next."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._active.pop(entry, None)
        self.queue_budget.remove(entry.queued_cells * CELL_LEN)
        if keep_queued:
            self._channel_cells.extend(entry.queue)

    def queue(self, key: Hashable, cells: bytes | bytearray, now: float = 0.0) -> None:
        """Sealed, framed cells of circuit ``key``, to go after what it queued before."""
        entry = self._entries.get(key)
        if entry is None:
            return  # a circuit we already forgot
        if not entry.queued_cells:
            entry.since = now
        entry.queue.append(cells)
        n = len(cells) // CELL_LEN
        entry.queued_cells += n
        self.queue_budget.add(n * CELL_LEN)
        self._active[entry] = None

    def queue_channel_cell(self, cell: bytes | bytearray) -> None:
        """A cell not of any circuit (VERSIONS, NETINFO, DESTROY, PADDING): goes first."""
        self._channel_cells.append(cell)

    # -- output --------------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        return bool(self._channel_cells or self._active)

    def queued_cells(self, key: Hashable) -> int:
        entry = self._entries.get(key)
        return entry.queued_cells if entry is not None else 0

    def queued_since(self, key: Hashable) -> float:
        """When circuit ``key``'s queue last went from empty to not."""
        entry = self._entries.get(key)
        return entry.since if entry is not None else 0.0

    def take(self, now: float, max_cells: int | None = None) -> bytes:
        """Up to ``max_cells`` cells (None: all there is) in the order they should go."""
        active = self._active
        channel_cells = self._channel_cells
        if not active:  # the usual case while downloading: only SENDMEs... or nothing
            out_only = b"".join(channel_cells)
            channel_cells.clear()
            return out_only
        out: list[bytes | bytearray] = list(channel_cells)
        channel_cells.clear()
        budget = (1 << 62) if max_cells is None else max_cells - len(out)
        increment = self._increment(now)
        if len(active) == 1:
            entry = next(iter(active))
            if entry.queued_cells <= budget:  # one circuit, all of it fits: no turns
                out.extend(entry.queue)
                self.queue_budget.remove(entry.queued_cells * CELL_LEN)
                self._sent(entry, entry.queued_cells, increment)
                entry.queue.clear()
                entry.queued_cells = 0
                active.clear()
                return b"".join(out)
        while budget > 0 and active:
            entry = min(active, key=_weight) if len(active) > 1 else next(iter(active))
            quantum = min(budget, QUANTUM_CELLS) if len(active) > 1 else budget
            sent = 0
            queue = entry.queue
            while queue and sent < quantum:
                chunk = queue.popleft()
                n = len(chunk) // CELL_LEN
                out.append(chunk)
                sent += n
                entry.queued_cells -= n
            if not queue:
                active.pop(entry, None)
            budget -= sent
            self.queue_budget.remove(sent * CELL_LEN)
            self._sent(entry, sent, increment)
        return b"".join(out)

    def _sent(self, entry: _Entry, cells: int, increment: float) -> None:
        if self.halflife > 0:
            entry.weight += cells * increment
        else:
            self._turn += 1
            entry.weight = self._turn

    # -- EWMA ----------------------------------------------------------------------------

    def _increment(self, now: float) -> float:
        """What one cell sent now adds: 2**((now - ref) / halflife).  Growing the
        increment instead of decaying every weight is C tor's trick; the weights are
        rescaled before the numbers get large."""
        if self.halflife <= 0:
            return 0.0
        if self._ref_time is None:
            self._ref_time = now
        exponent = (now - self._ref_time) / self.halflife
        if exponent > _RESCALE_AT:
            factor = math.pow(2.0, -exponent)
            for entry in self._entries.values():
                entry.weight *= factor
            self._ref_time, exponent = now, 0.0
        return math.pow(2.0, exponent)


def _weight(entry: _Entry) -> float:
    return entry.weight
