"""Address rewriting before a stream leaves: C tor's addressmap.c.

Two sources feed one map:
- automapping (AutomapHostsOnResolve, ``MAPADDRESS 0.0.0.0=name``): a DNS answer for
  ``xyz.onion`` cannot be a real address, so the DNSPort answers with an unused address
  from VirtualAddrNetworkIPv4/IPv6 (or a ``.virtual`` host name) and remembers it; a later
  connection to that address, through any port, goes to the name instead.  A name keeps
  its address, so repeated lookups agree; automaps last until restart, as in C tor.
- explicit mappings (torrc ``MapAddress``, the control port's ``MAPADDRESS``), with C
  tor's ``*.example.com`` wildcards.  The newest mapping of an address wins; a mapping
  of an address to itself removes it.

`rewrite` applies the map repeatedly (at most 16 times, as C tor), so chains work and
loops end.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "AddressMap",
    "DEFAULT_IPV4_NETWORK",
    "DEFAULT_IPV6_NETWORK",
    "MappingError",
    "parse_mapping",
    "SOURCE_CONFIG",
    "SOURCE_CONTROL",
]

DEFAULT_IPV4_NETWORK = ipaddress.IPv4Network("127.192.0.0/10")
DEFAULT_IPV6_NETWORK = ipaddress.IPv6Network("fe80::/10")
MAX_TRIES = 1000  # random picks before giving up on a crowded network
MAX_REWRITES = 16  # C tor's bound on chained rewrites
SOURCE_CONFIG = "config"  # torrc MapAddress (GETINFO address-mappings/config)
SOURCE_CONTROL = "control"  # MAPADDRESS and automaps (address-mappings/control)
# address_is_invalid_destination(): letters, digits, '-', '.', '_' (or an IP address).
_DESTINATION = re.compile(r"[A-Za-z0-9._-]+")


class MappingError(ValueError):
    """A mapping C tor would refuse; the message is C tor's."""


@dataclass(frozen=True)
class _Mapping:
    target: str
    source: str
    from_wildcard: bool  # "*.example.com": the domain and every name under it
    to_wildcard: bool  # "*.example.net": keep the part before the matched domain


def parse_mapping(address: str, target: str, source: str) -> tuple[str, _Mapping | None]:
    """(the map's key, the mapping; None: remove the key's mapping) for ``address`` ->
    ``target``, checked as C tor's addressmap_register_auto checks it."""
    if "*" in (address, target):
        raise MappingError("can't remap from or to *")
    from_wildcard = address.startswith("*.")
    to_wildcard = target.startswith("*.")
    key = (address[2:] if from_wildcard else address).lower().rstrip(".")
    target = target[2:] if to_wildcard else target
    if to_wildcard and not from_wildcard:
        raise MappingError("can only use wildcard (i.e. '*.') if 'from' address uses wildcard also")
    if not key or not is_valid_destination(target):
        raise MappingError("destination is invalid")
    if target.lower().endswith(".exit"):
        raise MappingError(".exit addresses are not supported by puretor")
    if key == target.lower() and from_wildcard == to_wildcard:
        return key, None
    return key, _Mapping(target, source, from_wildcard, to_wildcard)


def is_valid_destination(address: str) -> bool:
    try:
        ipaddress.ip_address(address.strip("[]"))
        return True
    except ValueError:
        return bool(_DESTINATION.fullmatch(address))


class AddressMap:
    """Virtual addresses and explicit mappings, as one address map."""

    def __init__(
        self,
        ipv4: ipaddress.IPv4Network = DEFAULT_IPV4_NETWORK,
        ipv6: ipaddress.IPv6Network = DEFAULT_IPV6_NETWORK,
    ) -> None:
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self._to_name: dict[str, str] = {}
        self._to_addr: dict[tuple[str, int], str] = {}
        self._mappings: dict[str, _Mapping] = {}

    def __len__(self) -> int:
        return len(self._to_name)

    def lookup(self, address: str) -> str | None:
        """The name a virtual address stands for, or None."""
        key = self._ip_key(address)
        return None if key is None else self._to_name.get(key)

    def automap(self, name: str, version: int = 4) -> str:
        """The virtual address for ``name``, picking an unused one if new: IPv4 or IPv6
        (``version`` 4 or 6), or a random ``.virtual`` host name (``version`` 0).

        Raises `ValueError` when the network has no free address left."""
        name = name.lower().rstrip(".")
        known = self._to_addr.get((name, version))
        if known is not None:
            return known
        if version == 0:
            while True:
                host = base64.b32encode(secrets.token_bytes(10)).decode().lower() + ".virtual"
                if host not in self._to_name:
                    self._to_name[host] = name
                    self._to_addr[(name, 0)] = host
                    return host
        network = self.ipv4 if version == 4 else self.ipv6
        for _ in range(MAX_TRIES):
            offset = secrets.randbelow(network.num_addresses)
            candidate = network.network_address + offset
            text = candidate.compressed
            # C tor never hands out a network's first or last address (x.0, x.255).
            if text in self._to_name or candidate in (
                network.network_address,
                network.broadcast_address,
            ):
                continue
            if version == 4 and text.endswith((".0", ".255")):
                continue
            self._to_name[text] = name
            self._to_addr[(name, version)] = text
            return text
        raise ValueError(f"no free virtual address left in {network}")

    def items(self) -> list[tuple[str, str]]:
        """(virtual address, name) pairs, for the control port's view of the map."""
        return sorted(self._to_name.items())

    def map(self, address: str, target: str, source: str = SOURCE_CONTROL) -> None:
        """Send connections for ``address`` to ``target`` (``MapAddress``/``MAPADDRESS``;
        either may be ``*.domain``).  ``address`` mapped to itself removes its mapping.

        Raises `MappingError` with C tor's reason for a mapping it would refuse."""
        key, mapping = parse_mapping(address, target, source)
        if mapping is None:
            self._mappings.pop(key, None)
        else:
            self._mappings[key] = mapping

    def set_config_mappings(self, pairs: Iterable[tuple[str, str]]) -> list[str]:
        """Replace the torrc's ``MapAddress`` mappings (start-up, SETCONF, reload);
        returns a warning for each one skipped, as C tor skips invalid ones."""
        for key in [k for k, m in self._mappings.items() if m.source == SOURCE_CONFIG]:
            del self._mappings[key]
        problems = []
        for address, target in pairs:
            try:
                self.map(address, target, SOURCE_CONFIG)
            except MappingError as exc:
                problems.append(
                    f"Skipping invalid argument '{address} {target}' to MapAddress: {exc}"
                )
        return problems

    def _match(self, address: str) -> tuple[_Mapping, bool, str] | None:
        """The mapping for ``address``: (mapping, exact match, the part before the
        matched domain)."""
        exact = self._mappings.get(address)
        if exact is not None:
            return exact, True, ""
        at = address.find(".")
        while at >= 0:
            found = self._mappings.get(address[at + 1 :])
            if found is not None and found.from_wildcard:
                return found, False, address[:at]
            at = address.find(".", at + 1)
        return None

    def rewrite(self, address: str) -> str:
        """``address`` after every mapping that applies (C tor's addressmap_rewrite)."""
        current = address
        for _ in range(MAX_REWRITES):
            key = current.lower().rstrip(".")
            virtual = self._to_name.get(self._ip_key(key) or key)
            if virtual is not None:
                current = virtual
                continue
            match = self._match(key)
            if match is None:
                break
            mapping, exact, prefix = match
            if (
                exact
                and mapping.from_wildcard
                and not mapping.to_wildcard
                and (key == mapping.target.lower())
            ):
                break  # "*.example.com -> example.com" given example.com: done, not a loop
            if mapping.to_wildcard and not exact:
                current = f"{prefix}.{mapping.target}"
            else:
                current = mapping.target
        return current

    @staticmethod
    def _ip_key(address: str) -> str | None:
        try:
            return ipaddress.ip_address(address.strip("[]")).compressed
        except ValueError:
            return None

    def mappings(self, source: str | None = None) -> list[str]:
        """``"from to NEVER"`` lines as GETINFO address-mappings/* shows them (C tor
        prints the expiry; these never expire); automaps count as the controller's, as
        in C tor."""
        lines = []
        if source in (None, SOURCE_CONTROL):
            lines += [f"{addr} {name} NEVER" for addr, name in self._to_name.items()]
        for key, m in self._mappings.items():
            if source is None or m.source == source:
                lines.append(
                    f"{'*.' if m.from_wildcard else ''}{key} "
                    f"{'*.' if m.to_wildcard else ''}{m.target} NEVER"
                )
        return lines


def is_automapped_suffix(name: str, suffixes: tuple[str, ...]) -> bool:
    """AutomapHostsSuffixes: ``.`` matches every name; ``.onion`` matches ``x.onion``."""
    lower = name.lower().rstrip(".")
    for suffix in suffixes:
        s = suffix.lower()
        if (
            s == "."
            or lower.endswith(s if s.startswith(".") else "." + s)
            or lower == s.lstrip(".")
        ):
            return True
    return False
