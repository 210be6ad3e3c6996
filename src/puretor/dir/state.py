"""Sans-I/O directory bootstrap and freshness logic (dir-spec §5; path-spec §2.1.0).

`DirState` knows what directory information it has and what it still needs.
The asyncio layer drives it like this::

    state = DirState(authorities)                  # or cache.load(path, authorities, now)
    for req in state.next_requests(now):           # each returned request is now "in flight"
        ... send build_request(req.path) over a BEGIN_DIR stream ...
        try:
            resp = parser.finish()                 # HttpResponseParser
            if resp.status != 200: raise ...
            if req.kind == "consensus":  state.add_consensus(resp.body, now)
            elif req.kind == "certs":    state.add_certs(resp.body, now)
            else:                        state.add_microdescs(resp.body, req.digests, now)
        except (TorError, OSError):
            state.request_failed(req, now)         # backoff; try another source next time
    wake_at = state.next_wakeup(now)               # when next_requests may have new work
    state.netdir(now), state.have_enough_dir_info(now), state.bootstrap_progress

Every input method raises `DirectoryError`/`DocumentError` with a clear
message when the document is refused; the state is left consistent (the
offending document dropped, the request no longer in flight, a retry
scheduled), so the caller just logs and tries another source.

`add_consensus` and `add_microdescs` parse megabytes (~0.15 s each for the
live network): call them via ``asyncio.to_thread``.  `DirState` is not
thread-safe, so serialise calls (one worker at a time, or a lock).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from puretor.dir.authcert import AuthCert, parse_authcerts
from puretor.dir.authorities import Authority, v3_idents
from puretor.dir.build import build_netdir
from puretor.dir.consensus import Consensus, parse_consensus
from puretor.dir.microdesc import Microdesc, parse_microdescs
from puretor.dir.netdir import NetDir
from puretor.dir.netdoc import b64encode_unpadded
from puretor.dir.verify import (
    REASONABLY_LIVE,
    check_signatures,
    check_timeliness,
    describe,
)
from puretor.errors import DirectoryError, DocumentError

__all__ = [
    "BootstrapPhase",
    "BootstrapStatus",
    "DirRequest",
    "DirState",
    "MAX_MICRODESCS_PER_REQUEST",
    "frac_paths_available",
    "refetch_time",
]

MAX_MICRODESCS_PER_REQUEST = 92  # C tor: a URL of 92 base64 digests stays under 4 KB
MICRODESC_KEEP = 7 * 24 * 3600.0  # keep unreferenced microdescs ~a week (dir-spec §5.2)
RETRY_CAP = 600.0  # client-side cap for the decorrelated-jitter backoff (dir-spec §5.5)
PENDING_PATIENCE = 120.0  # after this long waiting for certificates, also try another consensus


class BootstrapPhase(IntEnum):
    """C tor's bootstrap phases and percentages (control_events.h, control_bootstrap.c).

    Current C tor names the first phases ``conn``/``handshake`` (formerly
    ``conn_dir``/``handshake_dir``).
    """

    STARTING = 0
    CONN_PT = 1
    CONN_DONE_PT = 2
    CONN_PROXY = 3
    CONN_DONE_PROXY = 4
    CONN = 5
    CONN_DONE = 10
    HANDSHAKE = 14
    HANDSHAKE_DONE = 15
    ONEHOP_CREATE = 20
    REQUESTING_STATUS = 25
    LOADING_STATUS = 30
    LOADING_KEYS = 40
    REQUESTING_DESCRIPTORS = 45
    LOADING_DESCRIPTORS = 50
    ENOUGH_DIRINFO = 75
    AP_CONN_PT = 76
    AP_CONN_DONE_PT = 77
    AP_CONN_PROXY = 78
    AP_CONN_DONE_PROXY = 79
    AP_CONN = 80
    AP_CONN_DONE = 85
    AP_HANDSHAKE = 89
    AP_HANDSHAKE_DONE = 90
    CIRCUIT_CREATE = 95
    DONE = 100

    @property
    def tag(self) -> str:
        return self.name.lower()

    @property
    def summary(self) -> str:
        return _SUMMARIES[self]


_SUMMARIES = {
    BootstrapPhase.STARTING: "Starting",
    BootstrapPhase.CONN_PT: "Connecting to pluggable transport",
    BootstrapPhase.CONN_DONE_PT: "Connected to pluggable transport",
    BootstrapPhase.CONN_PROXY: "Connecting to proxy",
    BootstrapPhase.CONN_DONE_PROXY: "Connected to proxy",
    BootstrapPhase.CONN: "Connecting to a relay",
    BootstrapPhase.CONN_DONE: "Connected to a relay",
    BootstrapPhase.HANDSHAKE: "Handshaking with a relay",
    BootstrapPhase.HANDSHAKE_DONE: "Handshake with a relay done",
    BootstrapPhase.ONEHOP_CREATE: "Establishing an encrypted directory connection",
    BootstrapPhase.REQUESTING_STATUS: "Asking for networkstatus consensus",
    BootstrapPhase.LOADING_STATUS: "Loading networkstatus consensus",
    BootstrapPhase.LOADING_KEYS: "Loading authority key certs",
    BootstrapPhase.REQUESTING_DESCRIPTORS: "Asking for relay descriptors",
    BootstrapPhase.LOADING_DESCRIPTORS: "Loading relay descriptors",
    BootstrapPhase.ENOUGH_DIRINFO: "Loaded enough directory info to build circuits",
    BootstrapPhase.AP_CONN_PT: "Connecting to pluggable transport to build circuits",
    BootstrapPhase.AP_CONN_DONE_PT: "Connected to pluggable transport to build circuits",
    BootstrapPhase.AP_CONN_PROXY: "Connecting to proxy to build circuits",
    BootstrapPhase.AP_CONN_DONE_PROXY: "Connected to proxy to build circuits",
    BootstrapPhase.AP_CONN: "Connecting to a relay to build circuits",
    BootstrapPhase.AP_CONN_DONE: "Connected to a relay to build circuits",
    BootstrapPhase.AP_HANDSHAKE: "Finishing handshake with a relay to build circuits",
    BootstrapPhase.AP_HANDSHAKE_DONE: "Handshake finished with a relay to build circuits",
    BootstrapPhase.CIRCUIT_CREATE: "Establishing a Tor circuit",
    BootstrapPhase.DONE: "Done",
}


@dataclass(frozen=True)
class BootstrapStatus:
    percent: int  # may lie between phase values while loading descriptors (50..74)
    phase: BootstrapPhase

    @property
    def tag(self) -> str:
        return self.phase.tag

    @property
    def summary(self) -> str:
        return self.phase.summary

    def __str__(self) -> str:  # C tor's log line
        return f"Bootstrapped {self.percent}% ({self.tag}): {self.summary}"


@dataclass(frozen=True)
class DirRequest:
    """One directory fetch to make over a BEGIN_DIR stream."""

    kind: str  # "consensus" | "certs" | "microdescs"
    path: str
    digests: tuple[bytes, ...] = ()  # requested md digests, or cert v3idents


def refetch_time(consensus: Consensus, rng: random.Random) -> float:
    """When to fetch the next consensus (dir-spec §5.1): uniform in
    [FU + 3/4 (FU - VA), that + 7/8 (VU - that)]."""
    va, fu, vu = consensus.lifetime
    start = fu + (fu - va) * 3 / 4
    end = start + (vu - start) * 7 / 8
    return rng.uniform(start, max(start, end))


def _weights(weights: dict[str, int], position: str) -> tuple[int, int, int, int]:
    """(W for guard-only, middle-only, exit-only, guard+exit) at ``position`` (g/m/e)."""
    w = lambda name: weights.get(name, 10000)  # noqa: E731 - path-spec §2.2: missing => 10000
    if position == "g":
        return w("Wgg"), w("Wgm"), 0, w("Wgd")
    if position == "m":
        return w("Wmg"), w("Wmm"), w("Wme"), w("Wmd")
    return w("Weg"), w("Wem"), w("Wee"), w("Wed")


def _fraction(
    consensus: Consensus,
    members: Sequence[int],
    present: Sequence[bool],
    position: str,
) -> float:
    """C tor frac_nodes_with_descriptors: weighted share of ``members`` with a microdesc."""
    if not members:
        return 0.0
    wg, wm, we, wd = _weights(consensus.bandwidth_weights, position)
    total = have = 0
    routers = consensus.routers
    for i in members:
        rs = routers[i]
        flags = rs.flags
        guard = "Guard" in flags
        exit_ = "Exit" in flags and "BadExit" not in flags
        w = wd if guard and exit_ else wg if guard else we if exit_ else wm
        weight = rs.bandwidth * w
        total += weight
        if present[i]:
            have += weight
    if total <= 0:  # no usable weights: fall back to counting (C tor does too)
        return sum(1 for i in members if present[i]) / len(members)
    return have / total


def frac_paths_available(
    consensus: Consensus, microdescs: dict[bytes, Microdesc]
) -> tuple[float, str]:
    """path-spec §2.1.0 / C tor compute_frac_paths_available: f_guard * f_mid * f_exit."""
    routers = consensus.routers
    present = [rs.md_digest is not None and rs.md_digest in microdescs for rs in routers]
    everyone = range(len(routers))
    guards = [i for i in everyone if "Guard" in routers[i].flags]
    exits = [i for i in everyone if "Exit" in routers[i].flags]
    f_guard = _fraction(consensus, guards, present, "g")
    f_mid = _fraction(consensus, everyone, present, "m")
    f_exit = _fraction(consensus, exits, present, "e")
    usable_exits = sum(
        1 for i in exits if present[i] and microdescs[routers[i].md_digest or b""].policy.allows_any
    )
    if usable_exits == 0 and f_exit <= 0.0:
        f_exit = f_mid  # no exits: only internal (onion-service) paths; C tor uses f_mid
    f = f_guard * f_mid * f_exit
    end = "exit bw" if usable_exits else "end bw (no exits in consensus, using mid)"
    status = (
        f"{int(f_guard * 100)}% of guards bw, {int(f_mid * 100)}% of midpoint bw, and "
        f"{int(f_exit * 100)}% of {end} = {int(f * 100)}% of path bw"
    )
    return f, status


class DirState:
    """What directory information we have, what we need, and how bootstrap is going."""

    def __init__(
        self,
        authorities: Iterable[Authority],
        *,
        rng: random.Random | None = None,
        allow_expired: bool = False,
        paths_needed: float | None = None,
        max_microdescs_per_request: int = MAX_MICRODESCS_PER_REQUEST,
    ) -> None:
        self.authorities = tuple(authorities)
        self.trusted = v3_idents(self.authorities)
        if not self.trusted:
            raise DirectoryError("no v3 directory authorities configured")
        self.rng = rng or random.SystemRandom()
        self.allow_expired = allow_expired
        self.paths_needed = paths_needed  # PathsNeededToBuildCircuits; None = consensus param
        self.max_md = max_microdescs_per_request
        self.consensus: Consensus | None = None  # verified
        self.pending: Consensus | None = None  # well-formed, waiting for certificates
        self._pending_since = 0.0
        self.certs: dict[tuple[bytes, bytes], AuthCert] = {}
        self.microdescs: dict[bytes, Microdesc] = {}
        self.md_last_listed: dict[bytes, float] = {}
        self.refetch_at: float | None = None
        self.last_error: str | None = None
        self._inflight: set[object] = set()
        self._retry_at: dict[object, float] = {}
        self._delay: dict[object, float] = {}
        self._netdir: NetDir | None = None
        self._phase_floor = BootstrapPhase.STARTING  # phases reported by the caller
        self._best = 0
        self._best_phase = BootstrapPhase.STARTING
        self._requested_mds = False
        self._listed: frozenset[bytes] = frozenset()  # md digests the consensus lists
        self._now = 0.0  # latest time any input told us about

    # -- what we have -------------------------------------------------------

    def refetch_time(self, rng: random.Random | None = None) -> float | None:
        """A fresh draw of the next consensus fetch time (dir-spec §5.1), or None."""
        if self.consensus is None:
            return None
        return refetch_time(self.consensus, rng or self.rng)

    def is_live(self, now: float) -> bool:
        return self.consensus is not None and self.consensus.is_live(now)

    def is_reasonably_live(self, now: float) -> bool:
        return self.consensus is not None and self.consensus.is_reasonably_live(
            now, REASONABLY_LIVE
        )

    def netdir(self, now: float | None = None) -> NetDir | None:
        """The current network view (rebuilt only when something changed).

        With ``now``, None is returned unless the consensus is reasonably live.
        """
        if self.consensus is None:
            return None
        if now is not None and not self.is_reasonably_live(now) and not self.allow_expired:
            return None
        if self._netdir is None:
            self._netdir = build_netdir(self.consensus, self.microdescs)
        return self._netdir

    def missing_microdescs(self) -> list[bytes]:
        if self.consensus is None:
            return []
        have = self.microdescs
        return [
            d for rs in self.consensus.routers if (d := rs.md_digest) is not None and d not in have
        ]

    def paths_fraction_needed(self) -> float:
        if self.paths_needed is not None:
            return self.paths_needed
        params = self.consensus.params if self.consensus else {}
        pct = min(max(params.get("min_paths_for_circs_pct", 60), 25), 95)
        return pct / 100

    def dir_info_status(
        self, now: float, required_relays: Iterable[bytes] = ()
    ) -> tuple[bool, str]:
        """(enough?, explanation) per path-spec §2.1.0 (C tor update_router_have_minimum_dir_info).

        ``required_relays``: RSA ids (e.g. the first primary guards) whose
        microdescs must be present too.
        """
        if self.consensus is None:
            return False, "We have no usable consensus."
        if not self.is_reasonably_live(now) and not self.allow_expired:
            return False, "We have no recent usable consensus."
        f, status = frac_paths_available(self.consensus, self.microdescs)
        if f < self.paths_fraction_needed():
            routers = self.consensus.routers
            usable = sum(1 for rs in routers if rs.md_digest is not None)
            present = sum(1 for rs in routers if rs.md_digest in self.microdescs)
            return False, (
                f"We need more microdescriptors: we have {present}/{usable}, and can only "
                f"build {int(f * 100)}% of likely paths. (We have {status}.)"
            )
        required = list(required_relays)
        nd = self.netdir() if required else None
        for rsa_id in required:
            relay = nd.by_rsa_id(rsa_id) if nd else None
            if relay is not None and not relay.has_md:
                return False, f"We're missing the microdescriptor of guard ${relay.fingerprint}."
        return True, status

    def have_enough_dir_info(self, now: float, required_relays: Iterable[bytes] = ()) -> bool:
        return self.dir_info_status(now, required_relays)[0]

    # -- bootstrap progress -------------------------------------------------

    def note_phase(self, phase: BootstrapPhase) -> None:
        """Record a phase only the caller sees (conn, handshake, onehop_create, ap_*, done)."""
        self._phase_floor = max(self._phase_floor, phase)

    def bootstrap_status(self, now: float) -> BootstrapStatus:
        """Progress as C tor reports it; never goes backwards."""
        phase = self._phase_floor
        percent = int(phase)
        if self.consensus is not None:
            f, _ = frac_paths_available(self.consensus, self.microdescs)
            needed = self.paths_fraction_needed()
            if f >= needed and (self.allow_expired or self.is_reasonably_live(now)):
                dir_phase, dir_pct = BootstrapPhase.ENOUGH_DIRINFO, 75
            elif self._requested_mds or self.microdescs:
                dir_phase = BootstrapPhase.LOADING_DESCRIPTORS
                frac = min(f / needed, 1.0) if needed > 0 else 1.0
                # C tor count_loading_descriptors_progress: 50 + frac * (74 - 50)
                dir_pct = 50 + int(frac * (75 - 1 - 50))
            else:
                dir_phase, dir_pct = BootstrapPhase.REQUESTING_DESCRIPTORS, 45
        elif self.pending is not None:
            dir_phase, dir_pct = BootstrapPhase.LOADING_KEYS, 40
        elif "consensus" in self._inflight:
            dir_phase, dir_pct = BootstrapPhase.REQUESTING_STATUS, 25
        else:
            dir_phase, dir_pct = BootstrapPhase.STARTING, 0
        if dir_pct > percent:
            phase, percent = dir_phase, dir_pct
        if percent > self._best:
            self._best, self._best_phase = percent, phase
        return BootstrapStatus(self._best, self._best_phase)

    @property
    def bootstrap_progress(self) -> BootstrapStatus:
        """`bootstrap_status` at the latest time an input method was given."""
        return self.bootstrap_status(self._now)

    # -- what we need -------------------------------------------------------

    def consensus_path(self) -> str:
        """``/tor/status-vote/current/consensus-microdesc/<F1>+<F2>...``: first 3 bytes of
        each trusted v3ident, upper-case hex, sorted (C tor directory_get_consensus_url)."""
        prefixes = sorted(ident[:3].hex().upper() for ident in self.trusted)
        return "/tor/status-vote/current/consensus-microdesc/" + "+".join(prefixes)

    def _due(self, key: object, now: float) -> bool:
        return key not in self._inflight and self._retry_at.get(key, 0.0) <= now

    def _wants_consensus(self, now: float) -> bool:
        if self.pending is not None:
            if not self.pending.is_live(now):
                self.drop_pending("consensus expired while waiting for its certificates")
            elif now - self._pending_since < PENDING_PATIENCE:
                return False  # finish checking the one we have first
            # else: its certificates are not coming; another consensus may replace it
        if self.consensus is None or not self.consensus.is_live(now):
            return True
        return self.refetch_at is not None and now >= self.refetch_at

    def next_requests(self, now: float, limit: int | None = None) -> list[DirRequest]:
        """Requests to launch now; each is marked in flight until reported back."""
        self._now = max(self._now, now)
        out: list[DirRequest] = []
        if self._wants_consensus(now) and self._due("consensus", now):
            out.append(DirRequest("consensus", self.consensus_path()))
        if self.pending is not None:
            status = check_signatures(self.pending, self.certs, self.authorities, now)
            idents = sorted({i for i, _ in status.missing if self._due(("cert", i), now)})
            if idents:
                path = "/tor/keys/fp/" + "+".join(i.hex().upper() for i in idents)
                out.append(DirRequest("certs", path, tuple(idents)))
        if self.consensus is not None and (limit is None or len(out) < limit):
            wanted = [d for d in self.missing_microdescs() if self._due(("md", d), now)]
            for i in range(0, len(wanted), self.max_md):
                batch = tuple(wanted[i : i + self.max_md])
                path = "/tor/micro/d/" + "-".join(b64encode_unpadded(d) for d in batch)
                out.append(DirRequest("microdescs", path, batch))
        if limit is not None:
            out = out[:limit]
        for req in out:
            self._inflight.update(self._keys(req))
            if req.kind == "microdescs":
                self._requested_mds = True
        return out

    def next_wakeup(self, now: float) -> float | None:
        """The earliest time `next_requests` might return something it cannot return now."""
        times = [t for t in self._retry_at.values() if t > now]
        if self.refetch_at is not None and self.refetch_at > now:
            times.append(self.refetch_at)
        if self.consensus is not None:
            vu = self.consensus.valid_until.timestamp()
            if vu > now:
                times.append(vu)
        return min(times) if times else None

    @staticmethod
    def _keys(req: DirRequest) -> list[object]:
        if req.kind == "consensus":
            return ["consensus"]
        tag = "cert" if req.kind == "certs" else "md"
        return [(tag, d) for d in req.digests]

    def request_failed(self, req: DirRequest, now: float, reason: str = "") -> None:
        """The fetch failed (connection, HTTP status, bad document): back off and retry later."""
        self._now = max(self._now, now)
        for key in self._keys(req):
            self._backoff(key, now)
        if reason:
            self.last_error = reason

    def _backoff(self, key: object, now: float) -> None:
        """dir-spec §5.5 decorrelated jitter: min(cap, uniform(1, max(2, 3 * previous)))."""
        self._inflight.discard(key)
        delay = min(RETRY_CAP, self.rng.uniform(1.0, max(2.0, self._delay.get(key, 0.0) * 3)))
        self._delay[key] = delay
        self._retry_at[key] = now + delay

    def _succeeded(self, key: object) -> None:
        self._inflight.discard(key)
        self._retry_at.pop(key, None)
        self._delay.pop(key, None)

    # -- inputs -------------------------------------------------------------

    def add_consensus(self, body: bytes, now: float) -> bool:
        """A consensus arrived.  True if it is now the current one; False if it is
        waiting for authority certificates (see `next_requests`)."""
        self._now = max(self._now, now)
        try:
            consensus = parse_consensus(body)
            if self.consensus is not None and consensus.valid_after <= self.consensus.valid_after:
                raise DirectoryError(
                    "consensus is not newer than the one we have "
                    f"(valid-after {consensus.valid_after:%Y-%m-%d %H:%M:%S})"
                )
            check_timeliness(consensus, now, allow_expired=self.allow_expired)
            status = check_signatures(consensus, self.certs, self.authorities, now)
            if not status.ok and not status.could_succeed:
                raise DocumentError(
                    "consensus is insufficiently signed: " + describe(status, self.authorities)
                )
        except DirectoryError as e:
            self._backoff("consensus", now)
            self.last_error = str(e)
            raise
        self._succeeded("consensus")
        if status.ok:
            self._accept(consensus, now)
            return True
        self.pending = consensus
        self._pending_since = now
        return False

    def _accept(self, consensus: Consensus, now: float) -> None:
        self.consensus = consensus
        self.pending = None
        self._netdir = None
        self.refetch_at = refetch_time(consensus, self.rng)
        self._listed = frozenset(rs.md_digest for rs in consensus.routers if rs.md_digest)
        for digest in self._listed:
            self.md_last_listed[digest] = now
        # Backoff state for microdescs the consensus no longer lists is moot.
        for table in (self._retry_at, self._delay):
            for key in [k for k in table if isinstance(k, tuple) and k[1] not in self._listed]:
                if key[0] == "md":
                    del table[key]
        # Forget microdescs nobody has listed for about a week (dir-spec §5.2).
        for digest, seen in list(self.md_last_listed.items()):
            if seen < now - MICRODESC_KEEP:
                del self.md_last_listed[digest]
                self.microdescs.pop(digest, None)

    def add_certs(self, body: bytes, now: float, requested: Collection[bytes] = ()) -> int:
        """Authority certificates arrived; returns how many new usable ones were stored.

        Certificates of authorities we do not trust are discarded.  If a pending
        consensus can now be checked it is accepted, or dropped with an error.
        """
        self._now = max(self._now, now)
        keys = [("cert", i) for i in requested]
        try:
            certs = parse_authcerts(body)
        except DocumentError as e:
            for key in keys:
                self._backoff(key, now)
            self.last_error = str(e)
            raise
        added, errors = 0, []
        for cert in certs:
            if cert.fingerprint not in self.trusted:
                continue
            try:
                cert.verify(now)
            except DocumentError as e:
                errors.append(str(e))
                continue
            if cert.key not in self.certs:
                added += 1
            self.certs[cert.key] = cert
        # Drop certificates that expired.
        self.certs = {k: c for k, c in self.certs.items() if not c.is_expired(now)}
        # A requested certificate counts as delivered only if the pending consensus
        # no longer misses it (a server may send an older certificate).
        still_missing: set[bytes] = set()
        if self.pending is not None:
            status = check_signatures(self.pending, self.certs, self.authorities, now)
            still_missing = {i for i, _ in status.missing}
        for key in keys:
            if key[1] in still_missing:
                self._backoff(key, now)
            else:
                self._succeeded(key)
        if errors and not added:
            self.last_error = "; ".join(errors)
            raise DocumentError("no usable authority certificate: " + "; ".join(errors))
        self._check_pending(now)
        return added

    def _check_pending(self, now: float) -> None:
        if self.pending is None:
            return
        status = check_signatures(self.pending, self.certs, self.authorities, now)
        if status.ok:
            self._accept(self.pending, now)
        elif not status.could_succeed:
            self.pending = None
            self.last_error = "consensus dropped: " + describe(status, self.authorities)
            raise DocumentError(self.last_error)

    def restore_microdescs(self, items: Iterable[tuple[Microdesc, float]]) -> None:
        """Add (microdesc, last-listed time) pairs from the cache, without request checks."""
        for md, last_listed in items:
            self.microdescs[md.digest] = md
            self.md_last_listed[md.digest] = max(last_listed, self.md_last_listed.get(md.digest, 0))
        self._netdir = None

    def forget_failures(self) -> None:
        """Clear every backoff timer (e.g. after loading the cache)."""
        self._retry_at.clear()
        self._delay.clear()

    def drop_pending(self, reason: str = "gave up waiting for certificates") -> None:
        """Forget a consensus that is waiting for certificates (so another is fetched)."""
        if self.pending is not None:
            self.pending = None
            self.last_error = reason

    def add_microdescs(self, body: bytes, requested: Collection[bytes] | None, now: float) -> int:
        """Microdescriptors arrived for ``requested`` digests; returns how many were new.

        Anything not requested (or not listed in the current consensus) is
        discarded; requested digests that did not arrive are retried later.
        ``requested=None`` accepts every well-formed one (used for the cache).
        """
        self._now = max(self._now, now)
        wanted = set(requested) if requested is not None else None
        if wanted is not None and self.consensus is not None:
            wanted &= self._listed  # a new consensus may have replaced the one we asked for
        errors: list[DocumentError] = []
        try:
            mds = parse_microdescs(body, errors)
        except DocumentError as e:
            for d in wanted or ():
                self._backoff(("md", d), now)
            self.last_error = str(e)
            raise
        added = 0
        for md in mds:
            if wanted is not None and md.digest not in wanted:
                continue
            if md.digest not in self.microdescs:
                added += 1
                self._netdir = None
            self.microdescs[md.digest] = md
            self.md_last_listed.setdefault(md.digest, now)
            self._succeeded(("md", md.digest))
        for d in requested or ():
            if d not in self.microdescs:
                self._backoff(("md", d), now)
        if errors:
            self.last_error = f"{len(errors)} malformed microdescriptor(s), e.g. {errors[0]}"
        return added
