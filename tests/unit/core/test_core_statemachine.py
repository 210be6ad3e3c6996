"""Random operation sequences on one 3-hop circuit, checked against invariants.

A hypothesis state machine opens streams of several kinds, writes, pauses and
resumes delivery, closes and aborts, moves bytes in partial rounds with odd
chunk sizes, lets the exit send and end, and injects relay misbehaviour.  After
every step:

* windows stay within [0, start] on both ends of every hop and stream;
* the fake relay (a strict oracle) never saw the client send DATA its package
  windows did not allow, a bad SENDME, or any other violation;
* every stream's bytes are a prefix of what was sent — in order, exactly once —
  and nothing arrives after a stream ended, which it does at most once;
* buffers stay bounded; a closed circuit has told every stream.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fakes.relay import (
    FakeRelay,
    FakeRelayConfig,
    build_circuit,
    deliver_events,
    open_channel,
    pump_until,
    source_content,
    transfer,
)
from fakes.sink import RecordingSink
from puretor.proto.cells import DestroyReason
from puretor.proto.channel import Channel, ChannelState
from puretor.proto.circuit import CircuitState
from puretor.proto.relaymsg import EndReason, RelayCommand
from puretor.proto.streams import (
    SEND_BUFFER_HIGH_WATER,
    STREAM_WINDOW_START,
    Stream,
    StreamState,
)

CIRCWINDOW = 200  # small, so circuit SENDMEs happen often (param-spec allows 100..1000)
SOURCE_SIZES = {80: 0, 81: 1, 82: 498, 83: 20_000, 84: 260_000}  # 260 KB > a stream window
REFUSED = {25: EndReason.EXITPOLICY, 26: EndReason.CONNECTREFUSED}
WRITE_SIZES = [1, 497, 498, 499, 5_000, 40_000]
MAX_WRITE = max(WRITE_SIZES)


def _unsent_cells(channel: Channel) -> int:
    """Cells sealed but not yet taken from the channel (its mux's queues)."""
    mux = channel.mux
    queued = sum(mux.queued_cells(key) for key in list(mux._entries))
    return queued + sum(len(cell) // 514 for cell in mux._channel_cells)


@dataclass(eq=False)
class Model:
    kind: str  # echo / source / refused / resolve / discard
    sink: RecordingSink
    stream: Stream
    expected: bytes | bytearray  # what the client may receive, in order
    host: str = ""
    port: int = 0
    ended_by_us: bool = False


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        config = FakeRelayConfig(
            circwindow=CIRCWINDOW,
            source_ports=dict(SOURCE_SIZES),
            refuse_ports=dict(REFUSED),
            discard_ports={9},
        )
        self.fake = FakeRelay(config)
        self.channel = open_channel(self.fake)
        self.circ = build_circuit(
            self.channel, self.fake, 3, circwindow=CIRCWINDOW, sendme_accept_min_version=1
        )
        self.models: list[Model] = []
        self.misbehaved = False
        self.counter = 0

    # -- helpers -------------------------------------------------------------------------

    @property
    def circ_open(self) -> bool:
        return self.circ.state is CircuitState.OPEN

    def _pick(self, data: st.DataObject) -> Model:
        return self.models[data.draw(st.integers(0, len(self.models) - 1), label="stream")]

    # -- rules ---------------------------------------------------------------------------

    @precondition(lambda self: self.circ_open and len(self.models) < 12)
    @rule(
        kind=st.sampled_from(["echo", "echo", "source", "refused", "resolve", "discard"]),
        port=st.sampled_from(sorted(SOURCE_SIZES)),
        refused=st.sampled_from(sorted(REFUSED)),
    )
    def open_stream(self, kind: str, port: int, refused: int) -> None:
        self.counter += 1
        host = f"h{self.counter}.example"
        sink = RecordingSink()
        expected: bytes | bytearray = bytearray()
        if kind == "resolve":
            stream = self.circ.resolve(sink, host)
        elif kind == "source":
            stream = self.circ.open_stream(sink, host, port)
            expected = source_content(host, port, SOURCE_SIZES[port])
        elif kind == "refused":
            port = refused
            stream = self.circ.open_stream(sink, host, port)
        else:
            port = 7 if kind == "echo" else 9
            stream = self.circ.open_stream(sink, host, port)
        self.models.append(Model(kind, sink, stream, expected, host, port))
        deliver_events(self.channel.events)

    @precondition(lambda self: self.models)
    @rule(data=st.data(), size=st.sampled_from(WRITE_SIZES), seed=st.integers(0, 2**32))
    def write(self, data: st.DataObject, size: int, seed: int) -> None:
        m = self._pick(data)
        s = m.stream
        if s.blocked_writer:
            return  # a well-behaved application waits for stream_writable()
        accepted = s.state is not StreamState.CLOSED and not s.close_after_flush
        payload = random.Random(seed).randbytes(size)
        s.write(payload)
        if accepted and m.kind == "echo":
            assert isinstance(m.expected, bytearray)
            m.expected += payload
        deliver_events(self.channel.events)

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def pause(self, data: st.DataObject) -> None:
        self._pick(data).stream.pause_delivery()
        deliver_events(self.channel.events)

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        self._pick(data).stream.resume_delivery()
        deliver_events(self.channel.events)

    @precondition(lambda self: self.models)
    @rule(data=st.data(), abort=st.booleans())
    def end(self, data: st.DataObject, abort: bool) -> None:
        m = self._pick(data)
        m.ended_by_us = m.ended_by_us or m.stream.state is not StreamState.CLOSED
        if abort:
            m.stream.abort()
        else:
            m.stream.close()
        deliver_events(self.channel.events)

    @rule(rounds=st.integers(1, 4), chunk=st.sampled_from([None, 1, 509, 514, 4096, 16384]))
    def pump(self, rounds: int, chunk: int | None) -> None:
        n = [0]

        def enough() -> bool:
            n[0] += 1
            return n[0] > rounds

        pump_until(self.channel, self.fake, enough, chunk_size=chunk, until_quiet=True)

    @rule()
    def settle(self) -> None:
        transfer(self.channel, self.fake, chunk_size=16384)

    @precondition(lambda self: self.circ_open and self.models)
    @rule(data=st.data(), reason=st.sampled_from([EndReason.DONE, EndReason.CONNRESET, 99]))
    def exit_ends(self, data: st.DataObject, reason: int) -> None:
        m = self._pick(data)
        if m.kind in ("echo", "source", "discard"):
            self.fake.exit_end_stream(self.circ.circ_id, m.stream.stream_id, reason)

    @precondition(lambda self: self.circ_open)
    @rule(
        kind=st.sampled_from(
            [
                "destroy",
                "truncated",
                "bad_digest",
                "garbage",
                "v0_sendme",
                "bogus_sendme",
                "relay_early",
                "overrun",
            ]
        )
    )
    def misbehave(self, kind: str) -> None:
        fake, cid = self.fake, self.circ.circ_id
        fcirc = fake.circuits.get(cid)
        if fcirc is None:
            return
        exit_index = len(fcirc.hops) - 1
        self.misbehaved = True
        if kind == "destroy":
            fake.inject_destroy(cid, DestroyReason.RESOURCELIMIT)
        elif kind == "truncated":
            fake.inject_truncated(cid, DestroyReason.CONNECTFAILED, hop=min(1, exit_index))
        elif kind == "bad_digest":
            fake.corrupt_next_digest = True
            fake.send_relay(fcirc, exit_index, RelayCommand.DROP, 0, b"")
        elif kind == "garbage":
            fake.inject_garbage(circ_id=cid)
        elif kind == "v0_sendme":
            fake.send_relay(fcirc, exit_index, RelayCommand.SENDME, 0, b"")
        elif kind == "bogus_sendme":
            fake.send_relay(fcirc, exit_index, RelayCommand.SENDME, 0, b"\x01\x00\x14" + bytes(20))
        elif kind == "relay_early":
            from puretor.proto.cells import CellCommand

            fake.send_relay(
                fcirc, exit_index, RelayCommand.DROP, 0, b"", cell_command=CellCommand.RELAY_EARLY
            )
        elif kind == "overrun":
            # Past the stream window of a paused stream: only detectable when paused.
            paused = [
                m
                for m in self.models
                if m.kind == "echo"
                and m.stream.delivery_paused
                and m.stream.state is StreamState.OPEN
                and fake.stream(cid, m.stream.stream_id) is not None
                # ...and still open at the exit (not already ended by it).
                and m.stream.stream_id in fcirc.hops[exit_index].streams
            ]
            if not paused:
                self.misbehaved = False
                return
            fake.config.ignore_stream_windows = True
            fs = fake.stream(cid, paused[0].stream.stream_id)
            assert fs is not None
            fs.behaviour = "discard"  # what we push is not echo: don't check its content
            paused[0].kind = "overrun"
            fake.queue_stream_data(cid, fs.stream_id, bytes(498 * (STREAM_WINDOW_START + 1)))
        transfer(self.channel, self.fake)
        assert self.circ.state is CircuitState.CLOSED, kind

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def fake_saw_no_violation(self) -> None:
        assert self.fake.violations == []

    @invariant()
    def channel_survives(self) -> None:
        assert self.channel.state is ChannelState.OPEN

    @invariant()
    def windows_in_range(self) -> None:
        circ = self.circ
        for hop in circ.circuit.hops:
            assert 0 <= hop.package_window <= CIRCWINDOW
            assert 0 <= hop.deliver_window <= CIRCWINDOW
            assert len(hop.expected_sendmes) <= CIRCWINDOW // 100
        for m in self.models:
            s = m.stream
            assert 0 <= s.package_window <= STREAM_WINDOW_START
            if s.state is not StreamState.CLOSED:
                assert 0 <= s.deliver_window <= STREAM_WINDOW_START
        fcirc = self.fake.circuits.get(circ.circ_id)
        if fcirc is not None:
            for hop in fcirc.hops:
                assert 0 <= hop.deliver_window <= CIRCWINDOW
                if not self.fake.config.ignore_stream_windows:
                    assert 0 <= hop.package_window <= CIRCWINDOW

    @invariant()
    def bytes_in_order_exactly_once(self) -> None:
        for m in self.models:
            sink = m.sink
            assert sink.data_after_end == 0
            assert len(sink.ended) <= 1
            if m.kind in ("echo", "source"):
                got = bytes(sink.data)
                assert got == bytes(m.expected[: len(got)]), (m.kind, m.host)
            elif m.kind in ("refused", "resolve", "discard"):
                assert not sink.data

    @invariant()
    def memory_bounded(self) -> None:
        circ = self.circ
        ready = circ.streams.ready
        assert len(ready) <= len(circ.streams)
        assert len(set(map(id, ready))) == len(ready)
        for m in self.models:
            assert m.stream.buffered <= SEND_BUFFER_HIGH_WATER + MAX_WRITE
        # Untransferred output: at most a window's worth of cells plus control cells.
        assert _unsent_cells(self.channel) <= CIRCWINDOW + 200
        fcirc = self.fake.circuits.get(circ.circ_id)
        if fcirc is not None:
            for stream in fcirc.hops[-1].streams.values():
                if stream.behaviour == "echo":
                    cap = self.fake.config.echo_high_water + (STREAM_WINDOW_START + 50) * 498
                    assert len(stream.outgoing) <= cap

    @invariant()
    def closed_circuit_told_everyone(self) -> None:
        if self.circ.state is not CircuitState.CLOSED:
            return
        assert not self.circ.streams
        for m in self.models:
            assert m.stream.state is StreamState.CLOSED
            if not m.ended_by_us and m.kind != "resolve" and m.sink.resolved is None:
                assert len(m.sink.ended) == 1

    def teardown(self) -> None:
        """With no misbehaviour, resuming everything must finish every transfer."""
        if self.circ_open and not self.misbehaved:
            for m in self.models:
                m.stream.resume_delivery()
            transfer(self.channel, self.fake)
            for m in self.models:
                self.fake_saw_no_violation()
                if m.ended_by_us or m.sink.ended and m.sink.end_reason != EndReason.DONE:
                    continue
                if m.kind == "echo" and not m.sink.ended:
                    assert bytes(m.sink.data) == bytes(m.expected)
                elif m.kind == "source":
                    assert bytes(m.sink.data) == bytes(m.expected)
                    assert m.sink.end_reason == EndReason.DONE
                elif m.kind == "refused":
                    assert m.sink.end_reason == REFUSED[m.port]
                elif m.kind == "resolve":
                    assert m.sink.resolved is not None
        super().teardown()


CoreMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("CORE_SM_EXAMPLES", "150")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCore = CoreMachine.TestCase
