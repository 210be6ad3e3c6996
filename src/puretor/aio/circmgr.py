"""The circuit manager: which circuit carries a stream, and building new ones.

Policy lives here (path choice through `puretor.path`, guard use, isolation,
dirtiness, retries, preemptive circuits); the mechanics of a circuit live in
`puretor.aio.circuit`.  A circuit carries streams of one isolation key only:
the key of its first stream (C tor's rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from puretor.aio.channel import ChannelManager
from puretor.aio.circuit import CircuitHandle, HopSpec, build_circuit, hop_for, link_conflux
from puretor.dir.netdir import NetDir, Relay
from puretor.errors import ChannelError, CircuitBuildTimeout, CircuitError, NoPathError, TorError
from puretor.path.cbt import INITIAL_TIMEOUT, BuildTimeout
from puretor.path.guards import GuardManager, GuardUsage
from puretor.path.reachable import AddressFamilies
from puretor.path.select import PathRequest, PathSelector, supports_conflux
from puretor.proto.conflux import DesiredUx
from puretor.proto.congestion import CCParams

log = logging.getLogger("puretor.circuit")

BUILD_ATTEMPTS = 4
# Before enough builds are timed to learn a timeout, hedge a build after this long.
HEDGE_DELAY_UNLEARNED = 5.0
MAX_HEDGES = 3
PREEMPTIVE_PORTS = (80, 443)
PREEMPTIVE_CLEAN_CIRCUITS = 2
IDLE_CLEAN_LIFETIME = 3600.0


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


@dataclass(eq=False)
class _Slot:
    """A built or building exit circuit and who may use it."""

    exit: Relay
    isolation: Hashable | None = None
    claimed: bool = False
    handle: CircuitHandle | None = None
    task: asyncio.Task[CircuitHandle] | None = None
    generation: int = 0
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    # RSA ids beyond the guard of the build in progress (a hedge avoids them).
    building_through: frozenset[bytes] = frozenset()
    conflux: bool = False  # a conflux set (prop 329), or being built as one

    def allows(self, port: int) -> bool:
        return self.exit.policy.allows(port)


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
        # MaxClientCircuitsPending: at most this many exit circuits being built at once;
        # a stream that needs another waits for one of them to finish.
        self.max_pending = max_pending
        self.pending_peak = 0
        self._build_finished: asyncio.Event | None = None
        # NewCircuitPeriod: how often idle circuits past MaxCircuitDirtiness are closed.
        self.new_circuit_period = new_circuit_period
        # Negotiate congestion control with exits that support it, as C tor does, while
        # the consensus cc_alg says so (congestion_control_for); False: never (tests).
        self.congestion_control = congestion_control is not False
        self._netdir = netdir
        self.guards = guards
        self.enforce_distinct_subnets = enforce_distinct_subnets
        self.max_dirtiness = max_dirtiness
        self.build_timeout = build_timeout
        self.on_guards_changed = on_guards_changed
        self._slots: list[_Slot] = []
        self._generation = 0
        self._ports_used: dict[int, float] = {p: time.monotonic() for p in PREEMPTIVE_PORTS}
        self._maintenance: asyncio.Task[None] | None = None
        self._selector_cache: PathSelector | None = None
        # Learned build timeout (path-spec §2.4), starting from `build_timeout` (C tor:
        # CircuitBuildTimeout is the initial value while LearnCircuitBuildTimeout is 1).
        self.cbt = BuildTimeout(
            initial_timeout=build_timeout, max_timeout=max(build_timeout, INITIAL_TIMEOUT)
        )
        self.learn_build_timeout = learn_build_timeout
        self.circuits_built = 0
        self.build_failures = 0
        # Conflux (prop 329): keep linked sets ready for exit streams (None: as the
        # consensus says, cfx_enabled), asking the exit's scheduler for ``conflux_ux``.
        self.conflux = conflux
        self.conflux_ux = conflux_ux
        self.conflux_sets_linked = 0
        self.conflux_failures = 0
        # After failed sets, wait before prebuilding more (5 s, doubling, at most 10 min).
        self._conflux_failed_in_a_row = 0
        self._conflux_retry_at = 0.0

    # -- public ------------------------------------------------------------------

    def start(self) -> None:
        if self._maintenance is None:
            self._maintenance = asyncio.ensure_future(self._maintain())

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            self._maintenance = None
        for slot in self._slots:
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()
            if slot.handle is not None:
                slot.handle.close()
        self._slots.clear()

    def new_identity(self) -> None:
        """NEWNYM: no existing circuit takes new streams."""
        self._generation += 1

    async def get_exit_circuit(
        self, port: int, isolation: Hashable, *, exclude: frozenset[bytes] = frozenset()
    ) -> CircuitHandle:
        """An open circuit whose exit allows ``port``, usable under ``isolation``."""
        self._ports_used[port] = time.monotonic()
        slot = self._find_slot(port, isolation, exclude)
        while slot is None and self.pending_builds() >= self.max_pending:
            await self._wait_for_a_build()
            slot = self._find_slot(port, isolation, exclude)
        if slot is None:
            slot = self._launch(PathRequest(exit_port=port, exclude=exclude))
            slot.isolation, slot.claimed = isolation, True
        elif not slot.claimed:
            slot.isolation, slot.claimed = isolation, True
        handle, used = await self._wait_hedged(slot, PathRequest(exit_port=port, exclude=exclude))
        used.last_used = time.monotonic()
        handle.isolation = isolation
        if handle.dirty_since is None:
            handle.dirty_since = time.monotonic()
        self._top_up_soon()
        return handle

    def pending_builds(self) -> int:
        """Exit circuits (or conflux sets) being built now (MaxClientCircuitsPending)."""
        return sum(1 for s in self._slots if s.task is not None and not s.task.done())

    async def _wait_for_a_build(self) -> None:
        if self._build_finished is None:
            self._build_finished = asyncio.Event()
        await self._build_finished.wait()

    def _note_build_finished(self, _task: object) -> None:
        if self._build_finished is not None:
            self._build_finished.set()
            self._build_finished = None

    async def _wait_hedged(self, slot: _Slot, req: PathRequest) -> tuple[CircuitHandle, _Slot]:
        """Wait for ``slot``; each time the builds in progress outlast the expected build
        time, launch another one that avoids their relays, and take whichever finishes
        first: a stuck relay then costs seconds, not the 60 s build timeout."""
        if slot.handle is not None:
            return slot.handle, slot
        delay = self.cbt.timeout() if self.cbt.learned else HEDGE_DELAY_UNLEARNED
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
                if (not done or not waiters) and self.pending_builds() < self.max_pending:
                    hedges += 1
                    stuck = frozenset().union(*(s.building_through for s in waiters.values()))
                    try:
                        backup = self._launch(dataclasses.replace(req, exclude=req.exclude | stuck))
                    except NoPathError:
                        backup = self._launch(req)
                    backup.isolation, backup.claimed = slot.isolation, slot.claimed
                    waiters[asyncio.ensure_future(self._wait_slot(backup))] = backup
        finally:
            for waiter in waiters:
                waiter.cancel()  # only the waiting: the other builds go on, as spares
        assert last_error is not None
        raise last_error

    async def build_internal_circuit(self, last: Relay | HopSpec | None = None) -> CircuitHandle:
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
                self.build_failures += 1
        raise CircuitError(f"could not build an internal circuit: {last_error}")

    async def wait_for_exit_circuit(self) -> CircuitHandle:
        """Build one clean exit circuit (bootstrap's last step) and wait for it."""
        slot = self._launch(PathRequest(exit_port=None))
        return await self._wait_slot(slot)

    def exit_of(self, handle: CircuitHandle) -> bytes:
        return handle.path[-1].target.rsa_id

    def circuit_failed(self, handle: CircuitHandle) -> None:
        """A stream attempt on this circuit timed out: don't hand it out again."""
        for slot in self._slots:
            if slot.handle is handle:
                slot.generation = -1

    # -- slots -------------------------------------------------------------------

    def _find_slot(self, port: int, isolation: Hashable, exclude: frozenset[bytes]) -> _Slot | None:
        """Best usable slot: ours and built, ours and building, clean built, clean building."""
        now = time.monotonic()
        best: _Slot | None = None
        best_rank = 99
        for slot in self._slots:
            if slot.generation != self._generation or not slot.allows(port):
                continue
            if slot.exit.rsa_id in exclude or (slot.claimed and slot.isolation != isolation):
                continue
            handle = slot.handle
            if handle is not None:
                if not handle.is_open:
                    continue
                if handle.dirty_since is not None and now - handle.dirty_since > self.max_dirtiness:
                    continue
            elif slot.task is None or slot.task.done():
                continue
            # (C tor prefers a linked conflux set to any other clean circuit.)
            rank = 2 * ((0 if slot.claimed else 2) + (0 if handle is not None else 1))
            rank += 0 if slot.conflux else 1
            if rank < best_rank:
                best, best_rank = slot, rank
        return best

    def _launch(self, req: PathRequest, *, conflux: bool = False) -> _Slot:
        netdir = self._netdir()
        selector = self._selector(netdir)
        exit_relay: Relay | None = None
        if conflux:
            # C tor builds conflux legs with CIRCLAUNCH_NEED_UPTIME | NEED_CONFLUX.
            with contextlib.suppress(NoPathError):
                exit_relay = selector.choose_exit(self._conflux_request(req))
        slot = _Slot(
            exit=exit_relay or selector.choose_exit(req),
            generation=self._generation,
            conflux=exit_relay is not None,
        )
        build = (
            self._build_conflux(slot, req) if slot.conflux else self._build_with_retries(slot, req)
        )
        slot.task = asyncio.ensure_future(build)
        slot.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        slot.task.add_done_callback(self._note_build_finished)
        self._slots.append(slot)
        self.pending_peak = max(self.pending_peak, self.pending_builds())
        return slot

    @staticmethod
    def _conflux_request(req: PathRequest) -> PathRequest:
        return dataclasses.replace(req, need_conflux=True, need_stable=True)

    def _conflux_wanted(self, netdir: NetDir) -> bool:
        """Conflux needs congestion control; ``self.conflux`` None defers to cfx_enabled."""
        if self.conflux is False or not CCParams.from_consensus(netdir.param).enabled:
            return False
        return self.conflux is True or bool(netdir.param("cfx_enabled", 1, 0, 1))

    async def _build_conflux(self, slot: _Slot, req: PathRequest) -> CircuitHandle:
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
        legs: list[CircuitHandle] = []
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
                            avoid_guards=[
                                r
                                for h in in_use
                                if (r := selector.netdir.by_rsa_id(h.target.rsa_id)) is not None
                            ],
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
                    if isinstance(result, CircuitHandle):
                        legs.append(result)
                    elif isinstance(result, (ChannelError, CircuitError, TimeoutError)):
                        self.build_failures += 1
                        if retries <= 0:
                            raise result
                        retries -= 1
                    else:
                        raise result
            timeout = self.cbt.timeout() if self.learn_build_timeout else self.build_timeout
            handle = await link_conflux(legs, timeout=timeout, desired_ux=self.conflux_ux)
        except NoPathError as exc:
            log.info("no conflux set: %s", exc)
        except (ChannelError, CircuitError, TimeoutError) as exc:
            self.conflux_failures += 1
            self._conflux_failed_in_a_row += 1
            wait = min(600.0, 5.0 * 2 ** (self._conflux_failed_in_a_row - 1))
            self._conflux_retry_at = time.monotonic() + wait
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
            self._conflux_failed_in_a_row = 0
            log.info("linked a conflux set of %d legs to %s", len(legs), exit_relay.nickname)
            slot.handle = handle
            handle.isolation = slot.isolation
            return handle
        for leg in legs:
            leg.close()
        slot.conflux = False
        return await self._build_with_retries(slot, req)

    async def _wait_slot(self, slot: _Slot) -> CircuitHandle:
        if slot.handle is not None:
            return slot.handle
        assert slot.task is not None
        try:
            return await asyncio.shield(slot.task)
        except TorError:
            self._drop(slot)
            raise

    async def _build_with_retries(self, slot: _Slot, req: PathRequest) -> CircuitHandle:
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
                self.build_failures += 1
                log.info("circuit build attempt %d failed: %s", attempt + 1, exc)
                continue
            slot.handle = handle
            handle.isolation = slot.isolation
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
        slot: _Slot | None = None,
    ) -> CircuitHandle:
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
        """Guard (from the guard manager, avoiding the last hop's family, and not one of
        ``avoid_guards``: the other legs' of a conflux set), middle (avoiding
        ``req.exclude`` too), last."""
        if isinstance(last, HopSpec):
            # A hop named by link specifiers (an introduction point): avoid its
            # family when we know the relay, and extend to it as described.
            last_relay = selector.netdir.by_rsa_id(last.target.rsa_id)
            last_hop = last
        else:
            last_relay, last_hop = last, hop_for(last)
        avoid_relays = [last_relay] if last_relay is not None else []
        guard, usage = self._choose_first_hop(selector, req, avoid_relays, avoid_guards or [])
        try:
            middle = selector.choose_middle([guard, *avoid_relays], req)
        except NoPathError:
            self._guard_cancel(usage)
            raise
        return [hop_for(guard, self.families), hop_for(middle), last_hop], usage

    def _choose_first_hop(
        self,
        selector: PathSelector,
        req: PathRequest,
        avoid: list[Relay],
        avoid_guards: list[Relay],
    ) -> tuple[Relay, GuardUsage | None]:
        """From the guard manager; with UseEntryGuards 0, as C tor, a fresh bandwidth-weighted
        Guard-flagged relay for each circuit, not related to the last hop."""
        if self.use_entry_guards:
            return self.guards.select_guard(time.time(), avoid=avoid, exclude=avoid_guards)
        unreachable = frozenset(
            r.rsa_id
            for r in selector.netdir.relays
            if not self.families.can_reach((r.address, r.or_port), r.ipv6)
        )
        exclude = unreachable | {r.rsa_id for r in avoid_guards}
        return selector.choose_guard(req, avoid, exclude), None

    def _guard_cancel(self, usage: GuardUsage | None) -> None:
        if usage is not None:
            self.guards.cancel(usage)

    async def _build_hops(
        self,
        hops: list[HopSpec],
        usage: GuardUsage | None,
        *,
        failed: set[bytes] | None = None,
        congestion_control: CCParams | None = None,
    ) -> CircuitHandle:
        """Build the circuit ``hops`` and report the outcome to the guard manager."""
        netdir = self._netdir()
        cc = congestion_control
        started = time.monotonic()
        timeout = self.cbt.timeout() if self.learn_build_timeout else self.build_timeout
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
            # The guard itself is unreachable: the guard manager moves on to the next.
            if usage is not None:
                self.guards.record_failure(usage, time.time())
                self.on_guards_changed()
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
        self.cbt.record_success(time.monotonic() - started)
        if usage is not None:
            self.guards.record_success(usage, time.time())
            self.on_guards_changed()
        self.circuits_built += 1
        log.debug("built circuit %s", " → ".join(h.target.nickname for h in hops))
        return handle

    def _selector(self, netdir: NetDir) -> PathSelector:
        # One selector per NetDir: its weight tables are worth keeping.
        cached = self._selector_cache
        if cached is None or cached.netdir is not netdir:
            cached = PathSelector(netdir, enforce_distinct_subnets=self.enforce_distinct_subnets)
            self._selector_cache = cached
        return cached

    def _drop(self, slot: _Slot) -> None:
        with contextlib.suppress(ValueError):
            self._slots.remove(slot)

    # -- background upkeep ------------------------------------------------------------

    def _top_up_soon(self) -> None:
        asyncio.get_running_loop().call_soon(self._top_up)

    def _top_up(self) -> None:
        """Keep clean circuits ready for the ports used recently (path-spec §2.1.1),
        and `conflux_prebuilt_sets` linked conflux sets besides, as C tor does
        (conflux_predict_new); a clean set counts for every port its exit allows."""
        now = time.monotonic()
        for port, last in list(self._ports_used.items()):
            if now - last > 3600 and port not in PREEMPTIVE_PORTS:
                del self._ports_used[port]
        if not self._ports_used:
            return
        netdir = self._netdir()
        if self._conflux_wanted(netdir) and now >= self._conflux_retry_at:
            clean_sets = sum(
                1
                for s in self._slots
                if s.conflux
                and not s.claimed
                and s.generation == self._generation
                and (s.handle is None or s.handle.is_open)
            )
            port = max(self._ports_used, key=self._ports_used.__getitem__)
            for _ in range(conflux_prebuilt_sets(netdir) - clean_sets):
                if self.pending_builds() >= self.max_pending:
                    break
                try:
                    if not self._launch(PathRequest(exit_port=port), conflux=True).conflux:
                        break  # no exit can do it
                except TorError as exc:
                    log.debug("no conflux set for port %d: %s", port, exc)
                    break
        for port in list(self._ports_used):
            clean = sum(
                1
                for s in self._slots
                if not s.claimed
                and s.generation == self._generation
                and s.allows(port)
                and (s.handle is None or s.handle.is_open)
            )
            for _ in range(PREEMPTIVE_CLEAN_CIRCUITS - clean):
                if self.pending_builds() >= self.max_pending:
                    return
                try:
                    self._launch(PathRequest(exit_port=port))
                except TorError as exc:
                    log.debug("no preemptive circuit for port %d: %s", port, exc)
                    break

    async def _maintain(self) -> None:
        # As C tor: predicted circuits are considered every second, old circuits expired
        # every NewCircuitPeriod (circuit_expire_old_circs_as_needed).
        next_expiry = time.monotonic() + self.new_circuit_period
        while True:
            try:
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + self.new_circuit_period
                    self._expire()
                self._top_up()
            except Exception as exc:  # upkeep must never die
                log.warning("circuit upkeep failed: %r", exc)
            await asyncio.sleep(min(1.0, self.new_circuit_period))

    def _expire(self) -> None:
        now = time.monotonic()
        for slot in list(self._slots):
            handle = slot.handle
            if handle is None:
                if slot.task is not None and slot.task.done():
                    self._drop(slot)
                continue
            if not handle.is_open:
                self._drop(slot)
                continue
            dirty = handle.dirty_since is not None and now - handle.dirty_since > self.max_dirtiness
            stale = slot.generation != self._generation
            idle = not handle.circuit.streams
            if idle and (
                dirty or stale or (not slot.claimed and now - slot.created > IDLE_CLEAN_LIFETIME)
            ):
                handle.close()
                self._drop(slot)

    @property
    def open_circuits(self) -> list[CircuitHandle]:
        return [s.handle for s in self._slots if s.handle is not None and s.handle.is_open]
