"""ntor, CREATE_FAST and the KDFs (tor-spec §5.1.4, §5.1.5, §5.2).

Vector sources:
* ntor: zydou/arti@cadcd0d crates/tor-proto/src/crypto/handshake/ntor.rs ``testvec``
  (fixed keys from C tor's src/test/ntor_ref.py).
* CREATE_FAST: same commit, crates/tor-proto/src/crypto/handshake/fast.rs ``testvec``
  ("Generated from Tor").
* KDF-TOR and KDF-RFC5869 with the ntor tweaks: torproject/tor maint-0.4.7
  (94f4d09) src/test/test_crypto.c ``test_crypto_kdf_TAP`` and
  ``test_crypto_hkdf_sha256`` (also in Arti crates/tor-proto/src/crypto/ll/kdf.rs).
* Plain HKDF-SHA256: RFC 5869 Appendix A.1–A.3 (as copied into test_crypto.c
  ``test_crypto_hkdf_sha256_testvecs``).
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from puretor.errors import RemoteProtocolError
from puretor.proto.handshake import (
    NTOR_HTYPE,
    HopKeys,
    fast_client_complete,
    fast_client_create,
    kdf_rfc5869,
    kdf_tor,
    ntor_client_complete,
    ntor_client_create,
    split_tor1_keys,
)


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


def flat(k: HopKeys) -> bytes:
    return k.df + k.db + k.kf + k.kb + (k.kh or b"")


# --- KDFs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k0", "expect"),
    [
        (
            b"",
            "5ba93c9db0cff93f52b521d7420e43f6eda2784fbf8b4530d8d246dd74ac53a13471bba17941dff7c4"
            "ea21bb365bbeeaf5f2c654883e56d11e43c44e9842926af7ca0a8cca12604f945414f07b01e13da42c"
            "6cf1de3abfdea9b95f34687cbbe92b9a7383",
        ),
        (
            b"Tor",
            "776c6214fc647aaa5f683c737ee66ec44f03d0372e1cce69227950f236ddf1e329a7ce7c227903303f"
            "525a8c6662426e8034870642a6dabbd41b5d97ec9bf2312ea729992f48f8ea2d0ba83f45dfda1a80bd"
            "c8b80de01b23e3e0ffae099b3e4ccf28dc28",
        ),
        (
            b"AN ALARMING ITEM TO FIND ON A MONTHLY AUTO-DEBIT NOTICE",
            "a340b5d126086c3ab29c2af4179196dbf95e1c72431419d3314844bf8f6afb6098db952b95581fb6c3"
            "3625709d6f4400b8e7ace18a70579fad83c0982ef73f89395bcc39493ad53a685854daf2ba9b78733b"
            "805d9a6824c907ee1dba5ac27a1e466d4d10",
        ),
    ],
)
def test_kdf_tor_c_tor_vectors(k0: bytes, expect: str) -> None:
    assert kdf_tor(k0, 100) == h(expect)


def test_kdf_tor_is_the_sha1_counter_construction() -> None:
    k0 = b"here is an example key seed that we will expand"
    assert (
        kdf_tor(k0, 45) == b"".join(hashlib.sha1(k0 + bytes((i,))).digest() for i in range(3))[:45]
    )
    with pytest.raises(ValueError):
        kdf_tor(k0, 256 * 20 + 1)


NTOR_T_KEY = b"ntor-curve25519-sha256-1:key_extract"
NTOR_M_EXPAND = b"ntor-curve25519-sha256-1:key_expand"


@pytest.mark.parametrize(
    ("secret", "expect"),
    [
        (
            b"Tor",
            "5521492a85139a8d9107a2d5c0d9c91610d0f95989975ebee6c02a4f8d622a6cfdf9b7c7edd3832e27"
            "60ded1eac309b76f8d66c4a3c4d6225429b3a016e3c3d45911152fc87bc2de9630c3961be9fdb9f931"
            "97ea8e5977180801926d3321fa21513e59ac",
        ),
        (
            b"AN ALARMING ITEM TO FIND ON YOUR CREDIT-RATING STATEMENT",
            "a2aa9b50da7e481d30463adb8f233ff06e9571a0ca6ab6df0fb206fa34e5bc78d063fc291501beec53"
            "b36e5a0e434561200c5f8bd13e0f88b3459600b4dc21d69363e2895321c06184879d94b18f078411be"
            "70b767c7fc40679a9440a0c95ea83a23efbf",
        ),
    ],
)
def test_kdf_rfc5869_c_tor_ntor_vectors(secret: bytes, expect: str) -> None:
    assert kdf_rfc5869(secret, NTOR_T_KEY, NTOR_M_EXPAND, 100) == h(expect)


@pytest.mark.parametrize(
    ("ikm", "salt", "info", "n", "okm"),
    [
        (  # RFC 5869 A.1
            "0b" * 22,
            "000102030405060708090a0b0c",
            "f0f1f2f3f4f5f6f7f8f9",
            42,
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        ),
        (  # RFC 5869 A.2
            "".join(f"{i:02x}" for i in range(0x00, 0x50)),
            "".join(f"{i:02x}" for i in range(0x60, 0xB0)),
            "".join(f"{i:02x}" for i in range(0xB0, 0x100)),
            82,
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c6"
            "5e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87",
        ),
        (  # RFC 5869 A.3: empty salt and info
            "0b" * 22,
            "",
            "",
            42,
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        ),
    ],
)
def test_kdf_rfc5869_rfc_vectors(ikm: str, salt: str, info: str, n: int, okm: str) -> None:
    assert kdf_rfc5869(h(ikm), h(salt), h(info), n) == h(okm)


def test_split_tor1_keys() -> None:
    m = bytes(range(92))
    k = split_tor1_keys(m)
    assert (k.df, k.db, k.kf, k.kb, k.kh) == (m[:20], m[20:40], m[40:56], m[56:72], m[72:])
    assert split_tor1_keys(m[:72]).kh is None
    with pytest.raises(ValueError):
        split_tor1_keys(m[:71])


# --- ntor: a test-only relay side, written from tor-spec §5.1.4 ------------------------

PROTOID = b"ntor-curve25519-sha256-1"


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def ntor_server(
    b: X25519PrivateKey, node_id: bytes, onionskin: bytes, y: X25519PrivateKey
) -> tuple[bytes, bytes]:
    """Relay side of ntor: returns (``Y | AUTH``, 92 bytes of key material)."""
    assert len(onionskin) == 84 and onionskin[:20] == node_id
    B = b.public_key().public_bytes_raw()
    assert onionskin[20:52] == B
    X, Y = onionskin[52:], y.public_key().public_bytes_raw()
    Xpub = X25519PublicKey.from_public_bytes(X)
    secret_input = y.exchange(Xpub) + b.exchange(Xpub) + node_id + B + X + Y + PROTOID
    verify = _hmac(PROTOID + b":verify", secret_input)
    auth = _hmac(PROTOID + b":mac", verify + node_id + B + Y + X + PROTOID + b"Server")
    keys = kdf_rfc5869(secret_input, PROTOID + b":key_extract", PROTOID + b":key_expand", 92)
    return Y + auth, keys


# Arti ntor.rs testvec (from C tor ntor_ref.py).
NTOR_B_SK = h("4820544f4c4420594f5520444f474954204b454550532048415050454e494e47")
NTOR_B_PK = h("ccbc8541904d18af08753eae967874749e6149f873de937f57f8fd903a21c471")
NTOR_X_SK = h("706f6461792069207075742e2e2e2e2e2e2e2e4a454c4c59206f6e2074686973")
NTOR_X_PK = h("e65dfdbef8b2635837fe2cebc086a8096eae3213e6830dc407516083d412b078")
NTOR_Y_SK = h("70686520737175697272656c2e2e2e2e2e2e2e2e686173206869732067616d65")
NTOR_Y_PK = h("390480a14362761d6aec1fea840f6e9e928fb2adb7b25c670be1045e35133a37")
NTOR_ID = h("69546f6c64596f7541626f75745374616972732e")
NTOR_CLIENT_HS = NTOR_ID + NTOR_B_PK + NTOR_X_PK
NTOR_SERVER_HS = h(
    "390480a14362761d6aec1fea840f6e9e928fb2adb7b25c670be1045e35133a37"
    "1cbdf68b89923e1f85e8e18ee6e805ea333fe4849c790ffd2670bd80fec95cc8"
)
NTOR_KEYS = h(
    "0c62dee7f48893370d0ef896758d35729867beef1a5121df80e00f79ed349af39b51cae125719182f19d"
    "932a667dae1afbf2e336e6910e7822223e763afad0a13342157969dc6b79"
)


def test_ntor_vector_client() -> None:
    assert NTOR_HTYPE == 2
    state, onionskin = ntor_client_create(NTOR_ID, NTOR_B_PK, private_key=NTOR_X_SK)
    assert onionskin == NTOR_CLIENT_HS
    keys = ntor_client_complete(state, NTOR_SERVER_HS)
    assert len(NTOR_KEYS) == 72
    assert keys == split_tor1_keys(flat(keys))
    assert keys.df + keys.db + keys.kf + keys.kb == NTOR_KEYS


def test_ntor_vector_test_server_matches() -> None:
    # Checks the test-only server against the same transcript, so the round trips
    # below test the client against a known-good peer.
    b = X25519PrivateKey.from_private_bytes(NTOR_B_SK)
    y = X25519PrivateKey.from_private_bytes(NTOR_Y_SK)
    assert y.public_key().public_bytes_raw() == NTOR_Y_PK
    reply, keys = ntor_server(b, NTOR_ID, NTOR_CLIENT_HS, y)
    assert reply == NTOR_SERVER_HS
    assert keys[:72] == NTOR_KEYS


def test_ntor_round_trip() -> None:
    b = X25519PrivateKey.generate()
    node_id = bytes(range(20))
    state, onionskin = ntor_client_create(node_id, b.public_key().public_bytes_raw())
    reply, server_keys = ntor_server(b, node_id, onionskin, X25519PrivateKey.generate())
    keys = ntor_client_complete(state, reply)
    assert flat(keys) == server_keys
    assert keys.kh == server_keys[72:]


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_ntor_rejects_tampered_reply(index: int) -> None:
    state, _ = ntor_client_create(NTOR_ID, NTOR_B_PK, private_key=NTOR_X_SK)
    bad = bytearray(NTOR_SERVER_HS)
    bad[index] ^= 0x04
    with pytest.raises(RemoteProtocolError):
        ntor_client_complete(state, bytes(bad))


def test_ntor_rejects_wrong_identity_or_key() -> None:
    # The relay answers as itself; a client that asked with another ID/B must fail.
    for node_id, key in [(bytes(20), NTOR_B_PK), (NTOR_ID, NTOR_X_PK)]:
        state, _ = ntor_client_create(node_id, key, private_key=NTOR_X_SK)
        with pytest.raises(RemoteProtocolError):
            ntor_client_complete(state, NTOR_SERVER_HS)


@pytest.mark.parametrize("n", [0, 63, 65])
def test_ntor_rejects_bad_reply_length(n: int) -> None:
    state, _ = ntor_client_create(NTOR_ID, NTOR_B_PK)
    with pytest.raises(RemoteProtocolError):
        ntor_client_complete(state, bytes(n))


@pytest.mark.parametrize(
    "point",
    [
        bytes(32),  # the identity: X25519 output is all-zero
        h("0100000000000000000000000000000000000000000000000000000000000000"),  # order 1
        h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
    ],
)
def test_ntor_rejects_small_order_points(point: bytes) -> None:
    # Y of small order: EXP(Y, x) is the point at infinity (tor-spec §5.1.4).
    state, _ = ntor_client_create(NTOR_ID, NTOR_B_PK, private_key=NTOR_X_SK)
    with pytest.raises(RemoteProtocolError, match="infinity"):
        ntor_client_complete(state, point + bytes(32))
    # Likewise a small-order onion key B.
    state, _ = ntor_client_create(NTOR_ID, point, private_key=NTOR_X_SK)
    with pytest.raises(RemoteProtocolError, match="infinity"):
        ntor_client_complete(state, NTOR_SERVER_HS)


def test_ntor_create_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ntor_client_create(bytes(19), NTOR_B_PK)
    with pytest.raises(ValueError):
        ntor_client_create(NTOR_ID, bytes(31))


def test_ntor_state_repr_hides_secret() -> None:
    state, _ = ntor_client_create(NTOR_ID, NTOR_B_PK, private_key=NTOR_X_SK)
    assert NTOR_X_SK.hex() not in repr(state)


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_ntor_round_trip_property(x_sk: bytes, y_sk: bytes) -> None:
    b = X25519PrivateKey.from_private_bytes(NTOR_B_SK)
    state, onionskin = ntor_client_create(NTOR_ID, NTOR_B_PK, private_key=x_sk)
    reply, server_keys = ntor_server(
        b, NTOR_ID, onionskin, X25519PrivateKey.from_private_bytes(y_sk)
    )
    assert flat(ntor_client_complete(state, reply)) == server_keys


# --- CREATE_FAST ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "reply", "keys"),
    [
        (
            "080E247DF7C252FCD2DC10F459703480C223E3A6",
            "BA95C0D092335428BF80093BBED0B7A26C49E1E8696FBF9C8D6BE26504219C000D26AFE370FCEF04",
            "AFA89B4FC8CF882335A582C52478B5FCB1E08DAF707E2C2D23B8C27D30BD461F3DF98A3AF82221CB65"
            "8AD0AA8680B99067E4F7DBC546970EA9A56B26433C71DA867BDD09C14A1308BC327D6A448D71D2382B"
            "3AB6AF0BB4E19649A8DFF607DB9C57A04AC3",
        ),
        (
            "5F786C724C2F5978474A04FA63772057AD896A03",
            "6210B037001405742FE78B6F5B34E6DB3C9F2F7E24239498613E0ED872E110A00774A3FCB37A7507",
            "D41B65D83FB4B34A322B658BE4D706EDCD8B62813757E719118C394E1F22E1C8EA8959BAB30E856A91"
            "4C3054946F547397094DE031F5BCA384C65C8880BF7AAB9CE7BEE33971F9DE8C22A23366F46BF8B5E5"
            "112321E216B0E02C62EEA3ABB72A0E062592",
        ),
    ],
)
def test_create_fast_arti_vectors(x: str, reply: str, keys: str) -> None:
    # Arti's 100 bytes are KDF-TOR(X|Y) after the 20-byte KH: Df Db Kf Kb ...
    state, payload = fast_client_create(x=h(x))
    assert state == payload == h(x)
    r = h(reply)
    got = fast_client_complete(state, r[:20], r[20:])
    assert got.df + got.db + got.kf + got.kb == h(keys)[:72]
    assert got.kh == r[20:]
    assert kdf_tor(h(x) + r[:20], 120) == r[20:] + h(keys)


def test_create_fast_rejects_bad_kh() -> None:
    x = bytes(20)
    y = bytes(range(20))
    kh = kdf_tor(x + y, 20)
    fast_client_complete(x, y, kh)
    with pytest.raises(RemoteProtocolError):
        fast_client_complete(x, y, bytes(20))
    with pytest.raises(RemoteProtocolError):
        fast_client_complete(x, y[:19], kh)


def test_create_fast_random_x() -> None:
    a, _ = fast_client_create()
    b, _ = fast_client_create()
    assert len(a) == 20 and a != b
    with pytest.raises(ValueError):
        fast_client_create(x=bytes(19))
