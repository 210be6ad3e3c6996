"""Directory manager: bootstrap, cache and refresh the network view.

Drives the sans-I/O `DirState` over BEGIN_DIR streams on one-hop circuits —
CREATE_FAST to authorities/fallbacks while we know no onion keys, then ntor to
directory guards — and keeps the on-disk cache and guard state in the
DataDirectory.  Parsing runs in a worker thread; `DirState` calls are
serialised by a lock because the state is not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from puretor.aio.bridges import BridgeSet
from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.aio.circuit import HopSpec, TunnelHandle, build_circuit, hop_for
from puretor.aio.dirclient import fetch_raw
from puretor.aio.observe import NewConsensusEvent
from puretor.dir.authorities import (
    DEFAULT_AUTHORITIES,
    Authority,
    FallbackDir,
    default_fallbacks,
)
from puretor.dir.bootstrap import BootstrapReporter
from puretor.dir.cache import DirCache
from puretor.dir.http import HttpResponseParser, build_request
from puretor.dir.netdir import NetDir
from puretor.dir.state import BootstrapPhase, BootstrapStatus, DirRequest, DirState
from puretor.errors import (
    BootstrapError,
    ChannelError,
    CircuitError,
    DirectoryError,
    NoPathError,
    ProtocolError,
)
from puretor.path.cbt import BuildTimeout
from puretor.path.guards import GuardManager
from puretor.path.reachable import AddressFamilies
from puretor.path.select import PathSelector

if TYPE_CHECKING:
    from puretor.aio.circmgr import CircuitManager
    from puretor.config import TorConfig

log = logging.getLogger("puretor.dir")
NOTICE = 25

CONCURRENT_REQUESTS = 4
REQUEST_TIMEOUT = 60.0
GUARD_STATE_FILE = "state.json"
BUILD_TIMES_FILE = "circuit-build-times.json"
# UseBridges: C tor's separate "bridges" guard selection, in a file of its own.
BRIDGE_GUARD_STATE_FILE = "state-bridges.json"
_BRIDGE_PHASES = {
    "conn_pt": BootstrapPhase.CONN_PT,
    "conn_done_pt": BootstrapPhase.CONN_DONE_PT,
    "conn": BootstrapPhase.CONN,
    "handshake_done": BootstrapPhase.HANDSHAKE_DONE,
    "onehop_create": BootstrapPhase.ONEHOP_CREATE,
}

__all__ = ["DirManager", "BootstrapStatus", "BootstrapPhase"]


class DirManager:
    def __init__(self, config: TorConfig, chanmgr: ChannelManager) -> None:
        self.config = config
        self.chanmgr = chanmgr
        self.authorities = tuple(config.dir_authorities) or tuple(DEFAULT_AUTHORITIES)
        # Their NETINFO time is trusted enough to report our clock skew (STATUS_GENERAL).
        chanmgr.trusted_ids = frozenset(a.rsa_id for a in self.authorities)
        fallbacks = list(config.fallback_dirs)
        if config.uses_default_fallbacks:
            fallbacks.extend(default_fallbacks())
        self.fallbacks = tuple(fallbacks)
        self.data_dir = Path(config.data_directory).expanduser()
        self.cache = DirCache(self.data_dir, self.authorities)
        self.state: DirState | None = None
        self.reporter = BootstrapReporter()
        self.families = AddressFamilies(
            use_ipv4=config.client_use_ipv4,
            use_ipv6=config.client_use_ipv6,
            prefer_ipv6=config.prefer_ipv6_orport,
        )
        self.listeners: list[Callable[[BootstrapStatus], None]] = []
        self.guards: GuardManager | None = None
        self.circmgr: CircuitManager | None = None
        self.requests_made = 0  # directory fetches (a warm start makes none)
        self._lock = asyncio.Lock()
        self._dir_circuits: dict[bytes, TunnelHandle] = {}
        self._bad_sources: dict[bytes, float] = {}
        self._refresh_task: asyncio.Task[None] | None = None
        self._netdir_seen: NetDir | None = None
        self.guards_listener: Callable[[], None] | None = None  # on every guard change
        self._save_handle: asyncio.TimerHandle | None = None
        self._rng = random.SystemRandom()
        # UseBridges: the bridges are the only directory sources and first hops.
        self.bridges: BridgeSet | None = None
        if config.use_bridges:
            self.bridges = BridgeSet(
                config.bridges,
                chanmgr,
                on_problem=self.note_problem,
                on_progress=lambda tag: self._report(_BRIDGE_PHASES[tag]),
            )

    # -- progress ------------------------------------------------------------------

    @property
    def status(self) -> BootstrapStatus:
        return self.reporter.status

    def _report(self, phase: BootstrapPhase | None = None) -> None:
        if self.state is None:
            return
        if phase is not None:
            self.state.note_phase(phase)
        st = self.state.bootstrap_status(time.time())
        if self.reporter.progress(st):
            log.log(NOTICE, "%s", st)
            for callback in list(self.listeners):
                with contextlib.suppress(Exception):
                    callback(st)

    def note_problem(self, exc: Exception, target: ChannelTarget | None = None) -> None:
        """A failure that holds bootstrapping up: C tor's "Problem bootstrapping" lines."""
        if isinstance(exc, ChannelError):
            warning, reason = exc.warning, exc.reason
            if exc.state:
                self.reporter.connection_failed(exc.state)
        else:
            warning, reason = str(exc) or type(exc).__name__, "MISC"
        host_id = target.rsa_id.hex().upper() if target is not None else "?"
        host_addr = f"{target.address}:{target.or_port}" if target is not None else "?"
        # C tor (control_event_bootstrap_prob_or): with bridges and no other connection
        # open, every bridge failed: warn at once.
        warn = self.bridges is not None and not self.chanmgr.has_open_channel()
        lines = self.reporter.problem(
            warning, reason, time.monotonic(), host_id=host_id, host_addr=host_addr, warn=warn
        )
        for level, line in lines:
            log.log(level, "%s", line)

    # -- bootstrap -----------------------------------------------------------------

    async def bootstrap(self) -> None:
        """Load the cache, then fetch until there is enough directory info."""
        now = time.time()
        try:
            self.state = await asyncio.to_thread(self.cache.load, now)
        except DirectoryError as exc:
            raise BootstrapError(f"cannot use the DataDirectory {self.data_dir}: {exc}") from exc
        for problem in getattr(self.cache, "problems", ()):
            log.warning("Ignoring part of the directory cache: %s", problem)
        self._report()
        state = self.state
        if self.bridges is not None:
            await self._wait_for_bridges()
        if state.have_enough_dir_info(time.time()):
            log.info("Bootstrapping from the directory cache: no fetch needed.")
        while not state.have_enough_dir_info(time.time()):
            progressed = await self._fetch_round()
            if not progressed:
                wake = state.next_wakeup(time.time())
                delay = 1.0 if wake is None else min(max(wake - time.time(), 0.05), 5.0)
                await asyncio.sleep(delay)
        self._report(BootstrapPhase.ENOUGH_DIRINFO)
        await self._persist()

    async def _wait_for_bridges(self) -> None:
        """UseBridges: fetch the bridges' descriptors until at least one bridge is usable."""
        bridges = self.bridges
        assert bridges is not None
        while True:
            await bridges.fetch_due()
            if bridges.relays:
                self._update_bridges()
                return
            await asyncio.sleep(min(max(bridges.next_wakeup() - time.time(), 0.2), 60.0))

    def _update_bridges(self) -> None:
        if self.bridges is not None and self.guards is not None:
            self.guards.set_bridges(self.bridges.described, time.time())
            self.save_guards_soon()

    async def finish_bootstrap(self, circmgr: CircuitManager) -> None:
        """Build the first exit circuit: 80% → 100% as C tor reports it."""
        self._report(BootstrapPhase.AP_CONN)
        deadline = time.monotonic() + 300
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                await circmgr.wait_for_exit_circuit()
                break
            except (CircuitError, ChannelError, NoPathError) as exc:
                last = exc
                self.note_problem(exc)
                await asyncio.sleep(1.0)
        else:
            raise BootstrapError(f"could not build any circuit: {last}")
        self._report(BootstrapPhase.AP_HANDSHAKE_DONE)
        self._report(BootstrapPhase.CIRCUIT_CREATE)
        self._report(BootstrapPhase.DONE)

    def require_netdir(self) -> NetDir:
        netdir = self.state.netdir(time.time()) if self.state is not None else None
        if netdir is None:
            raise DirectoryError("no usable consensus (expired more than 24 hours ago?)")
        if netdir is not self._netdir_seen:
            self._netdir_seen = netdir
            self.chanmgr.reactor.observer.emit(NewConsensusEvent(netdir.valid_after.timestamp()))
            if self.guards is not None:
                self.guards.set_netdir(netdir, time.time())
                self.save_guards_soon()
        return netdir

    # -- fetching --------------------------------------------------------------------

    async def _fetch_round(self) -> bool:
        state = self.state
        assert state is not None
        if not any(h.is_open for h in self._dir_circuits.values()):
            # Connect first, so progress reads conn → handshake → onehop_create → requesting.
            try:
                await self._dir_circuit()
            except (TimeoutError, ChannelError, CircuitError, NoPathError) as exc:
                log.info("Could not reach a directory source: %s", exc)
                return False
        async with self._lock:
            reqs = state.next_requests(time.time(), limit=CONCURRENT_REQUESTS)
        if not reqs:
            return False
        await asyncio.gather(*(self._do_request(r) for r in reqs))
        return True

    async def _do_request(self, req: DirRequest) -> None:
        state = self.state
        assert state is not None
        source: ChannelTarget | None = None
        try:
            handle, source = await self._dir_circuit()
            self._report()
            self.requests_made += 1
            raw = await fetch_raw(
                handle, build_request(req.path), timeout=REQUEST_TIMEOUT, max_size=64 * 1024 * 1024
            )
            parser = HttpResponseParser()
            parser.feed(raw)
            resp = parser.finish()
            if resp.status != 200:
                raise DirectoryError(f"HTTP {resp.status} {resp.reason} for {req.kind}")
            async with self._lock:
                await asyncio.to_thread(self._apply, req, resp.body)
        except (
            TimeoutError,
            DirectoryError,
            ProtocolError,
            ChannelError,
            CircuitError,
            NoPathError,
        ) as exc:
            where = source.describe() if source is not None else "a directory source"
            log.info("Directory request for %s from %s failed: %s", req.kind, where, exc)
            async with self._lock:
                state.request_failed(req, time.time(), str(exc))
            if source is not None:
                self._drop_source(source.rsa_id)
        self._report()

    def _apply(self, req: DirRequest, body: bytes) -> None:
        state = self.state
        assert state is not None
        now = time.time()
        if req.kind == "consensus":
            try:
                accepted = state.add_consensus(body, now)
            except DirectoryError as exc:
                log.warning("Refused a consensus: %s", exc)
                raise
            log.info("Consensus %s.", "accepted" if accepted else "waiting for certificates")
        elif req.kind == "certs":
            state.add_certs(body, now, req.digests)
        else:
            state.add_microdescs(body, req.digests, now)

    async def _dir_circuit(self) -> tuple[TunnelHandle, ChannelTarget]:
        """A one-hop directory circuit: a directory guard once we have guards."""
        for rsa_id, handle in list(self._dir_circuits.items()):
            if handle.is_open:
                return handle, handle.path[0].target
            del self._dir_circuits[rsa_id]
        hop = self._pick_source()
        # Through Socks4Proxy/Socks5Proxy/HTTPSProxy: C tor's conn_proxy phase instead.
        cfg = self.config
        proxied = cfg.socks4_proxy or cfg.socks5_proxy or cfg.https_proxy
        self._report(BootstrapPhase.CONN_PROXY if proxied else BootstrapPhase.CONN)
        try:
            await self.chanmgr.get_channel(hop.target)
            self._report(BootstrapPhase.HANDSHAKE_DONE)
            handle = await build_circuit(self.chanmgr, [hop], timeout=30.0)
        except (TimeoutError, ChannelError, CircuitError) as exc:
            self._bad_sources[hop.target.rsa_id] = time.time() + 60
            self.note_problem(exc, hop.target)
            raise
        self._report(BootstrapPhase.ONEHOP_CREATE)
        self._dir_circuits[hop.target.rsa_id] = handle
        return handle, hop.target

    def _pick_source(self) -> HopSpec:
        """Where the next directory request goes: a directory guard; with UseEntryGuards 0
        (C tor's should_use_directory_guards) a bandwidth-weighted directory cache from
        the consensus; before there is a consensus, an authority or fallback."""
        now = time.time()
        if self.bridges is not None:
            return self._pick_bridge(now)
        if self.config.use_entry_guards and self.guards is not None and self.state is not None:
            with contextlib.suppress(NoPathError, DirectoryError):
                relay, _usage = self.guards.select_directory_guard(now)
                if relay.ntor_key is not None and self._bad_sources.get(relay.rsa_id, 0) < now:
                    return hop_for(relay, self.families)
        elif not self.config.use_entry_guards and self.state is not None:
            netdir = self.state.netdir(now)
            if netdir is not None:
                exclude = {rsa for rsa, until in self._bad_sources.items() if until >= now}
                exclude.update(
                    r.rsa_id
                    for r in netdir.relays
                    if r.ntor_key is None
                    or not self.families.can_reach((r.address, r.or_port), r.ipv6)
                )
                with contextlib.suppress(NoPathError):
                    relay = PathSelector(netdir).choose_directory_cache(exclude)
                    return hop_for(relay, self.families)
        candidates: list[HopSpec] = []
        sources: list[Authority | FallbackDir] = [*self.authorities, *self.fallbacks]
        for source in sources:
            where = self.families.or_address((source.address, source.or_port), source.ipv6)
            if where is None:
                continue
            ed_id = getattr(source, "ed_id", None)
            name = getattr(source, "nickname", "")
            target = ChannelTarget(where[0], where[1], source.rsa_id, ed_id, name)
            candidates.append(HopSpec(target, None))
        if not candidates:
            raise BootstrapError(
                "no directory authority or fallback has an address that ClientUseIPv4 "
                "and ClientUseIPv6 allow"
                if self.authorities or self.fallbacks
                else "no directory authorities or fallbacks configured"
            )
        good = [c for c in candidates if self._bad_sources.get(c.target.rsa_id, 0) < now]
        if not good:
            self._bad_sources.clear()
            good = candidates
        return secrets.choice(good)

    def _pick_bridge(self, now: float) -> HopSpec:
        """UseBridges: a bridge is the only directory source (C tor fetches everything through
        its bridges): a directory guard from the bridges once we have guards, else one of the
        described bridges."""
        assert self.bridges is not None
        if self.guards is not None:
            with contextlib.suppress(NoPathError, DirectoryError):
                relay, _usage = self.guards.select_directory_guard(now)
                if self._bad_sources.get(relay.rsa_id, 0) < now:
                    return hop_for(relay, self.families)
        described = self.bridges.described
        if not described:
            raise NoPathError("no bridge descriptor yet: no directory source")
        good = [r for r in described if self._bad_sources.get(r.rsa_id, 0) < now]
        return hop_for(secrets.choice(good or described), self.families)

    def _drop_source(self, rsa_id: bytes) -> None:
        handle = self._dir_circuits.pop(rsa_id, None)
        if handle is not None:
            handle.close()
        self._bad_sources[rsa_id] = time.time() + 60

    # -- refresh -----------------------------------------------------------------------

    def start_refresh(self) -> None:
        if self._refresh_task is None:
            self._refresh_task = asyncio.ensure_future(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        state = self.state
        assert state is not None
        while True:
            try:
                if self.bridges is not None and await self.bridges.fetch_due():
                    self._update_bridges()
                if await self._fetch_round():
                    self.require_netdir()
                    await self._persist()
                    continue
                now = time.time()
                wake = state.next_wakeup(now)
                await asyncio.sleep(30.0 if wake is None else min(max(wake - now, 0.5), 60.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the refresher must not die
                log.warning("Directory refresh failed: %r", exc)
                await asyncio.sleep(5.0)

    async def _persist(self) -> None:
        if self.state is None:
            return
        try:
            async with self._lock:
                await asyncio.to_thread(self.cache.save, self.state)
        except (OSError, DirectoryError) as exc:
            log.warning("Could not write the directory cache in %s: %s", self.data_dir, exc)

    # -- guard state -------------------------------------------------------------------------

    def load_guards(self) -> GuardManager:
        path = self.data_dir / self._guard_state_file
        now = time.time()
        mgr: GuardManager | None = None
        try:
            data = json.loads(path.read_text("utf-8"))
            mgr, problem = GuardManager.from_json(data, now)
            if problem:
                log.warning("Guard state in %s: %s", path, problem)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("Could not read guard state %s (%s); starting with new guards.", path, exc)
        if mgr is None:
            mgr = GuardManager()
        mgr.enforce_distinct_subnets = self.config.distinct_subnets
        mgr.families = self.families
        if self.config.num_primary_guards is not None:
            mgr.overrides["n_primary"] = self.config.num_primary_guards
        if self.config.num_entry_guards is not None:
            mgr.overrides["n_primary_to_use"] = self.config.num_entry_guards
        if self.bridges is not None:
            mgr.set_bridges(self.bridges.described, now)
        self.guards = mgr
        self._netdir_seen = None
        self.require_netdir()
        self.save_guards()
        return mgr

    @property
    def _guard_state_file(self) -> str:
        return BRIDGE_GUARD_STATE_FILE if self.bridges is not None else GUARD_STATE_FILE

    def save_guards_soon(self) -> None:
        """The guards changed: tell the listener (GUARD events) and save them soon."""
        if self.guards_listener is not None:
            self.guards_listener()
        if self._save_handle is None:
            loop = asyncio.get_running_loop()
            self._save_handle = loop.call_later(1.0, self.save_guards)

    def save_guards(self) -> None:
        self._save_handle = None
        if self.guards is not None:
            self._write_state(self._guard_state_file, self.guards.to_json(), "guard state")

    def load_build_times(self, cbt: BuildTimeout) -> None:
        """The circuit build times an earlier run learned (C tor keeps them in its state
        file): a warm start then abandons a stuck build after a learned timeout, not the
        initial 60 s."""
        path = self.data_dir / BUILD_TIMES_FILE
        try:
            cbt.load_state(json.loads(path.read_text("utf-8")))
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError) as exc:
            log.warning("Could not read circuit build times %s (%s); learning anew.", path, exc)
            return
        log.info(
            "Loaded %d circuit build times: build timeout %.1f s%s.",
            cbt.recorded,
            cbt.timeout(),
            "" if cbt.learned else " (not learned yet)",
        )

    def save_build_times(self, cbt: BuildTimeout) -> None:
        self._write_state(BUILD_TIMES_FILE, cbt.to_state(), "circuit build times")

    def _write_state(self, name: str, data: Any, what: str) -> None:
        """``data`` as JSON in the DataDirectory, whole or not at all (mode 0600)."""
        path = self.data_dir / name
        tmp = path.with_suffix(".tmp")
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)  # a leftover temporary file keeps its mode
                json.dump(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("Could not save %s to %s: %s", what, path, exc.strerror or exc)
            with contextlib.suppress(OSError):
                tmp.unlink()  # a full disk must not keep a half-written file

    async def close(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refresh_task
        if self._save_handle is not None:
            self._save_handle.cancel()
            self.save_guards()
        for handle in self._dir_circuits.values():
            handle.close()
        self._dir_circuits.clear()

    def info(self) -> dict[str, Any]:
        return {"requests": self.requests_made, "status": str(self.status)}
