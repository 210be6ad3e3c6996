"""Building tunnels (circuits, and conflux sets of them) over the sans-I/O core.

A `TunnelHandle` is the asyncio side of one `Tunnel`: it is the tunnel's ``owner``, so
the `Reactor` hands it the tunnel's events (a hop added, the tunnel closed, a control
cell for onion-service code, a conflux leg linked), which resolve the futures the
coroutines here await.  Timeouts are the core's deadlines (a circuit still building at
its `build_deadline` is destroyed), not asyncio timers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.aio.observe import CircuitEvent, RelayRef, new_circuit_id
from puretor.aio.reactor import Reactor
from puretor.errors import (
    CircuitBuildTimeout,
    CircuitDestroyed,
    CircuitError,
    NoPathError,
    StreamRefused,
)
from puretor.path.reachable import AddressFamilies
from puretor.proto.cells import DestroyReason
from puretor.proto.circuit import CircuitState
from puretor.proto.conflux import ConfluxSet, DesiredUx
from puretor.proto.congestion import CCParams
from puretor.proto.events import (
    ConfluxLinked,
    ControlCell,
    HopAdded,
    StreamIncoming,
    TunnelClosed,
    TunnelEvent,
)
from puretor.proto.relaymsg import (
    LinkSpecifier,
    ls_ed_id,
    ls_ipv4,
    ls_ipv6,
    ls_rsa_id,
)
from puretor.proto.tunnel import Tunnel


@dataclass(frozen=True, slots=True)
class HopSpec:
    """What the circuit layer needs to know about a hop (no directory types)."""

    target: ChannelTarget
    ntor_key: bytes | None  # None only for a CREATE_FAST first hop
    link_specifiers: tuple[LinkSpecifier, ...] = ()

    @classmethod
    def for_relay(
        cls,
        address: str,
        or_port: int,
        rsa_id: bytes,
        ed_id: bytes | None,
        ntor_key: bytes | None,
        nickname: str = "",
        *,
        ipv6: tuple[str, int] | None = None,
        connect_to: tuple[str, int] | None = None,
    ) -> HopSpec:
        """``connect_to``: the ORPort to connect to if this is a first hop (ClientUseIPv6
        may pick the IPv6 one); the link specifiers name every address, as C tor's do."""
        specs = [ls_ipv4(address, or_port), ls_rsa_id(rsa_id)]
        if ed_id is not None:
            specs.append(ls_ed_id(ed_id))
        if ipv6 is not None:
            specs.append(ls_ipv6(*ipv6))
        host, port = connect_to or (address, or_port)
        return cls(ChannelTarget(host, port, rsa_id, ed_id, nickname), ntor_key, tuple(specs))


class RelayLike(Protocol):
    """What `hop_for` reads of a relay (a `puretor.dir.netdir.Relay` has it all)."""

    @property
    def address(self) -> str: ...
    @property
    def or_port(self) -> int: ...
    @property
    def rsa_id(self) -> bytes: ...
    @property
    def ed_id(self) -> bytes | None: ...
    @property
    def ntor_key(self) -> bytes | None: ...
    @property
    def nickname(self) -> str: ...
    @property
    def ipv6(self) -> tuple[str, int] | None: ...


def hop_for(relay: RelayLike, families: AddressFamilies | None = None) -> HopSpec:
    """The hop for ``relay``; ``families`` (ClientUseIPv4/6) picks the address of a first
    hop, which must have one it allows (guards are chosen so: see `GuardManager`)."""
    connect_to = None
    if families is not None:
        connect_to = families.or_address((relay.address, relay.or_port), relay.ipv6)
        if connect_to is None:
            raise NoPathError(f"no allowed address for {relay.nickname} (ClientUseIPv4/IPv6)")
    return HopSpec.for_relay(
        relay.address,
        relay.or_port,
        relay.rsa_id,
        relay.ed_id,
        relay.ntor_key,
        relay.nickname,
        ipv6=relay.ipv6,
        connect_to=connect_to,
    )


@dataclass(eq=False)
class TunnelHandle:
    """An asyncio view of one tunnel: awaits hops and linking, routes control cells."""

    tunnel: Tunnel
    path: tuple[HopSpec, ...]
    reactor: Reactor
    created_at: float = field(default_factory=time.monotonic)
    dirty_since: float | None = None  # first stream attached (MaxCircuitDirtiness)
    isolation: object = None
    purpose: str = "general"
    _hop_waiter: asyncio.Future[int] | None = None
    _control: asyncio.Queue[ControlCell] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # A conflux set's handle lists the handles its legs were built with (itself first).
    conflux_legs: tuple[TunnelHandle, ...] = ()
    _link_waiter: asyncio.Future[int] | None = None
    id: int = field(default_factory=new_circuit_id)  # client-wide (control port CircuitID)
    build_flags: tuple[str, ...] = ()  # the control port's BUILD_FLAGS, when not the default
    built: bool = False  # reported BUILT (later EXTENDED reports do not undo it)
    cells_sampled: tuple[int, int] = (0, 0)  # (received, sent) at the last CIRC_BW sample
    # An onion service's rendezvous circuit: who takes the streams the client opens.
    incoming: Callable[[StreamIncoming], None] | None = None

    def __post_init__(self) -> None:
        self.tunnel.owner = self

    @property
    def relays(self) -> tuple[RelayRef, ...]:
        """The hops built so far, as fingerprint and nickname."""
        return tuple(RelayRef(h.target.rsa_id.hex().upper(), h.target.nickname) for h in self.path)

    def report(
        self, status: str, reason: str | None = None, *, old_purpose: str | None = None
    ) -> None:
        """Tell the observer this circuit's new state (CIRC); FAILED is followed by CLOSED.
        PURPOSE_CHANGED (with ``old_purpose``) is a minor event (CIRC_MINOR)."""
        observer = self.reactor.observer
        if status != "LAUNCHED" and self.id not in observer.circuits:
            return  # never reported, or already closed
        event = CircuitEvent(
            self.id,
            status,
            self.relays,
            _PURPOSES.get(self.purpose, "GENERAL"),
            self.build_flags
            or (("NEED_CAPACITY",) if self.purpose == "general" else ("IS_INTERNAL",)),
            time.time() - (time.monotonic() - self.created_at),
            reason,
            old_purpose=_PURPOSES.get(old_purpose or "", old_purpose),
        )
        observer.emit(event)
        if status == "BUILT":
            self.built = True
        if status == "FAILED":
            observer.emit(replace(event, status="CLOSED"))

    @property
    def is_open(self) -> bool:
        return self.tunnel.state is CircuitState.OPEN and self.tunnel.closed_reason is None

    def handle_event(self, event: TunnelEvent) -> None:
        if isinstance(event, HopAdded):
            if self._hop_waiter is not None and not self._hop_waiter.done():
                self._hop_waiter.set_result(event.hops)
        elif isinstance(event, TunnelClosed):
            self.closed.set()
            reason = DestroyReason.describe(event.reason).upper()
            reason = "DESTROYED" if event.remote else reason
            if self.built:  # (while building, build_circuit reports FAILED, then CLOSED)
                self.report("CLOSED", reason)
            # A conflux set's other legs belong to this tunnel now: they close with it.
            for leg in self.conflux_legs[1:]:
                leg.report("CLOSED", reason)
            for waiter in (self._hop_waiter, self._link_waiter):
                if waiter is not None and not waiter.done():
                    waiter.set_exception(_closed_error(event))
        elif isinstance(event, ConfluxLinked):
            if self._link_waiter is not None and not self._link_waiter.done():
                self._link_waiter.set_result(event.rtt_usec)
        elif isinstance(event, StreamIncoming):
            if self.incoming is not None:
                self.incoming(event)
            else:
                event.stream.abort()
                self.reactor.kick()
        elif isinstance(event, ControlCell):
            if self._control is None:
                self._control = asyncio.Queue()
            self._control.put_nowait(event)

    async def _wait_hop(self) -> None:
        self._hop_waiter = asyncio.get_running_loop().create_future()
        self.reactor.run()  # send what the caller just queued
        try:
            await self._hop_waiter
        finally:
            self._hop_waiter = None

    async def extend(self, hop: HopSpec, *, congestion_control: CCParams | None = None) -> None:
        """EXTEND2 to ``hop``; ``congestion_control``: negotiate it (ntor v3) with this hop.
        The tunnel's build deadline bounds the wait."""
        if hop.ntor_key is None:
            raise CircuitError(f"no ntor key for {hop.target.describe()}")
        self.tunnel.send_extend2(
            list(hop.link_specifiers),
            hop.target.rsa_id,
            hop.ntor_key,
            ed_id=hop.target.ed_id,
            congestion_control=congestion_control if hop.target.ed_id is not None else None,
        )
        await self._wait_hop()
        self.path = self.path + (hop,)
        self.report("EXTENDED")

    def send_relay(self, command: int, stream_id: int, data: bytes = b"") -> None:
        """A relay message (onion-service cells) at the last hop."""
        self.tunnel.send_relay(command, stream_id, data)
        self.reactor.kick()

    @property
    def congestion_controlled(self) -> bool:
        """Congestion control (prop 324) was negotiated with the last hop."""
        return self.tunnel.cc is not None

    async def next_control_cell(self, timeout: float) -> ControlCell:
        if self._control is None:
            self._control = asyncio.Queue()
        get = asyncio.ensure_future(self._control.get())
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            done, _ = await asyncio.wait(
                {get, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closed.cancel()
            if not get.done():
                get.cancel()
        if get in done:
            return get.result()
        if closed in done:
            reason = self.tunnel.closed_reason
            raise CircuitDestroyed(
                f"circuit closed: {reason.message if reason else '?'}",
                reason.reason if reason else 0,
            )
        raise CircuitBuildTimeout("timed out waiting for a reply on the circuit")

    @property
    def conflux(self) -> ConfluxSet | None:
        """The conflux set this handle carries streams over, if it is one."""
        return self.tunnel.conflux

    def close(self) -> None:
        # (On a conflux set, closing the tunnel closes every leg.)
        self.tunnel.destroy(0, "closed by client")
        self.reactor.kick()


def _closed_error(event: TunnelClosed) -> CircuitError:
    if event.reason == DestroyReason.TIMEOUT and not event.remote:
        return CircuitBuildTimeout(f"circuit {event.message}")
    return CircuitDestroyed(
        f"circuit closed while building: {event.message} ({DestroyReason.describe(event.reason)})",
        event.reason,
    )


async def link_conflux(
    legs: Sequence[TunnelHandle],
    *,
    timeout: float,
    desired_ux: int = DesiredUx.HIGH_THROUGHPUT,
) -> TunnelHandle:
    """Link built tunnels to one exit into one conflux tunnel (prop 329 §2.2).

    Every leg must have congestion control with its exit.  LINK goes out on each; once
    each has answered LINKED (and got LINKED_ACK) the set is finalized and one handle -
    that of the leg that linked fastest - carries the joined tunnel.  If a leg does not
    link within ``timeout`` (C tor uses the circuit build timeout), every leg is closed
    and `CircuitError` raised: an unlinked leg cannot be used on its own.
    """
    if not legs:
        raise ValueError("no legs to link")
    loop = asyncio.get_running_loop()
    cfx = ConfluxSet(desired_ux=desired_ux)
    reactor = legs[0].reactor
    try:
        for handle in legs:
            if not handle.is_open or not handle.congestion_controlled:
                raise CircuitError("a conflux leg needs an open circuit with congestion control")
            handle._link_waiter = loop.create_future()
            handle.tunnel.start_conflux(cfx)
        reactor.run()
        waiters = [h._link_waiter for h in legs if h._link_waiter is not None]
        await asyncio.wait_for(asyncio.gather(*waiters), timeout)
    except (TimeoutError, CircuitError, RuntimeError) as exc:
        for handle in legs:
            handle.tunnel.destroy(0, "conflux linking failed")
        reactor.kick()
        if isinstance(exc, TimeoutError):
            raise CircuitBuildTimeout(f"conflux legs did not link within {timeout:.1f}s") from exc
        raise CircuitError(f"conflux linking failed: {exc}") from exc
    finally:
        for handle in legs:
            waiter, handle._link_waiter = handle._link_waiter, None
            if waiter is not None:
                if waiter.done():
                    waiter.cancelled() or waiter.exception()  # retrieved: no warning
                else:
                    waiter.cancel()
    joined = Tunnel.join(cfx, [h.tunnel for h in legs])
    home = next(h for h in legs if h.tunnel is joined)
    home.conflux_legs = (home, *(h for h in legs if h is not home))
    for handle in legs:
        if handle is not home:
            handle.closed.set()  # its circuit now belongs to the joined tunnel
    return home


async def build_circuit(
    chanmgr: ChannelManager,
    path: Sequence[HopSpec],
    *,
    timeout: float = 60.0,
    sendme_accept_min_version: int = 0,
    circwindow: int = 1000,
    congestion_control: CCParams | None = None,
    circuit_id: int | None = None,
    purpose: str = "general",
) -> TunnelHandle:
    """Build a tunnel of one circuit hop by hop (CREATE2/CREATE_FAST, then EXTEND2s).

    ``circuit_id``: the client-wide id to give it (a controller was told it already).

    ``congestion_control``: ask the last hop for it (ntor v3, as C tor does with exits
    that support it); if it declines, the circuit keeps the fixed windows.  Ignored for
    one-hop circuits and for a last hop without a known Ed25519 identity.
    """
    started = time.time()
    first = path[0]
    channel = await asyncio.wait_for(chanmgr.get_channel(first.target), timeout)
    tunnel = channel.new_tunnel(
        sendme_accept_min_version=sendme_accept_min_version, circwindow=circwindow
    )
    # The core destroys the circuit if it is still building then (reason TIMEOUT).
    tunnel.build_deadline = started + timeout
    handle = TunnelHandle(tunnel, (first,), chanmgr.reactor, purpose=purpose)
    if circuit_id is not None:
        handle.id = circuit_id
    if len(path) == 1:  # a directory fetch's BEGIN_DIR circuit (C tor's flags for it)
        handle.build_flags = ("ONEHOP_TUNNEL", "IS_INTERNAL", "NEED_CAPACITY")
    handle.path = ()
    handle.report("LAUNCHED")
    handle.path = (first,)
    try:
        if first.ntor_key is None:
            tunnel.send_create_fast()
        else:
            tunnel.send_create2(first.target.rsa_id, first.ntor_key)
        await handle._wait_hop()
        handle.report("EXTENDED")
        for i, hop in enumerate(path[1:], start=2):
            await handle.extend(
                hop, congestion_control=congestion_control if i == len(path) else None
            )
    except CircuitError as exc:
        handle.report("FAILED", "TIMEOUT" if isinstance(exc, CircuitBuildTimeout) else "DESTROYED")
        # Tell the caller which hop could not be reached, so a retry avoids it.
        exc.failed_hop = tunnel.hop_count  # type: ignore[attr-defined]
        if isinstance(exc, CircuitBuildTimeout):
            names = " → ".join(h.target.nickname or h.target.address for h in path)
            err = CircuitBuildTimeout(
                f"circuit build through {names} timed out after {timeout:.0f}s"
            )
            err.failed_hop = exc.failed_hop  # type: ignore[attr-defined]
            raise err from exc
        tunnel.destroy(0, "build failed")
        chanmgr.reactor.kick()
        raise
    except BaseException:
        handle.report("FAILED", "REQUESTED")
        tunnel.destroy(0, "build failed")
        chanmgr.reactor.kick()
        raise
    tunnel.mark_open()
    handle.report("BUILT")
    return handle


# TunnelHandle.purpose -> the control port's circuit purposes.
_PURPOSES = {
    "general": "GENERAL",
    "rendezvous": "HS_CLIENT_REND",
    "controller": "CONTROLLER",
    "hs_service_intro": "HS_SERVICE_INTRO",
    "hs_service_rend": "HS_SERVICE_REND",
}


def end_reason_error(reason: int, target: str, message: str) -> StreamRefused:
    from puretor.proto.relaymsg import EndReason

    return StreamRefused(f"{message}: {target} ({EndReason.describe(reason)})", reason)
