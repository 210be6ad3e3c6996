"""Test-only service side of the onion-service protocols (descriptor encoder, hs-ntor server).

Written from rend-spec-v3 so the client code can be exercised in memory; it is
never imported by the package.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import textwrap

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from puretor.dir.netdir import Relay
from puretor.hs.ntor import M_HSEXPAND, PROTOID, T_HSENC, T_HSMAC, T_HSVERIFY, hs_mac

U64 = struct.Struct(">Q")


def pub(priv: Ed25519PrivateKey) -> bytes:
    return priv.public_key().public_bytes_raw()


def xpub(priv: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()


def make_cert(cert_type: int, certified: bytes, signer: Ed25519PrivateKey, exp_hours: int) -> bytes:
    """cert-spec §2.1 with one signed-with-ed25519-key extension."""
    body = struct.pack(">BBIB32sB", 1, cert_type, exp_hours, 1, certified, 1)
    body += struct.pack(">HBB", 32, 4, 0) + pub(signer)
    return body + signer.sign(body)


def armor(kind: str, data: bytes) -> str:
    lines = textwrap.wrap(base64.b64encode(data).decode(), 64)
    return f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----"


def encrypt_layer(
    plain: bytes, secret_data: bytes, subcred: bytes, rev: int, const: bytes, salt: bytes
) -> bytes:
    keys = hashlib.shake_256(secret_data + subcred + U64.pack(rev) + salt + const).digest(80)
    enc = Cipher(algorithms.AES(keys[:32]), modes.CTR(keys[32:48])).encryptor().update(plain)
    mac = hashlib.sha3_256(U64.pack(32) + keys[48:] + U64.pack(16) + salt + enc).digest()
    return salt + enc + mac


def pad10k(text: str) -> bytes:
    raw = text.encode()
    return raw + bytes(-len(raw) % 10000)


def intro_point_text(
    signer: Ed25519PrivateKey,
    exp_hours: int,
    *,
    link_specifiers: bytes,
    onion_key: bytes,
    auth_key: bytes,
    enc_key: bytes,
    enc_cert: bool = True,
) -> str:
    parts = [
        "introduction-point " + base64.b64encode(link_specifiers).decode(),
        "onion-key ntor " + base64.b64encode(onion_key).decode(),
        "auth-key\n" + armor("ED25519 CERT", make_cert(9, auth_key, signer, exp_hours)),
        "enc-key ntor " + base64.b64encode(enc_key).decode(),
    ]
    if enc_cert:
        # (the certified key should be the Ed25519 form of enc_key; clients don't care)
        parts.append(
            "enc-key-cert\n" + armor("ED25519 CERT", make_cert(11, enc_key, signer, exp_hours))
        )
    return "\n".join(parts) + "\n"


def build_descriptor(
    inner: str,
    *,
    blind: Ed25519PrivateKey,
    signing: Ed25519PrivateKey,
    subcred: bytes,
    exp_hours: int,
    revision: int = 42,
    lifetime: int = 180,
    client_pubkeys: tuple[bytes, ...] = (),
    cookie: bytes = b"\x5a" * 16,  # C tor HS_DESC_DESCRIPTOR_COOKIE_LEN (the spec says 32)
    fake_clients: int = 16,
    salt: bytes = b"\x11" * 16,
) -> bytes:
    blinded = pub(blind)
    eph = X25519PrivateKey.from_private_bytes(b"\x33" * 32)
    secret2 = blinded + (cookie if client_pubkeys else b"")
    layer2 = encrypt_layer(pad10k(inner), secret2, subcred, revision, b"hsdir-encrypted-data", salt)
    lines = ["desc-auth-type x25519", "desc-auth-ephemeral-key " + b64(xpub(b"\x33" * 32))]
    for cpk in client_pubkeys:
        seed = eph.exchange(X25519PublicKey.from_public_bytes(cpk))
        keys = hashlib.shake_256(subcred + seed).digest(40)
        iv = b"\x44" * 16
        enc_cookie = Cipher(algorithms.AES(keys[8:]), modes.CTR(iv)).encryptor().update(cookie)
        lines.append(f"auth-client {b64(keys[:8])} {b64(iv)} {b64(enc_cookie)}")
    for i in range(fake_clients):
        lines.append(f"auth-client {b64(bytes([i]) * 8)} {b64(bytes(16))} {b64(bytes(16))}")
    lines.append("encrypted\n" + armor("MESSAGE", layer2))
    layer1 = encrypt_layer(
        pad10k("\n".join(lines)), blinded, subcred, revision, b"hsdir-superencrypted-data", salt
    )
    outer = (
        "hs-descriptor 3\n"
        f"descriptor-lifetime {lifetime}\n"
        "descriptor-signing-key-cert\n"
        + armor("ED25519 CERT", make_cert(8, pub(signing), blind, exp_hours))
        + f"\nrevision-counter {revision}\n"
        "superencrypted\n" + armor("MESSAGE", layer1) + "\n"
    ).encode()
    sig = signing.sign(b"Tor onion service descriptor sig v3" + outer)
    return outer + b"signature " + base64.b64encode(sig).rstrip(b"=") + b"\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def service_handle_introduce2(
    body: bytes, b: bytes, subcred: bytes, y: bytes
) -> tuple[bytes, bytes, bytes]:
    """The service's view (§3.3.2): returns (plaintext, RENDEZVOUS1 handshake info, seed)."""
    auth_key = body[23:55]
    n_ext = body[55]
    pos = 56
    for _ in range(n_ext):
        pos += 2 + body[pos + 1]
    header, X = body[:pos], body[pos : pos + 32]
    encrypted, mac = body[pos + 32 : -32], body[-32:]
    B = xpub(b)
    bx = X25519PrivateKey.from_private_bytes(b).exchange(X25519PublicKey.from_public_bytes(X))
    secret = bx + auth_key + X + B + PROTOID
    keys = hashlib.shake_256(secret + T_HSENC + M_HSEXPAND + subcred).digest(64)
    assert hs_mac(keys[32:], header + X + encrypted) == mac, "INTRODUCE1 MAC"
    plain = Cipher(algorithms.AES(keys[:32]), modes.CTR(bytes(16))).decryptor().update(encrypted)
    Y = xpub(y)
    yx = X25519PrivateKey.from_private_bytes(y).exchange(X25519PublicKey.from_public_bytes(X))
    rsecret = yx + bx + auth_key + B + X + Y + PROTOID
    seed = hs_mac(rsecret, T_HSENC)
    verify = hs_mac(rsecret, T_HSVERIFY)
    auth = hs_mac(verify + auth_key + B + Y + X + PROTOID + b"Server", T_HSMAC)
    return plain, Y + auth, seed


def relay(i: int, *, hsdir: bool = True, ed: bool = True, protos: bool = True) -> Relay:
    return Relay(
        nickname=f"r{i}",
        rsa_id=hashlib.sha1(b"rsa%d" % i).digest(),
        address=f"10.0.{i // 256}.{i % 256}",
        or_port=9001,
        dir_port=0,
        flags=frozenset({"Running", "Valid", "Fast", "Stable"} | ({"HSDir"} if hsdir else set())),
        bandwidth=100,
        protocols={"HSDir": frozenset({1, 2})} if protos else {},
        ntor_key=bytes(32),
        ed_id=hashlib.sha256(b"ed%d" % i).digest() if ed else None,
    )
