"""Hardening, security defaults and fail-closed at run time, against the private network.

* One ``tor-client`` with the defaults that matter (no SafeLogging line, SOCKS on loopback,
  a fresh DataDirectory that already exists with loose permissions), logging at *debug*,
  under the audit hook: it fetches target.test by name and by address, both onion services
  (one needs client authorisation), a SOCKS-authenticated stream, and provokes failures
  (unknown host, closed port, unknown and malformed onion addresses). Its log must name
  none of the destinations, the SOCKS credentials or the client-auth key; its DataDirectory
  must be 0700 with every file 0600; every connection it made went to a relay's ORPort and
  it resolved no name itself.
* A SocksPort on a non-loopback address gets C tor's loud warning; loopback ones do not.
* The channel layer refuses, at run time, to connect to anything but a consensus relay or a
  configured directory source - even when asked directly - and an onion service fetch needs
  nothing else (its intro and rendezvous points are reached through circuits).
"""

from __future__ import annotations

import asyncio
import os
import stat
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from test_zz_hardening_faults import StallingRelay, fetch_ip, torrc_config
from test_zz_hardening_helpers import (
    audit_problems,
    curl_via,
    read_audit,
    start_daemon,
    wait_listening,
)

from puretor.aio.channel import ChannelTarget
from puretor.client import TorClient
from puretor.errors import ChannelError

pytestmark = pytest.mark.testnet

SOCKS_USER = "hardening-user-7f3a"
SOCKS_PASSWORD = "hardening-secret-91c2"
UNKNOWN_HOST = "no-such-host.target.test"
# A well-formed v3 address nobody publishes (the Ed25519 key of a fixed seed; no descriptor).
UNKNOWN_ONION = "he23hasxnocvzfmekrfvzzimlemzzqgymsnx25sokbaxnbx6jy3jgfad.onion"


async def _socks_exchange(port: int, host: str, dest_port: int, payload: bytes) -> bytes:
    """SOCKS5 with username/password, CONNECT to a hostname, send, read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x05\x01\x02")
        assert await reader.readexactly(2) == b"\x05\x02"
        u, p = SOCKS_USER.encode(), SOCKS_PASSWORD.encode()
        writer.write(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
        assert await reader.readexactly(2) == b"\x01\x00"
        h = host.encode()
        writer.write(b"\x05\x01\x00\x03" + bytes([len(h)]) + h + struct.pack("!H", dest_port))
        head = await asyncio.wait_for(reader.readexactly(10), 90)
        if head[1] != 0:
            return head
        writer.write(payload)
        return await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()


@pytest.mark.options("SafeLogging", "SocksPort", "DataDirectory")
def test_safe_defaults_in_a_real_run(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    targets = info["targets"]
    onion, authed = info["onion"]["plain"], info["onion"]["client_auth"]
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o755)  # loose: must be tightened
    client = start_daemon(
        info,
        tmp_path / "d",
        ["SocksPort auto", "Log debug stdout"],  # SocksPort without an address: loopback
        data_dir=data,
    )
    try:
        listeners = wait_listening(client)
        assert [a for a, _ in listeners] == ["127.0.0.1"], listeners
        ok = [
            targets["ip_urls"]["http_host"],
            targets["ip_urls"]["http_ip"],
            onion["url"],
            authed["url"],
        ]
        for url in ok:
            out = curl_via(client, url, "--fail")
            assert out.returncode == 0, (url, out.stderr, client.log_tail())
        body = asyncio.run(
            _socks_exchange(
                client.socks_port, "target.test", 80, b"GET /ip HTTP/1.0\r\nHost: x\r\n\r\n"
            )
        )
        assert b" 200 " in body.split(b"\r\n")[0], body[:80]
        failing = [
            f"http://{UNKNOWN_HOST}/",
            f"http://target.test:{targets['closed_port']}/",
            f"http://{UNKNOWN_ONION}/",
            "http://not-a-valid-onion-address-at-all.onion/",
        ]
        for url in failing:
            out = curl_via(client, url, "--fail", timeout=120)
            assert out.returncode != 0, url
        log = client.log_text()
    finally:
        rc = client.stop()
    assert rc == 0
    log = client.log_text()
    assert "Traceback" not in log
    # SafeLogging (the default): no destination, credential or key in the log, any level.
    onion_labels = [o["address"].removesuffix(".onion") for o in (onion, authed)]
    secrets = {
        "hostname": "target.test",
        "target address": targets["ip"],
        "unknown host": UNKNOWN_HOST,
        "onion address": onion_labels[0][:16],
        "client-auth onion address": onion_labels[1][:16],
        "unknown onion": UNKNOWN_ONION[:16],
        "malformed onion": "not-a-valid-onion",
        "SOCKS username": SOCKS_USER,
        "SOCKS password": SOCKS_PASSWORD,
        "client auth key": authed["private_key_b32"][:16],
    }
    lower = log.lower()
    leaked = {what: s for what, s in secrets.items() if s.lower() in lower}
    assert not leaked, f"SafeLogging leaks {leaked}:\n" + "\n".join(
        line for line in log.splitlines() if any(s.lower() in line.lower() for s in leaked.values())
    )
    assert "[info]" in log and "[debug]" in log  # the check above read every level
    # DataDirectory 0700 (tightened), every file in it 0600.
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = sorted(p.name for p in data.iterdir())
    assert {"state.json", "cached-microdesc-consensus", "cached-certs"} <= set(files), files
    loose = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in data.iterdir()}
    assert all(m == "0o600" for m in loose.values()), loose
    # Every connection went to a relay; no local name resolution; no programs run.
    events = read_audit(client.workdir / "audit.jsonl")
    assert sum(e[0] == "channel" for e in events) >= 2
    assert not audit_problems(events, info), audit_problems(events, info)


@pytest.mark.options("SocksPort")
def test_non_loopback_socks_port_warns(testnet: Any, tmp_path: Path) -> None:
    warning = "You specified a public address"
    loud = start_daemon(
        testnet.info,
        tmp_path / "loud",
        ["SocksPort 127.0.0.1:auto", "SocksPort 0.0.0.0:auto", "Log notice stdout"],
        wait=False,
    )
    quiet = start_daemon(
        testnet.info,
        tmp_path / "quiet",
        ["SocksPort 127.0.0.2:auto", "SocksPort [::1]:auto", "Log notice stdout"],
        wait=False,
    )
    try:
        for c in (loud, quiet):
            deadline = time.monotonic() + 30
            while len(wait_listening(c)) < 2:
                assert time.monotonic() < deadline, c.log_tail()
                time.sleep(0.1)
        lines = [line for line in loud.log_text().splitlines() if warning in line]
        assert len(lines) == 1 and "[warn]" in lines[0] and "'0.0.0.0'" in lines[0], lines
        assert warning not in quiet.log_text()
    finally:
        loud.stop()
        quiet.stop()


def test_channel_layer_refuses_non_relays(testnet: Any, tmp_path: Path) -> None:
    """Fail closed at run time: asked directly, the client's channel manager refuses a
    listener that is no relay (and connects nowhere), a relay's identity at another address,
    and an unknown identity at a relay's address; onion service fetches need nothing else."""
    info = testnet.info
    stall = StallingRelay(tmp_path)
    guard = next(r for r in info["relays"] if r["role"] == "guard")
    # A relay the client never connects to directly (first hops are guards), so there is no
    # open channel to that identity to reuse: an exit.
    exit_id = bytes.fromhex(next(r for r in info["relays"] if r["role"] == "exit")["fingerprint"])
    try:
        config = torrc_config(info, tmp_path / "c")

        async def main() -> tuple[list[str], int, int]:
            async with TorClient(config, bootstrap_timeout=90) as tor:
                await fetch_ip(tor)
                mgr = tor._chanmgr
                bad = [
                    ChannelTarget(stall.address, stall.port, os.urandom(20), None, "stranger"),
                    ChannelTarget(stall.address, stall.port, exit_id, None, "impostor"),
                    ChannelTarget(guard["address"], int(guard["orport"]), os.urandom(20)),
                    ChannelTarget("198.18.0.10", 80, exit_id),  # a destination
                ]
                messages = []
                for target in bad:
                    with pytest.raises(ChannelError) as err:
                        await mgr.get_channel(target)
                    messages.append(str(err.value))
                # An onion service: descriptors, intro and rendezvous points - all through
                # circuits; nothing refused.
                reader, writer = await tor.open_connection(info["onion"]["plain"]["address"], 80)
                writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                body = await asyncio.wait_for(reader.read(), 60)
                writer.close()
                assert info["onion"]["plain"]["index_text"].encode() in body
                return messages, mgr.refused, mgr.connects

        messages, refused, connects = asyncio.run(main())
    finally:
        stall.close()
    print("refused:", *messages, sep="\n  ")
    assert all(m.startswith("refusing to connect to") for m in messages), messages
    assert refused == len(messages)
    assert connects >= 1
    assert stall.accepted == 0, "the refused target was connected to anyway"
