"""The circuit manager: builds the circuits the policy asks for, hands them to streams.

The decisions are sans-I/O code that takes the time: which circuit a stream may use,
which to build ahead of need and which to close (`puretor.path.pool.CircuitPool`), when
to hedge a slow build, when to retry conflux, and whether a circuit through a lesser
guard may be used yet (`GuardWaits`, guard-spec §4.9); path choice is `puretor.path`'s.
Here are the tasks, the waiting and the clocks.  A circuit carries streams of one
isolation key only: the key of its first stream (C tor's rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable

from puretor.aio.channel import ChannelManager
from puretor.aio.circuit import HopSpec, TunnelHandle, build_circuit, hop_for, link_conflux
from puretor.aio.observe import BuildTimeoutEvent
from puretor.dir.netdir import NetDir, Relay
from puretor.errors import ChannelError, CircuitBuildTimeout, CircuitError, NoPathError, TorError
from puretor.path import choose_first_hops
from puretor.path.cbt import INITIAL_TIMEOUT, BuildTimeout
from puretor.path.guards import GuardManager, GuardUsage
from puretor.path.pool import (
    MAX_HEDGES,
    CircuitPool,
    ConfluxBackoff,
    GuardWaits,
    Slot,
    SlotState,
    hedge_avoids,
    hedge_delay,
)
from puretor.path.reachable import AddressFamilies
from puretor.path.select import PathRequest, PathSelector, supports_conflux
from puretor.proto.conflux import DesiredUx
from puretor.proto.congestion import CCParams

log = logging.getLogger("puretor.circuit")

BUILD_ATTEMPTS = 4


def congestion_control_for(
    netdir: NetDir, last: Relay | None, *, internal: bool
) -> CCParams | None:
    """Whether (and with which parameters) to negotiate congestion control with ``last``.

    As C tor (circuit_pick_create_handshake, prop 324 §10): only on exit circuits, only
    with a relay whose ``pr`` has ``FlowCtrl=2`` and ``Relay=4`` (ntor v3), and only while
    the consensus ``cc_alg`` is not 0.  Onion-service/internal circuits keep fixed windows.
    """
    if internal or last is None or last.ed_id is None:
        return None
    if not (last.supports("FlowCtrl", 2) and last.supports("Relay", 4)):
        return None
    params = CCParams.from_consensus(netdir.param)
    return params if params.enabled else None


def conflux_prebuilt_sets(netdir: NetDir) -> int:
    """How many linked conflux sets to keep ready (C tor conflux_params_get_max_prebuilt):
    ``cfx_max_prebuilt_set``, only 1 while fewer than ``cfx_low_exit_threshold``/10000 of
    the exits (BadExits aside) can do conflux, none without such exits.  Whether to use
    conflux at all (``cfx_enabled``, or ConfluxEnabled over it) is `_conflux_wanted`'s."""
    exits = [r for r in netdir.relays if "Exit" in r.flags and "BadExit" not in r.flags]
    capable = sum(1 for r in exits if supports_conflux(r))
    if not capable:
        return 0
    threshold = netdir.param("cfx_low_exit_threshold", 6000, 0, 10000) / 10000
    if capable / len(exits) < threshold:
        return 1
    return netdir.param("cfx_max_prebuilt_set", 3, 0, 255)


class CircuitManager:
    def __init__(
        self,
        chanmgr: ChannelManager,
        netdir: Callable[[], NetDir],
        guards: GuardManager,
        *,
        enforce_distinct_subnets: bool = True,
        max_dirtiness: float = 600.0,
        build_timeout: float = 60.0,
        on_guards_changed: Callable[[], None] = lambda: None,
        congestion_control: bool | None = None,
        learn_build_timeout: bool = True,
        conflux: bool | None = None,
        conflux_ux: int = DesiredUx.HIGH_THROUGHPUT,
        families: AddressFamilies | None = None,
        use_entry_guards: bool = True,
        max_pending: int = 32,
        new_circuit_period: float = 30.0,
    ) -> None:
        self.chanmgr = chanmgr
        # First hops: ClientUseIPv4/IPv6 (which address) and UseEntryGuards (from the guard
        # manager, or a fresh Guard-flagged relay per circuit).
        self.families = families or AddressFamilies()
        self.use_entry_guards = use_entry_guards
        # Which circuit a stream uses, what to build ahead and what to close: the policy.
        # MaxClientCircuitsPending: a stream that needs another build waits for one.
        self.pool = CircuitPool(
            max_dirtiness=max_dirtiness, max_pending=max_pending, now=time.monotonic()
        )
        self.guard_waits = GuardWaits(guards)
        self._tasks: dict[Slot, asyncio.Task[TunnelHandle]] = {}
        self._build_finished: asyncio.Event | None = None
        self._guard_waiters: dict[TunnelHandle, asyncio.Future[None]] = {}
        # NewCircuitPeriod: how often idle circuits past MaxCircuitDirtiness are closed.
        self.new_circuit_period = new_circuit_period
        # Negotiate congestion control with exits that support it, as C tor does, while
        # the consensus cc_alg says so (congestion_control_for); False: never (tests).
        self.congestion_control = congestion_control is not False
        self._netdir = netdir
        self.guards = guards
        self._one_bridge_warned = False
        # With exactly one Bridge line: its transport ("vanilla" for none), for C tor's warning.
        self.one_bridge_transport: str | None = None
        self.enforce_distinct_subnets = enforce_distinct_subnets
        self.build_timeout = build_timeout
        self.on_guards_changed = on_guards_changed
        self._maintenance: asyncio.Task[None] | None = None
        self._selector_cache: PathSelector | None = None
        # Learned build timeout (path-spec §2.4), starting from `build_timeout` (C tor:
        # CircuitBuildTimeout is the initial value while LearnCircuitBuildTimeout is 1).
        self.cbt = BuildTimeout(
            initial_timeout=build_timeout, max_timeout=max(build_timeout, INITIAL_TIMEOUT)
        )
        self.learn_build_timeout = learn_build_timeout
        self.on_build_times_changed: Callable[[], None] | None = None  # persist them
        self.circuits_built = 0
        self.build_failures = 0
        self.build_failures_by_reason: Counter[str] = Counter()  # "timeout", "channel"...
        # Conflux (prop 329): keep linked sets ready for exit streams (None: as the
        # consensus says, cfx_enabled), asking the exit's scheduler for ``conflux_ux``.
        self.conflux = conflux
        self.conflux_ux = conflux_ux
        self.conflux_sets_linked = 0
        self.conflux_failures = 0
        self.conflux_backoff = ConfluxBackoff()
        self.explicit: dict[int, TunnelHandle] = {}  # circuits built through given paths

    # -- public ------------------------------------------------------------------

    def start(self) -> None:
        if self._maintenance is None:
            self._maintenance = asyncio.ensure_future(self._maintain())

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            self._maintenance = None
        for task in self._tasks.values():
            task.cancel()
        for handle in self.explicit.values():
            handle.close()
        for slot in list(self.pool.slots):
            if slot.circuit is not None:
                slot.circuit.close()
            self.pool.closed(slot)
        self._tasks.clear()

    def new_identity(self) -> None:
        """NEWNYM: no existing circuit takes new streams."""
        self.pool.new_identity()

    @property
    def max_pending(self) -> int:
        return self.pool.max_pending

    @property
    def pending_peak(self) -> int:
        return self.pool.pending_peak

    def pending_builds(self) -> int:
        """Exit circuits (or conflux sets) being built now (MaxClientCircuitsPending)."""
        return self.pool.pending_builds()

    async def get_exit_circuit(
        self, port: int, isolation: Hashable, *, exclude: frozenset[bytes] = frozenset()
    ) -> TunnelHandle:
        """An open circuit whose exit allows ``port``, usable under ``isolation``."""
        pool = self.pool
        pool.note_port(port, time.monotonic())
        slot = pool.find(port, isolation, time.monotonic(), exclude, _circuit_open)
        while slot is None and not pool.may_launch():
            await self._wait_for_a_build()
            slot = pool.find(port, isolation, time.monotonic(), exclude, _circuit_open)
        if slot is None:
            slot = self._launch(PathRequest(exit_port=port, exclude=exclude))
        if not slot.claimed:
            pool.claim(slot, isolation)
        handle, used = await self._wait_hedged(slot, PathRequest(exit_port=port, exclude=exclude))
        pool.used(used, time.monotonic())
        self._top_up_soon()
        return handle

    async def _wait_for_a_build(self) -> None:
        if self._build_finished is None:
            self._build_finished = asyncio.Event()
        await self._build_finished.wait()

    def _note_build_finished(self, _task: object) -> None:
        if self._build_finished is not None:
            self._build_finished.set()
            self._build_finished = None

    async def _wait_hedged(self, slot: Slot, req: PathRequest) -> tuple[TunnelHandle, Slot]:
        """Wait for ``slot``; each time the builds in progress outlast the expected build
        time (`hedge_delay`), launch another one that avoids their relays, and take
        whichever finishes first: a stuck relay then costs seconds, not the 60 s build
        timeout."""
        if slot.state is SlotState.OPEN:
            return slot.circuit, slot
        delay = hedge_delay(self.cbt)
        waiters = {asyncio.ensure_future(self._wait_slot(slot)): slot}
        last_error: BaseException | None = None
        hedges = 0
        try:
            while waiters:
                done, _ = await asyncio.wait(
                    waiters,
                    timeout=delay if hedges < MAX_HEDGES else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in done:
                    won = waiters.pop(waiter)
                    if waiter.exception() is None:
                        return waiter.result(), won
                    last_error = waiter.exception()
                if done and waiters:
                    continue
                if hedges >= MAX_HEDGES and not waiters:
                    break
                if (not done or not waiters) and self.pool.may_launch():
                    hedges += 1
                    stuck = hedge_avoids(waiters.values())
                    try:
                        backup = self._launch(dataclasses.replace(req, exclude=req.exclude | stuck))
                    except NoPathError:
                        backup = self._launch(req)
                    if slot.claimed:
                        self.pool.claim(backup, slot.isolation)
                    waiters[asyncio.ensure_future(self._wait_slot(backup))] = backup
        finally:
            for waiter in waiters:
                waiter.cancel()  # only the waiting: the other builds go on, as spares
        assert last_error is not None
        raise last_error

    async def build_internal_circuit(self, last: Relay | HopSpec | None = None) -> TunnelHandle:
        """A 3-hop circuit for onion-service/directory use, ending at ``last`` if given."""
        req = PathRequest(exit_port=None, internal=True)
        last_error: Exception | None = None
        for _ in range(BUILD_ATTEMPTS):
            selector = self._selector(self._netdir())
            hop = last if last is not None else selector.choose_last_hop_internal(req)
            try:
                return await self._build_through(selector, req, hop)
            except (TimeoutError, ChannelError, CircuitError) as exc:
                last_error = exc
                self._note_build_failure(exc)
        raise CircuitError(f"could not build an internal circuit: {last_error}")

    def current_build_timeout(self) -> float:
        """How long a circuit build may take now (learned, or CircuitBuildTimeout)."""
        return self.cbt.timeout() if self.learn_build_timeout else self.build_timeout

    def _note_build_failure(self, exc: BaseException) -> None:
        self.build_failures += 1
        if isinstance(exc, TimeoutError):
            reason = "timeout"
        elif isinstance(exc, ChannelError):
            reason = "channel"  # the first hop could not be reached
        else:
            reason = "circuit"  # refused or destroyed on the way
        self.build_failures_by_reason[reason] += 1

    async def build_path(
        self, relays: list[Relay], circuit_id: int | None = None, purpose: str = "general"
    ) -> TunnelHandle:
        """A circuit through exactly ``relays`` (a controller's or the application's
        choice), with congestion control at the last hop when it is an exit that can.
        Kept in `explicit` until it closes; the pool never hands it to other streams."""
        if not relays:
            raise NoPathError("an explicit path needs at least one relay")
        hops = [hop_for(relays[0], self.families), *(hop_for(r) for r in relays[1:])]
        cc = None
        if self.congestion_control and len(relays) > 1:
            cc = congestion_control_for(self._netdir(), relays[-1], internal=False)
        netdir = self._netdir()
        timeout = self.cbt.timeout() if self.learn_build_timeout else self.build_timeout
        handle = await build_circuit(
            self.chanmgr,
            hops,
            timeout=max(timeout, 30.0),
            sendme_accept_min_version=netdir.param("sendme_accept_min_version", 0, 0, 255),
            circwindow=netdir.param("circwindow", 1000, 100, 1000),
            congestion_control=cc,
            circuit_id=circuit_id,
            purpose=purpose,
        )
        self.circuits_built += 1
        self.explicit = {i: h for i, h in self.explicit.items() if h.is_open}
        self.explicit[handle.id] = handle
        return handle

    async def extend_path(self, handle: TunnelHandle, relays: list[Relay]) -> None:
        """Add ``relays`` to the end of an explicit circuit (EXTENDCIRCUIT ID ...)."""
        timeout = self.cbt.timeout() if self.learn_build_timeout else self.build_timeout
        handle.tunnel.reopen_for_extension()
        try:
            for relay in relays:
                await asyncio.wait_for(handle.extend(hop_for(relay)), max(timeout, 30.0))
        except BaseException as exc:
            handle.report("FAILED", "TIMEOUT" if isinstance(exc, TimeoutError) else "DESTROYED")
            handle.tunnel.destroy(0, "extension failed")
            self.chanmgr.reactor.kick()
            if isinstance(exc, TimeoutError):
                raise CircuitBuildTimeout("extending the circuit timed out") from None
            raise
        handle.tunnel.mark_open()
        handle.report(
            "BUILT"
        )  # as C tor: built again once the new hops are in  # as C tor: built again once the new hops are in

    async def wait_for_exit_circuit(self) -> TunnelHandle:
        """Build one clean exit circuit (bootstrap's last step) and wait for it, hedged as
        any other wait: a stuck relay on the first path must not hold bootstrap for the
        whole initial build timeout."""
        req = PathRequest(exit_port=None)
        handle, _slot = await self._wait_hedged(self._launch(req), req)
        return handle

    def exit_of(self, handle: TunnelHandle) -> bytes:
        return handle.path[-1].target.rsa_id

    def circuit_failed(self, handle: TunnelHandle) -> None:
        """A stream attempt on this circuit timed out: don't hand it out again."""
        for slot in self.pool.slots:
            if slot.circuit is handle:
                self.pool.retire(slot)

    @property
    def open_circuits(self) -> list[TunnelHandle]:
        return [s.circuit for s in self.pool.slots if _circuit_open(s)]

    # -- launching -------------------------------------------------------------------

    def _launch(self, req: PathRequest, *, conflux: bool = False) -> Slot:
        netdir = self._netdir()
        selector = self._selector(netdir)
        exit_relay: Relay | None = None
        if conflux:
            # C tor builds conflux legs with CIRCLAUNCH_NEED_UPTIME | NEED_CONFLUX.
            with contextlib.suppress(NoPathError):
                exit_relay = selector.choose_exit(self._conflux_request(req))
        slot = self.pool.add(
            exit_relay or selector.choose_exit(req),
            time.monotonic(),
            conflux=exit_relay is not None,
        )
        build = (
            self._build_conflux(slot, req) if slot.conflux else self._build_with_retries(slot, req)
        )
        task = asyncio.ensure_future(build)
        task.add_done_callback(functools.partial(self._build_done, slot))
        task.add_done_callback(self._note_build_finished)
        self._tasks[slot] = task
        return slot

    def _build_done(self, slot: Slot, task: asyncio.Task[TunnelHandle]) -> None:
        self._tasks.pop(slot, None)
        if not task.cancelled() and task.exception() is None:
            self.pool.opened(slot, task.result())
        else:
            self.pool.closed(slot)

    @staticmethod
    def _conflux_request(req: PathRequest) -> PathRequest:
        return dataclasses.replace(req, need_conflux=True, need_stable=True)

    def _conflux_wanted(self, netdir: NetDir) -> bool:
        """Conflux needs congestion control; ``self.conflux`` None defers to cfx_enabled."""
        if self.conflux is False or not CCParams.from_consensus(netdir.param).enabled:
            return False
        return self.conflux is True or bool(netdir.param("cfx_enabled", 1, 0, 1))

    def _conflux_avoid_guards(self, in_use: list[HopSpec]) -> list[Relay]:
        """The guards the other legs use, which this leg avoids - except with a single bridge
        (C tor's conflux_can_exclude_used_bridges: then the legs share it, with a warning)."""
        bridges = self.guards.bridges
        if bridges is not None and len(bridges) < 2:
            transport = self.one_bridge_transport
            if not self._one_bridge_warned and transport not in (None, "snowflake"):
                self._one_bridge_warned = True
                log.warning(
                    "Only one bridge (transport: '%s') is configured. You should have at "
                    "least two for conflux, for any transport that is not 'snowflake'.",
                    transport,
                )
            return []
        return [r for h in in_use if (r := self.guards.lookup(h.target.rsa_id)) is not None]

    async def _build_conflux(self, slot: Slot, req: PathRequest) -> TunnelHandle:
        """Build ``cfx_num_legs_set`` legs to ``slot.exit`` and link them (prop 329 §2.2).

        The legs share no guard and no middle (prop 329 §2.2, prop 354); each has
        congestion control.  A leg that fails is rebuilt through other relays, at most
        ``cfx_max_unlinked_leg_retry`` times in all.  If the set cannot be made, the
        slot gets an ordinary circuit instead, so a stream waiting for it still gets one.
        """
        netdir = self._netdir()
        n_legs = netdir.param("cfx_num_legs_set", 2, 2, 8)
        retries = netdir.param("cfx_max_unlinked_leg_retry", 3, 0, 255)
        leg_req = self._conflux_request(req)
        exit_relay = slot.exit
        cc = congestion_control_for(netdir, exit_relay, internal=False)
        legs: list[TunnelHandle] = []
        used: set[bytes] = set()  # middles (and guards) any leg has used: not middles again
        try:
            if cc is None:
                raise CircuitError(f"exit {exit_relay.nickname} cannot do congestion control")
            while len(legs) < n_legs:
                want = n_legs - len(legs)
                plans: list[tuple[list[HopSpec], GuardUsage | None]] = []
                selector = self._selector(self._netdir())
                try:
                    for _ in range(want):
                        # Not the guard of a leg that is built or being built (prop 354); a
                        # failed leg's guard is fair game again, as in C tor.
                        in_use = [leg.path[0] for leg in legs] + [p[0][0] for p in plans]
                        hops, usage = self._choose_hops(
                            selector,
                            dataclasses.replace(leg_req, exclude=leg_req.exclude | frozenset(used)),
                            exit_relay,
                            avoid_guards=self._conflux_avoid_guards(in_use),
                        )
                        plans.append((hops, usage))
                        used.update(h.target.rsa_id for h in hops[:2])
                except NoPathError:
                    for _, usage in plans:
                        self._guard_cancel(usage)
                    raise
                # (What a hedge avoids: the middles and the exit, as for one circuit.)
                slot.building_through = frozenset(
                    h.target.rsa_id for hops, _ in plans for h in hops[1:]
                )
                results = await asyncio.gather(
                    *(
                        self._build_hops(hops, usage, congestion_control=cc)
                        for hops, usage in plans
                    ),
                    return_exceptions=True,
                )
                for result in results:
                    if isinstance(result, TunnelHandle):
                        legs.append(result)
                    elif isinstance(result, (ChannelError, CircuitError, TimeoutError)):
                        self._note_build_failure(result)
                        if retries <= 0:
                            raise result
                        retries -= 1
                    else:
                        raise result
            timeout = self.current_build_timeout()
            handle = await link_conflux(legs, timeout=timeout, desired_ux=self.conflux_ux)
        except NoPathError as exc:
            log.info("no conflux set: %s", exc)
        except (ChannelError, CircuitError, TimeoutError) as exc:
            self.conflux_failures += 1
            wait = self.conflux_backoff.failed(time.monotonic())
            log.info(
                "conflux set through %s failed (%s); next attempt in %.0f s",
                exit_relay.nickname,
                exc,
                wait,
            )
        except BaseException:
            for leg in legs:
                leg.close()
            raise
        else:
            self.conflux_sets_linked += 1
            self.conflux_backoff.succeeded()
            log.info("linked a conflux set of %d legs to %s", len(legs), exit_relay.nickname)
            return handle
        for leg in legs:
            leg.close()
        slot.conflux = False
        return await self._build_with_retries(slot, req)

    async def _wait_slot(self, slot: Slot) -> TunnelHandle:
        if slot.state is SlotState.OPEN:
            return slot.circuit
        task = self._tasks.get(slot)
        if task is None:
            raise CircuitError("the circuit build was abandoned")
        return await asyncio.shield(task)

    async def _build_with_retries(self, slot: Slot, req: PathRequest) -> TunnelHandle:
        last_error: Exception | None = None
        avoid: set[bytes] = set()
        for attempt in range(BUILD_ATTEMPTS):
            selector = self._selector(self._netdir())
            if attempt:
                # Spread the attempts out a little, and never retry through the relay
                # that just failed: it is likely still in the consensus (C tor too).
                await asyncio.sleep(0.25 * 2**attempt)
                req = dataclasses.replace(req, exclude=req.exclude | frozenset(avoid))
                if slot.exit.rsa_id in avoid or attempt >= 2:
                    with contextlib.suppress(NoPathError):
                        slot.exit = selector.choose_exit(req)
            try:
                handle = await self._build_through(
                    selector, req, slot.exit, failed=avoid, slot=slot
                )
            except NoPathError:
                raise
            except (ChannelError, CircuitError, TimeoutError) as exc:
                last_error = exc
                self._note_build_failure(exc)
                log.info("circuit build attempt %d failed: %s", attempt + 1, exc)
                continue
            return handle
        raise CircuitError(
            f"could not build a circuit after {BUILD_ATTEMPTS} attempts: {last_error}"
        )

    async def _build_through(
        self,
        selector: PathSelector,
        req: PathRequest,
        last: Relay | HopSpec,
        *,
        failed: set[bytes] | None = None,
        slot: Slot | None = None,
    ) -> TunnelHandle:
        """Guard (from the guard manager, avoiding the last hop's family), middle, last."""
        hops, usage = self._choose_hops(selector, req, last)
        if slot is not None:
            slot.building_through = frozenset(h.target.rsa_id for h in hops[1:])
        last_relay = selector.netdir.by_rsa_id(hops[-1].target.rsa_id)
        cc = None
        if self.congestion_control:
            cc = congestion_control_for(self._netdir(), last_relay, internal=req.internal)
        return await self._build_hops(hops, usage, failed=failed, congestion_control=cc)

    def _choose_hops(
        self,
        selector: PathSelector,
        req: PathRequest,
        last: Relay | HopSpec,
        *,
        avoid_guards: list[Relay] | None = None,
    ) -> tuple[list[HopSpec], GuardUsage | None]:
        """Guard, middle (`puretor.path.choose_first_hops`), last.  ``last`` may be a hop
        named by link specifiers (an introduction point): its family is avoided when
        we know the relay, and it is extended to as described."""
        if isinstance(last, HopSpec):
            last_relay = selector.netdir.by_rsa_id(last.target.rsa_id)
            last_hop = last
        else:
            last_relay, last_hop = last, hop_for(last)
        unreachable: frozenset[bytes] = frozenset()
        if not self.use_entry_guards:
            unreachable = frozenset(
                r.rsa_id
                for r in selector.netdir.relays
                if not self.families.can_reach((r.address, r.or_port), r.ipv6)
            )
        guard, middle, usage = choose_first_hops(
            selector,
            self.guards if self.use_entry_guards else None,
            req,
            time.time(),
            last_relay,
            avoid_guards=avoid_guards or (),
            unreachable=unreachable,
        )
        return [hop_for(guard, self.families), hop_for(middle), last_hop], usage

    async def _build_hops(
        self,
        hops: list[HopSpec],
        usage: GuardUsage | None,
        *,
        failed: set[bytes] | None = None,
        congestion_control: CCParams | None = None,
    ) -> TunnelHandle:
        """Build the circuit ``hops`` and report the outcome to the guard manager."""
        netdir = self._netdir()
        cc = congestion_control
        started = time.monotonic()
        timeout = self.current_build_timeout()
        if usage is not None:
            self.guard_waits.building(usage)
        try:
            handle = await build_circuit(
                self.chanmgr,
                hops,
                timeout=timeout,
                sendme_accept_min_version=netdir.param("sendme_accept_min_version", 0, 0, 255),
                circwindow=netdir.param("circwindow", 1000, 100, 1000),
                congestion_control=cc,
            )
        except ChannelError:
            if not any(
                c.status == "CONNECTED" for c in self.chanmgr.reactor.observer.channels.values()
            ):
                self.chanmgr.reactor.observer.liveness(False)  # no relay answers at all
            # The guard itself is unreachable: the guard manager moves on to the next.
            if usage is not None:
                self.guard_waits.failed(usage)
                self.guards.record_failure(usage, time.time())
                self.on_guards_changed()
            self._settle_guard_waits()
            raise
        except CircuitError as exc:
            if isinstance(exc, CircuitBuildTimeout):
                self.cbt.record_timeout()
            # Beyond the guard: remember which relay failed so the next attempt avoids it.
            index = getattr(exc, "failed_hop", None)
            if failed is not None and index is not None and 0 < index < len(hops):
                failed.add(hops[index].target.rsa_id)
            self._guard_cancel(usage)
            raise
        except BaseException:
            self._guard_cancel(usage)
            raise
        observer = self.chanmgr.reactor.observer
        if self.cbt.record_success(time.monotonic() - started):
            cbt = self.cbt
            observer.emit(
                BuildTimeoutEvent(
                    cbt.recorded, cbt.timeout(), cbt.xm, cbt.alpha, cbt.quantile, cbt.timeout_rate
                )
            )
            if self.on_build_times_changed is not None:
                self.on_build_times_changed()
        observer.liveness(True)
        self.circuits_built += 1
        log.debug("built circuit %s", " → ".join(h.target.nickname for h in hops))
        if usage is not None:
            usable = self.guard_waits.built(usage, handle, time.time())
            self.on_guards_changed()
            if not usable:
                await self._wait_for_better_guard(handle)
            self._settle_guard_waits()
        return handle

    def _guard_cancel(self, usage: GuardUsage | None) -> None:
        if usage is not None:
            self.guard_waits.failed(usage)
            self.guards.cancel(usage)

    async def _wait_for_better_guard(self, handle: TunnelHandle) -> None:
        """guard-spec §4.9: built through a guard that was only good enough if no better
        one works - hold the circuit until `GuardWaits.settle` lets it be used (or closes
        it), as C tor holds it in CIRCUIT_STATE_GUARD_WAIT."""
        log.info("circuit through a non-primary guard waits for the primary guards")
        waiter = asyncio.get_running_loop().create_future()
        self._guard_waiters[handle] = waiter
        self._settle_guard_waits()
        try:
            await waiter
        except BaseException:
            handle.close()
            self.guard_waits.closed(handle)
            raise
        finally:
            self._guard_waiters.pop(handle, None)

    def _settle_guard_waits(self) -> None:
        """After a build's outcome, and every second: waiting circuits that may now be
        used go on; those that waited too long are closed."""
        self.guard_waits.prune(lambda handle: handle.is_open)
        usable, expired = self.guard_waits.settle(time.time())
        for handle in usable:
            waiter = self._guard_waiters.get(handle)  # type: ignore[call-overload]
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        for handle in expired:
            waiter = self._guard_waiters.get(handle)  # type: ignore[call-overload]
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    CircuitError("closed after waiting too long for a better guard")
                )
        for handle, waiter in list(self._guard_waiters.items()):
            if not handle.is_open and not waiter.done():
                waiter.set_exception(CircuitError("circuit closed while waiting for a guard"))

    def _selector(self, netdir: NetDir) -> PathSelector:
        # One selector per NetDir: its weight tables are worth keeping.
        cached = self._selector_cache
        if cached is None or cached.netdir is not netdir:
            cached = PathSelector(netdir, enforce_distinct_subnets=self.enforce_distinct_subnets)
            self._selector_cache = cached
        return cached

    # -- background upkeep ------------------------------------------------------------

    def _top_up_soon(self) -> None:
        asyncio.get_running_loop().call_soon(self._top_up)

    def _top_up(self) -> None:
        """Build what the policy wants ready: `conflux_prebuilt_sets` linked conflux sets
        (C tor's conflux_predict_new), then clean circuits for the predicted ports
        (path-spec §2.1.1)."""
        pool = self.pool
        now = time.monotonic()
        netdir = self._netdir()
        if self._conflux_wanted(netdir) and self.conflux_backoff.allows(now):
            sets = conflux_prebuilt_sets(netdir)
            while (port := pool.conflux_set_wanted(now, sets)) is not None:
                try:
                    if not self._launch(PathRequest(exit_port=port), conflux=True).conflux:
                        break  # no exit can do it
                except TorError as exc:
                    log.debug("no conflux set for port %d: %s", port, exc)
                    break
        impossible: set[int] = set()
        while (port := pool.circuit_wanted(now, impossible)) is not None:
            try:
                self._launch(PathRequest(exit_port=port))
            except TorError as exc:
                log.debug("no preemptive circuit for port %d: %s", port, exc)
                impossible.add(port)

    async def _maintain(self) -> None:
        # As C tor: predicted circuits are considered every second, old circuits expired
        # every NewCircuitPeriod (circuit_expire_old_circs_as_needed).
        next_expiry = time.monotonic() + self.new_circuit_period
        while True:
            try:
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + self.new_circuit_period
                    self._expire()
                self._settle_guard_waits()
                self._top_up()
            except Exception as exc:  # upkeep must never die
                log.warning("circuit upkeep failed: %r", exc)
            await asyncio.sleep(min(1.0, self.new_circuit_period))

    def _expire(self) -> None:
        pool = self.pool
        for slot in list(pool.slots):
            if slot.state is SlotState.OPEN and not _circuit_open(slot):
                pool.closed(slot)
        for slot in pool.expire(time.monotonic(), _circuit_idle):
            slot.circuit.close()


def _circuit_open(slot: Slot) -> bool:
    return slot.circuit is not None and slot.circuit.is_open


def _circuit_idle(slot: Slot) -> bool:
    return not slot.circuit.tunnel.streams
