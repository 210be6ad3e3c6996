"""v3 onion-service descriptors, client side (rend-spec-v3 §2.4, §2.5).

Three documents nest inside each other::

    outer (plaintext, signed)   hs-descriptor 3 … superencrypted <MESSAGE> … signature
      └ layer 1 "superencrypted"   desc-auth-type, desc-auth-ephemeral-key, auth-client…, encrypted
          └ layer 2 "encrypted"    create2-formats, …, introduction-point… (the part we need)

Both layers use the §2.5.3 scheme: ``SALT(16) | ENCRYPTED | MAC(32)``, keys
``SHAKE-256(SECRET_DATA | N_hs_subcred | INT_8(revision) | SALT | STRING_CONSTANT)``
→ ``key(32) | iv(16) | mac_key(32)``.  C tor cuts each plaintext at its first NUL.

Entry point: :func:`decode_descriptor`.  Every failure is an
:class:`~puretor.errors.OnionError` whose ``socks_code`` is the prop 304 SOCKS
extended error: 0xF1 invalid descriptor, 0xF4 client authorization required
but no key configured, 0xF5 the configured key does not work.  Time (``now``)
is passed in: certificates in the descriptor must not have expired.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from puretor.errors import CertsError, OnionError, RemoteProtocolError
from puretor.hs._tokens import Item, b64decode_loose, tokenize
from puretor.hs.keys import unix_time
from puretor.proto.certs import Ed25519Cert, parse_ed25519_cert
from puretor.proto.relaymsg import LinkSpecifier, decode_link_specifiers

__all__ = [
    "SOCKS_BAD_CLIENT_AUTH",
    "SOCKS_INVALID_DESCRIPTOR",
    "SOCKS_MISSING_CLIENT_AUTH",
    "FlowControl",
    "HsDescriptor",
    "HsDescriptorOuter",
    "IntroPoint",
    "PowParams",
    "decode_descriptor",
    "decrypt_descriptor",
    "decrypt_layer",
    "parse_inner",
    "parse_outer",
]

# prop 304 SOCKS5 extended errors.
SOCKS_INVALID_DESCRIPTOR = 0xF1
SOCKS_MISSING_CLIENT_AUTH = 0xF4
SOCKS_BAD_CLIENT_AUTH = 0xF5

MAX_DESCRIPTOR_SIZE = 50_000  # C tor HS_DESC_MAX_LEN; consensus param HSV3MaxDescriptorSize
MAX_LIFETIME_MINUTES = 12 * 60  # C tor HS_DESC_MAX_LIFETIME
MAX_INTRO_POINTS = 20  # rend-spec §2.5.4 / C tor HS_CONFIG_V3_MAX_INTRO_POINTS

CERT_TYPE_DESC_SIGNING = 0x08  # cert-spec A.1: blinded key signs the descriptor signing key
CERT_TYPE_INTRO_AUTH = 0x09  # descriptor signing key signs an intro point auth key
CERT_TYPE_INTRO_ENC = 0x0B  # descriptor signing key signs (ed25519 form of) the enc key

SIG_PREFIX = b"Tor onion service descriptor sig v3"
_SALT_LEN, _MAC_LEN, _KEY_LEN, _IV_LEN = 16, 32, 32, 16
_U64 = struct.Struct(">Q")
HTYPE_NTOR = 2
FLOWCTRL_CC = 2  # protover FlowCtrl=2: congestion control (prop 324)


def _invalid(message: str) -> OnionError:
    return OnionError(f"invalid onion service descriptor: {message}", SOCKS_INVALID_DESCRIPTOR)


# -- records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HsDescriptorOuter:
    """The signed plaintext wrapper, verified against the expected blinded key."""

    blinded_key: bytes  # A' (the signed-with key of the signing-key cert)
    signing_key: bytes  # KP_hs_desc_sign (the cert's certified key)
    signing_cert_expires: int  # Unix time
    lifetime_minutes: int
    revision_counter: int
    superencrypted: bytes  # layer-1 blob: SALT | ENCRYPTED | MAC


@dataclass(frozen=True, slots=True)
class IntroPoint:
    """One introduction point (§2.5.2.2)."""

    link_specifiers: tuple[LinkSpecifier, ...]  # send verbatim and in order in EXTEND2
    onion_key: bytes  # the intro point relay's ntor key (KP_ntor)
    auth_key: bytes  # KP_hs_ipt_sid: AUTH_KEY in INTRODUCE1
    enc_key: bytes  # KP_hss_ntor: B in hs-ntor
    auth_key_expires: int  # Unix time of the auth-key cert's expiry

    def spec(self, ls_type: int) -> bytes | None:
        """The data of the first link specifier of ``ls_type``, if any."""
        return next((s.data for s in self.link_specifiers if s.type == ls_type), None)


@dataclass(frozen=True, slots=True)
class FlowControl:
    """``flow-control <FlowCtrl versions> <sendme-inc>`` (prop 324 §9)."""

    versions: frozenset[int]
    sendme_inc: int


@dataclass(frozen=True, slots=True)
class PowParams:
    """``pow-params v1 <seed> <suggested-effort> <expiration>`` (prop 327)."""

    type: str
    seed: bytes
    suggested_effort: int
    expires: int  # Unix time


@dataclass(frozen=True, slots=True)
class HsDescriptor:
    """A decrypted, checked descriptor: everything a client needs to connect."""

    blinded_key: bytes
    signing_key: bytes
    revision_counter: int
    lifetime_minutes: int
    signing_cert_expires: int
    create2_formats: tuple[int, ...]
    intro_auth_required: tuple[str, ...]
    single_onion_service: bool
    flow_control: FlowControl | None
    pow_params: PowParams | None
    intro_points: tuple[IntroPoint, ...]

    @property
    def supports_congestion_control(self) -> bool:
        """Whether INTRODUCE1 may carry the CC-request extension (C tor hs_desc_supports_cc)."""
        return self.flow_control is not None and FLOWCTRL_CC in self.flow_control.versions


# -- shared helpers ---------------------------------------------------------------------


def _one(items: Sequence[Item], keyword: str, where: str) -> Item:
    found = [it for it in items if it.keyword == keyword]
    if len(found) != 1:
        raise _invalid(f"{where}: expected exactly one {keyword!r}, found {len(found)}")
    return found[0]


def _opt(items: Sequence[Item], keyword: str, where: str) -> Item | None:
    found = [it for it in items if it.keyword == keyword]
    if len(found) > 1:
        raise _invalid(f"{where}: {keyword!r} appears {len(found)} times")
    return found[0] if found else None


def _one_arg(items: Sequence[Item], keyword: str) -> str:
    args = _one(items, keyword, "outer").args
    if len(args) != 1:
        raise _invalid(f"{keyword!r} takes one argument, got {len(args)}")
    return args[0]


def _obj(item: Item, obj_type: str) -> bytes:
    if item.obj is None or item.obj_type != obj_type:
        raise _invalid(f"{item.keyword!r} needs a {obj_type} object")
    return item.obj


def _b64_key(text: str, what: str, length: int = 32) -> bytes:
    try:
        raw = b64decode_loose(text)
    except ValueError:
        raise _invalid(f"{what} is not base64") from None
    if len(raw) != length:
        raise _invalid(f"{what} is {len(raw)} bytes, expected {length}")
    return raw


def _small_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ValueError(f"not a small number: {text[:20]!r}")
    return int(text)


def _uint(text: str, what: str, bits: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 40:
        raise _invalid(f"{what} {text[:40]!r} is not a number")
    value = int(text)
    if value >= 1 << bits:
        raise _invalid(f"{what} {text} is too large")
    return value


def _tokens(text: str, where: str) -> list[Item]:
    try:
        return tokenize(text)
    except ValueError as e:
        raise _invalid(f"{where}: {e}") from None


def _cert(item: Item, cert_type: int, now: int, signing_key: bytes | None) -> Ed25519Cert:
    """Parse and check a cert like C tor cert_is_valid(): type, signed-with present, sig, expiry."""
    try:
        cert = parse_ed25519_cert(_obj(item, "ED25519 CERT"))
        if cert.cert_type != cert_type:
            raise _invalid(
                f"{item.keyword!r} cert has type {cert.cert_type:#04x}, not {cert_type:#04x}"
            )
        if cert.signed_with is None:
            raise _invalid(f"{item.keyword!r} cert does not include its signing key")
        cert.verify(signing_key)
    except CertsError as e:
        raise _invalid(f"{item.keyword!r}: {e}") from None
    if cert.is_expired(now):
        raise _invalid(f"{item.keyword!r} cert expired at {cert.expires_at}")
    return cert


def _decode_text(plain: bytes, where: str) -> str:
    plain = plain.split(b"\0", 1)[0]  # C tor decrypt_desc_layer(): cut at the first NUL
    if not plain:
        raise _invalid(f"{where} is empty")
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(f"{where} is not text") from None


# -- outer document (§2.4) --------------------------------------------------------------


def parse_outer(
    body: bytes | str,
    *,
    blinded_key: bytes,
    now: datetime | float,
    max_size: int = MAX_DESCRIPTOR_SIZE,
) -> HsDescriptorOuter:
    """Parse and verify the outer document against the blinded key we asked for."""
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if len(raw) >= max_size:
        raise _invalid(f"{len(raw)} bytes, limit {max_size}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("not text") from None
    items = _tokens(text, "outer document")
    if not items or items[0].keyword != "hs-descriptor":
        raise _invalid("does not start with 'hs-descriptor'")
    if items[0].args != ("3",):
        raise _invalid(f"unsupported version {' '.join(items[0].args)!r}")
    if items[-1].keyword != "signature":
        raise _invalid("'signature' is not the last item")
    t_now = unix_time(now)

    lifetime = _uint(_one_arg(items, "descriptor-lifetime"), "descriptor-lifetime", 32)
    if lifetime > MAX_LIFETIME_MINUTES:
        raise _invalid(f"lifetime {lifetime} min exceeds {MAX_LIFETIME_MINUTES}")

    cert = _cert(
        _one(items, "descriptor-signing-key-cert", "outer"), CERT_TYPE_DESC_SIGNING, t_now, None
    )
    if not hmac.compare_digest(cert.signed_with or b"", blinded_key):
        raise _invalid("signing-key cert is not signed by the blinded key we asked for")

    revision = _uint(_one_arg(items, "revision-counter"), "revision-counter", 64)
    blob = _obj(_one(items, "superencrypted", "outer"), "MESSAGE")
    if len(blob) <= _SALT_LEN + _MAC_LEN:
        raise _invalid("superencrypted blob is too short")

    signature = _b64_key(_one_arg(items, "signature"), "signature", 64)
    # Signed: every byte up to and including the newline before "signature " (C tor
    # desc_sig_is_valid()), on the bytes as received.
    cut = raw.find(b"\nsignature ")
    if cut < 0:
        raise _invalid("malformed signature line")
    try:
        Ed25519PublicKey.from_public_bytes(cert.certified_key).verify(
            signature, SIG_PREFIX + raw[: cut + 1]
        )
    except (InvalidSignature, ValueError):
        raise _invalid("bad descriptor signature") from None

    return HsDescriptorOuter(
        blinded_key=blinded_key,
        signing_key=cert.certified_key,
        signing_cert_expires=cert.expires_at,
        lifetime_minutes=lifetime,
        revision_counter=revision,
        superencrypted=blob,
    )


# -- the two encryption layers (§2.5.1–§2.5.3) ----------------------------------------


def decrypt_layer(
    blob: bytes, secret_data: bytes, subcredential: bytes, revision: int, constant: bytes
) -> bytes | None:
    """Check the MAC and decrypt one layer; None if the MAC does not match."""
    if len(blob) <= _SALT_LEN + _MAC_LEN:
        return None
    salt, encrypted, mac = blob[:_SALT_LEN], blob[_SALT_LEN:-_MAC_LEN], blob[-_MAC_LEN:]
    secret_input = secret_data + subcredential + _U64.pack(revision)
    keys = hashlib.shake_256(secret_input + salt + constant).digest(_KEY_LEN + _IV_LEN + _MAC_LEN)
    key, iv, mac_key = keys[:_KEY_LEN], keys[_KEY_LEN : _KEY_LEN + _IV_LEN], keys[-_MAC_LEN:]
    # D_MAC = H(INT_8(len(MAC_KEY)) | MAC_KEY | INT_8(len(SALT)) | SALT | ENCRYPTED)
    expected = hashlib.sha3_256(
        _U64.pack(len(mac_key)) + mac_key + _U64.pack(len(salt)) + salt + encrypted
    ).digest()
    if not hmac.compare_digest(expected, mac):
        return None
    return Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor().update(encrypted)


@dataclass(frozen=True, slots=True)
class _Layer1:
    ephemeral_key: bytes
    auth_clients: tuple[tuple[bytes, bytes, bytes], ...]  # (client-id, iv, encrypted-cookie)
    encrypted: bytes


def _parse_layer1(text: str) -> _Layer1:
    where = "superencrypted layer"
    items = _tokens(text, where)
    if not items or items[0].keyword != "desc-auth-type":
        raise _invalid(f"{where} does not start with 'desc-auth-type'")
    if items[0].args[:1] != ("x25519",):
        raise _invalid(f"{where}: unknown desc-auth-type {' '.join(items[0].args)!r}")
    key_item = _one(items, "desc-auth-ephemeral-key", where)
    if not key_item.args:
        raise _invalid(f"{where}: desc-auth-ephemeral-key without a key")
    ephemeral = _b64_key(key_item.args[0], "desc-auth-ephemeral-key")
    clients = []
    for it in items:
        if it.keyword == "auth-client":
            if len(it.args) < 3:
                raise _invalid(f"{where}: auth-client needs 3 arguments")
            clients.append(
                (
                    _b64_key(it.args[0], "auth-client id", 8),
                    _b64_key(it.args[1], "auth-client iv", 16),
                    _b64_key(it.args[2], "auth-client cookie", 16),
                )
            )
    if not clients:
        raise _invalid(f"{where} has no auth-client lines")
    encrypted = _obj(_one(items, "encrypted", where), "MESSAGE")
    if len(encrypted) <= _SALT_LEN + _MAC_LEN:
        raise _invalid("encrypted blob is too short")
    return _Layer1(ephemeral, tuple(clients), encrypted)


def _descriptor_cookie(layer1: _Layer1, subcredential: bytes, client_key: bytes) -> bytes | None:
    """§2.5.1.2: find our auth-client line and decrypt the descriptor cookie."""
    try:
        seed = X25519PrivateKey.from_private_bytes(client_key).exchange(
            X25519PublicKey.from_public_bytes(layer1.ephemeral_key)
        )
    except ValueError:  # all-zero shared secret: a small-order ephemeral key
        return None
    keys = hashlib.shake_256(subcredential + seed).digest(40)
    client_id, cookie_key = keys[:8], keys[8:40]
    for cid, iv, encrypted_cookie in layer1.auth_clients:
        if hmac.compare_digest(cid, client_id):
            return (
                Cipher(algorithms.AES(cookie_key), modes.CTR(iv))
                .decryptor()
                .update(encrypted_cookie)
            )
    return None


# -- layer 2: the intro points (§2.5.2.2) ---------------------------------------------


def _parse_flow_control(item: Item, cc_sendme_inc: int) -> FlowControl:
    if len(item.args) < 2:
        raise _invalid("flow-control needs 2 arguments")
    versions: set[int] = set()
    try:  # a protover range list such as "1-2" or "1,3-4"; protocol versions are 0..63
        for part in item.args[0].split(","):
            lo_text, _, hi_text = part.partition("-")
            lo, hi = _small_int(lo_text), _small_int(hi_text or lo_text)
            if hi < lo or hi > 63:
                raise ValueError("protocol version range out of bounds")
            versions.update(range(lo, hi + 1))
    except ValueError:
        versions = set()  # C tor: an unparseable list just doesn't support CC
    inc = _uint(item.args[1], "flow-control sendme-inc", 8)
    # C tor congestion_control_validate_sendme_increment(): within a factor 2 of ours.
    if inc == 0 or inc > 2 * cc_sendme_inc or inc < cc_sendme_inc // 2:
        raise _invalid(f"flow-control sendme-inc {inc} is out of range")
    return FlowControl(frozenset(versions), inc)


def _parse_pow_params(items: Sequence[Item]) -> PowParams | None:
    v1 = [it for it in items if it.keyword == "pow-params" and it.args[:1] == ("v1",)]
    if any(it.keyword == "pow-params" and not it.args for it in items):
        raise _invalid("pow-params without a type")
    if not v1:
        return None  # unknown PoW types are ignored (as Arti does)
    if len(v1) > 1:
        raise _invalid("pow-params v1 appears more than once")
    args = v1[0].args
    if len(args) < 4:
        raise _invalid("pow-params v1 needs seed, effort and expiration")
    try:
        expires = calendar.timegm(time.strptime(args[3], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        raise _invalid(f"pow-params expiration {args[3]!r} is not YYYY-MM-DDTHH:MM:SS") from None
    return PowParams(
        type="v1",
        seed=_b64_key(args[1], "pow-params seed"),
        suggested_effort=_uint(args[2], "pow-params effort", 32),
        expires=expires,
    )


def _ntor_key(items: Sequence[Item], keyword: str) -> bytes:
    found = [it for it in items if it.keyword == keyword and it.args[:1] == ("ntor",)]
    if len(found) != 1 or len(found[0].args) < 2:
        raise _invalid(f"introduction point needs exactly one '{keyword} ntor <key>'")
    return _b64_key(found[0].args[1], f"{keyword} ntor")


def _parse_intro_point(items: Sequence[Item], signing_key: bytes, now: int) -> IntroPoint:
    head = items[0]
    if len(head.args) != 1:
        raise _invalid("introduction-point takes one argument")
    try:
        block = b64decode_loose(head.args[0])
        specs, used = decode_link_specifiers(block)
    except (ValueError, RemoteProtocolError) as e:
        raise _invalid(f"introduction-point link specifiers: {e}") from None
    if used != len(block):
        raise _invalid("introduction-point link specifiers have trailing bytes")
    onion_key = _ntor_key(items, "onion-key")
    auth = _cert(
        _one(items, "auth-key", "introduction point"), CERT_TYPE_INTRO_AUTH, now, signing_key
    )
    enc_key = _ntor_key(items, "enc-key")
    # enc-key-cert certifies the Ed25519 form of enc_key "backwards" (spec-map §8.5):
    # it proves nothing the signed descriptor doesn't, so it is optional here, but
    # if present it must be a good type-0B cert by the signing key, as C tor checks.
    enc_cert = _opt(items, "enc-key-cert", "introduction point")
    if enc_cert is not None:
        _cert(enc_cert, CERT_TYPE_INTRO_ENC, now, signing_key)
    return IntroPoint(
        link_specifiers=tuple(specs),
        onion_key=onion_key,
        auth_key=auth.certified_key,
        enc_key=enc_key,
        auth_key_expires=auth.expires_at,
    )


def parse_inner(
    text: str, outer: HsDescriptorOuter, now: datetime | float, cc_sendme_inc: int = 31
) -> HsDescriptor:
    """Parse the decrypted second-layer plaintext; ``outer`` supplies the signing key."""
    t_now = unix_time(now)
    where = "encrypted layer"
    items = _tokens(text, where)
    starts = [i for i, it in enumerate(items) if it.keyword == "introduction-point"]
    header = items[: starts[0]] if starts else items
    if not header or header[0].keyword != "create2-formats":
        raise _invalid(f"{where} does not start with 'create2-formats'")
    formats = tuple(int(a) for a in header[0].args if a.isascii() and a.isdigit() and len(a) <= 5)
    if HTYPE_NTOR not in formats:
        raise _invalid("create2-formats does not include ntor (2)")
    auth_item = _opt(header, "intro-auth-required", where)
    auth_types: tuple[str, ...] = ()
    if auth_item is not None:
        auth_types = auth_item.args
        if "ed25519" not in auth_types:
            raise _invalid(f"no known intro-auth-required type in {' '.join(auth_types)!r}")
    flow_item = _opt(header, "flow-control", where)
    flow = _parse_flow_control(flow_item, cc_sendme_inc) if flow_item else None

    intro_points = []
    bounds = [*starts, len(items)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        try:
            intro_points.append(_parse_intro_point(items[a:b], outer.signing_key, t_now))
        except OnionError:
            # C tor decode_intro_points(): a malformed intro point is skipped,
            # for forward compatibility; the rest of the descriptor stays usable.
            continue
    if len(intro_points) > MAX_INTRO_POINTS:
        raise _invalid(f"{len(intro_points)} introduction points, at most {MAX_INTRO_POINTS}")
    return HsDescriptor(
        blinded_key=outer.blinded_key,
        signing_key=outer.signing_key,
        revision_counter=outer.revision_counter,
        lifetime_minutes=outer.lifetime_minutes,
        signing_cert_expires=outer.signing_cert_expires,
        create2_formats=formats,
        intro_auth_required=auth_types,
        single_onion_service=_opt(header, "single-onion-service", where) is not None,
        flow_control=flow,
        pow_params=_parse_pow_params(header),
        intro_points=tuple(intro_points),
    )


# -- the whole thing ----------------------------------------------------------------------


def decrypt_descriptor(
    outer: HsDescriptorOuter,
    *,
    subcredential: bytes,
    now: datetime | float,
    client_auth_key: bytes | None = None,
    cc_sendme_inc: int = 31,
) -> HsDescriptor:
    """Decrypt both layers of a verified outer document and parse the result."""
    plain1 = decrypt_layer(
        outer.superencrypted,
        outer.blinded_key,
        subcredential,
        outer.revision_counter,
        b"hsdir-superencrypted-data",
    )
    if plain1 is None:
        raise _invalid("superencrypted layer MAC mismatch (wrong onion address?)")
    layer1 = _parse_layer1(_decode_text(plain1, "superencrypted layer"))
    cookie = b""
    if client_auth_key is not None:
        cookie = _descriptor_cookie(layer1, subcredential, client_auth_key) or b""
    plain2 = decrypt_layer(
        layer1.encrypted,
        outer.blinded_key + cookie,
        subcredential,
        outer.revision_counter,
        b"hsdir-encrypted-data",
    )
    if plain2 is None:
        # C tor desc_decode_encrypted_v3(): we can't tell "auth needed" from junk.
        if client_auth_key is None:
            raise OnionError(
                "onion service requires client authorization, and no key is configured for it",
                SOCKS_MISSING_CLIENT_AUTH,
            )
        raise OnionError(
            "onion service client authorization failed: the configured key does not decrypt "
            "the descriptor",
            SOCKS_BAD_CLIENT_AUTH,
        )
    return parse_inner(_decode_text(plain2, "encrypted layer"), outer, now, cc_sendme_inc)


def decode_descriptor(
    body: bytes | str,
    *,
    blinded_key: bytes,
    subcredential: bytes,
    now: datetime | float,
    client_auth_key: bytes | None = None,
    max_size: int = MAX_DESCRIPTOR_SIZE,
    cc_sendme_inc: int = 31,
) -> HsDescriptor:
    """Verify, decrypt and parse a descriptor fetched for ``blinded_key``.

    ``client_auth_key`` is our x25519 private key for this service (from
    ``ClientOnionAuthDir``), ``max_size`` the consensus's ``HSV3MaxDescriptorSize``
    and ``cc_sendme_inc`` its ``cc_sendme_inc`` (the flow-control line is checked
    against it, as C tor does).
    """
    outer = parse_outer(body, blinded_key=blinded_key, now=now, max_size=max_size)
    return decrypt_descriptor(
        outer,
        subcredential=subcredential,
        now=now,
        client_auth_key=client_auth_key,
        cc_sendme_inc=cc_sendme_inc,
    )
