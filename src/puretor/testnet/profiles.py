"""Network profiles: "loopback" (the default plan, no added latency) and "realistic".

The realistic profile is the loopback network grown to what two cores sustain, with the live
network's main properties that loopback lacks:

* Latency. Each relay gets a one-way delay drawn from a log-normal distribution (median
  `DELAY_MEDIAN_MS`, clipped to `DELAY_MIN_MS`..`DELAY_MAX_MS`): most relays are near (the live
  network is concentrated in central Europe), some across an ocean. The link emulator
  (linkemu.py) holds every byte of every connection *to* a relay for that relay's delay, in
  each direction; the exits' connections to the targets get `NetworkPlan.target_delay_ms` the
  same way. A hop into relay X so costs 2 × d_X of round trip, whoever uses it: a circuit
  guard-middle-exit has an RTT of 2 × (d_guard + d_middle + d_exit). (A relay that extends to
  another opens its own connection through the other's emulated ORPort: the emulator's
  connections reach the relay from 127.0.0.1, which is not the address a relay's NETINFO
  claims, so the receiving relay never takes such a connection as canonical for extending
  back.) The delays depend only on the seed and the relay's nickname.
* Capacity. BandwidthRate = BandwidthBurst per relay (`rate_kb`, 2-20 MB/s), and the
  bandwidth file gives the authorities the same figures, so weights match capacity.
* Size and variety: 18 relays - 3 authorities, 5 guards, 6 middles, 4 exits with different
  policies - and two families (two exits of one operator; a guard and a middle of another).
* Two bad relays, both middles (no Guard or Exit flag, so a client meets them at random and
  never sticks to one; no HSDir flag, so onion services stay reachable): `slow1` answers late
  (`SLOW_DELAY_MS` one way, like a relay with a long queue), `stall1` goes silent
  `STALL_AFTER` seconds into every connection (connections stay open, nothing is forwarded
  any more: a relay whose network broke), so clients must time out the circuits through it.

What is *not* emulated: TCP handshakes complete at once (the kernel answers SYNs before the
emulator sees a connection), so every new TCP connection is one RTT faster than on a real
path - a new stream's BEGIN/CONNECTED takes one circuit RTT, without the exit-target
handshake; a request's first answer byte comes one target RTT later. DNS is answered next to
the exits (as by the caching resolver a real exit runs). Packet loss, jitter and the
directory ports (used by relays and authorities only) are not emulated.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import replace

from puretor.testnet import layout
from puretor.testnet.layout import NetworkPlan, NodeSpec
from puretor.testnet.linkemu import Link, LinkPlan

LOOPBACK = "loopback"
REALISTIC = "realistic"
PROFILES = (LOOPBACK, REALISTIC)
DEFAULT_SEED = 1

# One-way delays (ms): log-normal, median 35 ms (sigma 0.6: the middle half between 23 and
# 52 ms), clipped to 10..120 ms.
DELAY_MEDIAN_MS = 35.0
DELAY_SIGMA = 0.6
DELAY_MIN_MS = 10.0
DELAY_MAX_MS = 120.0
# The exits' distance to the destination: web servers sit in data centres near the exits.
TARGET_MEDIAN_MS = 20.0
TARGET_MIN_MS = 5.0
TARGET_MAX_MS = 80.0
# The bad relays.
SLOW_DELAY_MS = 400.0  # 0.8 s more round trip per circuit through it, well under the CBT
STALL_AFTER = 20.0  # seconds into each connection

# Reduced exit policy (as many live exits run): the usual service ports.
REDUCED_PORTS = (20, 21, 22, 53, 80, 110, 143, 443, 465, 587, 993, 995, layout.CLOSED_PORT)
EXIT3_POLICY = (*(f"accept *:{p}" for p in REDUCED_PORTS), "reject *:*")
# Everything but what only exit1 may reach (the targets' exit1-only ports stay exit1-only).
EXIT4_POLICY = (
    f"reject *:{layout.ECHO_PORT}",
    f"reject *:{layout.EXIT1_ONLY_HTTP_PORT}",
    "accept *:*",
)

# nickname -> (BandwidthRate in KB/s, family label, fault); order = address numbers.
_MB = 1000
REALISTIC_RELAYS: dict[str, tuple[layout.Role, int, str, str | None]] = {
    "auth1": ("authority", 3 * _MB, "", None),
    "auth2": ("authority", 3 * _MB, "", None),
    "auth3": ("authority", 3 * _MB, "", None),
    "guard1": ("guard", 20 * _MB, "", None),
    "guard2": ("guard", 12 * _MB, "", None),
    "guard3": ("guard", 8 * _MB, "", None),
    "middle1": ("middle", 10 * _MB, "", None),
    "exit1": ("exit", 15 * _MB, "", None),
    "exit2": ("exit", 5 * _MB, "", None),
    # (10 and 11: the onion hosts, as in the loopback plan)
    "guard4": ("guard", 15 * _MB, "beta", None),
    "guard5": ("guard", 5 * _MB, "", None),
    "middle2": ("middle", 6 * _MB, "", None),
    "middle3": ("middle", 16 * _MB, "beta", None),
    "middle4": ("middle", 2 * _MB, "", None),
    "exit3": ("exit", 10 * _MB, "gamma", None),
    "exit4": ("exit", 8 * _MB, "gamma", None),
    "slow1": ("middle", 6 * _MB, "", "slow"),
    "stall1": ("middle", 4 * _MB, "", "stall"),
}


def _rng(seed: int, name: str) -> random.Random:
    """A generator of its own per (seed, name): adding a relay changes no other delay."""
    digest = hashlib.sha256(f"puretor-testnet:{seed}:{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def draw_delay_ms(
    seed: int,
    name: str,
    *,
    median: float = DELAY_MEDIAN_MS,
    sigma: float = DELAY_SIGMA,
    low: float = DELAY_MIN_MS,
    high: float = DELAY_MAX_MS,
) -> float:
    """One-way delay (ms, 0.1 ms steps) of `name` in the network of `seed`."""
    value = _rng(seed, name).lognormvariate(math.log(median), sigma)
    return round(min(high, max(low, value)), 1)


def target_delay_ms(seed: int) -> float:
    return draw_delay_ms(
        seed, "target", median=TARGET_MEDIAN_MS, low=TARGET_MIN_MS, high=TARGET_MAX_MS
    )


def realistic_plan(seed: int = DEFAULT_SEED) -> NetworkPlan:
    base = {n.nickname: n for n in layout.default_nodes()}
    onions = [n for n in base.values() if n.role == "onion-service"]
    relays: list[NodeSpec] = []
    number = 1
    for nickname, (role, rate_kb, family, fault) in REALISTIC_RELAYS.items():
        while any(o.address == f"127.{number}.0.1" for o in onions):
            number += 1
        spec = base.get(nickname) or NodeSpec(nickname, role, f"127.{number}.0.1")
        if nickname == "exit3":
            spec = replace(spec, exit_policy=EXIT3_POLICY)
        elif nickname == "exit4":
            spec = replace(spec, exit_policy=EXIT4_POLICY)
        delay = SLOW_DELAY_MS if fault == "slow" else draw_delay_ms(seed, nickname)
        relays.append(
            replace(
                spec,
                emulated=True,
                delay_ms=delay,
                rate_kb=rate_kb,
                bandwidth_kb=rate_kb,  # the bandwidth file's weight is the cap
                family=family,
                fault=fault,
                stall_after=STALL_AFTER if fault == "stall" else None,
            )
        )
        number += 1
    nodes = tuple(sorted([*relays, *onions], key=lambda n: int(n.address.split(".")[1])))
    return NetworkPlan(nodes, profile=REALISTIC, seed=seed, target_delay_ms=target_delay_ms(seed))


def plan_for(profile: str = LOOPBACK, seed: int | None = None) -> NetworkPlan:
    if profile == LOOPBACK:
        return NetworkPlan()
    if profile == REALISTIC:
        return realistic_plan(DEFAULT_SEED if seed is None else seed)
    raise ValueError(f"unknown network profile {profile!r} (known: {', '.join(PROFILES)})")


# Target ports the emulator serves (the targets daemon listens on TARGET_PRIVATE_IP).
TARGET_PORTS = (layout.HTTP_PORT, layout.HTTPS_PORT, layout.EXIT1_ONLY_HTTP_PORT, layout.ECHO_PORT)


def link_plan(plan: NetworkPlan) -> LinkPlan:
    """The emulator's listeners: every advertised ORPort of an emulated relay (IPv6 ones
    included) and the targets' ports."""
    links: list[Link] = []
    for node in plan.nodes:
        if not node.emulated or node.orport is None or node.listen_orport is None:
            continue
        addresses = [(node.nickname, node.address)]
        if node.ipv6_address:
            addresses.append((f"{node.nickname}-v6", node.ipv6_address))
        for name, address in addresses:
            links.append(
                Link(
                    name,
                    (address, node.orport),
                    (address, node.listen_orport),
                    node.delay_ms / 1000,
                    node.stall_after,
                )
            )
    if plan.emulated:
        for port in TARGET_PORTS:
            links.append(
                Link(
                    f"target:{port}",
                    (layout.TARGET_IP, port),
                    (layout.TARGET_PRIVATE_IP, port),
                    plan.target_delay_ms / 1000,
                    keep_source=True,  # the targets log (and /ip answers) the exit's address
                )
            )
    return LinkPlan(tuple(links))


def circuit_rtt_ms(delays_ms: list[float]) -> float:
    """Round trip over hops with these one-way delays (each hop both ways)."""
    return 2 * sum(delays_ms)
