"""Path selection, entry guards and stream isolation (path-spec §2, guard-spec).

* :mod:`puretor.path.select` — bandwidth-weighted relay choice per position;
* :mod:`puretor.path.guards` — the persistent guard sample and primary guards;
* :mod:`puretor.path.relations` — family and subnet rules;
* :mod:`puretor.path.isolation` — which streams may share a circuit;
* :mod:`puretor.path.pool` — which circuit carries a stream, which to build and close;
* :mod:`puretor.path.cbt` — the learned circuit build timeout.
"""

from __future__ import annotations

from collections.abc import Sequence

from puretor.dir.netdir import Relay
from puretor.errors import NoPathError
from puretor.path.guards import GuardManager, GuardUsage
from puretor.path.select import PathRequest, PathSelector


def choose_first_hops(
    selector: PathSelector,
    guards: GuardManager | None,
    req: PathRequest,
    now: float,
    last: Relay | None,
    *,
    avoid_guards: Sequence[Relay] = (),
    unreachable: frozenset[bytes] = frozenset(),
) -> tuple[Relay, Relay, GuardUsage | None]:
    """Guard and middle for a path to ``last`` (None: a last hop we only know by its link
    specifiers).  The guard comes from the guard manager, avoiding ``last`` and its family
    and the guards in ``avoid_guards`` (the other legs of a conflux set); with ``guards``
    None (UseEntryGuards 0, as C tor) it is a fresh bandwidth-weighted Guard-flagged relay,
    not one of ``unreachable``.  The middle avoids both and ``req.exclude``."""
    avoid = [last] if last is not None else []
    usage: GuardUsage | None = None
    if guards is not None:
        guard, usage = guards.select_guard(now, avoid=avoid, exclude=avoid_guards)
    else:
        exclude = unreachable | {r.rsa_id for r in avoid_guards}
        guard = selector.choose_guard(req, avoid, exclude)
    try:
        middle = selector.choose_middle([guard, *avoid], req)
    except NoPathError:
        if usage is not None and guards is not None:
            guards.cancel(usage)
        raise
    return guard, middle, usage


def choose_path_with_guards(
    selector: PathSelector, guards: GuardManager, req: PathRequest, now: float
) -> tuple[list[Relay], GuardUsage]:
    """``[guard, middle, last]`` in path-spec §2.2 order: the last hop first, then a guard from
    the guard manager that avoids it and its family, then the middle."""
    last = selector.choose_last_hop_internal(req) if req.internal else selector.choose_exit(req)
    guard, middle, usage = choose_first_hops(selector, guards, req, now, last)
    assert usage is not None
    return [guard, middle, last], usage


__all__ = ["choose_first_hops", "choose_path_with_guards"]
