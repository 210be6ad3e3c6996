"""Path selection, entry guards and stream isolation (path-spec §2, guard-spec).

* :mod:`puretor.path.select` — bandwidth-weighted relay choice per position;
* :mod:`puretor.path.guards` — the persistent guard sample and primary guards;
* :mod:`puretor.path.relations` — family and subnet rules;
* :mod:`puretor.path.isolation` — which streams may share a circuit.
"""

from __future__ import annotations

from puretor.dir.netdir import Relay
from puretor.errors import NoPathError
from puretor.path.guards import GuardManager, GuardUsage
from puretor.path.select import PathRequest, PathSelector


def choose_path_with_guards(
    selector: PathSelector, guards: GuardManager, req: PathRequest, now: float
) -> tuple[list[Relay], GuardUsage]:
    """``[guard, middle, last]`` in path-spec §2.2 order: the last hop first, then a guard from
    the guard manager that avoids it and its family, then the middle."""
    last = selector.choose_last_hop_internal(req) if req.internal else selector.choose_exit(req)
    guard, usage = guards.select_guard(now, avoid=[last])
    try:
        middle = selector.choose_middle([guard, last], req)
    except NoPathError:
        guards.cancel(usage)
        raise
    return [guard, middle, last], usage


__all__ = ["choose_path_with_guards"]
