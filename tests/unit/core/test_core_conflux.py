"""Conflux (prop 329) in the sans-I/O core, against fake guards and a fake conflux exit.

Each leg is a congestion-controlled 3-hop circuit through its own fake guard (its own
link connection), ending at one `FakeConfluxExit`.  Tests decide which link delivers
first and how the exit spreads cells over the legs, so cells really arrive out of
order; the streams must still see every byte once, in order.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakes.conflux import FakeConfluxExit, FakeLeg
from fakes.relay import (
    FakeRelay,
    FakeRelayConfig,
    build_circuit,
    deliver_events,
    open_channel,
    source_content,
)
from fakes.sink import RecordingSink
from puretor.errors import RemoteProtocolError
from puretor.proto.channel import Channel, ChannelState
from puretor.proto.circuit import Circuit, CircuitState
from puretor.proto.conflux import (
    MULTIPLEXED,
    ConfluxSet,
    DesiredUx,
    LegState,
    LinkPayload,
    decode_switch,
    encode_switch,
)
from puretor.proto.congestion import CCParams
from puretor.proto.events import ConfluxLinked, EventQueue, TunnelClosed
from puretor.proto.relaymsg import EndReason, RelayCommand
from puretor.proto.tunnel import Tunnel

KB = 1024
CC = CCParams()


# -- codecs -------------------------------------------------------------------------------


def test_link_payload_layout() -> None:
    nonce = bytes(range(32))
    body = LinkPayload(nonce, 5, 7, DesiredUx.HIGH_THROUGHPUT).encode()
    # C tor conflux.trunnel: version, nonce[32], u64 last_seqno_sent, u64 last_seqno_recv, ux.
    assert body == b"\x01" + nonce + struct.pack(">QQ", 5, 7) + b"\x03"
    assert LinkPayload.decode(body) == LinkPayload(nonce, 5, 7, 3)
    assert LinkPayload.decode(body + b"trailing") == LinkPayload(nonce, 5, 7, 3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"\x02" + bytes(49), "version 2"),
        (b"\x01" + bytes(30), "truncated"),
        (b"\x01" + bytes(48) + b"\x05", "unknown UX 5"),
    ],
)
def test_link_payload_errors(body: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        LinkPayload.decode(body)


def test_switch_codec() -> None:
    assert encode_switch(31) == b"\x00\x00\x00\x1f"
    # C tor sends SWITCH with a zero-padded full-size body.
    assert decode_switch(encode_switch(2**32 - 1) + bytes(494)) == 2**32 - 1
    with pytest.raises(RemoteProtocolError):
        decode_switch(b"\x00\x01")
    with pytest.raises(ValueError):
        encode_switch(2**32)


def test_multiplexed_commands_are_c_tors() -> None:
    names = {RelayCommand(c).name for c in MULTIPLEXED}
    assert names == {"BEGIN", "DATA", "END", "CONNECTED", "RESOLVE", "RESOLVED", "XON", "XOFF"}


# -- a set of legs through separate fake guards -------------------------------------------------


class Net:
    """Client channels/circuits and their fake guards, one pair per leg.

    Each leg is built as a tunnel of its own (``tunnels``); ``circs`` are their circuits,
    which stay the legs' handles once `link` has joined them into one tunnel.  The
    channels share one event queue, as a client's do.
    """

    def __init__(
        self,
        legs: int = 2,
        *,
        exit_kwargs: dict[str, object] | None = None,
        config: Callable[[], FakeRelayConfig] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.exit = FakeConfluxExit(**(exit_kwargs or {}))  # type: ignore[arg-type]
        self.queue = EventQueue()
        self.fakes: list[FakeRelay] = []
        self.channels: list[Channel] = []
        self.tunnels: list[Tunnel] = []
        self.circs: list[Circuit] = []
        self.events: list[list[object]] = []
        for i in range(legs):
            fake = FakeRelay(config() if config else FakeRelayConfig(), address=f"10.{i}.0.1")
            channel = open_channel(fake, events=self.queue)
            tunnel = build_circuit(
                channel, fake, 3, congestion_control=CC, sendme_accept_min_version=1
            )
            if clock is not None:
                tunnel.clock = clock
            events: list[object] = []
            tunnel.owner = events  # the fakes' event delivery appends the tunnel's events
            self.fakes.append(fake)
            self.channels.append(channel)
            self.tunnels.append(tunnel)
            self.circs.append(tunnel.circuit)
            self.events.append(events)
        self.exit.attach(*self.fakes)
        self.cfx = ConfluxSet()
        self.order: Callable[[int], list[int]] = lambda n: list(range(len(self.fakes)))

    def link(self) -> Tunnel:
        for tunnel in self.tunnels:
            tunnel.start_conflux(self.cfx)
        self.pump()
        assert all(isinstance(ev[-1], ConfluxLinked) for ev in self.events), self.events
        return Tunnel.join(self.cfx, self.tunnels)

    def deliver(self) -> None:
        deliver_events(self.queue)

    def round(self, n: int = 0) -> bool:
        moved = False
        for channel, fake in zip(self.channels, self.fakes, strict=True):
            out = channel.take_output()
            if out:
                fake.receive_data(out)
                moved = True
        for i in self.order(n):
            back = self.fakes[i].take_output()
            if back:
                moved = True
                self.channels[i].receive_data(back, self.fakes[i].now)
                self.deliver()
        return moved

    def pump(self, done: Callable[[], bool] = lambda: False, max_rounds: int = 100_000) -> int:
        for n in range(max_rounds):
            self.deliver()  # what API calls since the last round produced
            if done():
                return n
            if not self.round(n):
                return n
        raise AssertionError("still busy")

    def violations(self) -> list[str]:
        return self.exit.violations + [v for f in self.fakes for v in f.violations]


def _switching_every(k: int) -> Callable[[list[FakeLeg]], FakeLeg]:
    """An exit scheduler that changes legs every ``k`` DATA cells."""
    counter = itertools.count()

    def choose(legs: list[FakeLeg]) -> FakeLeg:
        return legs[(next(counter) // k) % len(legs)]

    return choose


def _sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


# -- linking ------------------------------------------------------------------------------------


def test_link_handshake_and_finalize() -> None:
    net = Net()
    owner = net.link()
    assert net.exit.links_received == 2
    (fset,) = net.exit.sets.values()
    assert fset.nonce == net.cfx.nonce
    assert all(leg.acked for leg in fset.legs)  # LINKED_ACK went back on every leg
    assert all(leg.link == LinkPayload(net.cfx.nonce, 0, 0, 3) for leg in fset.legs)
    assert net.cfx.finalized and owner.circuit in net.circs
    assert all(leg.state is LegState.LINKED and leg.link_rtt_usec > 0 for leg in net.cfx.legs)
    assert all(c.tunnel.streams is owner.streams for c in net.circs)
    assert all(c.tunnel is owner for c in net.circs)
    assert net.cfx.send_ux is DesiredUx.MIN_LATENCY  # what the fake exit (as C tor) asks
    assert net.violations() == []


def test_linked_with_another_nonce_closes_the_leg() -> None:
    net = Net(exit_kwargs={"linked_nonce": bytes(32)})
    for tunnel in net.tunnels:
        tunnel.start_conflux(net.cfx)
    net.pump()
    for circ, events in zip(net.circs, net.events, strict=True):
        assert circ.state is CircuitState.CLOSED
        closed = [e for e in events if isinstance(e, TunnelClosed)]
        assert "another set's nonce" in closed[0].message


def test_linked_reporting_data_we_never_got_is_refused() -> None:
    net = Net(1, exit_kwargs={"report_sent": 10})
    net.tunnels[0].start_conflux(net.cfx)
    net.pump()
    assert net.circs[0].state is CircuitState.CLOSED
    assert "never received" in net.tunnels[0].closed_reason.message  # type: ignore[union-attr]


@pytest.mark.parametrize("command", [19, 20, 21, 22])
def test_conflux_cells_without_conflux_are_violations(command: int) -> None:
    fake = FakeRelay(FakeRelayConfig())
    channel = open_channel(fake)
    circ = build_circuit(channel, fake, 3, congestion_control=CC)
    fc = fake.circuit(circ.circ_id)
    fake.send_relay_here(fc, 2, command, 0, b"\x01" + bytes(49))
    channel.receive_data(fake.take_output(), fake.now)
    assert circ.state is CircuitState.CLOSED
    assert "without conflux" in circ.closed_reason.message  # type: ignore[union-attr]


def test_conflux_cells_from_a_middle_hop_are_violations() -> None:
    net = Net()
    net.link()
    fake, circ = net.fakes[0], net.circs[0]
    fake.send_relay_here(fake.circuit(circ.circ_id), 1, 22, 0, encode_switch(3))
    net.pump()
    assert all(c.state is CircuitState.CLOSED for c in net.circs)
    assert "not the exit" in circ.tunnel.closed_reason.message  # type: ignore[union-attr]


def test_link_and_linked_ack_from_the_exit_are_violations() -> None:
    net = Net()
    net.link()
    fake, circ = net.fakes[1], net.circs[1]
    fake.send_relay_here(fake.circuit(circ.circ_id), 2, 21, 0, b"")
    net.pump()
    assert all(c.state is CircuitState.CLOSED for c in net.circs)


def test_second_linked_is_a_violation() -> None:
    net = Net()
    net.link()
    fake, circ = net.fakes[0], net.circs[0]
    body = LinkPayload(net.cfx.nonce, 0, 0, 1).encode()
    fake.send_relay_here(fake.circuit(circ.circ_id), 2, 20, 0, body)
    net.pump()
    assert all(c.state is CircuitState.CLOSED for c in net.circs)


def test_finalize_drops_legs_that_did_not_link() -> None:
    net = Net(3)
    for tunnel in net.tunnels[:2]:
        tunnel.start_conflux(net.cfx)
    net.cfx.add_leg(net.circs[2])  # never sent LINK
    net.pump()
    owner = Tunnel.join(net.cfx, net.tunnels)
    assert len(net.cfx.legs) == 2 and net.circs[2].conflux is None
    assert owner.circuit in net.circs[:2]


# -- downloads: cells from several legs back in order ---------------------------------------------


@pytest.mark.parametrize("slow_leg", [0, 1])
@pytest.mark.parametrize("switch_every", [1, 7, 31, 200])
def test_download_over_two_legs_in_order(slow_leg: int, switch_every: int) -> None:
    size = 600 * KB
    net = Net(
        exit_kwargs={"scheduler": _switching_every(switch_every)},
        config=lambda: FakeRelayConfig(source_ports={80: size}),
    )
    owner = net.link()
    # The other leg's link delivers first each round: its cells overtake the slow leg's.
    net.order = lambda n: [1 - slow_leg, slow_leg]
    sink = RecordingSink()
    owner.open_stream(sink, "dl.example", 80)
    net.pump(lambda: bool(sink.ended))
    assert _sha(sink.data) == _sha(source_content("dl.example", 80, size))
    assert sink.end_reason == EndReason.DONE
    stats = net.cfx.stats()
    assert all(n > 100 for n in stats["cells_received"])  # type: ignore[attr-defined]
    assert stats["switches_received"] > 0  # type: ignore[operator]
    if slow_leg == 0:
        # Leg 0 carries the first cells, and its link delivers last: cells queued.
        assert stats["max_queued_cells"] > 0  # type: ignore[operator]
        # ... and their bytes counted against MaxMemInQueues while they waited.
        assert net.cfx.queue_budget is not None and net.cfx.queue_budget.peak > 0
    assert net.cfx.queued_cells == 0 and net.cfx.queued_bytes == 0
    assert net.violations() == []
    # Circuit SENDMEs were counted on each leg as cells arrived.
    assert all(
        net.fakes[i].circuit(c.circ_id).hops[2].sendmes_received > 0
        for i, c in enumerate(net.circs)
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(1, 300 * KB),
    streams=st.integers(1, 3),
    legs=st.integers(2, 3),
)
def test_random_schedules_and_arrival_orders_keep_every_stream_intact(
    seed: int, size: int, streams: int, legs: int
) -> None:
    rng = random.Random(seed)

    def scheduler(ready: list[FakeLeg]) -> FakeLeg:
        return rng.choice(ready)

    net = Net(
        legs,
        exit_kwargs={"scheduler": scheduler},
        config=lambda: FakeRelayConfig(source_ports={80: size}),
    )
    owner = net.link()
    net.order = lambda n: rng.sample(range(legs), legs)
    sinks = [RecordingSink() for _ in range(streams)]
    for i, sink in enumerate(sinks):
        owner.open_stream(sink, f"host{i}.example", 80)
    net.pump(lambda: all(s.ended for s in sinks))
    for i, sink in enumerate(sinks):
        assert _sha(sink.data) == _sha(source_content(f"host{i}.example", 80, size))
        assert sink.end_reason == EndReason.DONE
        assert sink.data_after_end == 0
    assert net.violations() == []
    assert net.cfx.queued_cells == 0 and net.cfx.queued_bytes == 0


def test_data_on_a_faster_leg_waits_for_connected() -> None:
    """CONNECTED goes out on one leg and the first DATA on another that delivers first:
    without sequencing that DATA would be 'DATA before CONNECTED'."""
    net = Net(
        exit_kwargs={"scheduler": lambda legs: legs[-1]},
        config=lambda: FakeRelayConfig(source_ports={80: 50 * KB}),
    )
    owner = net.link()
    net.order = lambda n: [1, 0]
    sink = RecordingSink()
    stream = owner.open_stream(sink, "dl.example", 80)
    # BEGIN went on the owner's leg; the fake answers CONNECTED on that leg and puts
    # DATA on leg 1, whose link we deliver first.
    net.pump(lambda: bool(sink.ended))
    assert sink.connected is not None
    assert bytes(sink.data) == source_content("dl.example", 80, 50 * KB)
    assert stream.tunnel is owner
    assert net.violations() == []


# -- uploads: our scheduler and SWITCH ------------------------------------------------------------


@pytest.mark.parametrize("ux", [DesiredUx.MIN_LATENCY, DesiredUx.HIGH_THROUGHPUT])
def test_upload_echo_over_conflux(ux: DesiredUx) -> None:
    size = 400 * KB
    # A clock that stands still: both legs keep the same RTT, so MinRTT stays put.
    net = Net(
        exit_kwargs={"linked_ux": int(ux), "scheduler": _switching_every(40)},
        clock=lambda: 100.0,
    )
    owner = net.link()
    sink = RecordingSink()
    stream = owner.open_stream(sink, "echo.example", 7)
    net.pump()
    payload = random.Random(1).randbytes(size)
    sent = 0
    while sent < size:
        stream.write(payload[sent : sent + 64 * KB])
        sent += 64 * KB
        net.pump()
    net.pump(lambda: len(sink.data) >= size)
    assert bytes(sink.data) == payload
    stats = net.cfx.stats()
    cells_sent: list[int] = stats["cells_sent"]  # type: ignore[assignment]
    if ux is DesiredUx.HIGH_THROUGHPUT:
        # LowRTT: once the first leg's window is full the other takes cells, after SWITCH.
        assert min(cells_sent) > 0 and stats["switches_sent"] > 0  # type: ignore[operator]
    else:
        # MinRTT: everything on the lowest-RTT leg; no SWITCH needed.
        assert sorted(cells_sent)[0] == 0 and stats["switches_sent"] == 0
    assert net.violations() == []


def test_switch_to_a_leg_with_equal_count_sends_no_switch() -> None:
    cfx = ConfluxSet()
    circs = [object(), object()]

    class _Circ:
        conflux = None
        conflux_leg = None

    legs = [cfx.add_leg(_Circ()) for _ in circs]  # type: ignore[arg-type]
    assert cfx.switch_to(legs[0]) == 0
    assert cfx.switch_to(legs[1]) == 0  # nothing sent yet: counts agree
    cfx.note_sent(legs[1], 5)
    assert cfx.switch_to(legs[0]) == 5 and legs[0].last_seq_sent == 5
    cfx.note_sent(legs[0], 2)
    assert cfx.switch_to(legs[1]) == 2 and legs[1].last_seq_sent == 7
    assert cfx.switches_sent == 2


# -- failures -----------------------------------------------------------------------------------


def test_a_closed_leg_takes_the_set_down() -> None:
    net = Net(config=lambda: FakeRelayConfig(source_ports={80: 400 * KB}))
    owner = net.link()
    sink = RecordingSink()
    owner.open_stream(sink, "dl.example", 80)
    net.pump(lambda: len(sink.data) > 50 * KB)
    other = next(c for c in net.circs if c is not owner.circuit)
    fake = net.fakes[net.circs.index(other)]
    fake.inject_destroy(other.circ_id)
    net.pump()
    assert all(c.state is CircuitState.CLOSED for c in net.circs)
    assert sink.end_reason == EndReason.DESTROY
    # The owner sent DESTROY to its guard.
    owner_fake = net.fakes[net.circs.index(owner.circuit)]
    assert owner.circuit.circ_id in dict(owner_fake.destroys_received)


def test_out_of_order_queue_is_bounded() -> None:
    net = Net(
        exit_kwargs={"scheduler": lambda legs: legs[-1]},
        config=lambda: FakeRelayConfig(source_ports={80: 600 * KB}, cc_cwnd_cap=5000),
    )
    owner = net.link()
    net.cfx.max_queued_cells = 100
    sink = RecordingSink()
    # CONNECTED comes on leg 0; a bogus SWITCH on leg 1 makes all its DATA "early".
    fake1, circ1 = net.fakes[1], net.circs[1]
    fake1.send_relay_here(fake1.circuit(circ1.circ_id), 2, 22, 0, encode_switch(1000))
    owner.open_stream(sink, "dl.example", 80)
    net.pump()
    assert all(c.state is CircuitState.CLOSED for c in net.circs)
    reason = circ1.tunnel.closed_reason
    assert reason is not None and "out-of-order queue over 100 cells" in reason.message
    assert sink.end_reason == EndReason.DESTROY
    assert net.cfx.queued_bytes == 0  # no longer counted against MaxMemInQueues


def test_switch_that_goes_backwards_is_a_violation() -> None:
    net = Net(
        exit_kwargs={"scheduler": _switching_every(50)},
        config=lambda: FakeRelayConfig(source_ports={80: 100 * KB}),
    )
    owner = net.link()
    sink = RecordingSink()
    owner.open_stream(sink, "dl.example", 80)
    net.pump(lambda: bool(sink.ended))
    assert net.cfx.delivered > 100
    # A SWITCH that does not reach the current count makes the next cell "old".
    fake, circ = net.fakes[0], net.circs[0]
    fc = fake.circuit(circ.circ_id)
    leg = net.cfx.legs[[lg.circuit for lg in net.cfx.legs].index(circ)]
    leg.last_seq_recv = 0  # as if the exit's numbering went back
    fake.send_relay_here(fc, 2, RelayCommand.DATA, 99, b"x")
    net.pump()
    assert circ.state is CircuitState.CLOSED
    assert "already delivered" in circ.tunnel.closed_reason.message  # type: ignore[union-attr]


def test_stream_zero_end_is_dropped_unsequenced() -> None:
    net = Net(config=lambda: FakeRelayConfig(source_ports={80: 20 * KB}))
    owner = net.link()
    fake, circ = net.fakes[0], net.circs[0]
    fake.send_relay_here(fake.circuit(circ.circ_id), 2, RelayCommand.END, 0, b"\x06")
    net.pump()
    assert net.cfx.delivered == 0
    sink = RecordingSink()
    owner.open_stream(sink, "dl.example", 80)
    net.pump(lambda: bool(sink.ended))
    assert bytes(sink.data) == source_content("dl.example", 80, 20 * KB)


def test_no_directory_streams_on_a_set() -> None:
    net = Net()
    owner = net.link()
    with pytest.raises(RuntimeError, match="conflux"):
        owner.open_dir_stream(RecordingSink())


def test_channel_loss_of_one_leg_ends_streams() -> None:
    net = Net(config=lambda: FakeRelayConfig(source_ports={80: 400 * KB}))
    owner = net.link()
    sink = RecordingSink()
    owner.open_stream(sink, "dl.example", 80)
    net.pump(lambda: len(sink.data) > 20 * KB)
    net.channels[1].close("link lost")
    net.deliver()
    assert net.channels[1].state is ChannelState.CLOSED
    assert all(c.state is CircuitState.CLOSED for c in net.circs)
    assert sink.end_reason == EndReason.DESTROY


def test_stream_callbacks_during_teardown_do_not_send_on_the_dying_leg() -> None:
    """A leg closes; a stream's end handler opens a new stream on the set.  Handlers run
    after the core finished the teardown (events), so the set is down by then: the open
    is refused with RuntimeError, and nothing is sealed on a dying leg."""
    net = Net(config=lambda: FakeRelayConfig(source_ports={80: 2000 * KB}))
    owner = net.link()
    opened: list[object] = []

    class Reopener(RecordingSink):
        def stream_ended(self, reason: int, end: object, message: str) -> None:
            super().stream_ended(reason, end, message)  # type: ignore[arg-type]
            try:
                opened.append(owner.open_stream(RecordingSink(), "again.example", 80))
            except RuntimeError as exc:  # the set is going down: refused, cleanly
                opened.append(exc)

    sink = Reopener()
    owner.open_stream(sink, "dl.example", 80)
    net.pump(lambda: len(sink.data) > 10 * KB)
    other = next(c for c in net.circs if c is not owner.circuit)
    net.cfx.current = other.conflux_leg  # the leg about to die was the last one used
    net.fakes[net.circs.index(other)].inject_destroy(other.circ_id)
    net.pump()
    assert all(c.state is CircuitState.CLOSED for c in net.circs)
    assert sink.end_reason == EndReason.DESTROY and len(opened) == 1
    assert isinstance(opened[0], RuntimeError), opened
    for fake, circ in zip(net.fakes, net.circs, strict=True):
        hops = fake.circuit(circ.circ_id).hops
        assert all(s.host != "again.example" for s in hops[-1].all_streams.values())
