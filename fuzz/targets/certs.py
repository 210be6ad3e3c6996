"""Ed25519 certs, the RSA->Ed25519 cross-cert and the whole CERTS check (`puretor.proto.certs`).

Input: ``mode(1) rest``.  Mode 0: ``parse_ed25519_cert`` then ``verify()``;
mode 1: ``parse_rsa_ed_crosscert``; mode 2: ``rest = SHA256(TLS cert)(32) |
CERTS payload`` through ``decode_certs`` and ``validate_relay_certs_with_digest``
at the fixed `NOW` (the TLS digest travels in the input so a reproducer needs
nothing else).  Only ``CertsError`` (and ``RemoteProtocolError`` from
``decode_certs``) may escape.
"""

from __future__ import annotations

import contextlib

from fuzz.harness import NOW, Target, check
from fuzz.seeds import certs_payload
from puretor.errors import CertsError, RemoteProtocolError
from puretor.proto.cells import decode_certs
from puretor.proto.certs import (
    parse_ed25519_cert,
    parse_rsa_ed_crosscert,
    validate_relay_certs_with_digest,
)


def _ed25519(b: bytes) -> None:
    cert = parse_ed25519_cert(b)
    check(cert.signed_part + cert.signature == b, "cert does not cover the input exactly")
    cert.is_expired(NOW)
    if cert.signed_with is not None:
        cert.verify()
    cert.verify(b[-32:])  # any 32 bytes as the expected key: CertsError or success


def _crosscert(b: bytes) -> None:
    parse_rsa_ed_crosscert(b)


def _validate(b: bytes) -> None:
    if len(b) < 32:
        return
    ident = validate_relay_certs_with_digest(decode_certs(b[32:]), b[:32], NOW)
    check(len(ident.rsa_id) == 20 and len(ident.ed_id) == 32, "identity lengths")


MODES = [_ed25519, _crosscert, _validate]


def one_input(data: bytes) -> None:
    if not data:
        return
    with contextlib.suppress(CertsError, RemoteProtocolError):
        MODES[data[0] % len(MODES)](data[1:])


def seeds() -> list[bytes]:
    payload, digest = certs_payload()
    out = [b"\x02" + digest + payload]
    for ctype, body in decode_certs(payload):
        if ctype in (4, 5):
            out.append(b"\x00" + body)
        elif ctype == 7:
            out.append(b"\x01" + body)
    return out


TARGET = Target(name="certs", one_input=one_input, seeds=seeds, max_len=8192, doc=__doc__ or "")
