"""The client's view of the network: a consensus joined with microdescriptors.

`NetDir` is an immutable snapshot that path selection, guards and the circuit
manager query.  It is built by the directory layer (`puretor.dir.build_netdir`)
from a verified microdesc consensus plus the microdescriptors it references.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class PortPolicy:
    """A microdescriptor exit-policy summary (dir-spec §3.8.2): ``p accept 80,443``."""

    accept: bool
    ranges: tuple[tuple[int, int], ...]

    def allows(self, port: int) -> bool:
        hit = any(lo <= port <= hi for lo, hi in self.ranges)
        return hit if self.accept else not hit

    @property
    def allows_any(self) -> bool:
        return bool(self.ranges) if self.accept else self.ranges != ((1, 65535),)


REJECT_ALL = PortPolicy(accept=False, ranges=((1, 65535),))


@dataclass(frozen=True, slots=True)
class Relay:
    """One relay as a client sees it: its consensus entry plus its microdescriptor."""

    nickname: str
    rsa_id: bytes  # 20-byte SHA-1 of the PKCS#1 DER identity key (consensus `r`)
    address: str  # IPv4 dotted quad of the ORPort
    or_port: int
    dir_port: int
    flags: frozenset[str]  # consensus `s` line, e.g. {"Fast", "Guard", "Running", ...}
    bandwidth: int  # consensus `w Bandwidth=` (kilobytes/s, as weighted by authorities)
    unmeasured: bool = False
    version: str | None = None  # consensus `v`
    protocols: dict[str, frozenset[int]] = field(default_factory=dict)  # consensus `pr`
    ipv6: tuple[str, int] | None = None  # first consensus `a` line
    md_digest: bytes = b""  # 32-byte SHA-256 of the microdescriptor (consensus `m`)
    # From the microdescriptor (None/empty until it is known):
    ntor_key: bytes | None = None  # 32-byte curve25519 key
    ed_id: bytes | None = None  # 32-byte Ed25519 identity
    family: frozenset[str] = frozenset()  # normalised: "$HEX" upper-case or nickname lower
    family_ids: frozenset[str] = frozenset()
    policy: PortPolicy = REJECT_ALL  # `p`
    policy6: PortPolicy = REJECT_ALL  # `p6`

    @property
    def has_md(self) -> bool:
        return self.ntor_key is not None

    @property
    def fingerprint(self) -> str:
        return self.rsa_id.hex().upper()

    def supports(self, proto: str, version: int) -> bool:
        return version in self.protocols.get(proto, ())


@dataclass(frozen=True, slots=True)
class NetDir:
    """A verified consensus with the microdescriptors known for it."""

    valid_after: datetime
    fresh_until: datetime
    valid_until: datetime
    voting_interval: int  # seconds (`voting-delay` does not give it: fresh_until - valid_after)
    params: dict[str, int]
    bandwidth_weights: dict[str, int]
    relays: tuple[Relay, ...]
    shared_rand_current: bytes | None = None
    shared_rand_previous: bytes | None = None
    consensus_digest: bytes = b""  # SHA3-256 of the signed part (for diffs / cache naming)
    _by_rsa: dict[bytes, Relay] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_rsa", {r.rsa_id: r for r in self.relays})

    def param(self, name: str, default: int, lo: int = -(2**31), hi: int = 2**31 - 1) -> int:
        """A consensus parameter, clamped to its documented range (param-spec)."""
        value = self.params.get(name, default)
        return min(max(value, lo), hi)

    def weight(self, name: str) -> int:
        """A bandwidth weight such as ``Wgg``; missing weights default to 10000 (path-spec §2.2)."""
        return self.bandwidth_weights.get(name, 10000)

    def by_rsa_id(self, rsa_id: bytes) -> Relay | None:
        return self._by_rsa.get(rsa_id)

    def usable_relays(self) -> list[Relay]:
        """Relays that can be used in a circuit: listed (Running, Valid) with a microdescriptor."""
        return [r for r in self.relays if r.has_md and "Running" in r.flags and "Valid" in r.flags]
