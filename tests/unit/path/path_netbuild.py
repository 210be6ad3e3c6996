"""A small synthetic-network builder and statistics helpers for the path tests.

Independent of ``puretor.path``: the expected weights below are written out again from
path-spec §2.2 / spec-map §6.1 so the tests do not check the code against itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from puretor.dir.netdir import REJECT_ALL, NetDir, PortPolicy, Relay

# bandwidth-weights from a live consensus (2023): note Wgd=Wmd=Wme=0 and Wbd=Wbe=0.
LIVE_WEIGHTS = {
    "Wbd": 0, "Wbe": 0, "Wbg": 4131, "Wbm": 10000, "Wdb": 10000, "Web": 10000, "Wed": 10000,
    "Wee": 10000, "Weg": 10000, "Wem": 10000, "Wgb": 10000, "Wgd": 0, "Wgg": 5869, "Wgm": 5869,
    "Wmb": 10000, "Wmd": 0, "Wme": 0, "Wmg": 4131, "Wmm": 10000,
}  # fmt: skip
# Every column non-zero, and Wxb ≠ scale, to exercise each branch of the table.
MIXED_WEIGHTS = {
    "Wbd": 2000, "Wbe": 3000, "Wbg": 4000, "Wbm": 10000, "Wdb": 9000, "Web": 8000, "Wed": 4000,
    "Wee": 10000, "Weg": 1500, "Wem": 2500, "Wgb": 7000, "Wgd": 3000, "Wgg": 6000, "Wgm": 5000,
    "Wmb": 9500, "Wmd": 3000, "Wme": 2000, "Wmg": 4000, "Wmm": 10000,
}  # fmt: skip

ACCEPT_ALL = PortPolicy(accept=True, ranges=((1, 65535),))
WEB = PortPolicy(accept=True, ranges=((80, 80), (443, 443)))
NO_SMTP = PortPolicy(accept=False, ranges=((25, 25), (119, 119)))
SSH_ONLY = PortPolicy(accept=True, ranges=((22, 22),))

BASE_FLAGS = frozenset({"Running", "Valid", "Fast", "Stable", "V2Dir"})


def rsa_id(n: int) -> bytes:
    return n.to_bytes(4, "big") * 5


def make_relay(
    n: int,
    *,
    flags: Iterable[str] = (),
    base: frozenset[str] = BASE_FLAGS,
    bw: int = 1000,
    address: str | None = None,
    nickname: str | None = None,
    family: Iterable[str] = (),
    family_ids: Iterable[str] = (),
    policy: PortPolicy = REJECT_ALL,
    policy6: PortPolicy = REJECT_ALL,
    ipv6: tuple[str, int] | None = None,
    has_md: bool = True,
) -> Relay:
    if address is None:  # a distinct /16 per relay
        address = f"{11 + n // 250}.{n % 250}.7.1"
    return Relay(
        nickname=nickname or f"relay{n}",
        rsa_id=rsa_id(n),
        address=address,
        or_port=9001,
        dir_port=0,
        flags=frozenset(flags) | base,
        bandwidth=bw,
        ipv6=ipv6,
        ntor_key=bytes(32) if has_md else None,
        ed_id=bytes(32),
        family=frozenset(family),
        family_ids=frozenset(family_ids),
        policy=policy,
        policy6=policy6,
    )


def build_netdir(
    relays: Iterable[Relay],
    weights: Mapping[str, int] | None = None,
    params: Mapping[str, int] | None = None,
) -> NetDir:
    va = datetime(2024, 1, 1, 12, 0, 0)
    return NetDir(
        valid_after=va,
        fresh_until=va + timedelta(hours=1),
        valid_until=va + timedelta(hours=3),
        voting_interval=3600,
        params=dict(params or {}),
        bandwidth_weights=dict(LIVE_WEIGHTS if weights is None else weights),
        relays=tuple(relays),
    )


def synthetic_network(
    n: int, seed: int, weights: Mapping[str, int] | None = None, **netdir_kw: object
) -> NetDir:
    """A mixed network: ~30 % Guard, ~15 % Exit, ~10 % Guard+Exit, the rest neither; some
    BadExits, odd exit policies on non-Exit relays, a few without Fast/Stable/V2Dir/md."""
    rng = random.Random(seed)
    relays = []
    for i in range(n):
        role = rng.random()
        flags: set[str] = set()
        policy = REJECT_ALL
        if role < 0.30:
            flags.add("Guard")
        elif role < 0.45:
            flags.add("Exit")
        elif role < 0.55:
            flags |= {"Guard", "Exit"}
        if "Exit" in flags:
            policy = rng.choice([ACCEPT_ALL, WEB, NO_SMTP, NO_SMTP])
            if rng.random() < 0.05:
                flags.add("BadExit")
        elif rng.random() < 0.08:
            policy = rng.choice([SSH_ONLY, WEB])  # exits without the Exit flag
        base = set(BASE_FLAGS)
        for flag, p in (("Fast", 0.05), ("Stable", 0.15), ("V2Dir", 0.2)):
            if rng.random() < p:
                base.discard(flag)
        relays.append(
            make_relay(
                i,
                flags=flags,
                base=frozenset(base),
                bw=0 if rng.random() < 0.03 else int(rng.lognormvariate(8, 1.2)) + 1,
                policy=policy,
                policy6=ACCEPT_ALL if "Exit" in flags and rng.random() < 0.3 else REJECT_ALL,
                has_md=rng.random() > 0.03,
            )
        )
    return build_netdir(relays, weights, **netdir_kw)  # type: ignore[arg-type]


# -- expected weights, written out independently ------------------------------------------


def expected_weight(relay: Relay, position: str, w: Mapping[str, int]) -> float:
    """path-spec §2.2: bandwidth × W(position, role) [× Wxb for V2Dir], as a float."""
    guard = "Guard" in relay.flags
    exit_ = "Exit" in relay.flags and "BadExit" not in relay.flags
    role = "d" if guard and exit_ else "g" if guard else "e" if exit_ else "m"
    get = lambda name: w.get(name, 10000)  # noqa: E731
    table = {
        "guard": {"g": get("Wgg"), "e": 0, "d": get("Wgd"), "m": get("Wgm")},
        "middle": {"g": get("Wmg"), "e": get("Wme"), "d": get("Wmd"), "m": get("Wmm")},
        "exit": {"g": get("Weg"), "e": get("Wee"), "d": get("Wed"), "m": get("Wem")},
        "directory": {"g": get("Wbg"), "e": get("Wbe"), "d": get("Wbd"), "m": get("Wbm")},
    }
    value = relay.bandwidth * table[position][role] / 10000
    if position != "directory" and "V2Dir" in relay.flags:
        value *= {"g": get("Wgb"), "e": get("Web"), "d": get("Wdb"), "m": get("Wmb")}[role] / 10000
    return value


# -- χ² goodness of fit ------------------------------------------------------------------


def _gammaincc(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) (series / continued fraction)."""
    if x <= 0:
        return 1.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # series for P(a, x)
        term = total = 1.0 / a
        ap = a
        for _ in range(10000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return 1.0 - total * math.exp(log_prefix)
    # Lentz's continued fraction for Q(a, x)
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(log_prefix) * h


def chi2_sf(stat: float, dof: int) -> float:
    return _gammaincc(dof / 2, stat / 2)


def chi2_test(
    observed: Mapping[bytes, int], expected_prob: Mapping[bytes, float], n: int
) -> tuple[float, int, float]:
    """Pearson χ² of counts against probabilities; bins with expected count < 5 are pooled.
    Returns (statistic, degrees of freedom, p-value).  Fails on impossible outcomes."""
    impossible = [k for k, c in observed.items() if c and expected_prob.get(k, 0.0) <= 0.0]
    assert not impossible, f"chosen with zero probability: {impossible[:3]}"
    bins: list[tuple[float, float]] = []
    pool_e = pool_o = 0.0
    for key, p in sorted(expected_prob.items(), key=lambda kv: kv[1]):
        e, o = p * n, observed.get(key, 0)
        if e <= 0:
            continue
        if e < 5:
            pool_e, pool_o = pool_e + e, pool_o + o
            if pool_e >= 5:
                bins.append((pool_e, pool_o))
                pool_e = pool_o = 0.0
        else:
            bins.append((e, o))
    if pool_e > 0:
        if bins:
            e, o = bins.pop(0)
            bins.append((e + pool_e, o + pool_o))
        else:
            bins.append((pool_e, pool_o))
    stat = sum((o - e) ** 2 / e for e, o in bins)
    dof = max(len(bins) - 1, 1)
    return stat, dof, chi2_sf(stat, dof)
