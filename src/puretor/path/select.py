"""Bandwidth-weighted relay selection for circuit paths (path-spec §2.2, spec-map §6.1–6.2).

A :class:`PathSelector` wraps one :class:`~puretor.dir.netdir.NetDir`.  For each position
(guard, middle, exit, directory cache) and each set of *static* requirements (flags, exit port)
it builds once a table of candidates with cumulative integer weights; a choice is then one
``randrange`` plus a ``bisect``.  Per-path constraints (no relay twice, families, subnets,
``exclude``) are applied by rejection: draw from the static table and redraw if the relay clashes
with the path so far.  Conditioning by rejection gives exactly the weighted distribution over the
allowed relays; if it keeps failing we fall back to an exact linear pass over the table.

Weights (path-spec §2.2, C tor ``compute_weighted_bandwidths``)::

    weight = Bandwidth × W[position][role] × (Wxb[role] if V2Dir and position ≠ dir) / scale²

where role is Guard-only / Exit-only / Guard+Exit / neither (``Exit`` counts only without
``BadExit``).  The constant ``/ scale²`` does not change proportions, so we keep exact integers.
If every allowed candidate has weight 0 we choose uniformly, as C tor does.
"""

from __future__ import annotations

import bisect
import enum
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from random import Random

from puretor.dir.netdir import NetDir, Relay
from puretor.errors import NoPathError
from puretor.path.relations import family_tokens, keys_collide, subnet_keys

# path-spec §2.2: ports whose connections are expected to stay open long ⇒ need Stable relays.
LONG_LIVED_PORTS = frozenset({21, 22, 706, 1863, 5050, 5190, 5222, 5223, 6667, 6697, 8300})

# Draws before giving up on rejection sampling and filtering the table exactly.
_MAX_REJECTION_TRIES = 64


class Position(enum.Enum):
    GUARD = "guard"
    MIDDLE = "middle"
    EXIT = "exit"
    DIRECTORY = "directory"


# spec-map §6.1 table.  Roles: g = Guard only, e = Exit (non-BadExit) only, d = both, m = neither.
# None means a fixed weight of 0 (C tor: "We = 0" when choosing guards).
_WEIGHT_NAMES: dict[Position, dict[str, str | None]] = {
    Position.GUARD: {"g": "Wgg", "e": None, "d": "Wgd", "m": "Wgm"},
    Position.MIDDLE: {"g": "Wmg", "e": "Wme", "d": "Wmd", "m": "Wmm"},
    Position.EXIT: {"g": "Weg", "e": "Wee", "d": "Wed", "m": "Wem"},
    Position.DIRECTORY: {"g": "Wbg", "e": "Wbe", "d": "Wbd", "m": "Wbm"},
}
# The extra factor for relays that serve BEGIN_DIR (V2Dir), all positions but DIRECTORY.
_DIR_FACTOR_NAMES = {"g": "Wgb", "e": "Web", "d": "Wdb", "m": "Wmb"}


def relay_role(relay: Relay) -> str:
    """The weight-table column for ``relay``: ``g``, ``e``, ``d`` or ``m``."""
    guard = "Guard" in relay.flags
    exit_ = "Exit" in relay.flags and "BadExit" not in relay.flags
    return ("d" if exit_ else "g") if guard else ("e" if exit_ else "m")


class BandwidthWeights:
    """Integer selection weights for every (relay, position) of one consensus."""

    def __init__(self, netdir: NetDir) -> None:
        self.scale = netdir.param("bwweightscale", 10000, 1, 2**31 - 1)
        names = {n for table in _WEIGHT_NAMES.values() for n in table.values() if n}
        names |= set(_DIR_FACTOR_NAMES.values())
        raw = {n: netdir.weight(n) for n in names}
        # C tor: any negative weight ⇒ distrust them all and weight by bandwidth alone.
        if any(v < 0 for v in raw.values()):
            raw = dict.fromkeys(raw, self.scale)
        self._w = raw

    def weight(self, relay: Relay, position: Position) -> int:
        role = relay_role(relay)
        name = _WEIGHT_NAMES[position][role]
        if name is None:
            return 0
        w = max(relay.bandwidth, 0) * self._w[name]
        if position is Position.DIRECTORY:
            return w * self.scale
        dir_factor = self._w[_DIR_FACTOR_NAMES[role]] if "V2Dir" in relay.flags else self.scale
        return w * dir_factor


@dataclass(frozen=True, slots=True)
class PathRequest:
    """What a circuit must be able to do.

    ``exit_port``: the target port (None: any exit that allows *something*, e.g. for RESOLVE or a
    preemptive circuit).  ``ipv6``: the target is an IPv6 address, so the exit's ``p6`` summary
    decides.  ``internal``: no exit needed (onion-service, HSDir and directory circuits).
    ``exclude``: RSA ids never to use in the exit or middle position (e.g. exits that answered
    END EXITPOLICY for this destination, path-spec §2.5).  ``need_fast`` may be turned off for
    low-bandwidth uses such as introduction circuits.  ``need_conflux``: the exit must be
    able to link conflux legs (prop 329: ``Conflux=1``) with congestion control on each
    (``FlowCtrl=2`` and ntor v3, ``Relay=4``), as C tor's CIRCLAUNCH_NEED_CONFLUX.
    """

    exit_port: int | None = None
    need_stable: bool = False
    ipv6: bool = False
    internal: bool = False
    exclude: frozenset[bytes] = frozenset()
    need_fast: bool = True
    need_conflux: bool = False

    @property
    def stable(self) -> bool:
        return self.need_stable or self.exit_port in LONG_LIVED_PORTS


def supports_conflux(relay: Relay) -> bool:
    """Whether ``relay`` can be the exit of a conflux set (with congestion control)."""
    return (
        relay.ed_id is not None
        and relay.supports("Conflux", 1)
        and relay.supports("FlowCtrl", 2)
        and relay.supports("Relay", 4)
    )


@dataclass(frozen=True, slots=True)
class _Table:
    relays: tuple[Relay, ...]
    weights: tuple[int, ...]
    cumulative: tuple[int, ...]  # cumulative[i] = sum(weights[: i + 1])

    @property
    def total(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0


@dataclass(slots=True)
class _Info:
    tokens: tuple[str, str]  # family-line names of this relay
    subnets: tuple[int | None, int | None]


_TableKey = tuple[Position, bool, bool, bool, tuple[int | None, bool, bool] | None]


class PathSelector:
    """Chooses relays from one NetDir.  Build a new selector when the NetDir changes.

    ``require_exit_flag``: C tor does not require the ``Exit`` flag of an exit, only a policy
    summary that accepts the port (``choose_good_exit_server_general``); the Weg/Wem weights
    exist for such relays.  Set it to insist on the flag anyway.
    """

    def __init__(
        self,
        netdir: NetDir,
        *,
        enforce_distinct_subnets: bool = True,
        require_exit_flag: bool = False,
        rng: Random | None = None,
    ) -> None:
        self.netdir = netdir
        self.enforce_distinct_subnets = enforce_distinct_subnets
        self.require_exit_flag = require_exit_flag
        self.rng: Random = rng if rng is not None else secrets.SystemRandom()
        self.weights = BandwidthWeights(netdir)
        self._tables: dict[_TableKey, _Table] = {}
        self._info: dict[bytes, _Info] = {}

    # -- public choices ------------------------------------------------------------------------

    def choose_exit(self, req: PathRequest, path_so_far: Sequence[Relay] = ()) -> Relay:
        """An exit for ``req`` (path-spec §2.2.1), avoiding ``path_so_far`` and its families."""
        if req.internal:
            raise ValueError("internal circuits have no exit; use choose_last_hop_internal")
        table = self._table(Position.EXIT, req)
        return self._choose(table, path_so_far, req.exclude, lambda: self._no_exit_msg(req))

    def choose_last_hop_internal(
        self, req: PathRequest, path_so_far: Sequence[Relay] = ()
    ) -> Relay:
        """Last hop of an internal circuit (HSDir, intro, rendezvous): weighted like a middle
        (C tor ``choose_good_exit_server`` with ``is_internal``)."""
        table = self._table(Position.MIDDLE, req)
        return self._choose(table, path_so_far, req.exclude, lambda: "no relay for the last hop")

    def choose_middle(self, path_so_far: Sequence[Relay], req: PathRequest) -> Relay:
        table = self._table(Position.MIDDLE, req)
        return self._choose(table, path_so_far, req.exclude, lambda: "no relay for the middle hop")

    def choose_guard(
        self,
        req: PathRequest,
        path_so_far: Sequence[Relay] = (),
        exclude: frozenset[bytes] = frozenset(),
    ) -> Relay:
        """A fresh bandwidth-weighted Guard-flagged first hop, not one of ``exclude``.
        Normal circuits take their guard from :class:`~puretor.path.guards.GuardManager`
        instead; this is for ``UseEntryGuards 0`` and callers without persistent guards."""
        table = self._table(Position.GUARD, req)
        return self._choose(table, path_so_far, exclude, lambda: "no usable guard relay")

    def choose_directory_cache(self, exclude: Iterable[bytes] = ()) -> Relay:
        """A V2Dir relay to fetch directory documents from, weighted with the Wb* weights."""
        table = self._table(Position.DIRECTORY, PathRequest(need_fast=False, internal=True))
        return self._choose(table, (), frozenset(exclude), lambda: "no directory cache")

    def choose_path(self, req: PathRequest, guard: Relay | None = None) -> list[Relay]:
        """A full 3-hop path ``[guard, middle, last]``.

        With ``guard=None`` the guard is drawn fresh, in the path-spec §2.2 order: last hop
        first, then the guard, then the middle.  With a given guard (from the guard manager)
        the last hop avoids it and its family.  Prefer :func:`puretor.path.choose_path_with_guards`,
        which keeps the exit-first order and tells the guard manager to avoid the exit's family.
        """
        first: list[Relay] = [guard] if guard is not None else []
        if req.internal:
            last = self.choose_last_hop_internal(req, first)
        else:
            last = self.choose_exit(req, first)
        if guard is None:
            guard = self.choose_guard(req, [last])
        middle = self.choose_middle([guard, last], req)
        return [guard, middle, last]

    # -- constraints ------------------------------------------------------------------------

    def related(self, a: Relay, b: Relay) -> bool:
        """Same relay, same family, or (if enforced) same /16 or /32: never on one circuit."""
        if a.rsa_id == b.rsa_id:
            return True
        ia, ib = self._relay_info(a), self._relay_info(b)
        if self.enforce_distinct_subnets and keys_collide(ia.subnets, ib.subnets):
            return True
        if a.family_ids and not a.family_ids.isdisjoint(b.family_ids):
            return True
        if not a.family or not b.family:
            return False
        a_lists_b = ib.tokens[0] in a.family or ib.tokens[1] in a.family
        return a_lists_b and (ia.tokens[0] in b.family or ia.tokens[1] in b.family)

    def eligible(self, relay: Relay, position: Position, req: PathRequest) -> bool:
        """Whether ``relay`` meets the static (per-relay) requirements of ``position``."""
        flags = relay.flags
        if "Running" not in flags or "Valid" not in flags:
            return False
        if position is Position.DIRECTORY:
            # One-hop BEGIN_DIR needs no microdescriptor (CREATE_FAST), and no Fast/Stable.
            return "V2Dir" in flags and "MiddleOnly" not in flags
        if not relay.has_md:
            return False
        if req.need_fast and "Fast" not in flags:
            return False
        if req.stable and "Stable" not in flags:
            return False
        if position is Position.GUARD:
            return "Guard" in flags and "MiddleOnly" not in flags
        if position is Position.EXIT:
            if "BadExit" in flags or "MiddleOnly" in flags:
                return False
            if self.require_exit_flag and "Exit" not in flags:
                return False
            if req.need_conflux and not supports_conflux(relay):
                return False
            policy = relay.policy6 if req.ipv6 else relay.policy
            if req.exit_port is None:
                return policy.allows_any  # path-spec §2.2: not equivalent to "reject *:*"
            return policy.allows(req.exit_port)
        return True

    # -- internals ---------------------------------------------------------------------------

    def _relay_info(self, relay: Relay) -> _Info:
        info = self._info.get(relay.rsa_id)
        if info is None:
            info = _Info(family_tokens(relay), subnet_keys(relay))
            self._info[relay.rsa_id] = info
        return info

    def _table(self, position: Position, req: PathRequest) -> _Table:
        port_key = (
            (req.exit_port, req.ipv6, req.need_conflux) if position is Position.EXIT else None
        )
        if position is Position.DIRECTORY:
            key: _TableKey = (position, False, False, False, None)
        else:
            key = (position, True, req.need_fast, req.stable, port_key)
        table = self._tables.get(key)
        if table is None:
            relays = tuple(r for r in self.netdir.relays if self.eligible(r, position, req))
            weights = tuple(self.weights.weight(r, position) for r in relays)
            cumulative: list[int] = []
            running = 0
            for w in weights:
                running += w
                cumulative.append(running)
            table = _Table(relays, weights, tuple(cumulative))
            if len(self._tables) > 256:  # many distinct exit ports: keep memory bounded
                self._tables.clear()
            self._tables[key] = table
        return table

    def _choose(
        self,
        table: _Table,
        path_so_far: Sequence[Relay],
        exclude: frozenset[bytes],
        describe: Callable[[], str],
    ) -> Relay:
        if not table.relays:
            raise NoPathError(describe())

        def rejected(r: Relay) -> bool:
            return r.rsa_id in exclude or any(self.related(r, p) for p in path_so_far)

        total = table.total
        if total > 0:
            for _ in range(_MAX_REJECTION_TRIES):
                i = bisect.bisect_right(table.cumulative, self.rng.randrange(total))
                if not rejected(table.relays[i]):
                    return table.relays[i]
        # Exact fallback: filter, then weighted (or, if all weights are 0, uniform) choice.
        allowed = [
            (r, w) for r, w in zip(table.relays, table.weights, strict=True) if not rejected(r)
        ]
        if not allowed:
            raise NoPathError(
                f"{describe()}: all {len(table.relays)} candidates clash with the path "
                "(same relay, family or subnet) or are excluded"
            )
        allowed_total = sum(w for _, w in allowed)
        if allowed_total == 0:
            return self.rng.choice(allowed)[0]
        x = self.rng.randrange(allowed_total)
        for r, w in allowed:
            if x < w:
                return r
            x -= w
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _no_exit_msg(req: PathRequest) -> str:
        family = " over IPv6" if req.ipv6 else ""
        stable = " (Stable relays only)" if req.stable else ""
        conflux = " and supports conflux" if req.need_conflux else ""
        if req.exit_port is None:
            return f"no exit allows any port{family}{conflux}{stable}"
        return f"no exit allows port {req.exit_port}{family}{conflux}{stable}"
