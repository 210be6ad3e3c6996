"""`TorClient`: Tor inside an asyncio program.

    async with TorClient(TorConfig(...)) as tor:
        reader, writer = await tor.open_connection("example.com", 80)

Every connection is a stream on a 3-hop circuit; names are resolved by the
exit, never locally.  The ``tor-client`` SOCKS daemon is built on this API.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import ipaddress
import logging
import os
import ssl as _ssl
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.aio.circmgr import CircuitManager
from puretor.aio.circuit import TunnelHandle
from puretor.aio.dirmgr import BootstrapStatus, DirManager
from puretor.aio.observe import (
    BandwidthEvent as BandwidthEvent,
)
from puretor.aio.observe import (
    BootstrapEvent,
    ChannelEvent,
    CircuitBandwidthEvent,
    CircuitEvent,
    ClientEvent,
    GuardEvent,
    StreamBandwidthEvent,
    StreamEvent,
    new_circuit_id,
    new_stream_id,
)
from puretor.aio.observe import (
    BuildTimeoutEvent as BuildTimeoutEvent,
)
from puretor.aio.observe import (
    GeneralStatusEvent as GeneralStatusEvent,
)
from puretor.aio.observe import (
    NetworkLivenessEvent as NetworkLivenessEvent,
)
from puretor.aio.observe import (
    NewConsensusEvent as NewConsensusEvent,
)
from puretor.aio.observe import (
    OnionDescriptorEvent as OnionDescriptorEvent,
)
from puretor.aio.observe import (
    RelayRef as RelayRef,
)
from puretor.aio.proxy import OutboundProxy
from puretor.aio.pt import Transports
from puretor.aio.stream import TorStreamTransport
from puretor.config import TorConfig
from puretor.dir.netdir import Relay
from puretor.errors import (
    BootstrapError,
    CircuitError,
    ClientClosedError,
    ConfigError,
    NoPathError,
    StreamRefused,
    StreamTimeout,
    TorError,
)
from puretor.hs.clientauth import OnionClientAuth as OnionClientAuth
from puretor.path.addressmap import AddressMap
from puretor.path.guards import GuardManager, Reachable
from puretor.path.isolation import DEFAULT_TOKEN
from puretor.path.isolation import IsolationToken as IsolationToken
from puretor.path.reachable import is_internal_address, is_local_hostname
from puretor.proto.cells import CELL_LEN
from puretor.proto.circuitmux import choose_halflife
from puretor.proto.conflux import UX_BY_NAME
from puretor.proto.memory import choose_limit
from puretor.proto.relaymsg import EndReason
from puretor.ratelimit import RateLimit

if TYPE_CHECKING:
    import socket

log = logging.getLogger("puretor")
MAPPED_ANSWER_TTL = 60  # seconds, for a DNS answer that comes from the address map

P = TypeVar("P", bound=asyncio.BaseProtocol)
T = TypeVar("T")

STREAM_ATTEMPTS = 4
STREAM_TOTAL_TIMEOUT = 120.0  # C tor's SocksTimeout
_RETRY_REASONS = frozenset(
    {
        EndReason.EXITPOLICY,
        EndReason.DESTROY,
        EndReason.RESOURCELIMIT,
        EndReason.HIBERNATING,
        EndReason.TIMEOUT,
    }
)
# C tor retries these on another exit, a few times (MAX_RESOLVE_FAILURES = 3):
# the exit may be the one with the problem (relay.c connection_ap_process_end_not_open).
_RETRY_ELSEWHERE_REASONS = frozenset(
    {EndReason.MISC, EndReason.RESOLVEFAILED, EndReason.NOROUTE, EndReason.TIMEOUT}
)
_MAX_RETRY_ELSEWHERE = 2
# C tor warns about requests for private addresses at most every 5 minutes.
_private_address_warnings = RateLimit(300.0)


_DEFAULT_ISOLATION = DEFAULT_TOKEN


class TorClient:
    """A Tor client: bootstrap once, then open streams through 3-hop circuits.

    ``async with TorClient(config) as tor:`` bootstraps on entry and closes on exit.
    ``config`` defaults to ``TorConfig()`` (the public Tor network, the default
    DataDirectory).  With no directory source reachable, bootstrap keeps trying as C tor
    does; ``bootstrap_timeout`` (seconds) turns that into a `BootstrapError` instead.

    One client serves any number of concurrent streams; use it from the event loop it
    was first used on (see `puretor.sync.TorClient` for threads and blocking code).
    """

    def __init__(
        self, config: TorConfig | None = None, *, bootstrap_timeout: float | None = None
    ) -> None:
        self._config = config if config is not None else TorConfig()
        self.bootstrap_timeout = bootstrap_timeout
        self._streams_opened = 0
        self._chanmgr = ChannelManager(
            allow=self._channel_allowed,
            priority_halflife=self._priority_halflife,
            max_mem_in_queues=_max_mem_in_queues(self.config.max_mem_in_queues),
        )
        self._halflife_warned = False
        self._dirmgr = DirManager(self.config, self._chanmgr)
        # Pluggable transports: bridges behind one are reached through its SOCKS5 proxy.
        self._pts: Transports | None = None
        if self.config.transport_plugins:
            self._pts = Transports(
                self.config.transport_plugins, Path(self.config.data_directory).expanduser()
            )
        # Socks4Proxy / Socks5Proxy / HTTPSProxy: every connection of ours goes through it.
        self._proxy: OutboundProxy | None = _outbound_proxy(self.config)
        if self._pts is not None or self._proxy is not None:
            self._chanmgr.connector = self._connect_through_transport
        self._circmgr: CircuitManager | None = None
        self._guards: GuardManager | None = None
        self._bootstrap_task: asyncio.Task[None] | None = None
        self._onion: Any = None
        self._client_auth: Any = None  # aio.hsclient.ClientAuthKeys, made on first use
        self._services: set[Any] = set()  # running OnionServiceRunners
        self._configured_services: list[OnionService] = []
        self._configured_task: asyncio.Task[None] | None = None
        self._closed = False
        # Automapped virtual addresses (AutomapHostsOnResolve): connections to one go to
        # its name instead, whichever port or API they come through.
        self.address_map = AddressMap(
            self.config.virtual_addr_network_ipv4, self.config.virtual_addr_network_ipv6
        )
        self._apply_map_address()
        self._observer = self._chanmgr.reactor.observer
        # Streams waiting for attach_stream (__LeaveStreamsUnattached), open streams by id.
        self._awaiting_attach: dict[int, asyncio.Future[int]] = {}
        self._redirects: dict[int, tuple[str, int]] = {}  # redirect_stream, until attached
        self._transports: weakref.WeakValueDictionary[int, TorStreamTransport] = (
            weakref.WeakValueDictionary()
        )
        self._observer.stream_sampler = self._sample_streams
        self._observer.circuit_sampler = self._sample_circuits
        self._guard_states: dict[bytes, tuple[str, str]] = {}
        self._save_cbt_handle: asyncio.TimerHandle | None = None
        self.add_bootstrap_listener(self._report_bootstrap)

    @property
    def config(self) -> TorConfig:
        """The configuration; assigning a new one applies what can change while running
        (e.g. ``MapAddress``), as the control port's SETCONF does."""
        return self._config

    @config.setter
    def config(self, new: TorConfig) -> None:
        self._config = new
        self._apply_map_address()

    def _apply_map_address(self) -> None:
        for problem in self.address_map.set_config_mappings(self._config.map_address):
            log.warning("%s", problem)

    def _priority_halflife(self) -> float:
        """CircuitPriorityHalflife, or the consensus's CircuitPriorityHalflifeMsec."""
        state = self._dirmgr.state
        netdir = state.netdir(time.time()) if state is not None else None
        msec = netdir.params.get("CircuitPriorityHalflifeMsec") if netdir is not None else None
        halflife, warning = choose_halflife(self.config.circuit_priority_halflife, msec)
        if warning and not self._halflife_warned:
            self._halflife_warned = True
            log.warning("%s", warning)
        return halflife

    def _connect_through_transport(self, target: ChannelTarget) -> Awaitable[socket.socket] | None:
        """A bridge behind a transport: through its proxy; with Socks4Proxy, Socks5Proxy or
        HTTPSProxy, anything else through that; None: directly."""
        bridges = self._dirmgr.bridges
        line = bridges.line_for(target) if bridges is not None else None
        if line is not None and line.transport is not None and self._pts is not None:
            return self._pts.connect(line.transport, line.address, line.port, line.args)
        if self._proxy is not None:
            return self._proxy.connect(target.address, target.or_port)
        return None

    def _channel_allowed(self, target: ChannelTarget) -> str | None:
        """Fail closed at the channel layer: connect only to a configured authority or
        fallback, or to a relay listed (at that address and ORPort) in the current,
        reasonably live consensus; with UseBridges, only to a configured bridge.  Returns
        why not, or None.

        Every hop after the first (exits, intro and rendezvous points) is reached by
        EXTEND2 through the circuit, never by a connection of ours, so these are all the
        targets a client ever needs.
        """
        if self._dirmgr.bridges is not None:
            # UseBridges: never an authority, fallback or listed relay directly.
            return self._dirmgr.bridges.allows(target)
        where = (target.address, target.or_port)
        for auth in self._dirmgr.authorities:
            if auth.rsa_id == target.rsa_id and where in ((auth.address, auth.or_port), auth.ipv6):
                return None
        for fb in self._dirmgr.fallbacks:
            if fb.rsa_id == target.rsa_id and where in ((fb.address, fb.or_port), fb.ipv6):
                return None
        state = self._dirmgr.state
        netdir = state.netdir(time.time()) if state is not None else None
        if netdir is None:
            return "not a configured directory authority or fallback, and no usable consensus"
        relay = netdir.by_rsa_id(target.rsa_id)
        if relay is None:
            return "not a configured directory source nor a relay in the current consensus"
        if where not in ((relay.address, relay.or_port), relay.ipv6):
            return "the consensus lists that relay at another address"
        return None

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> TorClient:
        try:
            await self.bootstrap()
        except BaseException:
            # `async with` does not call __aexit__ when __aenter__ fails: clean up here.
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def bootstrap_status(self) -> BootstrapStatus:
        """The latest progress: ``.percent`` (0-100), ``.tag`` and ``.summary`` as C tor has them."""
        return self._dirmgr.status

    @property
    def is_bootstrapped(self) -> bool:
        """True once `bootstrap` has completed."""
        task = self._bootstrap_task
        return task is not None and task.done() and not task.cancelled() and not task.exception()

    @property
    def closed(self) -> bool:
        """True once `aclose` was called."""
        return self._closed

    def add_bootstrap_listener(self, callback: Callable[[BootstrapStatus], None]) -> None:
        """Call ``callback(status)`` on every bootstrap progress step.

        ``status`` is a `BootstrapStatus` (``.percent``, ``.tag``, ``.summary``;
        ``str(status)`` is C tor's "Bootstrapped 50% (loading_descriptors): ..." line).
        Callbacks run on the event loop and must not block; exceptions they raise are
        ignored.  A warm start from the directory cache may skip steps.
        """
        self._dirmgr.listeners.append(callback)

    def remove_bootstrap_listener(self, callback: Callable[[BootstrapStatus], None]) -> None:
        """Undo `add_bootstrap_listener` (no error if ``callback`` was not added)."""
        if callback in self._dirmgr.listeners:
            self._dirmgr.listeners.remove(callback)

    async def bootstrap(self, timeout: float | None = None) -> None:
        """Fetch and verify the directory, then build a first circuit.

        Idempotent and safe to call concurrently: every caller waits for the same
        bootstrap.  ``timeout`` (default: the client's ``bootstrap_timeout``, None =
        wait as long as it takes) bounds this wait only; the bootstrap goes on in the
        background, so calling again waits for it some more.

        Raises `BootstrapError` (timeout, unusable DataDirectory, no circuit could be
        built) or `ClientClosedError`.
        """
        self._check_open()
        if self._bootstrap_task is None:
            self._bootstrap_task = asyncio.ensure_future(self._bootstrap())
        task = self._bootstrap_task
        limit = self.bootstrap_timeout if timeout is None else timeout
        try:
            await self._closed_aware(asyncio.wait_for(asyncio.shield(task), limit))
        except TimeoutError:
            if task.done():
                raise
            raise BootstrapError(self._stuck_message(limit)) from None

    def _stuck_message(self, limit: float | None) -> str:
        status = self._dirmgr.status
        message = f"bootstrap did not finish within {limit:g} s: stuck at {status}"
        bridges = self._dirmgr.bridges
        if status.percent < 75 and bridges is not None:  # BootstrapPhase.ENOUGH_DIRINFO
            message += " (are the bridges reachable?)"
        elif status.percent < 75:
            message += " (are the directory authorities or fallbacks reachable?)"
        problem = getattr(self._dirmgr.state, "last_error", None)
        if bridges is not None and not bridges.relays and bridges.last_error:
            problem = bridges.last_error
        if problem:
            message += f"; last problem: {problem}"
        return message

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the TorClient is closed")

    async def _closed_aware(self, aw: Awaitable[T]) -> T:
        """Await ``aw``; failures caused by `aclose` become `ClientClosedError`."""
        try:
            return await aw
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                raise ClientClosedError("the TorClient was closed during the call") from None
            raise
        except TorError as exc:
            if self._closed and not isinstance(exc, ClientClosedError):
                message = f"the TorClient was closed during the call ({exc})"
                raise ClientClosedError(message) from exc
            raise

    async def _bootstrap(self) -> None:
        # A broken crypto library must give one clear error here, naming it, not an
        # exception deep inside a circuit (DependencyError).
        from puretor.selftest import verify_dependencies

        verify_dependencies()
        if self.config.hidden_services and not self._configured_services:
            self._load_configured_services()
        await self._dirmgr.bootstrap()
        self._guards = self._dirmgr.load_guards()
        self._guard_states = self._guards.guard_states()
        self._dirmgr.guards_listener = self._report_guards
        cfg = self.config
        self._circmgr = CircuitManager(
            self._chanmgr,
            lambda: self._dirmgr.require_netdir(),
            self._guards,
            enforce_distinct_subnets=cfg.distinct_subnets,
            max_dirtiness=cfg.max_circuit_dirtiness,
            on_guards_changed=self._dirmgr.save_guards_soon,
            # C tor: CircuitBuildTimeout is where learning starts; with learning off,
            # the only value used.
            build_timeout=cfg.circuit_build_timeout or 60.0,
            learn_build_timeout=cfg.learn_circuit_build_timeout,
            conflux=cfg.conflux_enabled,
            conflux_ux=UX_BY_NAME[cfg.conflux_client_ux],
            families=self._dirmgr.families,
            use_entry_guards=cfg.use_entry_guards,
            max_pending=cfg.max_client_circuits_pending,
            new_circuit_period=cfg.new_circuit_period,
        )
        if cfg.use_bridges and len(cfg.bridges) == 1:
            self._circmgr.one_bridge_transport = cfg.bridges[0].transport or "vanilla"
        self._dirmgr.guards = self._guards
        self._dirmgr.circmgr = self._circmgr
        if cfg.learn_circuit_build_timeout:
            self._dirmgr.load_build_times(self._circmgr.cbt)
            self._circmgr.on_build_times_changed = self._save_build_times_soon
        # Refresh from now on: a cached consensus that is only "reasonably live" gets
        # replaced while the first circuit is being built (C tor does the same).
        self._dirmgr.start_refresh()
        await self._dirmgr.finish_bootstrap(self._circmgr)
        self._circmgr.start()
        if self.config.hidden_services:
            # Started from a task of their own: they wait for the bootstrap to finish.
            self._configured_task = asyncio.ensure_future(self._start_configured_services())

    async def aclose(self) -> None:
        """Close every circuit and channel and save state; idempotent.

        Calls still waiting (bootstrap, stream attempts) fail with `ClientClosedError`;
        open streams end.  Later calls raise `ClientClosedError`.
        """
        if self._closed:
            return
        self._closed = True
        self._observer.close()
        if self._save_cbt_handle is not None:
            self._save_cbt_handle.cancel()
        await _cancel_until_done(self._bootstrap_task)
        await _cancel_until_done(self._configured_task)
        if self._onion is not None:
            await self._onion.close()
        for runner in list(self._services):
            await runner.close()
        self._services.clear()
        if self._circmgr is not None:
            if self.config.learn_circuit_build_timeout:
                self._dirmgr.save_build_times(self._circmgr.cbt)
            await self._circmgr.close()
        # DirManager.close() cancels its refresher once and then awaits it; make sure that
        # cancellation sticks (see _cancel_until_done), or close() would wait forever.
        await _cancel_until_done(self._dirmgr._refresh_task)
        await self._dirmgr.close()
        self._chanmgr.close_all()
        if self._pts is not None:
            await self._pts.close()

    def _save_build_times_soon(self) -> None:
        """The learned build timeout changed: keep it for the next start (at most every
        30 s; `aclose` saves the last state)."""
        if self._save_cbt_handle is None and self._circmgr is not None:
            cbt = self._circmgr.cbt

            def save() -> None:
                self._save_cbt_handle = None
                self._dirmgr.save_build_times(cbt)

            self._save_cbt_handle = asyncio.get_running_loop().call_later(30.0, save)

    async def new_identity(self) -> None:
        """Like C tor's NEWNYM: circuits used so far take no new streams.

        New streams get new circuits (so, likely, other exits); open streams go on.
        """
        self._check_open()
        if self._circmgr is not None:
            self._circmgr.new_identity()

    def isolated(self, name: str = "") -> IsolationToken:
        """A new `IsolationToken`: ``isolation=tor.isolated()`` gets circuits of its own."""
        return IsolationToken(name)

    # -- streams -----------------------------------------------------------------

    async def create_connection(
        self,
        protocol_factory: Callable[[], P],
        host: str,
        port: int,
        *,
        isolation: Hashable | None = None,
        timeout: float = STREAM_TOTAL_TIMEOUT,
        source: str | None = None,
        circuit: int | None = None,
    ) -> tuple[asyncio.Transport, P]:
        """Open a stream to ``host:port`` through Tor; like `loop.create_connection`.

        ``host`` is a name (resolved by the exit, never locally), an IPv4/IPv6 address
        or a ``.onion`` address.  Returns ``(transport, protocol)``; the transport's
        ``get_extra_info`` knows ``"peername"`` (the address the exit connected to, when
        it said), ``"exit"`` (the exit relay: ``.nickname``, ``.rsa_id``...) and
        ``"circuit"``.  Streams with the same ``isolation`` key may share circuits;
        different keys never do.  ``circuit``: the id of a circuit from `build_circuit`
        (or a `CircuitEvent`) to use, and no other.  ``source``: the application's
        address, for `StreamEvent`.  Exit-side refusals for policy, timeouts or a dead
        circuit are retried on other circuits within ``timeout`` seconds.

        Raises `ConfigError` (bad port), `StreamRefused` (``.reason``: RESOLVEFAILED for
        an unresolvable or invalid name, CONNECTREFUSED/MISC for a closed port, EXITPOLICY
        when every exit tried refuses the destination), `StreamTimeout` (nothing within
        ``timeout``), `OnionError` (``.socks_code``), `NoPathError`/`CircuitError` (no
        circuit), `BootstrapError` or `ClientClosedError`.
        """
        self._check_open()
        host = _check_target(self.address_map.rewrite(host), port)
        if self.config.reject_internal_addresses and (
            is_internal_address(host) or is_local_hostname(host)
        ):
            # ClientRejectInternalAddresses: an exit would connect to *its* local network.
            if _private_address_warnings.allow(time.monotonic()):
                log.warning(
                    "Rejecting request for anonymous connection to private address %s.",
                    "[scrubbed]" if self.config.safe_logging else host,
                )
            raise StreamRefused(
                "refusing to ask an exit for an internal address (ClientRejectInternalAddresses)",
                EndReason.TORPROTOCOL,
            )
        await self.bootstrap()
        stream_id = new_stream_id()
        self._observer.stream(
            stream_id, "NEW", circuit_id=0, target=f"{host}:{port}", source_address=source
        )
        if host.endswith(".onion"):
            from puretor.hs.address import parse_onion_address

            connect: Awaitable[tuple[asyncio.Transport, P]]
            try:
                parse_onion_address(host)  # raises OnionError(0xF6) when malformed
            except TorError:
                self._stream_failed(stream_id, "TORPROTOCOL")
                raise
            connect = self._onion_connection(
                protocol_factory, host, port, isolation, timeout, stream_id
            )
        elif circuit is not None or self.config.leave_streams_unattached:
            connect = asyncio.wait_for(
                self._connect_on(protocol_factory, host, port, circuit, stream_id, isolation),
                timeout,
            )
        else:
            key = _DEFAULT_ISOLATION if isolation is None else isolation
            connect = asyncio.wait_for(
                self._connect_with_retries(protocol_factory, host, port, key, stream_id), timeout
            )
        try:
            return await self._closed_aware(connect)
        except TimeoutError as exc:
            self._stream_failed(stream_id, "TIMEOUT")
            if isinstance(exc, TorError):  # StreamTimeout, CircuitBuildTimeout
                raise
            raise StreamTimeout(f"could not open the stream within {timeout:g} s") from None
        except BaseException as exc:
            reason = getattr(exc, "reason", None)
            self._stream_failed(stream_id, EndReason.describe(reason) if reason else "MISC")
            raise

    async def _connect_on(
        self,
        protocol_factory: Callable[[], P],
        host: str,
        port: int,
        circuit: int | None,
        stream_id: int,
        isolation: Hashable | None,
    ) -> tuple[asyncio.Transport, P]:
        """A stream on the circuit ``circuit``, or - with __LeaveStreamsUnattached - on the
        one `attach_stream` names for it (0 there: our own choice, as usual)."""
        if circuit is None:
            waiter = asyncio.get_running_loop().create_future()
            self._awaiting_attach[stream_id] = waiter
            try:
                circuit = await waiter
            finally:
                self._awaiting_attach.pop(stream_id, None)
            host, port = self._redirects.pop(stream_id, (host, port))
            if circuit == 0:
                key = _DEFAULT_ISOLATION if isolation is None else isolation
                return await self._connect_with_retries(
                    protocol_factory, host, port, key, stream_id
                )
        handle = self._handles().get(circuit)
        if handle is None or not handle.is_open:
            raise CircuitError(f"no open circuit {circuit} to attach the stream to")
        transport = await self._attach(handle, host, port, stream_id=stream_id)
        protocol = protocol_factory()
        transport.attach(protocol)
        return transport, protocol

    def attach_stream(self, stream_id: int, circuit_id: int) -> None:
        """Put a stream that waits for it (``__LeaveStreamsUnattached 1``) on the circuit
        ``circuit_id`` (0: let the client choose).  Raises `KeyError` for a stream that is
        not waiting, `ValueError` for a circuit that is not open."""
        waiter = self._awaiting_attach.get(stream_id)
        if waiter is None or waiter.done():
            raise KeyError(stream_id)
        if circuit_id:
            handle = self._handles().get(circuit_id)
            if handle is None or not handle.is_open:
                raise ValueError(f"circuit {circuit_id} is not open")
        waiter.set_result(circuit_id)

    def redirect_stream(self, stream_id: int, host: str, port: int | None = None) -> None:
        """Send a stream that waits for `attach_stream` to ``host`` (and ``port``) instead
        of where its application asked (the control port's REDIRECTSTREAM).  Raises
        `KeyError` for a stream that is not waiting, `ConfigError` for a bad target."""
        waiter = self._awaiting_attach.get(stream_id)
        if waiter is None or waiter.done():
            raise KeyError(stream_id)
        last = self._observer.streams.get(stream_id)
        old_port = int(last.target.rpartition(":")[2]) if last is not None else 0
        port = old_port if port is None else port
        host = _check_target(self.address_map.rewrite(host), port)
        self._redirects[stream_id] = (host, port)
        if last is not None:
            self._observer.streams[stream_id] = dataclasses.replace(last, target=f"{host}:{port}")

    def set_circuit_purpose(self, circuit_id: int, purpose: str) -> None:
        """``"controller"`` or ``"general"`` for a circuit built by `launch_circuit` or
        `build_circuit` (the control port's SETCIRCUITPURPOSE; either way such a circuit
        carries only the streams put on it).  Raises `KeyError` for an unknown circuit,
        `ValueError` for another purpose."""
        if purpose not in ("controller", "general"):
            raise ValueError(f"unknown purpose {purpose!r}")
        handle = self._circmgr.explicit.get(circuit_id) if self._circmgr is not None else None
        if handle is None or not handle.is_open:
            raise KeyError(circuit_id)
        old, handle.purpose = handle.purpose, purpose
        if old != purpose:
            handle.report("PURPOSE_CHANGED", old_purpose=old)

    def launch_extension(self, circuit_id: int, path: list[str]) -> asyncio.Task[None]:
        """Start adding the relays in ``path`` to the end of a circuit built by
        `launch_circuit` or `build_circuit` (the control port's EXTENDCIRCUIT of an
        existing circuit); its `CircuitEvent`s say how it goes (EXTENDED, then BUILT, or
        FAILED).  Raises `KeyError` for an unknown circuit, `NoPathError` for an unknown
        relay, at once."""
        self._check_open()
        handle = self._circmgr.explicit.get(circuit_id) if self._circmgr is not None else None
        if handle is None or not handle.is_open:
            raise KeyError(circuit_id)
        assert self._circmgr is not None
        relays = [self._relay_named(name) for name in path]
        task = asyncio.ensure_future(self._circmgr.extend_path(handle, relays))
        task.add_done_callback(functools.partial(self._extension_done, circuit_id))
        return task

    async def extend_circuit(self, circuit_id: int, path: list[str]) -> None:
        """`launch_extension`, waiting until the new hops are in (`CircuitError` if not)."""
        await self._closed_aware(self.launch_extension(circuit_id, path))

    @staticmethod
    def _extension_done(circuit_id: int, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.info("extending circuit %d failed: %s", circuit_id, task.exception())

    def drop_guards(self) -> None:
        """Forget every entry guard and choose new ones (the control port's DROPGUARDS;
        C tor's advice: only when you know why)."""
        if self._guards is not None:
            # Every guard is dropped, even one sampled again at once (a small network).
            for rsa_id, (nickname, _state) in self._guard_states.items():
                self._observer.emit(GuardEvent(RelayRef(rsa_id.hex().upper(), nickname), "DROPPED"))
            self._guard_states = {}
            self._guards.drop_all(time.time())
            self._dirmgr.save_guards_soon()

    def close_stream(self, stream_id: int) -> bool:
        """End the open stream with this `StreamEvent.id`; False if there is none."""
        transport = self._transports.get(stream_id)
        if transport is None:
            return False
        transport.abort()
        return True

    def launch_circuit(self, path: list[str], *, purpose: str = "general") -> int:
        """Start building a circuit through ``path`` (fingerprints, ``$FP~nick`` or
        nicknames, first hop first) and return its id at once; its `CircuitEvent`s say
        how it goes.  ``purpose``: ``"general"`` or ``"controller"`` (as the events show
        it; either way the circuit carries only the streams put on it).  Raises
        `NoPathError` for a relay not in the consensus."""
        if purpose not in ("general", "controller"):
            raise ValueError(f"unknown purpose {purpose!r}")
        self._check_open()
        relays = [self._relay_named(name) for name in path]
        if self._circmgr is None:
            raise NoPathError("not bootstrapped yet")
        circuit_id = new_circuit_id()
        task = asyncio.ensure_future(self._circmgr.build_path(relays, circuit_id, purpose))
        task.add_done_callback(functools.partial(self._explicit_build_done, circuit_id))
        return circuit_id

    async def build_circuit(self, path: list[str]) -> int:
        """Build a circuit through ``path`` (as `launch_circuit`) and wait until it is
        open; returns its id, for ``create_connection(..., circuit=id)``."""
        await self.bootstrap()
        relays = [self._relay_named(name) for name in path]
        assert self._circmgr is not None
        handle = await self._closed_aware(self._circmgr.build_path(relays))
        return handle.id

    def _explicit_build_done(self, circuit_id: int, task: asyncio.Task[TunnelHandle]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.info("circuit %d through the given path failed: %s", circuit_id, exc)
            if circuit_id not in self._observer.circuits:  # failed before it had a channel
                failed = CircuitEvent(circuit_id, "FAILED", reason="CONNECTFAILED")
                self._observer.emit(failed)
                self._observer.emit(dataclasses.replace(failed, status="CLOSED"))

    def _relay_named(self, name: str) -> Relay:
        """A relay by ``$FP``, ``$FP~nick``, ``$FP=nick``, ``FP`` or nickname."""
        key = name.lstrip("$").replace("=", "~").split("~")[0]
        for relay in self.relays():
            if relay.fingerprint == key.upper() or (
                not name.startswith("$") and relay.nickname == name
            ):
                if not relay.has_md:
                    raise NoPathError(f"no microdescriptor for {name} yet")
                return relay
        raise NoPathError(f"no relay {name!r} in the consensus")

    def _stream_failed(self, stream_id: int, reason: str) -> None:
        last = self._observer.streams.get(stream_id)
        if last is not None:
            failed = dataclasses.replace(last, status="FAILED", reason=reason)
            self._observer.emit(failed)
            self._observer.emit(dataclasses.replace(failed, status="CLOSED"))

    def _client_auth_keys(self) -> Any:
        from puretor.aio.hsclient import ClientAuthKeys

        if self._client_auth is None:
            self._client_auth = ClientAuthKeys(self.config)
        return self._client_auth

    def _onion_client(self) -> Any:
        from puretor.aio.hsclient import OnionClient

        assert self._circmgr is not None
        if self._onion is None:
            self._onion = OnionClient(
                self.config,
                self._dirmgr,
                self._circmgr,
                auth_keys=self._client_auth_keys(),
                emit=self._observer.emit,
            )
        return self._onion

    # -- onion services: descriptors and client authorization -------------------------

    async def fetch_onion_descriptor(self, address: str, servers: list[str] | None = None) -> str:
        """Fetch an onion service's descriptor from its HSDirs now, ignoring the cache
        (C tor's HSFETCH), and return it as the HSDir sent it.

        ``servers`` (relay fingerprints) asks each of those HSDirs instead of the
        responsible ones in turn.  Reports an `OnionDescriptorEvent` per request and
        answer.  Raises `OnionError` if no HSDir gave a valid descriptor, `NoPathError`
        for an unknown server."""
        await self.bootstrap()
        relays = [self._relay_named(name) for name in servers] if servers else None
        return str(await self._closed_aware(self._onion_client().fetch_descriptor(address, relays)))

    def add_onion_client_auth(
        self,
        address: str,
        private_key: bytes,
        *,
        client_name: str | None = None,
        permanent: bool = False,
    ) -> str:
        """Use the x25519 ``private_key`` (32 bytes) to decrypt ``address``'s descriptor
        from now on (C tor's ONION_CLIENT_AUTH_ADD).

        Returns ``"added"``, ``"replaced"`` (there was a key for the service) or
        ``"decrypted"`` (a descriptor fetched earlier without the right key now decrypts
        with it).  ``permanent`` also writes the key to ``ClientOnionAuthDir`` as
        ``<address>.auth_private`` (ConfigError if that option is not set or the file
        cannot be written; nothing changes then).  ``address`` may end in ``.onion``."""
        from puretor.hs.address import encode_onion_address, parse_onion_address

        identity = parse_onion_address(address)
        if len(private_key) != 32 or not any(private_key):
            raise ValueError("an x25519 private key is 32 bytes, not all zero")
        label = encode_onion_address(identity).removesuffix(".onion")
        auth = OnionClientAuth(label, bytes(private_key), client_name, permanent)
        replaced = self._client_auth_keys().add(identity, auth)
        if self._onion is not None and self._onion.new_client_auth_key(identity):
            return "decrypted"
        return "replaced" if replaced else "added"

    def remove_onion_client_auth(self, address: str) -> bool:
        """Forget ``address``'s client authorization key (ONION_CLIENT_AUTH_REMOVE), and
        its file in ``ClientOnionAuthDir`` if it is permanent; False if there was none."""
        from puretor.hs.address import parse_onion_address

        identity = parse_onion_address(address)
        removed = self._client_auth_keys().remove(identity) is not None
        if removed and self._onion is not None:
            self._onion.forget_descriptor(identity)
        return removed

    def onion_client_auths(self) -> list[OnionClientAuth]:
        """Every client authorization key: ``ClientOnionAuthDir``'s and those added."""
        return sorted(self._client_auth_keys().all(), key=lambda a: a.address)

    def onion_service(
        self,
        ports: Mapping[int, int | tuple[str, int] | str | os.PathLike[str]],
        *,
        key: bytes | str | os.PathLike[str] | None = None,
        num_intro_points: int = 3,
        max_streams: int = 0,
        max_streams_close_circuit: bool = False,
        authorized_clients: Sequence[bytes | str] = (),
    ) -> OnionService:
        """Host a v3 onion service while the returned context is open::

            async with tor.onion_service({80: ("127.0.0.1", 8080)}) as svc:
                print(svc.address)
                await svc.wait_published()

        ``ports`` maps each virtual port to the local target its streams are forwarded
        to: a port on 127.0.0.1, ``(host, port)``, or ``"unix:/path"`` for a Unix socket.
        ``key``: None for a new (ephemeral) key; a directory (C tor's HiddenServiceDir
        layout: its key is read, or made and saved there, with ``hostname``); or the
        contents of an ``hs_ed25519_secret_key`` file (`OnionService.secret_key`).
        ``max_streams``: streams per rendezvous circuit (0: no limit); past it the stream
        is refused, or with ``max_streams_close_circuit`` the whole circuit closed.
        ``authorized_clients``: client authorization - only clients with one of these
        x25519 keys can reach the service (raw 32-byte public keys, or the base32 text
        of C tor's ``descriptor:x25519:<key>`` lines); a directory ``key`` adds those of
        its ``authorized_clients/*.auth`` files.
        """
        from puretor.aio.hsservice import load_authorized_clients, load_service_dir
        from puretor.hs.clientauth import parse_authorized_client
        from puretor.hs.service import ServiceIdentity

        auth: list[bytes] = []
        for client_key in authorized_clients:
            if isinstance(client_key, str):
                text = client_key if ":" in client_key else f"descriptor:x25519:{client_key}"
                auth.append(parse_authorized_client(text, source="authorized_clients"))
            elif len(client_key) == 32:
                auth.append(bytes(client_key))
            else:
                raise ConfigError("an authorized client key is 32 bytes")

        if key is None:
            identity = ServiceIdentity.generate()
        elif isinstance(key, bytes | bytearray):
            try:
                identity = ServiceIdentity.from_secret_key_file(bytes(key))
            except ValueError as exc:
                raise ConfigError(f"onion service key: {exc}") from None
        else:
            identity = load_service_dir(Path(key))
            auth += load_authorized_clients(Path(key))
        targets = {int(port): _service_target(target) for port, target in ports.items()}
        for port in targets:
            if not 0 < port < 65536:
                raise ConfigError(f"onion service port {port} is out of range")
        return OnionService(
            self,
            identity,
            targets,
            num_intro_points=num_intro_points,
            max_streams=max_streams,
            max_streams_close_circuit=max_streams_close_circuit,
            auth_clients=tuple(auth),
        )

    async def _start_service(self, service: OnionService) -> Any:
        from puretor.aio.hsservice import OnionServiceRunner

        self._check_open()
        await self.bootstrap()
        assert self._circmgr is not None
        runner = OnionServiceRunner(
            service._identity,
            service._ports,
            self._dirmgr,
            self._circmgr,
            testing_network=self.config.testing_tor_network,
            num_intro_points=service._num_intro_points,
            max_streams=service._max_streams,
            max_streams_close_circuit=service._max_streams_close_circuit,
            auth_clients=service._auth_clients,
            observer=self._observer,
        )
        runner.start()
        self._services.add(runner)
        return runner

    async def _stop_service(self, runner: Any) -> None:
        self._services.discard(runner)
        await runner.close()

    def _load_configured_services(self) -> None:
        """The HiddenServiceDir services of the configuration (the daemon's torrc): their
        keys are read or made now, so that a bad directory stops the start-up."""
        for hs in self.config.hidden_services:
            service = self.onion_service(
                dict(hs.ports),
                key=hs.directory,
                num_intro_points=hs.num_intro_points,
                max_streams=hs.max_streams,
                max_streams_close_circuit=hs.max_streams_close_circuit,
            )
            log.info("onion service from HiddenServiceDir %s", hs.directory)
            self._configured_services.append(service)

    async def _start_configured_services(self) -> None:
        for service in self._configured_services:
            await service.start()

    @property
    def onion_services(self) -> list[OnionService]:
        """The services configured with HiddenServiceDir (started after the bootstrap)."""
        return list(self._configured_services)

    async def _onion_connection(
        self,
        protocol_factory: Callable[[], P],
        host: str,
        port: int,
        isolation: Hashable | None,
        timeout: float,
        stream_id: int = 0,
    ) -> tuple[asyncio.Transport, P]:
        onion = self._onion_client()
        key = _DEFAULT_ISOLATION if isolation is None else isolation

        async def connect() -> tuple[asyncio.Transport, P]:
            last: TorError | None = None
            for _attempt in range(2):
                handle = await onion.rendezvous_circuit(host, key)
                try:
                    transport = await self._attach(
                        handle, "", port, target=f"{host}:{port}", stream_id=stream_id
                    )
                except (StreamRefused, StreamTimeout) as exc:
                    # A stale rendezvous circuit: drop it and make a new one once.
                    last = exc
                    handle.close()
                    if isinstance(exc, StreamRefused) and exc.reason not in _RETRY_REASONS:
                        raise
                    continue
                protocol = protocol_factory()
                transport.attach(protocol)
                return transport, protocol
            assert last is not None
            raise last

        return await asyncio.wait_for(connect(), timeout)

    def _rejects_answer(self, address: str) -> bool:
        return self.config.dns_reject_internal_addresses and is_internal_address(address)

    async def _connect_with_retries(
        self,
        protocol_factory: Callable[[], P],
        host: str,
        port: int,
        key: Hashable,
        stream_id: int = 0,
    ) -> tuple[asyncio.Transport, P]:
        assert self._circmgr is not None
        circmgr = self._circmgr
        excluded: set[bytes] = set()
        last: TorError | None = None
        elsewhere = 0
        for attempt in range(STREAM_ATTEMPTS):
            self._check_open()
            try:
                handle = await circmgr.get_exit_circuit(port, key, exclude=frozenset(excluded))
            except NoPathError:
                if excluded and isinstance(last, StreamRefused):
                    # Every exit that allows the port refused this destination: report the
                    # exits' answer (e.g. EXITPOLICY), not "no path".
                    raise StreamRefused(
                        f"every exit tried ({len(excluded)}) refused the destination ({last})",
                        last.reason,
                    ) from None
                raise
            try:
                transport = await self._attach(
                    handle, host, port, attempt=attempt, stream_id=stream_id
                )
            except StreamRefused as exc:
                last = exc
                self._stream_detached(stream_id, exc.reason)
                if exc.reason in _RETRY_ELSEWHERE_REASONS and elsewhere < _MAX_RETRY_ELSEWHERE:
                    elsewhere += 1
                    excluded.add(circmgr.exit_of(handle))
                    continue
                if exc.reason not in _RETRY_REASONS:
                    raise
                if exc.reason == EndReason.EXITPOLICY:
                    excluded.add(circmgr.exit_of(handle))
                continue
            except StreamTimeout as exc:
                last = exc
                self._stream_detached(stream_id, EndReason.TIMEOUT)
                circmgr.circuit_failed(handle)
                continue
            protocol = protocol_factory()
            transport.attach(protocol)
            return transport, protocol
        assert last is not None
        raise last

    def _stream_detached(self, stream_id: int, reason: int) -> None:
        if stream_id in self._observer.streams:
            self._observer.stream(
                stream_id, "DETACHED", circuit_id=0, reason=EndReason.describe(reason)
            )

    def _stream_timeout(self, attempt: int) -> float:
        """How long to wait for the exit's answer before trying another circuit: C tor's
        compute_retry_timeout (10 s for the first two tries, then 15 s), unless
        CircuitStreamTimeout says otherwise."""
        if self.config.circuit_stream_timeout:
            return self.config.circuit_stream_timeout
        return 10.0 if attempt < 2 else 15.0

    async def _attach(
        self,
        handle: TunnelHandle,
        host: str,
        port: int,
        *,
        target: str | None = None,
        attempt: int = 0,
        stream_id: int = 0,
    ) -> TorStreamTransport:
        loop = asyncio.get_running_loop()
        reactor = handle.reactor
        transport = TorStreamTransport(loop, target or f"{host}:{port}", reactor)
        flags = 0
        if _is_ipv6(host):
            flags = 0x1 | 0x2  # IPv6 okay, IPv4 not okay (tor-spec §6.2)
        timeout = self._stream_timeout(attempt)
        try:
            # The core ends the stream with TIMEOUT if the exit has not answered by then.
            transport.stream = handle.tunnel.open_stream(
                transport, host, port, flags, deadline=time.time() + timeout
            )
        except RuntimeError as exc:  # circuit closed under us
            raise StreamRefused(f"circuit unusable: {exc}", EndReason.DESTROY) from exc
        reactor.run()
        if stream_id in self._observer.streams:
            self._observer.stream(stream_id, "SENTCONNECT", circuit_id=handle.id)
        try:
            connected = await asyncio.shield(transport.connected)
        except StreamTimeout as exc:
            raise StreamTimeout(f"no answer from the exit within {timeout:g}s") from exc
        if connected.address and self._rejects_answer(str(connected.address)):
            # ClientDNSRejectInternalAddresses: an exit that says it connected to an
            # internal address is lying or misconfigured (C tor closes the stream too).
            transport.stream.abort()
            reactor.kick()
            raise StreamRefused(
                "the exit claims the destination is an internal address", EndReason.TORPROTOCOL
            )
        transport._extra.update(
            peername=(connected.address, port) if connected.address else None,
            circuit=handle,
            exit=handle.path[-1].target,
        )
        self._streams_opened += 1
        if stream_id in self._observer.streams:
            self._observer.stream(stream_id, "SUCCEEDED", circuit_id=handle.id)
            transport.stream_event_id = stream_id
            self._transports[stream_id] = transport
        return transport

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        isolation: Hashable | None = None,
        ssl: _ssl.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        limit: int = 2**16,
        timeout: float = STREAM_TOTAL_TIMEOUT,
        circuit: int | None = None,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Like `asyncio.open_connection`, through Tor; returns ``(reader, writer)``.

        ``ssl=True`` (system CAs) or an `ssl.SSLContext` runs TLS end to end to the
        destination, verifying the certificate against ``server_hostname`` (default:
        ``host``); a failed verification raises `ssl.SSLCertVerificationError` and
        closes the stream.  ``timeout`` bounds opening the stream plus the TLS handshake
        (`StreamTimeout`).  Other errors are those of `create_connection`.
        ``writer.get_extra_info`` answers ``"exit"``, ``"peername"``, ``"circuit"`` and,
        with TLS, ``"ssl_object"``/``"peercert"``/``"cipher"``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        transport, protocol = await self.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
            host,
            port,
            isolation=isolation,
            timeout=timeout,
            circuit=circuit,
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        if ssl:
            from puretor.aio.tls import start_tls

            ctx = ssl if isinstance(ssl, _ssl.SSLContext) else _ssl.create_default_context()
            remaining = max(deadline - loop.time(), 0.001)
            try:
                return await start_tls(
                    reader, writer, ctx, server_hostname or host, limit=limit, timeout=remaining
                )
            except TimeoutError as exc:
                if isinstance(exc, TorError):
                    raise
                raise StreamTimeout(f"TLS handshake not done within {timeout:g} s") from None
        return reader, writer

    async def resolve(self, hostname: str, *, isolation: Hashable | None = None) -> list[str]:
        """Addresses for ``hostname`` (IPv4/IPv6 strings), resolved by an exit (RELAY_RESOLVE).

        Nothing is resolved locally.  An unknown name raises `StreamRefused` with
        reason RESOLVEFAILED; no answer at all `CircuitError`.
        """
        self._check_open()
        hostname = self.address_map.rewrite(hostname)
        if _ip_literal(hostname):  # MapAddress to an address: the answer is the map's
            return [hostname]
        answers = await self._closed_aware(self._resolve(hostname, isolation))
        out = [str(a.value) for a in answers if a.type in (4, 6)]
        if not out:
            raise StreamRefused(f"exit could not resolve {hostname}", EndReason.RESOLVEFAILED)
        return out

    async def resolve_ptr(self, address: str, *, isolation: Hashable | None = None) -> list[str]:
        """Host names for an IP address (reverse lookup at the exit).

        Raises `ValueError` for something that is not an IP address and `StreamRefused`
        (RESOLVEFAILED) when the exit knows no name.
        """
        self._check_open()
        ip = ipaddress.ip_address(address)
        answers = await self._closed_aware(self._resolve(ip.reverse_pointer, isolation))
        out = [str(a.value) for a in answers if a.type == 0]
        if not out:
            raise StreamRefused(f"exit has no name for {address}", EndReason.RESOLVEFAILED)
        return out

    async def resolve_with_ttl(
        self, name: str, *, reverse: bool = False, isolation: Hashable | None = None
    ) -> list[tuple[str, int]]:
        """`resolve` (or, with ``reverse``, `resolve_ptr`) with each answer's TTL in
        seconds, as the exit sent it (for a DNS server's answers).

        A failure raises `StreamRefused` (RESOLVEFAILED); its ``transient`` attribute is
        true when the exit called the failure transient (DNS: SERVFAIL, not NXDOMAIN).
        A reverse lookup of an automapped virtual address answers from the map.
        """
        self._check_open()
        if reverse:
            ip = ipaddress.ip_address(name)
            mapped = self.address_map.lookup(ip.compressed)
            if mapped is not None:
                return [(mapped, MAPPED_ANSWER_TTL)]
            wanted: tuple[int, ...] = (0,)
            name = ip.reverse_pointer
        else:
            name = self.address_map.rewrite(name)
            if _ip_literal(name):
                return [(name, MAPPED_ANSWER_TTL)]
            wanted = (4, 6)
        answers = await self._closed_aware(self._resolve(name, isolation))
        out = [(str(a.value), int(a.ttl)) for a in answers if a.type in wanted]
        if not out:
            raise StreamRefused(f"exit gave no answer for {name}", EndReason.RESOLVEFAILED)
        return out

    def automap_address(self, name: str, version: int = 4) -> str:
        """A virtual address (IPv4 or IPv6, from VirtualAddrNetworkIPv4/IPv6) that
        stands for ``name`` in later connections (C tor's AutomapHostsOnResolve)."""
        return self.address_map.automap(name, version)

    async def _resolve(self, name: str, isolation: Hashable | None) -> list[Any]:
        if _check_target(name, 1).endswith(".onion"):
            # C tor never asks an exit about an onion address: the exit would learn it.
            raise StreamRefused("onion addresses cannot be resolved", EndReason.RESOLVEFAILED)
        await self.bootstrap()
        assert self._circmgr is not None
        key = _DEFAULT_ISOLATION if isolation is None else isolation
        last: Exception | None = None
        for attempt in range(3):
            self._check_open()
            handle = await self._circmgr.get_exit_circuit(80, key)
            transport = TorStreamTransport(asyncio.get_running_loop(), name, handle.reactor)
            try:
                deadline = time.time() + self._stream_timeout(attempt)
                transport.stream = handle.tunnel.resolve(transport, name, deadline=deadline)
                handle.reactor.run()
                answers = await asyncio.shield(transport.resolved)
            except (TimeoutError, RuntimeError, StreamRefused) as exc:
                last = exc
                self._circmgr.circuit_failed(handle)
                continue
            # ClientDNSRejectInternalAddresses: drop answers that point inside (C tor).
            kept = [
                a for a in answers if a.type not in (4, 6) or not self._rejects_answer(str(a.value))
            ]
            if answers and not kept:
                raise StreamRefused(
                    "the exit resolved the name only to internal addresses",
                    EndReason.RESOLVEFAILED,
                )
            answers = kept
            errors = [a for a in answers if a.type in (0xF0, 0xF1)]
            if errors and len(errors) == len(answers):
                transient = errors[0].type == 0xF0
                failed = StreamRefused(
                    f"exit could not resolve the name ({'transient' if transient else 'permanent'} error)",
                    EndReason.RESOLVEFAILED,
                )
                failed.transient = transient
                raise failed
            return answers
        raise CircuitError(f"resolve failed: {last}")

    # -- events ------------------------------------------------------------------------

    def _sample_streams(self) -> list[StreamBandwidthEvent]:
        events = []
        for stream_id, transport in list(self._transports.items()):
            read, written = transport.bytes_read, transport.bytes_written
            last_read, last_written = transport.bytes_sampled
            if (read, written) != (last_read, last_written):
                transport.bytes_sampled = (read, written)
                events.append(
                    StreamBandwidthEvent(stream_id, read - last_read, written - last_written)
                )
        return events

    def _report_guards(self) -> None:
        """GuardEvents for what changed since the last look (C tor's GUARD events)."""
        if self._guards is None:
            return
        now_states = self._guards.guard_states()
        before = self._guard_states
        self._guard_states = now_states
        for rsa_id, (nickname, state) in now_states.items():
            relay = RelayRef(rsa_id.hex().upper(), nickname)
            old = before.get(rsa_id)
            if old is None:
                self._observer.emit(GuardEvent(relay, "NEW"))
            elif old[1] == state:
                continue
            elif old[1] == "BAD":
                self._observer.emit(GuardEvent(relay, "GOOD"))
            if state != "UNKNOWN":
                self._observer.emit(GuardEvent(relay, state))
        for rsa_id, (nickname, _state) in before.items():
            if rsa_id not in now_states:
                self._observer.emit(GuardEvent(RelayRef(rsa_id.hex().upper(), nickname), "DROPPED"))

    def _sample_circuits(self) -> list[CircuitBandwidthEvent]:
        events = []
        for handle in self._handles().values():
            counts = (handle.tunnel.cells_received, handle.tunnel.cells_sent)
            last = handle.cells_sampled
            if counts != last:
                handle.cells_sampled = counts
                events.append(
                    CircuitBandwidthEvent(
                        handle.id,
                        (counts[0] - last[0]) * CELL_LEN,
                        (counts[1] - last[1]) * CELL_LEN,
                    )
                )
        return events

    def _report_bootstrap(self, status: BootstrapStatus) -> None:
        self._observer.emit(BootstrapEvent(status.percent, status.tag, status.summary))

    def add_event_listener(self, callback: Callable[[ClientEvent], None], *kinds: type) -> None:
        """Call ``callback(event)`` for every event of the given types (all if none given).

        The types are `CircuitEvent`, `StreamEvent`, `ChannelEvent`, `BandwidthEvent`,
        `StreamBandwidthEvent` and `CircuitBandwidthEvent` (once a second while such a
        listener exists), `BootstrapEvent`, `GuardEvent`, `NetworkLivenessEvent`,
        `BuildTimeoutEvent`, `NewConsensusEvent`, `GeneralStatusEvent`,
        `OnionDescriptorEvent` (descriptor fetches, and an onion service's descriptor
        uploads).  Callbacks run on the event loop and must not block;
        exceptions they raise are logged.
        """
        self._observer.add_listener(callback, tuple(kinds))

    def remove_event_listener(self, callback: Callable[[ClientEvent], None]) -> None:
        """Undo `add_event_listener` (no error if ``callback`` was not added)."""
        self._observer.remove_listener(callback)

    async def events(self, *kinds: type, buffer: int = 1000) -> AsyncIterator[ClientEvent]:
        """``async for event in tor.events(CircuitEvent, StreamEvent): ...``

        Events of the given types (all if none given) from now on.  If the loop body
        falls more than ``buffer`` events behind, the oldest are dropped.
        """
        queue: collections.deque[ClientEvent] = collections.deque(maxlen=buffer)
        wake = asyncio.Event()

        def listener(event: ClientEvent) -> None:
            queue.append(event)
            wake.set()

        self.add_event_listener(listener, *kinds)
        try:
            while True:
                while queue:
                    yield queue.popleft()
                wake.clear()
                await wake.wait()
        finally:
            self.remove_event_listener(listener)

    def circuit_status(self) -> list[CircuitEvent]:
        """Every circuit being built or open, as its latest `CircuitEvent` (oldest first)."""
        return sorted(self._observer.circuits.values(), key=lambda e: e.id)

    def stream_status(self) -> list[StreamEvent]:
        """Every stream not yet closed, as its latest `StreamEvent`."""
        return sorted(self._observer.streams.values(), key=lambda e: e.id)

    def channel_status(self) -> list[ChannelEvent]:
        """Every relay connection being opened or open, as its latest `ChannelEvent`."""
        return sorted(self._observer.channels.values(), key=lambda e: e.id)

    @property
    def traffic(self) -> tuple[int, int]:
        """(bytes read, bytes written) on relay connections since the client started."""
        return self._observer.bytes_read, self._observer.bytes_written

    def close_circuit(self, circuit_id: int) -> bool:
        """Close the circuit with this `CircuitEvent.id` (its streams end); False if unknown."""
        handle = self._handles().get(circuit_id)
        if handle is None:
            return False
        handle.close()
        return True

    def _handles(self) -> dict[int, TunnelHandle]:
        cm = self._circmgr
        if cm is None:
            return {}
        handles = {s.circuit.id: s.circuit for s in cm.pool.slots if s.circuit is not None}
        handles.update(cm.explicit)
        return handles

    def relays(self) -> list[Relay]:
        """The relays of the current consensus (with their microdescriptors when known);
        [] before the first consensus."""
        state = self._dirmgr.state
        netdir = state.netdir(time.time()) if state is not None else None
        return list(netdir.relays) if netdir is not None else []

    def microdescriptor(self, relay: str) -> str | None:
        """The microdescriptor text of ``relay`` (fingerprint, ``$FP~nick`` or nickname),
        or None when the relay or its microdescriptor is unknown."""
        try:
            found = self._relay_named(relay)
        except NoPathError:
            return None
        state = self._dirmgr.state
        md = state.microdescs.get(found.md_digest) if state is not None else None
        raw = getattr(md, "raw", b"")
        return raw.decode("ascii", "replace") if raw else None

    def consensus_valid_after(self) -> float | None:
        """When the current consensus became valid (a `time.time()` timestamp), or None."""
        state = self._dirmgr.state
        netdir = state.netdir(time.time()) if state is not None else None
        return netdir.valid_after.timestamp() if netdir is not None else None

    def entry_guards(self) -> list[tuple[RelayRef, str]]:
        """The primary entry guards and whether each is "up", "down" or "unknown"."""
        if self._guards is None:
            return []
        return [
            (RelayRef(rsa_id.hex().upper(), nickname), state)
            for rsa_id, nickname, state in self._guards.primary_guard_states()
        ]

    # -- introspection -------------------------------------------------------------

    @property
    def circuits(self) -> list[TunnelHandle]:
        """The open exit circuits (for introspection; their API is not stable)."""
        return self._circmgr.open_circuits if self._circmgr is not None else []

    def stats(self) -> dict[str, Any]:
        """Counters: ``channels_opened``, ``circuits_built``, ``circuit_build_failures``,
        ``open_circuits`` (a conflux set counts once), ``conflux_sets_linked``,
        ``conflux_failures``, ``streams_opened`` (connected streams, onion ones
        included), and ``time`` (a `time.time()` timestamp).

        Also (for a metrics exporter): ``circuit_build_failures_by_reason`` ({"timeout",
        "channel", "circuit": n}), ``circuit_build_timeout`` (seconds, as learned),
        ``conflux_sets_open``, ``congestion_windows`` (the last hop's window in cells of
        each open circuit with congestion control), ``guards`` ({"sampled", "confirmed",
        "primary", "unreachable": n}), ``consensus_valid_after`` (a timestamp, or None)
        and ``bootstrap_percent``.
        The queued cell data against MaxMemInQueues: ``queued_bytes`` (now),
        ``queued_bytes_peak``, ``max_mem_in_queues`` (the limit in bytes), ``oom_events``
        (times it was reached), ``oom_tunnels_closed`` and ``oom_bytes_removed``."""
        cm = self._circmgr
        open_circuits = self.circuits
        windows = [
            circuit.last_hop.cc.cwnd
            for handle in open_circuits
            for circuit in handle.tunnel.circuits
            if circuit.last_hop.cc is not None
        ]
        guards = self._guards
        now = time.time()
        guard_counts = {"sampled": 0, "confirmed": 0, "primary": 0, "unreachable": 0}
        if guards is not None and guards.netdir is not None:
            sampled = guards.sampled_guards()
            guard_counts = {
                "sampled": len(sampled),
                "confirmed": len(guards.confirmed_guards()),
                "primary": len(guards.primary_guards(now)),
                "unreachable": sum(1 for g in sampled if guards.reachability(g) is Reachable.NO),
            }
        state = self._dirmgr.state
        consensus = state.consensus if state is not None else None
        return {
            "channels_opened": self._chanmgr.connects,
            "streams_opened": self._streams_opened,
            "circuits_built": cm.circuits_built if cm else 0,
            "circuit_build_failures": cm.build_failures if cm else 0,
            "circuit_build_failures_by_reason": dict(cm.build_failures_by_reason) if cm else {},
            "circuit_build_timeout": (
                (cm.cbt.timeout() if cm.learn_build_timeout else cm.build_timeout) if cm else None
            ),
            "open_circuits": len(open_circuits),
            "conflux_sets_linked": cm.conflux_sets_linked if cm else 0,
            "conflux_failures": cm.conflux_failures if cm else 0,
            "conflux_sets_open": sum(1 for h in open_circuits if h.conflux_legs),
            "congestion_windows": windows,
            "guards": guard_counts,
            "consensus_valid_after": consensus.lifetime[0] if consensus is not None else None,
            "bootstrap_percent": self.bootstrap_status.percent,
            "time": now,
            **self._chanmgr.queue_budget.stats(),
        }


class OnionService:
    """An onion service hosted by a `TorClient` (see `TorClient.onion_service`).

    ``async with`` starts it (introduction points, then the descriptors) and stops it;
    ``start()``/``stop()`` do the same.  `address` is known at once; `wait_published`
    returns once the descriptors are stored on the HSDirs, when clients can reach it.
    """

    def __init__(
        self,
        client: TorClient,
        identity: Any,
        ports: dict[int, Any],
        *,
        num_intro_points: int,
        max_streams: int,
        max_streams_close_circuit: bool,
        auth_clients: tuple[bytes, ...] = (),
    ) -> None:
        self._client = client
        self._auth_clients = auth_clients
        self._identity = identity
        self._ports = ports
        self._num_intro_points = num_intro_points
        self._max_streams = max_streams
        self._max_streams_close_circuit = max_streams_close_circuit
        self._runner: Any = None

    @property
    def address(self) -> str:
        """The ``….onion`` address (56 base32 characters + ``.onion``)."""
        return str(self._identity.address)

    @property
    def secret_key(self) -> bytes:
        """The key as the contents of C tor's ``hs_ed25519_secret_key`` file: pass it
        back as ``key=`` to serve the same address again."""
        return bytes(self._identity.secret_key_file())

    @property
    def ports(self) -> dict[int, tuple[str, int] | Path]:
        return dict(self._ports)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: introductions, rejected and replayed INTRODUCE2s, streams, uploads."""
        if self._runner is None:
            return {}
        return dataclasses.asdict(self._runner.stats)

    @property
    def is_published(self) -> bool:
        return self._runner is not None and self._runner.published.is_set()

    async def start(self) -> OnionService:
        if self._runner is None:
            self._runner = await self._client._start_service(self)
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await self._client._stop_service(runner)

    async def wait_published(self, timeout: float | None = None) -> None:
        """Wait until every descriptor is on at least one responsible HSDir
        (`TimeoutError` after ``timeout`` seconds)."""
        if self._runner is None:
            raise RuntimeError("the onion service is not started")
        await asyncio.wait_for(self._runner.published.wait(), timeout)

    async def __aenter__(self) -> OnionService:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _service_target(target: Any) -> tuple[str, int] | Path:
    """``8080``, ``("127.0.0.1", 8080)``, ``"unix:/path"`` or a path -> a local target."""
    if isinstance(target, bool):
        raise ConfigError(f"bad onion service target {target!r}")
    if isinstance(target, int):
        return ("127.0.0.1", target)
    if isinstance(target, tuple) and len(target) == 2:
        return (str(target[0]), int(target[1]))
    if isinstance(target, str) and target.startswith("unix:"):
        return Path(target[5:])
    if isinstance(target, os.PathLike):
        return Path(target)
    raise ConfigError(f"bad onion service target {target!r}")


def _max_mem_in_queues(configured: int | None) -> int:
    """MaxMemInQueues in bytes, from the torrc value or the machine's memory (as C tor)."""
    try:
        ram: int | None = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = None
    limit, warning = choose_limit(configured, ram)
    if warning:
        log.warning("%s", warning)
    return limit


async def _cancel_until_done(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has finished, cancelling again if needed.

    On Python 3.11 `asyncio.wait_for` swallows a cancellation that arrives in the same
    loop step as its inner task finishing (CPython gh-86296, fixed in 3.12), so a
    single ``cancel()`` can leave a background loop running.
    """
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.5)


def _ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_target(host: str, port: int) -> str:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"invalid port {port!r}")
    host = host.strip().rstrip(".").lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or len(host) > 255 or any(c in host for c in "\0\r\n :/") and not _is_ipv6(host):
        raise StreamRefused(f"invalid destination host {host[:64]!r}", EndReason.RESOLVEFAILED)
    return host


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _outbound_proxy(cfg: TorConfig) -> OutboundProxy | None:
    if cfg.socks5_proxy is not None:
        return OutboundProxy(
            "socks5",
            cfg.socks5_proxy,
            username=cfg.socks5_proxy_username,
            password=cfg.socks5_proxy_password,
        )
    if cfg.socks4_proxy is not None:
        return OutboundProxy("socks4", cfg.socks4_proxy)
    if cfg.https_proxy is not None:
        return OutboundProxy("https", cfg.https_proxy, authenticator=cfg.https_proxy_authenticator)
    return None
