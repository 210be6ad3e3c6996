"""Which addresses puretor itself may connect to, and which it must not ask an exit for.

* `AddressFamilies` (``ClientUseIPv4``, ``ClientUseIPv6``, ``ClientPreferIPv6ORPort``):
  the ORPort address to use for a first hop or a directory source, and whether a
  relay is reachable at all (C tor's "reachable addresses", policies.c
  ``fascist_firewall_choose_address``).  Only first hops are connected to directly,
  so this is about guards, authorities and fallbacks.
* `is_internal_address` / `is_local_hostname` (``ClientRejectInternalAddresses``,
  ``ClientDNSRejectInternalAddresses``): C tor's ``tor_addr_is_internal`` and
  ``tor_addr_hostname_is_local``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

AddrPort = tuple[str, int]

# tor_addr_is_internal(addr, 0): the networks that are never a Tor destination.
_INTERNAL_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "0.0.0.0/8",
        "127.0.0.0/8",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "::/127",
    )
)


@dataclass(frozen=True)
class AddressFamilies:
    """ClientUseIPv4 / ClientUseIPv6 / ClientPreferIPv6ORPort (C tor defaults: 1, 1, auto)."""

    use_ipv4: bool = True
    use_ipv6: bool = True
    prefer_ipv6: bool = False  # auto means IPv4, unless IPv4 is off

    def or_address(self, ipv4: AddrPort | None, ipv6: AddrPort | None) -> AddrPort | None:
        """The ORPort address to connect to, or None if no allowed one exists."""
        usable4 = ipv4 if self.use_ipv4 else None
        usable6 = ipv6 if self.use_ipv6 else None
        if self.prefer_ipv6 or not self.use_ipv4:
            return usable6 or usable4
        return usable4 or usable6

    def can_reach(self, ipv4: AddrPort | None, ipv6: AddrPort | None) -> bool:
        return self.or_address(ipv4, ipv6) is not None


def is_internal_address(address: str) -> bool:
    """C tor's tor_addr_is_internal(addr, 0); False for anything that is not an IP literal."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in _INTERNAL_NETS)


def is_local_hostname(name: str) -> bool:
    """C tor's tor_addr_hostname_is_local: ``localhost``, ``local`` and ``*.local``."""
    lower = name.lower().rstrip(".")
    return lower in ("localhost", "local") or lower.endswith(".local")
