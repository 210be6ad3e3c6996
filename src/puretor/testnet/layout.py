"""The fixed plan of the private test network: nodes, addresses, ports, targets.

Everything here is data. Each relay gets its own 127.N.0.1 in its own /16, so path rules about
/16s stay meaningful without test knobs. Targets live in 198.18.0.0/15 (RFC 2544 benchmarking
range): tor treats it as public, but inside our sealed namespace it is a *local* route whose
preferred source is 127.0.0.1. A target therefore sees an exit's own 127.N.0.1 (exits bind outbound
connections to their address), while a direct connection from a client shows 127.0.0.1.

The authorities and two of the three guards also have an IPv6 ORPort, on fd00:0:0:N::1 (added to
``lo`` of the namespace; without IPv6 there the network runs on IPv4 only), so that ClientUseIPv4,
ClientUseIPv6 and ClientPreferIPv6ORPort have something to choose between. Those addresses share
one /32 on purpose: with EnforceDistinctSubnets 1 (off under TestingTorNetwork) no circuit may
hold two dual-stack relays, which is how that option shows here.

A plan has a network profile (`NetworkPlan.profile`): "loopback" (the default, the nodes below,
no added latency) or "realistic" (more relays, per-relay delays, bandwidth caps, families and
two bad relays; see profiles.py). In the realistic profile every advertised ORPort is served by
the link emulator (linkemu.py) and the relay itself listens on `PRIVATE_OR_PORT`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Role = Literal["authority", "guard", "middle", "exit", "onion-service", "bridge"]

OR_PORT = 9001
PRIVATE_OR_PORT = 9101  # realistic profile: where the relay itself listens (NoAdvertise)
DIR_PORT = 9030  # authorities only; relays serve directory data over BEGIN_DIR
OBFS4_PORT = 9002  # the obfs4 bridge's ServerTransportListenAddr (its ORPort stays OR_PORT)
# Processes run with this group id are "censored": the namespace's firewall (censor.py) drops
# their packets to every authority and relay, so only the bridges are reachable for them.
CENSORED_GID = 4242
DEFAULT_SOCKS_PORT = 9050
DEFAULT_NETNS = "puretor-testnet"

# Consensus timing (seconds). Vote + dist delay must stay below half the interval (tor uses
# interval/2 before the first consensus); the interval must divide 24 h. Same as chutney.
VOTING_INTERVAL = 20
VOTE_DELAY = 4
DIST_DELAY = 4
# Seconds from starting the tor processes to the first vote: every relay must have published its
# descriptor and been found reachable by then (about 3 s on a loaded 2-core machine).
FIRST_VOTE_LEAD = 6

# As on the live network (2024-25) where that is safe here. DoS* parameters are deliberately
# left out: tests open many circuits from 127.0.0.1 and the live DoS limits would throttle them.
CONSENSUS_PARAMS: dict[str, int] = {
    "CircuitPriorityHalflifeMsec": 30000,
    "ExtendByEd25519ID": 1,
    "KISTSchedRunInterval": 3,
    "UseOptimisticData": 1,
    "cc_alg": 2,
    "cc_cwnd_full_gap": 4444,
    "cc_cwnd_full_minpct": 25,
    "cc_cwnd_inc": 1,
    "cc_cwnd_inc_rate": 31,
    "cc_cwnd_min": 124,
    "cc_sscap_exit": 600,
    "cc_sscap_onion": 475,
    "cc_vegas_alpha_exit": 186,
    "cc_vegas_beta_onion": 372,
    "cc_vegas_delta_exit": 310,
    "cc_vegas_delta_onion": 434,
    "cc_vegas_gamma_onion": 248,
    "guard-n-primary-dir-guards-to-use": 2,
    "guard-n-primary-guards-to-use": 2,
    "hs_service_max_rdv_failures": 1,
    "hsdir_spread_store": 4,
    "sendme_accept_min_version": 1,
    "sendme_emit_min_version": 1,
}

# --- targets (all inside the namespace) -------------------------------------------------------
LOCAL_TARGET_NET = "198.18.0.0/15"
TARGET_IP = "198.18.0.10"
# Realistic profile: the targets daemon listens here; the link emulator serves TARGET_IP's
# ports and forwards to it, adding the target's delay (and keeping the exit's source address).
TARGET_PRIVATE_IP = "198.18.1.10"
ONION_PLAIN_BACKEND_IP = "198.18.0.20"
ONION_AUTH_BACKEND_IP = "198.18.0.21"
HTTP_PORT = 80
HTTPS_PORT = 443
EXIT1_ONLY_HTTP_PORT = 8080  # exit2's policy rejects it: only exit1 can reach it
ECHO_PORT = 7  # also only exit1
CLOSED_PORT = 8443  # accepted by both exits, nothing listens: "connection refused"
DNS_IP = "127.0.0.1"
DNS_PORT = 53

HOSTNAME = "target.test"
# A name the DNS responder answers with an internal address: what ClientDNSRejectInternalAddresses
# is about (an exit must not be able to point a client at its own local network).
INTERNAL_HOSTNAME = "internal.target.test"
INTERNAL_HOSTNAME_IP = "127.0.0.1"
DNS_NAMES: dict[str, str] = {
    HOSTNAME: TARGET_IP,
    "www.target.test": TARGET_IP,
    "tls.target.test": TARGET_IP,
    "echo.target.test": TARGET_IP,
    INTERNAL_HOSTNAME: INTERNAL_HOSTNAME_IP,
}
TLS_HOSTNAME = "tls.target.test"
NXDOMAIN_EXAMPLE = "no-such-host.target.test"

# Deterministic payloads: name -> size. Content is SHAKE-256 of "puretor-testnet:<name>".
FILE_SIZES: dict[str, int] = {
    "1MiB": 1 << 20,
    "10MiB": 10 << 20,
    "100MiB": 100 << 20,
}


@dataclass(frozen=True)
class NodeSpec:
    """One tor process of the network."""

    nickname: str
    role: Role
    address: str
    bandwidth_kb: int = 0  # measured value we publish in the bandwidth file
    exit_policy: tuple[str, ...] = ("reject *:*",)
    onion_backend: str | None = None  # "IP:PORT" behind HiddenServicePort 80
    client_auth: bool = False
    ipv6_address: str | None = None  # a second ORPort there (relays only)
    # Realistic profile (see profiles.py); the loopback profile leaves these at their defaults.
    emulated: bool = False  # its advertised ORPorts are the link emulator's
    delay_ms: float = 0.0  # one-way delay the emulator adds on every connection to it
    rate_kb: int = 0  # BandwidthRate = BandwidthBurst in KB/s (1000 bytes); 0: no cap
    family: str = ""  # relays with the same label declare each other (MyFamily)
    fault: str | None = None  # "stall" or "slow": a bad relay
    stall_after: float | None = None  # "stall": each connection goes silent after this long
    transport: str | None = None  # a bridge's pluggable transport ("obfs4"), None: plain

    @property
    def is_bridge(self) -> bool:
        """An unlisted relay (BridgeRelay 1, PublishServerDescriptor 0): not in the consensus."""
        return self.role == "bridge"

    @property
    def is_listed(self) -> bool:
        """A relay the authorities list in the consensus (not a bridge, not an onion host)."""
        return self.is_relay and not self.is_bridge

    @property
    def is_relay(self) -> bool:
        return self.role != "onion-service"

    @property
    def orport(self) -> int | None:
        """The advertised ORPort (the emulator's when `emulated`)."""
        return OR_PORT if self.is_relay else None

    @property
    def ipv6_orport(self) -> int | None:
        return OR_PORT if self.is_relay and self.ipv6_address else None

    @property
    def listen_orport(self) -> int | None:
        """The port tor itself listens on: `orport`, or a private one behind the emulator."""
        if not self.is_relay:
            return None
        return PRIVATE_OR_PORT if self.emulated else OR_PORT

    @property
    def dirport(self) -> int | None:
        return DIR_PORT if self.role == "authority" else None

    @property
    def hsdir(self) -> bool:
        # Every non-authority relay is an HSDir: 6 of them cover 2 replicas x spread 4 well enough.
        # Not the bad relays: onion services must stay reachable in the realistic profile.
        return self.role in ("guard", "middle", "exit") and self.fault is None


def _addr(n: int) -> str:
    return f"127.{n}.0.1"


def _addr6(n: int) -> str:
    return f"fd00:0:0:{n}::1"


DEFAULT_PROFILE = "loopback"


@dataclass(frozen=True)
class NetworkPlan:
    nodes: tuple[NodeSpec, ...] = field(default_factory=lambda: default_nodes())
    profile: str = DEFAULT_PROFILE  # "loopback" or "realistic" (profiles.py makes those)
    seed: int | None = None  # what the realistic profile's delays were drawn with
    target_delay_ms: float = 0.0  # one-way delay between the exits and the targets

    @property
    def emulated(self) -> bool:
        """Does this network run the link emulator (any relay behind it)?"""
        return any(n.emulated for n in self.nodes)

    @property
    def listed_addresses(self) -> list[str]:
        """Every address of an authority or listed relay: what a censor blocks."""
        out: list[str] = []
        for n in self.nodes:
            if n.is_listed:
                out += [n.address, *([n.ipv6_address] if n.ipv6_address else [])]
        return out

    def by_role(self, *roles: Role) -> list[NodeSpec]:
        return [n for n in self.nodes if n.role in roles]

    @property
    def ipv6_addresses(self) -> list[str]:
        """The IPv6 ORPort addresses, to be added to the namespace's ``lo``."""
        return [n.ipv6_address for n in self.nodes if n.ipv6_address]

    def without_ipv6(self) -> NetworkPlan:
        """The same plan with IPv4 ORPorts only (for a namespace without IPv6)."""
        return replace(self, nodes=tuple(replace(n, ipv6_address=None) for n in self.nodes))

    def without_transports(self) -> NetworkPlan:
        """The same plan without the bridges behind a pluggable transport (no obfs4proxy)."""
        return replace(self, nodes=tuple(n for n in self.nodes if n.transport is None))

    def node(self, nickname: str) -> NodeSpec:
        for n in self.nodes:
            if n.nickname == nickname:
                return n
        raise KeyError(f"no node named {nickname!r}")


EXIT1_POLICY = ("accept *:*",)
EXIT2_POLICY = ("accept *:80", "accept *:443", f"accept *:{CLOSED_PORT}", "reject *:*")


def default_nodes() -> tuple[NodeSpec, ...]:
    # Realistic, different bandwidths (KB/s) so bandwidth-weights are computed, not degenerate.
    return (
        # Dual-stack: the authorities (so that a client with ClientUseIPv4 0 can bootstrap)
        # and guard1 and guard2; guard3 and the rest have IPv4 only.
        NodeSpec("auth1", "authority", _addr(1), bandwidth_kb=2000, ipv6_address=_addr6(1)),
        NodeSpec("auth2", "authority", _addr(2), bandwidth_kb=2000, ipv6_address=_addr6(2)),
        NodeSpec("auth3", "authority", _addr(3), bandwidth_kb=2000, ipv6_address=_addr6(3)),
        NodeSpec("guard1", "guard", _addr(4), bandwidth_kb=12000, ipv6_address=_addr6(4)),
        NodeSpec("guard2", "guard", _addr(5), bandwidth_kb=9000, ipv6_address=_addr6(5)),
        NodeSpec("guard3", "guard", _addr(6), bandwidth_kb=7000),
        NodeSpec("middle1", "middle", _addr(7), bandwidth_kb=5000),
        NodeSpec("exit1", "exit", _addr(8), bandwidth_kb=10000, exit_policy=EXIT1_POLICY),
        NodeSpec("exit2", "exit", _addr(9), bandwidth_kb=4000, exit_policy=EXIT2_POLICY),
        NodeSpec(
            "onion1",
            "onion-service",
            _addr(10),
            onion_backend=f"{ONION_PLAIN_BACKEND_IP}:{HTTP_PORT}",
        ),
        NodeSpec(
            "onion2",
            "onion-service",
            _addr(11),
            onion_backend=f"{ONION_AUTH_BACKEND_IP}:{HTTP_PORT}",
            client_auth=True,
        ),
        # Bridges: not in the consensus; a plain one and one behind obfs4 (obfs4proxy).
        NodeSpec("bridge1", "bridge", _addr(12), bandwidth_kb=5000),
        NodeSpec("bridge2", "bridge", _addr(13), bandwidth_kb=5000, transport="obfs4"),
    )


def expected_flags(node: NodeSpec) -> frozenset[str]:
    """Flags the authorities must vote for `node` before we call the network ready."""
    flags = {"Running", "Valid", "Fast", "Stable", "V2Dir"}
    if node.role == "authority":
        flags.add("Authority")
    if node.role == "guard":
        flags.add("Guard")
    if node.role == "exit":
        flags.add("Exit")
    if node.hsdir:
        flags.add("HSDir")
    return frozenset(flags)
