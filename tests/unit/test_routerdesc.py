"""Server descriptors as a bridge serves its own (dir/routerdesc.py)."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from puretor.dir.routerdesc import BRIDGE_FLAGS, bridge_relay, parse_router_descriptor
from puretor.dir.synth import tor_rsa_sign
from puretor.errors import DocumentError

KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
DER = KEY.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1)
RSA_ID = hashlib.sha1(DER).digest()
NTOR = bytes(range(32))
ED = bytes(range(32, 64))


def _pem(label: str, raw: bytes) -> str:
    b64 = base64.b64encode(raw).decode()
    body = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def make_descriptor(
    *, extra: str = "", key: rsa.RSAPrivateKey = KEY, tamper: bool = False
) -> bytes:
    der = key.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1)
    body = (
        "router bridge1 127.12.0.1 9001 0 0\n"
        f"master-key-ed25519 {base64.b64encode(ED).decode().rstrip('=')}\n"
        "platform Tor 0.4.9.11 on Linux\n"
        "proto Cons=1-2 Desc=1-2 Link=1-5 Relay=1-4 FlowCtrl=1-2 HSDir=2 Microdesc=1-3\n"
        "published 2026-12-08 02:00:00\n"
        "fingerprint " + " ".join(RSA_ID.hex().upper()[i : i + 4] for i in range(0, 40, 4)) + "\n"
        "bandwidth 1073741824 1073741824 52000\n"
        + "signing-key\n"
        + _pem("RSA PUBLIC KEY", der)
        + f"ntor-onion-key {base64.b64encode(NTOR).decode()}\n"
        + extra
        + "router-signature\n"
    )
    digest = hashlib.sha1(body.encode()).digest()
    if tamper:
        body = body.replace("52000", "52001")
    return (body + _pem("SIGNATURE", tor_rsa_sign(key, digest))).encode()


def test_parse_and_verify() -> None:
    desc = parse_router_descriptor(make_descriptor(), RSA_ID)
    assert (desc.nickname, desc.address, desc.or_port) == ("bridge1", "127.12.0.1", 9001)
    assert desc.rsa_id == RSA_ID and desc.ntor_key == NTOR and desc.ed_id == ED
    assert 5 in desc.protocols["Link"] and desc.bandwidth == 52000
    relay = bridge_relay(desc, "127.13.0.1", 9002)
    assert (relay.address, relay.or_port, relay.flags) == ("127.13.0.1", 9002, BRIDGE_FLAGS)
    assert relay.has_md and relay.rsa_id == RSA_ID and relay.ed_id == ED


def test_wrong_identity_is_refused() -> None:
    with pytest.raises(DocumentError, match="not the expected"):
        parse_router_descriptor(make_descriptor(), b"\x01" * 20)


def test_bad_signature_is_refused() -> None:
    with pytest.raises(DocumentError, match="bad signature"):
        parse_router_descriptor(make_descriptor(tamper=True), RSA_ID)


def test_missing_ntor_key() -> None:
    text = make_descriptor().decode()
    start = text.index("ntor-onion-key")
    broken = text[:start] + text[text.index("\n", start) + 1 :]
    with pytest.raises(DocumentError, match="ntor-onion-key"):
        parse_router_descriptor(broken.encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_gives_document_errors(data: bytes) -> None:
    with pytest.raises(DocumentError):
        parse_router_descriptor(data)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 1500), st.binary(min_size=1, max_size=8))
def test_corrupted_descriptor_never_crashes(pos: int, junk: bytes) -> None:
    data = make_descriptor()
    pos %= len(data)
    with contextlib.suppress(DocumentError):
        parse_router_descriptor(data[:pos] + junk + data[pos + len(junk) :], RSA_ID)
