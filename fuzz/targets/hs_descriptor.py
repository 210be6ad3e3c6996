"""v3 onion-service descriptors (`puretor.hs.descriptor`).

Input: ``mode(1) rest``.  The outer layer is signed and both inner layers are
MAC'd, so a mutated descriptor rarely gets past the first check; each layer's
parser therefore also gets the fuzzer's bytes directly, the way it would see a
hostile *service's* plaintext:

0. ``parse_outer(rest)`` against Arti's test blinded key and time;
1. ``rest = signing_key(32) | plaintext``: the second layer, through the same
   ``_decode_text`` + ``parse_inner`` the real path uses;
2. ``rest = plaintext``: the first layer (``desc-auth-type`` ...), through
   ``_decode_text`` + ``_parse_layer1``;
3. ``decode_descriptor(rest)`` end to end with the keys the seeds were built
   with (``tests/unit/hs/hs_testlib.py``), so seeds are complete descriptors.

Only ``OnionError`` may escape.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fuzz.harness import REPO, Target, check
from fuzz.seeds import documents
from fuzz.targets._docs import NETDOC_TOKENS
from puretor.errors import OnionError
from puretor.hs import descriptor as hsd
from puretor.hs._tokens import tokenize
from puretor.proto.certs import parse_ed25519_cert
from puretor.proto.relaymsg import LinkSpecifier, encode_link_specifiers

# Arti tor-netdoc hsdesc.rs test_data (see tests/unit/hs/data/README.md).
ARTI_BLIND = bytes.fromhex("43cc0d62fc6252f578705ca645a46109e265290343b1137e90189744b20b3f2d")
HS_NOW = datetime(2023, 1, 23, 15, 0, tzinfo=UTC).timestamp()
# Keys of the descriptors built for mode 3.
BLIND = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
SIGNING = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)
SUBCRED = b"\x03" * 32
EXP_HOURS = int(HS_NOW) // 3600 + 3


def _outer_for(signing_key: bytes) -> hsd.HsDescriptorOuter:
    return hsd.HsDescriptorOuter(bytes(32), signing_key, 0, 180, 1, b"")


def _outer(rest: bytes) -> None:
    outer = hsd.parse_outer(rest, blinded_key=ARTI_BLIND, now=HS_NOW)
    check(len(outer.superencrypted) > 48, "superencrypted blob too short")


def _inner(rest: bytes) -> None:
    desc = hsd.parse_inner(hsd._decode_text(rest[32:], "fuzz"), _outer_for(rest[:32]), HS_NOW)
    check(len(desc.intro_points) <= hsd.MAX_INTRO_POINTS, "too many intro points")
    desc.supports_congestion_control  # noqa: B018 - exercised for its checks
    for ip in desc.intro_points:
        check(len(ip.onion_key) == len(ip.enc_key) == len(ip.auth_key) == 32, "key lengths")


def _layer1(rest: bytes) -> None:
    hsd._parse_layer1(hsd._decode_text(rest, "fuzz"))


def _full(rest: bytes) -> None:
    hsd.decode_descriptor(
        rest,
        blinded_key=BLIND.public_key().public_bytes_raw(),
        subcredential=SUBCRED,
        now=HS_NOW,
    )


MODES = [_outer, _inner, _layer1, _full]


def one_input(data: bytes) -> None:
    if not data:
        return
    with contextlib.suppress(OnionError):
        MODES[data[0] % len(MODES)](data[1:])


# -- seeds ----------------------------------------------------------------------------


def _signing_key_of(text: str) -> bytes:
    """The key that signed the first auth-key cert: what the outer layer would give."""
    try:
        item = next(i for i in tokenize(text) if i.keyword == "auth-key")
        return parse_ed25519_cert(item.obj or b"").signed_with or bytes(32)
    except (StopIteration, ValueError, Exception):  # noqa: BLE001 - best effort for a seed
        return bytes(32)


def _built() -> list[bytes]:
    """Complete descriptors (and their inner text) from the test suite's service side."""
    path = str(REPO / "tests" / "unit" / "hs")
    if path not in sys.path:
        sys.path.append(path)
    import hs_testlib as lib

    def ip(i: int, enc_cert: bool = True) -> str:
        specs = [
            LinkSpecifier(0, bytes([127, 0, 0, 1, 0x13, i])),
            LinkSpecifier(2, bytes([i]) * 20),
            LinkSpecifier(3, bytes([i]) * 32),
        ]
        auth = Ed25519PrivateKey.from_private_bytes(bytes([i + 100]) * 32)
        return lib.intro_point_text(
            SIGNING,
            EXP_HOURS,
            link_specifiers=encode_link_specifiers(specs),
            onion_key=bytes([i]) * 32,
            auth_key=lib.pub(auth),
            enc_key=bytes([i + 1]) * 32,
            enc_cert=enc_cert,
        )

    inner = (
        "create2-formats 2\nintro-auth-required ed25519\nflow-control 1-2 31\n"
        "pow-params v1 " + "A" * 43 + " 100 2023-01-24T00:00:00\n" + ip(1) + ip(2, False)
    )
    out = [b"\x01" + lib.pub(SIGNING) + inner.encode()]
    for kw in ({}, {"client_pubkeys": (lib.xpub(b"\x05" * 32),)}):
        desc = lib.build_descriptor(
            inner,
            blind=BLIND,
            signing=SIGNING,
            subcred=SUBCRED,
            exp_hours=EXP_HOURS,
            fake_clients=2,
            **kw,
        )
        out.append(b"\x03" + desc)
    return out


def seeds() -> list[bytes]:
    out = [b"\x00" + d for d in documents("hs_descriptor")]
    for text in documents("hs_inner"):
        key = _signing_key_of(text.decode("utf-8", "replace"))
        out.append(b"\x01" + key + text)
    out += [b"\x02" + d for d in documents("hs_layer1")]
    out.append(
        b"\x02desc-auth-type x25519\ndesc-auth-ephemeral-key " + b"A" * 43 + b"\n"
        b"auth-client AAAAAAAAAAA AAAAAAAAAAAAAAAAAAAAAA AAAAAAAAAAAAAAAAAAAAAA\n"
        b"encrypted\n-----BEGIN MESSAGE-----\n" + b"A" * 88 + b"\n-----END MESSAGE-----\n"
    )
    return out + _built()


TARGET = Target(
    name="hs_descriptor",
    one_input=one_input,
    seeds=seeds,
    max_len=32768,
    dictionary=NETDOC_TOKENS
    + (
        b"hs-descriptor 3",
        b"descriptor-lifetime ",
        b"descriptor-signing-key-cert",
        b"revision-counter ",
        b"superencrypted",
        b"signature ",
        b"desc-auth-type x25519",
        b"desc-auth-ephemeral-key ",
        b"auth-client ",
        b"encrypted",
        b"create2-formats 2",
        b"intro-auth-required ed25519",
        b"single-onion-service",
        b"flow-control 1-2 31",
        b"pow-params v1 ",
        b"introduction-point ",
        b"onion-key ntor ",
        b"auth-key",
        b"enc-key ntor ",
        b"enc-key-cert",
    ),
    doc=__doc__ or "",
)
