"""Conflux (prop 329): a linked set of two legs, each a 3-hop congestion-controlled
circuit on its own channel, fed by a hostile exit.

The harness plays both guards and the exit.  Each input is a little program:

====  ==========================================================================
op%8  what
====  ==========================================================================
0     a relay cell the exit seals for leg ``op>>3 & 1``: ``kind(1) stream(1)
      len(1) data``; ``kind`` picks the command (DATA, CONNECTED, END, RESOLVED,
      XON, XOFF, SWITCH, LINKED, LINKED_ACK, LINK, SENDME, BEGIN, DROP; 240 and up:
      that byte itself), bit 7 a full-length DATA cell
1     the same from a middle hop (``hop(1)`` first)
2     deliver one leg's wire bytes so far (so legs arrive in any order)
3     an honest circuit SENDME for what the client sent on a leg
4     an application action: write, close, abort, pause/resume, new stream
5     a SWITCH with a 4-byte relative sequence number from the input
6     raw bytes onto a leg's wire (framing garbage)
7     destroy a leg from the guard's side
====  ==========================================================================

Contract: `Channel.receive_data` turns every violation into a closed circuit (and a
set that loses a leg closes every leg) and never raises.  Checked after each
delivery: the out-of-order queue stays within its bound and matches what the legs
hold, every held entry is still to come (above the delivered count, in order per
leg), and a finalized set is either whole or entirely closed.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fuzz.harness import (
    NOW,
    STREAM_ACTIONS,
    CheckingSink,
    Target,
    check,
    deliver_events,
    stream_action,
)
from puretor.proto.cells import CellCommand
from puretor.proto.channel import Channel, ChannelState
from puretor.proto.circuit import Circuit, CircuitState
from puretor.proto.conflux import ConfluxSet, LegState, LinkPayload
from puretor.proto.congestion import CCParams, Vegas
from puretor.proto.events import EventQueue
from puretor.proto.relaycrypto import HopCrypto
from puretor.proto.relaymsg import RelayCommand, encode_sendme_v1
from puretor.proto.streams import StreamState
from puretor.proto.tunnel import Tunnel

CIRC_IDS = (0x80000011, 0x80000022)
NONCE = bytes(range(32))
MAX_QUEUED = 300  # small, so the bound is reachable within one input
_C = RelayCommand
KINDS = (
    _C.DATA,
    _C.DATA,
    _C.DATA,
    _C.CONNECTED,
    _C.END,
    _C.RESOLVED,
    _C.XON,
    _C.XOFF,
    _C.CONFLUX_SWITCH,
    _C.CONFLUX_LINKED,
    _C.CONFLUX_LINKED_ACK,
    _C.CONFLUX_LINK,
    _C.SENDME,
    _C.BEGIN,
    _C.DROP,
)


def _keys(circ_id: int, hop: int) -> tuple[bytes, bytes, bytes, bytes]:
    k = hashlib.sha512(b"cfx %d/%d" % (circ_id, hop)).digest() * 2
    return k[0:20], k[20:40], k[40:56], k[56:72]


@dataclass
class _Leg:
    channel: Channel
    tunnel: Tunnel  # the leg's own while it links; then every leg's circuit is in `owner`
    circ: Circuit
    ciphers: list[Any] = field(default_factory=list)  # the relays' backward AES layers
    digests: list[Any] = field(default_factory=list)  # their backward running digests
    wire: bytearray = field(default_factory=bytearray)

    def seal(self, hop: int, command: int, stream_id: int, data: bytes, length: int) -> None:
        body = bytearray(struct.pack(">BHHIH", command, 0, stream_id, 0, length))
        body += data[:498]
        body += bytes(509 - len(body))
        d = self.digests[hop]
        d.update(body)
        body[5:9] = d.digest()[:4]
        out = bytes(body)
        for i in range(hop, -1, -1):
            out = self.ciphers[i].update(out)
        self.wire += struct.pack(">IB", self.circ.circ_id, CellCommand.RELAY) + out


@dataclass
class _World:
    legs: list[_Leg]
    cfx: ConfluxSet
    owner: Tunnel
    sink: CheckingSink
    events: EventQueue
    delivered: int = 0


def _leg(circ_id: int, events: EventQueue) -> _Leg:
    ch = Channel(peer_address="192.0.2.1", expected_rsa_id=None, events=events)
    ch.state = ChannelState.OPEN  # the faked handshake
    ch.link_protocol = 5
    # What Channel.new_tunnel does, with a circuit ID of our choosing.
    tunnel = Tunnel(events, clock=lambda: NOW)
    circ = Circuit(ch, circ_id, tunnel, sendme_accept_min_version=1)
    tunnel.circuits.append(circ)
    ch.circuits[circ_id] = circ
    leg = _Leg(ch, tunnel, circ)
    params = CCParams()
    for hop in range(3):
        df, db, kf, kb = _keys(circ_id, hop)
        circ._add_hop(HopCrypto(df, db, kf, kb), Vegas(params, 31) if hop == 2 else None)
        leg.ciphers.append(Cipher(algorithms.AES(kb), modes.CTR(bytes(16))).encryptor())
        leg.digests.append(hashlib.sha1(db))
    tunnel.cc_params = params
    tunnel.mark_open()
    return leg


def _setup() -> _World:
    events = EventQueue()
    legs = [_leg(c, events) for c in CIRC_IDS]
    cfx = ConfluxSet(nonce=NONCE, max_queued_cells=MAX_QUEUED)
    for leg in legs:
        leg.tunnel.start_conflux(cfx)
        linked = LinkPayload(NONCE, 0, 0, 1).encode()
        leg.seal(2, _C.CONFLUX_LINKED, 0, linked, len(linked))
        leg.channel.receive_data(bytes(leg.wire), NOW)
        leg.wire.clear()
    owner = Tunnel.join(cfx, [leg.tunnel for leg in legs])
    for leg in legs:
        leg.tunnel = owner
    sink = CheckingSink()
    world = _World(legs, cfx, owner, sink, events)
    owner.open_stream(sink, "example.com", 80)  # 1: connecting
    s2 = owner.open_stream(sink, "example.org", 443)  # 2: open, with data to send
    s2.state = StreamState.OPEN
    s2.write(bytes(3000))
    owner.resolve(sink, "example.net")  # 3: resolving
    for leg in legs:
        leg.channel.take_output()
    deliver_events(events)
    return world


def _check(world: _World) -> None:
    cfx = world.cfx
    held = sum(h.cells for leg in cfx.legs for h in leg.held)
    check(held == cfx.queued_cells, f"queue count {cfx.queued_cells} but {held} held")
    check(cfx.queued_cells <= cfx.max_queued_cells, "out-of-order queue over its bound")
    check(cfx.delivered >= world.delivered, "delivered count went back")
    world.delivered = cfx.delivered
    for leg in cfx.legs:
        seqs = [h.seq for h in leg.held]
        check(all(s > cfx.delivered for s in seqs), "a held cell was already delivered")
        check(seqs == sorted(set(seqs)), "a leg's queue is out of order")
    states = [leg.circ.state for leg in world.legs]
    if CircuitState.CLOSED in states:
        check(all(s is CircuitState.CLOSED for s in states), "a set lost a leg but lives on")
        check(all(leg.state is LegState.CLOSED for leg in cfx.legs), "leg state not closed")
        check(not world.owner.streams, "streams outlived the set")


def _deliver(world: _World, index: int) -> None:
    leg = world.legs[index]
    if leg.wire:
        leg.channel.receive_data(bytes(leg.wire), NOW)
        leg.wire.clear()
    deliver_events(world.events)
    for other in world.legs:
        out = other.channel.take_output()
        check(len(out) % 514 == 0, f"client wrote {len(out)} bytes: not whole cells")
    deliver_events(world.events)  # (packaging may wake a blocked writer)
    _check(world)


def _honest_sendme(world: _World, index: int) -> None:
    leg = world.legs[index]
    expected = leg.circ.hops[2].expected_sendmes if leg.circ.hops else None
    if expected:
        body = encode_sendme_v1(expected[0])
        leg.seal(2, _C.SENDME, 0, body, len(body))


def _app_action(world: _World, action: int, arg: int) -> None:
    owner = world.owner
    if owner.state is CircuitState.CLOSED:
        return
    stream = owner.streams.get(arg % 5)
    kind = action % 6
    if kind < STREAM_ACTIONS:
        if stream is not None:
            stream_action(stream, kind, arg)
    elif kind == 4:
        owner.open_stream(world.sink, "example.com", 1 + arg)
    elif kind == 5:
        owner.resolve(world.sink, "example.com")
    deliver_events(world.events)


def run_program(world: _World, program: bytes) -> None:
    pos = 0

    def byte() -> int:
        nonlocal pos
        if pos >= len(program):
            return 0
        pos += 1
        return program[pos - 1]

    def take(n: int) -> bytes:
        nonlocal pos
        out = program[pos : pos + n]
        pos += len(out)
        return out

    while pos < len(program):
        op = byte()
        kind, index = op % 8, (op >> 3) & 1
        leg = world.legs[index]
        if kind in (0, 1):
            hop = 2 if kind == 0 else byte() % 2
            sel, stream_id, length = byte(), byte(), byte()
            raw = sel >= 240  # an arbitrary command byte
            command = sel if raw else KINDS[(sel & 0x7F) % len(KINDS)]
            data = take(length)
            if command == _C.DATA and sel & 0x80 and not raw:
                data, length = bytes(498), 498  # a full cell, so stretches form
            leg.seal(hop, command, stream_id % 6, data, length)
        elif kind == 2:
            _deliver(world, index)
        elif kind == 3:
            _deliver(world, index)
            _honest_sendme(world, index)
        elif kind == 4:
            for i in range(2):
                _deliver(world, i)
            _app_action(world, byte(), byte())
        elif kind == 5:
            seq = take(4).ljust(4, b"\0")
            leg.seal(2, _C.CONFLUX_SWITCH, 0, seq, 4)
        elif kind == 6:
            leg.wire += take(byte())
        else:
            leg.wire += struct.pack(">IB", leg.circ.circ_id, CellCommand.DESTROY) + bytes(509)
    for i in range(2):
        _deliver(world, i)


def one_input(data: bytes) -> None:
    run_program(_setup(), data)


# -- seeds ----------------------------------------------------------------------------


def _cell(leg: int, command: int, stream: int, data: bytes, *, full: bool = False) -> bytes:
    sel = KINDS.index(command) | (0x80 if full else 0)
    return bytes((0 | leg << 3, sel, stream, len(data))) + data


def _switch(leg: int, seq: int) -> bytes:
    return bytes((5 | leg << 3,)) + struct.pack(">I", seq)


def _deliver_op(leg: int) -> bytes:
    return bytes((2 | leg << 3,))


def seeds() -> list[bytes]:
    connected = _cell(0, _C.CONNECTED, 1, bytes((192, 0, 2, 3, 0, 0, 1, 0)))
    data = _cell(0, _C.DATA, 1, b"", full=True)
    return [
        # In order on leg 0.
        connected + data * 5 + _cell(0, _C.END, 1, b"\x06") + _deliver_op(0),
        # CONNECTED on leg 0, DATA on leg 1 after a SWITCH, leg 1 delivered first.
        connected
        + _switch(1, 1)
        + _cell(1, _C.DATA, 1, b"", full=True) * 4
        + _deliver_op(1)
        + _deliver_op(0),
        # Interleaved legs with switches back and forth.
        connected
        + data * 3
        + _switch(1, 4)
        + _cell(1, _C.DATA, 1, b"", full=True) * 3
        + _switch(0, 3)
        + data * 2
        + _deliver_op(1)
        + _deliver_op(0),
        # The queue bound: a huge jump, then lots of early data.
        _switch(1, 100000) + _cell(1, _C.DATA, 2, b"", full=True) * 40 + _deliver_op(1),
        # Stream 2 is open: upload, the exit acknowledges, XOFF/XON.
        bytes((4, 0, 2)) * 6
        + bytes((3,))
        + _cell(0, _C.XOFF, 2, b"\x00")
        + _cell(0, _C.XON, 2, b"\x00\x00\x00\x00\x00")
        + _deliver_op(0),
        # Conflux cells a client never gets, and a duplicate LINKED.
        _cell(1, _C.CONFLUX_LINK, 0, LinkPayload(NONCE).encode()) + _deliver_op(1),
        _cell(0, _C.CONFLUX_LINKED, 0, LinkPayload(NONCE).encode()) + _deliver_op(0),
        # A leg destroyed mid-stream.
        connected + data * 2 + _deliver_op(0) + bytes((7 | 1 << 3,)) + _deliver_op(1),
        # RESOLVED for stream 3, sequenced on leg 1.
        _switch(1, 0) + _cell(1, _C.RESOLVED, 3, b"\x04\x04\x0a\x00\x00\x01\x00\x00\x00\x3c"),
    ]


TARGET = Target(
    name="conflux",
    one_input=one_input,
    seeds=seeds,
    max_len=16384,
    doc=__doc__ or "",
)
