"""Streams, SENDME windows and backpressure against the fake relay (tor-spec §6, §7; prop 289)."""

from __future__ import annotations

import os

import pytest

from fakes.relay import (
    FakeRelay,
    FakeRelayConfig,
    build_circuit,
    open_channel,
    receive,
    source_content,
    transfer,
)
from fakes.sink import RecordingSink
from puretor.proto.channel import ChannelState
from puretor.proto.circuit import CircuitState
from puretor.proto.congestion import CCParams
from puretor.proto.relaymsg import EndReason, RelayCommand
from puretor.proto.streams import SEND_BUFFER_HIGH_WATER, StreamState
from puretor.proto.tunnel import Tunnel

KB = 1024
MB = 1024 * KB


def _setup(config: FakeRelayConfig | None = None, hops: int = 3, **circ_kwargs: int):  # noqa: ANN202
    fake = FakeRelay(config or FakeRelayConfig())
    channel = open_channel(fake)
    circ = build_circuit(channel, fake, hops, **circ_kwargs)
    return fake, channel, circ


# -- BEGIN / CONNECTED / DATA / END --------------------------------------------------------


def test_begin_connected_echo_and_close(circ: Tunnel, fake: FakeRelay) -> None:
    sink = RecordingSink()
    stream = circ.open_stream(sink, "Example.COM", 443)
    transfer(circ.channel, fake)
    assert sink.connected is not None
    assert sink.connected.address == "93.184.216.34" and sink.connected.ttl == 300
    assert stream.state is StreamState.OPEN
    fstream = fake.stream(circ.circ_id, stream.stream_id)
    assert fstream is not None and fstream.host == "example.com" and fstream.port == 443
    stream.write(b"hello, exit")
    transfer(circ.channel, fake)
    assert bytes(sink.data) == b"hello, exit"
    stream.close()
    transfer(circ.channel, fake)
    assert stream.state is StreamState.CLOSED
    assert fake.circuit(circ.circ_id).hops[2].ended_streams == {stream.stream_id: EndReason.DONE}
    assert sink.ended == []  # our own close is not reported back as an END
    assert fake.violations == []


def test_ipv4_literal_connected_address(circ: Tunnel, fake: FakeRelay) -> None:
    sink = RecordingSink()
    circ.open_stream(sink, "192.0.2.7", 80)
    transfer(circ.channel, fake)
    assert sink.connected is not None and sink.connected.address == "192.0.2.7"


def test_optimistic_data_before_connected(circ: Tunnel, fake: FakeRelay) -> None:
    sink = RecordingSink()
    stream = circ.open_stream(sink, "example.com", 80)
    stream.write(b"GET / HTTP/1.0\r\n\r\n")
    transfer(circ.channel, fake)
    assert bytes(sink.data) == b"GET / HTTP/1.0\r\n\r\n"


def test_close_before_connected_flushes_pending_data(circ: Tunnel, fake: FakeRelay) -> None:
    """write() then close() before CONNECTED: the data goes out, then END DONE."""
    sink = RecordingSink()
    stream = circ.open_stream(sink, "example.com", 9)
    stream.write(b"request")
    stream.close()
    transfer(circ.channel, fake)
    fhop = fake.circuit(circ.circ_id).hops[2]
    assert fhop.ended_streams == {stream.stream_id: EndReason.DONE}
    fstream = fake.stream(circ.circ_id, stream.stream_id)
    assert fstream is not None and bytes(fstream.received) == b"request"


@pytest.mark.parametrize(
    ("port", "reason"),
    [
        (25, EndReason.EXITPOLICY),
        (81, EndReason.CONNECTREFUSED),
        (82, EndReason.TIMEOUT),
        (83, 200),
    ],  # unknown reasons must be accepted
)
def test_end_reasons_surface_to_sink(port: int, reason: int) -> None:
    fake, _channel, circ = _setup(FakeRelayConfig(refuse_ports={port: reason}))
    sink = RecordingSink()
    stream = circ.open_stream(sink, "example.com", port)
    transfer(circ.channel, fake)
    assert sink.connected is None
    assert len(sink.ended) == 1
    ended = sink.ended[0]
    assert ended.reason == reason and ended.end is not None and ended.end.reason == reason
    if reason == EndReason.EXITPOLICY:
        assert ended.end.address == "93.184.216.34" and ended.end.ttl == 300
    assert stream.state is StreamState.CLOSED and stream.stream_id not in circ.streams
    assert circ.state is CircuitState.OPEN


def test_begin_on_one_hop_circuit_refused_but_begin_dir_works() -> None:
    fake, _channel, circ = _setup(
        FakeRelayConfig(dir_response=b"network-status-version 3\n"), hops=1
    )
    sink = RecordingSink()
    circ.open_stream(sink, "example.com", 80)
    transfer(circ.channel, fake)
    assert sink.end_reason == EndReason.TORPROTOCOL
    dsink = RecordingSink()
    circ.open_dir_stream(dsink)
    transfer(circ.channel, fake)
    assert dsink.connected is not None and dsink.connected.address is None
    assert bytes(dsink.data) == b"network-status-version 3\n"
    assert dsink.end_reason == EndReason.DONE


def test_create_fast_begin_dir_large_document() -> None:
    doc = os.urandom(3 * MB + 17)
    fake = FakeRelay(FakeRelayConfig(dir_response=doc))
    channel = open_channel(fake)
    circ = build_circuit(channel, fake, 1, fast=True)
    sink = RecordingSink()
    circ.open_dir_stream(sink)
    transfer(channel, fake)
    assert bytes(sink.data) == doc and sink.end_reason == EndReason.DONE
    assert fake.violations == []


def test_resolve(circ: Tunnel, fake: FakeRelay) -> None:
    sink = RecordingSink()
    stream = circ.resolve(sink, "example.com")
    transfer(circ.channel, fake)
    assert sink.resolved is not None
    assert [(a.type, a.value, a.ttl) for a in sink.resolved] == [(4, "93.184.216.34", 60)]
    assert stream.state is StreamState.CLOSED and not circ.streams
    assert fake.circuit(circ.circ_id).hops[2].ended_streams == {}  # no END for a RESOLVE


def test_resolve_error_and_ipv6() -> None:
    answers = {
        "gone.example": [(0xF1, b"", 0)],
        "six.example": [
            (6, bytes.fromhex("20010db8000000000000000000000001"), 30),
            (4, bytes([192, 0, 2, 1]), 30),
        ],
    }
    fake, _channel, circ = _setup(FakeRelayConfig(resolve=answers.__getitem__))
    s1, s2 = RecordingSink(), RecordingSink()
    circ.resolve(s1, "gone.example")
    circ.resolve(s2, "six.example")
    transfer(circ.channel, fake)
    assert s1.resolved is not None and s1.resolved[0].type == 0xF1
    assert s2.resolved is not None
    assert [a.value for a in s2.resolved] == ["2001:db8::1", "192.0.2.1"]


def test_exit_end_after_data(circ: Tunnel, fake: FakeRelay) -> None:
    sink = RecordingSink()
    stream = circ.open_stream(sink, "example.com", 80)
    transfer(circ.channel, fake)
    fake.queue_stream_data(circ.circ_id, stream.stream_id, b"bye")
    fake.exit_end_stream(circ.circ_id, stream.stream_id, EndReason.DONE)
    transfer(circ.channel, fake)
    assert bytes(sink.data) == b"bye" and sink.end_reason == EndReason.DONE
    assert stream.state is StreamState.CLOSED


def test_abort_sends_end_misc_and_late_cells_still_count(circ: Tunnel, fake: FakeRelay) -> None:
    src = FakeRelayConfig(source_ports={80: 2 * MB})
    fake.config.source_ports = src.source_ports
    sink = RecordingSink()
    stream = circ.open_stream(sink, "example.com", 80)
    # Take CONNECTED and a first batch, then abort while DATA is in flight.
    receive(circ.channel, b"", fake.now)
    fake.receive_data(circ.channel.take_output())
    receive(circ.channel, fake.take_output(), fake.now)
    got = len(sink.data)
    assert got > 0
    stream.abort()
    transfer(circ.channel, fake)
    assert fake.circuit(circ.circ_id).hops[2].ended_streams == {stream.stream_id: EndReason.MISC}
    assert len(sink.data) == got  # nothing delivered after our END
    fs = fake.stream(circ.circ_id, stream.stream_id)
    assert fs is not None and fs.data_cells_sent * 498 > got  # ... though more was in flight
    assert fake.violations == []
    # The circuit still works and its windows are intact.
    s2 = RecordingSink()
    st2 = circ.open_stream(s2, "example.com", 7)
    st2.write(b"x" * 100_000)
    transfer(circ.channel, fake)
    assert len(s2.data) == 100_000


# -- volume: stream + circuit SENDMEs, authenticated ---------------------------------------


def test_fifty_concurrent_streams_download_and_echo() -> None:
    size = 300 * KB
    fake, channel, circ = _setup(
        FakeRelayConfig(source_ports={80: size}), sendme_accept_min_version=1
    )
    down = [RecordingSink() for _ in range(50)]
    echo = [RecordingSink() for _ in range(50)]
    payloads = [os.urandom(size) for _ in range(50)]
    echo_streams = []
    for i in range(50):
        circ.open_stream(down[i], f"dl{i}.example", 80)
        st = circ.open_stream(echo[i], f"echo{i}.example", 7)
        echo_streams.append(st)
    transfer(channel, fake)
    # Write within the high-water mark, as a well-behaved application does.
    offsets = [0] * 50

    def feed() -> None:
        for i, st in enumerate(echo_streams):
            while offsets[i] < size and st.buffered < SEND_BUFFER_HIGH_WATER:
                st.write(payloads[i][offsets[i] : offsets[i] + 16 * KB])
                offsets[i] += 16 * KB

    for _ in range(10_000):
        feed()
        if transfer(channel, fake, chunk_size=16 * KB) == 0 and all(o >= size for o in offsets):
            break
    for i in range(50):
        assert bytes(down[i].data) == source_content(f"dl{i}.example", 80, size), i
        assert down[i].end_reason == EndReason.DONE
        assert bytes(echo[i].data) == payloads[i], i
    fcirc = fake.circuit(circ.circ_id)
    exit_hop = fcirc.hops[2]
    assert fake.violations == []
    assert circ.state is CircuitState.OPEN and channel.state is ChannelState.OPEN
    # Many authenticated circuit SENDMEs went each way, and stream SENDMEs too.
    assert exit_hop.sendmes_received >= (2 * 50 * size // 498) // 100 - 1
    assert exit_hop.sendmes_emitted >= (50 * size // 498) // 100 - 1
    assert all(h.sendmes_received == 0 for h in fcirc.hops[:2])


def test_upload_two_megabytes_verifies_sendme_digests() -> None:
    size = 2 * MB + 12345
    fake, channel, circ = _setup(FakeRelayConfig(discard_ports={9}), sendme_accept_min_version=1)
    sink = RecordingSink()
    stream = circ.open_stream(sink, "upload.example", 9)
    data = os.urandom(size)
    stream.write(data)
    transfer(channel, fake)
    fstream = fake.stream(circ.circ_id, stream.stream_id)
    assert fstream is not None and bytes(fstream.received) == data
    exit_hop = fake.circuit(circ.circ_id).hops[2]
    cells = -(-size // 498)
    assert exit_hop.data_cells_received == cells
    # Every one of the exit's v1 SENDMEs matched the digest we recorded.
    assert exit_hop.sendmes_emitted == cells // 100
    assert circ.state is CircuitState.OPEN and fake.violations == []
    assert all(len(h.expected_sendmes) <= 10 for h in circ.circuit.hops)


def test_corrupt_sendme_digest_closes_circuit() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(discard_ports={9}, corrupt_sendme_digests=True))
    sink = RecordingSink()
    circ.open_stream(sink, "upload.example", 9).write(os.urandom(200 * KB))
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert circ.closed_reason is not None and "digest" in circ.closed_reason.message
    assert sink.end_reason == EndReason.DESTROY
    assert channel.state is ChannelState.OPEN


@pytest.mark.parametrize("accept_min", [0, 1])
def test_v0_sendme_from_relay(accept_min: int) -> None:
    fake, channel, circ = _setup(
        FakeRelayConfig(discard_ports={9}, sendme_emit_version=0),
        sendme_accept_min_version=accept_min,
    )
    sink = RecordingSink()
    stream = circ.open_stream(sink, "upload.example", 9)
    stream.write(os.urandom(200 * KB))
    transfer(channel, fake)
    if accept_min:
        assert circ.state is CircuitState.CLOSED
    else:
        assert circ.state is CircuitState.OPEN
        fs = fake.stream(circ.circ_id, stream.stream_id)
        assert fs is not None and len(fs.received) == 200 * KB


def test_unexpected_circuit_sendme_closes_circuit(circ: Tunnel, fake: FakeRelay) -> None:
    fake.send_relay(
        fake.circuit(circ.circ_id), 2, RelayCommand.SENDME, 0, b"\x01\x00\x14" + bytes(20)
    )
    transfer(circ.channel, fake)
    assert circ.state is CircuitState.CLOSED


def test_stream_sendme_overflow_closes_circuit(circ: Tunnel, fake: FakeRelay) -> None:
    sink = RecordingSink()
    stream = circ.open_stream(sink, "example.com", 80)
    transfer(circ.channel, fake)
    fake.send_relay(fake.circuit(circ.circ_id), 2, RelayCommand.SENDME, stream.stream_id, b"")
    transfer(circ.channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert sink.end_reason == EndReason.DESTROY


def test_client_stops_at_circuit_window_and_resumes() -> None:
    """With every SENDME withheld, exactly 1000 cells leave (500 per stream, 2 streams)."""
    fake, channel, circ = _setup(
        FakeRelayConfig(
            discard_ports={9}, withhold_circuit_sendmes=True, withhold_stream_sendmes=True
        )
    )
    streams = [circ.open_stream(RecordingSink(), f"u{i}.example", 9) for i in range(3)]
    for st in streams:
        st.write(os.urandom(400 * KB))
    transfer(channel, fake)
    exit_hop = fake.circuit(circ.circ_id).hops[2]
    assert exit_hop.data_cells_received == 1000
    assert circ.circuit.hops[2].package_window == 0
    assert all(0 <= st.package_window <= 500 for st in streams)
    assert fake.violations == []
    fake.release_withheld_sendmes()
    transfer(channel, fake)
    for st in streams:
        fs = fake.stream(circ.circ_id, st.stream_id)
        assert fs is not None and len(fs.received) == 400 * KB
    assert fake.violations == [] and circ.state is CircuitState.OPEN


def test_client_stops_at_stream_window() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(discard_ports={9}, withhold_stream_sendmes=True))
    st = circ.open_stream(RecordingSink(), "u.example", 9)
    st.write(os.urandom(400 * KB))
    transfer(channel, fake)
    fs = fake.stream(circ.circ_id, st.stream_id)
    assert fs is not None and fs.data_cells_received == 500 and st.package_window == 0
    fake.release_withheld_sendmes()
    transfer(channel, fake)
    assert len(fs.received) == 400 * KB and fake.violations == []


# -- backpressure ---------------------------------------------------------------------------


def test_pause_delivery_stops_stream_sendmes() -> None:
    size = 2 * MB
    fake, channel, circ = _setup(FakeRelayConfig(source_ports={80: size}))
    sink = RecordingSink()
    stream = circ.open_stream(sink, "big.example", 80)
    sink.on_data = lambda _d: stream.pause_delivery() if len(sink.data) >= 10 * KB else None
    transfer(channel, fake)
    fs = fake.stream(circ.circ_id, stream.stream_id)
    assert fs is not None
    # The exit filled exactly the stream window (some SENDMEs went before the pause).
    granted = fs.sendmes_received
    assert fs.data_cells_sent == 500 + 50 * granted
    assert fs.package_window == 0
    assert stream.deliver_window == 0
    assert len(sink.data) == fs.data_cells_sent * 498
    sink.on_data = None
    stream.resume_delivery()
    transfer(channel, fake)
    assert bytes(sink.data) == source_content("big.example", 80, size)
    assert sink.end_reason == EndReason.DONE and fake.violations == []


def test_pause_inside_callback_then_resume_many_times() -> None:
    size = 1 * MB
    fake, channel, circ = _setup(FakeRelayConfig(source_ports={80: size}))
    sink = RecordingSink()
    stream = circ.open_stream(sink, "big.example", 80)
    sink.on_data = lambda _d: stream.pause_delivery()
    for _ in range(200):
        transfer(channel, fake)
        if sink.ended:
            break
        stream.resume_delivery()
    assert bytes(sink.data) == source_content("big.example", 80, size)
    assert fake.violations == []


def test_stream_window_overrun_closes_circuit() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(source_ports={80: MB}, ignore_stream_windows=True))
    sink = RecordingSink()
    other = RecordingSink()
    circ.open_stream(other, "other.example", 7)
    stream = circ.open_stream(sink, "big.example", 80)
    stream.pause_delivery()
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED
    assert circ.closed_reason is not None and "window" in circ.closed_reason.message
    assert sink.end_reason is not None and len(sink.ended) == 1
    assert len(other.ended) == 1
    assert channel.state is ChannelState.OPEN


def test_send_buffer_high_water_and_writable() -> None:
    fake, channel, circ = _setup(FakeRelayConfig(discard_ports={9}, withhold_stream_sendmes=True))
    sink = RecordingSink()
    stream = circ.open_stream(sink, "u.example", 9)
    transfer(channel, fake)
    # 500 cells go out at once (at the next flush); what is left stays in the send buffer.
    assert stream.write(b"a" * (500 * 498)) is False
    fake.receive_data(channel.data_to_send(fake.now))
    assert stream.buffered == 0
    assert stream.write(b"b" * (SEND_BUFFER_HIGH_WATER - 1)) is False
    assert stream.write(b"c") is True
    assert stream.blocked_writer and sink.writable_calls == 0
    transfer(channel, fake)
    assert sink.writable_calls == 0  # still blocked on the stream window
    fake.release_withheld_sendmes()
    transfer(channel, fake)
    assert sink.writable_calls == 1 and not stream.blocked_writer
    assert stream.buffered == 0
    fs = fake.stream(circ.circ_id, stream.stream_id)
    assert fs is not None and len(fs.received) == 500 * 498 + SEND_BUFFER_HIGH_WATER


def test_write_after_close_is_ignored(circ: Tunnel, fake: FakeRelay) -> None:
    stream = circ.open_stream(RecordingSink(), "example.com", 7)
    transfer(circ.channel, fake)
    stream.close()
    assert stream.write(b"late") is False
    transfer(circ.channel, fake)
    assert fake.violations == []


# -- onion-service virtual hop (rend-spec §4.2.1, §5: SHA3-256, AES-256) ---------------------


def test_virtual_hop_streams_and_sendmes() -> None:
    fake, channel, circ = _setup(
        FakeRelayConfig(source_ports={80: 700 * KB}), sendme_accept_min_version=1
    )
    keys = os.urandom(128)
    circ.add_virtual_hop(keys[0:32], keys[32:64], keys[64:96], keys[96:128])
    fake.add_virtual_hop(circ.circ_id, keys)
    assert circ.hop_count == 4
    down, up = RecordingSink(), RecordingSink()
    circ.open_stream(down, "", 80)  # onion services get BEGIN ":port"
    st = circ.open_stream(up, "", 7)
    payload = os.urandom(600 * KB)
    st.write(payload)
    transfer(channel, fake, chunk_size=16 * KB)
    assert bytes(down.data) == source_content("", 80, 700 * KB)
    assert bytes(up.data) == payload
    service = fake.circuit(circ.circ_id).hops[3]
    # SENDMEs both ways quoted 20-byte prefixes of SHA3-256 digests, and matched.
    assert service.sendmes_received >= 20 and service.sendmes_emitted >= 10
    assert fake.violations == [] and circ.state is CircuitState.OPEN


def test_virtual_hop_with_congestion_control() -> None:
    """INTRODUCE1 asked the service for congestion control: the virtual hop runs it
    (SENDMEs every sendme_inc cells, flow control instead of stream windows) with the
    onion-service Vegas parameters."""
    fake, channel, circ = _setup(
        FakeRelayConfig(source_ports={80: 900 * KB}), sendme_accept_min_version=1
    )
    keys = os.urandom(128)
    params = CCParams.from_consensus(lambda name, default, lo, hi: default, "onion")
    circ.add_virtual_hop(
        keys[0:32], keys[32:64], keys[64:96], keys[96:128], congestion_control=params, sendme_inc=31
    )
    fake.add_virtual_hop(circ.circ_id, keys, cc_sendme_inc=31)
    assert circ.cc is not None and circ.circuit.hops[3].cc is circ.cc and circ.cc_params is params
    down, up = RecordingSink(), RecordingSink()
    down_stream = circ.open_stream(down, "", 80)
    st = circ.open_stream(up, "", 7)
    assert down_stream.flow is not None and st.flow is not None
    payload = os.urandom(600 * KB)
    st.write(payload)
    transfer(channel, fake, chunk_size=16 * KB)
    assert bytes(down.data) == source_content("", 80, 900 * KB)
    assert bytes(up.data) == payload
    service = fake.circuit(circ.circ_id).hops[3]
    assert service.cc and service.sendmes_received >= (900 * KB // 498) // 31 - 1
    assert service.max_inflight_seen > 0 and circ.cc.sendmes_received > 0
    # No stream-level SENDMEs on a congestion-controlled hop (the fake closes on one).
    assert fake.violations == [] and circ.state is CircuitState.OPEN


def test_onion_congestion_control_parameters() -> None:
    """cc_*_onion names and C tor's VEGAS_*_ONION_DFLT defaults (62-cell outbufs)."""
    seen: list[str] = []

    def param(name: str, default: int, lo: int, hi: int) -> int:
        seen.append(name)
        return default

    onion = CCParams.from_consensus(param, "onion")
    assert (onion.alpha, onion.beta, onion.gamma, onion.delta) == (186, 434, 310, 558)
    assert onion.ss_cwnd_cap == 600
    assert {"cc_vegas_alpha_onion", "cc_sscap_onion"} <= set(seen)
    exit_ = CCParams.from_consensus(lambda name, default, lo, hi: default)
    assert (exit_.alpha, exit_.beta, exit_.gamma, exit_.delta) == (186, 248, 186, 310)
    live = CCParams.from_consensus(
        lambda name, default, lo, hi: {"cc_vegas_beta_onion": 372}.get(name, default), "onion"
    )
    assert live.beta == 372
    with pytest.raises(ValueError):
        CCParams.from_consensus(param, "sbws")


# -- re-entrant callbacks ------------------------------------------------------------------


def test_writing_from_stream_writable(circ: Tunnel, fake: FakeRelay) -> None:
    """The application refills the buffer from stream_writable() (asyncio resume_writing)."""
    fake.config.discard_ports = {9}
    sink = RecordingSink()
    stream = circ.open_stream(sink, "u.example", 9)
    data = os.urandom(3 * MB)
    sent = [0]

    def refill() -> None:
        while sent[0] < len(data):
            chunk = data[sent[0] : sent[0] + 20 * KB]
            sent[0] += len(chunk)
            if stream.write(chunk):
                return  # blocked again: wait for the next stream_writable()

    sink.on_writable = refill
    stream.blocked_writer = True  # as if an earlier write had filled the buffer
    refill()
    transfer(circ.channel, fake)
    fs = fake.stream(circ.circ_id, stream.stream_id)
    assert fs is not None and bytes(fs.received) == data
    assert sink.writable_calls > 5 and fake.violations == []


def test_echoing_from_stream_data(circ: Tunnel, fake: FakeRelay) -> None:
    """An application that writes back inside stream_data() (mid-run)."""
    fake.config.source_ports = {80: MB}
    fake.config.end_after_source = False  # an END would cut off our last writes
    sink = RecordingSink()
    stream = circ.open_stream(sink, "e.example", 80)
    sink.on_data = lambda d: stream.write(d[::-1])
    transfer(circ.channel, fake, chunk_size=16 * KB)
    fs = fake.stream(circ.circ_id, stream.stream_id)
    content = source_content("e.example", 80, MB)
    assert bytes(sink.data) == content
    assert fs is not None and len(fs.received) == MB and fake.violations == []


# -- streams opened by the far end (an onion service's rendezvous circuit) ---------------


def _service_side(accept: int | None, close_on_limit: bool = False):  # noqa: ANN202
    from fakes.relay import transfer as _transfer

    fake, channel, circ = _setup(sendme_accept_min_version=1)
    keys = os.urandom(128)
    circ.add_virtual_hop(keys[0:32], keys[32:64], keys[64:96], keys[96:128])
    fake.add_virtual_hop(circ.circ_id, keys)
    circ.accept_streams = accept
    circ.close_on_stream_limit = close_on_limit
    seen: list[object] = []
    circ.owner = seen
    _transfer(channel, fake)
    return fake, channel, circ, seen


def test_incoming_begin_is_offered_then_accepted_with_connected() -> None:
    from puretor.proto.events import StreamIncoming

    fake, channel, circ, seen = _service_side(0)
    fcirc = fake.circuit(circ.circ_id)
    fake.send_relay(fcirc, 3, RelayCommand.BEGIN, 5, b":80\0")
    transfer(channel, fake)
    incoming = [e for e in seen if isinstance(e, StreamIncoming)]
    assert len(incoming) == 1 and incoming[0].port == 80 and incoming[0].host == ""
    stream = incoming[0].stream
    assert stream.stream_id == 5
    sink = RecordingSink()
    stream.owner = sink
    stream.write(b"not before CONNECTED")
    transfer(channel, fake)
    assert fcirc.hops[3].unhandled == []  # nothing went out yet
    stream.accept()
    transfer(channel, fake)
    assert fcirc.hops[3].unhandled[0] == (RelayCommand.CONNECTED, 5, b"")
    assert circ.state is CircuitState.OPEN


def test_incoming_begin_limits_and_refusals() -> None:
    fake, channel, circ, seen = _service_side(1, close_on_limit=True)
    fcirc = fake.circuit(circ.circ_id)
    fake.send_relay(fcirc, 3, RelayCommand.BEGIN, 1, b":80\0")
    transfer(channel, fake)
    assert circ.state is CircuitState.OPEN
    seen[-1].stream.owner = RecordingSink()  # type: ignore[attr-defined]
    fake.send_relay(fcirc, 3, RelayCommand.BEGIN, 2, b":80\0")
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED  # HiddenServiceMaxStreamsCloseCircuit

    fake, channel, circ, _seen = _service_side(None)
    fake.send_relay(fake.circuit(circ.circ_id), 3, RelayCommand.BEGIN, 1, b":80\0")
    transfer(channel, fake)
    assert circ.state is CircuitState.CLOSED  # a client's circuit takes no BEGIN


def test_incoming_begin_garbage_gets_an_end() -> None:
    fake, channel, circ, seen = _service_side(0)
    fake.send_relay(fake.circuit(circ.circ_id), 3, RelayCommand.BEGIN, 9, b"no-nul")
    transfer(channel, fake)
    assert circ.state is CircuitState.OPEN and 9 not in circ.streams
