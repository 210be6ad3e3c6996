"""MaxMemInQueues in the core: what is counted as queued, and the OOM handler's choice.

The hostile exit is the fake relay flooding DATA past the XOFF we send (congestion
control has no window on the client side that would stop it).  The asyncio reactor
checks the budget once per pass; here the test does, after each read, as it would.
"""

from __future__ import annotations

import itertools

import pytest

from fakes.relay import FakeRelay, FakeRelayConfig, build_circuit, deliver_events, open_channel
from fakes.sink import RecordingSink
from puretor.config import TorConfig
from puretor.config.values import parse_memunit
from puretor.errors import ConfigError
from puretor.proto.cells import DestroyReason
from puretor.proto.channel import Channel, ChannelState
from puretor.proto.circuit import CircuitState
from puretor.proto.congestion import CCParams
from puretor.proto.memory import (
    FRACTION_TO_RETAIN,
    QueueBudget,
    Queued,
    choose_limit,
    choose_victims,
    relieve,
    tunnel_queued,
)
from puretor.proto.relaymsg import EndReason
from puretor.proto.tunnel import Tunnel

KB = 1024
MB = 1024 * KB
GB = 1024 * MB
CC = CCParams()


def _setup(
    config: FakeRelayConfig, budget: QueueBudget, params: CCParams | None = CC
) -> tuple[FakeRelay, Channel, Tunnel]:
    fake = FakeRelay(config)
    channel = open_channel(fake, queue_budget=budget)
    tunnel = build_circuit(channel, fake, 3, congestion_control=params, sendme_accept_min_version=1)
    tunnel.clock = itertools.count(1000.0, 0.001).__next__  # XOFF needs the grace to pass
    return fake, channel, tunnel


def _exchange(channel: Channel, fake: FakeRelay, budget: QueueBudget, rounds: int = 10_000) -> int:
    """Move bytes both ways in 16 KiB reads, running the OOM check after each read as the
    reactor does; returns the most the budget counted right after a check."""
    most = 0
    t = fake.now
    for _ in range(rounds):
        deliver_events(channel.events)
        moved = False
        out = channel.data_to_send(t)
        if out:
            fake.receive_data(out)
            moved = True
        back = fake.take_output()
        for i in range(0, len(back), 16 * KB):
            moved = True
            channel.receive_data(back[i : i + 16 * KB], t)
            relieve(budget, [channel])
            deliver_events(channel.events)
            most = max(most, budget.total)
        if not moved:
            return most
    raise AssertionError("still busy")


# -- the choice --------------------------------------------------------------------------


def test_oldest_queued_data_goes_first_until_enough_is_freed() -> None:
    queued = [Queued("new", 900, 30.0), Queued("old", 100, 10.0), Queued("mid", 500, 20.0)]
    assert [q.key for q in choose_victims(queued, 50)] == ["old"]
    assert [q.key for q in choose_victims(queued, 101)] == ["old", "mid"]
    assert [q.key for q in choose_victims(queued, 10_000)] == ["old", "mid", "new"]
    assert choose_victims(queued, 0) == []
    # A tunnel holding nothing frees nothing: never chosen.
    assert choose_victims([Queued("empty", 0, 0.0), Queued("x", 10, 5.0)], 5)[0].key == "x"


def test_limit_as_c_tor_computes_it() -> None:
    assert choose_limit(None, 4 * GB) == (3 * GB, None)  # 3/4 of the memory
    assert choose_limit(None, 16 * GB) == (16 * GB // 5 * 2, None)  # 2/5 from 8 GB
    assert choose_limit(None, 64 * GB) == (8 * GB, None)  # at most 8 GB
    assert choose_limit(None, 128 * MB) == (256 * MB, None)  # at least 256 MB
    assert choose_limit(None, None) == (8 * GB, None)  # unknown memory size
    assert choose_limit(512 * MB, 1 * GB) == (512 * MB, None)  # configured: as it is
    limit, warning = choose_limit(2 * MB, 1 * GB)
    assert limit == 2 * MB and warning is not None and "low value" in warning


def test_torrc_values() -> None:
    assert parse_memunit("512 MB") == 512 * MB
    assert parse_memunit("1.5 GBytes") == 3 * GB // 2
    assert parse_memunit("100 KBytes") == 100 * KB
    assert parse_memunit("65536") == parse_memunit("65536 bytes") == 65536
    assert parse_memunit("8 mbits") == MB
    assert TorConfig.from_options(MaxMemInQueues="64 MB").max_mem_in_queues == 64 * MB
    assert TorConfig.from_options(MaxMemInQueues="0").max_mem_in_queues is None  # default
    assert TorConfig.from_options(MaxMemInCellQueues="2 GB").max_mem_in_queues == 2 * GB
    with pytest.raises(ConfigError, match="MaxMemInQueues"):
        TorConfig.from_options(MaxMemInQueues="12 parsecs")


# -- what is counted -----------------------------------------------------------------------


def test_held_data_is_counted_and_released_when_the_reader_resumes() -> None:
    budget = QueueBudget()
    fake, channel, tunnel = _setup(FakeRelayConfig(source_ports={80: 2 * MB}), budget)
    sink = RecordingSink()
    stream = tunnel.open_stream(sink, "big.example", 80)
    sink.on_data = lambda _d: stream.pause_delivery()
    _exchange(channel, fake, budget)
    assert stream.flow is not None and stream.flow.held_bytes > CC.xoff_client
    assert budget.total == stream.flow.held_bytes == tunnel_queued(tunnel).nbytes
    sink.on_data = None
    stream.resume_delivery()
    deliver_events(channel.events)
    assert budget.total == 0
    _exchange(channel, fake, budget)
    assert len(sink.data) == 2 * MB and budget.total == 0 and budget.peak > CC.xoff_client


def test_cells_waiting_in_the_channel_are_counted_until_taken() -> None:
    budget = QueueBudget()
    fake, channel, tunnel = _setup(FakeRelayConfig(discard_ports={9}), budget, params=None)
    stream = tunnel.open_stream(RecordingSink(), "up.example", 9)
    _exchange(channel, fake, budget)
    assert budget.total == 0
    stream.write(b"x" * (100 * 498))
    assert budget.total == 100 * 514 and tunnel_queued(tunnel).nbytes == 100 * 514
    channel.data_to_send(fake.now, 30)  # whole batches of cells: 32 here
    left = channel.mux.queued_cells(tunnel.circuit)
    assert 0 < left < 100 and budget.total == left * 514
    channel.data_to_send(fake.now)
    assert budget.total == 0
    stream.write(b"y" * (10 * 498))
    tunnel.destroy(0, "test")  # the queued cells go out before DESTROY, uncounted
    assert budget.total == 0


# -- the hostile exit ------------------------------------------------------------------------


def test_exit_flooding_past_xoff_is_cut_off_by_the_limit() -> None:
    """The exit ignores our XOFF and keeps sending to a reader that stopped: past the
    limit the OOM handler closes that circuit (its streams end with an error), the queued
    data is gone, and a circuit holding nothing is left alone."""
    limit = 2 * MB
    budget = QueueBudget(limit)
    # A generous overrun allowance: the protocol check must not be what stops it.
    params = CC.replace(overrun_cells=20_000)
    fake, channel, hostile = _setup(
        FakeRelayConfig(source_ports={80: 40 * MB}, cc_ignore_xoff=True, cc_cwnd_cap=2000),
        budget,
        params,
    )
    quiet = build_circuit(channel, fake, 3, congestion_control=params, sendme_accept_min_version=1)
    bystander = RecordingSink()
    quiet.open_stream(bystander, "quiet.example", 7)
    sink, sibling = RecordingSink(), RecordingSink()
    stream = hostile.open_stream(sink, "big.example", 80)
    hostile.open_stream(sibling, "other.example", 7)
    stream.pause_delivery()
    most = _exchange(channel, fake, budget)
    assert hostile.state is CircuitState.CLOSED
    reason = hostile.closed_reason
    assert reason is not None and reason.reason == DestroyReason.RESOURCELIMIT
    assert "MaxMemInQueues" in reason.message
    assert stream.flow is not None and stream.flow.xoffs_sent == 1  # it was told to stop
    # After each check the total was back under the limit; the close freed it all.
    assert most < limit and budget.peak < limit + 16 * KB + 2000 * 514
    assert budget.total == 0 and budget.ooms == 1 and budget.tunnels_closed == 1
    assert budget.bytes_removed >= budget.peak - limit * FRACTION_TO_RETAIN
    # Its streams ended with an error; the channel and the other circuit carry on.
    assert sink.end_reason == EndReason.DESTROY and sibling.end_reason == EndReason.DESTROY
    assert bystander.ended == [] and quiet.state is CircuitState.OPEN
    assert channel.state is ChannelState.OPEN


def test_under_the_limit_nothing_is_closed() -> None:
    budget = QueueBudget(64 * MB)
    fake, channel, tunnel = _setup(FakeRelayConfig(source_ports={80: MB}), budget)
    sink = RecordingSink()
    stream = tunnel.open_stream(sink, "big.example", 80)
    stream.pause_delivery()
    _exchange(channel, fake, budget)
    assert relieve(budget, [channel]) is None
    assert tunnel.state is CircuitState.OPEN and budget.ooms == 0 and budget.total > 0


def _held_then_ended(budget: QueueBudget) -> tuple[FakeRelay, Channel, Tunnel, RecordingSink]:
    """A paused reader's stream holding data when the exit ENDs it (the END waits)."""
    fake, channel, tunnel = _setup(
        FakeRelayConfig(source_ports={80: 400 * KB}, end_after_source=False), budget
    )
    sink = RecordingSink()
    stream = tunnel.open_stream(sink, "big.example", 80)
    sink.on_data = lambda _d: stream.pause_delivery()
    _exchange(channel, fake, budget)
    fake.exit_end_stream(tunnel.circ_id, stream.stream_id)
    _exchange(channel, fake, budget)
    assert stream.stream_id not in tunnel.streams and sink.ended == []  # END deferred
    assert stream in tunnel.streams.ended_holding and budget.total > 0
    return fake, channel, tunnel, sink


def test_data_held_after_the_end_is_released_when_the_application_goes() -> None:
    budget = QueueBudget()
    _fake, _channel, tunnel, _sink = _held_then_ended(budget)
    assert tunnel_queued(tunnel).nbytes == budget.total  # still counted, and still visible
    stream = next(iter(tunnel.streams.ended_holding))
    stream.discard_received()  # what the transport does when the application closes it
    assert budget.total == 0 and not tunnel.streams.ended_holding


def test_closing_for_the_limit_drops_data_held_after_the_end() -> None:
    budget = QueueBudget()
    _fake, channel, tunnel, sink = _held_then_ended(budget)
    budget.limit = budget.total  # now over it
    relief = relieve(budget, [channel])
    assert relief is not None and relief.tunnels_closed == 1
    deliver_events(channel.events)
    assert budget.total == 0 and tunnel.state is CircuitState.CLOSED
    assert sink.end_reason == EndReason.DESTROY  # an error, not the exit's clean END
