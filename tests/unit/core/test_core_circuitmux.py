"""The per-channel cell scheduler (C tor's circuitmux with EWMA, proposal 156)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from puretor.proto.circuitmux import CELL_LEN, QUANTUM_CELLS, CircuitMux, choose_halflife


def cells(circ: int, first: int, n: int) -> bytes:
    """``n`` framed cells of circuit ``circ``, numbered from ``first``."""
    return b"".join(struct.pack(">IBI", circ, 3, first + i) + bytes(CELL_LEN - 9) for i in range(n))


def parse(out: bytes) -> list[tuple[int, int]]:
    assert len(out) % CELL_LEN == 0
    return [struct.unpack_from(">IxI", out, o) for o in range(0, len(out), CELL_LEN)]


def test_channel_cells_go_first_and_one_circuit_drains_in_order() -> None:
    mux = CircuitMux()
    mux.attach("a")
    mux.queue("a", cells(1, 0, 3))
    mux.queue("a", cells(1, 3, 2))
    mux.queue_channel_cell(cells(0, 99, 1))
    assert mux.has_output and mux.queued_cells("a") == 5
    assert parse(mux.take(0.0)) == [(0, 99)] + [(1, i) for i in range(5)]
    assert not mux.has_output and mux.queued_cells("a") == 0
    assert mux.take(0.0) == b""


def test_quiet_circuit_overtakes_a_bulk_one() -> None:
    """The point of EWMA: an interactive circuit's cell waits at most one quantum."""
    mux = CircuitMux(halflife=30.0)
    mux.attach("bulk")
    mux.attach("quiet")
    now = 100.0
    mux.queue("bulk", cells(1, 0, 2000))
    first = parse(mux.take(now, max_cells=256))  # bulk has been sending: weight grows
    assert {c for c, _ in first} == {1}
    mux.queue("quiet", cells(2, 0, 1))
    out = parse(mux.take(now + 0.01, max_cells=256))
    assert out.index((2, 0)) == 0, "the quiet circuit's cell goes before more bulk"


def test_fifo_without_priority_still_takes_turns() -> None:
    mux = CircuitMux(halflife=0)
    for name, circ in (("a", 1), ("b", 2)):
        mux.attach(name)
        for k in range(3):  # chunks as packaging makes them: a quantum at most
            mux.queue(name, cells(circ, k * QUANTUM_CELLS, QUANTUM_CELLS))
    out = parse(mux.take(0.0))
    runs = [out[i][0] for i in range(0, len(out), QUANTUM_CELLS)]
    assert runs == [1, 2, 1, 2, 1, 2]


def test_budget_is_respected_and_the_rest_waits() -> None:
    mux = CircuitMux()
    mux.attach("a")
    for i in range(10):
        mux.queue("a", cells(1, i * 10, 10))
    got = parse(mux.take(0.0, max_cells=35))
    assert len(got) == 40  # whole queued chunks: at most one chunk over the budget
    assert parse(mux.take(0.0)) == [(1, i) for i in range(40, 100)]


def test_detach_keeps_queued_cells_before_the_destroy_or_drops_them() -> None:
    mux = CircuitMux()
    mux.attach("a")
    mux.attach("b")
    mux.queue("a", cells(1, 0, 2))
    mux.queue("b", cells(2, 0, 2))
    mux.detach("a", keep_queued=True)
    mux.queue_channel_cell(cells(1, 77, 1))  # the DESTROY after them
    mux.detach("b")
    mux.queue("b", cells(2, 5, 1))  # a forgotten circuit's cells go nowhere
    assert parse(mux.take(0.0)) == [(1, 0), (1, 1), (1, 77)]


def test_weights_are_rescaled_without_changing_the_order() -> None:
    mux = CircuitMux(halflife=1.0)
    mux.attach("a")
    mux.attach("b")
    mux.queue("a", cells(1, 0, 1))
    mux.take(0.0)
    mux.queue("b", cells(2, 0, 10))
    mux.take(0.0)
    # 100 half-lives later (past the rescale point) b is still the heavier one.
    mux.queue("a", cells(1, 1, 1))
    mux.queue("b", cells(2, 10, 1))
    assert parse(mux.take(100.0, max_cells=1)) == [(1, 1)]


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 40), st.integers(0, 300)),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([0.0, 0.05, 30.0]),
)
def test_every_cell_leaves_once_and_each_circuit_in_order(
    ops: list[tuple[int, int, int]], halflife: float
) -> None:
    mux = CircuitMux(halflife=halflife)
    sent = {c: 0 for c in range(4)}
    for c in range(4):
        mux.attach(c)
    out: list[tuple[int, int]] = []
    now = 0.0
    for circ, n, budget in ops:
        mux.queue(circ, cells(circ + 1, sent[circ], n))
        sent[circ] += n
        now += 0.01
        out += parse(mux.take(now, max_cells=budget or None))
    out += parse(mux.take(now))
    for c in range(4):
        assert [i for circ, i in out if circ == c + 1] == list(range(sent[c]))


def test_halflife_from_torrc_or_consensus_as_c_tor() -> None:
    assert choose_halflife(-1.0, None) == (30.0, None)
    assert choose_halflife(-1.0, 5000) == (5.0, None)
    assert choose_halflife(2.5, 5000) == (2.5, None)
    halflife, warning = choose_halflife(0.0, 5000)  # C tor has no FIFO mode any more
    assert halflife == 30.0 and warning is not None and "too small" in warning
    assert choose_halflife(-1.0, 0)[0] == 0.001  # consensus minimum: 1 msec
