"""Building circuits and opening streams on them, over the sans-I/O core."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from puretor.aio.channel import ChannelManager, ChannelTarget
from puretor.errors import CircuitBuildTimeout, CircuitDestroyed, CircuitError, StreamRefused
from puretor.proto.cells import DestroyReason
from puretor.proto.circuit import (
    Circuit,
    CircuitClosed,
    CircuitEvent,
    CircuitState,
    ControlCell,
    HopAdded,
)
from puretor.proto.congestion import CCParams
from puretor.proto.relaymsg import LinkSpecifier, ls_ed_id, ls_ipv4, ls_rsa_id


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
    ) -> HopSpec:
        specs = [ls_ipv4(address, or_port), ls_rsa_id(rsa_id)]
        if ed_id is not None:
            specs.append(ls_ed_id(ed_id))
        return cls(ChannelTarget(address, or_port, rsa_id, ed_id, nickname), ntor_key, tuple(specs))


@dataclass
class CircuitHandle:
    """An asyncio view of one circuit: awaits hops, routes control cells."""

    circuit: Circuit
    path: tuple[HopSpec, ...]
    created_at: float = field(default_factory=time.monotonic)
    dirty_since: float | None = None  # first stream attached (MaxCircuitDirtiness)
    isolation: object = None
    purpose: str = "general"
    _hop_waiter: asyncio.Future[int] | None = None
    _control: asyncio.Queue[ControlCell] | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.circuit.on_event = self._on_event

    @property
    def is_open(self) -> bool:
        return self.circuit.state is CircuitState.OPEN

    def _on_event(self, event: CircuitEvent) -> None:
        if isinstance(event, HopAdded):
            if self._hop_waiter is not None and not self._hop_waiter.done():
                self._hop_waiter.set_result(event.hops)
        elif isinstance(event, CircuitClosed):
            self.closed.set()
            if self._hop_waiter is not None and not self._hop_waiter.done():
                self._hop_waiter.set_exception(
                    CircuitDestroyed(
                        f"circuit closed while building: {event.message} "
                        f"({DestroyReason.describe(event.reason)})",
                        event.reason,
                    )
                )
        elif isinstance(event, ControlCell):
            if self._control is None:
                self._control = asyncio.Queue()
            self._control.put_nowait(event)

    async def _wait_hop(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._hop_waiter = loop.create_future()
        try:
            await asyncio.wait_for(self._hop_waiter, timeout)
        finally:
            self._hop_waiter = None

    async def extend(
        self, hop: HopSpec, timeout: float, *, congestion_control: CCParams | None = None
    ) -> None:
        """EXTEND2 to ``hop``; ``congestion_control``: negotiate it (ntor v3) with this hop."""
        if hop.ntor_key is None:
            raise CircuitError(f"no ntor key for {hop.target.describe()}")
        self.circuit.send_extend2(
            list(hop.link_specifiers),
            hop.target.rsa_id,
            hop.ntor_key,
            ed_id=hop.target.ed_id,
            congestion_control=congestion_control if hop.target.ed_id is not None else None,
        )
        await self._wait_hop(timeout)
        self.path = self.path + (hop,)

    @property
    def congestion_controlled(self) -> bool:
        """Congestion control (prop 324) was negotiated with the last hop."""
        return self.circuit.cc is not None

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
            reason = self.circuit.closed_reason
            raise CircuitDestroyed(
                f"circuit closed: {reason.message if reason else '?'}",
                reason.reason if reason else 0,
            )
        raise CircuitBuildTimeout("timed out waiting for a reply on the circuit")

    def close(self) -> None:
        self.circuit.destroy(0, "closed by client")


async def build_circuit(
    chanmgr: ChannelManager,
    path: Sequence[HopSpec],
    *,
    timeout: float = 60.0,
    sendme_accept_min_version: int = 0,
    circwindow: int = 1000,
    congestion_control: CCParams | None = None,
) -> CircuitHandle:
    """Build a circuit hop by hop (CREATE2/CREATE_FAST, then EXTEND2s).

    ``congestion_control``: ask the last hop for it (ntor v3, as C tor does with exits
    that support it); if it declines, the circuit keeps the fixed windows.  Ignored for
    one-hop circuits and for a last hop without a known Ed25519 identity.
    """
    deadline = time.monotonic() + timeout
    first = path[0]
    channel = await asyncio.wait_for(chanmgr.get_channel(first.target), timeout)
    circ = channel.new_circuit(
        sendme_accept_min_version=sendme_accept_min_version, circwindow=circwindow
    )
    handle = CircuitHandle(circ, (first,))
    try:
        if first.ntor_key is None:
            circ.send_create_fast()
        else:
            circ.send_create2(first.target.rsa_id, first.ntor_key)
        await handle._wait_hop(max(0.1, deadline - time.monotonic()))
        for i, hop in enumerate(path[1:], start=2):
            await handle.extend(
                hop,
                max(0.1, deadline - time.monotonic()),
                congestion_control=congestion_control if i == len(path) else None,
            )
    except TimeoutError as exc:
        failed = circ.hop_count  # the hop we were waiting for
        circ.destroy(0, "build timed out")
        names = " → ".join(h.target.nickname or h.target.address for h in path)
        err = CircuitBuildTimeout(f"circuit build through {names} timed out after {timeout:.0f}s")
        err.failed_hop = failed  # type: ignore[attr-defined]
        raise err from exc
    except CircuitError as exc:
        # Tell the caller which hop could not be reached, so a retry avoids it.
        exc.failed_hop = circ.hop_count  # type: ignore[attr-defined]
        circ.destroy(0, "build failed")
        raise
    except BaseException:
        circ.destroy(0, "build failed")
        raise
    circ.mark_open()
    return handle


def end_reason_error(reason: int, target: str, message: str) -> StreamRefused:
    from puretor.proto.relaymsg import EndReason

    return StreamRefused(f"{message}: {target} ({EndReason.describe(reason)})", reason)
