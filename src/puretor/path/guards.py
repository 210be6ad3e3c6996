"""Entry guards: the persistent sampled set, primary guards and retries (guard-spec §4, A.1).

Where guard-spec and deployed C tor (``entrynodes.c``, 0.4.7/0.4.8) differ we follow C tor:

* the sample's 20 % cap counts guards, not guard bandwidth (``get_max_sample_size``);
* primary guards are chosen confirmed-first but kept in *sample order* (proposal 310), and the
  confirmed guards are tried in sample order too; "priority" between circuits still uses the
  order of confirmation (``entry_guard_has_higher_priority``);
* with every sampled guard down we mark them all "maybe reachable" and fail this selection.

Lifecycle for the caller (the circuit manager)::

    guard, usage = guards.select_guard(now, avoid=[exit_relay])
    ... build the circuit ...
    guards.record_failure(usage, now)      # channel to the guard failed / first hop timed out
    guards.cancel(usage)                   # the circuit failed further along: not the guard's fault
    if guards.record_success(usage, now):  # True: attach streams now
        ...
    else:                                  # a non-primary guard: wait for a better one
        later: guards.upgrade_waiting(all_usages, now) -> usages that became usable

With bridges (UseBridges 1) the same manager is C tor's "bridges" guard selection: after
``set_bridges`` the candidates are the bridges whose descriptors we have, not the consensus's
Guard relays, and a bridge counts as "listed" while it is configured and described.

Persist ``to_json()`` in the state file whenever ``state_version`` changes; restore it with
``GuardManager.from_json``.  Times are POSIX seconds supplied by the caller.
"""

from __future__ import annotations

import enum
import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from random import Random
from typing import Any

from puretor.dir.netdir import NetDir, Relay
from puretor.errors import NoPathError
from puretor.path.reachable import AddressFamilies
from puretor.path.relations import related
from puretor.path.select import BandwidthWeights, Position

STATE_VERSION = 1
DAY = 86400.0

# guard-spec §4.0 {GUARDS}: flags a relay needs to be sampled, so every guard suits every use.
GUARD_FLAGS = frozenset({"Guard", "Stable", "Fast", "Valid", "V2Dir", "Running"})

# guard-spec A.1 retry schedules, as C tor's get_retry_schedule() implements them:
# (failing for at most N seconds, retry delay if primary, retry delay otherwise).
RETRY_SCHEDULE: tuple[tuple[float, float, float], ...] = (
    (6 * 3600, 10 * 60, 1 * 3600),
    (4 * DAY, 90 * 60, 4 * 3600),
    (7 * DAY, 4 * 3600, 18 * 3600),
    (math.inf, 9 * 3600, 36 * 3600),
)


def retry_delay(failing_since: float, now: float, primary: bool) -> float:
    """Seconds after the last attempt at which a failing guard becomes worth retrying."""
    failing_for = max(0.0, now - failing_since)
    for limit, primary_delay, other_delay in RETRY_SCHEDULE:
        if failing_for <= limit:
            return primary_delay if primary else other_delay
    raise AssertionError("unreachable")  # pragma: no cover


class Reachable(enum.Enum):
    UNKNOWN = "unknown"  # guard-spec's <maybe>: worth trying
    YES = "yes"
    NO = "no"


class GuardPurpose(enum.Enum):
    TRAFFIC = "traffic"  # multi-hop circuits: the guard needs a microdescriptor
    DIRECTORY = "directory"  # one-hop BEGIN_DIR: any of the first 3 primary guards


class CircGuardState(enum.Enum):
    """A circuit's standing with respect to its guard (guard-spec §4.6)."""

    USABLE_ON_COMPLETION = "usable_on_completion"
    USABLE_IF_NO_BETTER_GUARD = "usable_if_no_better_guard"
    WAITING_FOR_BETTER_GUARD = "waiting_for_better_guard"
    COMPLETE = "complete"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class GuardParams:
    """guard-spec A.1, overridable by the consensus ``guard-*`` parameters (seconds, fractions)."""

    max_sample_threshold: float = 0.20
    max_sample_size: int = 60
    min_filtered_sample: int = 20
    remove_unlisted_after: float = 20 * DAY
    lifetime: float = 120 * DAY
    confirmed_min_lifetime: float = 60 * DAY
    n_primary: int = 3
    n_primary_to_use: int = 1
    n_primary_dir_to_use: int = 3
    internet_likely_down_interval: float = 600.0
    nonprimary_connect_timeout: float = 15.0
    nonprimary_idle_timeout: float = 600.0

    @classmethod
    def from_netdir(cls, netdir: NetDir) -> GuardParams:
        p = netdir.param
        big = 2**31 - 1
        return cls(
            max_sample_threshold=p("guard-max-sample-threshold-percent", 20, 1, 100) / 100,
            max_sample_size=p("guard-max-sample-size", 60, 1, big),
            min_filtered_sample=p("guard-min-filtered-sample-size", 20, 1, big),
            remove_unlisted_after=p("guard-remove-unlisted-guards-after-days", 20, 1, 3650) * DAY,
            lifetime=p("guard-lifetime-days", 120, 1, 3650) * DAY,
            confirmed_min_lifetime=p("guard-confirmed-min-lifetime-days", 60, 1, 3650) * DAY,
            n_primary=p("guard-n-primary-guards", 3, 1, big),
            n_primary_to_use=p("guard-n-primary-guards-to-use", 1, 1, big),
            n_primary_dir_to_use=p("guard-n-primary-dir-guards-to-use", 3, 1, big),
            internet_likely_down_interval=p("guard-internet-likely-down-interval", 600, 1, big),
            nonprimary_connect_timeout=p("guard-nonprimary-guard-connect-timeout", 15, 1, big),
            nonprimary_idle_timeout=p("guard-nonprimary-guard-idle-timeout", 600, 1, big),
        )


@dataclass(eq=False, slots=True)
class _Guard:
    rsa_id: bytes
    nickname: str
    sampled_on: float
    sampled_idx: int
    listed: bool = True
    unlisted_since: float | None = None
    confirmed_on: float | None = None
    confirmed_idx: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown state keys, kept (A.5)
    # Not persisted (guard-spec §4.1 "tvar"s):
    reachable: Reachable = Reachable.UNKNOWN
    failing_since: float | None = None
    last_tried: float | None = None
    pending: bool = False
    primary: bool = False


@dataclass(eq=False)
class GuardUsage:
    """The guard-related state of one circuit, returned with its guard by ``select_guard``."""

    rsa_id: bytes
    purpose: GuardPurpose
    state: CircGuardState
    state_set_at: float
    avoid: tuple[Relay, ...] = ()  # the restriction the guard obeyed (exit + its family)


def is_possible_guard(relay: Relay | None) -> bool:
    """Member of guard-spec {GUARDS}: listed with Guard, Stable, Fast, Valid, V2Dir."""
    return relay is not None and relay.flags >= GUARD_FLAGS and "MiddleOnly" not in relay.flags


class GuardManager:
    """One guard-selection state instance (guard-spec §2 "default" instance)."""

    def __init__(
        self,
        *,
        rng: Random | None = None,
        enforce_distinct_subnets: bool = True,
        params: GuardParams | None = None,
    ) -> None:
        self.rng: Random = rng if rng is not None else secrets.SystemRandom()
        self.enforce_distinct_subnets = enforce_distinct_subnets
        # Which guards we can connect to at all (ClientUseIPv4/6): the guard-spec filter.
        self.families = AddressFamilies()
        # NumPrimaryGuards / NumEntryGuards: torrc values that win over the consensus.
        self.overrides: dict[str, int] = {}
        self._fixed_params = params
        self.params = params or GuardParams()
        self.netdir: NetDir | None = None
        # UseBridges: the bridges (from their own descriptors) are the only possible guards.
        self.bridges: dict[bytes, Relay] | None = None
        self.state_version = 0  # bumped on every change that to_json() would show
        self._sampled: list[_Guard] = []  # in sample order
        self._by_id: dict[bytes, _Guard] = {}
        self._primary: list[_Guard] = []
        self._primary_up_to_date = False
        self._next_confirmed_idx = 0
        self._last_time_on_internet = -math.inf

    # -- consensus ---------------------------------------------------------------------------

    def primary_guard_states(self) -> list[tuple[bytes, str, str]]:
        """(identity, nickname, "up"/"down"/"unknown") of the primary guards, in order."""
        states = {Reachable.UNKNOWN: "unknown"}
        return [
            (
                g.rsa_id,
                g.nickname,
                states.get(g.reachable, "up" if g.failing_since is None else "down"),
            )
            for g in self._primary
        ]

    def guard_states(self) -> dict[bytes, tuple[str, str]]:
        """Every sampled guard: identity -> (nickname, C tor's GUARD event state: "UP",
        "DOWN", "UNKNOWN", or "BAD" while the consensus does not list it as a guard)."""
        out = {}
        for g in self._sampled:
            if not g.listed:
                state = "BAD"
            elif g.reachable is Reachable.YES:
                state = "UP"
            elif g.reachable is Reachable.NO:
                state = "DOWN"
            else:
                state = "UNKNOWN"
            out[g.rsa_id] = (g.nickname, state)
        return out

    def drop_all(self, now: float) -> None:
        """Forget every guard (the control port's DROPGUARDS) and sample afresh."""
        self._sampled = []
        self._by_id = {}
        self._primary = []
        self._next_confirmed_idx = 0
        self._primary_up_to_date = False
        self._changed()
        if self.netdir is not None:
            self._update_primary(now)

    def set_bridges(self, bridges: Iterable[Relay], now: float) -> None:
        """UseBridges: these bridges (with the keys of their descriptors) are the candidates
        from now on; call again whenever a descriptor arrives or changes."""
        self.bridges = {b.rsa_id: b for b in bridges}
        self._primary_up_to_date = False
        if self.netdir is not None:
            self.set_netdir(self.netdir, now)

    def lookup(self, rsa_id: bytes) -> Relay | None:
        """The guard as a relay we could connect to now: a bridge, or a consensus entry."""
        if self.bridges is not None:
            return self.bridges.get(rsa_id)
        return self.netdir.by_rsa_id(rsa_id) if self.netdir is not None else None

    def set_netdir(self, netdir: NetDir, now: float) -> None:
        """A new consensus (guard-spec §4.10): update IS_LISTED, expire old entries, refill.

        Pass only a reasonably live consensus (C tor: up to 24 h past valid-until); a stale
        one would mark guards unlisted and start their removal clocks."""
        self.netdir = netdir
        if self._fixed_params is None:
            self.params = replace(GuardParams.from_netdir(netdir), **self.overrides)
        slop = self.params.remove_unlisted_after / 5
        for g in self._sampled:
            listed = is_possible_guard(self.lookup(g.rsa_id))
            if listed and not g.listed:
                g.listed, g.unlisted_since = True, None
                self._changed()
            elif not listed and g.listed:
                # guard-spec A.2: randomise the start date, so expiry does not reveal it.
                g.listed, g.unlisted_since = False, self.rng.uniform(now - slop, now)
                self._changed()
        self._prune(now)
        self._update_primary(now)  # also tops up the sample (C tor entry_guards_update_all)

    def _prune(self, now: float) -> None:
        p = self.params
        keep: list[_Guard] = []
        for g in self._sampled:
            unlisted_too_long = (
                not g.listed
                and g.unlisted_since is not None
                and g.unlisted_since < now - p.remove_unlisted_after
            )
            too_old = g.sampled_on < now - p.lifetime and (
                g.confirmed_on is None or g.confirmed_on < now - p.confirmed_min_lifetime
            )
            if unlisted_too_long or too_old:
                del self._by_id[g.rsa_id]
                self._changed()
            else:
                keep.append(g)
        self._sampled = keep
        self._renumber_confirmed()
        self._primary = [g for g in self._primary if g.rsa_id in self._by_id]

    # -- selection ---------------------------------------------------------------------------

    def select_guard(
        self,
        now: float,
        *,
        avoid: Sequence[Relay] = (),
        exclude: Sequence[Relay] = (),
        purpose: GuardPurpose = GuardPurpose.TRAFFIC,
    ) -> tuple[Relay, GuardUsage]:
        """A guard for a new circuit (guard-spec §4.6), never one related to a relay in
        ``avoid`` (pass the chosen exit: C tor's exit restriction), nor one of the guards
        in ``exclude`` (the other legs of a conflux set, prop 354: another of the primary
        guards in use if there is one, only then the next primary)."""
        self._require_netdir()
        if not self._primary_up_to_date:
            self._update_primary(now)
        need_md = purpose is GuardPurpose.TRAFFIC

        def relay_if_usable(g: _Guard) -> Relay | None:
            relay = self.lookup(g.rsa_id)
            if relay is None or (need_md and not relay.has_md):
                return None
            if not self._reachable(relay):
                return None
            if any(self._related_ids(g, relay, a) for a in avoid):
                return None
            return relay

        # 1. The first N_USABLE reachable primary guards; pick one of them uniformly.
        n_use = (
            self.params.n_primary_to_use
            if purpose is GuardPurpose.TRAFFIC
            else self.params.n_primary_dir_to_use
        )
        usable: list[tuple[_Guard, Relay]] = []
        for g in self._primary:
            self._consider_retry(g, now)
            if g.reachable is Reachable.NO:
                continue
            relay = relay_if_usable(g)
            if relay is not None:
                usable.append((g, relay))
                if len(usable) >= n_use:
                    break
        excluded_ids = {r.rsa_id for r in exclude}
        if excluded_ids:
            window = len(usable)
            usable = [(g, r) for g, r in usable if g.rsa_id not in excluded_ids]
            if not usable:  # every guard in use is taken: the next primaries, as C tor
                for g in self._primary:
                    if g.rsa_id in excluded_ids or g.reachable is Reachable.NO:
                        continue
                    relay = relay_if_usable(g)
                    if relay is not None:
                        usable.append((g, relay))
                        if len(usable) >= max(1, n_use - window + 1):
                            break
        if usable:
            g, relay = self.rng.choice(usable)
            g.last_tried = now
            return relay, self._usage(g, purpose, CircGuardState.USABLE_ON_COMPLETION, now, avoid)

        # 2. A confirmed, non-primary, non-pending usable guard; 3. the next one in the sample.
        for g in self._confirmed_in_sample_order():
            if g.primary or g.pending or g.rsa_id in excluded_ids:
                continue
            self._consider_retry(g, now)
            if self._usable_filtered(g) and (relay := relay_if_usable(g)) is not None:
                return self._try_nonprimary(g, relay, purpose, now, avoid)
        self._expand_sample(now)
        for g in self._sampled:
            if g.primary or g.pending or g.confirmed_idx is not None or g.rsa_id in excluded_ids:
                continue
            self._consider_retry(g, now)
            if self._usable_filtered(g) and (relay := relay_if_usable(g)) is not None:
                return self._try_nonprimary(g, relay, purpose, now, avoid)

        if excluded_ids:
            # Nothing left besides the guards the other legs use: that says nothing about
            # whether guards are down, so no reset (a dead guard would be retried at once).
            raise NoPathError("no usable entry guard that the other conflux legs do not use")
        # 4. Everything is down: retry them all next time (guard-spec §4.6, last bullet).
        for g in self._sampled:
            if g.reachable is Reachable.NO:
                g.reachable = Reachable.UNKNOWN
        raise NoPathError(
            f"no usable entry guard among {len(self._sampled)} sampled guards"
            + (" that avoid the exit's family" if avoid else "")
            + "; all marked for retry"
        )

    def select_directory_guard(
        self, now: float, *, avoid: Sequence[Relay] = ()
    ) -> tuple[Relay, GuardUsage]:
        """A guard for a one-hop directory fetch: one of the first 3 reachable primaries."""
        return self.select_guard(now, avoid=avoid, purpose=GuardPurpose.DIRECTORY)

    def _try_nonprimary(
        self,
        g: _Guard,
        relay: Relay,
        purpose: GuardPurpose,
        now: float,
        avoid: Sequence[Relay],
    ) -> tuple[Relay, GuardUsage]:
        g.pending, g.last_tried = True, now
        return relay, self._usage(g, purpose, CircGuardState.USABLE_IF_NO_BETTER_GUARD, now, avoid)

    @staticmethod
    def _usage(
        g: _Guard, purpose: GuardPurpose, state: CircGuardState, now: float, avoid: Sequence[Relay]
    ) -> GuardUsage:
        return GuardUsage(g.rsa_id, purpose, state, now, tuple(avoid))

    # -- outcomes ----------------------------------------------------------------------------

    def record_success(self, usage: GuardUsage | Relay, now: float) -> bool:
        """The circuit's first hop works (guard-spec §4.8).  True if the circuit may be used
        now; False if it must wait for better guards (see :meth:`upgrade_waiting`).

        Pass the :class:`GuardUsage` from ``select_guard``; a bare :class:`Relay` is accepted
        and treated as a fresh selection of that guard."""
        usage = self._as_usage(usage, now)
        g = self._by_id.get(usage.rsa_id)
        if g is None:  # dropped from the sample meanwhile
            usage.state, usage.state_set_at = CircGuardState.DEAD, now
            return False
        last_on_internet, self._last_time_on_internet = self._last_time_on_internet, now
        g.reachable, g.failing_since, g.pending = Reachable.YES, None, False
        if g.confirmed_idx is None:
            # guard-spec §4.3; the date is randomised into the past (A.2).
            g.confirmed_on = self.rng.uniform(now - self.params.lifetime / 10, now)
            g.confirmed_idx = self._next_confirmed_idx
            self._next_confirmed_idx += 1
            self._changed()
            self._update_primary(now)
        if usage.state is CircGuardState.USABLE_IF_NO_BETTER_GUARD and not g.primary:
            new_state = CircGuardState.WAITING_FOR_BETTER_GUARD
        else:
            new_state = CircGuardState.COMPLETE
        if not g.primary and last_on_internet + self.params.internet_likely_down_interval < now:
            # We were probably offline, so the primaries' failures mean little: retry them.
            for p in self._primary:
                if p.reachable is Reachable.NO:
                    p.reachable = Reachable.UNKNOWN
        usage.state, usage.state_set_at = new_state, now
        return new_state is CircGuardState.COMPLETE

    def record_failure(self, usage: GuardUsage | Relay, now: float) -> None:
        """We could not connect to the guard or build the first hop (guard-spec §4.7)."""
        usage = self._as_usage(usage, now)
        usage.state, usage.state_set_at = CircGuardState.DEAD, now
        g = self._by_id.get(usage.rsa_id)
        if g is None:
            return
        g.reachable, g.pending = Reachable.NO, False
        if g.failing_since is None:
            g.failing_since = now
        if g.last_tried is None:  # retry delays count from the last attempt
            g.last_tried = now

    def _as_usage(self, guard: GuardUsage | Relay, now: float) -> GuardUsage:
        if isinstance(guard, GuardUsage):
            return guard
        g = self._by_id.get(guard.rsa_id)
        state = (
            CircGuardState.USABLE_ON_COMPLETION
            if g is None or g.primary
            else CircGuardState.USABLE_IF_NO_BETTER_GUARD
        )
        return GuardUsage(guard.rsa_id, GuardPurpose.TRAFFIC, state, now)

    def cancel(self, usage: GuardUsage) -> None:
        """Forget a selection without judging the guard (the circuit failed beyond it)."""
        g = self._by_id.get(usage.rsa_id)
        if g is not None:
            g.pending = False

    def all_primary_down(self, now: float) -> bool:
        if not self._primary_up_to_date:
            self._update_primary(now)
        for g in self._primary:
            self._consider_retry(g, now)
        return all(g.reachable is Reachable.NO for g in self._primary)

    def upgrade_waiting(self, usages: Iterable[GuardUsage], now: float) -> list[GuardUsage]:
        """guard-spec §4.9: which <waiting_for_better_guard> circuits may now be used.

        ``usages``: the guard usages of all live circuits.  Returns (and marks COMPLETE) the
        waiting ones that no better circuit blocks, once every primary guard is down.
        """
        live = [u for u in usages if u.rsa_id in self._by_id]
        waiting = [u for u in live if u.state is CircGuardState.WAITING_FOR_BETTER_GUARD]
        if not waiting or not self.all_primary_down(now):
            return []
        best = waiting[0]
        for u in waiting[1:]:
            if self._higher_priority(u, best):
                best = u
        cutoff = now - self.params.nonprimary_connect_timeout
        for u in live:
            blocks_if_better = u.state is CircGuardState.COMPLETE or (
                u.state is CircGuardState.USABLE_IF_NO_BETTER_GUARD and u.state_set_at > cutoff
            )
            if blocks_if_better and self._obeys(u, best.avoid) and self._higher_priority(u, best):
                return []
        upgraded = []
        for u in waiting:
            if u is not best and (best.avoid or self._higher_priority(best, u)):
                continue
            u.state, u.state_set_at = CircGuardState.COMPLETE, now
            upgraded.append(u)
        return upgraded

    def usage_expired(self, usage: GuardUsage, now: float) -> bool:
        """A circuit left waiting for a better guard too long should be closed (§4.9)."""
        return (
            usage.state is CircGuardState.WAITING_FOR_BETTER_GUARD
            and usage.state_set_at + self.params.nonprimary_idle_timeout < now
        )

    # -- introspection ---------------------------------------------------------------------------

    def primary_guards(self, now: float) -> list[bytes]:
        if not self._primary_up_to_date:
            self._update_primary(now)
        return [g.rsa_id for g in self._primary]

    def sampled_guards(self) -> list[bytes]:
        return [g.rsa_id for g in self._sampled]

    def confirmed_guards(self) -> list[bytes]:
        """In order of confirmation."""
        confirmed = [g for g in self._sampled if g.confirmed_idx is not None]
        return [g.rsa_id for g in sorted(confirmed, key=lambda g: g.confirmed_idx or 0)]

    def reachability(self, rsa_id: bytes) -> Reachable | None:
        g = self._by_id.get(rsa_id)
        return None if g is None else g.reachable

    # -- internals -----------------------------------------------------------------------------

    def _require_netdir(self) -> NetDir:
        if self.netdir is None:
            raise NoPathError("no consensus yet: cannot choose an entry guard")
        return self.netdir

    def _changed(self) -> None:
        self.state_version += 1

    def _consider_retry(self, g: _Guard, now: float) -> None:
        """guard-spec §4.5: after its retry delay a failed guard is worth trying again."""
        if g.reachable is not Reachable.NO:
            return
        last = g.last_tried if g.last_tried is not None else -math.inf
        failing_since = g.failing_since if g.failing_since is not None else now
        if now >= last + retry_delay(failing_since, now, g.primary):
            g.reachable = Reachable.UNKNOWN

    def _reachable(self, relay: Relay) -> bool:
        return self.families.can_reach((relay.address, relay.or_port), relay.ipv6)

    def _usable_filtered(self, g: _Guard) -> bool:
        # {FILTERED_GUARDS} = listed sampled guards that we can connect to (ClientUseIPv4/6;
        # we have no EntryNodes/ExcludeNodes); {USABLE_FILTERED_GUARDS} additionally
        # excludes the known-unreachable ones.
        if not g.listed or g.reachable is Reachable.NO:
            return False
        relay = self.lookup(g.rsa_id)
        return relay is None or self._reachable(relay)

    def _confirmed_in_sample_order(self) -> list[_Guard]:
        return [g for g in self._sampled if g.confirmed_idx is not None]

    def _renumber_confirmed(self) -> None:
        confirmed = [g for g in self._sampled if g.confirmed_idx is not None]
        confirmed.sort(key=lambda g: g.confirmed_idx or 0)
        for i, g in enumerate(confirmed):
            g.confirmed_idx = i
        self._next_confirmed_idx = len(confirmed)

    def _related_ids(self, g: _Guard, relay: Relay, other: Relay) -> bool:
        if g.rsa_id == other.rsa_id:
            return True
        return related(relay, other, enforce_distinct_subnets=self.enforce_distinct_subnets)

    def _obeys(self, usage: GuardUsage, avoid: Sequence[Relay]) -> bool:
        g = self._by_id[usage.rsa_id]
        relay = self.lookup(g.rsa_id)
        if relay is None:
            return all(a.rsa_id != g.rsa_id for a in avoid)
        return not any(self._related_ids(g, relay, a) for a in avoid)

    def _higher_priority(self, a: GuardUsage, b: GuardUsage) -> bool:
        """guard-spec §4.3 priority of a's guard over b's (C tor entry_guard_has_higher_priority)."""
        ga, gb = self._by_id[a.rsa_id], self._by_id[b.rsa_id]
        if ga is gb:
            return False
        if ga.confirmed_idx is not None or gb.confirmed_idx is not None:
            if ga.confirmed_idx is None:
                return False
            if gb.confirmed_idx is None:
                return True
            return ga.confirmed_idx < gb.confirmed_idx
        if ga.pending != gb.pending:
            return ga.pending
        if ga.pending:
            return (ga.last_tried or 0.0) < (gb.last_tried or 0.0)
        return False

    def _update_primary(self, now: float) -> None:
        """guard-spec §4.4: confirmed guards first, then earlier primaries, then the sample."""
        n = self.params.n_primary
        new: list[_Guard] = []
        for g in self._confirmed_in_sample_order():
            if len(new) >= n:
                break
            if g.listed:
                new.append(g)
        for g in self._primary:  # an old primary stays until a confirmed guard displaces it
            if len(new) < n and g not in new and g.listed and g.rsa_id in self._by_id:
                new.append(g)
        if len(new) < n:
            self._expand_sample(now)
            for g in self._sampled:
                if len(new) >= n:
                    break
                if g in new or g.confirmed_idx is not None:
                    continue
                self._consider_retry(g, now)
                if self._usable_filtered(g):
                    new.append(g)
        new.sort(key=lambda g: g.sampled_idx)  # C tor keeps primaries in sample order
        for g in self._sampled:
            g.primary = False
        for g in new:
            g.primary = True
        self._primary = new
        self._primary_up_to_date = True

    def _expand_sample(self, now: float) -> None:
        """guard-spec §4.1/4.2: sample bandwidth-weighted guards until enough are usable."""
        netdir = self.netdir
        if netdir is None:
            return
        p = self.params
        if self.bridges is not None:
            # C tor samples every configured bridge (no bandwidth weights, no 20 % cap).
            guards = list(self.bridges.values())
            weights: BandwidthWeights | None = None
        else:
            guards = [r for r in netdir.relays if is_possible_guard(r)]
            weights = BandwidthWeights(netdir)
        max_sample = max(min(int(len(guards) * p.max_sample_threshold), p.max_sample_size),
                         p.min_filtered_sample)  # fmt: skip
        n_usable = 0
        for g in self._sampled:
            self._consider_retry(g, now)
            n_usable += self._usable_filtered(g)
        if n_usable >= p.min_filtered_sample or len(self._sampled) >= max_sample:
            return
        eligible = [(r, weights.weight(r, Position.GUARD) if weights else 0) for r in guards
                    if r.rsa_id not in self._by_id]  # fmt: skip
        total = sum(w for _, w in eligible)
        while n_usable < p.min_filtered_sample and len(self._sampled) < max_sample and eligible:
            if total > 0:
                x = self.rng.randrange(total)
                i = 0
                while x >= eligible[i][1]:
                    x -= eligible[i][1]
                    i += 1
            else:  # all weights 0: uniform, as C tor's choose_array_element_by_weight
                i = self.rng.randrange(len(eligible))
            relay, w = eligible.pop(i)
            total -= w
            self._add_to_sample(relay, now)
            n_usable += self._reachable(relay)

    def _add_to_sample(self, relay: Relay, now: float) -> None:
        sampled_on = self.rng.uniform(now - self.params.lifetime / 10, now)  # A.2
        idx = self._sampled[-1].sampled_idx + 1 if self._sampled else 0
        g = _Guard(relay.rsa_id, relay.nickname, sampled_on, idx)
        self._sampled.append(g)
        self._by_id[g.rsa_id] = g
        self._changed()

    # -- persistence ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The persistent state (guard-spec §4.1/§4.3 "pvar"s) as JSON-ready data."""
        entries = []
        for g in self._sampled:
            entry: dict[str, Any] = dict(g.extra)
            entry.update(
                rsa_id=g.rsa_id.hex().upper(),
                nickname=g.nickname,
                sampled_on=round(g.sampled_on),
                listed=g.listed,
                unlisted_since=None if g.unlisted_since is None else round(g.unlisted_since),
                confirmed_on=None if g.confirmed_on is None else round(g.confirmed_on),
                confirmed_idx=g.confirmed_idx,
            )
            entries.append(entry)
        return {"version": STATE_VERSION, "guards": entries}

    @classmethod
    def from_json(
        cls,
        data: object,
        now: float,
        *,
        rng: Random | None = None,
        enforce_distinct_subnets: bool = True,
        params: GuardParams | None = None,
    ) -> tuple[GuardManager, str | None]:
        """Restore a manager.  Returns ``(manager, problem)``: ``problem`` is None if the state
        was fully usable; otherwise a reason to log.  A state we cannot read at all gives a
        fresh manager; single malformed entries are dropped (keeping the good guards is safer
        than choosing new ones)."""
        mgr = cls(rng=rng, enforce_distinct_subnets=enforce_distinct_subnets, params=params)
        if not isinstance(data, dict):
            return mgr, "guard state is not a JSON object; starting with fresh guards"
        if data.get("version") != STATE_VERSION:
            return mgr, f"unknown guard state version {data.get('version')!r}; starting fresh"
        entries = data.get("guards")
        if not isinstance(entries, list):
            return mgr, "guard state has no guard list; starting with fresh guards"
        problems: list[str] = []
        for n, entry in enumerate(entries):
            try:
                g = _guard_from_json(entry, len(mgr._sampled), now)
            except (TypeError, ValueError, KeyError) as e:
                problems.append(f"entry {n}: {e}")
                continue
            if g.rsa_id in mgr._by_id:
                problems.append(f"entry {n}: duplicate guard {g.rsa_id.hex().upper()}")
                continue
            mgr._sampled.append(g)
            mgr._by_id[g.rsa_id] = g
        mgr._renumber_confirmed()
        if problems:
            return mgr, "dropped malformed guard state entries: " + "; ".join(problems)
        return mgr, None


def _guard_from_json(entry: object, idx: int, now: float) -> _Guard:
    if not isinstance(entry, dict):
        raise TypeError("not an object")
    rsa_id = bytes.fromhex(_typed(entry, "rsa_id", str))
    if len(rsa_id) != 20:
        raise ValueError("rsa_id is not 20 bytes")

    def when(key: str, optional: bool) -> float | None:
        value = entry.get(key)
        if value is None and optional:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{key} is not a time")
        return min(float(value), now)  # a date in the future: our clock went back

    known = {"rsa_id", "nickname", "sampled_on", "listed", "unlisted_since", "confirmed_on",
             "confirmed_idx"}  # fmt: skip
    confirmed_idx = entry.get("confirmed_idx")
    if confirmed_idx is not None and (
        isinstance(confirmed_idx, bool) or not isinstance(confirmed_idx, int)
    ):
        raise ValueError("confirmed_idx is not an integer")
    confirmed_on = when("confirmed_on", True)
    listed = _typed(entry, "listed", bool)
    sampled_on = when("sampled_on", False)
    assert sampled_on is not None
    return _Guard(
        rsa_id=rsa_id,
        nickname=str(entry.get("nickname", "")),
        sampled_on=sampled_on,
        sampled_idx=idx,
        listed=listed,
        unlisted_since=None if listed else (when("unlisted_since", True) or now),
        confirmed_on=confirmed_on if confirmed_idx is not None else None,
        confirmed_idx=confirmed_idx if confirmed_on is not None else None,
        extra={k: v for k, v in entry.items() if k not in known},
    )


def _typed(entry: dict[str, Any], key: str, typ: type) -> Any:
    value = entry[key]
    if not isinstance(value, typ):
        raise TypeError(f"{key} is not {typ.__name__}")
    return value
