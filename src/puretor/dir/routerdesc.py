"""Server descriptors (dir-spec §2.1.1), as far as a client needs them: a bridge's own.

A bridge is in no consensus, so a client learns its keys from the descriptor the bridge
serves itself at ``/tor/server/authority`` (C tor: bridges.c, "learned_router_identity").
`parse_router_descriptor` checks the RSA signature and that the signing key is the identity
`expected` (the Bridge line's fingerprint, or the identity the channel proved), and
`bridge_relay` turns the descriptor into the `Relay` path selection works with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from puretor.dir.consensus import parse_protocols
from puretor.dir.microdesc import normalise_family
from puretor.dir.netdir import Relay
from puretor.dir.netdoc import b64decode_unpadded, check_unique, parse_datetime, tokenize
from puretor.errors import DocumentError
from puretor.proto.tor_rsa import rsa_key_digest, tor_rsa_verify

# What a bridge that works is assumed to be (C tor marks a bridge with a descriptor usable as
# a guard and directory cache: bridges.c, rewrite_node_address_for_bridge and friends).
BRIDGE_FLAGS = frozenset({"Running", "Valid", "Guard", "Stable", "Fast", "V2Dir"})
MAX_DESCRIPTOR = 64 * 1024


@dataclass(frozen=True, slots=True)
class RouterDescriptor:
    nickname: str
    address: str
    or_port: int
    rsa_id: bytes
    ed_id: bytes | None
    ntor_key: bytes
    protocols: dict[str, frozenset[int]]
    family: frozenset[str]
    published: datetime
    platform: str
    bandwidth: int  # observed bytes/s

    @property
    def fingerprint(self) -> str:
        return self.rsa_id.hex().upper()


_ONCE = (
    "router",
    "bandwidth",
    "published",
    "signing-key",
    "ntor-onion-key",
    "router-signature",
    "proto",
    "platform",
    "master-key-ed25519",
    "family",
    "fingerprint",
)


def parse_router_descriptor(data: bytes, expected: bytes | None = None) -> RouterDescriptor:
    """Parse and verify one server descriptor; `expected`: the RSA identity it must have."""
    if len(data) > MAX_DESCRIPTOR:
        raise DocumentError(f"server descriptor is too long ({len(data)} bytes)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise DocumentError("server descriptor is not ASCII") from None
    items = tokenize(text, what="server descriptor", annotations=True)
    if not items or items[0].keyword != "router":
        raise DocumentError("server descriptor: does not start with 'router'")
    if items[-1].keyword != "router-signature":
        raise DocumentError("server descriptor: does not end with 'router-signature'")
    one = check_unique(items, _ONCE, "server descriptor")
    for kw in ("bandwidth", "published", "signing-key", "ntor-onion-key"):
        if kw not in one:
            raise DocumentError(f"server descriptor: missing {kw!r}")
    router = one["router"]
    nickname, address, port_text = router.need_args(5)[:3]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise router.error(f"bad ORPort {port_text!r}")
    key_item = one["signing-key"]
    try:
        key = load_der_public_key(key_item.object_bytes("RSA PUBLIC KEY"))
    except (ValueError, UnsupportedAlgorithm):
        raise key_item.error("not an RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise key_item.error("not an RSA public key")
    rsa_id = rsa_key_digest(key)
    if expected is not None and rsa_id != expected:
        raise DocumentError(
            f"server descriptor of {nickname} is for ${rsa_id.hex().upper()}, "
            f"not the expected ${expected.hex().upper()}"
        )
    sig_item = one["router-signature"]
    signed = text[router.start : sig_item.start] + "router-signature\n"
    digest = hashlib.sha1(signed.encode("ascii")).digest()
    if not tor_rsa_verify(key, digest, sig_item.object_bytes("SIGNATURE")):
        raise sig_item.error("bad signature")
    ntor = one["ntor-onion-key"]
    # Unpadded or padded base64 both occur.
    ntor_key = b64decode_unpadded(ntor, ntor.arg(0).rstrip("="), 32)
    ed_id = None
    if "master-key-ed25519" in one:
        item = one["master-key-ed25519"]
        ed_id = b64decode_unpadded(item, item.arg(0).rstrip("="), 32)
    protocols = parse_protocols(one["proto"], one["proto"].args) if "proto" in one else {}
    published_item = one["published"]
    published = parse_datetime(published_item, *published_item.need_args(2)[:2])
    bw = one["bandwidth"].need_args(3)
    observed = int(bw[2]) if bw[2].isdigit() else 0
    return RouterDescriptor(
        nickname=nickname,
        address=address,
        or_port=int(port_text),
        rsa_id=rsa_id,
        ed_id=ed_id,
        ntor_key=ntor_key,
        protocols=protocols,
        family=normalise_family(one["family"].args) if "family" in one else frozenset(),
        published=published,
        platform=one["platform"].rest if "platform" in one else "",
        bandwidth=observed,
    )


def bridge_relay(desc: RouterDescriptor, address: str, or_port: int) -> Relay:
    """The bridge as a first hop: its keys from the descriptor, but the address and port of
    its Bridge line (for a pluggable transport: the transport's, reached through the proxy)."""
    return Relay(
        nickname=desc.nickname,
        rsa_id=desc.rsa_id,
        address=address,
        or_port=or_port,
        dir_port=0,
        flags=BRIDGE_FLAGS,
        bandwidth=max(1, desc.bandwidth // 1000),
        protocols=desc.protocols,
        ntor_key=desc.ntor_key,
        ed_id=desc.ed_id,
        family=desc.family,
    )
