"""The onion-service side's parsers: INTRODUCE2 (`puretor.hs.service.parse_introduce2`),
``authorized_clients/*.auth`` files and a BEGIN from the far end.

Input: ``mode(1) body``.  Mode 0: an INTRODUCE2 body for a service with one fixed
introduction point (its auth key is in the seeds, so mutations reach the MAC check and,
for the seeds built with the right subcredential, the decrypted plaintext); only
``IntroductionError`` may escape, and a parsed introduction must answer with a 84-byte
RENDEZVOUS1.  Mode 1: a ``.auth`` file (``ConfigError`` only).  Mode 2: a BEGIN body
(``ValueError`` only; a parsed one has a port in 1-65535).
"""

from __future__ import annotations

from fuzz.harness import Target, check
from puretor.errors import ConfigError
from puretor.hs.clientauth import parse_authorized_client
from puretor.hs.ntor import build_introduce1
from puretor.hs.service import (
    IntroductionError,
    IntroPointKeys,
    SigningKey,
    expand_seed,
    parse_introduce2,
    public_from_expanded,
)
from puretor.proto.relaymsg import decode_begin, ls_ed_id, ls_ipv4, ls_rsa_id

_ENC_PRIVATE = bytes(range(32))
_AUTH_EXPANDED = expand_seed(bytes(range(32, 64)))
_SUBCRED = bytes([7]) * 32
_RP_SPECS = [ls_ipv4("10.1.2.3", 9001), ls_rsa_id(bytes(20)), ls_ed_id(bytes([1]) * 32)]


def _intro_point() -> IntroPointKeys:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    enc_public = X25519PrivateKey.from_private_bytes(_ENC_PRIVATE).public_key().public_bytes_raw()
    auth = SigningKey(_AUTH_EXPANDED, public_from_expanded(_AUTH_EXPANDED))
    return IntroPointKeys(tuple(_RP_SPECS), bytes(32), auth, _ENC_PRIVATE, enc_public)


_IP = _intro_point()
_POINTS = {_IP.auth.public: _IP}


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == 0:
        try:
            intro = parse_introduce2(body, _POINTS, [_SUBCRED])
        except IntroductionError:
            return
        try:
            rendezvous1, _keys = intro.respond(server_private=bytes([9]) * 32)
        except IntroductionError:
            return
        check(len(rendezvous1) == 84, "RENDEZVOUS1 body length")
    elif mode == 1:
        try:
            key = parse_authorized_client(body.decode("utf-8", "replace"))
        except ConfigError:
            return
        check(len(key) == 32, "authorized client key length")
    else:
        try:
            _host, port, _flags = decode_begin(body)
        except ValueError:
            return
        check(0 < port < 65536, "BEGIN port range")


def seeds() -> list[bytes]:
    out = []
    for ext in ([], [(1, b"")]):
        _state, body = build_introduce1(
            _IP.auth.public,
            _IP.enc_public,
            _SUBCRED,
            bytes([3]) * 20,
            bytes([4]) * 32,
            _RP_SPECS,
            client_private=bytes([5]) * 32,
            extensions=ext,
        )
        out.append(b"\x00" + body)
    out.append(b"\x01descriptor:x25519:" + b"A" * 52)
    out += [b"\x02:80\x00", b"\x02example.com:443\x00\x00\x00\x00\x01", b"\x02[::1]:22\x00"]
    return out


TARGET = Target(
    name="hs_service",
    one_input=one_input,
    seeds=seeds,
    max_len=600,
    dictionary=(b"descriptor:x25519:", b":80\x00"),
    doc=__doc__ or "",
)
