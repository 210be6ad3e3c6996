"""The service side of rend-spec-v3, sans-I/O: keys, descriptors, intro and rendezvous cells.

What a service does, and where each step lives here::

    identity = ServiceIdentity.generate() / .from_secret_key_file(bytes)   (C tor's files)
    blinded  = identity.blinded(period_num, period_length)                  (App. A.2)
    ip       = IntroPointKeys.generate(link_specifiers, onion_key)          (auth + enc keys)
    body     = build_establish_intro(ip, kh)                                (§3.1.1)
    text     = build_descriptor(identity, blinded, signing, [ip…], revision, now)  (§2.4, §2.5)
    intro    = parse_introduce2(body, {auth_key: ip}, [subcred…])           (§3.3, hs-ntor server)
    rend1, keys = intro.respond()                                           (§4.2, RENDEZVOUS1)

Ed25519 keys here are *expanded* secret keys (``a | prefix``, 64 bytes), the form C tor
stores in ``hs_ed25519_secret_key`` and the only form a blinded key has: signing uses
them directly (`sign_expanded`), as C tor's ed25519-donna does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import nacl.bindings
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from puretor.hs.address import encode_onion_address
from puretor.hs.descriptor import (
    CERT_TYPE_DESC_SIGNING,
    CERT_TYPE_INTRO_AUTH,
    CERT_TYPE_INTRO_ENC,
    SIG_PREFIX,
)
from puretor.hs.keys import blinding_param, subcredential
from puretor.hs.ntor import (
    AUTH_KEY_TYPE_ED25519,
    M_HSEXPAND,
    ONION_KEY_TYPE_NTOR,
    PROTOID,
    REND_COOKIE_LEN,
    T_HSENC,
    T_HSMAC,
    T_HSVERIFY,
    HsKeys,
    expand_keys,
    hs_mac,
)
from puretor.proto.relaymsg import LinkSpecifier, decode_link_specifiers, encode_link_specifiers

__all__ = [
    "BlindedKey",
    "IntroPointKeys",
    "Introduction",
    "IntroductionError",
    "ReplayCache",
    "ServiceIdentity",
    "build_descriptor",
    "build_establish_intro",
    "encode_ed25519_cert",
    "parse_introduce2",
    "sign_expanded",
]

SECRET_KEY_HEADER = b"== ed25519v1-secret: type0 ==\x00\x00\x00"
PUBLIC_KEY_HEADER = b"== ed25519v1-public: type0 ==\x00\x00\x00"
ESTABLISH_INTRO_SIG_PREFIX = b"Tor establish-intro cell v1"
DESC_LIFETIME_MINUTES = 180  # C tor HS_DESC_DEFAULT_LIFETIME
CERT_LIFETIME = 54 * 3600  # C tor HS_DESC_CERT_LIFETIME
SUPERENC_PAD_MULTIPLE = 10000  # C tor HS_DESC_SUPERENC_PLAINTEXT_PAD_MULTIPLE
AUTH_CLIENT_MULTIPLE = 16  # C tor HS_DESC_AUTH_CLIENT_MULTIPLE: fake auth-client lines
_BLIND_HASH_STRING = b"Derive temporary signing key hash input"
_L = 2**252 + 27742317777372353535851937790883648493
_P = 2**255 - 19
_U64 = struct.Struct(">Q")


# -- Ed25519 with expanded keys -------------------------------------------------------------


def _reduce(scalar: bytes) -> bytes:
    return bytes(nacl.bindings.crypto_core_ed25519_scalar_reduce(scalar + bytes(64 - len(scalar))))


def public_from_expanded(expanded: bytes) -> bytes:
    """``A = a·B`` for an expanded secret key ``a | prefix``."""
    return bytes(nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(_reduce(expanded[:32])))


def expand_seed(seed: bytes) -> bytes:
    """The RFC 8032 expansion of a 32-byte seed: ``clamp(SHA-512(seed)[:32]) | [32:]``."""
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def sign_expanded(expanded: bytes, public: bytes, message: bytes) -> bytes:
    """An Ed25519 signature by the expanded key ``a | prefix`` (RFC 8032 §5.1.6)."""
    a, prefix = _reduce(expanded[:32]), expanded[32:64]
    r = _reduce(hashlib.sha512(prefix + message).digest())
    big_r = bytes(nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(r))
    k = _reduce(hashlib.sha512(big_r + public + message).digest())
    s = nacl.bindings.crypto_core_ed25519_scalar_add(
        r, nacl.bindings.crypto_core_ed25519_scalar_mul(k, a)
    )
    return big_r + bytes(s)


def curve25519_to_ed25519(u_bytes: bytes, sign: int = 0) -> bytes:
    """The Ed25519 form of an X25519 public key (C tor curve25519_public_to_ed25519)."""
    u = int.from_bytes(u_bytes, "little") & ((1 << 255) - 1)
    y = (u - 1) * pow(u + 1, _P - 2, _P) % _P
    out = bytearray(y.to_bytes(32, "little"))
    out[31] |= (sign & 1) << 7
    return bytes(out)


@dataclass(frozen=True, slots=True)
class BlindedKey:
    """The blinded key pair of one time period, and what follows from it."""

    period_num: int
    period_length: int
    expanded: bytes = field(repr=False)  # a' | prefix'
    public: bytes  # A'
    subcredential: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """The service's identity key (KS_hs_id): it never leaves the service."""

    expanded: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> ServiceIdentity:
        return cls.from_expanded(expand_seed(secrets.token_bytes(32)))

    @classmethod
    def from_expanded(cls, expanded: bytes) -> ServiceIdentity:
        if len(expanded) != 64:
            raise ValueError("an expanded Ed25519 secret key is 64 bytes")
        return cls(expanded, public_from_expanded(expanded))

    @classmethod
    def from_secret_key_file(cls, data: bytes) -> ServiceIdentity:
        """Parse C tor's ``hs_ed25519_secret_key`` (32-byte tag, then ``a | prefix``)."""
        if len(data) != 96 or data[:32] != SECRET_KEY_HEADER:
            raise ValueError("not an hs_ed25519_secret_key file (ed25519v1-secret, type0)")
        return cls.from_expanded(data[32:])

    def secret_key_file(self) -> bytes:
        return SECRET_KEY_HEADER + self.expanded

    def public_key_file(self) -> bytes:
        return PUBLIC_KEY_HEADER + self.public

    @property
    def address(self) -> str:
        return encode_onion_address(self.public)

    def hostname_file(self) -> bytes:
        return (self.address + "\n").encode("ascii")

    def blinded(self, period_num: int, period_length: int) -> BlindedKey:
        """KS_hs_blind_id for a period (C tor ed25519_donna_blind_secret_key)."""
        param = bytearray(blinding_param(self.public, period_num, period_length))
        param[0] &= 248
        param[31] &= 63
        param[31] |= 64
        a = nacl.bindings.crypto_core_ed25519_scalar_mul(
            _reduce(self.expanded[:32]), _reduce(bytes(param))
        )
        # SHA-512(str | prefix), as C tor's ref10 and donna code compute it (the
        # revision counter's key is made from these bytes, so they must match).
        prefix = hashlib.sha512(_BLIND_HASH_STRING + self.expanded[32:]).digest()[:32]
        expanded = bytes(a) + prefix
        public = public_from_expanded(expanded)
        return BlindedKey(
            period_num, period_length, expanded, public, subcredential(self.public, public)
        )


OPE_INPUT_MAX = 1 << 18  # C tor crypto_ope.h


def revision_counter(blinded: BlindedKey, seconds_since_srv_start: int) -> int:
    """C tor's revision counter: an order-preserving encryption of the seconds since the
    start of the SRV protocol run the descriptor belongs to (hs_service.c
    update_revision_counters, crypto_ope.c), keyed with the blinded secret key.

    OPE(n) is the sum of the first n 16-bit little-endian words of the AES-256-CTR
    keystream (key ``SHA3-256("rev-counter-generation\\0" | a' | prefix')``, IV 0),
    each plus one.  It grows with time whoever computes it, so a service directory
    that moves between C tor and puretor keeps getting its descriptors accepted.
    """
    n = min(max(seconds_since_srv_start + 1, 1), OPE_INPUT_MAX)
    key = hashlib.sha3_256(b"rev-counter-generation\x00" + blinded.expanded).digest()
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(2 * n))
    return sum(struct.unpack(f"<{n}H", stream)) + n


def parse_public_key_file(data: bytes) -> bytes:
    if len(data) != 64 or data[:32] != PUBLIC_KEY_HEADER:
        raise ValueError("not an hs_ed25519_public_key file (ed25519v1-public, type0)")
    return data[32:]


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 key pair that signs certificates or cells (descriptor signing, intro auth)."""

    expanded: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        expanded = expand_seed(secrets.token_bytes(32))
        return cls(expanded, public_from_expanded(expanded))

    def sign(self, message: bytes) -> bytes:
        return sign_expanded(self.expanded, self.public, message)


def encode_ed25519_cert(
    cert_type: int,
    certified_key: bytes,
    signer_expanded: bytes,
    signer_public: bytes,
    expires: float,
    *,
    key_type: int = 1,
) -> bytes:
    """A cert-spec §2.1 certificate with the signed-with-key extension (type 4)."""
    hours = int(expires) // 3600 + (1 if int(expires) % 3600 else 0)
    body = (
        bytes([1, cert_type])
        + struct.pack(">I", hours)
        + bytes([key_type])
        + certified_key
        + bytes([1])
        + struct.pack(">HBB", 32, 4, 0)
        + signer_public
    )
    return body + sign_expanded(signer_expanded, signer_public, body)


# -- introduction points ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntroPointKeys:
    """One introduction point as the service knows it (C tor hs_service_intro_point_t)."""

    link_specifiers: tuple[LinkSpecifier, ...]
    onion_key: bytes  # the relay's ntor key (for the descriptor)
    auth: SigningKey  # KP_hs_ipt_sid
    enc_private: bytes = field(repr=False)  # KS_hss_ntor
    enc_public: bytes  # KP_hss_ntor

    @classmethod
    def generate(cls, link_specifiers: Sequence[LinkSpecifier], onion_key: bytes) -> IntroPointKeys:
        enc = X25519PrivateKey.generate()
        return cls(
            tuple(link_specifiers),
            onion_key,
            SigningKey.generate(),
            enc.private_bytes_raw(),
            enc.public_key().public_bytes_raw(),
        )


def build_establish_intro(ip: IntroPointKeys, kh: bytes) -> bytes:
    """ESTABLISH_INTRO (§3.1.1) with no extensions; ``kh``: the circuit's KH with the
    intro point (the handshake's 20 extra bytes), so the cell cannot be replayed."""
    if len(kh) != 20:
        raise ValueError("KH is 20 bytes")
    head = (
        bytes([AUTH_KEY_TYPE_ED25519])
        + struct.pack(">H", 32)
        + ip.auth.public
        + bytes([0])  # N_EXTENSIONS
    )
    head += hs_mac(kh, head)  # HANDSHAKE_AUTH: SHA3-256 MAC keyed with KH
    sig = ip.auth.sign(ESTABLISH_INTRO_SIG_PREFIX + head)
    return head + struct.pack(">H", len(sig)) + sig


def parse_intro_established(body: bytes) -> None:
    """INTRO_ESTABLISHED: ``N_EXTENSIONS [ext…]``; unknown extensions are ignored."""
    if len(body) < 1:
        raise ValueError("INTRO_ESTABLISHED is empty")


# -- descriptors ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _object(kind: str, data: bytes) -> str:
    text = _b64(data)
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----\n"


def _encrypt_layer(
    plaintext: bytes, secret_data: bytes, subcred: bytes, revision: int, constant: bytes
) -> bytes:
    """§2.5.3: ``SALT | ENCRYPTED | MAC`` (the inverse of descriptor.decrypt_layer)."""
    salt = secrets.token_bytes(16)
    keys = hashlib.shake_256(secret_data + subcred + _U64.pack(revision) + salt + constant).digest(
        80
    )
    key, iv, mac_key = keys[:32], keys[32:48], keys[48:]
    encrypted = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(plaintext)
    mac = hashlib.sha3_256(
        _U64.pack(len(mac_key)) + mac_key + _U64.pack(len(salt)) + salt + encrypted
    ).digest()
    return salt + encrypted + mac


def _inner_plaintext(
    signing: SigningKey,
    intro_points: Iterable[IntroPointKeys],
    now: float,
    flow_control_sendme_inc: int | None = None,
) -> str:
    out = ["create2-formats 2\n"]
    if flow_control_sendme_inc is not None:
        # C tor: the FlowCtrl versions it supports and the consensus cc_sendme_inc.
        out.append(f"flow-control 1-2 {flow_control_sendme_inc}\n")
    expires = now + CERT_LIFETIME
    for ip in intro_points:
        out.append(f"introduction-point {_b64(encode_link_specifiers(ip.link_specifiers))}\n")
        out.append(f"onion-key ntor {_b64(ip.onion_key)}\n")
        auth_cert = encode_ed25519_cert(
            CERT_TYPE_INTRO_AUTH, ip.auth.public, signing.expanded, signing.public, expires
        )
        out.append("auth-key\n" + _object("ED25519 CERT", auth_cert))
        out.append(f"enc-key ntor {_b64(ip.enc_public)}\n")
        enc_cert = encode_ed25519_cert(
            CERT_TYPE_INTRO_ENC,
            curve25519_to_ed25519(ip.enc_public),
            signing.expanded,
            signing.public,
            expires,
        )
        out.append("enc-key-cert\n" + _object("ED25519 CERT", enc_cert))
    return "".join(out)


def _auth_client_lines(
    subcred: bytes, clients: Sequence[bytes]
) -> tuple[bytes, bytes, list[tuple[bytes, bytes, bytes]]]:
    """§2.5.1.2: (descriptor cookie, ephemeral public key, auth-client entries).  Without
    clients the cookie is empty; the entries are padded with random fake ones to a
    multiple of 16, shuffled (C tor build_fake_auth_client)."""
    ephemeral = X25519PrivateKey.generate()
    cookie = secrets.token_bytes(16) if clients else b""
    entries = []
    for client_key in clients:
        seed = ephemeral.exchange(X25519PublicKey.from_public_bytes(client_key))
        keys = hashlib.shake_256(subcred + seed).digest(40)
        iv = secrets.token_bytes(16)
        encrypted = Cipher(algorithms.AES(keys[8:40]), modes.CTR(iv)).encryptor().update(cookie)
        entries.append((keys[:8], iv, encrypted))
    while not entries or len(entries) % AUTH_CLIENT_MULTIPLE:
        entries.append((secrets.token_bytes(8), secrets.token_bytes(16), secrets.token_bytes(16)))
    secrets.SystemRandom().shuffle(entries)
    return cookie, ephemeral.public_key().public_bytes_raw(), entries


def build_descriptor(
    blinded: BlindedKey,
    signing: SigningKey,
    intro_points: Sequence[IntroPointKeys],
    revision: int,
    *,
    now: float | None = None,
    lifetime_minutes: int = DESC_LIFETIME_MINUTES,
    auth_clients: Sequence[bytes] = (),
    flow_control_sendme_inc: int | None = None,
) -> bytes:
    """The whole signed descriptor for one time period.  ``auth_clients``: the x25519
    public keys of the clients allowed to read the intro points (client authorization);
    none: anyone who knows the address.  ``flow_control_sendme_inc``: offer congestion
    control (prop 324) on the rendezvous circuits, with that ``sendme_inc``."""
    t_now = time.time() if now is None else now
    cookie, ephemeral, entries = _auth_client_lines(blinded.subcredential, auth_clients)
    inner = _inner_plaintext(signing, intro_points, t_now, flow_control_sendme_inc)
    inner_bytes = inner.encode("ascii")
    encrypted = _encrypt_layer(
        inner_bytes,
        blinded.public + cookie,
        blinded.subcredential,
        revision,
        b"hsdir-encrypted-data",
    )
    layer1 = [
        "desc-auth-type x25519\n",
        f"desc-auth-ephemeral-key {_b64(ephemeral)}\n",
    ]
    for client_id, iv, encrypted_cookie in entries:
        layer1.append(
            "auth-client "
            f"{_b64(client_id).rstrip('=')} "
            f"{_b64(iv).rstrip('=')} "
            f"{_b64(encrypted_cookie).rstrip('=')}\n"
        )
    layer1.append("encrypted\n" + _object("MESSAGE", encrypted))
    plain1 = "".join(layer1).encode("ascii")
    padded = -(-len(plain1) // SUPERENC_PAD_MULTIPLE) * SUPERENC_PAD_MULTIPLE
    plain1 += bytes(padded - len(plain1))
    superencrypted = _encrypt_layer(
        plain1, blinded.public, blinded.subcredential, revision, b"hsdir-superencrypted-data"
    )
    cert = encode_ed25519_cert(
        CERT_TYPE_DESC_SIGNING,
        signing.public,
        blinded.expanded,
        blinded.public,
        t_now + CERT_LIFETIME,
    )
    outer = (
        "hs-descriptor 3\n"
        f"descriptor-lifetime {lifetime_minutes}\n"
        "descriptor-signing-key-cert\n"
        + _object("ED25519 CERT", cert)
        + f"revision-counter {revision}\n"
        "superencrypted\n" + _object("MESSAGE", superencrypted)
    ).encode("ascii")
    signature = signing.sign(SIG_PREFIX + outer)
    return outer + b"signature " + _b64(signature).rstrip("=").encode("ascii") + b"\n"


# -- INTRODUCE2 and RENDEZVOUS1 -----------------------------------------------------------


class IntroductionError(ValueError):
    """An INTRODUCE2 the service drops (bad format, unknown key, bad MAC, replay)."""


@dataclass(frozen=True, slots=True)
class Introduction:
    """A verified, decrypted INTRODUCE2: where to meet the client and how."""

    intro: IntroPointKeys
    client_public: bytes  # X
    subcredential: bytes = field(repr=False)
    rendezvous_cookie: bytes
    extensions: tuple[tuple[int, bytes], ...]
    rp_onion_key: bytes
    rp_link_specifiers: tuple[LinkSpecifier, ...]

    def respond(self, *, server_private: bytes | None = None) -> tuple[bytes, HsKeys]:
        """The hs-ntor server side (§4.2): RENDEZVOUS1's body and the virtual hop's keys."""
        y = X25519PrivateKey.from_private_bytes(server_private or secrets.token_bytes(32))
        Y = y.public_key().public_bytes_raw()
        X = self.client_public
        B = self.intro.enc_public
        auth_key = self.intro.auth.public
        xpub = X25519PublicKey.from_public_bytes(X)
        b = X25519PrivateKey.from_private_bytes(self.intro.enc_private)
        try:
            secret = y.exchange(xpub) + b.exchange(xpub) + auth_key + B + X + Y + PROTOID
        except ValueError:
            raise IntroductionError("client key is a small-order point") from None
        seed = hs_mac(secret, T_HSENC)
        verify = hs_mac(secret, T_HSVERIFY)
        auth = hs_mac(verify + auth_key + B + Y + X + PROTOID + b"Server", T_HSMAC)
        return self.rendezvous_cookie + Y + auth, expand_keys(seed)


def _extensions(body: bytes, pos: int, what: str) -> tuple[list[tuple[int, bytes]], int]:
    if pos >= len(body):
        raise IntroductionError(f"{what}: truncated before its extensions")
    count = body[pos]
    pos += 1
    exts = []
    for _ in range(count):
        if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
            raise IntroductionError(f"{what}: extension is truncated")
        exts.append((body[pos], bytes(body[pos + 2 : pos + 2 + body[pos + 1]])))
        pos += 2 + body[pos + 1]
    return exts, pos


def parse_introduce2(
    body: bytes,
    intro_points: Mapping[bytes, IntroPointKeys],
    subcredentials: Sequence[bytes],
) -> Introduction:
    """Check and decrypt INTRODUCE2 (§3.2.1, §3.3) for one of our intro points.

    ``subcredentials``: those of the descriptors we publish (current and next time
    period); the MAC says which one the client used.  Raises `IntroductionError`.
    """
    if len(body) < 20 + 3 + 32 + 1 + 32 + 32:
        raise IntroductionError("INTRODUCE2 is too short")
    if body[20] != AUTH_KEY_TYPE_ED25519:
        raise IntroductionError(f"INTRODUCE2 auth key type {body[20]} is not Ed25519")
    if struct.unpack_from(">H", body, 21)[0] != 32:
        raise IntroductionError("INTRODUCE2 auth key length is not 32")
    auth_key = bytes(body[23:55])
    ip = intro_points.get(auth_key)
    if ip is None:
        raise IntroductionError("INTRODUCE2 for an intro point auth key we do not have")
    _exts, pos = _extensions(body, 55, "INTRODUCE2")
    if len(body) < pos + 32 + 32 + 1:
        raise IntroductionError("INTRODUCE2 encrypted section is too short")
    X = bytes(body[pos : pos + 32])
    encrypted = bytes(body[pos + 32 : -32])
    mac = bytes(body[-32:])
    try:
        shared = X25519PrivateKey.from_private_bytes(ip.enc_private).exchange(
            X25519PublicKey.from_public_bytes(X)
        )
    except ValueError:
        raise IntroductionError("INTRODUCE2 client key is a small-order point") from None
    secret = shared + auth_key + X + ip.enc_public + PROTOID
    signed = bytes(body[:-32])
    for subcred in subcredentials:
        keys = hashlib.shake_256(secret + T_HSENC + M_HSEXPAND + subcred).digest(64)
        if hmac.compare_digest(hs_mac(keys[32:], signed), mac):
            break
    else:
        raise IntroductionError("INTRODUCE2 MAC does not verify")
    plain = Cipher(algorithms.AES(keys[:32]), modes.CTR(bytes(16))).decryptor().update(encrypted)
    if len(plain) < REND_COOKIE_LEN + 1:
        raise IntroductionError("INTRODUCE2 plaintext is too short")
    cookie = plain[:REND_COOKIE_LEN]
    exts, p = _extensions(plain, REND_COOKIE_LEN, "INTRODUCE2 plaintext")
    if p + 3 > len(plain) or plain[p] != ONION_KEY_TYPE_NTOR:
        raise IntroductionError("INTRODUCE2 rendezvous onion key is not ntor")
    key_len = struct.unpack_from(">H", plain, p + 1)[0]
    if key_len != 32 or p + 3 + 32 > len(plain):
        raise IntroductionError("INTRODUCE2 rendezvous onion key length is not 32")
    onion_key = plain[p + 3 : p + 35]
    try:
        specs, _used = decode_link_specifiers(plain[p + 35 :])
    except Exception as exc:  # noqa: BLE001 - any malformed list is the client's fault
        raise IntroductionError(f"INTRODUCE2 link specifiers: {exc}") from None
    if not any(s.type == 0 for s in specs) or not any(s.type == 2 for s in specs):
        raise IntroductionError("INTRODUCE2 rendezvous point needs IPv4 and RSA id specifiers")
    return Introduction(ip, X, subcred, cookie, tuple(exts), onion_key, tuple(specs))


class ReplayCache:
    """INTRODUCE2s seen recently (C tor replaycache_t on the encrypted section)."""

    def __init__(self, lifetime: float = 3600.0, limit: int = 100_000) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self._seen: dict[bytes, float] = {}

    def seen(self, body: bytes, now: float) -> bool:
        """True if this INTRODUCE2 came before; remembers it otherwise."""
        if len(self._seen) >= self.limit:
            self._seen = {k: t for k, t in self._seen.items() if t > now}
            while len(self._seen) >= self.limit:
                self._seen.pop(next(iter(self._seen)))
        # The encrypted section (client key, ciphertext, MAC) is what a replay repeats.
        digest = hashlib.sha256(body[55:]).digest()
        expiry = self._seen.get(digest)
        if expiry is not None and expiry > now:
            return True
        self._seen[digest] = now + self.lifetime
        return False
