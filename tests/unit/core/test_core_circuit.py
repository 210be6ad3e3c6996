"""Circuit building, relay crypto and teardown against the fake relay (tor-spec §5, §6)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes.relay import FakeRelay, FakeRelayConfig, build_circuit, open_channel, receive, transfer
from fakes.sink import RecordingSink
from puretor.proto.cells import CellCommand, DestroyReason
from puretor.proto.channel import Channel, ChannelState
from puretor.proto.circuit import CircuitState
from puretor.proto.events import ControlCell, HopAdded, TunnelClosed
from puretor.proto.relaymsg import EndReason, RelayCommand
from puretor.proto.tunnel import Tunnel


def _events(circ: Tunnel) -> list[object]:
    events: list[object] = []
    circ.owner = events  # the fakes' event delivery appends the tunnel's events here
    return events


def test_create_fast_one_hop(channel: Channel, fake: FakeRelay) -> None:
    circ = channel.new_tunnel()
    events = _events(circ)
    circ.send_create_fast()
    transfer(channel, fake)
    assert events == [HopAdded(circ, 1)]
    assert circ.hop_count == 1
    assert len(fake.circuit(circ.circ_id).hops) == 1


def test_ntor_three_hops(channel: Channel, fake: FakeRelay) -> None:
    circ = channel.new_tunnel()
    events = _events(circ)
    circ.send_create2(fake.sim.rsa_id, fake.sim.ntor_key)
    transfer(channel, fake)
    for relay in fake.relays[1:]:
        circ.send_extend2(relay.link_specifiers(), relay.rsa_id, relay.ntor_key)
        transfer(channel, fake)
    assert events == [HopAdded(circ, 1), HopAdded(circ, 2), HopAdded(circ, 3)]
    fcirc = fake.circuit(circ.circ_id)
    assert [h.relay for h in fcirc.hops] == fake.relays
    # EXTEND2 went in RELAY_EARLY: the guard saw two, the middle one.
    assert [h.relay_early_seen for h in fcirc.hops] == [2, 1, 0]
    assert fake.violations == []


def test_layers_are_distinct(circ: Tunnel, fake: FakeRelay) -> None:
    """A cell for hop 2 passes hop 0 and 1 unrecognised: each layer has its own keys."""
    fcirc = fake.circuit(circ.circ_id)
    circ.send_relay(RelayCommand.DROP, 0, b"to the middle", hop=1)
    circ.send_relay(RelayCommand.DROP, 0, b"to the exit", hop=2)
    circ.send_relay(RelayCommand.DROP, 0, b"to the guard", hop=0)
    transfer(circ.channel, fake)
    assert fake.violations == []
    # Cells from each hop back to us are recognised at the right hop.
    events = _events(circ)
    for hop in range(3):
        fake.send_relay(fcirc, hop, 99, 0, b"hello from %d" % hop)
    transfer(circ.channel, fake)
    assert events == [ControlCell(circ, 99, b"hello from %d" % h, h) for h in range(3)]


def test_bad_ntor_auth_closes_circuit(channel: Channel) -> None:
    fake2 = FakeRelay(FakeRelayConfig(bad_ntor_auth=True))
    ch = open_channel(fake2)
    circ = ch.new_tunnel()
    events = _events(circ)
    circ.send_create2(fake2.sim.rsa_id, fake2.sim.ntor_key)
    transfer(ch, fake2)
    assert circ.state is CircuitState.CLOSED
    assert isinstance(events[-1], TunnelClosed) and "AUTH" in events[-1].message
    assert ch.state is ChannelState.OPEN
    assert fake2.destroys_received == [(circ.circ_id, 0)]  # a client sends reason NONE


def test_create2_wrong_onion_key_destroyed(channel: Channel, fake: FakeRelay) -> None:
    circ = channel.new_tunnel()
    events = _events(circ)
    circ.send_create2(fake.sim.rsa_id, fake.relays[1].ntor_key)
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert events[-1] == TunnelClosed(
        circ, DestroyReason.PROTOCOL, "circuit destroyed by relay", True
    )


def test_extend_to_unknown_relay_truncated(channel: Channel, fake: FakeRelay) -> None:
    circ = build_circuit(channel, fake, 1, mark_open=False)
    events = _events(circ)
    stranger = type(fake.relays[1]).generate("stranger", "10.9.9.9")
    circ.send_extend2(stranger.link_specifiers(), stranger.rsa_id, stranger.ntor_key)
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED
    closed = events[-1]
    assert isinstance(closed, TunnelClosed)
    assert closed.reason == DestroyReason.CONNECTFAILED and closed.remote
    # TRUNCATED tears the whole circuit down: we sent DESTROY.
    assert fake.destroys_received == [(circ.circ_id, 0)]


def test_extend_with_wrong_ed_id_truncated(channel: Channel, fake: FakeRelay) -> None:
    circ = build_circuit(channel, fake, 1, mark_open=False)
    relay = fake.relays[1]
    specs = relay.link_specifiers(with_ed=False)
    specs.append(type(specs[0])(3, b"\x07" * 32))
    circ.send_extend2(specs, relay.rsa_id, relay.ntor_key)
    transfer(channel, fake)
    assert circ.closed_reason is not None
    assert circ.closed_reason.reason == DestroyReason.OR_IDENTITY


def test_relay_early_budget(channel: Channel, fake: FakeRelay) -> None:
    circ = build_circuit(channel, fake, 3)  # 2 RELAY_EARLY spent on EXTEND2
    for _ in range(6):
        circ.send_relay(RelayCommand.DROP, 0, b"", early=True)
    with pytest.raises(RuntimeError, match="RELAY_EARLY"):
        circ.send_relay(RelayCommand.DROP, 0, b"", early=True)
    # The refused cell left no trace in the relay crypto: later cells still verify.
    circ.send_relay(RelayCommand.DROP, 0, b"after")
    transfer(channel, fake)
    assert circ.state is CircuitState.OPEN and fake.violations == []


def test_fake_closes_on_ninth_relay_early(channel: Channel, fake: FakeRelay) -> None:
    """The fake enforces the limit too (checked by bypassing the client's budget)."""
    circ = build_circuit(channel, fake, 1)
    for _ in range(8):
        circ.send_relay(RelayCommand.DROP, 0, b"", early=True)
    circ.circuit._relay_early_sent = 0
    circ.send_relay(RelayCommand.DROP, 0, b"", early=True)
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert any("RELAY_EARLY" in v for v in fake.violations)


def test_relay_early_from_relay_closes_circuit(circ: Tunnel, fake: FakeRelay) -> None:
    fake.send_relay(
        fake.circuit(circ.circ_id),
        2,
        RelayCommand.DROP,
        0,
        b"",
        cell_command=CellCommand.RELAY_EARLY,
    )
    transfer(circ.channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert circ.channel.state is ChannelState.OPEN


def _open_streams(circ: Tunnel, fake: FakeRelay, n: int) -> list[RecordingSink]:
    sinks = [RecordingSink() for _ in range(n)]
    for i, sink in enumerate(sinks):
        circ.open_stream(sink, f"host{i}.example", 80)
    transfer(circ.channel, fake)
    assert all(s.connected is not None for s in sinks)
    return sinks


def test_destroy_closes_every_stream(circ: Tunnel, fake: FakeRelay) -> None:
    sinks = _open_streams(circ, fake, 3)
    events = _events(circ)
    fake.inject_destroy(circ.circ_id, DestroyReason.FINISHED)
    transfer(circ.channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert events == [
        TunnelClosed(circ, DestroyReason.FINISHED, "circuit destroyed by relay", True)
    ]
    for sink in sinks:
        assert len(sink.ended) == 1
        assert sink.ended[0].reason == EndReason.DESTROY
        assert "FINISHED" in sink.ended[0].message
    assert not circ.streams
    assert circ.circ_id not in circ.channel.circuits
    # A DESTROY is not answered with a DESTROY.
    assert fake.destroys_received == []


def test_truncated_closes_every_stream(circ: Tunnel, fake: FakeRelay) -> None:
    sinks = _open_streams(circ, fake, 3)
    events = _events(circ)
    fake.inject_truncated(circ.circ_id, DestroyReason.HIBERNATING, hop=1)
    transfer(circ.channel, fake)
    assert circ.state is CircuitState.CLOSED
    closed = events[-1]
    assert isinstance(closed, TunnelClosed) and closed.reason == DestroyReason.HIBERNATING
    for sink in sinks:
        assert [e.reason for e in sink.ended] == [EndReason.DESTROY]
        assert "HIBERNATING" in sink.ended[0].message
    assert fake.destroys_received == [(circ.circ_id, 0)]


def test_digest_mismatch_closes_circuit_not_channel(channel: Channel, fake: FakeRelay) -> None:
    circ = build_circuit(channel, fake, 3)
    other = build_circuit(channel, fake, 3)
    sinks = _open_streams(circ, fake, 2)
    fake.corrupt_next_digest = True
    fake.send_relay(fake.circuit(circ.circ_id), 2, RelayCommand.DROP, 0, b"")
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert circ.closed_reason is not None and "digest" in circ.closed_reason.message
    assert all(len(s.ended) == 1 for s in sinks)
    assert channel.state is ChannelState.OPEN
    assert other.state is CircuitState.OPEN
    assert fake.destroys_received == [(circ.circ_id, 0)]
    # The other circuit still works.
    s = _open_streams(other, fake, 1)[0]
    other.streams[next(iter(other.streams))].write(b"ping")
    transfer(channel, fake)
    assert bytes(s.data) == b"ping"


def test_garbage_relay_cell_closes_circuit(circ: Tunnel, fake: FakeRelay) -> None:
    fake.inject_garbage(circ_id=circ.circ_id)
    transfer(circ.channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert circ.channel.state is ChannelState.OPEN


def test_cells_for_unknown_circuit_dropped(channel: Channel, fake: FakeRelay) -> None:
    fake.inject_garbage(circ_id=0x80001234)
    fake.inject_destroy(0x80004321)
    transfer(channel, fake)
    assert channel.state is ChannelState.OPEN


def test_local_destroy(circ: Tunnel, fake: FakeRelay) -> None:
    sinks = _open_streams(circ, fake, 2)
    circ.destroy()
    transfer(circ.channel, fake)
    assert fake.destroys_received == [(circ.circ_id, 0)]
    assert all(len(s.ended) == 1 for s in sinks)
    with pytest.raises(RuntimeError):
        circ.send_relay(RelayCommand.DROP, 0, b"")
    circ.destroy()  # idempotent
    assert fake.destroys_received == [(circ.circ_id, 0)]


def test_created_of_the_wrong_kind_closes_only_the_circuit(
    channel: Channel, fake: FakeRelay
) -> None:
    """A CREATED2 answering our CREATE_FAST is a relay error, not a crash of the channel."""
    circ = channel.new_tunnel()
    circ.send_create_fast()
    channel.take_output()  # the fake never sees it; we forge its reply instead
    fake._send_fixed(circ.circ_id, CellCommand.CREATED2, b"\x00\x40" + bytes(64))
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert channel.state is ChannelState.OPEN


def test_created_fast_answering_create2(channel: Channel, fake: FakeRelay) -> None:
    circ = channel.new_tunnel()
    circ.send_create2(fake.sim.rsa_id, fake.sim.ntor_key)
    channel.take_output()
    fake._send_fixed(circ.circ_id, CellCommand.CREATED_FAST, bytes(40))
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert channel.state is ChannelState.OPEN


def test_unexpected_extended2_closes_circuit(circ: Tunnel, fake: FakeRelay) -> None:
    fake.send_relay(
        fake.circuit(circ.circ_id), 2, RelayCommand.EXTENDED2, 0, b"\x00\x40" + bytes(64)
    )
    transfer(circ.channel, fake)
    assert circ.state is CircuitState.CLOSED


def test_unknown_relay_command_dropped(circ: Tunnel, fake: FakeRelay) -> None:
    sinks = _open_streams(circ, fake, 1)
    sid = next(iter(circ.streams))
    fake.send_relay(fake.circuit(circ.circ_id), 2, 77, sid, b"future")
    transfer(circ.channel, fake)
    assert circ.state is CircuitState.OPEN and sinks[0].ended == []


# -- runs: the channel hands consecutive RELAY cells of a circuit over together ---------


def test_cell_from_a_hop_added_earlier_in_the_same_run(channel: Channel, fake: FakeRelay) -> None:
    """EXTENDED2 and a cell from the new hop arrive in one read: both are handled."""
    circ = build_circuit(channel, fake, 2, mark_open=False)
    events = _events(circ)
    relay = fake.relays[2]
    circ.send_extend2(relay.link_specifiers(), relay.rsa_id, relay.ntor_key)
    fake.receive_data(channel.take_output())  # the fake answers EXTENDED2, then hop 3 talks
    fake.send_relay(fake.circuit(circ.circ_id), 2, 99, 0, b"from the new hop")
    receive(channel, fake.take_output(), fake.now)
    assert events == [HopAdded(circ, 3), ControlCell(circ, 99, b"from the new hop", 2)]
    assert circ.state is CircuitState.BUILDING


def test_bad_cell_in_the_middle_of_a_run(circ: Tunnel, fake: FakeRelay) -> None:
    sinks = _open_streams(circ, fake, 1)
    sid = next(iter(circ.streams))
    fcirc = fake.circuit(circ.circ_id)
    fake.send_relay(fcirc, 2, RelayCommand.DATA, sid, b"first")
    fake.corrupt_next_digest = True
    fake.send_relay(fcirc, 2, RelayCommand.DATA, sid, b"broken")
    fake.send_relay(fcirc, 2, RelayCommand.DATA, sid, b"after")
    receive(circ.channel, fake.take_output(), fake.now)
    assert bytes(sinks[0].data) == b"first"
    assert circ.state is CircuitState.CLOSED
    assert circ.closed_reason is not None and "recognised" in circ.closed_reason.message
    assert circ.channel.state is ChannelState.OPEN


def test_callback_destroying_the_circuit_mid_run(circ: Tunnel, fake: FakeRelay) -> None:
    sinks = _open_streams(circ, fake, 1)
    sid = next(iter(circ.streams))
    sinks[0].on_data = lambda _d: circ.destroy()
    fcirc = fake.circuit(circ.circ_id)
    for i in range(5):
        fake.send_relay(fcirc, 2, RelayCommand.DATA, sid, b"cell %d" % i)
    receive(circ.channel, fake.take_output(), fake.now)
    # DATA of one run reaches the sink joined, in one call, before the callback runs.
    assert bytes(sinks[0].data) == b"".join(b"cell %d" % i for i in range(5))
    assert circ.state is CircuitState.CLOSED and len(sinks[0].ended) == 1


def test_interleaved_circuits_in_one_read(channel: Channel, fake: FakeRelay) -> None:
    circs = [build_circuit(channel, fake, h) for h in (3, 2, 3)]
    sinks = []
    for c in circs:
        sink = RecordingSink()
        # BEGIN_DIR works on any hop count; the fake echoes.
        c.open_dir_stream(sink)
        sinks.append(sink)
    transfer(channel, fake)
    fcircs = [fake.circuit(c.circ_id) for c in circs]
    expected = [bytearray() for _ in circs]
    # Raw cells bypass the fake's windows: stay under 50 per stream (no SENDMEs).
    for i in range(135):  # round-robin, then runs of 7: runs of length 1 and longer
        k = i % 3 if i < 70 else (i // 7) % 3
        c, fc = circs[k], fcircs[k]
        sid = next(iter(c.streams))
        msg = b"%d:%d;" % (k, i)
        fake.send_relay(fc, len(fc.hops) - 1, RelayCommand.DATA, sid, msg)
        expected[k] += msg
    transfer(channel, fake, chunk_size=4096)
    assert [bytes(s.data) for s in sinks] == [bytes(e) for e in expected]
    assert fake.violations == []


@pytest.mark.parametrize("chunk", [514, 3000, 16384, 1 << 20])
def test_sendme_digests_across_run_boundaries(chunk: int) -> None:
    """Circuit SENDMEs quote the digest after *their* cell, wherever runs start and end."""
    fake = FakeRelay(FakeRelayConfig(source_ports={80: 1_500_000}))
    channel = open_channel(fake)
    circ = build_circuit(channel, fake, 3, sendme_accept_min_version=1)
    sink = RecordingSink()
    circ.open_stream(sink, "example.com", 80)
    transfer(channel, fake, chunk_size=chunk)
    assert len(sink.data) == 1_500_000 and fake.violations == []
    assert fake.circuit(circ.circ_id).hops[2].sendmes_received == 1_500_000 // 498 // 100


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cells=st.lists(
        st.tuples(
            st.integers(0, 2),  # stream
            st.integers(1, 12),  # repeat: stretches of cells for one stream
            st.sampled_from([498, 498, 498, 1, 250, 497]),  # length (mostly full)
        ),
        min_size=1,
        max_size=12,
    ),
    chunk=st.sampled_from([514, 3000, 16 * 1024, 1 << 20]),
    middle_cell_at=st.one_of(st.none(), st.integers(0, 90)),
)
def test_data_runs_reach_each_stream_in_order(
    cells: list[tuple[int, int, int]], chunk: int, middle_cell_at: int | None
) -> None:
    """DATA cells for several streams, in stretches of full and short cells, some
    interleaved with a cell from a middle hop: whatever the batching (fast path,
    whole stretches, cell by cell), every stream gets exactly its bytes in order and
    the windows count every cell."""
    fake = FakeRelay(FakeRelayConfig())
    channel = open_channel(fake)
    circ = build_circuit(channel, fake, 3)
    sinks = _open_streams(circ, fake, 3)
    sids = sorted(circ.streams)
    fcirc = fake.circuit(circ.circ_id)
    expected = [bytearray() for _ in sinks]
    window_before = circ.circuit.hops[2].deliver_window
    sent = 0
    for stream, repeat, length in cells:
        for _ in range(repeat):
            if sent >= 99:  # stay below the first circuit SENDME (the fake does not want it)
                break
            if middle_cell_at == sent:
                fake.send_relay(fcirc, 1, RelayCommand.DROP, 0, b"padding from the middle")
            data = os.urandom(length)
            fake.send_relay(fcirc, 2, RelayCommand.DATA, sids[stream], data)
            expected[stream] += data
            sent += 1
    wire = fake.take_output()
    for o in range(0, len(wire), chunk):
        receive(channel, wire[o : o + chunk], fake.now)
    assert circ.state is CircuitState.OPEN
    for sink, data in zip(sinks, expected, strict=True):
        assert bytes(sink.data) == bytes(data)
    assert circ.circuit.hops[2].deliver_window == window_before - sent
