"""Which relays may not share a circuit: families and subnets (path-spec §2.2).

Two relays are *related* (never in the same path) when

* they are in the same declared family: each lists the other in its microdescriptor ``family``
  line (mutual; one-sided claims mean nothing), or they share any ``family-ids`` entry
  (proposal 321 family keys, which are already mutual by construction); or
* ``EnforceDistinctSubnets`` is on and their IPv4 addresses share a /16, or their IPv6 ORPort
  addresses share a /32.

A ``family`` entry names a relay either by ``$FINGERPRINT`` (upper-case after the microdescriptor
canonicalisation of dir-spec §3.3) or by nickname (lower-case).  We accept both, as C tor does
(``nodefamily_contains_node``): dir-spec §2.1.1 allows nicknames, and since the relation must be
mutual, matching more names can only *shrink* the set of paths, never join two relays that did not
both ask for it.
"""

from __future__ import annotations

import contextlib
import ipaddress

from puretor.dir.netdir import Relay


def family_tokens(relay: Relay) -> tuple[str, str]:
    """The two ``family``-line spellings that name ``relay``: ``$HEX`` and its nickname."""
    return "$" + relay.fingerprint, relay.nickname.lower()


def lists(a: Relay, b: Relay) -> bool:
    """True if ``a``'s family line names ``b`` (one direction only)."""
    fp, nick = family_tokens(b)
    return fp in a.family or nick in a.family


def in_same_family(a: Relay, b: Relay) -> bool:
    """Mutual ``family`` listing, or a shared ``family-ids`` entry."""
    if a.family_ids and not a.family_ids.isdisjoint(b.family_ids):
        return True
    return lists(a, b) and lists(b, a)


def subnet_keys(relay: Relay) -> tuple[int | None, int | None]:
    """(IPv4 /16 prefix, IPv6 /32 prefix) of the relay's ORPort addresses; None if unknown."""
    v4: int | None = None
    v6: int | None = None
    with contextlib.suppress(ValueError):
        v4 = int(ipaddress.IPv4Address(relay.address)) >> 16
    if relay.ipv6 is not None:
        with contextlib.suppress(ValueError):
            v6 = int(ipaddress.IPv6Address(relay.ipv6[0].strip("[]"))) >> 96
    return v4, v6


def keys_collide(a: tuple[int | None, int | None], b: tuple[int | None, int | None]) -> bool:
    """Same /16 or same /32, given two :func:`subnet_keys` results."""
    return (a[0] is not None and a[0] == b[0]) or (a[1] is not None and a[1] == b[1])


def in_same_subnet(a: Relay, b: Relay) -> bool:
    return keys_collide(subnet_keys(a), subnet_keys(b))


def related(a: Relay, b: Relay, *, enforce_distinct_subnets: bool = True) -> bool:
    """True if ``a`` and ``b`` must not appear on the same circuit (including ``a is b``)."""
    if a.rsa_id == b.rsa_id:
        return True
    if enforce_distinct_subnets and in_same_subnet(a, b):
        return True
    return in_same_family(a, b)
