"""The control port's onion-client commands in process (HSFETCH, ONION_CLIENT_AUTH_*) and
the HS_DESC / HS_DESC_CONTENT text: replies byte for byte as C tor's control_hs.c and
control_cmd.c write them, keys kept in and written to ClientOnionAuthDir in C tor's
``.auth_private`` format.  Fetches against C tor HSDirs are in
tests/integration/test_control_onion.py."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from test_control_server import _authenticate, control, run_in_loop

from puretor import OnionClientAuth, OnionDescriptorEvent, RelayRef
from puretor.app.control.formats import event_text, hs_desc_content
from puretor.app.control.onion import (
    BadArguments,
    hsdir_fingerprint,
    is_v3_address,
    parse_args,
    parse_private_key,
)
from puretor.hs.address import encode_onion_address
from puretor.hs.clientauth import format_auth_private, parse_auth_private
from puretor.proto import control as proto
from puretor.proto.controlauth import hash_password

ADDR1 = encode_onion_address(bytes(SigningKey(b"\x01" * 32).verify_key)).removesuffix(".onion")
ADDR2 = encode_onion_address(bytes(SigningKey(b"\x02" * 32).verify_key)).removesuffix(".onion")
KEY1 = bytes(range(1, 33))
KEY2 = bytes(range(101, 133))
KEY1_B64 = base64.b64encode(KEY1).decode()
KEY2_B64 = base64.b64encode(KEY2).decode()
LOGIN = _authenticate('"pw"')


def _pw() -> str:
    return hash_password(b"pw")


def test_addresses_as_c_tor_validates_them() -> None:
    assert is_v3_address(ADDR1)
    assert not is_v3_address(ADDR1 + ".onion")  # hs_address_is_valid wants the bare label
    assert not is_v3_address(ADDR1[:-1] + ("a" if ADDR1[-1] != "a" else "b"))
    assert not is_v3_address("")
    assert not is_v3_address("x" * 56)


def test_arguments_split_as_control_cmd_parse_args() -> None:
    parsed = parse_args(
        f"{ADDR1} x25519:{KEY1_B64} ClientName=a Flags=Permanent", min_args=0, max_args=2
    )
    assert parsed.args == [ADDR1, f"x25519:{KEY1_B64}"]
    assert parsed.kwargs == [("ClientName", "a"), ("Flags", "Permanent")]
    assert parse_args("  a   b ", min_args=0, max_args=2).args == ["a", "b"]
    with pytest.raises(BadArguments, match=r"^Need at least 1 argument\(s\)$"):
        parse_args("", min_args=1, max_args=1)
    with pytest.raises(BadArguments, match='^Unrecognized keyword argument "FOO"$'):
        parse_args("a SERVER=x FOO=1", min_args=1, max_args=1, allowed=("SERVER",))
    with pytest.raises(BadArguments, match=r"^Cannot parse keyword argument\(s\)$"):
        parse_args("a b c", min_args=1, max_args=1)


def test_private_keys_as_control_hs_parses_them() -> None:
    assert parse_private_key(f"x25519:{KEY1_B64}") == KEY1
    assert parse_private_key(f"X25519:{KEY1_B64.rstrip('=')}") == KEY1  # padding optional
    assert parse_private_key("x25519") == (512, "Invalid key type/blob")
    assert parse_private_key("a:b:c") == (512, "Invalid key type/blob")
    assert parse_private_key(f"ed25519:{KEY1_B64}") == (552, 'Unrecognized key type "ed25519"')
    assert parse_private_key("x25519:!!!!") == (512, "Failed to decode x25519 private key")
    short = base64.b64encode(bytes(31)).decode()
    assert parse_private_key(f"x25519:{short}") == (512, "Failed to decode x25519 private key")
    zero = base64.b64encode(bytes(32)).decode()
    assert parse_private_key(f"x25519:{zero}") == (553, f'Invalid private key "{zero}"')


def test_hsfetch_servers_as_node_get_by_hex_id() -> None:
    fp = "AB" * 20
    known = {fp}
    for text in (fp, fp.lower(), "$" + fp, f"${fp}~nick"):
        assert hsdir_fingerprint(text, known) == fp
    for text in ("nick", f"${fp}=nick", "$" + "CD" * 20, fp[:-1], "$" + "G" * 40):
        assert hsdir_fingerprint(text, known) is None


def test_auth_private_file_text_is_c_tors_and_reads_back() -> None:
    text = format_auth_private(ADDR1, KEY1)
    key_b32 = base64.b32encode(KEY1).decode().rstrip("=").lower()
    assert text == f"{ADDR1}:descriptor:x25519:{key_b32}"
    assert parse_auth_private(text)[1] == KEY1
    assert "KEY" not in repr(OnionClientAuth(ADDR1, KEY1)) and KEY1_B64 not in repr(
        OnionClientAuth(ADDR1, KEY1)
    )


def test_hs_desc_events_as_control_events_c_writes_them() -> None:
    hsdir = RelayRef("AB" * 20, "hsdir1")
    requested = OnionDescriptorEvent("REQUESTED", ADDR1, hsdir, "B" * 43, hsdir_index="CD" * 32)
    assert event_text(requested) == (
        "HS_DESC",
        f"REQUESTED {ADDR1} NO_AUTH ${'AB' * 20}~hsdir1 {'B' * 43} HSDIR_INDEX={'CD' * 32}",
    )
    received = OnionDescriptorEvent("RECEIVED", ADDR1, hsdir, "B" * 43, content="hs-descriptor 3\n")
    assert event_text(received) == (
        "HS_DESC",
        f"RECEIVED {ADDR1} NO_AUTH ${'AB' * 20}~hsdir1 {'B' * 43}",
    )
    failed = OnionDescriptorEvent("FAILED", ADDR1, hsdir, "B" * 43, reason="NOT_FOUND", content="")
    assert event_text(failed) == (
        "HS_DESC",
        f"FAILED {ADDR1} NO_AUTH ${'AB' * 20}~hsdir1 {'B' * 43} REASON=NOT_FOUND",
    )
    header, body = hs_desc_content(received)
    assert (
        proto.event(header, body)
        == (
            f"650+HS_DESC_CONTENT {ADDR1} {'B' * 43} ${'AB' * 20}~hsdir1\r\n"
            "hs-descriptor 3\r\n.\r\n650 OK\r\n"
        ).encode()
    )
    header, body = hs_desc_content(failed)
    # An empty line before the "." (as C tor 0.4.9 sends it after a failure).
    assert proto.event(header, body).endswith(b"~hsdir1\r\n\r\n.\r\n650 OK\r\n")


def test_client_auth_library_api(tmp_path: Path) -> None:
    from puretor import TorClient, TorConfig
    from puretor.errors import ConfigError, OnionError

    tor = TorClient(TorConfig.from_options(DataDirectory=str(tmp_path / "data")))
    assert tor.onion_client_auths() == []
    assert tor.add_onion_client_auth(ADDR1 + ".onion", KEY1, client_name="a") == "added"
    assert tor.add_onion_client_auth(ADDR1.upper(), KEY2) == "replaced"
    [auth] = tor.onion_client_auths()
    assert (auth.address, auth.private_key, auth.client_name, auth.permanent) == (
        ADDR1,
        KEY2,
        None,
        False,
    )
    with pytest.raises(ValueError):
        tor.add_onion_client_auth(ADDR2, bytes(32))
    with pytest.raises(ValueError):
        tor.add_onion_client_auth(ADDR2, b"short")
    with pytest.raises(OnionError):
        tor.add_onion_client_auth("nope.onion", KEY1)
    with pytest.raises(ConfigError):  # permanent needs ClientOnionAuthDir
        tor.add_onion_client_auth(ADDR2, KEY2, permanent=True)
    assert [a.address for a in tor.onion_client_auths()] == [ADDR1]
    assert tor.remove_onion_client_auth(ADDR1 + ".onion") is True
    assert tor.remove_onion_client_auth(ADDR1) is False
    assert tor.onion_client_auths() == []


@run_in_loop
async def test_client_auth_commands_reply_as_c_tor(tmp_path: Path) -> None:
    async with control(tmp_path, HashedControlPassword=_pw()) as h:

        async def ask(line: str) -> bytes:
            got = await h.talk(LOGIN + line.encode() + b"\r\nQUIT\r\n", until=b"closing connection")
            assert got.startswith(b"250 OK\r\n") and got.endswith(b"250 closing connection\r\n")
            return got[len(b"250 OK\r\n") : -len(b"250 closing connection\r\n")]

        assert (
            await ask("ONION_CLIENT_AUTH_ADD")
            == b"512 Incomplete ONION_CLIENT_AUTH_ADD command\r\n"
        )
        assert await ask(f"ONION_CLIENT_AUTH_ADD {ADDR1}.onion x25519:{KEY1_B64}") == (
            f'512 Invalid v3 address "{ADDR1}.onion"\r\n'.encode()
        )
        assert (
            await ask(f"ONION_CLIENT_AUTH_ADD {ADDR1} {KEY1_B64}")
            == b"512 Invalid key type/blob\r\n"
        )
        assert await ask(f"ONION_CLIENT_AUTH_ADD {ADDR1} x25519:{KEY1_B64} Flags=Bogus") == (
            b"512 Invalid 'Flags' argument: \"Bogus\"\r\n"
        )
        assert await ask(
            f"ONION_CLIENT_AUTH_ADD {ADDR1} x25519:{KEY1_B64} ClientName={'n' * 17}"
        ) == (b"512 ClientName longer than 16 chars\r\n")
        # Flags=Permanent without ClientOnionAuthDir: nothing stored.
        assert await ask(f"ONION_CLIENT_AUTH_ADD {ADDR1} x25519:{KEY1_B64} Flags=Permanent") == (
            f'553 Unable to store creds for "{ADDR1}"\r\n'.encode()
        )
        assert await ask("ONION_CLIENT_AUTH_VIEW") == b"250-ONION_CLIENT_AUTH_VIEW\r\n250 OK\r\n"

        assert await ask(f"ONION_CLIENT_AUTH_ADD {ADDR1} x25519:{KEY1_B64} ClientName=alice") == (
            b"250 OK\r\n"
        )
        assert await ask(f"ONION_CLIENT_AUTH_ADD {ADDR1} x25519:{KEY1_B64} ClientName=bob") == (
            b"251 Client for onion existed and replaced\r\n"
        )
        assert (
            await ask(f"ONION_CLIENT_AUTH_ADD {ADDR2} x25519:{KEY2_B64.rstrip('=')}")
            == b"250 OK\r\n"
        )
        lines = sorted(
            [
                f"CLIENT {ADDR1} x25519:{KEY1_B64} ClientName=bob",
                f"CLIENT {ADDR2} x25519:{KEY2_B64}",
            ]
        )
        assert await ask("ONION_CLIENT_AUTH_VIEW") == (
            f"250-ONION_CLIENT_AUTH_VIEW\r\n250-{lines[0]}\r\n250-{lines[1]}\r\n250 OK\r\n".encode()
        )
        assert await ask(f"ONION_CLIENT_AUTH_VIEW {ADDR2}") == (
            f"250-ONION_CLIENT_AUTH_VIEW {ADDR2}\r\n250-CLIENT {ADDR2} x25519:{KEY2_B64}\r\n250 OK\r\n".encode()
        )
        assert await ask("ONION_CLIENT_AUTH_VIEW nope") == b'512 Invalid v3 address "nope"\r\n'
        # The library sees the same keys.
        auths = h.server.tor.onion_client_auths()
        assert [(a.address, a.private_key, a.client_name) for a in auths] == sorted(
            [(ADDR1, KEY1, "bob"), (ADDR2, KEY2, None)]
        )

        assert (
            await ask("ONION_CLIENT_AUTH_REMOVE")
            == b"512 Incomplete ONION_CLIENT_AUTH_REMOVE command\r\n"
        )
        assert await ask(f"ONION_CLIENT_AUTH_REMOVE {ADDR1}") == b"250 OK\r\n"
        assert await ask(f"ONION_CLIENT_AUTH_REMOVE {ADDR1}") == (
            f'251 No credentials for "{ADDR1}"\r\n'.encode()
        )
        assert [a.address for a in h.server.tor.onion_client_auths()] == [ADDR2]


@run_in_loop
async def test_permanent_keys_live_in_client_onion_auth_dir(tmp_path: Path) -> None:
    auth_dir = tmp_path / "auth"
    auth_dir.mkdir(mode=0o700)
    (auth_dir / "first.auth_private").write_text(format_auth_private(ADDR1, KEY1) + "\n")
    async with control(
        tmp_path, HashedControlPassword=_pw(), ClientOnionAuthDir=str(auth_dir)
    ) as h:
        add = f"ONION_CLIENT_AUTH_ADD {ADDR2} x25519:{KEY2_B64} Flags=Permanent ClientName=c"
        got = await h.talk(
            LOGIN + add.encode() + b"\r\nONION_CLIENT_AUTH_VIEW\r\n",
            until=b"250 OK\r\n250 OK\r\n250 OK\r\n",
        )
        written = auth_dir / f"{ADDR2}.auth_private"
        assert written.read_text() == format_auth_private(ADDR2, KEY2)
        assert os.stat(written).st_mode & 0o777 == 0o600
        # Keys read from the directory are permanent too, as in C tor.
        lines = sorted(
            [
                f"CLIENT {ADDR1} x25519:{KEY1_B64} Flags=Permanent",
                f"CLIENT {ADDR2} x25519:{KEY2_B64} Flags=Permanent ClientName=c",
            ]
        )
        assert (
            got
            == (
                "250 OK\r\n250 OK\r\n250-ONION_CLIENT_AUTH_VIEW\r\n"
                f"250-{lines[0]}\r\n250-{lines[1]}\r\n250 OK\r\n"
            ).encode()
        )
        # REMOVE deletes the credential's file, whatever its name.
        got = await h.talk(
            LOGIN + f"ONION_CLIENT_AUTH_REMOVE {ADDR1}\r\n".encode(), until=b"250 OK\r\n250 OK\r\n"
        )
        assert got == b"250 OK\r\n250 OK\r\n"
        assert sorted(p.name for p in auth_dir.iterdir()) == [written.name]
        # A later client reads the written file back.
        assert parse_auth_private(written.read_text())[1] == KEY2


@run_in_loop
async def test_hsfetch_argument_errors(tmp_path: Path) -> None:
    async with control(tmp_path, HashedControlPassword=_pw()) as h:
        cases = {
            "HSFETCH": b"512 Bad arguments to HSFETCH: Need at least 1 argument(s)\r\n",
            "hsfetch": b"512 Bad arguments to hsfetch: Need at least 1 argument(s)\r\n",
            "HSFETCH nope": b'513 Invalid argument "nope"\r\n',
            f"HSFETCH {ADDR1}.onion": f'513 Invalid argument "{ADDR1}.onion"\r\n'.encode(),
            f"HSFETCH {ADDR1} FOO=1": b'512 Bad arguments to HSFETCH: Unrecognized keyword argument "FOO"\r\n',
            f"HSFETCH {ADDR1} SERVER=${'AB' * 20}": f'552 Server "${"AB" * 20}" not found\r\n'.encode(),
        }
        for line, want in cases.items():
            got = await h.talk(LOGIN + line.encode() + b"\r\n", until=b"\r\n" + want[:3])
            assert got == b"250 OK\r\n" + want, line
