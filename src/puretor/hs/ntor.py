"""The client half of hs-ntor: INTRODUCE1 out, RENDEZVOUS2 in (rend-spec-v3 §3.2, §3.3.2, §4).

INTRODUCE1 body (§3.2.1, C tor ``hs_cell.c``)::

    LEGACY_KEY_ID(20)=0 | AUTH_KEY_TYPE(1)=2 | AUTH_KEY_LEN(2)=32 | AUTH_KEY(32)
    | N_EXTENSIONS(1) [ext…]                         ← "H", everything before ENCRYPTED
    | CLIENT_PK(32)=X | ENCRYPTED_DATA | MAC(32)

``ENCRYPTED_DATA`` = AES-256-CTR(ENC_KEY, IV=0) of the §3.3 plaintext::

    RENDEZVOUS_COOKIE(20) | N_EXTENSIONS(1) [ext…] | ONION_KEY_TYPE(1)=1 | ONION_KEY_LEN(2)=32
    | ONION_KEY (the RP's ntor key) | NSPEC(1) [link specifiers of the RP] | zero PAD

and ``MAC = MAC(MAC_KEY, H | X | ENCRYPTED_DATA)`` — *every* byte before the
MAC (C tor compute_introduce_mac(); the spec prose "from AUTH_KEY" is wrong,
spec-map §8.6).  C tor pads the plaintext so that ``len(H) + len(plaintext)``
reaches 246 (HS_CELL_INTRODUCE1_MIN_SIZE), as the Appendix G transcript shows.

Throughout, ``MAC(k, m) = SHA3-256(INT_8(len(k)) | k | m)``: the *secret* is
the key and the tweak string the message (hs_ntor_ref.py ``mac(k, m)``).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from puretor.errors import OnionError, RemoteProtocolError
from puretor.proto.relaymsg import RELAY_DATA_LEN, LinkSpecifier, encode_link_specifiers

__all__ = [
    "EXT_CC_REQUEST",
    "EXT_POW",
    "HsKeys",
    "HsNtorClientState",
    "IntroduceAckStatus",
    "build_introduce1",
    "complete_rendezvous",
    "expand_keys",
    "hs_mac",
    "parse_introduce_ack",
    "pow_extension",
]

PROTOID = b"tor-hs-ntor-curve25519-sha3-256-1"
T_HSENC = PROTOID + b":hs_key_extract"
T_HSVERIFY = PROTOID + b":hs_verify"
T_HSMAC = PROTOID + b":hs_mac"
M_HSEXPAND = PROTOID + b":hs_key_expand"

AUTH_KEY_TYPE_ED25519 = 0x02  # §3.1.1 [EST_INTRO]
ONION_KEY_TYPE_NTOR = 0x01  # §3.3
INTRODUCE1_MIN_SIZE = 246  # C tor hs_cell.h HS_CELL_INTRODUCE1_MIN_SIZE
REND_COOKIE_LEN = 20

# Extension types in the encrypted part of INTRODUCE1 (C tor trunnel TRUNNEL_EXT_TYPE_*).
EXT_CC_REQUEST = 0x01  # prop 324 §9: empty body, "please use congestion control"
EXT_POW = 0x02  # prop 327: proof-of-work solution

_U64 = struct.Struct(">Q")
_SOCKS_REND_FAILED = 0xF3  # prop 304: "Onion Service Rendezvous Failed"


def hs_mac(key: bytes, message: bytes) -> bytes:
    """``MAC(k, m) = SHA3-256(INT_8(len(k)) | k | m)`` (rend-spec §0.3)."""
    return hashlib.sha3_256(_U64.pack(len(key)) + key + message).digest()


@dataclass(frozen=True, slots=True)
class HsKeys:
    """Key material for the virtual hop to the service (§4.2.1): SHA3-256 digests, AES-256."""

    df: bytes  # forward digest seed (client → service)
    db: bytes  # backward digest seed
    kf: bytes  # forward AES-256-CTR key
    kb: bytes  # backward AES-256-CTR key


@dataclass(frozen=True, slots=True)
class HsNtorClientState:
    """What the client keeps between INTRODUCE1 and RENDEZVOUS2.  Holds a secret."""

    client_private: bytes = field(repr=False)  # x (raw X25519 scalar): never printed
    client_public: bytes  # X
    auth_key: bytes  # AUTH_KEY (intro point auth key)
    enc_key: bytes  # B (service's KP_hss_ntor)
    subcredential: bytes = field(repr=False)


def _x25519(private: bytes, public: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError:  # all-zero output: the peer sent a small-order point
        raise OnionError("hs-ntor: peer key is a small-order point", _SOCKS_REND_FAILED) from None


def _extensions(exts: Sequence[tuple[int, bytes]]) -> bytes:
    if len(exts) > 255:
        raise ValueError("too many extensions")
    out = bytearray([len(exts)])
    for ext_type, data in exts:
        if not 0 <= ext_type <= 255 or len(data) > 255:
            raise ValueError(f"extension {ext_type} does not fit")
        out += bytes([ext_type, len(data)]) + data
    return bytes(out)


def pow_extension(nonce: bytes, effort: int, seed: bytes, solution: bytes) -> tuple[int, bytes]:
    """The prop 327 v1 PoW extension: ``VERSION=1 | NONCE(16) | EFFORT(4) | SEED[:4] | SOLUTION(16)``."""
    if len(nonce) != 16 or len(solution) != 16 or len(seed) < 4:
        raise ValueError("bad PoW nonce/seed/solution length")
    return EXT_POW, b"\x01" + nonce + struct.pack(">I", effort) + seed[:4] + solution


def build_introduce1(
    intro_auth_key: bytes,
    service_enc_key: bytes,
    subcredential: bytes,
    rendezvous_cookie: bytes,
    rp_ntor_key: bytes,
    rp_link_specifiers: Sequence[LinkSpecifier],
    *,
    client_private: bytes | None = None,
    extensions: Sequence[tuple[int, bytes]] = (),
    outer_extensions: Sequence[tuple[int, bytes]] = (),
) -> tuple[HsNtorClientState, bytes]:
    """Build an INTRODUCE1 body; returns the state needed for RENDEZVOUS2.

    ``extensions`` go in the encrypted part (CC request, PoW); C tor sends
    none in the clear header (``outer_extensions``).  ``client_private`` (32
    random bytes) is drawn from ``secrets`` when not given — tests pass it in.
    The RP link specifiers should include types 00, 02 and 03 (C tor sends
    IPv4, legacy id, Ed25519 id, then IPv6 if any).
    """
    for name, key in (
        ("intro auth key", intro_auth_key),
        ("service enc key", service_enc_key),
        ("subcredential", subcredential),
        ("RP ntor key", rp_ntor_key),
    ):
        if len(key) != 32:
            raise ValueError(f"{name} must be 32 bytes")
    if len(rendezvous_cookie) != REND_COOKIE_LEN:
        raise ValueError("rendezvous cookie must be 20 bytes")
    x = client_private if client_private is not None else secrets.token_bytes(32)
    X = X25519PrivateKey.from_private_bytes(x).public_key().public_bytes_raw()

    header = (
        bytes(20)
        + bytes([AUTH_KEY_TYPE_ED25519])
        + struct.pack(">H", 32)
        + intro_auth_key
        + _extensions(outer_extensions)
    )
    plaintext = (
        rendezvous_cookie
        + _extensions(extensions)
        + bytes([ONION_KEY_TYPE_NTOR])
        + struct.pack(">H", 32)
        + rp_ntor_key
        + encode_link_specifiers(rp_link_specifiers)
    )
    plaintext += bytes(max(0, INTRODUCE1_MIN_SIZE - len(header) - len(plaintext)))

    # intro_secret_hs_input = EXP(B,x) | AUTH_KEY | X | B | PROTOID
    secret = _x25519(x, service_enc_key) + intro_auth_key + X + service_enc_key + PROTOID
    # hs_keys = KDF(intro_secret_hs_input | t_hsenc | m_hsexpand | N_hs_subcred, 64)
    hs_keys = hashlib.shake_256(secret + T_HSENC + M_HSEXPAND + subcredential).digest(64)
    enc_key, mac_key = hs_keys[:32], hs_keys[32:]
    encrypted = Cipher(algorithms.AES(enc_key), modes.CTR(bytes(16))).encryptor().update(plaintext)
    signed = header + X + encrypted
    body = signed + hs_mac(mac_key, signed)
    if len(body) > RELAY_DATA_LEN:
        raise ValueError(f"INTRODUCE1 body of {len(body)} bytes does not fit a relay message")
    state = HsNtorClientState(x, X, intro_auth_key, service_enc_key, subcredential)
    return state, body


def complete_rendezvous(state: HsNtorClientState, rendezvous2_body: bytes) -> HsKeys:
    """Check RENDEZVOUS2 (``Y | AUTH``, extra bytes ignored) and derive the hop keys.

    Raises OnionError(0xF3) if the service's AUTH does not verify.
    """
    if len(rendezvous2_body) < 64:
        raise OnionError("RENDEZVOUS2 body is too short", _SOCKS_REND_FAILED)
    Y, auth = rendezvous2_body[:32], rendezvous2_body[32:64]
    x, X, B = state.client_private, state.client_public, state.enc_key
    # rend_secret_hs_input = EXP(Y,x) | EXP(B,x) | AUTH_KEY | B | X | Y | PROTOID
    secret = _x25519(x, Y) + _x25519(x, B) + state.auth_key + B + X + Y + PROTOID
    seed = hs_mac(secret, T_HSENC)
    verify = hs_mac(secret, T_HSVERIFY)
    auth_input = verify + state.auth_key + B + Y + X + PROTOID + b"Server"
    if not hmac.compare_digest(hs_mac(auth_input, T_HSMAC), auth):
        raise OnionError("RENDEZVOUS2 handshake does not verify", _SOCKS_REND_FAILED)
    return expand_keys(seed)


def expand_keys(ntor_key_seed: bytes) -> HsKeys:
    """§4.2.1: ``K = KDF(NTOR_KEY_SEED | m_hsexpand, 128)`` → Df, Db, Kf, Kb."""
    k = hashlib.shake_256(ntor_key_seed + M_HSEXPAND).digest(128)
    return HsKeys(df=k[:32], db=k[32:64], kf=k[64:96], kb=k[96:128])


class IntroduceAckStatus(enum.IntEnum):
    """INTRODUCE_ACK status values (§3.2.2)."""

    SUCCESS = 0
    UNKNOWN_SERVICE = 1
    BAD_FORMAT = 2
    CANT_RELAY = 3


def parse_introduce_ack(body: bytes) -> int:
    """``STATUS(2) | N_EXTENSIONS(1) [ext…]`` → the status (0 = delivered to the service)."""
    if len(body) < 3:
        raise RemoteProtocolError("INTRODUCE_ACK is too short")
    status = struct.unpack_from(">H", body)[0]
    pos = 3
    for _ in range(body[2]):
        if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
            raise RemoteProtocolError("INTRODUCE_ACK extension is truncated")
        pos += 2 + body[pos + 1]
    return int(status)
