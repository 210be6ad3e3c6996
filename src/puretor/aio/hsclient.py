"""Reaching v3 onion services (rend-spec-v3 §2–§4), over the sans-I/O `puretor.hs`.

Steps for a new service: fetch its descriptor from a responsible HSDir over a
3-hop circuit while a rendezvous circuit is built and gets ESTABLISH_RENDEZVOUS;
build a circuit to an introduction point and, once the rendezvous point has
confirmed, send INTRODUCE1; on RENDEZVOUS2 add the virtual hop.  Streams then use that circuit with an empty BEGIN address.
Descriptors are cached per (service, time period) and rendezvous circuits are
reused per (service, isolation key).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from puretor.aio.channel import ChannelTarget
from puretor.aio.circuit import HopSpec, TunnelHandle
from puretor.aio.dirclient import fetch_raw
from puretor.aio.observe import OnionDescriptorEvent, RelayRef
from puretor.dir.http import HttpResponseParser, build_request
from puretor.dir.netdir import Relay
from puretor.errors import (
    ChannelError,
    CircuitError,
    ConfigError,
    DirectoryError,
    NoPathError,
    OnionError,
    ProtocolError,
)
from puretor.hs.address import encode_onion_address
from puretor.hs.client import (
    DescriptorFetchPlan,
    descriptor_id,
    hsdir_fetch_index,
    intro_points_in_order,
    introduce1_extensions,
    plan_descriptor_fetch,
    rp_link_specifiers,
)
from puretor.hs.clientauth import (
    AUTH_PRIVATE_SUFFIX,
    OnionClientAuth,
    format_auth_private,
    load_client_auth_dir,
    parse_auth_private,
)
from puretor.hs.descriptor import HsDescriptor, IntroPoint
from puretor.hs.ntor import (
    HsNtorClientState,
    build_introduce1,
    complete_rendezvous,
    parse_introduce_ack,
)
from puretor.path.select import PathRequest
from puretor.proto.congestion import CCParams
from puretor.proto.relaymsg import RelayCommand

if TYPE_CHECKING:
    from puretor.aio.circmgr import CircuitManager
    from puretor.aio.dirmgr import DirManager
    from puretor.config import TorConfig

log = logging.getLogger("puretor.rend")

DESC_FETCH_TIMEOUT = 30.0
MAX_INTRO_ATTEMPTS = 6

# Proposal 304 SOCKS extended errors.
F0_DESC_NOT_FOUND = 0xF0
F2_INTRO_FAILED = 0xF2
F3_REND_FAILED = 0xF3
F7_INTRO_TIMEOUT = 0xF7
F4_MISSING_CLIENT_AUTH = 0xF4
F5_BAD_CLIENT_AUTH = 0xF5
# HS_DESC FAILED reasons by HTTP status (C tor client_dir_fetch_404/400/unexpected).
_HTTP_FAILURE_REASONS = {404: "NOT_FOUND", 400: "QUERY_REJECTED"}


class ClientAuthKeys:
    """The client authorization keys: those of ``ClientOnionAuthDir`` (read on first use)
    and those added at run time (ONION_CLIENT_AUTH_ADD); ``permanent`` ones are written to
    and removed from that directory as C tor does."""

    def __init__(self, config: TorConfig) -> None:
        self.config = config
        self._keys: dict[bytes, OnionClientAuth] | None = None

    def _loaded(self) -> dict[bytes, OnionClientAuth]:
        if self._keys is None:
            self._keys = {}
            directory = self.config.client_onion_auth_dir
            if directory is not None:
                try:
                    found = load_client_auth_dir(Path(directory).expanduser())
                except ConfigError as exc:
                    log.warning("ClientOnionAuthDir: %s", exc)
                    found = {}
                for identity, key in found.items():
                    address = encode_onion_address(identity).removesuffix(".onion")
                    self._keys[identity] = OnionClientAuth(address, key, None, True)
        return self._keys

    def key(self, identity: bytes) -> bytes | None:
        auth = self._loaded().get(identity)
        return auth.private_key if auth is not None else None

    def all(self) -> list[OnionClientAuth]:
        return list(self._loaded().values())

    def add(self, identity: bytes, auth: OnionClientAuth) -> bool:
        """Register ``auth`` (True if it replaced a key for the service).  A permanent key
        is written first; ConfigError (nothing changed) if that is impossible."""
        keys = self._loaded()  # before the new file exists
        if auth.permanent:
            self._store(auth)
        replaced = identity in keys
        keys[identity] = auth
        return replaced

    def remove(self, identity: bytes) -> OnionClientAuth | None:
        auth = self._loaded().pop(identity, None)
        if auth is not None and auth.permanent:
            self._unlink(identity)
        return auth

    def _directory(self) -> Path:
        directory = self.config.client_onion_auth_dir
        if directory is None:
            raise ConfigError(
                "Can't register permanent client auth credentials without ClientOnionAuthDir"
            )
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise ConfigError(f"ClientOnionAuthDir {path} is not a directory")
        return path

    def _store(self, auth: OnionClientAuth) -> None:
        target = self._directory() / (auth.address + AUTH_PRIVATE_SUFFIX)
        tmp = target.with_name(target.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(format_auth_private(auth.address, auth.private_key))
            os.replace(tmp, target)
        except OSError as exc:
            raise ConfigError(f"cannot write {target}: {exc}") from None

    def _unlink(self, identity: bytes) -> None:
        """Remove every credential file for the service (C tor
        find_and_remove_client_auth_creds_file: by content, whatever the file name)."""
        directory = self.config.client_onion_auth_dir
        if directory is None:
            return
        try:
            files = sorted(Path(directory).expanduser().iterdir())
        except OSError as exc:
            log.warning("ClientOnionAuthDir: %s", exc)
            return
        for file in files:
            if not file.name.endswith(AUTH_PRIVATE_SUFFIX) or not file.is_file():
                continue
            try:
                found, _key = parse_auth_private(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ConfigError):
                continue
            if found == identity:
                try:
                    file.unlink()
                    log.log(25, "Removed client auth file %s.", file)
                except OSError as exc:
                    log.warning("Failed to remove client auth file %s: %s", file, exc)


@dataclass
class _CachedDescriptor:
    descriptor: HsDescriptor
    plan: DescriptorFetchPlan
    expires: float


class OnionClient:
    def __init__(
        self,
        config: TorConfig,
        dirmgr: DirManager,
        circmgr: CircuitManager,
        *,
        auth_keys: ClientAuthKeys | None = None,
        emit: Callable[[Any], None] | None = None,
    ) -> None:
        self.config = config
        self.dirmgr = dirmgr
        self.circmgr = circmgr
        self._descriptors: dict[tuple[bytes, int], _CachedDescriptor] = {}
        # Descriptors fetched while we lacked the right client auth key (C tor caches
        # them too): a key added later decrypts them without a new fetch.
        self._locked: dict[tuple[bytes, int], tuple[bytes, DescriptorFetchPlan, float]] = {}
        self._rend: dict[tuple[bytes, Hashable], TunnelHandle] = {}
        self._connecting: dict[tuple[bytes, Hashable], asyncio.Task[TunnelHandle]] = {}
        self.auth_keys = auth_keys if auth_keys is not None else ClientAuthKeys(config)
        self._emit = emit

    # -- public ------------------------------------------------------------------------

    async def rendezvous_circuit(self, address: str, isolation: Hashable) -> TunnelHandle:
        """An open circuit to the service, reused per (service, isolation key)."""
        netdir = self.dirmgr.require_netdir()
        plan = plan_descriptor_fetch(
            netdir, address, testing_network=self.config.testing_tor_network
        )
        key = (plan.identity_key, isolation)
        handle = self._rend.get(key)
        if handle is not None and handle.is_open:
            return handle
        task = self._connecting.get(key)
        if task is None:
            task = asyncio.ensure_future(self._connect(address, plan))
            self._connecting[key] = task
            task.add_done_callback(lambda _t: self._connecting.pop(key, None))
        handle = await asyncio.shield(task)
        self._rend[key] = handle
        return handle

    def forget(self, address_key: bytes) -> None:
        for key in [k for k in self._rend if k[0] == address_key]:
            self._rend.pop(key).close()

    async def close(self) -> None:
        for handle in self._rend.values():
            handle.close()
        self._rend.clear()
        for task in self._connecting.values():
            task.cancel()

    # -- the steps ----------------------------------------------------------------------

    async def _connect(self, address: str, plan: DescriptorFetchPlan) -> TunnelHandle:
        started = time.monotonic()
        # The rendezvous point does not depend on the descriptor: set it up while the
        # descriptor is fetched (each step is several round trips where users live).
        rend_task: asyncio.Task[_Rendezvous] | None = self._start_rendezvous()
        try:
            desc = await self._descriptor(address, plan)
            last_error: OnionError | None = None
            tried: set[bytes] = set()
            for _attempt in range(2):
                task, rend_task = rend_task or self._start_rendezvous(), None
                try:
                    return await self._rendezvous(desc, plan, tried, task)
                except OnionError as exc:
                    last_error = exc
                    if exc.socks_code not in (F2_INTRO_FAILED, F3_REND_FAILED, F7_INTRO_TIMEOUT):
                        raise
                    log.info("rendezvous attempt failed: %s", exc)
            assert last_error is not None
            log.info("onion connection gave up after %.1fs", time.monotonic() - started)
            raise last_error
        finally:
            if rend_task is not None:
                _discard(rend_task)

    def _start_rendezvous(self) -> asyncio.Task[_Rendezvous]:
        return asyncio.ensure_future(self._establish_rendezvous())

    async def _establish_rendezvous(self) -> _Rendezvous:
        """A circuit to a rendezvous point that has our cookie (RENDEZVOUS_ESTABLISHED)."""
        netdir = self.dirmgr.require_netdir()
        rp = self.circmgr._selector(netdir).choose_last_hop_internal(PathRequest(internal=True))
        try:
            rend = await self.circmgr.build_internal_circuit(last=rp)
        except (ChannelError, CircuitError, NoPathError) as exc:
            raise OnionError(
                f"could not build a rendezvous circuit: {exc}", F3_REND_FAILED
            ) from exc
        try:
            cookie = secrets.token_bytes(20)
            rend.send_relay(RelayCommand.ESTABLISH_RENDEZVOUS, 0, cookie)
            await self._expect(
                rend,
                RelayCommand.RENDEZVOUS_ESTABLISHED,
                self._establish_rendezvous_timeout(),
                "rendezvous point did not confirm",
                F3_REND_FAILED,
            )
        except BaseException:
            rend.close()
            raise
        return _Rendezvous(rend, rp, cookie)

    def _client_auth_key(self, identity: bytes) -> bytes | None:
        return self.auth_keys.key(identity)

    def forget_descriptor(self, identity: bytes) -> None:
        """Drop the cached descriptors of a service (its client auth key was removed)."""
        for key in [k for k in self._descriptors if k[0] == identity]:
            del self._descriptors[key]
        for key in [k for k in self._locked if k[0] == identity]:
            del self._locked[key]

    def new_client_auth_key(self, identity: bytes) -> bool:
        """A key for the service changed: drop its descriptors, and decrypt the ones it
        could not read before with the new key (C tor hs_cache_client_new_auth_parse).
        True if one now decrypts."""
        locked = {k: v for k, v in self._locked.items() if k[0] == identity}
        self.forget_descriptor(identity)
        auth_key = self._client_auth_key(identity)
        if auth_key is None or not locked:
            return False
        try:
            netdir = self.dirmgr.require_netdir()
        except DirectoryError:
            return False
        decrypted = False
        for key, (body, plan, expires) in locked.items():
            if expires <= time.time():
                continue
            try:
                desc = plan.decode(body, now=time.time(), client_auth_key=auth_key, netdir=netdir)
            except OnionError:
                self._locked[key] = (body, plan, expires)
                continue
            self._descriptors[key] = _CachedDescriptor(desc, plan, expires)
            decrypted = True
        return decrypted

    async def fetch_descriptor(self, address: str, servers: list[Relay] | None = None) -> str:
        """Fetch ``address``'s descriptor again, ignoring the cache (HSFETCH): from each of
        ``servers``, or from the responsible HSDirs in turn until one has it.  Reports
        OnionDescriptorEvents; returns the descriptor text (also one that needs a client
        auth key we lack: it was received, and is kept for a key added later), raises
        OnionError."""
        netdir = self.dirmgr.require_netdir()
        plan = plan_descriptor_fetch(
            netdir, address, testing_network=self.config.testing_tor_network
        )
        key = (plan.identity_key, plan.period_num)
        failures: list[str] = []
        text: str | None = None
        last_error: OnionError | None = None
        for hsdir in servers if servers is not None else plan.hsdirs:
            body = await self._fetch_from(plan, hsdir, failures)
            if body is None:
                continue
            try:
                desc = self._decode(plan, hsdir, body)
            except OnionError as exc:
                if exc.socks_code not in (F4_MISSING_CLIENT_AUTH, F5_BAD_CLIENT_AUTH):
                    last_error = exc
                    continue
            else:
                lifetime = getattr(desc, "lifetime_minutes", None) or 180
                expires = time.time() + lifetime * 60
                self._descriptors[key] = _CachedDescriptor(desc, plan, expires)
            text = body.decode("utf-8", "replace")
            if servers is None:
                break
        if text is not None:
            return text
        if last_error is not None:
            raise last_error
        raise OnionError(
            "onion service descriptor not found (" + "; ".join(failures[:6]) + ")",
            socks_code=F0_DESC_NOT_FOUND,
        )

    # -- HS_DESC events ------------------------------------------------------------------

    def _report(self, action: str, plan: DescriptorFetchPlan, hsdir: Relay, **fields: Any) -> None:
        if self._emit is None:
            return
        address = encode_onion_address(plan.identity_key).removesuffix(".onion")
        ref = RelayRef(hsdir.fingerprint, hsdir.nickname)
        self._emit(OnionDescriptorEvent(action, address, ref, descriptor_id(plan), **fields))

    async def _fetch_from(
        self, plan: DescriptorFetchPlan, hsdir: Relay, failures: list[str]
    ) -> bytes | None:
        """One HSDir's answer: the descriptor body, or None (the failure noted)."""
        index = hsdir_fetch_index(self.dirmgr.require_netdir(), plan, hsdir)
        self._report("REQUESTED", plan, hsdir, hsdir_index=index.hex().upper() if index else None)
        handle: TunnelHandle | None = None
        try:
            handle = await self.circmgr.build_internal_circuit(last=hsdir)
            raw = await fetch_raw(
                handle, build_request(plan.url), timeout=DESC_FETCH_TIMEOUT, max_size=256 * 1024
            )
            parser = HttpResponseParser(max_body=256 * 1024)
            parser.feed(raw)
            resp = parser.finish()
        except (
            TimeoutError,
            ChannelError,
            CircuitError,
            DirectoryError,
            ProtocolError,
            NoPathError,
        ) as exc:
            failures.append(f"{hsdir.nickname}: {exc}")
            # C tor reports nothing when the directory connection itself fails; a
            # controller waiting for this fetch learns of it here.
            self._report("FAILED", plan, hsdir, reason="UNEXPECTED", content="")
            return None
        finally:
            if handle is not None:
                handle.close()
        if resp.status != 200:
            failures.append(f"{hsdir.nickname}: HTTP {resp.status}")
            reason = _HTTP_FAILURE_REASONS.get(resp.status, "UNEXPECTED")
            self._report("FAILED", plan, hsdir, reason=reason, content="")
            return None
        return resp.body

    def _decode(self, plan: DescriptorFetchPlan, hsdir: Relay, body: bytes) -> HsDescriptor:
        """Verify and decrypt; RECEIVED or FAILED BAD_DESC as C tor reports them (a
        descriptor that only lacks the right client auth key counts as received)."""
        netdir = self.dirmgr.require_netdir()
        auth_key = self._client_auth_key(plan.identity_key)
        content = body.decode("utf-8", "replace")
        try:
            desc = plan.decode(body, now=time.time(), client_auth_key=auth_key, netdir=netdir)
        except OnionError as exc:
            if exc.socks_code in (F4_MISSING_CLIENT_AUTH, F5_BAD_CLIENT_AUTH):
                expires = time.time() + 180 * 60  # C tor's default descriptor lifetime
                self._locked[(plan.identity_key, plan.period_num)] = (body, plan, expires)
                self._report("RECEIVED", plan, hsdir, content=content)
            else:
                self._report("FAILED", plan, hsdir, reason="BAD_DESC", content="")
            raise
        self._report("RECEIVED", plan, hsdir, content=content)
        return desc

    async def _descriptor(self, address: str, plan: DescriptorFetchPlan) -> HsDescriptor:
        key = (plan.identity_key, plan.period_num)
        cached = self._descriptors.get(key)
        if cached is not None and cached.expires > time.time():
            return cached.descriptor
        failures: list[str] = []
        for hsdir in plan.hsdirs:
            body = await self._fetch_from(plan, hsdir, failures)
            if body is None:
                continue
            # Invalid descriptors and client-auth failures are final (F1, F4, F5).
            desc = self._decode(plan, hsdir, body)
            lifetime = getattr(desc, "lifetime_minutes", None) or 180
            self._descriptors[key] = _CachedDescriptor(desc, plan, time.time() + lifetime * 60)
            return desc
        raise OnionError(
            "onion service descriptor not found on any responsible HSDir ("
            + "; ".join(failures[:6])
            + ")",
            socks_code=F0_DESC_NOT_FOUND,
        )

    async def _rendezvous(
        self,
        desc: HsDescriptor,
        plan: DescriptorFetchPlan,
        tried: set[bytes],
        rend_task: asyncio.Task[_Rendezvous],
    ) -> TunnelHandle:
        ok = False
        try:
            state, rendezvous = await self._introduce(desc, plan, rend_task, tried)
            rend = rendezvous.circuit
            body = await self._expect(
                rend,
                RelayCommand.RENDEZVOUS2,
                self.circmgr.current_build_timeout() * 3 + 1.0,
                "service never joined the rendezvous",
                F3_REND_FAILED,
            )
            keys = complete_rendezvous(state, body)
            cc = self._congestion_control(desc)
            rend.tunnel.add_virtual_hop(
                keys.df,
                keys.db,
                keys.kf,
                keys.kb,
                congestion_control=cc,
                sendme_inc=desc.flow_control.sendme_inc if desc.flow_control else 0,
            )
            rend.purpose = "rendezvous"
            ok = True
            return rend
        finally:
            if not ok:
                _discard(rend_task)

    def _establish_rendezvous_timeout(self) -> float:
        """C tor's cutoff for ESTABLISH_RENDEZVOUS, which behaves like a stream's:
        max(CircuitStreamTimeout, 15 s) + 1 s."""
        return max(self.config.circuit_stream_timeout or 0.0, 15.0) + 1.0

    def _congestion_control(self, desc: HsDescriptor) -> CCParams | None:
        """C tor's choice for a rendezvous circuit (setup_rendezvous_circ_congestion_control):
        congestion control when the descriptor offers it and the consensus has it on,
        with the onion-service parameters (a single onion service's are the exit's)."""
        netdir = self.dirmgr.require_netdir()
        if not desc.supports_congestion_control:
            return None
        path = "exit" if desc.single_onion_service else "onion"
        params = CCParams.from_consensus(netdir.param, path)
        return params if params.enabled else None

    async def _introduce(
        self,
        desc: HsDescriptor,
        plan: DescriptorFetchPlan,
        rend_task: asyncio.Task[_Rendezvous],
        tried: set[bytes],
    ) -> tuple[HsNtorClientState, _Rendezvous]:
        """INTRODUCE1 through the first intro point that acknowledges it. Each intro circuit
        is built while the rendezvous point is still being set up, as C tor does; INTRODUCE1
        waits until the point has our cookie, or the service could arrive before it."""
        netdir = self.dirmgr.require_netdir()
        errors: list[str] = []
        timed_out = False
        points = intro_points_in_order(desc, exclude_auth_keys=tried)
        for ip in points[:MAX_INTRO_ATTEMPTS]:
            tried.add(ip.auth_key)
            # C tor's cutoff for a circuit waiting for INTRODUCE_ACK, counted from the start
            # of its build (circuit_expire_building: an extra round trip, and 4 hops).
            ack_deadline = time.monotonic() + self.circmgr.current_build_timeout() * 14 / 6 + 1.0
            try:
                intro = await self.circmgr.build_internal_circuit(last=_intro_hop(ip))
            except (ChannelError, CircuitError, NoPathError, ProtocolError) as exc:
                errors.append(f"intro circuit failed: {exc}")
                continue
            try:
                rendezvous = await rend_task  # its failure is the rendezvous point's (F3)
                rp = rendezvous.point
                state, body = build_introduce1(
                    ip.auth_key,
                    ip.enc_key,
                    plan.subcredential,
                    rendezvous.cookie,
                    rp.ntor_key or b"",
                    rp_link_specifiers(rp),
                    extensions=introduce1_extensions(
                        desc, netdir, congestion_control=self._congestion_control(desc) is not None
                    ),
                )
                intro.send_relay(RelayCommand.INTRODUCE1, 0, body)
                ack = await self._expect(
                    intro,
                    RelayCommand.INTRODUCE_ACK,
                    max(ack_deadline - time.monotonic(), 1.0),
                    "introduction point did not answer",
                    F7_INTRO_TIMEOUT,
                )
                status = parse_introduce_ack(ack)
                if status == 0:
                    return state, rendezvous
                errors.append(f"INTRODUCE_ACK status {status}")
            except OnionError as exc:
                if exc.socks_code == F3_REND_FAILED:
                    raise
                timed_out = timed_out or exc.socks_code == F7_INTRO_TIMEOUT
                errors.append(str(exc))
            except (ChannelError, CircuitError, ProtocolError) as exc:
                errors.append(f"intro circuit failed: {exc}")
            finally:
                intro.close()
        code = F7_INTRO_TIMEOUT if timed_out and len(errors) == 1 else F2_INTRO_FAILED
        raise OnionError("introduction failed: " + "; ".join(errors[:4]), socks_code=code)

    async def _expect(
        self, handle: TunnelHandle, command: int, timeout: float, what: str, code: int
    ) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OnionError(f"{what} within {timeout:.0f}s", socks_code=code)
            try:
                cell = await handle.next_control_cell(remaining)
            except CircuitError as exc:
                raise OnionError(f"{what}: {exc}", socks_code=code) from exc
            if cell.command == command:
                return cell.body


@dataclass
class _Rendezvous:
    circuit: TunnelHandle
    point: Relay
    cookie: bytes


def _discard(task: asyncio.Task[_Rendezvous]) -> None:
    """Give up a rendezvous set-up: stop it, or close the circuit it made."""
    if not task.done():
        task.cancel()  # _establish_rendezvous closes what it built
    elif not task.cancelled() and task.exception() is None:
        task.result().circuit.close()


def _intro_hop(ip: IntroPoint) -> HopSpec:
    """Extend to the intro point with the descriptor's link specifiers, verbatim."""
    rsa_id = ip.spec(2) or b""
    addr = ip.spec(0)
    address = ".".join(str(b) for b in addr[:4]) if addr else "0.0.0.0"
    port = int.from_bytes(addr[4:6], "big") if addr else 0
    target = ChannelTarget(address, port, rsa_id, ip.spec(3), "intro")
    return HopSpec(target, ip.onion_key, tuple(ip.link_specifiers))
