"""Client side of the circuit handshakes and their KDFs.

* ntor (tor-spec §5.1.4), HTYPE 2, keys by KDF-RFC5869 (§5.2.2);
* ntor v3 (proposal 332), HTYPE 3: carries an encrypted client message and a
  server reply; C tor clients use it with the exit to negotiate congestion
  control (spec-map §2.3, §4.2);
* CREATE_FAST (tor-spec §5.1.5), keys by KDF-TOR (§5.2.1) — only for one-hop
  directory circuits during bootstrap (spec-map §2.4).

Both return :class:`HopKeys` for the tor1 relay crypto: Df(20) Db(20) Kf(16) Kb(16),
plus KH(20). Failures caused by the relay raise
:class:`~puretor.errors.RemoteProtocolError`; misuse by the caller raises ValueError.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from puretor.errors import RemoteProtocolError

__all__ = [
    "NTOR_HTYPE",
    "NTOR_V3_HTYPE",
    "HopKeys",
    "NtorClientState",
    "NtorV3ClientState",
    "decode_extensions",
    "encode_extensions",
    "fast_client_complete",
    "fast_client_create",
    "kdf_rfc5869",
    "kdf_tor",
    "ntor_client_complete",
    "ntor_client_create",
    "ntor_v3_client_complete",
    "ntor_v3_client_create",
    "split_tor1_keys",
]

NTOR_HTYPE = 2
NTOR_V3_HTYPE = 3

# tor1 key layout (tor-spec §5.2): Df Db Kf Kb, optionally followed by KH.
_DIGEST_LEN = 20
_KEY_LEN = 16
TOR1_KEYS_LEN = 2 * _DIGEST_LEN + 2 * _KEY_LEN  # 72
TOR1_KEYS_WITH_KH_LEN = TOR1_KEYS_LEN + _DIGEST_LEN  # 92


# -- KDFs (tor-spec §5.2) --------------------------------------------------------------


def kdf_tor(k0: bytes, n: int) -> bytes:
    """KDF-TOR: ``SHA1(K0|00) | SHA1(K0|01) | ...`` truncated to ``n`` bytes (§5.2.1)."""
    if not 0 <= n <= 256 * _DIGEST_LEN:
        raise ValueError(f"KDF-TOR cannot produce {n} bytes")
    blocks = (n + _DIGEST_LEN - 1) // _DIGEST_LEN
    return b"".join(hashlib.sha1(k0 + bytes((i,))).digest() for i in range(blocks))[:n]


def kdf_rfc5869(secret: bytes, salt: bytes, info: bytes, n: int) -> bytes:
    """KDF-RFC5869: HKDF-SHA256 extract-then-expand (§5.2.2, RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=n, salt=salt, info=info).derive(secret)


@dataclass(frozen=True, slots=True)
class HopKeys:
    """Keys for one hop: running-digest seeds Df/Db and AES-CTR keys Kf/Kb."""

    df: bytes
    db: bytes
    kf: bytes
    kb: bytes
    kh: bytes | None = None  # "derivative key data" (KH); only services use it


def split_tor1_keys(material: bytes) -> HopKeys:
    """Split ``Df(20) Db(20) Kf(16) Kb(16)`` [``KH(20)``] key material (tor-spec §5.2.2)."""
    if len(material) not in (TOR1_KEYS_LEN, TOR1_KEYS_WITH_KH_LEN):
        raise ValueError(f"tor1 key material must be 72 or 92 bytes, not {len(material)}")
    return HopKeys(
        df=material[0:20],
        db=material[20:40],
        kf=material[40:56],
        kb=material[56:72],
        kh=material[72:92] or None,
    )


# -- ntor (tor-spec §5.1.4) --------------------------------------------------------------

PROTOID = b"ntor-curve25519-sha256-1"
T_MAC = PROTOID + b":mac"
T_KEY = PROTOID + b":key_extract"
T_VERIFY = PROTOID + b":verify"
M_EXPAND = PROTOID + b":key_expand"
_SERVER = b"Server"
_ZERO32 = bytes(32)


class NtorClientState:
    """What the client remembers between CREATE2/EXTEND2 and CREATED2/EXTENDED2."""

    __slots__ = ("_node_id", "_ntor_key", "_x", "_X")

    def __init__(self, node_id: bytes, ntor_key: bytes, x: X25519PrivateKey, X: bytes) -> None:
        self._node_id = node_id
        self._ntor_key = ntor_key
        self._x = x
        self._X = X

    def __repr__(self) -> str:  # never show the secret
        return f"<NtorClientState node_id={self._node_id.hex()}>"


def _ephemeral(private_key: bytes | None) -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 key pair (or a fixed one, for test vectors): (x, X)."""
    x = (
        X25519PrivateKey.generate()
        if private_key is None
        else X25519PrivateKey.from_private_bytes(private_key)
    )
    return x, x.public_key().public_bytes_raw()


def ntor_client_create(
    node_id: bytes, ntor_key: bytes, *, private_key: bytes | None = None
) -> tuple[NtorClientState, bytes]:
    """Start ntor with the relay (RSA id digest ``ID``, onion key ``B``).

    Returns the state and the 84-byte onionskin ``ID | B | X``. ``private_key``
    (32 raw bytes) makes the ephemeral key deterministic, for tests only.
    """
    if len(node_id) != 20:
        raise ValueError("ntor NODEID must be the 20-byte RSA identity digest")
    if len(ntor_key) != 32:
        raise ValueError("ntor onion key must be 32 bytes")
    x, X = _ephemeral(private_key)  # spec names
    node_id, ntor_key = bytes(node_id), bytes(ntor_key)
    return NtorClientState(node_id, ntor_key, x, X), node_id + ntor_key + X


def _exp(x: X25519PrivateKey, point: bytes) -> bytes:
    """X25519; an all-zero result (small-order point) fails the handshake (§5.1.4)."""
    try:
        shared = x.exchange(X25519PublicKey.from_public_bytes(point))
    except ValueError:  # cryptography refuses all-zero shared secrets itself
        raise RemoteProtocolError("ntor: Diffie-Hellman result is the point at infinity") from None
    if hmac.compare_digest(shared, _ZERO32):
        raise RemoteProtocolError("ntor: Diffie-Hellman result is the point at infinity")
    return shared


def _hmac256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def ntor_client_complete(state: NtorClientState, reply: bytes) -> HopKeys:
    """Finish ntor with the relay's 64-byte ``Y | AUTH``; verify AUTH, derive keys."""
    if len(reply) != 64:
        raise RemoteProtocolError(f"ntor server handshake is {len(reply)} bytes, expected 64")
    Y, auth = bytes(reply[:32]), bytes(reply[32:])  # spec names
    ID, B, X = state._node_id, state._ntor_key, state._X
    secret_input = _exp(state._x, Y) + _exp(state._x, B) + ID + B + X + Y + PROTOID
    # H(x, t) in §5.1.4 is HMAC-SHA256 with the tweak t as the *key*.
    verify = _hmac256(T_VERIFY, secret_input)
    auth_input = verify + ID + B + Y + X + PROTOID + _SERVER
    if not hmac.compare_digest(_hmac256(T_MAC, auth_input), auth):
        raise RemoteProtocolError("ntor: server AUTH does not verify")
    # HKDF's extract step with salt=t_key is exactly KEY_SEED = H(secret_input, t_key).
    return split_tor1_keys(kdf_rfc5869(secret_input, T_KEY, M_EXPAND, TOR1_KEYS_WITH_KH_LEN))


# -- ntor v3 (proposal 332) ----------------------------------------------------------------

NTOR3_PROTOID = b"ntor3-curve25519-sha3_256-1"
_T3_MSGKDF = NTOR3_PROTOID + b":kdf_phase1"
_T3_MSGMAC = NTOR3_PROTOID + b":msg_mac"
_T3_KEY_SEED = NTOR3_PROTOID + b":key_seed"
_T3_VERIFY = NTOR3_PROTOID + b":verify"
_T3_FINAL = NTOR3_PROTOID + b":kdf_final"
_T3_AUTH = NTOR3_PROTOID + b":auth_final"
# [C-TOR] the verification string of circuit handshakes (not in prop 332; arti copies it).
NTOR3_CIRC_VERIFICATION = b"circuit extend"
_ZERO_IV = bytes(16)


def _encap(s: bytes) -> bytes:
    """ENCAP(s) = INT_8(len(s)) | s: an 8-byte big-endian length prefix."""
    return len(s).to_bytes(8, "big") + s


def _h3(s: bytes, tweak: bytes) -> bytes:
    return hashlib.sha3_256(_encap(tweak) + s).digest()


def _mac3(key: bytes, msg: bytes, tweak: bytes) -> bytes:
    return hashlib.sha3_256(_encap(tweak) + _encap(key) + msg).digest()


def _kdf3(s: bytes, tweak: bytes, n: int) -> bytes:
    return hashlib.shake_256(_encap(tweak) + s).digest(n)


def _aes256_ctr(key: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()
    return enc.update(data) + enc.finalize()


class NtorV3ClientState:
    """What the client keeps between an ntor-v3 onionskin and the relay's reply."""

    __slots__ = ("_id", "_B", "_x", "_X", "_Bx", "_mac", "_verification")

    def __init__(
        self,
        relay_id: bytes,
        ntor_key: bytes,
        x: X25519PrivateKey,
        X: bytes,
        Bx: bytes,
        mac: bytes,
        verification: bytes,
    ) -> None:
        self._id = relay_id
        self._B = ntor_key
        self._x = x
        self._X = X
        self._Bx = Bx
        self._mac = mac
        self._verification = verification

    def __repr__(self) -> str:  # never show the secret
        return f"<NtorV3ClientState id={self._id.hex()}>"


def ntor_v3_client_create(
    ed_id: bytes,
    ntor_key: bytes,
    message: bytes,
    *,
    verification: bytes = NTOR3_CIRC_VERIFICATION,
    private_key: bytes | None = None,
) -> tuple[NtorV3ClientState, bytes]:
    """Start ntor v3 with the relay (Ed25519 identity ``ID``, onion key ``B``).

    ``message`` is the client message CM (sent encrypted).  Returns the state and the
    onionskin ``ID | B | X | ENC(CM) | MAC`` (128 + len(CM) bytes).  ``private_key``
    makes the ephemeral key deterministic, for tests only.
    """
    if len(ed_id) != 32:
        raise ValueError("ntor v3 ID must be the 32-byte Ed25519 identity")
    if len(ntor_key) != 32:
        raise ValueError("ntor onion key must be 32 bytes")
    x, X = _ephemeral(private_key)  # spec names
    ID, B = bytes(ed_id), bytes(ntor_key)
    Bx = _exp(x, B)
    phase1 = _kdf3(Bx + ID + X + B + NTOR3_PROTOID + _encap(verification), _T3_MSGKDF, 64)
    enc_key, mac_key = phase1[:32], phase1[32:]
    head = ID + B + X + _aes256_ctr(enc_key, bytes(message))
    mac = _mac3(mac_key, head, _T3_MSGMAC)
    state = NtorV3ClientState(ID, B, x, X, Bx, mac, bytes(verification))
    return state, head + mac


def ntor_v3_client_complete_raw(
    state: NtorV3ClientState, reply: bytes, key_len: int
) -> tuple[bytes, bytes]:
    """Finish ntor v3 with the relay's ``Y | AUTH | ENC(SM)``.

    Returns ``key_len`` bytes of key material and the decrypted server message.
    """
    if len(reply) < 64:
        raise RemoteProtocolError(f"ntor v3 server handshake is {len(reply)} bytes, expected >= 64")
    Y, auth, server_msg = bytes(reply[:32]), bytes(reply[32:64]), bytes(reply[64:])
    ID, B, X = state._id, state._B, state._X
    secret_input = (
        _exp(state._x, Y) + state._Bx + ID + B + X + Y + NTOR3_PROTOID + _encap(state._verification)
    )
    key_seed = _h3(secret_input, _T3_KEY_SEED)
    verify = _h3(secret_input, _T3_VERIFY)
    auth_input = verify + ID + B + Y + X + state._mac + _encap(server_msg) + NTOR3_PROTOID + _SERVER
    if not hmac.compare_digest(_h3(auth_input, _T3_AUTH), auth):
        raise RemoteProtocolError("ntor v3: server AUTH does not verify")
    stream = _kdf3(key_seed, _T3_FINAL, 32 + key_len)
    return stream[32:], _aes256_ctr(stream[:32], server_msg)


def ntor_v3_client_complete(state: NtorV3ClientState, reply: bytes) -> tuple[HopKeys, bytes]:
    """Finish ntor v3: tor1 keys ``Df Db Kf Kb KH`` and the server message SM."""
    keys, message = ntor_v3_client_complete_raw(state, reply, TOR1_KEYS_WITH_KH_LEN)
    return split_tor1_keys(keys), message


# -- ntor v3 message extensions ([C-TOR] trunnel `extension`, spec-map §2.3) ---------------


def encode_extensions(fields: list[tuple[int, bytes]]) -> bytes:
    """``N(1)`` then N × ``TYPE(1) LEN(1) DATA``; ``[]`` encodes as ``00``."""
    if len(fields) > 255:
        raise ValueError("too many extension fields")
    out = bytearray((len(fields),))
    for ftype, data in fields:
        if not 0 <= ftype <= 255 or len(data) > 255:
            raise ValueError("extension field type or length out of range")
        out += bytes((ftype, len(data))) + data
    return bytes(out)


def decode_extensions(message: bytes) -> list[tuple[int, bytes]]:
    """Parse an extension list; trailing bytes are ignored (as trunnel's parser does)."""
    if not message:
        raise RemoteProtocolError("empty ntor v3 extension message")
    n, pos = message[0], 1
    fields: list[tuple[int, bytes]] = []
    for _ in range(n):
        if pos + 2 > len(message):
            raise RemoteProtocolError("truncated ntor v3 extension field")
        ftype, flen = message[pos], message[pos + 1]
        data = message[pos + 2 : pos + 2 + flen]
        if len(data) != flen:
            raise RemoteProtocolError("truncated ntor v3 extension field")
        fields.append((ftype, bytes(data)))
        pos += 2 + flen
    return fields


# -- CREATE_FAST (tor-spec §5.1.5) -----------------------------------------------------


def fast_client_create(*, x: bytes | None = None) -> tuple[bytes, bytes]:
    """Returns ``(state, payload)``: both are X, 20 random bytes (``x`` for tests)."""
    if x is None:
        x = secrets.token_bytes(_DIGEST_LEN)
    elif len(x) != _DIGEST_LEN:
        raise ValueError("CREATE_FAST X must be 20 bytes")
    return bytes(x), bytes(x)


def fast_client_complete(x: bytes, reply_y: bytes, reply_kh: bytes) -> HopKeys:
    """KDF-TOR(X|Y) = ``KH Df Db Kf Kb``; the relay's KH must match (§5.1.5, §5.2.1)."""
    if len(reply_y) != _DIGEST_LEN or len(reply_kh) != _DIGEST_LEN:
        raise RemoteProtocolError("CREATED_FAST: Y and KH must be 20 bytes each")
    k = kdf_tor(bytes(x) + bytes(reply_y), TOR1_KEYS_WITH_KH_LEN)
    kh = k[:_DIGEST_LEN]
    if not hmac.compare_digest(kh, bytes(reply_kh)):
        raise RemoteProtocolError("CREATED_FAST: KH does not match")
    return split_tor1_keys(k[_DIGEST_LEN:] + kh)
