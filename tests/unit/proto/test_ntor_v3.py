"""ntor v3 (proposal 332) and its message extensions.

Vector source: torproject/tor (mirror syphyr/tor@8365448) src/test/test_ntor_v3.c
``test_ntor3_testvecs`` ("Test vectors from python implementation, confirmed with rust
implementation"; the same numbers are in zydou/arti@cadcd0d
crates/tor-proto/src/crypto/handshake/ntor_v3.rs ``test_ntor3_testvec``).  The relay side
here is the fake relay's own implementation (tests/fakes/relay.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from puretor.errors import RemoteProtocolError
from puretor.proto.handshake import (
    NTOR3_CIRC_VERIFICATION,
    decode_extensions,
    encode_extensions,
    ntor_v3_client_complete,
    ntor_v3_client_complete_raw,
    ntor_v3_client_create,
)

_TESTS = str(Path(__file__).resolve().parents[2])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from fakes.relay import SimRelay, ntor3_server  # noqa: E402


def h(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


B_SECRET = h("4051daa5921cfa2a1c27b08451324919538e79e788a81b38cbed097a5dff454a")
B_PUBLIC = h("f8307a2bc1870b00b828bb74dbb8fd88e632a6375ab3bcd1ae706aaa8b6cdd1d")
RELAY_ID = h("9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2")
X_SECRET = h("b825a3719147bcbe5fb1d0b0fcb9c09e51948048e2e3283d2ab7b45b5ef38b49")
X_PUBLIC = h("252fe9ae91264c91d4ecb8501f79d0387e34ad8ca0f7c995184f7d11d5da4f46")
Y_SECRET = h("4865a5b7689dafd978f529291c7171bc159be076b92186405d13220b80e2a053")
Y_PUBLIC = h("4bf4814326fdab45ad5184f5518bd7fae25dc59374062698201a50a22954246d")
CLIENT_MESSAGE = h("68656c6c6f20776f726c64")  # "hello world"
VERIFICATION = h("78797a7a79")  # "xyzzy"
SERVER_MESSAGE = h("486f6c61204d756e646f")  # "Hola Mundo"
CLIENT_HANDSHAKE = h(
    "9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2f8307a2bc1870b00b828bb74"
    "dbb8fd88e632a6375ab3bcd1ae706aaa8b6cdd1d252fe9ae91264c91d4ecb8501f79d0387e34ad8ca0f7c995"
    "184f7d11d5da4f463bebd9151fd3b47c180abc9e044d53565f04d82bbb3bebed3d06cea65db8be9c72b68cd4"
    "61942088502f67"
)
SERVER_HANDSHAKE = h(
    "4bf4814326fdab45ad5184f5518bd7fae25dc59374062698201a50a22954246d2fc5f8773ca824542bc6cf6f"
    "57c7c29bbf4e5476461ab130c5b18ab0a91276651202c3e1e87c0d32054c"
)
KEYS_256 = h(
    "9c19b631fd94ed86a817e01f6c80b0743a43f5faebd39cfaa8b00fa8bcc65c3bfeaa403d91acbd68a821bf6e"
    "e8504602b094a254392a07737d5662768c7a9fb1b2814bb34780eaee6e867c773e28c212ead563e98a1cd5d5"
    "b4576f5ee61c59bde025ff2851bb19b721421694f263818e3531e43a9e4e3e2c661e2ad547d8984caa28ebec"
    "d3e4525452299be26b9185a20a90ce1eac20a91f2832d731b54502b09749b5a2a2949292f8cfcbeffb790c77"
    "90ed935a9d251e7e336148ea83b063a5618fcff674a44581585fd22077ca0e52c59a24347a38d1a1ceebddbf"
    "238541f226b8f88d0fb9c07a1bcd2ea764bbbb5dacdaf5312a14c0b9e4f06309b0333b4a"
)


def _vector_relay() -> SimRelay:
    return SimRelay(
        "vec", "10.0.0.9", 9001, bytes(20), RELAY_ID, X25519PrivateKey.from_private_bytes(B_SECRET)
    )


def test_key_pairs_of_the_vector() -> None:
    assert X25519PrivateKey.from_private_bytes(B_SECRET).public_key().public_bytes_raw() == B_PUBLIC
    assert X25519PrivateKey.from_private_bytes(X_SECRET).public_key().public_bytes_raw() == X_PUBLIC
    assert X25519PrivateKey.from_private_bytes(Y_SECRET).public_key().public_bytes_raw() == Y_PUBLIC


def test_client_onionskin_vector() -> None:
    _state, onionskin = ntor_v3_client_create(
        RELAY_ID, B_PUBLIC, CLIENT_MESSAGE, verification=VERIFICATION, private_key=X_SECRET
    )
    assert onionskin == CLIENT_HANDSHAKE
    assert len(onionskin) == 128 + len(CLIENT_MESSAGE)


def test_client_completes_vector() -> None:
    state, _ = ntor_v3_client_create(
        RELAY_ID, B_PUBLIC, CLIENT_MESSAGE, verification=VERIFICATION, private_key=X_SECRET
    )
    keys, message = ntor_v3_client_complete_raw(state, SERVER_HANDSHAKE, 256)
    assert message == SERVER_MESSAGE
    assert keys == KEYS_256


def test_tor1_keys_are_the_prefix_of_the_stream() -> None:
    state, _ = ntor_v3_client_create(
        RELAY_ID, B_PUBLIC, CLIENT_MESSAGE, verification=VERIFICATION, private_key=X_SECRET
    )
    keys, message = ntor_v3_client_complete(state, SERVER_HANDSHAKE)
    assert message == SERVER_MESSAGE
    assert keys.df + keys.db + keys.kf + keys.kb + (keys.kh or b"") == KEYS_256[:92]


def test_fake_relay_server_side_reproduces_vector() -> None:
    seen: list[bytes] = []

    def reply(cm: bytes) -> bytes:
        seen.append(cm)
        return SERVER_MESSAGE

    server_hs, keys = ntor3_server(
        _vector_relay(),
        CLIENT_HANDSHAKE,
        reply,
        verification=VERIFICATION,
        key_len=256,
        y_private=Y_SECRET,
    )
    assert seen == [CLIENT_MESSAGE]
    assert server_hs == SERVER_HANDSHAKE
    assert keys == KEYS_256


def test_round_trip_with_circuit_verification_string() -> None:
    relay = SimRelay.generate("r", "10.0.0.2")
    state, onionskin = ntor_v3_client_create(relay.ed_id, relay.ntor_key, b"\x01\x01\x00")
    assert onionskin[:32] == relay.ed_id
    server_hs, server_keys = ntor3_server(relay, onionskin, lambda cm: b"\x01\x02\x01\x1f")
    keys, message = ntor_v3_client_complete(state, server_hs)
    assert message == b"\x01\x02\x01\x1f"
    assert keys.df + keys.db + keys.kf + keys.kb == server_keys
    assert NTOR3_CIRC_VERIFICATION == b"circuit extend"


def test_bad_auth_rejected() -> None:
    relay = SimRelay.generate("r", "10.0.0.2")
    state, onionskin = ntor_v3_client_create(relay.ed_id, relay.ntor_key, b"\x00")
    server_hs, _ = ntor3_server(relay, onionskin, lambda cm: b"\x00", bad_auth=True)
    with pytest.raises(RemoteProtocolError, match="AUTH"):
        ntor_v3_client_complete(state, server_hs)


def test_tampered_server_message_rejected() -> None:
    relay = SimRelay.generate("r", "10.0.0.2")
    state, onionskin = ntor_v3_client_create(relay.ed_id, relay.ntor_key, b"\x00")
    server_hs, _ = ntor3_server(relay, onionskin, lambda cm: b"\x01\x02\x01\x1f")
    with pytest.raises(RemoteProtocolError):
        ntor_v3_client_complete(state, server_hs[:-1] + bytes((server_hs[-1] ^ 1,)))


def test_short_reply_rejected() -> None:
    state, _ = ntor_v3_client_create(RELAY_ID, B_PUBLIC, b"")
    with pytest.raises(RemoteProtocolError):
        ntor_v3_client_complete(state, SERVER_HANDSHAKE[:63])


def test_wrong_verification_string_fails() -> None:
    relay = SimRelay.generate("r", "10.0.0.2")
    state, onionskin = ntor_v3_client_create(relay.ed_id, relay.ntor_key, b"\x00")
    with pytest.raises(Exception, match="MAC"):
        ntor3_server(relay, onionskin, lambda cm: b"\x00", verification=b"other")


def test_argument_checks() -> None:
    with pytest.raises(ValueError):
        ntor_v3_client_create(bytes(20), B_PUBLIC, b"")  # an RSA digest is not an ID here
    with pytest.raises(ValueError):
        ntor_v3_client_create(RELAY_ID, bytes(31), b"")


# --- extensions ---------------------------------------------------------------------


def test_extension_encoding() -> None:
    assert encode_extensions([]) == b"\x00"
    assert encode_extensions([(1, b"")]) == b"\x01\x01\x00"  # the CC request
    assert encode_extensions([(2, b"\x1f")]) == b"\x01\x02\x01\x1f"
    assert decode_extensions(b"\x01\x02\x01\x1f") == [(2, b"\x1f")]
    assert decode_extensions(b"\x00") == []
    assert decode_extensions(b"\x02\x05\x00\x02\x01\x20") == [(5, b""), (2, b"\x20")]
    assert decode_extensions(b"\x00trailing") == []


@pytest.mark.parametrize("bad", [b"", b"\x01", b"\x01\x02", b"\x01\x02\x02\x1f", b"\x02\x01\x00"])
def test_extension_decoding_rejects_truncation(bad: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_extensions(bad)
