"""An in-memory fake relay: the relay side of the link and circuit protocols.

Two-party tests in the aioquic style: a real client `Channel` and a `FakeRelay`
exchange bytes through `transfer()` / `pump_until()`, with no sockets and no
event loop.  The fake is written from the relay's point of view and from the
spec (tor-spec §4, §5, §6, §7; prop 289), not from the client code it tests:
its crypto, ntor server side and message parsing are its own.

What it does:

* link handshake: answers VERSIONS, sends CERTS (a valid chain from
  ``certgen``, bound to a fake TLS certificate), AUTH_CHALLENGE and NETINFO;
  refuses anything but NETINFO before the client's NETINFO (as C tor does);
* CREATE_FAST and CREATE2 (ntor server side), EXTEND2 by *simulating* further
  hops inside the same object — every simulated hop has its own keys, relay
  crypto and windows, so a 3-hop circuit is really onion-layered;
* RELAY_EARLY counting (the 9th closes the circuit);
* BEGIN → CONNECTED or END (per-port reasons), BEGIN_DIR, DATA echo or a byte
  source, RESOLVE → RESOLVED, END;
* circuit and stream SENDME windows on the relay side as C tor keeps them,
  v1 digests recorded and verified, ``sendme_accept_min_version``;
* ntor v3 (HTYPE 3) with congestion control negotiation (prop 324 §10): a hop that
  agreed sends and expects circuit SENDMEs every ``sendme_inc`` DATA cells, has no
  stream windows (a stream SENDME is a protocol violation), sends with a Vegas-ish
  cwnd of its own (slow start up to a cap), honours the client's XOFF/XON and sends
  XOFF/XON itself when an echo backlog builds up and drains (C tor's exit outbuf);
* and, as a test oracle, a *strict* check that the client never sent a DATA cell
  its package windows did not allow (see `FakeHop.sendmes_delivered`);
* misbehaviour knobs: bad digests, window overruns, wrong/withheld SENDMEs,
  bad CERTS, garbage bytes, DESTROY/TRUNCATED injection.

Client protocol violations are recorded in `FakeRelay.violations` and answered
the way C tor answers them (usually: close the circuit).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import random
import secrets
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from puretor.proto.cells import CellCommand, DestroyReason
from puretor.proto.events import (
    EventQueue,
    StreamConnected,
    StreamData,
    StreamEnded,
    StreamResolved,
    StreamWritable,
)
from puretor.proto.relaymsg import EndReason, LinkSpecifier, RelayCommand

# certgen lives next to the cert tests; it builds valid CERTS chains.
_CERTGEN_DIR = str(Path(__file__).resolve().parents[1] / "unit" / "proto")
if _CERTGEN_DIR not in sys.path:
    sys.path.append(_CERTGEN_DIR)
import certgen  # noqa: E402

if TYPE_CHECKING:
    from puretor.proto.channel import Channel
    from puretor.proto.tunnel import Tunnel

# -- constants (the fake's own copies: it must not inherit the client's mistakes) --------

CELL_LEN = 514
PAYLOAD_LEN = 509
RELAY_HEADER_LEN = 11
RELAY_DATA_LEN = 498
CIRCWINDOW_START = 1000
CIRCWINDOW_INCREMENT = 100
STREAMWINDOW_START = 500
STREAMWINDOW_INCREMENT = 50
MAX_RELAY_EARLY = 8
# Flow control relay commands as C tor numbers them (or.h; the 2023 tor-spec.txt table
# swaps them).
XOFF = 43
XON = 44

_HDR4 = struct.Struct(">IB")
_VAR4 = struct.Struct(">IBH")
_VAR2 = struct.Struct(">HBH")
_RELAY_HDR = struct.Struct(">BHHIH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_ZERO_IV = bytes(16)

NTOR_PROTOID = b"ntor-curve25519-sha256-1"
NTOR_T_MAC = NTOR_PROTOID + b":mac"
NTOR_T_KEY = NTOR_PROTOID + b":key_extract"
NTOR_T_VERIFY = NTOR_PROTOID + b":verify"
NTOR_M_EXPAND = NTOR_PROTOID + b":key_expand"

# Stream behaviours at the exit.
ECHO = "echo"  # send back every DATA byte received
SOURCE = "source"  # send N bytes after CONNECTED, then (optionally) END DONE
DISCARD = "discard"  # keep what arrives, send nothing


def source_content(host: str, port: int, n: int) -> bytes:
    """The bytes a SOURCE stream to ``host:port`` serves: deterministic, incompressible."""
    seed = int.from_bytes(hashlib.sha256(f"{host}:{port}".encode()).digest()[:8], "big")
    return random.Random(seed).randbytes(n)


# -- identities --------------------------------------------------------------------------


@dataclass
class SimRelay:
    """A relay the fake can be or extend to: identities and ntor onion key."""

    nickname: str
    address: str
    or_port: int
    rsa_id: bytes
    ed_id: bytes
    ntor_private: X25519PrivateKey
    exit: bool = True

    @classmethod
    def generate(cls, nickname: str, address: str, or_port: int = 9001) -> SimRelay:
        return cls(
            nickname,
            address,
            or_port,
            secrets.token_bytes(20),
            secrets.token_bytes(32),
            X25519PrivateKey.generate(),
        )

    @property
    def ntor_key(self) -> bytes:
        return self.ntor_private.public_key().public_bytes_raw()

    def link_specifiers(self, *, with_ed: bool = True) -> list[LinkSpecifier]:
        """What a client puts in EXTEND2 for this relay (IPv4, legacy id, Ed25519 id)."""
        specs = [
            LinkSpecifier(0, ipaddress.IPv4Address(self.address).packed + _U16.pack(self.or_port)),
            LinkSpecifier(2, self.rsa_id),
        ]
        if with_ed:
            specs.append(LinkSpecifier(3, self.ed_id))
        return specs


# -- relay-side handshakes (tor-spec §5.1.4, §5.1.5, §5.2) ------------------------------


class HandshakeFailed(Exception):
    pass


def _hmac256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def ntor_server(
    relay: SimRelay, onionskin: bytes, *, bad_auth: bool = False
) -> tuple[bytes, bytes]:
    """Server side of ntor: returns (``Y | AUTH``, 72 bytes ``Df Db Kf Kb``)."""
    if len(onionskin) != 84:
        raise HandshakeFailed(f"ntor onionskin is {len(onionskin)} bytes")
    node_id, key_id, X = onionskin[:20], onionskin[20:52], onionskin[52:84]  # noqa: N806
    if node_id != relay.rsa_id:
        raise HandshakeFailed("ntor NODEID is not this relay")
    B = relay.ntor_key  # noqa: N806
    if key_id != B:
        raise HandshakeFailed("ntor KEYID is not this relay's onion key")
    y = X25519PrivateKey.generate()
    Y = y.public_key().public_bytes_raw()  # noqa: N806
    peer = X25519PublicKey.from_public_bytes(X)
    try:
        xy, xb = y.exchange(peer), relay.ntor_private.exchange(peer)
    except ValueError:
        raise HandshakeFailed("client X is a small-order point") from None
    secret_input = xy + xb + node_id + B + X + Y + NTOR_PROTOID
    key_seed = _hmac256(NTOR_T_KEY, secret_input)
    verify = _hmac256(NTOR_T_VERIFY, secret_input)
    auth = _hmac256(NTOR_T_MAC, verify + node_id + B + Y + X + NTOR_PROTOID + b"Server")
    if bad_auth:
        auth = bytes(b ^ 0xFF for b in auth)
    # HKDF-Expand from KEY_SEED: the same bytes as extract+expand with salt t_key.
    keys = HKDFExpand(algorithm=hashes.SHA256(), length=72, info=NTOR_M_EXPAND).derive(key_seed)
    return Y + auth, keys


NTOR3_PROTOID = b"ntor3-curve25519-sha3_256-1"
NTOR3_VERIFICATION = b"circuit extend"  # [C-TOR] onion_crypto.c NTOR3_CIRC_VERIFICATION


def _ntor3_encap(s: bytes) -> bytes:
    return struct.pack(">Q", len(s)) + s


def _ntor3_ctr(key: bytes, data: bytes) -> bytes:
    c = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()
    return c.update(data) + c.finalize()


def ntor3_server(
    relay: SimRelay,
    onionskin: bytes,
    reply_fn: Callable[[bytes], bytes],
    *,
    verification: bytes = NTOR3_VERIFICATION,
    key_len: int = 72,
    y_private: bytes | None = None,
    bad_auth: bool = False,
) -> tuple[bytes, bytes]:
    """Server side of ntor v3 (proposal 332): returns (``Y | AUTH | ENC(SM)``, keys).

    ``reply_fn`` gets the decrypted client message and returns the server message.
    """
    p = NTOR3_PROTOID

    def h(s: bytes, t: bytes) -> bytes:
        return hashlib.sha3_256(_ntor3_encap(p + t) + s).digest()

    if len(onionskin) < 128:
        raise HandshakeFailed(f"ntor v3 onionskin is {len(onionskin)} bytes")
    ID, B, X = onionskin[:32], onionskin[32:64], onionskin[64:96]  # noqa: N806
    cmsg, mac = onionskin[96:-32], onionskin[-32:]
    if relay.ed_id != ID or relay.ntor_key != B:
        raise HandshakeFailed("ntor v3 ID/KEYID is not this relay")
    peer = X25519PublicKey.from_public_bytes(X)
    try:
        xb = relay.ntor_private.exchange(peer)
    except ValueError:
        raise HandshakeFailed("client X is a small-order point") from None
    phase1 = hashlib.shake_256(
        _ntor3_encap(p + b":kdf_phase1") + xb + ID + X + B + p + _ntor3_encap(verification)
    ).digest(64)
    want_mac = hashlib.sha3_256(
        _ntor3_encap(p + b":msg_mac") + _ntor3_encap(phase1[32:]) + onionskin[:-32]
    ).digest()
    if not hmac.compare_digest(want_mac, mac):
        raise HandshakeFailed("ntor v3 client MAC does not verify")
    smsg = reply_fn(_ntor3_ctr(phase1[:32], cmsg))
    y = (
        X25519PrivateKey.generate()
        if y_private is None
        else X25519PrivateKey.from_private_bytes(y_private)
    )
    Y = y.public_key().public_bytes_raw()  # noqa: N806
    secret_input = y.exchange(peer) + xb + ID + B + X + Y + p + _ntor3_encap(verification)
    key_seed = h(secret_input, b":key_seed")
    verify = h(secret_input, b":verify")
    stream = hashlib.shake_256(_ntor3_encap(p + b":kdf_final") + key_seed).digest(32 + key_len)
    enc_smsg = _ntor3_ctr(stream[:32], smsg)
    auth = h(verify + ID + B + Y + X + mac + _ntor3_encap(enc_smsg) + p + b"Server", b":auth_final")
    if bad_auth:
        auth = bytes(b ^ 0xFF for b in auth)
    return Y + auth + enc_smsg, stream[32:]


def create_fast_server(x: bytes) -> tuple[bytes, bytes]:
    """CREATE_FAST: returns (``Y | KH``, 72 bytes ``Df Db Kf Kb``) via KDF-TOR."""
    y = secrets.token_bytes(20)
    k0 = x + y
    k = b"".join(hashlib.sha1(k0 + bytes((i,))).digest() for i in range(5))[:92]
    return y + k[:20], k[20:92]


# -- per-hop state -----------------------------------------------------------------------


@dataclass(eq=False)
class FakeStream:
    stream_id: int
    hop_index: int
    behaviour: str
    host: str
    port: int
    package_window: int = STREAMWINDOW_START
    deliver_window: int = STREAMWINDOW_START
    outgoing: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    end_when_drained: bool = False
    closed: bool = False
    end_reason_received: int | None = None  # the client's END reason
    data_cells_sent: int = 0
    data_cells_received: int = 0
    sendmes_received: int = 0
    sendmes_emitted: int = 0
    sendmes_delivered: int = 0  # emitted SENDMEs the client has certainly been handed
    withheld_sendmes: int = 0
    # Congestion control (XON/XOFF, prop 324 §4).
    xoff_from_client: bool = False  # the client told us to stop sending
    xoffs_received: int = 0
    xons_received: int = 0
    xon_rates: list[int] = field(default_factory=list)
    xoff_sent: bool = False  # we told the client to stop
    xoff_delivered: bool = False  # ... and it has certainly seen that
    xoffs_sent: int = 0
    xons_sent: int = 0
    data_cells_after_xoff: int = 0  # DATA the client sent after it saw our XOFF


class FakeHop:
    """One simulated relay on a circuit: relay crypto, windows and edge streams."""

    def __init__(
        self,
        relay: SimRelay,
        keys: bytes,
        circwindow: int,
        *,
        hs: bool = False,
        cc_sendme_inc: int | None = None,
        cc_cwnd: int = 124,
    ) -> None:
        if hs:
            # rend-spec §5: the onion-service hop uses SHA3-256 and AES-256.
            df, db, kf, kb = keys[0:32], keys[32:64], keys[64:96], keys[96:128]
        else:
            df, db, kf, kb = keys[0:20], keys[20:40], keys[40:56], keys[56:72]
        digest = hashlib.sha3_256 if hs else hashlib.sha1
        self.relay = relay
        self.fwd_digest: Any = digest(df)
        self.bwd_digest: Any = digest(db)
        self.fwd_cipher = Cipher(algorithms.AES(kf), modes.CTR(_ZERO_IV)).decryptor()
        self.bwd_cipher = Cipher(algorithms.AES(kb), modes.CTR(_ZERO_IV)).encryptor()
        self.circwindow = circwindow
        self.package_window = circwindow
        self.deliver_window = circwindow
        self.sent_digests: deque[bytes] = deque()  # digests a v1 SENDME must quote, FIFO
        self.streams: dict[int, FakeStream] = {}  # open edge streams
        self.all_streams: dict[int, FakeStream] = {}  # every stream, also closed ones
        self.ended_streams: dict[int, int] = {}  # stream id -> reason of the client's END
        self.ready: deque[FakeStream] = deque()
        self.relay_early_seen = 0
        self.data_cells_sent = 0
        self.data_cells_received = 0
        self.sendmes_received = 0
        self.sendmes_emitted = 0
        self.sendmes_delivered = 0
        self.withheld_digests: list[bytes] = []  # circuit SENDMEs held back by a knob
        self.unhandled: list[tuple[int, int, bytes]] = []  # (command, stream id, data)
        # Congestion control negotiated with this hop (prop 324): SENDMEs every
        # sendme_inc cells both ways (C tor still counts the deliver window from
        # CIRCWINDOW_START), and a cwnd instead of the package window.
        self.cc = cc_sendme_inc is not None
        self.sendme_inc = cc_sendme_inc or CIRCWINDOW_INCREMENT
        if self.cc:
            self.deliver_window = self.circwindow = CIRCWINDOW_START
        self.cwnd = cc_cwnd
        self.inflight = 0
        self.max_inflight_seen = 0  # the most DATA cells the client had unacknowledged
        self.max_cwnd = cc_cwnd


@dataclass(eq=False)
class FakeCircuit:
    circ_id: int
    hops: list[FakeHop] = field(default_factory=list)
    closed: bool = False
    truncated: bool = False  # hops were cut off: cells in flight for them are dropped


# -- configuration --------------------------------------------------------------------------


@dataclass
class FakeRelayConfig:
    link_versions: tuple[int, ...] = (3, 4, 5)
    circwindow: int = CIRCWINDOW_START
    # prop 289 at the relay: the live network runs with accept_min_version=1.
    sendme_accept_min_version: int = 1
    sendme_emit_version: int = 1
    # Exit behaviour, by destination port.
    refuse_ports: dict[int, int] = field(default_factory=dict)  # port -> END reason
    source_ports: dict[int, int] = field(default_factory=dict)  # port -> bytes to send
    discard_ports: set[int] = field(default_factory=set)
    end_after_source: bool = True
    dir_response: bytes | None = None  # BEGIN_DIR: serve these bytes then END; None: echo
    connected_address: str = "93.184.216.34"
    connected_ttl: int = 300
    resolve: Callable[[str], list[tuple[int, bytes, int]]] | None = None
    # Exit withholds stream SENDMEs while this much echo data waits to go back.
    echo_high_water: int = 256 * 1024
    # Oracle: close the circuit if the client sends beyond its package windows.
    strict_windows: bool = True
    # Congestion control at a hop asked for it by ntor v3 (C tor relays: cc_alg != 0).
    cc_enabled: bool = True
    cc_sendme_inc: int = 31  # what the hop answers (the client checks it)
    cc_cwnd_init: int = 124
    cc_cwnd_cap: int = 2000  # slow start stops here (our Vegas-ish sender)
    cc_xoff_bytes: int = 500 * RELAY_DATA_LEN  # C tor's cc_xoff_exit: echo backlog limit
    cc_ignore_xoff: bool = False  # misbehaviour: keep sending after the client's XOFF
    cc_response: bytes | None = None  # answer this server message instead
    # Oracle: most DATA cells the client may have unacknowledged on a CC hop.
    cc_max_client_inflight: int = 10000
    # Misbehaviour knobs.
    certs_mutator: Callable[[list[tuple[int, bytes]]], list[tuple[int, bytes]]] | None = None
    bad_ntor_auth: bool = False
    withhold_circuit_sendmes: bool = False
    withhold_stream_sendmes: bool = False
    corrupt_sendme_digests: bool = False
    ignore_stream_windows: bool = False  # overrun the client's stream deliver windows
    ignore_circuit_windows: bool = False
    truncate_on_downstream_failure: bool = True


# -- the fake relay ---------------------------------------------------------------------------


class FakeRelay:
    """The relay end of one link connection, plus the relays behind it."""

    def __init__(
        self,
        config: FakeRelayConfig | None = None,
        *,
        now: float | None = None,
        address: str = "10.0.0.1",
        extra_relays: int = 2,
        chain: Any = None,
    ) -> None:
        self.config = config or FakeRelayConfig()
        self.now = time.time() if now is None else now
        self.chain = chain or certgen.make_relay_chain(self.now)
        self.tls_cert_der: bytes = self.chain.tls_cert_der
        self.sim = SimRelay(
            "guard", address, 9001, self.chain.rsa_id, self.chain.ed_id, X25519PrivateKey.generate()
        )
        # relays[0] is this relay; the others are reachable by EXTEND2.
        self.relays: list[SimRelay] = [self.sim] + [
            SimRelay.generate(f"relay{i}", f"10.0.{i}.{i + 1}") for i in range(1, extra_relays + 1)
        ]
        self.network: dict[bytes, SimRelay] = {r.rsa_id: r for r in self.relays}
        self.outbuf = bytearray()
        self._inbuf = bytearray()
        self.state = "versions"  # versions -> handshaking -> open -> closed
        self.link_protocol = 0
        self.close_reason: str | None = None
        self.circuits: dict[int, FakeCircuit] = {}
        self.closed_circuits: dict[int, FakeCircuit] = {}
        self.violations: list[str] = []
        self.destroys_received: list[tuple[int, int]] = []  # (circ id, reason)
        self.client_netinfo: bytes | None = None
        self.corrupt_next_digest = False
        # A `tests.fakes.conflux.FakeConfluxExit` that links this relay's exit circuits
        # with circuits of other fake relays (prop 329), if any.
        self.conflux: Any = None

    # -- I/O ------------------------------------------------------------------------------

    @property
    def rsa_id(self) -> bytes:
        return self.sim.rsa_id

    @property
    def ed_id(self) -> bytes:
        return self.sim.ed_id

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def attach(self, channel: Channel) -> None:
        """What the TLS layer does: tell the channel which certificate the relay showed."""
        channel.tls_cert_der = self.tls_cert_der

    def take_output(self) -> bytes:
        """Bytes for the client.  Everything taken counts as delivered (window oracle)."""
        out = bytes(self.outbuf)
        self.outbuf.clear()
        for circ in self.circuits.values():
            for hop in circ.hops:
                hop.sendmes_delivered = hop.sendmes_emitted
                for stream in hop.streams.values():
                    stream.sendmes_delivered = stream.sendmes_emitted
                    stream.xoff_delivered = stream.xoff_sent
        return out

    def receive_data(self, data: bytes) -> None:
        if self.state == "closed":
            return
        self._inbuf += data
        buf = self._inbuf
        if self.state == "versions":
            if len(buf) < 5:
                return
            _circ, cmd, length = _VAR2.unpack_from(buf, 0)
            if cmd != CellCommand.VERSIONS:
                self.close_connection(f"first cell is command {cmd}, not VERSIONS")
                return
            if len(buf) < 5 + length:
                return
            theirs = set(struct.unpack_from(f">{length // 2}H", buf, 5))
            del buf[: 5 + length]
            common = theirs & set(self.config.link_versions)
            self._send_versions()
            if not common or max(common) < 4:
                self.close_connection(f"no usable common link protocol ({sorted(theirs)})")
                return
            self.link_protocol = max(common)
            self.state = "handshaking"
            self._send_handshake_cells()
        pos = 0
        n = len(buf)
        while self.state != "closed" and n - pos >= 5:
            circ_id, cmd = _HDR4.unpack_from(buf, pos)
            if cmd == 7 or cmd >= 128:
                if n - pos < 7:
                    break
                (length,) = _U16.unpack_from(buf, pos + 5)
                end = pos + 7 + length
                if end > n:
                    break
                payload = bytes(buf[pos + 7 : end])
            else:
                end = pos + CELL_LEN
                if end > n:
                    break
                payload = bytes(buf[pos + 5 : end])
            pos = end
            self._handle_cell(circ_id, cmd, payload)
        del buf[:pos]

    def close_connection(self, reason: str) -> None:
        if self.state != "closed":
            self.state = "closed"
            self.close_reason = reason

    # -- link handshake ------------------------------------------------------------------------

    def _send_versions(self) -> None:
        body = b"".join(_U16.pack(v) for v in self.config.link_versions)
        self.outbuf += _VAR2.pack(0, CellCommand.VERSIONS, len(body)) + body

    def _send_var(self, cmd: int, payload: bytes) -> None:
        self.outbuf += _VAR4.pack(0, cmd, len(payload)) + payload

    def _send_fixed(self, circ_id: int, cmd: int, payload: bytes) -> None:
        self.outbuf += _HDR4.pack(circ_id, cmd) + payload + bytes(PAYLOAD_LEN - len(payload))

    def certs_list(self) -> list[tuple[int, bytes]]:
        rsa_key = self.chain.rsa_identity_key
        link = certgen.make_x509(self.chain.tls_key, rsa_key, self.now - 86400, self.now + 86400)
        certs = [(1, link), *self.chain.certs]
        if self.config.certs_mutator is not None:
            certs = self.config.certs_mutator(certs)
        return certs

    def _send_handshake_cells(self) -> None:
        self._send_var(CellCommand.CERTS, certgen.encode_certs_payload(self.certs_list()))
        self._send_var(CellCommand.AUTH_CHALLENGE, os.urandom(32) + struct.pack(">HHH", 2, 1, 3))
        netinfo = (
            _U32.pack(int(self.now))
            + bytes((4, 4))
            + ipaddress.IPv4Address("127.0.0.1").packed
            + bytes((1, 4, 4))
            + ipaddress.IPv4Address(self.sim.address).packed
        )
        self._send_fixed(0, CellCommand.NETINFO, netinfo)

    # -- cells --------------------------------------------------------------------------------

    def _violation(self, message: str) -> None:
        self.violations.append(message)

    def _handle_cell(self, circ_id: int, cmd: int, payload: bytes) -> None:
        if self.state == "handshaking":
            # [C-TOR] before the client's NETINFO only VERSIONS/NETINFO/var cells are allowed.
            if cmd == CellCommand.NETINFO:
                self.client_netinfo = payload
                self.state = "open"
            elif not (cmd == 7 or cmd >= 128):
                self._violation(f"cell {cmd} before NETINFO")
                self.close_connection(f"cell {cmd} before NETINFO")
            return
        if cmd in (CellCommand.PADDING, CellCommand.VPADDING, CellCommand.PADDING_NEGOTIATE):
            return
        if circ_id == 0:
            if cmd not in (CellCommand.VERSIONS, CellCommand.NETINFO):
                self._violation(f"channel-level cell {cmd} after the handshake")
            return
        if cmd in (CellCommand.CREATE_FAST, CellCommand.CREATE2):
            self._create(circ_id, cmd, payload)
            return
        if cmd == CellCommand.DESTROY:
            circ = self.circuits.pop(circ_id, None)
            self.destroys_received.append((circ_id, payload[0]))
            if circ is not None:
                circ.closed = True
                self.closed_circuits[circ_id] = circ
            return
        circ = self.circuits.get(circ_id)
        if circ is None:
            return  # e.g. cells that crossed our DESTROY
        if cmd in (CellCommand.RELAY, CellCommand.RELAY_EARLY):
            self._relay_cell(circ, payload, early=cmd == CellCommand.RELAY_EARLY)
        else:
            self._violation(f"unexpected cell {cmd} on circuit {circ_id:#x}")

    def _create(self, circ_id: int, cmd: int, payload: bytes) -> None:
        if not circ_id & 0x80000000:
            # [C-TOR] the initiator must set the high bit on link protocol >= 4.
            self._violation(f"CREATE with circuit id {circ_id:#x} lacking the high bit")
            self._send_fixed(circ_id, CellCommand.DESTROY, bytes((DestroyReason.PROTOCOL,)))
            return
        if circ_id in self.circuits:
            self._violation(f"CREATE for known circuit {circ_id:#x}")
            return
        cc_inc: int | None = None
        try:
            if cmd == CellCommand.CREATE_FAST:
                reply, keys = create_fast_server(payload[:20])
                self._send_fixed(circ_id, CellCommand.CREATED_FAST, reply)
            else:
                htype, hlen = struct.unpack_from(">HH", payload)
                reply, keys, cc_inc = self._server_handshake(self.sim, htype, payload[4 : 4 + hlen])
                self._send_fixed(circ_id, CellCommand.CREATED2, _U16.pack(len(reply)) + reply)
        except HandshakeFailed as exc:
            self._violation(f"CREATE failed: {exc}")
            self._send_fixed(circ_id, CellCommand.DESTROY, bytes((DestroyReason.PROTOCOL,)))
            return
        circ = FakeCircuit(circ_id)
        circ.hops.append(self._new_hop(self.sim, keys, cc_inc))
        self.circuits[circ_id] = circ

    def _new_hop(self, relay: SimRelay, keys: bytes, cc_inc: int | None) -> FakeHop:
        cfg = self.config
        return FakeHop(relay, keys, cfg.circwindow, cc_sendme_inc=cc_inc, cc_cwnd=cfg.cc_cwnd_init)

    def _server_handshake(
        self, relay: SimRelay, htype: int, hdata: bytes
    ) -> tuple[bytes, bytes, int | None]:
        """ntor (HTYPE 2) or ntor v3 (HTYPE 3); returns (reply, keys, CC sendme_inc)."""
        cfg = self.config
        if htype == 2:
            reply, keys = ntor_server(relay, hdata, bad_auth=cfg.bad_ntor_auth)
            return reply, keys, None
        if htype != 3:
            raise HandshakeFailed(f"unsupported HTYPE {htype}")
        agreed: list[int] = []

        def answer(cm: bytes) -> bytes:
            # [C-TOR] a trunnel extension list with a count byte: N, then TYPE LEN DATA.
            try:
                n, pos, types = cm[0], 1, []
                for _ in range(n):
                    types.append(cm[pos])
                    pos += 2 + cm[pos + 1]
                if pos > len(cm):
                    raise IndexError
            except IndexError:
                raise HandshakeFailed("malformed ntor v3 client message") from None
            if 1 in types and cfg.cc_enabled:
                agreed.append(cfg.cc_sendme_inc)
            if cfg.cc_response is not None:
                return cfg.cc_response
            return bytes((1, 2, 1, cfg.cc_sendme_inc)) if agreed else b"\x00"

        reply, keys = ntor3_server(relay, hdata, answer, bad_auth=cfg.bad_ntor_auth)
        return reply, keys, (agreed[0] if agreed else None)

    def _relay_cell(self, circ: FakeCircuit, payload: bytes, *, early: bool) -> None:
        data = payload
        for index, hop in enumerate(circ.hops):
            if early:
                # Every relay counts the RELAY_EARLY cells it sees; the 9th is fatal.
                hop.relay_early_seen += 1
                if hop.relay_early_seen > MAX_RELAY_EARLY:
                    self.close_circuit(circ, index, "too many RELAY_EARLY cells")
                    return
            data = hop.fwd_cipher.update(data)
            if data[1] == 0 and data[2] == 0:
                trial = hop.fwd_digest.copy()
                trial.update(data[:5] + b"\0\0\0\0" + data[9:])
                if trial.digest()[:4] == data[5:9]:
                    hop.fwd_digest = trial
                    self._handle_relay_at(circ, index, data, early)
                    return
        if circ.truncated:
            return  # meant for a hop we cut off; the client has not heard yet
        self.close_circuit(circ, len(circ.hops) - 1, "relay cell not recognised at the last hop")

    # -- relay messages at a hop ------------------------------------------------------------

    def _handle_relay_at(self, circ: FakeCircuit, index: int, body: bytes, early: bool) -> None:
        command, _rec, stream_id, _digest, length = _RELAY_HDR.unpack_from(body)
        if length > RELAY_DATA_LEN:
            self.close_circuit(circ, index, f"relay length {length}")
            return
        data = body[RELAY_HEADER_LEN : RELAY_HEADER_LEN + length]
        if self.conflux is not None and self.conflux.intercept(
            self, circ, index, command, stream_id, bytes(data)
        ):
            return
        self.dispatch(circ, index, command, stream_id, data, early)

    def dispatch(
        self, circ: FakeCircuit, index: int, command: int, stream_id: int, data: bytes, early: bool
    ) -> None:
        """A relay message at hop ``index``, in order (after any conflux sequencing)."""
        hop = circ.hops[index]
        if command == RelayCommand.DATA:
            self._data(circ, index, stream_id, data)
        elif command == RelayCommand.SENDME:
            self._sendme(circ, index, stream_id, data)
        elif command == RelayCommand.BEGIN:
            self._begin(circ, index, stream_id, data)
        elif command == RelayCommand.BEGIN_DIR:
            self._begin_dir(circ, index, stream_id)
        elif command == RelayCommand.END:
            stream = hop.streams.pop(stream_id, None)
            if stream is not None:
                stream.closed = True
                stream.end_reason_received = data[0] if data else EndReason.MISC
                hop.ended_streams[stream_id] = stream.end_reason_received
        elif command == RelayCommand.RESOLVE:
            self._resolve(circ, index, stream_id, data)
        elif command == RelayCommand.EXTEND2:
            self._extend2(circ, index, data, early)
        elif command in (XON, XOFF):
            self._xon_xoff(circ, index, command, stream_id, data)
        elif command in (RelayCommand.DROP, RelayCommand.TRUNCATE):
            pass
        else:
            hop.unhandled.append((command, stream_id, bytes(data)))
        if not circ.closed:
            self._pump(circ)

    def _data(self, circ: FakeCircuit, index: int, stream_id: int, data: bytes) -> None:
        if self.count_circuit_data(circ, index):
            self.stream_data(circ, index, stream_id, data)

    def count_circuit_data(self, circ: FakeCircuit, index: int) -> bool:
        """A DATA cell arrived at hop ``index``: circuit windows and SENDMEs (False: the
        circuit was closed).  Conflux does this as cells arrive, before sequencing."""
        hop = circ.hops[index]
        cfg = self.config
        hop.data_cells_received += 1
        if hop.cc:
            # No fixed window: the client's Vegas decides.  Oracle: never more than
            # cc_max_client_inflight cells it has not seen a SENDME for.
            unacked = hop.data_cells_received - hop.sendme_inc * hop.sendmes_delivered
            hop.max_inflight_seen = max(hop.max_inflight_seen, unacked)
            if cfg.strict_windows and unacked > cfg.cc_max_client_inflight:
                self.close_circuit(circ, index, f"client has {unacked} DATA cells in flight")
                return False
        elif cfg.strict_windows and hop.data_cells_received > (
            hop.circwindow + CIRCWINDOW_INCREMENT * hop.sendmes_delivered
        ):
            self.close_circuit(circ, index, "client sent DATA beyond its circuit package window")
            return False
        hop.deliver_window -= 1
        if hop.deliver_window < 0:
            self.close_circuit(circ, index, "circuit deliver window below 0")
            return False
        if hop.deliver_window <= hop.circwindow - hop.sendme_inc:
            if cfg.withhold_circuit_sendmes:
                hop.withheld_digests.append(hop.fwd_digest.digest()[:20])
            else:
                self._emit_circuit_sendme(circ, index)
            hop.deliver_window += hop.sendme_inc
        return True

    def stream_data(self, circ: FakeCircuit, index: int, stream_id: int, data: bytes) -> None:
        """The stream's part of a DATA cell, in order."""
        hop = circ.hops[index]
        cfg = self.config
        stream = hop.streams.get(stream_id)
        if stream is None:
            return  # unknown or closed stream: counted above, then dropped
        stream.data_cells_received += 1
        if hop.cc:
            # Flow control instead of stream windows.
            if stream.xoff_delivered:
                stream.data_cells_after_xoff += 1
                if cfg.strict_windows:
                    self.close_circuit(circ, index, "client sent DATA after our XOFF")
                    return
            stream.received += data
            if stream.behaviour == ECHO:
                self._queue_stream_data(hop, stream, data)
                if len(stream.outgoing) > cfg.cc_xoff_bytes and not stream.xoff_sent:
                    self.send_xoff(circ, index, stream)
            return
        if cfg.strict_windows and stream.data_cells_received > (
            STREAMWINDOW_START + STREAMWINDOW_INCREMENT * stream.sendmes_delivered
        ):
            self.close_circuit(circ, index, "client sent DATA beyond its stream package window")
            return
        stream.deliver_window -= 1
        if stream.deliver_window < 0:
            self.close_circuit(circ, index, "stream deliver window below 0")
            return
        stream.received += data
        if stream.behaviour == ECHO:
            self._queue_stream_data(hop, stream, data)
        self._consider_stream_sendme(circ, index, stream)

    def _emit_circuit_sendme(
        self, circ: FakeCircuit, index: int, digest: bytes | None = None
    ) -> None:
        hop = circ.hops[index]
        if digest is None:
            # prop 289: quote the running digest after the cell that triggered us.
            digest = hop.fwd_digest.digest()[:20]
        if self.config.corrupt_sendme_digests:
            digest = bytes(b ^ 0x55 for b in digest)
        # v1 quotes the digest; v0 (a misbehaviour knob here) is an empty body.
        body = b"\x01\x00\x14" + digest if self.config.sendme_emit_version >= 1 else b""
        hop.sendmes_emitted += 1
        self.send_relay(circ, index, RelayCommand.SENDME, 0, body)

    def send_xoff(self, circ: FakeCircuit, index: int, stream: FakeStream) -> None:
        stream.xoff_sent = True
        stream.xoffs_sent += 1
        self.send_relay(circ, index, XOFF, stream.stream_id, b"\x00")

    def send_xon(self, circ: FakeCircuit, index: int, stream: FakeStream, kbps: int = 0) -> None:
        stream.xoff_sent = stream.xoff_delivered = False
        stream.xons_sent += 1
        self.send_relay(circ, index, XON, stream.stream_id, b"\x00" + _U32.pack(kbps))

    def _xon_xoff(
        self, circ: FakeCircuit, index: int, command: int, stream_id: int, data: bytes
    ) -> None:
        hop = circ.hops[index]
        if not hop.cc:
            self._violation(f"XON/XOFF ({command}) on a circuit without congestion control")
            return
        stream = hop.streams.get(stream_id)
        if stream is None:
            return
        if not data or data[0] != 0:
            self._violation(f"XON/XOFF with version {data[:1].hex()}")
            return
        if command == XOFF:
            if stream.xoff_from_client:
                self._violation("client sent a second XOFF without XON")
            stream.xoffs_received += 1
            stream.xoff_from_client = True
            return
        if len(data) < 5:
            self._violation("XON without kbps_ewma")
            return
        stream.xons_received += 1
        stream.xon_rates.append(_U32.unpack_from(data, 1)[0])
        stream.xoff_from_client = False
        if stream.outgoing and stream not in hop.ready:
            hop.ready.append(stream)

    def _consider_stream_sendme(self, circ: FakeCircuit, index: int, stream: FakeStream) -> None:
        """C tor's connection_edge_consider_sending_sendme, with echo backlog as outbuf."""
        if stream.closed:
            return
        if circ.hops[index].cc:
            # Flow control: XON once the backlog that made us send XOFF has drained.
            if stream.xoff_sent and not stream.outgoing:
                self.send_xon(circ, index, stream)
            return
        if stream.behaviour == ECHO and len(stream.outgoing) >= self.config.echo_high_water:
            return  # what we received is still waiting to go back
        while stream.deliver_window <= STREAMWINDOW_START - STREAMWINDOW_INCREMENT:
            stream.deliver_window += STREAMWINDOW_INCREMENT
            if self.config.withhold_stream_sendmes:
                stream.withheld_sendmes += 1
                continue
            stream.sendmes_emitted += 1
            self.send_relay(circ, index, RelayCommand.SENDME, stream.stream_id, b"")

    def _sendme(self, circ: FakeCircuit, index: int, stream_id: int, data: bytes) -> None:
        hop = circ.hops[index]
        if stream_id:
            if hop.cc:
                # C tor sendme_process_stream_level: "Congestion control got stream sendme".
                self.close_circuit(circ, index, "stream SENDME on a congestion-controlled circuit")
                return
            stream = hop.streams.get(stream_id)
            if stream is None:
                return
            stream.sendmes_received += 1
            if stream.package_window + STREAMWINDOW_INCREMENT > STREAMWINDOW_START:
                self.close_circuit(circ, index, "unexpected stream SENDME")
                return
            stream.package_window += STREAMWINDOW_INCREMENT
            if stream.outgoing and stream not in hop.ready:
                hop.ready.append(stream)
            return
        hop.sendmes_received += 1
        version = data[0] if data else 0
        if version < self.config.sendme_accept_min_version:
            self.close_circuit(circ, index, f"unacceptable SENDME version {version}")
            return
        if not hop.sent_digests:
            self.close_circuit(circ, index, "circuit SENDME with no cell digest recorded")
            return
        expected = hop.sent_digests.popleft()
        if version == 1:
            if len(data) < 23 or _U16.unpack_from(data, 1)[0] < 20:
                self.close_circuit(circ, index, "truncated SENDME v1")
                return
            if data[3:23] != expected:
                self.close_circuit(circ, index, "SENDME v1 digest mismatch")
                return
        if hop.cc:
            # Vegas-ish: the ack frees sendme_inc cells; slow start grows cwnd by as
            # much, up to a cap.
            hop.inflight -= hop.sendme_inc
            hop.cwnd = min(hop.cwnd + hop.sendme_inc, self.config.cc_cwnd_cap)
            hop.max_cwnd = max(hop.max_cwnd, hop.cwnd)
            return
        if hop.package_window + CIRCWINDOW_INCREMENT > hop.circwindow:
            self.close_circuit(circ, index, "unexpected circuit SENDME")
            return
        hop.package_window += CIRCWINDOW_INCREMENT

    def _begin(self, circ: FakeCircuit, index: int, stream_id: int, data: bytes) -> None:
        hop = circ.hops[index]
        if stream_id == 0:
            self.close_circuit(circ, index, "BEGIN with stream id 0")
            return
        if stream_id in hop.streams:
            self._violation(f"BEGIN for known stream {stream_id}")
            return
        nul = data.find(b"\0")
        try:
            target = data[:nul].decode("ascii")
            host, _, port_s = target.rpartition(":")
            port = int(port_s)
        except (ValueError, UnicodeDecodeError):
            self.send_end(circ, index, stream_id, EndReason.TORPROTOCOL)
            return
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if index == 0:
            # [C-TOR] no streams on the first hop of a client's circuit (BEGIN_DIR is fine).
            self.send_end(circ, index, stream_id, EndReason.TORPROTOCOL)
            return
        cfg = self.config
        if not hop.relay.exit:
            self.send_end(circ, index, stream_id, EndReason.EXITPOLICY)
            return
        reason = cfg.refuse_ports.get(port)
        if reason is not None:
            extra = b""
            if reason == EndReason.EXITPOLICY:
                extra = ipaddress.IPv4Address(cfg.connected_address).packed + _U32.pack(
                    cfg.connected_ttl
                )
            self.send_end(circ, index, stream_id, reason, extra)
            return
        behaviour = ECHO
        if port in cfg.source_ports:
            behaviour = SOURCE
        elif port in cfg.discard_ports:
            behaviour = DISCARD
        stream = FakeStream(stream_id, index, behaviour, host, port)
        hop.streams[stream_id] = hop.all_streams[stream_id] = stream
        try:
            addr = ipaddress.IPv4Address(host)
        except ValueError:
            addr = ipaddress.IPv4Address(cfg.connected_address)
        self.send_relay(
            circ,
            index,
            RelayCommand.CONNECTED,
            stream_id,
            addr.packed + _U32.pack(cfg.connected_ttl),
        )
        if behaviour == SOURCE:
            self._queue_stream_data(hop, stream, source_content(host, port, cfg.source_ports[port]))
            stream.end_when_drained = cfg.end_after_source

    def _begin_dir(self, circ: FakeCircuit, index: int, stream_id: int) -> None:
        hop = circ.hops[index]
        if stream_id == 0 or stream_id in hop.streams:
            self._violation(f"bad BEGIN_DIR stream id {stream_id}")
            return
        resp = self.config.dir_response
        stream = FakeStream(stream_id, index, ECHO if resp is None else SOURCE, "", 0)
        hop.streams[stream_id] = hop.all_streams[stream_id] = stream
        self.send_relay(circ, index, RelayCommand.CONNECTED, stream_id, b"")
        if resp is not None:
            self._queue_stream_data(hop, stream, resp)
            stream.end_when_drained = True

    def _resolve(self, circ: FakeCircuit, index: int, stream_id: int, data: bytes) -> None:
        name = data.split(b"\0", 1)[0].decode("ascii", "replace")
        if self.config.resolve is not None:
            answers = self.config.resolve(name)
        else:
            answers = [(4, ipaddress.IPv4Address(self.config.connected_address).packed, 60)]
        body = b"".join(bytes((t, len(v))) + v + _U32.pack(ttl) for t, v, ttl in answers)
        self.send_relay(circ, index, RelayCommand.RESOLVED, stream_id, body)

    def _extend2(self, circ: FakeCircuit, index: int, data: bytes, early: bool) -> None:
        if not early:
            self.close_circuit(circ, index, "EXTEND2 not in a RELAY_EARLY cell")
            return
        if index != len(circ.hops) - 1:
            self.close_circuit(circ, index, "EXTEND2 on a circuit that is already extended")
            return
        try:
            nspec, pos = data[0], 1
            specs: dict[int, bytes] = {}
            for _ in range(nspec):
                lstype, lslen = data[pos], data[pos + 1]
                specs[lstype] = data[pos + 2 : pos + 2 + lslen]
                if len(specs[lstype]) != lslen:
                    raise ValueError("truncated link specifier")
                pos += 2 + lslen
            htype, hlen = struct.unpack_from(">HH", data, pos)
            hdata = data[pos + 4 : pos + 4 + hlen]
        except (IndexError, ValueError, struct.error) as exc:
            self.close_circuit(circ, index, f"malformed EXTEND2: {exc}")
            return
        legacy = specs.get(2)
        # [C-TOR] a legacy id and an address are required.
        if not legacy or legacy == bytes(20) or (0 not in specs and 1 not in specs):
            self.close_circuit(circ, index, "EXTEND2 without a legacy id or an address")
            return
        target = self.network.get(legacy)
        here = circ.hops[index].relay
        if target is None or target is here or any(h.relay is target for h in circ.hops):
            self._truncated(circ, index, DestroyReason.CONNECTFAILED, "cannot extend there")
            return
        ed = specs.get(3)
        if ed is not None and ed != target.ed_id:
            self._truncated(circ, index, DestroyReason.OR_IDENTITY, "Ed25519 id mismatch")
            return
        try:
            reply, keys, cc_inc = self._server_handshake(target, htype, hdata)
        except HandshakeFailed as exc:
            self._truncated(circ, index, DestroyReason.PROTOCOL, str(exc))
            return
        circ.hops.append(self._new_hop(target, keys, cc_inc))
        self.send_relay(circ, index, RelayCommand.EXTENDED2, 0, _U16.pack(len(reply)) + reply)

    def _truncated(self, circ: FakeCircuit, index: int, reason: int, message: str) -> None:
        self._violation(f"extend failed at hop {index}: {message}")
        self.send_relay(circ, index, RelayCommand.TRUNCATED, 0, bytes((reason,)))

    # -- sending ----------------------------------------------------------------------------

    def send_relay(
        self,
        circ: FakeCircuit,
        index: int,
        command: int,
        stream_id: int,
        data: bytes = b"",
        *,
        cell_command: int = CellCommand.RELAY,
        corrupt_digest: bool = False,
    ) -> bytes:
        """Originate a relay cell at hop ``index``; returns that hop's 20-byte digest.

        On a linked conflux leg, multiplexed commands from the exit go out on whichever
        leg the fake conflux exit's scheduler picks.
        """
        if self.conflux is not None and self.conflux.routes(self, circ, index, command):
            return bytes(self.conflux.send(self, circ, command, stream_id, data))
        return self.send_relay_here(
            circ,
            index,
            command,
            stream_id,
            data,
            cell_command=cell_command,
            corrupt_digest=corrupt_digest,
        )

    def send_relay_here(
        self,
        circ: FakeCircuit,
        index: int,
        command: int,
        stream_id: int,
        data: bytes = b"",
        *,
        cell_command: int = CellCommand.RELAY,
        corrupt_digest: bool = False,
    ) -> bytes:
        """`send_relay` on exactly this circuit."""
        if len(data) > RELAY_DATA_LEN:
            raise ValueError("relay data too long")
        body = bytearray(_RELAY_HDR.pack(command, 0, stream_id, 0, len(data)))
        body += data
        pad = RELAY_DATA_LEN - len(data)
        if pad > 4:
            body += b"\0\0\0\0" + os.urandom(pad - 4)
        else:
            body += bytes(pad)
        hop = circ.hops[index]
        hop.bwd_digest.update(body)
        full = hop.bwd_digest.digest()
        body[5:9] = full[:4]
        if corrupt_digest or self.corrupt_next_digest:
            self.corrupt_next_digest = False
            body[5] ^= 0xFF
        payload = bytes(body)
        for j in range(index, -1, -1):
            payload = circ.hops[j].bwd_cipher.update(payload)
        self.outbuf += _HDR4.pack(circ.circ_id, cell_command)
        self.outbuf += payload
        return full[:20]

    def send_end(
        self, circ: FakeCircuit, index: int, stream_id: int, reason: int, extra: bytes = b""
    ) -> None:
        self.send_relay(circ, index, RelayCommand.END, stream_id, bytes((reason,)) + extra)

    def _queue_stream_data(self, hop: FakeHop, stream: FakeStream, data: bytes) -> None:
        stream.outgoing += data
        if stream not in hop.ready:
            hop.ready.append(stream)

    def _pump(self, circ: FakeCircuit) -> None:
        """Package queued stream data into DATA cells while the windows allow."""
        if self.conflux is not None and self.conflux.pump_for(self, circ):
            return
        for index, hop in enumerate(circ.hops):
            ready = hop.ready
            while ready and not circ.closed:
                if not self._hop_may_send(hop):
                    break
                stream = ready[0]
                if stream.closed or not stream.outgoing:
                    ready.popleft()
                    self._finish_stream(circ, index, stream)
                    continue
                if not self._stream_may_send(hop, stream):
                    ready.popleft()
                    continue
                for _ in range(16):  # a fair share, then the next stream
                    if not stream.outgoing:
                        break
                    if not self._stream_may_send(hop, stream) or not self._hop_may_send(hop):
                        break
                    chunk = bytes(stream.outgoing[:RELAY_DATA_LEN])
                    del stream.outgoing[:RELAY_DATA_LEN]
                    digest = self.send_relay(
                        circ, index, RelayCommand.DATA, stream.stream_id, chunk
                    )
                    stream.package_window -= 1
                    stream.data_cells_sent += 1
                    hop.data_cells_sent += 1
                    if hop.cc:
                        # C tor: record the digest of the cell that makes inflight a
                        # multiple of sendme_inc (circuit_sent_cell_for_sendme).
                        hop.inflight += 1
                        if hop.inflight % hop.sendme_inc == 0:
                            hop.sent_digests.append(digest)
                        continue
                    hop.package_window -= 1
                    # C tor records the digest of each cell that takes the package
                    # window to a multiple of the increment: a SENDME must quote it.
                    if hop.package_window % CIRCWINDOW_INCREMENT == 0:
                        hop.sent_digests.append(digest)
                ready.rotate(-1)
                if stream.behaviour == ECHO:
                    # Echo backlog shrank: maybe grant SENDMEs we held back.
                    self._consider_stream_sendme(circ, index, stream)

    def _hop_may_send(self, hop: FakeHop) -> bool:
        if self.config.ignore_circuit_windows:
            return True
        return hop.inflight < hop.cwnd if hop.cc else hop.package_window > 0

    def _stream_may_send(self, hop: FakeHop, stream: FakeStream) -> bool:
        if hop.cc:
            return not stream.xoff_from_client or self.config.cc_ignore_xoff
        return stream.package_window > 0 or self.config.ignore_stream_windows

    def _finish_stream(self, circ: FakeCircuit, index: int, stream: FakeStream) -> None:
        if stream.end_when_drained and not stream.closed and not stream.outgoing:
            stream.closed = True
            circ.hops[index].streams.pop(stream.stream_id, None)
            self.send_end(circ, index, stream.stream_id, EndReason.DONE)

    # -- teardown and injection -------------------------------------------------------------

    def close_circuit(self, circ: FakeCircuit, index: int, message: str) -> None:
        """A relay on the circuit gives up on it (C tor: close, reason TORPROTOCOL)."""
        self._violation(f"circuit {circ.circ_id:#x} hop {index}: {message}")
        if index > 0 and self.config.truncate_on_downstream_failure:
            # The hop before the failing one reports it; the circuit beyond is gone.
            self.send_relay(
                circ, index - 1, RelayCommand.TRUNCATED, 0, bytes((DestroyReason.PROTOCOL,))
            )
            del circ.hops[index:]
            circ.truncated = True
            return
        self._destroy(circ, DestroyReason.PROTOCOL)

    def _destroy(self, circ: FakeCircuit, reason: int) -> None:
        circ.closed = True
        self.circuits.pop(circ.circ_id, None)
        self.closed_circuits[circ.circ_id] = circ
        self._send_fixed(circ.circ_id, CellCommand.DESTROY, bytes((reason,)))

    def inject_destroy(self, circ_id: int, reason: int = DestroyReason.FINISHED) -> None:
        circ = self.circuits.get(circ_id)
        if circ is not None:
            self._destroy(circ, reason)
        else:
            self._send_fixed(circ_id, CellCommand.DESTROY, bytes((reason,)))

    def inject_truncated(
        self, circ_id: int, reason: int = DestroyReason.CONNECTFAILED, hop: int = 0
    ) -> None:
        circ = self.circuits[circ_id]
        self.send_relay(circ, hop, RelayCommand.TRUNCATED, 0, bytes((reason,)))
        del circ.hops[hop + 1 :]
        circ.truncated = True

    def inject_garbage(self, n: int = 514, circ_id: int | None = None) -> None:
        """Random bytes on the link, or (``circ_id``) a RELAY cell no hop can recognise."""
        if circ_id is None:
            self.outbuf += os.urandom(n)
        else:
            self.outbuf += _HDR4.pack(circ_id, CellCommand.RELAY) + os.urandom(PAYLOAD_LEN)

    def release_withheld_sendmes(self) -> None:
        """Send every SENDME a ``withhold_*`` knob held back (then stop withholding)."""
        self.config.withhold_circuit_sendmes = False
        self.config.withhold_stream_sendmes = False
        for circ in list(self.circuits.values()):
            for index, hop in enumerate(circ.hops):
                for digest in hop.withheld_digests:
                    self._emit_circuit_sendme(circ, index, digest)
                hop.withheld_digests.clear()
                for stream in hop.streams.values():
                    for _ in range(stream.withheld_sendmes):
                        stream.sendmes_emitted += 1
                        self.send_relay(circ, index, RelayCommand.SENDME, stream.stream_id, b"")
                    stream.withheld_sendmes = 0

    def add_virtual_hop(
        self, circ_id: int, keys: bytes, *, cc_sendme_inc: int | None = None
    ) -> SimRelay:
        """Append an onion-service hop (128 bytes ``Df Db Kf Kb``) behind the last hop.

        The client adds the same keys with ``Circuit.add_virtual_hop``; the service
        behind it accepts BEGIN (as ``:port``) like an exit.  ``cc_sendme_inc``: the
        client asked for congestion control in INTRODUCE1 and the service runs it.
        """
        service = SimRelay.generate("service", "10.9.0.1")
        circ = self.circuits[circ_id]
        circ.hops.append(
            FakeHop(
                service,
                keys,
                self.config.circwindow,
                hs=True,
                cc_sendme_inc=cc_sendme_inc,
                cc_cwnd=self.config.cc_cwnd_init,
            )
        )
        return service

    def pump(self, circ_id: int) -> None:
        """Send whatever the windows now allow on ``circ_id`` (after a knob changed)."""
        circ = self.circuits.get(circ_id)
        if circ is not None:
            self._pump(circ)

    def queue_stream_data(self, circ_id: int, stream_id: int, data: bytes, hop: int = -1) -> None:
        """Make the exit send ``data`` on a stream (as if its target had written it)."""
        circ = self.circuits[circ_id]
        fhop = circ.hops[hop]
        self._queue_stream_data(fhop, fhop.streams[stream_id], data)
        self._pump(circ)

    def exit_end_stream(self, circ_id: int, stream_id: int, reason: int = EndReason.DONE) -> None:
        """The exit ends a stream (its target closed) once pending data is out."""
        circ = self.circuits[circ_id]
        index = len(circ.hops) - 1
        stream = circ.hops[index].streams.get(stream_id)
        if stream is None:
            return
        if reason == EndReason.DONE and stream.outgoing:
            stream.end_when_drained = True
            return
        stream.closed = True
        circ.hops[index].streams.pop(stream_id, None)
        self.send_end(circ, index, stream_id, reason)

    # -- inspection --------------------------------------------------------------------------

    def circuit(self, circ_id: int) -> FakeCircuit:
        return self.circuits.get(circ_id) or self.closed_circuits[circ_id]

    def stream(self, circ_id: int, stream_id: int, hop: int = -1) -> FakeStream | None:
        """The exit's view of a stream, also after it closed."""
        return self.circuit(circ_id).hops[hop].all_streams.get(stream_id)


# -- driving both parties ------------------------------------------------------------------


def deliver_events(events: EventQueue) -> None:
    """What the asyncio layer does after each call into the core: hand every event to
    the object that opened the stream (a `StreamSink`, e.g. `RecordingSink`), or to its
    tunnel's or channel's owner (a list the test reads)."""
    while events:
        for event in events.drain():
            if isinstance(event, StreamData):
                event.stream.owner.stream_data(event.data)
            elif isinstance(event, StreamConnected):
                event.stream.owner.stream_connected(event.connected)
            elif isinstance(event, StreamEnded):
                event.stream.owner.stream_ended(event.reason, event.end, event.message)
            elif isinstance(event, StreamResolved):
                event.stream.owner.stream_resolved(event.answers)
            elif isinstance(event, StreamWritable):
                event.stream.owner.stream_writable()
            else:
                # Tunnel events go to the tunnel's owner, channel events to the channel's.
                source = getattr(event, "tunnel", None) or getattr(event, "channel", None)
                owner = source.owner if source is not None else None
                if owner is not None:
                    owner.append(event)


def receive(channel: Channel, data: bytes, now: float) -> None:
    """``channel.receive_data`` and the event delivery that follows it."""
    channel.receive_data(data, now)
    deliver_events(channel.events)


def transfer(
    channel: Channel,
    fake: FakeRelay,
    *,
    now: float | None = None,
    chunk_size: int | None = None,
    max_rounds: int = 1_000_000,
) -> int:
    """Move bytes both ways until neither side has anything to say; returns rounds.

    ``chunk_size`` splits the relay's output into reads of that size (TLS records).
    A relay that closed the connection makes the channel see EOF, as the asyncio
    layer would.
    """
    return pump_until(
        channel,
        fake,
        lambda: False,
        now=now,
        chunk_size=chunk_size,
        max_rounds=max_rounds,
        until_quiet=True,
    )


def pump_until(
    channel: Channel,
    fake: FakeRelay,
    predicate: Callable[[], bool],
    *,
    now: float | None = None,
    chunk_size: int | None = None,
    max_rounds: int = 1_000_000,
    until_quiet: bool = False,
) -> int:
    """Exchange bytes round by round until ``predicate()`` holds.

    Raises AssertionError if both sides go quiet first (unless ``until_quiet``).
    """
    from puretor.proto.channel import ChannelState

    t = fake.now if now is None else now
    for rounds in range(max_rounds):
        deliver_events(channel.events)  # what API calls since the last round produced
        if predicate():
            return rounds
        moved = False
        out = channel.data_to_send(t)
        if out:
            fake.receive_data(out)
            moved = True
        back = fake.take_output()
        if back:
            moved = True
            if chunk_size is None:
                channel.receive_data(back, t)
                deliver_events(channel.events)
            else:
                for i in range(0, len(back), chunk_size):
                    channel.receive_data(back[i : i + chunk_size], t)
                    deliver_events(channel.events)
        if fake.closed and channel.state is not ChannelState.CLOSED:
            channel.close(f"relay closed the connection: {fake.close_reason}")
            deliver_events(channel.events)
            moved = True
        if not moved:
            if until_quiet:
                return rounds
            raise AssertionError("both parties went quiet before the condition held")
    raise AssertionError(f"still busy after {max_rounds} rounds")


def open_channel(fake: FakeRelay, **channel_kwargs: Any) -> Channel:
    """A client Channel that has completed the link handshake with ``fake``."""
    from puretor.proto.channel import Channel

    kwargs: dict[str, Any] = {
        "peer_address": fake.sim.address,
        "expected_rsa_id": fake.rsa_id,
        "expected_ed_id": fake.ed_id,
    }
    kwargs.update(channel_kwargs)
    channel = Channel(**kwargs)
    fake.attach(channel)
    channel.start(fake.now)
    transfer(channel, fake)
    return channel


def build_circuit(
    channel: Channel,
    fake: FakeRelay,
    hops: int = 3,
    *,
    fast: bool = False,
    mark_open: bool = True,
    congestion_control: Any = None,
    **circuit_kwargs: int,
) -> Tunnel:
    """Build (and open) a tunnel with one ``hops``-hop circuit: CREATE_FAST/CREATE2 then
    EXTEND2s.  ``congestion_control`` (a `CCParams`): ask the last hop for it (ntor v3)."""
    circ = channel.new_tunnel(**circuit_kwargs)
    if fast:
        circ.send_create_fast()
    else:
        circ.send_create2(fake.sim.rsa_id, fake.sim.ntor_key)
    transfer(channel, fake)
    for i, relay in enumerate(fake.relays[1:hops], start=2):
        circ.send_extend2(
            relay.link_specifiers(),
            relay.rsa_id,
            relay.ntor_key,
            ed_id=relay.ed_id,
            congestion_control=congestion_control if i == hops else None,
        )
        transfer(channel, fake)
    if circ.hop_count != hops:
        raise AssertionError(f"circuit has {circ.hop_count} hops, wanted {hops}: {fake.violations}")
    if mark_open:
        circ.mark_open()
    return circ
