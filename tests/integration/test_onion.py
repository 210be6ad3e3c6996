"""Onion services v3 through the public library API, against C tor-hosted services."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest
from onion_helpers import http_get, make_config, sha256

from puretor import TorClient
from puretor.errors import OnionError
from puretor.hs.address import encode_onion_address

pytestmark = pytest.mark.testnet


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def _wrong_key_line(address: str) -> str:
    # A well-formed x25519 private key that the service did not authorise.
    raw = hashlib.sha256(b"not the authorised key").digest()
    key = base64.b32encode(raw).decode().rstrip("=")
    return f"{address.removesuffix('.onion')}:descriptor:x25519:{key}\n"


def test_onion_page_10mib_and_rendezvous_reuse(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    onion = info["onion"]["plain"]
    want = info["targets"]["files"]["10MiB"]["sha256"]

    async def main() -> tuple[float, float]:
        async with TorClient(make_config(info, tmp_path / "data")) as tor:
            t0 = time.monotonic()
            status, body = await http_get(tor, onion["address"], "/")
            cold = time.monotonic() - t0
            assert status == 200
            assert body.decode() == onion["index_text"]
            circuits_after_first = tor.stats()["circuits_built"]

            t1 = time.monotonic()
            status, body = await http_get(tor, onion["address"], "/")
            warm = time.monotonic() - t1
            assert status == 200
            # The second request reused the rendezvous circuit: nothing new was built.
            assert tor.stats()["circuits_built"] == circuits_after_first

            status, body = await http_get(tor, onion["address"], "/files/10MiB")
            assert status == 200 and sha256(body) == want

            # The service's descriptor offers congestion control (flow-control 1-2 31) and
            # the consensus has cc_alg=2, so INTRODUCE1 asked for it (as C tor clients
            # do): the virtual hop runs prop 324 - SENDMEs every 31 cells, flow control
            # instead of stream windows - and the 10 MiB above went that way.
            reader, writer = await tor.open_connection(onion["address"], 80)
            tunnel = writer.get_extra_info("circuit").tunnel
            hops = tunnel.circuit.hops
            assert tunnel.cc is not None and tunnel.hop_count == 4
            assert hops[3].cc is tunnel.cc and hops[3].sendme_inc == 31
            assert all(hop.cc is None for hop in hops[:3])
            stream = next(iter(tunnel.streams.values()))
            assert stream.flow is not None
            writer.close()
            return cold, warm

    cold, warm = run(main())
    print(f"onion page: cold {cold:.2f}s, warm {warm:.2f}s")
    assert warm < cold


@pytest.mark.options("ClientOnionAuthDir")
def test_onion_client_auth_right_missing_and_wrong_key(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    svc = info["onion"]["client_auth"]
    good_dir = tmp_path / "auth-good"
    wrong_dir = tmp_path / "auth-wrong"
    for d, line in (
        (good_dir, svc["auth_private_line"] + "\n"),
        (wrong_dir, _wrong_key_line(svc["address"])),
    ):
        d.mkdir(mode=0o700)
        (d / "svc.auth_private").write_text(line)

    async def fetch(auth_dir: Path | None, name: str) -> Any:
        extra = ("--ClientOnionAuthDir", str(auth_dir)) if auth_dir else ()
        async with TorClient(make_config(info, tmp_path / name, *extra)) as tor:
            return await http_get(tor, svc["address"], "/")

    status, body = run(fetch(good_dir, "good"))
    assert status == 200 and body.decode() == svc["index_text"]

    with pytest.raises(OnionError) as missing:
        run(fetch(None, "missing"))
    assert missing.value.socks_code == 0xF4, missing.value

    with pytest.raises(OnionError) as wrong:
        run(fetch(wrong_dir, "wrong"))
    assert wrong.value.socks_code == 0xF5, wrong.value


def test_onion_nonexistent_and_malformed_addresses(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    from nacl.signing import SigningKey

    nowhere = encode_onion_address(bytes(SigningKey.generate().verify_key))
    good = info["onion"]["plain"]["address"]
    # Flip one character of the checksum part: still base32, but invalid.
    label = good.removesuffix(".onion")
    bad = label[:50] + ("a" if label[50] != "a" else "b") + label[51:] + ".onion"

    async def main() -> None:
        async with TorClient(make_config(info, tmp_path / "data")) as tor:
            before = tor.stats()
            t0 = time.monotonic()
            with pytest.raises(OnionError) as malformed:
                await tor.open_connection(bad, 80)
            assert malformed.value.socks_code == 0xF6
            assert time.monotonic() - t0 < 0.5
            after = tor.stats()
            # Refused before any network activity.
            assert after["channels_opened"] == before["channels_opened"]
            assert after["circuits_built"] == before["circuits_built"]

            t1 = time.monotonic()
            with pytest.raises(OnionError) as missing:
                await tor.open_connection(nowhere, 80)
            assert missing.value.socks_code == 0xF0, missing.value
            assert time.monotonic() - t1 < 90

    run(main())


@pytest.mark.skipif(os.environ.get("PURETOR_SKIP_SOCKS_ONION") == "1", reason="opt-out")
def test_onion_over_socks_extended_errors(testnet: Any, tmp_path: Path) -> None:
    """The daemon answers proposal-304 codes for onion failures on an ExtendedErrors port."""
    import socket

    from puretor.app.socks import ListenerPolicy, start_socks_listener

    info = testnet.info
    nowhere = encode_onion_address(bytes(32 * [0x11]))  # may be invalid point: F6 either way

    async def socks_connect(port: int, host: str) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x05\x01\x00")
        await reader.readexactly(2)
        name = host.encode()
        writer.write(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + (80).to_bytes(2, "big"))
        reply = await asyncio.wait_for(reader.readexactly(4), 120)
        writer.close()
        return reply[1]

    async def main() -> None:
        async with TorClient(make_config(info, tmp_path / "data")) as tor:
            server = await start_socks_listener(
                tor, "127.0.0.1", 0, ListenerPolicy(listener_id=0, extended_errors=True)
            )
            port = server.address[1]
            try:
                assert await socks_connect(port, "x" * 56 + ".onion") == 0xF6
                assert await socks_connect(port, nowhere) in (0xF6, 0xF0)
                assert await socks_connect(port, info["onion"]["client_auth"]["address"]) == 0xF4
                assert await socks_connect(port, info["onion"]["plain"]["address"]) == 0x00
            finally:
                server.close()

    del socket
    run(main())
