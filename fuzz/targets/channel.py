"""The whole link parser: `puretor.proto.channel.Channel.receive_data` and every circuit
and stream behind it.

The harness plays the relay.  Each input builds a fresh channel and then runs a
little program of operations taken from the input bytes:

====  ==========================================================================
op%8  what
====  ==========================================================================
0     raw bytes onto the wire (``n(1) bytes``): framing garbage
1     a relay cell the relay side seals properly for a circuit/hop, so it gets
      past the onion crypto: ``hop(1) command(1) stream(1) len(1) data``, and with
      op bit 7 an explicit 2-byte Length field (lies included)
2     a fixed-length cell: ``circ(1) [circ_id(4)] command(1) len(1) payload``
3     a variable-length cell: ``circ(1) [circ_id(4)] command(1) len(2) payload``
      (payload cut to what the input has: a truncated cell)
4     deliver the wire bytes so far (``Channel.receive_data``)
5     an honest circuit SENDME (v1, the digest the client expects)
6     an application action: write, close, abort, pause/resume, new stream, destroy
7     a *valid* CREATED_FAST / CREATED2 / EXTENDED2 reply (CREATED_FAST takes
      ``Y(20)`` from the input), so newly added hops get used too
====  ==========================================================================

``(op >> 3) % 5`` picks the circuit for ops 1, 5, 6, 7.  Mode (first byte, bit 0): an
open channel with circuits in every state ("faked handshake": three hops, an
onion-service virtual hop, CREATE_FAST, CREATE2 and EXTEND2 in flight, streams
connecting/open/resolving); or a channel that must first get through VERSIONS,
CERTS, AUTH_CHALLENGE and NETINFO (seeds carry a valid certificate chain bound
to the fake TLS certificate).

Contract: ``receive_data`` turns every protocol violation into a closed channel
or circuit and never raises.  Checked after each delivery: the input buffer
never holds more than one cell, closed circuits are forgotten, windows stay in
range, and the client only writes whole cells.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
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
from fuzz.seeds import certs_payload
from puretor.proto import handshake
from puretor.proto.cells import CellCommand, encode_cell, encode_netinfo
from puretor.proto.channel import Channel, ChannelState
from puretor.proto.circuit import Circuit, CircuitState
from puretor.proto.relaycrypto import HopCrypto
from puretor.proto.relaymsg import RelayCommand, encode_sendme_v1, ls_ipv4
from puretor.proto.streams import STREAM_WINDOW_START, StreamState
from puretor.proto.tunnel import Tunnel

FAKE_TLS_DER = b"puretor fuzz: the TLS certificate the channel target pretends to have seen"
MAX_BUFFERED = 7 + 0xFFFF  # one variable-length cell header + the largest payload
CELL_LEN = 514

CIRC_MULTI = 0x80000001  # 3 hops, open, streams 1-4 in every state
CIRC_FAST = 0x80000002  # building: CREATE_FAST in flight
CIRC_NTOR = 0x80000003  # 1 hop, EXTEND2 (ntor) in flight
CIRC_ONION = 0x80000004  # 3 hops + the onion-service virtual hop, one stream
CIRC_CREATE2 = 0x80000005  # building: CREATE2 (ntor) in flight
CIRCUITS = (CIRC_MULTI, CIRC_FAST, CIRC_NTOR, CIRC_ONION, CIRC_CREATE2)
CIRC_IDS = (0, *CIRCUITS)  # op 2/3 circuit selector: 0 is the channel itself

FAST_X = bytes(range(20))
NTOR_NODE_ID = hashlib.sha1(b"fuzz relay").digest()
NTOR_RELAY_KEY = b"\x07" * 32  # b: the relay's onion key (private)
NTOR_CLIENT_KEY = b"\x09" * 32  # x: the client's ephemeral key, fixed for determinism
NTOR_RELAY_Y = b"\x0b" * 32  # y: the relay's ephemeral key


def _hop_keys(circ_id: int, hop: int, hs: bool = False) -> tuple[bytes, bytes, bytes, bytes]:
    k = hashlib.sha512(b"%d/%d" % (circ_id, hop)).digest() * 2
    if hs:  # SHA3-256 digests, AES-256
        return k[0:32], k[32:64], k[64:96], k[96:128]
    return k[0:20], k[20:40], k[40:56], k[56:72]


@dataclass
class _RelayHop:
    cipher: Any  # AES-CTR with Kb: the relay's backward layer
    digest: Any  # running backward digest seeded with Db


@dataclass
class _RelaySide:
    """The relay end of one circuit's backward crypto: seals cells the client accepts."""

    hops: list[_RelayHop] = field(default_factory=list)

    def add(self, db: bytes, kb: bytes, hs: bool = False) -> None:
        digest = hashlib.sha3_256(db) if hs else hashlib.sha1(db)
        cipher = Cipher(algorithms.AES(kb), modes.CTR(bytes(16))).encryptor()
        self.hops.append(_RelayHop(cipher, digest))

    def seal(self, hop: int, body: bytearray) -> bytes:
        """``body`` (509 bytes, Recognized and Digest zero) from ``hop`` towards the client."""
        d = self.hops[hop].digest
        d.update(body)
        body[5:9] = d.digest()[:4]
        data = bytes(body)
        for i in range(hop, -1, -1):
            data = self.hops[i].cipher.update(data)
        return data


@dataclass
class _World:
    channel: Channel
    relay: dict[int, _RelaySide]
    sink: CheckingSink
    handshake: bool


def _add_hop(world: _World, tunnel: Tunnel, index: int, hs: bool = False) -> None:
    df, db, kf, kb = _hop_keys(tunnel.circ_id, index, hs)
    if hs:
        tunnel.add_virtual_hop(df, db, kf, kb)
    else:
        tunnel.circuit._add_hop(HopCrypto(df, db, kf, kb), None)
    world.relay[tunnel.circ_id].add(db, kb, hs)


def _tunnel(world: _World, circ_id: int) -> Tunnel | None:
    circ = world.channel.circuits.get(circ_id)
    return None if circ is None else circ.tunnel


def _setup(handshake_mode: bool) -> _World:
    ch = Channel(peer_address="192.0.2.1", expected_rsa_id=None)
    ch.tls_cert_der = FAKE_TLS_DER
    world = _World(ch, {c: _RelaySide() for c in CIRCUITS}, CheckingSink(), handshake_mode)
    if handshake_mode:
        ch.start()
        ch.take_output()
        return world
    ch.state = ChannelState.OPEN  # the faked handshake
    ch.link_protocol = 5
    sink = world.sink
    tunnels: dict[int, Tunnel] = {}
    for circ_id in CIRCUITS:
        # What Channel.new_tunnel does, with a circuit ID of our choosing.
        tunnel = tunnels[circ_id] = Tunnel(ch.events, clock=ch.clock)
        circ = Circuit(ch, circ_id, tunnel)
        tunnel.circuits.append(circ)
        ch.circuits[circ_id] = circ
    multi = tunnels[CIRC_MULTI]
    for i in range(3):
        _add_hop(world, multi, i)
    multi.mark_open()
    multi.open_stream(sink, "example.com", 80)  # 1: connecting
    s2 = multi.open_stream(sink, "example.org", 443)  # 2: open, with data to send
    s2.state = StreamState.OPEN
    s2.write(bytes(1000))
    multi.resolve(sink, "example.net")  # 3: resolving
    multi.open_dir_stream(sink)  # 4: BEGIN_DIR, connecting
    # Handshakes in flight, with the client's secrets fixed so replies can be valid.
    fast_create, ntor_create = handshake.fast_client_create, handshake.ntor_client_create
    try:
        handshake.fast_client_create = lambda **_: fast_create(x=FAST_X)  # type: ignore[assignment]
        handshake.ntor_client_create = functools.partial(  # type: ignore[assignment]
            ntor_create, private_key=NTOR_CLIENT_KEY
        )
        tunnels[CIRC_FAST].send_create_fast()
        tunnels[CIRC_CREATE2].send_create2(NTOR_NODE_ID, _x25519_pub(NTOR_RELAY_KEY))
        ntor = tunnels[CIRC_NTOR]
        _add_hop(world, ntor, 0)
        ntor.send_extend2([ls_ipv4("192.0.2.5", 9001)], NTOR_NODE_ID, _x25519_pub(NTOR_RELAY_KEY))
    finally:
        handshake.fast_client_create, handshake.ntor_client_create = fast_create, ntor_create
    onion = tunnels[CIRC_ONION]
    for i in range(3):
        _add_hop(world, onion, i)
    _add_hop(world, onion, 3, hs=True)
    onion.mark_open()
    onion.open_stream(sink, "", 80)
    ch.take_output()
    deliver_events(ch.events)
    return world


@functools.cache
def _x25519_pub(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


# -- the relay's valid handshake replies ----------------------------------------------


def _created_fast(y: bytes) -> tuple[bytes, bytes, bytes]:
    """(payload, Db, Kb) of a correct CREATED_FAST for `FAST_X`."""
    k = handshake.kdf_tor(FAST_X + y, 92)
    return y + k[:20], k[40:60], k[76:92]


@functools.cache  # the same every time: all the keys are fixed
def _ntor_reply() -> tuple[bytes, bytes, bytes]:
    """(Y|AUTH, Db, Kb): a correct ntor server reply to the fixed client key."""
    b = X25519PrivateKey.from_private_bytes(NTOR_RELAY_KEY)
    y = X25519PrivateKey.from_private_bytes(NTOR_RELAY_Y)
    X = X25519PublicKey.from_public_bytes(_x25519_pub(NTOR_CLIENT_KEY))  # noqa: N806
    B, Y = _x25519_pub(NTOR_RELAY_KEY), _x25519_pub(NTOR_RELAY_Y)  # noqa: N806
    Xb = _x25519_pub(NTOR_CLIENT_KEY)  # noqa: N806
    pid = handshake.PROTOID
    secret = y.exchange(X) + b.exchange(X) + NTOR_NODE_ID + B + Xb + Y + pid
    mac = hashlib.sha256
    verify = hmac.new(handshake.T_VERIFY, secret, mac).digest()
    auth_input = verify + NTOR_NODE_ID + B + Y + Xb + pid + b"Server"
    auth = hmac.new(handshake.T_MAC, auth_input, mac).digest()
    keys = handshake.kdf_rfc5869(secret, handshake.T_KEY, handshake.M_EXPAND, 72)
    return Y + auth, keys[20:40], keys[56:72]


# -- the program ----------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def _deliver(world: _World, wire: bytearray) -> None:
    ch = world.channel
    if wire:
        ch.receive_data(bytes(wire), NOW)
        wire.clear()
    deliver_events(ch.events)
    out = ch.take_output()
    deliver_events(ch.events)  # (packaging may wake a blocked writer)
    check(len(ch._inbuf) <= MAX_BUFFERED, f"channel buffers {len(ch._inbuf)} bytes")
    if ch.state is ChannelState.CLOSED:
        check(not ch.circuits, "closed channel still has circuits")
        return
    if not world.handshake:
        check(len(out) % CELL_LEN == 0, f"client wrote {len(out)} bytes: not whole cells")
    for circ in ch.circuits.values():
        check(circ.state is not CircuitState.CLOSED, "closed circuit not forgotten")
        check(all(h.deliver_window >= 0 for h in circ.hops), "negative deliver window")
        for stream in circ.tunnel.streams.values():
            check(stream.package_window <= STREAM_WINDOW_START, "stream package window overflow")


def _circ_id(r: _Reader) -> int:
    sel = r.byte()
    if sel % 8 < len(CIRC_IDS):
        return CIRC_IDS[sel % 8]
    raw = r.take(4)
    return int.from_bytes(raw.ljust(4, b"\0"), "big")


def _relay_cell(world: _World, r: _Reader, op: int, wire: bytearray) -> None:
    circ_id = CIRCUITS[(op >> 3) % len(CIRCUITS)]
    relay = world.relay[circ_id]
    hop_sel, command, stream_id, length = r.byte(), r.byte(), r.byte(), r.byte()
    field_len = int.from_bytes(r.take(2).ljust(2, b"\0"), "big") if op & 0x80 else length
    data = r.take(length)
    if not relay.hops:
        return
    body = bytearray(struct.pack(">BHHIH", command, 0, stream_id, 0, field_len))
    body += data
    body += bytes(509 - len(body))
    wire += struct.pack(">IB", circ_id, CellCommand.RELAY)
    wire += relay.seal(hop_sel % len(relay.hops), body)


def _honest_sendme(world: _World, op: int, wire: bytearray) -> None:
    circ_id = CIRCUITS[(op >> 3) % len(CIRCUITS)]
    circ = world.channel.circuits.get(circ_id)
    relay = world.relay[circ_id]
    if circ is None or not relay.hops:
        return
    for hop, expected in enumerate(h.expected_sendmes for h in circ.hops):
        if expected and hop < len(relay.hops):
            sendme = encode_sendme_v1(expected[0])
            body = bytearray(struct.pack(">BHHIH", RelayCommand.SENDME, 0, 0, 0, len(sendme)))
            body += sendme + bytes(509 - 11 - len(sendme))
            wire += struct.pack(">IB", circ_id, CellCommand.RELAY) + relay.seal(hop, body)
            return


def _app_action(world: _World, r: _Reader, op: int) -> None:
    tunnel = _tunnel(world, CIRCUITS[(op >> 3) % len(CIRCUITS)])
    action, arg = r.byte(), r.byte()
    if tunnel is None or tunnel.state is CircuitState.CLOSED:
        return
    stream = tunnel.streams.get(arg % 5)
    kind = action % 8
    if kind < STREAM_ACTIONS:
        if stream is not None:
            stream_action(stream, kind, arg)
    elif kind == 4 and tunnel.state is CircuitState.OPEN:
        tunnel.open_stream(world.sink, "example.com", 1 + arg)
    elif kind == 5 and tunnel.state is CircuitState.OPEN:
        tunnel.resolve(world.sink, "example.com")
    elif kind == 6:
        tunnel.destroy()
    deliver_events(world.channel.events)


def _valid_reply(world: _World, r: _Reader, op: int, wire: bytearray) -> None:
    """What the relay answers to the handshake this circuit started (even if answered)."""
    circ_id = CIRCUITS[(op >> 3) % len(CIRCUITS)]
    y = r.take(20).ljust(20, b"\0")
    circ = world.channel.circuits.get(circ_id)
    relay = world.relay[circ_id]
    if circ is None:
        return
    if circ_id == CIRC_FAST:
        payload, db, kb = _created_fast(y)
        wire += encode_cell(circ_id, CellCommand.CREATED_FAST, payload)
    elif circ_id == CIRC_CREATE2:
        reply, db, kb = _ntor_reply()
        wire += encode_cell(circ_id, CellCommand.CREATED2, struct.pack(">H", 64) + reply)
    elif relay.hops:  # EXTENDED2 from the last hop
        reply, db, kb = _ntor_reply()
        data = struct.pack(">H", len(reply)) + reply
        body = bytearray(struct.pack(">BHHIH", RelayCommand.EXTENDED2, 0, 0, 0, len(data)))
        body += data + bytes(509 - 11 - len(data))
        wire += struct.pack(">IB", circ_id, CellCommand.RELAY)
        wire += relay.seal(len(relay.hops) - 1, body)
    else:
        return
    hops = circ.hop_count
    _deliver(world, wire)
    if circ.hop_count > hops:  # the client took it: the relay has a new hop too
        relay.add(db, kb)


def run_program(world: _World, program: bytes) -> None:
    r = _Reader(program)
    wire = bytearray()
    while not r.done and world.channel.state is not ChannelState.CLOSED:
        op = r.byte()
        kind = op % 8
        if kind == 0:
            wire += r.take(r.byte())
        elif kind == 1:
            _relay_cell(world, r, op, wire)
        elif kind == 2:
            circ_id = _circ_id(r)
            command = r.byte()
            payload = r.take(r.byte())
            if command == 7 or command >= 128:  # encode_cell would frame it as variable
                wire += struct.pack(">IB", circ_id, command) + payload.ljust(509, b"\0")
            else:
                wire += encode_cell(circ_id, command, payload)
        elif kind == 3:
            circ_id = _circ_id(r)
            command = r.byte()
            length = int.from_bytes(r.take(2).ljust(2, b"\0"), "big")
            wire += struct.pack(">IBH", circ_id, command, length) + r.take(length)
        elif kind == 4:
            _deliver(world, wire)
        else:
            _deliver(world, wire)  # keep the relay's bytes ordered before the client acts
            if kind == 5:
                _honest_sendme(world, op, wire)
            elif kind == 6:
                _app_action(world, r, op)
            else:
                _valid_reply(world, r, op, wire)
    _deliver(world, wire)


def one_input(data: bytes) -> None:
    if not data:
        return
    world = _setup(handshake_mode=bool(data[0] & 1))
    run_program(world, data[1:])


# -- seeds ----------------------------------------------------------------------------


def _op_fixed(circ_sel: int, command: int, payload: bytes) -> bytes:
    return bytes((2, circ_sel, command, len(payload))) + payload


def _op_var(circ_sel: int, command: int, payload: bytes) -> bytes:
    return bytes((3, circ_sel, command)) + struct.pack(">H", len(payload)) + payload


def _op_relay(circ_index: int, hop: int, command: int, stream: int, data: bytes) -> bytes:
    return bytes((1 | circ_index << 3, hop, command, stream, len(data))) + data


def seeds() -> list[bytes]:
    payload, _ = certs_payload(hashlib.sha256(FAKE_TLS_DER).digest())
    versions = b"\x00\x00\x07\x00\x04\x00\x04\x00\x05"  # 2-byte CircID framing
    # CERTS is bigger than one raw op can carry: it goes in a var-cell op.
    handshake_prog = (
        bytes((0, len(versions)))
        + versions
        + _op_var(0, CellCommand.CERTS, payload)
        + _op_var(0, CellCommand.AUTH_CHALLENGE, bytes(32) + b"\x00\x01\x00\x03")
        + _op_fixed(0, CellCommand.NETINFO, encode_netinfo("192.0.2.9", ["192.0.2.1"], 1))
        + b"\x04"
        + _op_fixed(1, CellCommand.CREATED_FAST, bytes(40))
    )
    c_multi, c_fast, c_ntor, c_onion, c_create2 = 0, 1, 2, 3, 4
    open_progs = [
        _op_relay(c_multi, 2, RelayCommand.CONNECTED, 1, bytes((192, 0, 2, 3, 0, 0, 1, 0)))
        + _op_relay(c_multi, 2, RelayCommand.DATA, 1, b"hello")
        + _op_relay(c_multi, 2, RelayCommand.END, 1, b"\x06"),
        _op_relay(c_multi, 2, RelayCommand.SENDME, 2, b"")
        + _op_relay(c_multi, 2, RelayCommand.DATA, 2, b"x" * 200)
        + bytes((6 | c_multi << 3, 0, 2)),
        _op_relay(
            c_multi, 2, RelayCommand.RESOLVED, 3, b"\x04\x04\x0a\x00\x00\x01\x00\x00\x00\x3c"
        ),
        _op_relay(c_multi, 2, RelayCommand.CONNECTED, 4, b"")
        + _op_relay(c_multi, 2, RelayCommand.DATA, 4, b"HTTP/1.0 200 OK\r\n\r\n"),
        _op_relay(c_multi, 1, RelayCommand.TRUNCATED, 0, b"\x09"),
        _op_relay(c_multi, 0, RelayCommand.DROP, 0, b""),
        _op_relay(c_multi, 2, RelayCommand.INTRODUCE_ACK, 0, b"\x00\x00\x00"),
        bytes((7 | c_fast << 3,))
        + bytes(range(20))
        + _op_relay(c_fast, 0, RelayCommand.DATA, 0, b"after CREATED_FAST"),
        bytes((7 | c_ntor << 3,)) + bytes(20) + _op_relay(c_ntor, 1, RelayCommand.DROP, 0, b""),
        bytes((7 | c_create2 << 3,))
        + bytes(20)
        + _op_relay(c_create2, 0, RelayCommand.TRUNCATED, 0, b"\x01"),
        _op_fixed(2, CellCommand.CREATED_FAST, bytes(40)),
        _op_fixed(3, CellCommand.CREATED2, b"\x00\x40" + bytes(64)),
        _op_relay(c_onion, 3, RelayCommand.CONNECTED, 1, b"")
        + _op_relay(c_onion, 3, RelayCommand.DATA, 1, b"onion data"),
        _op_fixed(1, CellCommand.DESTROY, b"\x03") + _op_fixed(0, CellCommand.PADDING, b""),
        _op_var(0, CellCommand.VPADDING, b"pad") + _op_fixed(0, CellCommand.PADDING_NEGOTIATE, b""),
        # 100 DATA cells: the client owes a circuit SENDME
        _op_relay(c_multi, 2, RelayCommand.CONNECTED, 1, b"")
        + _op_relay(c_multi, 2, RelayCommand.DATA, 1, b"d" * 40) * 101,
        # 120 DATA cells out: the relay owes a SENDME, and sends it
        bytes((6 | c_multi << 3, 0, 7)) * 15 + b"\x04" + bytes((5 | c_multi << 3,)),
    ]
    return [b"\x01" + handshake_prog] + [b"\x00" + p for p in open_progs]


TARGET = Target(
    name="channel",
    one_input=one_input,
    seeds=seeds,
    max_len=16384,
    doc=__doc__ or "",
)
