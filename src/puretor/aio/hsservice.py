"""Hosting a v3 onion service (rend-spec-v3 §2-§4, service side), over `puretor.hs.service`.

One `OnionServiceRunner` per service:

* **Introduction points**: a 3-hop internal circuit to each of N relays, ESTABLISH_INTRO
  with a fresh auth key (authenticated with the circuit's KH), INTRO_ESTABLISHED.  A
  circuit that dies is replaced by a new point on another relay (the descriptor is then
  published again).
* **Descriptors**: for the two time periods C tor publishes (the current and the next,
  or the previous and the current between a new period and the next SRV), built with
  all three layers, signed, and POSTed to ``/tor/hs/3/publish`` over BEGIN_DIR at the
  responsible HSDirs (``hsdir_spread_store`` per replica).  Published again when the
  periods, the HSDir set or the intro points change, and at least every hour.
* **INTRODUCE2**: replay cache, hs-ntor server side, a 3-hop circuit to the client's
  rendezvous point with RENDEZVOUS1, then the virtual hop; the circuit then accepts
  BEGIN, mapped to the service's ports and forwarded to the local targets.

The revision counter is C tor's (an order-preserving encryption of the seconds since
the descriptor's SRV run began, `puretor.hs.service.revision_counter`): it grows across
restarts as long as the clock does, and a directory moved from C tor keeps working.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from puretor.aio.channel import ChannelTarget
from puretor.aio.circuit import HopSpec, TunnelHandle
from puretor.aio.dirclient import fetch_raw
from puretor.aio.observe import Observer, OnionDescriptorEvent, RelayRef
from puretor.aio.stream import TorStreamTransport
from puretor.dir.http import HttpResponseParser
from puretor.dir.netdir import NetDir, Relay
from puretor.errors import (
    ChannelError,
    CircuitError,
    ConfigError,
    DirectoryError,
    NoPathError,
    ProtocolError,
    TorError,
)
from puretor.hs.client import rp_link_specifiers
from puretor.hs.clientauth import AUTH_SUFFIX, parse_authorized_client
from puretor.hs.hsdir import disaster_srv, in_period_between_tp_and_srv, responsible_hsdirs
from puretor.hs.keys import HsTimeParams, unix_time
from puretor.hs.ntor import EXT_CC_REQUEST
from puretor.hs.service import (
    BlindedKey,
    Introduction,
    IntroductionError,
    IntroPointKeys,
    ReplayCache,
    ServiceIdentity,
    SigningKey,
    build_descriptor,
    build_establish_intro,
    parse_introduce2,
    parse_public_key_file,
    revision_counter,
)
from puretor.path.select import PathRequest
from puretor.proto.congestion import CCParams
from puretor.proto.events import StreamIncoming
from puretor.proto.relaymsg import EndReason, RelayCommand

if TYPE_CHECKING:
    from puretor.aio.circmgr import CircuitManager
    from puretor.aio.dirmgr import DirManager

log = logging.getLogger("puretor.rend")

# A local target: (host, port), or a Unix socket path ("unix:/path" in torrc).
Target = tuple[str, int] | Path

DEFAULT_INTRO_POINTS = 3  # C tor NUM_INTRO_POINTS_DEFAULT
MAX_INTRO_POINTS = 20
REPUBLISH_INTERVAL = 3600.0  # C tor uploads again every 60-120 minutes
INTRO_ESTABLISH_TIMEOUT = 30.0
UPLOAD_TIMEOUT = 30.0
LOCAL_CONNECT_TIMEOUT = 10.0
INTRO_LIFETIME = (18 * 3600, 24 * 3600)  # C tor INTRO_POINT_LIFETIME_{MIN,MAX}_SECONDS
INTRO_MAX_INTRODUCTIONS = (16384, 32768)  # C tor INTRO_POINT_{MIN,MAX}_LIFETIME_INTRODUCTIONS
MAX_PENDING_RENDEZVOUS = 32  # concurrent rendezvous circuits being built; more are dropped
HSDIR_SPREAD_STORE_DEFAULT = 4  # C tor HS_DEFAULT_HSDIR_SPREAD_STORE
# The last revision counter uploaded per blinded key, for the whole process: a service
# stopped and started again within a second (DEL_ONION, ADD_ONION) must still upload a
# higher one, or the HSDirs refuse it.
_LAST_REVISION: dict[bytes, int] = {}


def load_service_dir(path: Path) -> ServiceIdentity:
    """The key of a ``HiddenServiceDir``: read it, or create it in C tor's formats
    (``hs_ed25519_secret_key``, ``hs_ed25519_public_key``, ``hostname``; mode 0700/0600)."""
    path = path.expanduser()
    secret_file = path / "hs_ed25519_secret_key"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if secret_file.exists():
            identity = ServiceIdentity.from_secret_key_file(secret_file.read_bytes())
            public_file = path / "hs_ed25519_public_key"
            if public_file.exists() and parse_public_key_file(public_file.read_bytes()) != (
                identity.public
            ):
                raise ConfigError(f"{public_file} does not match {secret_file}")
        else:
            identity = ServiceIdentity.generate()
            _write_private(secret_file, identity.secret_key_file())
            _write_private(path / "hs_ed25519_public_key", identity.public_key_file())
        hostname = path / "hostname"
        if not hostname.exists() or hostname.read_bytes() != identity.hostname_file():
            _write_private(hostname, identity.hostname_file())
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"HiddenServiceDir {path}: {exc}") from exc
    return identity


def load_authorized_clients(path: Path) -> list[bytes]:
    """The x25519 public keys in ``<HiddenServiceDir>/authorized_clients/*.auth``; a
    malformed file is skipped with a warning, as C tor does."""
    directory = path.expanduser() / "authorized_clients"
    keys: list[bytes] = []
    if not directory.is_dir():
        return keys
    for file in sorted(directory.iterdir()):
        if file.suffix != AUTH_SUFFIX or not file.is_file():
            continue
        try:
            keys.append(parse_authorized_client(file.read_text(), source=str(file)))
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            log.warning("authorized client file skipped: %s", exc)
    return keys


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass(eq=False)
class _IntroSlot:
    relay: Relay
    keys: IntroPointKeys
    handle: TunnelHandle
    introductions: int = 0
    # Rotation, as C tor: after 18-24 hours or 16384-32768 introductions.
    expires: float = 0.0  # time.monotonic()
    max_introductions: int = 0

    @property
    def worn_out(self) -> bool:
        return self.introductions >= self.max_introductions or time.monotonic() >= self.expires


@dataclass
class ServiceStats:
    """Counters an operator (and the tests) can read."""

    introductions: int = 0  # INTRODUCE2 accepted
    rejected: int = 0  # INTRODUCE2 dropped: malformed, wrong keys or MAC
    replays: int = 0  # INTRODUCE2 dropped: seen before
    rendezvous_failed: int = 0
    streams: int = 0  # streams accepted
    uploads_ok: int = 0
    uploads_failed: int = 0
    publications: int = 0  # rounds with every descriptor stored on at least one HSDir
    intro_points: list[str] = field(default_factory=list)  # nicknames


class OnionServiceRunner:
    """Keeps one onion service reachable while it runs."""

    def __init__(
        self,
        identity: ServiceIdentity,
        ports: Mapping[int, Target],
        dirmgr: DirManager,
        circmgr: CircuitManager,
        *,
        testing_network: bool = False,
        num_intro_points: int = DEFAULT_INTRO_POINTS,
        max_streams: int = 0,
        max_streams_close_circuit: bool = False,
        auth_clients: tuple[bytes, ...] = (),
        observer: Observer | None = None,
    ) -> None:
        if not ports:
            raise ConfigError("an onion service needs at least one port")
        if not 1 <= num_intro_points <= MAX_INTRO_POINTS:
            raise ConfigError(f"number of introduction points must be 1-{MAX_INTRO_POINTS}")
        self.identity = identity
        self.ports = dict(ports)
        self.dirmgr = dirmgr
        self.circmgr = circmgr
        self.testing_network = testing_network
        self.num_intro_points = num_intro_points
        self.max_streams = max_streams
        self.max_streams_close_circuit = max_streams_close_circuit
        self.auth_clients = auth_clients  # x25519 public keys; () = no client authorization
        self.observer = observer  # gets upload OnionDescriptorEvents (HS_DESC)
        self.stats = ServiceStats()
        self.published = asyncio.Event()
        self._signing = SigningKey.generate()
        self._intros: list[_IntroSlot] = []
        self._retiring: list[_IntroSlot] = []
        self._intro_changed = asyncio.Event()
        self._subcredentials: list[bytes] = []
        self._replays = ReplayCache()
        self._cc_params: CCParams | None = None  # offered in the descriptor
        self._published_key: object = None
        self._published_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._rend: set[TunnelHandle] = set()
        self._pending_rendezvous = 0
        self._main: asyncio.Task[None] | None = None
        self._closed = False
        self.last_error: str | None = None

    @property
    def address(self) -> str:
        return self.identity.address

    @property
    def _name(self) -> str:
        """How logs name the service: a prefix of the address (the log may be shared)."""
        return self.identity.address[:8] + "..."

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        self._main = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for slot in self._intros + self._retiring:
            slot.handle.close()
        for handle in list(self._rend):
            handle.close()
        self._intros.clear()
        self._rend.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        while not self._closed:
            try:
                self._retire_worn_out_intro_points()
                await self._fill_intro_points()
                await self._publish_if_needed()
                # The new descriptor is out: the retired points may go.
                for slot in self._retiring:
                    slot.handle.close()
                self._retiring.clear()
            except (TorError, OSError) as exc:
                self.last_error = str(exc)
                log.info("onion service %s: %s", self._name, exc)
                await asyncio.sleep(2.0)
                continue
            except Exception as exc:  # a bug: say so, and keep the service up
                self.last_error = repr(exc)
                log.exception("onion service %s", self._name)
                await asyncio.sleep(5.0)
                continue
            self._intro_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._intro_changed.wait(), 5.0)

    # -- introduction points ------------------------------------------------------------

    def _retire_worn_out_intro_points(self) -> None:
        """Take worn-out points out of the next descriptor; they keep serving clients
        with the current one until the new one is published (C tor)."""
        for slot in [s for s in self._intros if s.worn_out]:
            log.info("introduction point %s retired", slot.relay.nickname)
            self._intros.remove(slot)
            self._retiring.append(slot)

    async def _fill_intro_points(self) -> None:
        self._intros = [s for s in self._intros if s.handle.is_open]
        missing = self.num_intro_points - len(self._intros)
        if missing <= 0:
            return
        netdir = self.dirmgr.require_netdir()
        selector = self.circmgr._selector(netdir)
        used = {s.relay.rsa_id for s in self._intros}
        relays: list[Relay] = []
        for _ in range(missing * 4):
            if len(relays) >= missing:
                break
            try:
                relay = selector.choose_last_hop_internal(
                    PathRequest(internal=True, exclude=frozenset(used))
                )
            except NoPathError:
                break
            if relay.rsa_id in used or relay.ntor_key is None or relay.ed_id is None:
                used.add(relay.rsa_id)
                continue
            used.add(relay.rsa_id)
            relays.append(relay)
        if not relays and not self._intros:
            raise NoPathError("no relay can be an introduction point")
        results = await asyncio.gather(
            *(self._establish_intro(r) for r in relays), return_exceptions=True
        )
        for result in results:
            if isinstance(result, _IntroSlot):
                self._intros.append(result)
                self._spawn(self._serve_intro(result))
            elif isinstance(result, BaseException):
                log.info("introduction point failed: %s", result)
        self.stats.intro_points = [s.relay.nickname for s in self._intros]
        if not self._intros:
            raise CircuitError("could not establish any introduction point")

    async def _establish_intro(self, relay: Relay) -> _IntroSlot:
        handle = await self.circmgr.build_internal_circuit(last=relay)
        try:
            kh = handle.tunnel.circuit.last_kh
            if kh is None:
                raise CircuitError("no KH from the handshake with the introduction point")
            keys = IntroPointKeys.generate(rp_link_specifiers(relay), relay.ntor_key or b"")
            handle.purpose = "hs_service_intro"
            handle.send_relay(RelayCommand.ESTABLISH_INTRO, 0, build_establish_intro(keys, kh))
            deadline = time.monotonic() + INTRO_ESTABLISH_TIMEOUT
            while True:
                cell = await handle.next_control_cell(max(deadline - time.monotonic(), 0.1))
                if cell.command == RelayCommand.INTRO_ESTABLISHED:
                    break
        except BaseException:
            handle.close()
            raise
        log.info("introduction point %s established", relay.nickname)
        rng = secrets.SystemRandom()
        return _IntroSlot(
            relay,
            keys,
            handle,
            expires=time.monotonic() + rng.randint(*INTRO_LIFETIME),
            max_introductions=rng.randint(*INTRO_MAX_INTRODUCTIONS),
        )

    async def _serve_intro(self, slot: _IntroSlot) -> None:
        while not self._closed:
            try:
                cell = await slot.handle.next_control_cell(3600.0)
            except TimeoutError:
                continue
            except CircuitError:
                break
            if cell.command == RelayCommand.INTRODUCE2:
                self._introduce2(slot, cell.body)
        log.info("introduction circuit to %s closed", slot.relay.nickname)
        self._intro_changed.set()

    def _introduce2(self, slot: _IntroSlot, body: bytes) -> None:
        if self._replays.seen(body, time.monotonic()):
            self.stats.replays += 1
            log.info("dropped a replayed INTRODUCE2")
            return
        try:
            intro = parse_introduce2(body, {slot.keys.auth.public: slot.keys}, self._subcredentials)
        except IntroductionError as exc:
            self.stats.rejected += 1
            log.info("dropped an INTRODUCE2: %s", exc)
            return
        if self._pending_rendezvous >= MAX_PENDING_RENDEZVOUS:
            self.stats.rejected += 1
            log.info("dropped an INTRODUCE2: too many rendezvous circuits being built")
            return
        slot.introductions += 1
        if slot.worn_out:
            self._intro_changed.set()  # replace it (after this introduction)
        self.stats.introductions += 1
        self._spawn(self._rendezvous(intro))

    # -- rendezvous -------------------------------------------------------------------

    async def _rendezvous(self, intro: Introduction) -> None:
        self._pending_rendezvous += 1
        try:
            hop = _rp_hop(intro)
            handle = await self.circmgr.build_internal_circuit(last=hop)
        except (ChannelError, CircuitError, NoPathError, ProtocolError, ValueError) as exc:
            self.stats.rendezvous_failed += 1
            log.info("could not reach the client's rendezvous point: %s", exc)
            return
        finally:
            self._pending_rendezvous -= 1
        try:
            body, keys = intro.respond()
        except IntroductionError as exc:
            self.stats.rejected += 1
            handle.close()
            log.info("dropped an introduction: %s", exc)
            return
        if self._closed or not handle.is_open:
            handle.close()
            return
        handle.purpose = "hs_service_rend"
        handle.send_relay(RelayCommand.RENDEZVOUS1, 0, body)
        # The service's side of the virtual hop: C tor's relay_crypto_init(reverse=1).
        tunnel = handle.tunnel
        cc = self._cc_params
        if cc is not None and any(t == EXT_CC_REQUEST for t, _ in intro.extensions):
            # The client asked for congestion control (our descriptor offered it).
            tunnel.add_virtual_hop(
                keys.db, keys.df, keys.kb, keys.kf, congestion_control=cc, sendme_inc=cc.sendme_inc
            )
        else:
            tunnel.add_virtual_hop(keys.db, keys.df, keys.kb, keys.kf)
        tunnel.accept_streams = self.max_streams
        tunnel.close_on_stream_limit = self.max_streams_close_circuit
        handle.incoming = self._incoming
        self._rend = {h for h in self._rend if h.is_open}
        self._rend.add(handle)
        handle.reactor.kick()

    def _incoming(self, event: StreamIncoming) -> None:
        stream = event.stream
        handle = event.tunnel.owner
        target = self.ports.get(event.port)
        if target is None or self._closed:
            # C tor answers DONE: no hint whether the port exists.
            stream.abort(EndReason.DONE)
            if handle is not None:
                handle.reactor.kick()
            return
        loop = asyncio.get_running_loop()
        transport = TorStreamTransport(loop, f"{self.address}:{event.port}", handle.reactor)
        transport.stream = stream
        stream.owner = transport
        self.stats.streams += 1
        self._spawn(_forward(transport, target, loop))

    # -- descriptors --------------------------------------------------------------------

    def _periods(self, netdir: NetDir) -> list[tuple[BlindedKey, list[Relay], int]]:
        """The two descriptors C tor publishes for this consensus: blinded key, HSDirs,
        and the start of the SRV run its revision counter counts from."""
        tp = HsTimeParams.from_netdir(netdir, testing_network=self.testing_network)
        valid_after = unix_time(netdir.valid_after)
        vi = tp.voting_interval
        run_start = valid_after - ((valid_after // vi) % (tp.srv_run_length // vi)) * vi
        current = tp.period_num(valid_after)
        if in_period_between_tp_and_srv(valid_after, tp):
            first, second = current - 1, current
        else:
            first, second = current, current + 1
        spread = netdir.param("hsdir_spread_store", HSDIR_SPREAD_STORE_DEFAULT, 1, 128)
        out = []
        for period, srv, srv_start in (
            (first, netdir.shared_rand_previous, run_start - tp.srv_run_length),
            (second, netdir.shared_rand_current, run_start),
        ):
            blinded = self.identity.blinded(period, tp.period_length)
            hsdirs = responsible_hsdirs(
                netdir,
                blinded.public,
                period,
                tp.period_length,
                srv=srv if srv is not None else disaster_srv(period, tp.period_length),
                spread=spread,
            )
            out.append((blinded, hsdirs, srv_start))
        return out

    async def _publish_if_needed(self) -> None:
        netdir = self.dirmgr.require_netdir()
        plan = self._periods(netdir)
        key = (
            tuple((b.period_num, tuple(r.rsa_id for r in dirs)) for b, dirs, _ in plan),
            tuple(s.keys.auth.public for s in self._intros),
        )
        fresh = time.monotonic() - self._published_at < REPUBLISH_INTERVAL
        if key == self._published_key and fresh:
            return
        # INTRODUCE2 may use the subcredential of either descriptor (and, briefly, of
        # the ones before): keep the last few.
        subs = [b.subcredential for b, _, _ in plan]
        self._subcredentials = subs + [s for s in self._subcredentials if s not in subs][:2]
        intro_keys = [s.keys for s in self._intros]
        # Congestion control on the rendezvous circuits, offered as C tor does when the
        # consensus has it on (cc_alg != 0), with the onion-service Vegas parameters.
        cc = CCParams.from_consensus(netdir.param, "onion")
        on = netdir.param("cc_alg", 2, 0, 3) != 0 and cc.enabled
        self._cc_params = cc if on else None
        uploads = []
        now = int(time.time())
        for blinded, hsdirs, srv_start in plan:
            revision = revision_counter(blinded, now - srv_start)
            last = _LAST_REVISION.get(blinded.public, 0)
            revision = max(revision, last + 1)  # (twice within one second)
            _LAST_REVISION[blinded.public] = revision
            desc = build_descriptor(
                blinded,
                self._signing,
                intro_keys,
                revision,
                auth_clients=self.auth_clients,
                flow_control_sendme_inc=cc.sendme_inc if on else None,
            )
            desc_id = base64.b64encode(blinded.public).decode("ascii").rstrip("=")
            uploads.append(self._upload_everywhere(desc, hsdirs, desc_id))
        if len(_LAST_REVISION) > 1000:
            _LAST_REVISION.clear()
        results = await asyncio.gather(*uploads)
        if all(results):
            self._published_key = key
            self._published_at = time.monotonic()
            self.stats.publications += 1
            self.published.set()
            log.info("onion service %s: descriptors published", self._name)
        else:
            raise DirectoryError("no HSDir accepted a descriptor")

    async def _upload_everywhere(self, desc: bytes, hsdirs: list[Relay], desc_id: str) -> bool:
        results = await asyncio.gather(*(self._upload(desc, r, desc_id) for r in hsdirs))
        return any(results)

    def _report(self, action: str, hsdir: Relay, desc_id: str, reason: str | None = None) -> None:
        if self.observer is not None:
            ref = RelayRef(hsdir.rsa_id.hex().upper(), hsdir.nickname)
            address = self.address.removesuffix(".onion")
            self.observer.emit(
                OnionDescriptorEvent(action, address, ref, desc_id, reason, upload=True)
            )

    async def _upload(self, desc: bytes, hsdir: Relay, desc_id: str) -> bool:
        self._report("UPLOAD", hsdir, desc_id)
        ok = await self._post(desc, hsdir)
        self._report(
            "UPLOADED" if ok else "FAILED", hsdir, desc_id, None if ok else "UPLOAD_REJECTED"
        )
        return ok

    async def _post(self, desc: bytes, hsdir: Relay) -> bool:
        handle: TunnelHandle | None = None
        try:
            handle = await self.circmgr.build_internal_circuit(last=hsdir)
            request = (
                b"POST /tor/hs/3/publish HTTP/1.0\r\n"
                + f"Content-Length: {len(desc)}\r\n\r\n".encode("ascii")
                + desc
            )
            raw = await fetch_raw(handle, request, timeout=UPLOAD_TIMEOUT, max_size=64 * 1024)
            parser = HttpResponseParser(max_body=64 * 1024)
            parser.feed(raw)
            status = parser.finish().status
        except (TimeoutError, ChannelError, CircuitError, DirectoryError, ProtocolError) as exc:
            self.stats.uploads_failed += 1
            log.info("descriptor upload to %s failed: %s", hsdir.nickname, exc)
            return False
        finally:
            if handle is not None:
                handle.close()
        if status != 200:
            self.stats.uploads_failed += 1
            log.info("descriptor upload to %s: HTTP %d", hsdir.nickname, status)
            return False
        self.stats.uploads_ok += 1
        return True


def _rp_hop(intro: Introduction) -> HopSpec:
    """The client's rendezvous point, from INTRODUCE2's link specifiers (verbatim)."""
    by_type = {s.type: s.data for s in intro.rp_link_specifiers}
    addr, rsa_id, ed_id = by_type.get(0), by_type.get(2), by_type.get(3)
    if addr is None or len(addr) != 6 or rsa_id is None or len(rsa_id) != 20:
        raise ValueError("rendezvous point without an IPv4 address and RSA identity")
    address = ".".join(str(b) for b in addr[:4])
    port = int.from_bytes(addr[4:6], "big")
    target = ChannelTarget(address, port, rsa_id, ed_id if ed_id and len(ed_id) == 32 else None, "")
    return HopSpec(target, intro.rp_onion_key, tuple(intro.rp_link_specifiers))


async def _open_local(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if isinstance(target, Path):
        return await asyncio.open_unix_connection(str(target))
    return await asyncio.open_connection(target[0], target[1])


async def _forward(
    transport: TorStreamTransport, target: Target, loop: asyncio.AbstractEventLoop
) -> None:
    """Connect to the local target, answer CONNECTED, then copy both ways."""
    stream = transport.stream
    assert stream is not None
    try:
        local_reader, local_writer = await asyncio.wait_for(
            _open_local(target), LOCAL_CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        log.info("onion service target %s: %s", target, exc)
        stream.abort(EndReason.CONNECTREFUSED)
        transport.reactor.kick()
        return
    reader = asyncio.StreamReader(limit=2**16, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport.attach(protocol)
    tor_writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    stream.accept()
    transport.reactor.kick()
    # A Tor END closes both directions: once either side is done, so is the other.
    to_local = asyncio.ensure_future(_pipe(reader, local_writer))
    to_tor = asyncio.ensure_future(_pipe(local_reader, tor_writer))
    try:
        await asyncio.wait({to_local, to_tor}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_local, to_tor):
            task.cancel()
        await asyncio.gather(to_local, to_tor, return_exceptions=True)
        local_writer.close()
        transport.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except (ConnectionError, OSError, TorError):
        writer.close()
