"""Sans-I/O planning for an onion-service connection (rend-spec-v3 §2.2.6, §3, §4).

The asyncio layer drives the steps; this module only decides::

    plan = plan_descriptor_fetch(netdir, "xyz….onion", testing_network=…)
    for hsdir in plan.hsdirs:                 # random order; 3-hop circuit to each
        body = GET plan.url over BEGIN_DIR     # (I/O, elsewhere)
        desc = plan.decode(body, now=…, client_auth_key=…, netdir=netdir)
    for ip in intro_points_in_order(desc):    # random order
        extend to ip.link_specifiers + ip.onion_key; then build_introduce1(
            ip.auth_key, ip.enc_key, plan.subcredential, cookie, rp.ntor_key,
            rp_link_specifiers(rp),
            extensions=introduce1_extensions(desc, netdir, congestion_control=…))

Randomness is injected (``rng``); without one a ``secrets.SystemRandom`` is used.
"""

from __future__ import annotations

import base64
import random
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from puretor.dir.netdir import NetDir, Relay
from puretor.errors import OnionError
from puretor.hs.address import parse_onion_address
from puretor.hs.descriptor import MAX_DESCRIPTOR_SIZE, HsDescriptor, IntroPoint, decode_descriptor
from puretor.hs.hsdir import fetch_srv, hs_relay_index, responsible_hsdirs
from puretor.hs.keys import HsTimeParams, blind_public_key, subcredential
from puretor.hs.ntor import EXT_CC_REQUEST
from puretor.proto.relaymsg import LinkSpecifier, ls_ed_id, ls_ipv4, ls_ipv6, ls_rsa_id

__all__ = [
    "DescriptorFetchPlan",
    "descriptor_id",
    "descriptor_url",
    "hsdir_fetch_index",
    "intro_points_in_order",
    "introduce1_extensions",
    "plan_descriptor_fetch",
    "rp_link_specifiers",
]

SOCKS_DESC_NOT_FOUND = 0xF0  # prop 304: "Onion Service Descriptor Can Not be Found"
SOCKS_INTRO_FAILED = 0xF2  # prop 304: "Onion Service Introduction Failed"


def descriptor_url(blinded_key: bytes) -> str:
    """§2.2.6: ``/tor/hs/3/<base64(A')>``, 43 characters without ``=`` as C tor sends."""
    return "/tor/hs/3/" + base64.b64encode(blinded_key).decode("ascii").rstrip("=")


@dataclass(frozen=True, slots=True)
class DescriptorFetchPlan:
    """Everything derived from one onion address and one consensus."""

    identity_key: bytes  # A
    blinded_key: bytes  # A' for the current time period
    subcredential: bytes
    period_num: int
    period_length: int  # minutes
    url: str
    hsdirs: tuple[Relay, ...]  # responsible HSDirs, in the order to try them

    def decode(
        self,
        body: bytes | str,
        *,
        now: datetime | float,
        client_auth_key: bytes | None = None,
        netdir: NetDir | None = None,
    ) -> HsDescriptor:
        """Verify and decrypt a descriptor fetched with this plan (limits from ``netdir``)."""
        max_size, cc_sendme_inc = MAX_DESCRIPTOR_SIZE, 31
        if netdir is not None:
            max_size = netdir.param("HSV3MaxDescriptorSize", MAX_DESCRIPTOR_SIZE, 1)
            cc_sendme_inc = netdir.param("cc_sendme_inc", 31, 0, 255)
        return decode_descriptor(
            body,
            blinded_key=self.blinded_key,
            subcredential=self.subcredential,
            now=now,
            client_auth_key=client_auth_key,
            max_size=max_size,
            cc_sendme_inc=cc_sendme_inc,
        )


def descriptor_id(plan: DescriptorFetchPlan) -> str:
    """The blinded key as C tor names a v3 descriptor in HS_DESC events: base64, no
    padding (ed25519_public_to_base64)."""
    return base64.b64encode(plan.blinded_key).decode("ascii").rstrip("=")


def hsdir_fetch_index(netdir: NetDir, plan: DescriptorFetchPlan, hsdir: Relay) -> bytes | None:
    """The HSDir's position on the ring ``plan`` used (C tor's hsdir_index.fetch,
    HS_DESC REQUESTED's HSDIR_INDEX); None for a relay without an Ed25519 id."""
    if hsdir.ed_id is None:
        return None
    tp = HsTimeParams(period_length=plan.period_length, voting_interval=netdir.voting_interval)
    return hs_relay_index(hsdir.ed_id, fetch_srv(netdir, tp), plan.period_num, plan.period_length)


def plan_descriptor_fetch(
    netdir: NetDir,
    address: str,
    *,
    testing_network: bool = False,
    exclude: Collection[bytes] = (),
    rng: random.Random | None = None,
) -> DescriptorFetchPlan:
    """Validate ``address`` and work out where its descriptor is for ``netdir``.

    Uses the consensus valid-after, never the local clock (§2.2.3).
    ``testing_network`` must match C tor's ``TestingTorNetwork`` on the network
    (it changes the time-period length, see :mod:`puretor.hs.keys`).
    ``exclude`` holds RSA ids of HSDirs not to ask (e.g. recently failed ones).
    """
    identity = parse_onion_address(address)
    tp = HsTimeParams.from_netdir(netdir, testing_network=testing_network)
    period = tp.period_num(netdir.valid_after)
    blinded = blind_public_key(identity, period, tp.period_length)
    ring = responsible_hsdirs(netdir, blinded, period, tp.period_length)
    hsdirs = [r for r in ring if r.rsa_id not in exclude]
    if not hsdirs:
        raise OnionError(
            f"no usable HSDir for {address} in this consensus", socks_code=SOCKS_DESC_NOT_FOUND
        )
    (rng or secrets.SystemRandom()).shuffle(hsdirs)
    return DescriptorFetchPlan(
        identity_key=identity,
        blinded_key=blinded,
        subcredential=subcredential(identity, blinded),
        period_num=period,
        period_length=tp.period_length,
        url=descriptor_url(blinded),
        hsdirs=tuple(hsdirs),
    )


def intro_points_in_order(
    desc: HsDescriptor,
    *,
    exclude_auth_keys: Collection[bytes] = (),
    rng: random.Random | None = None,
) -> list[IntroPoint]:
    """Usable intro points in random order (C tor client_get_random_intro())."""
    points = [ip for ip in desc.intro_points if ip.auth_key not in exclude_auth_keys]
    if not points:
        raise OnionError(
            "onion service descriptor lists no usable introduction points",
            socks_code=SOCKS_INTRO_FAILED,
        )
    (rng or secrets.SystemRandom()).shuffle(points)
    return points


def rp_link_specifiers(relay: Relay) -> list[LinkSpecifier]:
    """The rendezvous point's link specifiers for INTRODUCE1, in C tor's order.

    C tor node_get_link_specifier_smartlist(): IPv4, legacy id, Ed25519 id, IPv6.
    """
    specs = [ls_ipv4(relay.address, relay.or_port), ls_rsa_id(relay.rsa_id)]
    if relay.ed_id is not None:
        specs.append(ls_ed_id(relay.ed_id))
    if relay.ipv6 is not None:
        specs.append(ls_ipv6(*relay.ipv6))
    return specs


def introduce1_extensions(
    desc: HsDescriptor, netdir: NetDir, *, congestion_control: bool
) -> Sequence[tuple[int, bytes]]:
    """Encrypted-part extensions for INTRODUCE1: a CC request, or nothing.

    C tor adds the request when the rendezvous circuit was set up for
    congestion control: the descriptor's flow-control line includes FlowCtrl=2
    and the consensus ``cc_alg`` is not 0 (hs_circuit.c).  Sending it commits
    the virtual hop to prop 324 flow control (no stream SENDMEs, ``sendme_inc``
    from the descriptor): `Circuit.add_virtual_hop` with ``congestion_control``.
    """
    if (
        congestion_control
        and desc.supports_congestion_control
        and netdir.param("cc_alg", 2, 0, 3) != 0
    ):
        return [(EXT_CC_REQUEST, b"")]
    return []
