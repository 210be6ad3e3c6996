"""Congestion control with the exit (prop 324) against the fake relay.

The fake speaks ntor v3 and, on a hop that agreed to congestion control, sends and
expects circuit SENDMEs every ``sendme_inc`` cells, has no stream windows, runs a
Vegas-ish cwnd of its own and sends/honours XON/XOFF (tests/fakes/relay.py).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest

from fakes.relay import (
    FakeRelay,
    FakeRelayConfig,
    FakeStream,
    build_circuit,
    deliver_events,
    open_channel,
    pump_until,
    source_content,
    transfer,
)
from fakes.sink import RecordingSink
from puretor.errors import RemoteProtocolError
from puretor.proto.channel import Channel, ChannelState
from puretor.proto.circuit import CircuitState
from puretor.proto.congestion import (
    UNLIMITED_WINDOW,
    CCParams,
    StreamFlow,
    Vegas,
    cc_request_message,
    parse_cc_response,
    validate_sendme_inc,
)
from puretor.proto.events import TunnelClosed
from puretor.proto.relaymsg import EndReason, RelayCommand
from puretor.proto.streams import SEND_BUFFER_HIGH_WATER, Stream
from puretor.proto.tunnel import Tunnel

KB = 1024
MB = 1024 * KB
CC = CCParams()


def _setup(
    config: FakeRelayConfig | None = None,
    params: CCParams | None = CC,
    clock: Callable[[], float] | None = None,
) -> tuple[FakeRelay, Channel, Tunnel]:
    fake = FakeRelay(config or FakeRelayConfig())
    channel = open_channel(fake)
    circ = build_circuit(channel, fake, 3, congestion_control=params, sendme_accept_min_version=1)
    if clock is not None:
        circ.clock = clock
    return fake, channel, circ


def _ticking(step: float = 0.001) -> Callable[[], float]:
    """A clock that moves ``step`` seconds each time it is read."""
    return itertools.count(1000.0, step).__next__


class RoundClock:
    """Time that moves 1 ms per exchange round: a constant, known RTT for Vegas.

    The 1 ms passes between what we send in a round (cells are sealed, and timed, when
    the channel's mux hands them out) and the relay's answer to it."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def run(self, channel: Channel, fake: FakeRelay, done: Callable[[], bool]) -> None:
        for _ in range(1_000_000):
            deliver_events(channel.events)
            if done():
                return
            out = channel.data_to_send(self.t)
            if out:
                fake.receive_data(out)
            self.t += 0.001
            back = fake.take_output()
            if not out and not back:
                raise AssertionError("both parties went quiet before the condition held")
            if back:
                channel.receive_data(back, self.t)
        raise AssertionError("still busy")


def _fstream(fake: FakeRelay, circ: Tunnel, stream: Stream) -> FakeStream:
    fs = fake.stream(circ.circ_id, stream.stream_id)
    assert fs is not None
    return fs


# -- negotiation ----------------------------------------------------------------------------


def test_cc_negotiated_with_the_exit_only() -> None:
    fake, channel, circ = _setup()
    assert circ.cc is not None and circ.cc.sendme_inc == 31
    assert circ.cc.cwnd == CC.cwnd_init and circ.cc.inflight == 0
    hops = fake.circuit(circ.circ_id).hops
    assert [h.cc for h in hops] == [False, False, True]
    assert hops[2].sendme_inc == 31
    assert fake.violations == []


def test_exit_without_cc_keeps_fixed_windows() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(cc_enabled=False, source_ports={80: 600 * KB}))
    assert circ.cc is None
    assert not fake.circuit(circ.circ_id).hops[2].cc
    sink = RecordingSink()
    stream = circ.open_stream(sink, "dl.example", 80)
    assert stream.flow is None
    transfer(channel, fake)
    assert bytes(sink.data) == source_content("dl.example", 80, 600 * KB)
    assert _fstream(fake, circ, stream).sendmes_received > 0  # classic stream SENDMEs
    assert fake.violations == []


def test_consensus_cc_alg_0_means_ntor_v1() -> None:
    fake, channel, circ = _setup(params=CCParams(cc_alg=0))
    assert circ.cc is None
    assert not any(h.cc for h in fake.circuit(circ.circ_id).hops)


@pytest.mark.parametrize(
    ("response", "closes"),
    [
        (b"\x01\x02\x01\x1f", False),  # sendme_inc 31
        (b"\x01\x02\x01\x20", False),  # 32: within ±1 of the consensus
        (b"\x01\x02\x01\x1e", False),  # 30
        (b"\x01\x02\x01\x32", True),  # 50: too far
        (b"\x01\x02\x01\x00", True),  # 0
        (b"\x01\x02\x00", True),  # no sendme_inc byte
        (b"\x01\x02\x05\x1f", True),  # truncated field
        (b"\x00", False),  # no congestion control: fixed windows
        (b"\x01\x07\x02ab", False),  # unknown field only: ignored, fixed windows
        (b"\x02\x07\x00\x02\x01\x1f", False),  # unknown field, then the response
    ],
)
def test_cc_response_validation(response: bytes, closes: bool) -> None:
    fake = FakeRelay(FakeRelayConfig(cc_response=response))
    channel = open_channel(fake)
    circ = build_circuit(channel, fake, 2, mark_open=False)
    events: list[object] = []
    circ.owner = events  # the fakes' event delivery appends the tunnel's events here
    relay = fake.relays[2]
    circ.send_extend2(
        relay.link_specifiers(),
        relay.rsa_id,
        relay.ntor_key,
        ed_id=relay.ed_id,
        congestion_control=CC,
    )
    transfer(channel, fake)
    if closes:
        assert circ.state is CircuitState.CLOSED
        assert isinstance(events[-1], TunnelClosed)
        assert channel.state is ChannelState.OPEN
    else:
        assert circ.hop_count == 3 and circ.state is not CircuitState.CLOSED
        expect = response[-1] if response.endswith((b"\x1f", b"\x20", b"\x1e")) else None
        assert (circ.cc.sendme_inc if circ.cc else None) == expect


def test_ntor_v3_needs_the_ed25519_identity(channel: Channel, fake: FakeRelay) -> None:
    circ = build_circuit(channel, fake, 2, mark_open=False)
    relay = fake.relays[2]
    with pytest.raises(ValueError, match="Ed25519"):
        circ.send_extend2(
            relay.link_specifiers(), relay.rsa_id, relay.ntor_key, congestion_control=CC
        )


def test_params_from_consensus_defaults_and_clamps() -> None:
    def getter(values: dict[str, int]) -> Callable[[str, int, int, int], int]:
        return lambda name, default, lo, hi: min(max(values.get(name, default), lo), hi)

    d = CCParams.from_consensus(getter({}))
    assert d == CCParams()
    assert (d.sendme_inc, d.cwnd_init, d.cwnd_min, d.ss_cwnd_max) == (31, 124, 124, 5000)
    assert (d.alpha, d.beta, d.gamma, d.delta, d.ss_cwnd_cap) == (186, 248, 186, 310, 600)
    assert d.xoff_client == 500 * 498 and d.enabled
    p = CCParams.from_consensus(
        getter({"cc_alg": 1, "cc_sendme_inc": 0, "cc_cwnd_full_gap": 4444, "cc_xoff_client": 0})
    )
    assert p.cc_alg == 2  # unsupported algorithm: the default, as C tor
    assert p.sendme_inc == 1 and p.cwnd_full_gap == 4444 and p.xoff_client == 498
    assert not CCParams.from_consensus(getter({"cc_alg": 0})).enabled


def test_sendme_inc_validation_and_request() -> None:
    assert cc_request_message() == b"\x01\x01\x00"
    assert [validate_sendme_inc(i, 31) for i in (0, 29, 30, 31, 32, 33)] == [
        False, False, True, True, True, False,
    ]  # fmt: skip
    assert parse_cc_response(b"\x00", CC) is None
    with pytest.raises(RemoteProtocolError, match="did not ask"):
        parse_cc_response(b"\x01\x02\x01\x1f", CCParams(cc_alg=0))


# -- downloads: circuit SENDMEs every sendme_inc, no stream SENDMEs -----------------------------


def test_download_on_cc_circuit() -> None:
    size = 6 * MB + 777
    fake, channel, circ = _setup(FakeRelayConfig(source_ports={80: size}, cc_cwnd_cap=3000))
    sink = RecordingSink()
    stream = circ.open_stream(sink, "big.example", 80)
    assert stream.flow is not None
    transfer(channel, fake, chunk_size=16 * KB)
    assert (
        hashlib.sha256(sink.data).digest()
        == hashlib.sha256(source_content("big.example", 80, size)).digest()
    )
    assert sink.end_reason == EndReason.DONE
    exit_hop = fake.circuit(circ.circ_id).hops[2]
    cells = -(-size // 498)
    assert exit_hop.data_cells_sent == cells
    # A v1 SENDME every 31 cells, each digest matched by the exit (else a violation).
    assert exit_hop.sendmes_received == cells // 31
    assert _fstream(fake, circ, stream).sendmes_received == 0  # no stream SENDMEs
    # No fixed window: the exit had far more than 1000 cells in flight.
    assert exit_hop.max_cwnd == 3000
    assert fake.violations == [] and circ.state is CircuitState.OPEN


def test_stream_sendme_from_exit_closes_cc_circuit() -> None:
    fake, channel, circ = _setup()
    sink = RecordingSink()
    stream = circ.open_stream(sink, "example.com", 80)
    transfer(channel, fake)
    fake.send_relay(fake.circuit(circ.circ_id), 2, RelayCommand.SENDME, stream.stream_id, b"")
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert circ.closed_reason is not None and "stream SENDME" in circ.closed_reason.message
    assert channel.state is ChannelState.OPEN


def test_unexpected_circuit_sendme_closes_cc_circuit() -> None:
    fake, channel, circ = _setup()
    fake.send_relay(
        fake.circuit(circ.circ_id), 2, RelayCommand.SENDME, 0, b"\x01\x00\x14" + bytes(20)
    )
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED


def test_corrupt_sendme_digest_on_cc_circuit_closes_it() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(discard_ports={9}, corrupt_sendme_digests=True))
    circ.open_stream(RecordingSink(), "u.example", 9).write(os.urandom(100 * KB))
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert circ.closed_reason is not None and "digest" in circ.closed_reason.message


# -- uploads: Vegas decides how much is in flight ------------------------------------------------


def test_upload_on_cc_circuit_beyond_fixed_windows() -> None:
    size = 4 * MB + 99
    clock = RoundClock()
    fake, channel, circ = _setup(FakeRelayConfig(discard_ports={9}), clock=clock)
    cc = circ.cc
    assert cc is not None
    stream = circ.open_stream(RecordingSink(), "u.example", 9)
    transfer(channel, fake)
    fs = _fstream(fake, circ, stream)
    data = os.urandom(size)
    stream.write(data)
    clock.run(channel, fake, lambda: len(fs.received) == size and not cc.inflight // 31)
    assert bytes(fs.received) == data
    exit_hop = fake.circuit(circ.circ_id).hops[2]
    cells = -(-size // 498)
    # The exit SENDMEd every 31 cells; every digest matched what we recorded.
    assert exit_hop.sendmes_emitted == cells // 31 == cc.sendmes_received
    assert fs.sendmes_emitted == 0  # no stream SENDMEs on a CC circuit
    # With a steady 1 ms RTT there is no queueing: cwnd only grows (limited slow start
    # past cc_sscap_exit), and far more than the old fixed windows (1000 circuit / 500
    # stream cells) were in flight at once - but never more than cwnd.
    assert cc.in_slow_start and cc.cwnd > 2000
    assert 1000 < exit_hop.max_inflight_seen <= cc.cwnd
    assert cc.ewma_rtt_usec == cc.min_rtt_usec == 1000
    assert cc.inflight == cells % 31
    assert all(len(h.expected_sendmes) <= cc.cwnd // 31 + 1 for h in circ.circuit.hops)
    assert fake.violations == [] and circ.state is CircuitState.OPEN


def test_upload_stops_at_cwnd_without_sendmes() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(discard_ports={9}, withhold_circuit_sendmes=True))
    stream = circ.open_stream(RecordingSink(), "u.example", 9)
    stream.write(os.urandom(200 * KB))
    transfer(channel, fake)
    exit_hop = fake.circuit(circ.circ_id).hops[2]
    assert exit_hop.data_cells_received == CC.cwnd_init == 124
    assert circ.cc is not None and circ.cc.window == 0
    fake.release_withheld_sendmes()
    transfer(channel, fake)
    assert len(_fstream(fake, circ, stream).received) == 200 * KB
    assert fake.violations == []


def test_exit_xoff_stops_our_sending_until_xon() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(discard_ports={9}))
    sink = RecordingSink()
    stream = circ.open_stream(sink, "u.example", 9)
    stream.write(b"x" * 10 * KB)
    transfer(channel, fake)
    fcirc = fake.circuit(circ.circ_id)
    fs = _fstream(fake, circ, stream)
    fake.send_xoff(fcirc, 2, fs)
    transfer(channel, fake)
    assert stream.flow is not None and stream.flow.xoff_received
    # Nothing goes out while XOFFed (the fake closes the circuit on DATA after XOFF).
    full = stream.write(os.urandom(100 * KB))
    transfer(channel, fake)
    assert full and stream.buffered == 100 * KB and fs.data_cells_after_xoff == 0
    assert sink.writable_calls == 0
    fake.send_xon(fcirc, 2, fs, kbps=1234)
    transfer(channel, fake)
    assert len(fs.received) == 110 * KB and stream.buffered == 0
    assert stream.flow.rate_kbps == 1234 and sink.writable_calls == 1
    assert fake.violations == [] and circ.state is CircuitState.OPEN


def test_xon_xoff_leniency() -> None:
    """As C tor: a second XOFF, a malformed XON and XON/XOFF on unknown streams are ignored."""
    fake, channel, circ = _setup(FakeRelayConfig(discard_ports={9}))
    stream = circ.open_stream(RecordingSink(), "u.example", 9)
    transfer(channel, fake)
    fcirc = fake.circuit(circ.circ_id)
    sid = stream.stream_id
    for command, body in [
        (RelayCommand.XOFF, b"\x00"),
        (RelayCommand.XOFF, b"\x00"),
        (RelayCommand.XON, b"\x00\x00"),  # too short: dropped
        (RelayCommand.XON, b"\x01\x00\x00\x00\x00"),  # version 1: dropped
        (RelayCommand.XOFF, b"\x00"),
    ]:
        fake.send_relay(fcirc, 2, command, sid, body)
        fake.send_relay(fcirc, 2, command, sid + 100, body)
    transfer(channel, fake)
    assert stream.flow is not None and stream.flow.xoffs_received == 1
    assert stream.flow.xoff_received and stream.package_window == 0
    fake.send_relay(fcirc, 2, RelayCommand.XON, sid, b"\x00" + bytes(4))
    transfer(channel, fake)
    assert not stream.flow.xoff_received and stream.package_window == UNLIMITED_WINDOW
    assert circ.state is CircuitState.OPEN


def test_xon_xoff_on_circuit_without_cc_ignored() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(discard_ports={9}), params=None)
    stream = circ.open_stream(RecordingSink(), "u.example", 9)
    transfer(channel, fake)
    fake.send_relay(fake.circuit(circ.circ_id), 2, RelayCommand.XOFF, stream.stream_id, b"\x00")
    transfer(channel, fake)
    stream.write(os.urandom(10 * KB))
    transfer(channel, fake)
    assert len(_fstream(fake, circ, stream).received) == 10 * KB
    assert circ.state is CircuitState.OPEN


# -- receiving backpressure: XOFF when the reader stops, XON when it resumes ---------------------


def test_paused_reader_gets_xoff_then_xon() -> None:
    size = 8 * MB
    fake, channel, circ = _setup(FakeRelayConfig(source_ports={80: size}), clock=_ticking())
    sink = RecordingSink()
    stream = circ.open_stream(sink, "big.example", 80)
    flow = stream.flow
    assert flow is not None
    sink.on_data = lambda _d: stream.pause_delivery() if len(sink.data) >= 100 * KB else None
    transfer(channel, fake, chunk_size=16 * KB)
    fs = _fstream(fake, circ, stream)
    # Paused: we held data past the XOFF limit, sent one XOFF, and the exit stopped.
    assert flow.xoffs_sent == 1 and flow.xoff_sent and fs.xoffs_received == 1
    assert fs.xoff_from_client and fs.outgoing
    # Held: past the XOFF limit, plus at most what the exit had in flight (its cwnd).
    held = flow.held_bytes
    assert CC.xoff_client < held <= CC.xoff_client + fake.config.cc_cwnd_cap * 498
    delivered = len(sink.data)
    assert 100 * KB <= delivered < 200 * KB
    # No stream SENDMEs, and the circuit SENDMEs kept flowing.
    assert fs.sendmes_received == 0
    # Resume: the held data goes up at once; XON (with no rate advice) once the
    # application has taken it and still reads - when the channel next gives output.
    sink.on_data = None
    stream.resume_delivery()
    deliver_events(channel.events)
    assert len(sink.data) == delivered + held and flow.held_bytes == 0
    assert flow.xons_sent == 0 and flow.xoff_sent
    fake.receive_data(channel.data_to_send(channel.now))
    assert flow.xons_sent == 1 and not flow.xoff_sent
    transfer(channel, fake, chunk_size=16 * KB)
    assert fs.xons_received == 1 and fs.xon_rates == [0]
    assert bytes(sink.data) == source_content("big.example", 80, size)
    assert sink.end_reason == EndReason.DONE
    assert fake.violations == [] and circ.state is CircuitState.OPEN


def test_no_xoff_within_grace_period_or_below_limit() -> None:
    """C tor's rule: XOFF only when the buffer stays over the limit for 5 ms."""
    size = 2 * MB
    frozen = lambda: 5.0  # noqa: E731 - time stands still: the grace period never ends
    fake, channel, circ = _setup(
        FakeRelayConfig(source_ports={80: size}),
        params=CC.replace(overrun_cells=10_000),
        clock=frozen,
    )
    sink = RecordingSink()
    stream = circ.open_stream(sink, "big.example", 80)
    stream.pause_delivery()
    transfer(channel, fake, chunk_size=16 * KB)
    flow = stream.flow
    assert flow is not None
    # Everything arrived and was held (2 MB < xoff_client + overrun), never an XOFF.
    assert flow.xoffs_sent == 0 and flow.held_bytes == size and sink.data == b""
    # The exit's END waits behind the held data.
    assert sink.ended == [] and flow.end is not None
    stream.resume_delivery()
    deliver_events(channel.events)
    assert bytes(sink.data) == source_content("big.example", 80, size)
    assert sink.end_reason == EndReason.DONE and sink.data_after_end == 0
    assert flow.xons_sent == 0


def test_pause_resume_many_times_on_cc_circuit() -> None:
    size = 3 * MB
    fake, channel, circ = _setup(FakeRelayConfig(source_ports={80: size}), clock=_ticking())
    sink = RecordingSink()
    stream = circ.open_stream(sink, "big.example", 80)
    sink.on_data = lambda _d: stream.pause_delivery()
    for _ in range(500):
        transfer(channel, fake, chunk_size=32 * KB)
        if sink.ended:
            break
        stream.resume_delivery()
    assert bytes(sink.data) == source_content("big.example", 80, size)
    flow = stream.flow
    assert flow is not None and flow.xoffs_sent > 1
    # Every XOFF was answered by an XON once the reader resumed and kept reading - but
    # the last, if the stream ended while the reader was paused again.
    assert flow.xons_sent == flow.xoffs_sent - int(flow.xoff_sent)
    assert fake.violations == []


def test_exit_ignoring_xoff_is_a_protocol_violation() -> None:
    params = CC.replace(overrun_cells=400)
    fake, channel, circ = _setup(
        FakeRelayConfig(source_ports={80: 20 * MB}, cc_ignore_xoff=True, cc_cwnd_cap=800),
        params=params,
        clock=_ticking(),
    )
    other = RecordingSink()
    circ.open_stream(other, "other.example", 7)
    sink = RecordingSink()
    stream = circ.open_stream(sink, "big.example", 80)
    stream.pause_delivery()
    transfer(channel, fake, chunk_size=16 * KB)
    assert circ.state is CircuitState.CLOSED
    assert circ.closed_reason is not None and "after our XOFF" in circ.closed_reason.message
    flow = stream.flow
    assert flow is not None and flow.xoffs_sent == 1
    # Memory stayed bounded: the XOFF limit, the overrun allowance, one read's worth.
    assert flow.held_bytes <= params.xoff_client + params.overrun_bytes + 32 * KB
    assert sink.end_reason == EndReason.DESTROY and other.end_reason == EndReason.DESTROY
    assert channel.state is ChannelState.OPEN


def test_held_data_bounded_even_if_grace_never_ends() -> None:
    """A clock that stands still cannot make us hold unbounded data: XOFF anyway."""
    params = CC.replace(overrun_cells=1000)  # more than the exit's cwnd
    fake, channel, circ = _setup(
        FakeRelayConfig(source_ports={80: 8 * MB}, cc_cwnd_cap=800),
        params=params,
        clock=lambda: 1.0,
    )
    sink = RecordingSink()
    stream = circ.open_stream(sink, "big.example", 80)
    stream.pause_delivery()
    transfer(channel, fake, chunk_size=16 * KB)
    flow = stream.flow
    assert flow is not None and flow.xoffs_sent == 1
    assert flow.held_bytes <= params.max_held_bytes + 800 * 498
    assert circ.state is CircuitState.OPEN and fake.violations == []
    stream.resume_delivery()
    transfer(channel, fake, chunk_size=16 * KB)
    assert bytes(sink.data) == source_content("big.example", 80, 8 * MB)


def test_echo_backpressure_both_ways() -> None:
    """Our reader stops: we XOFF the exit; its echo backlog grows: it XOFFs us; we stop."""
    size = 3 * MB
    fake, channel, circ = _setup(FakeRelayConfig(cc_xoff_bytes=200 * KB), clock=_ticking())
    sink = RecordingSink()
    stream = circ.open_stream(sink, "echo.example", 7)
    transfer(channel, fake)
    data = os.urandom(size)
    stream.pause_delivery()
    offset = 0

    def feed() -> None:
        nonlocal offset
        while offset < size and stream.buffered < SEND_BUFFER_HIGH_WATER:
            stream.write(data[offset : offset + 16 * KB])
            offset += 16 * KB

    for _ in range(50):
        feed()
        transfer(channel, fake, chunk_size=16 * KB)
    fs = _fstream(fake, circ, stream)
    flow = stream.flow
    assert flow is not None
    assert flow.xoffs_sent == 1 and fs.xoff_from_client  # we stopped the exit...
    assert fs.xoffs_sent >= 1 and flow.xoff_received  # ... and its backlog stopped us
    assert offset < size  # the application was told to stop writing
    assert fs.data_cells_after_xoff == 0
    stream.resume_delivery()
    sink.on_data = None
    for _ in range(10_000):
        feed()
        stream.resume_delivery()
        if transfer(channel, fake, chunk_size=16 * KB) == 0 and offset >= size:
            break
    assert bytes(sink.data) == data
    assert fake.violations == [] and circ.state is CircuitState.OPEN


def test_abort_drops_held_data_and_deferred_end() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(source_ports={80: 100 * KB}))
    sink = RecordingSink()
    stream = circ.open_stream(sink, "x.example", 80)
    stream.pause_delivery()
    transfer(channel, fake)
    assert stream.flow is not None and stream.flow.held_bytes == 100 * KB
    stream.abort()
    stream.resume_delivery()
    deliver_events(channel.events)
    assert sink.data == b"" and sink.ended == [] and stream.flow.held_bytes == 0


def test_local_close_keeps_held_data_destroy_drops_it() -> None:
    fake, channel, circ = _setup(
        FakeRelayConfig(source_ports={80: 100 * KB, 81: 100 * KB}, end_after_source=False)
    )
    sink, sink2 = RecordingSink(), RecordingSink()
    stream = circ.open_stream(sink, "x.example", 80)
    stream2 = circ.open_stream(sink2, "y.example", 81)
    stream.pause_delivery()
    stream2.pause_delivery()
    transfer(channel, fake)
    assert stream.flow is not None and stream2.flow is not None
    stream.close()  # our END: what arrived before it still reaches the reader
    transfer(channel, fake)
    stream.resume_delivery()
    deliver_events(channel.events)
    assert bytes(sink.data) == source_content("x.example", 80, 100 * KB) and sink.ended == []
    circ.destroy()  # a failed stream gets no data after its end
    stream2.resume_delivery()
    deliver_events(channel.events)
    assert sink2.data == b"" and sink2.end_reason == EndReason.DESTROY


def test_streams_opened_after_cc_all_use_flow_control() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(source_ports={80: 300 * KB}))
    sinks = [RecordingSink() for _ in range(20)]
    streams = [circ.open_stream(s, f"s{i}.example", 80) for i, s in enumerate(sinks)]
    assert all(st.flow is not None for st in streams)
    transfer(channel, fake, chunk_size=16 * KB)
    for i, s in enumerate(sinks):
        assert bytes(s.data) == source_content(f"s{i}.example", 80, 300 * KB)
    assert all(_fstream(fake, circ, st).sendmes_received == 0 for st in streams)
    assert fake.violations == []


def test_pump_until_download_completes_with_real_clock() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(source_ports={80: MB}))
    sink = RecordingSink()
    circ.open_stream(sink, "x.example", 80)
    pump_until(channel, fake, lambda: bool(sink.ended))
    assert len(sink.data) == MB


# -- Vegas ---------------------------------------------------------------------------------------


def _ack(v: Vegas, t: int) -> None:
    v.on_sendme(t)


def test_vegas_slow_start_grows_by_sendme_inc_while_full() -> None:
    v = Vegas(CC, 31)
    t = 0
    v.note_sent(124, 4, t)
    assert v.window == 0
    t += 10_000
    _ack(v, t)  # RTT 10 ms, cwnd full (inflight + 4*31 >= cwnd): +31
    assert v.cwnd == 155 and v.inflight == 93 and v.in_slow_start
    assert v.ewma_rtt_usec == 10_000 == v.min_rtt_usec
    assert v.window == 62


def test_vegas_leaves_slow_start_on_queueing() -> None:
    v = Vegas(CC, 31)
    t = 0
    # Fill and ack at 10 ms RTT for a while (slow start).
    for _ in range(20):
        v.note_sent(v.window, v.window // 31, t)
        t += 10_000
        while v.inflight >= 31:
            _ack(v, t)
    assert v.in_slow_start and v.cwnd > 500
    # Now the RTT triples: queue_use = cwnd - cwnd*min/ewma exceeds gamma.
    cwnd_before = v.cwnd
    v.note_sent(max(v.window, 31), max(v.window, 31) // 31, t)
    for _ in range(6):
        t += 30_000
        _ack(v, t)
        if not v.in_slow_start:
            break
    assert not v.in_slow_start
    assert v.cwnd == v.bdp + CC.gamma < cwnd_before


def test_vegas_steady_state_adjusts_once_per_cwnd() -> None:
    v = Vegas(CC, 31)
    v.in_slow_start = False
    v.cwnd = 1000
    v.next_cc_event = v._update_rate()
    assert v.next_cc_event == 1  # (1000 + 480) // 961
    v.min_rtt_usec = v.ewma_rtt_usec = 10_000
    v.note_sent(1000, 32, 0)
    _ack(v, 10_000)  # no queue, cwnd full: +1
    assert v.cwnd == 1001
    v.ewma_rtt_usec = 0
    v.min_rtt_usec = 10_000
    for _ in range(4):
        _ack(v, 40_000)  # RTT 4x: queue_use > delta: drop to bdp + delta - 1
    assert v.cwnd < 1001 and v.cwnd >= CC.cwnd_min


def test_vegas_clock_stall_does_not_run_the_algorithm() -> None:
    v = Vegas(CC, 31)
    v.note_sent(124, 4, 5)
    _ack(v, 5)  # zero RTT: a stalled clock
    assert v.cwnd == 124 and v.inflight == 93 and v.ewma_rtt_usec == 0


def test_stream_flow_grace_period() -> None:
    f = StreamFlow()
    f.hold(b"x" * 100)
    assert not f.should_send_xoff(50, 1_000)  # starts the grace period
    assert not f.should_send_xoff(50, 5_000)
    assert f.should_send_xoff(50, 6_001)
    f.take_held()
    assert not f.should_send_xoff(50, 7_000) and f.grace_start_usec == 0


# -- the decision (aio.circmgr) ----------------------------------------------------------------


def test_negotiation_decision_follows_c_tor() -> None:
    from puretor.aio.circmgr import congestion_control_for
    from puretor.dir.netdir import Relay

    class Dir:
        def __init__(self, params: dict[str, int]) -> None:
            self.params = params

        def param(self, name: str, default: int, lo: int = -(2**31), hi: int = 2**31 - 1) -> int:
            return min(max(self.params.get(name, default), lo), hi)

    def relay(pr: dict[str, frozenset[int]], ed: bool = True) -> Relay:
        return Relay(
            "x", bytes(20), "10.0.0.1", 9001, 0, frozenset(), 0, protocols=pr,
            ed_id=bytes(32) if ed else None,
        )  # fmt: skip

    good = relay({"FlowCtrl": frozenset({1, 2}), "Relay": frozenset({1, 2, 3, 4})})
    nd: Any = Dir({"cc_alg": 2, "cc_sendme_inc": 30})
    params = congestion_control_for(nd, good, internal=False)
    assert params is not None and params.sendme_inc == 30
    assert congestion_control_for(nd, good, internal=True) is None  # onion/internal circuits
    assert congestion_control_for(nd, None, internal=False) is None
    assert congestion_control_for(Dir({"cc_alg": 0}), good, internal=False) is None  # type: ignore[arg-type]
    for pr in (
        {"FlowCtrl": frozenset({1}), "Relay": frozenset({1, 2, 3, 4})},
        {"FlowCtrl": frozenset({1, 2}), "Relay": frozenset({1, 2, 3})},
        {},
    ):
        assert congestion_control_for(nd, relay(pr), internal=False) is None
    assert congestion_control_for(nd, relay(good.protocols, ed=False), internal=False) is None


def test_flow_control_command_numbers_are_c_tors() -> None:
    # or.h: RELAY_COMMAND_XOFF 43, RELAY_COMMAND_XON 44 (the 2023 tor-spec.txt swaps them;
    # with the swapped numbers a real exit took our XOFF for an XON and never stopped).
    assert (RelayCommand.XOFF, RelayCommand.XON) == (43, 44)
