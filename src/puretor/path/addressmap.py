"""Virtual addresses for names (C tor's addressmap.c automapping, AutomapHostsOnResolve).

A DNS answer for ``xyz.onion`` cannot be a real address, so with AutomapHostsOnResolve
the DNSPort answers with an unused address from VirtualAddrNetworkIPv4/IPv6 and
remembers it; a later connection to that address, through any port, goes to the name
instead.  The map only ever grows by automapping (C tor keeps automaps until restart
too); a name keeps its address, so repeated lookups agree.
"""

from __future__ import annotations

import ipaddress
import secrets

__all__ = ["AddressMap", "DEFAULT_IPV4_NETWORK", "DEFAULT_IPV6_NETWORK"]

DEFAULT_IPV4_NETWORK = ipaddress.IPv4Network("127.192.0.0/10")
DEFAULT_IPV6_NETWORK = ipaddress.IPv6Network("fe80::/10")
MAX_TRIES = 1000  # random picks before giving up on a crowded network


class AddressMap:
    """virtual address <-> name, for automapped names."""

    def __init__(
        self,
        ipv4: ipaddress.IPv4Network = DEFAULT_IPV4_NETWORK,
        ipv6: ipaddress.IPv6Network = DEFAULT_IPV6_NETWORK,
    ) -> None:
        self.ipv4 = ipv4
        self.ipv6 = ipv6
        self._to_name: dict[str, str] = {}
        self._to_addr: dict[tuple[str, int], str] = {}

    def __len__(self) -> int:
        return len(self._to_name)

    def lookup(self, address: str) -> str | None:
        """The name a virtual address stands for, or None."""
        try:
            key = ipaddress.ip_address(address.strip("[]")).compressed
        except ValueError:
            return None
        return self._to_name.get(key)

    def automap(self, name: str, version: int = 4) -> str:
        """The virtual address (IPv4 or IPv6) for ``name``, picking an unused one if new.

        Raises `ValueError` when the network has no free address left."""
        name = name.lower().rstrip(".")
        known = self._to_addr.get((name, version))
        if known is not None:
            return known
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
