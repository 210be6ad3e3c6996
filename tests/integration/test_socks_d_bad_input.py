"""tor-client acceptance: hostile or broken SOCKS clients get a proper error reply or are
dropped (idle ones after the handshake timeout) and the daemon keeps serving everyone else;
destinations the exit refuses get C tor's SOCKS5 reply codes (read with a raw client)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from typing import Any

import ptclient
import pytest
from ptclient import PtClient, socks5_request

from puretor.testnet import CTorClient

pytestmark = pytest.mark.testnet
tor_daemon = ptclient.tor_daemon  # the session's shared daemon (a fixture)
tor_daemon_factory = ptclient.tor_daemon_factory

GREET = b"\x05\x01\x00"  # SOCKS5, one method: no authentication
OK_METHOD = b"\x05\x00"


def _s5(cmd: int, atyp_addr: bytes, port: int = 80) -> bytes:
    return bytes([5, cmd, 0]) + atyp_addr + struct.pack("!H", port)


def _name(host: bytes) -> bytes:
    return bytes([3, len(host)]) + host


IPV4 = b"\x01" + bytes([198, 18, 0, 10])


def _s5_error(code: int) -> bytes:
    return bytes([5, code, 0, 1]) + bytes(6)


async def _exchange(
    port: int, data: bytes, *, eof: bool, timeout: float = 15.0
) -> tuple[bytes, str]:
    """Send `data` (then EOF if asked); read until the daemon closes. -> (bytes, how)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = bytearray()
    how = "eof"
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                how = "timeout"
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), remaining)
            except TimeoutError:
                how = "timeout"
                break
            except ConnectionResetError:
                how = "reset"
                break
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return bytes(got), how


async def _fetch_ip(port: int, host: str = "target.test") -> str:
    """A normal client: CONNECT host:80, GET /ip."""
    reply, reader, writer = await socks5_request(port, host, 80)
    try:
        assert reply[1] == 0, reply.hex()
        writer.write(f"GET /ip HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    return raw.partition(b"\r\n\r\n")[2].decode().strip()


# (id, bytes sent, send EOF after them, expected reply bytes)
CASES = [
    ("garbage", b"\x07\x13garbage\xff\x00", False, b""),
    ("random-binary", bytes(range(256)) * 4, False, b""),
    ("http-to-socks-port", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, b"HTTP/1.0 501"),
    ("no-acceptable-method", b"\x05\x01\x80", False, b"\x05\xff"),
    ("zero-methods", b"\x05\x00", False, b"\x05\xff"),
    ("truncated-greeting", b"\x05\x02\x00", True, b""),
    ("truncated-request", GREET + b"\x05\x01\x00\x03\x0btarget", True, OK_METHOD),
    ("truncated-userpass", b"\x05\x01\x02\x01\x05ab", True, b"\x05\x02"),
    ("bad-userpass-version", b"\x05\x01\x02\x05\x01a\x01b", False, b"\x05\x02\x01\x01"),
    ("bind", GREET + _s5(2, IPV4), False, OK_METHOD + _s5_error(0x07)),
    ("udp-associate", GREET + _s5(3, IPV4), False, OK_METHOD + _s5_error(0x07)),
    ("unknown-command", GREET + _s5(9, _name(b"target.test")), False, OK_METHOD + _s5_error(0x07)),
    (
        "unknown-address-type",
        GREET + b"\x05\x01\x00\x07abcd\x00\x50",
        False,
        OK_METHOD + _s5_error(0x08),
    ),
    (
        "reserved-byte-set",
        GREET + b"\x05\x01\x01" + IPV4 + b"\x00\x50",
        False,
        OK_METHOD + _s5_error(0x01),
    ),
    ("port-zero", GREET + _s5(1, _name(b"target.test"), 0), False, OK_METHOD + _s5_error(0x01)),
    (
        "bad-hostname-bytes",
        GREET + _s5(1, _name(b"targ et\x00.test")),
        False,
        OK_METHOD + _s5_error(0x01),
    ),
    (
        "socks4-bind",
        b"\x04\x02\x00\x50" + bytes([198, 18, 0, 10]) + b"\x00",
        False,
        b"\x00\x5b" + bytes(6),
    ),
    (
        "socks4-userid-too-long",
        b"\x04\x01\x00\x50\xc6\x12\x00\x0a" + b"u" * 600,
        False,
        b"\x00\x5b" + bytes(6),
    ),
    (
        "socks4a-hostname-too-long",
        b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"h" * 300,
        False,
        b"\x00\x5b" + bytes(6),
    ),
]


@pytest.mark.parametrize(
    ("sent", "eof", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_client_gets_error_and_daemon_keeps_serving(
    tor_daemon: PtClient, testnet_info: Any, sent: bytes, eof: bool, expected: bytes
) -> None:
    async def main() -> tuple[bytes, str, str]:
        got, how = await _exchange(tor_daemon.socks_port, sent, eof=eof)
        return got, how, await _fetch_ip(tor_daemon.socks_port)

    got, how, seen = asyncio.run(main())
    assert how in ("eof", "reset"), f"daemon did not close the connection ({how}), got {got!r}"
    if expected.startswith(b"HTTP/"):
        assert got.startswith(expected), got[:200]
    else:
        assert got == expected
    assert seen in testnet_info["targets"]["exit_addresses"]
    assert tor_daemon.is_running()


def test_over_long_hostname(tor_daemon: PtClient, testnet_info: Any) -> None:
    # 255 bytes is the most SOCKS5 can carry; a 255-byte label is no DNS name, so the exit
    # cannot resolve it: a failure reply (not a hang, not a crash).
    async def main() -> tuple[bytes, str]:
        reply, _r, writer = await socks5_request(tor_daemon.socks_port, "a" * 255, 80)
        writer.close()
        return reply, await _fetch_ip(tor_daemon.socks_port)

    reply, seen = asyncio.run(main())
    assert reply[:2] in (b"\x05\x04", b"\x05\x01"), reply.hex()
    assert seen in testnet_info["targets"]["exit_addresses"]


def test_many_idle_clients_do_not_block_others(tor_daemon: PtClient, testnet_info: Any) -> None:
    async def main() -> str:
        idle = [
            await asyncio.open_connection("127.0.0.1", tor_daemon.socks_port) for _ in range(200)
        ]
        try:
            for _r, w in idle[::2]:
                w.write(b"\x05")  # half of them start a greeting and stall
            return await _fetch_ip(tor_daemon.socks_port)
        finally:
            for _r, w in idle:
                w.close()

    assert asyncio.run(main()) in testnet_info["targets"]["exit_addresses"]


@pytest.mark.options("SocksTimeout")
def test_idle_clients_dropped_after_handshake_timeout(
    tor_daemon_factory: Any, testnet_info: Any
) -> None:
    # SocksTimeout (C tor's option) caps the handshake timeout (30 s by default).
    daemon = tor_daemon_factory(extra_options={"SocksTimeout": 3})

    async def stall(data: bytes) -> tuple[float, bytes, str]:
        t0 = time.monotonic()
        got, how = await _exchange(daemon.socks_port, data, eof=False, timeout=20)
        return time.monotonic() - t0, got, how

    async def main() -> tuple[list[tuple[float, bytes, str]], str]:
        stalls = await asyncio.gather(
            stall(b""),  # connects, says nothing
            stall(b"\x05"),  # half a greeting
            stall(b"\x05\x01\x02\x01\x04ab"),  # stuck in username/password
            stall(GREET + b"\x05\x01\x00\x03"),  # stuck in the request
        )
        return stalls, await _fetch_ip(daemon.socks_port)

    stalls, seen = asyncio.run(main())
    for elapsed, got, how in stalls:
        assert how in ("eof", "reset"), (elapsed, got, how)
        assert 2.5 <= elapsed <= 10, elapsed
        assert got in (b"", OK_METHOD, b"\x05\x02")
    assert seen in testnet_info["targets"]["exit_addresses"]


# --- refusals by the exit: C tor's RELAY_END -> SOCKS5 REP mapping -------------------------


async def _reply_code(port: int, host: str, dest_port: int, command: int = 1) -> bytes:
    reply, _r, writer = await socks5_request(port, host, dest_port, command=command, timeout=150)
    writer.close()
    return reply


def test_refused_destinations_get_c_tor_reply_codes(
    tor_daemon: PtClient, ctor_client: CTorClient, testnet_info: Any
) -> None:
    targets = testnet_info["targets"]
    closed = targets["closed_port"]
    nx = testnet_info["dns"]["nxdomain_example"]
    cases = {
        "closed-port-by-name": (targets["hostname"], closed),
        "closed-port-by-ip": (targets["ip"], closed),
        "unresolvable-name": (nx, 80),
    }

    async def main() -> dict[str, tuple[int, int]]:
        ours = await asyncio.gather(
            *(_reply_code(tor_daemon.socks_port, h, p) for h, p in cases.values())
        )
        ctor = await asyncio.gather(
            *(_reply_code(ctor_client.socks_port, h, p) for h, p in cases.values())
        )
        return {k: (a[1], b[1]) for k, a, b in zip(cases, ours, ctor, strict=True)}

    codes = asyncio.run(main())
    print(f"REP codes (puretor, C tor): {codes}")
    # Exactly what the reference client answers for the same refusal.
    for case, (ours, ctor) in codes.items():
        assert ours == ctor, f"{case}: puretor {ours:#04x}, C tor {ctor:#04x}"
    # A closed port: CONNECTREFUSED -> 0x05 connection refused. (C tor 0.4.9 exits report an
    # asynchronous connect failure as END MISC -> 0x01, and C tor clients answer 0x01 too.)
    assert codes["closed-port-by-name"][0] in (0x05, 0x01)
    assert codes["unresolvable-name"][0] == 0x04  # RESOLVEFAILED -> host unreachable


def test_destination_no_exit_allows_is_not_allowed(tor_daemon: PtClient) -> None:
    # Both exits run with IPv6Exit 0: no exit policy allows an IPv6 destination, so the
    # request is refused at once as "not allowed by ruleset" (0x02, like EXITPOLICY).
    code = asyncio.run(_reply_code(tor_daemon.socks_port, "2001:db8::10", 80))[1]
    assert code == 0x02


def test_port_only_one_exit_allows_goes_through_that_exit(
    tor_daemon: PtClient, testnet_info: Any
) -> None:
    targets = testnet_info["targets"]
    seen = tor_daemon.fetch_ip(targets["ip_urls"]["exit1_only_host"])
    assert seen == targets["exit1_only"]["exit_address"]


def test_socks_resolve_extension(tor_daemon: PtClient, testnet_info: Any) -> None:
    targets = testnet_info["targets"]
    nx = testnet_info["dns"]["nxdomain_example"]

    async def main() -> tuple[bytes, bytes]:
        ok = await _reply_code(tor_daemon.socks_port, targets["hostname"], 0, command=0xF0)
        bad = await _reply_code(tor_daemon.socks_port, nx, 0, command=0xF0)
        return ok, bad

    ok, bad = asyncio.run(main())
    assert ok[:4] == b"\x05\x00\x00\x01" and ok[4:8] == bytes([198, 18, 0, 10]), ok.hex()
    assert bad[1] == 0x04, bad.hex()
