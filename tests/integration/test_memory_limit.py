"""MaxMemInQueues in the tor-client daemon, against real C tor exits.

SOCKS clients that request 100 MiB and then read nothing: the daemon's socket buffer fills,
asyncio pauses the Tor stream, the core holds what still arrives and sends XOFF, and the exit
(C tor, congestion control on) stops.  One such reader holds 0.3-1.2 MB - flow control bounds
it (tests/integration/test_options_effects.py shows six of them holding steady without a
limit) - so six, each on its own circuit, hold more than ``MaxMemInQueues 1 MB``: the daemon
closes the circuits with the oldest queued data until it is under 90% of the limit, says so in
its log, resets those SOCKS connections, and goes on serving new ones.  A hostile exit
that ignores XOFF is tests/unit/core/test_core_memory.py.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ptclient import PtClient
from test_zz_hardening_helpers import curl_via, daemon_stats, start_daemon

from puretor.bench.procstat import rss_mib
from puretor.testnet import TestNetwork

pytestmark = [pytest.mark.testnet, pytest.mark.timeout(300)]

LIMIT = 2**20
OOM_LINE = "We're low on memory"


async def slow_reader(port: int, user: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A SOCKS5 client (its own circuit: IsolateSOCKSAuth) that GETs 100 MiB and then does
    not read; a small receive buffer, so the daemon's side fills quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
    writer.write(b"\x05\x01\x02")
    assert await reader.readexactly(2) == b"\x05\x02"
    writer.write(bytes([1, len(user)]) + user.encode() + b"\x01x")
    assert await reader.readexactly(2) == b"\x01\x00"
    host = b"target.test"
    writer.write(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack("!H", 80))
    head = await asyncio.wait_for(reader.readexactly(4), 60)
    assert head[1] == 0, f"SOCKS reply {head[1]}"
    await reader.readexactly(6 if head[3] == 1 else 18)
    writer.write(b"GET /files/100MiB HTTP/1.0\r\nHost: target.test\r\n\r\n")
    return reader, writer


async def was_reset(reader: asyncio.StreamReader, enough: int = 4 * 2**20) -> bool:
    """Read until the daemon's reset shows (True) or data keeps flowing (False)."""
    got = 0
    try:
        while got < enough:
            data = await asyncio.wait_for(reader.read(2**16), 20)
            if not data:
                return True
            got += len(data)
    except (ConnectionError, TimeoutError):
        return True
    return False


def wait_until(check: Callable[[], bool], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not check() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_slow_readers_are_cut_off_at_max_mem_in_queues(
    testnet: TestNetwork, tmp_path: Path
) -> None:
    daemon: PtClient = start_daemon(
        testnet.info,
        tmp_path / "small",
        ["SocksPort 127.0.0.1:auto", "Log notice stdout", "MaxMemInQueues 1 MB"],
        audit=False,
    )
    try:
        assert "MaxMemInQueues is set to a low value" in daemon.log_text()  # as C tor warns
        assert curl_via(daemon, "http://target.test/files/1MiB").returncode == 0
        rss_before = rss_mib(daemon.pid)

        async def main() -> tuple[dict[str, int], dict[str, int], list[bool], bool]:
            conns = await asyncio.gather(
                *(slow_reader(daemon.socks_port, f"slow{i}") for i in range(6))
            )
            try:
                await asyncio.to_thread(wait_until, lambda: OOM_LINE in daemon.log_text(), 90)
                first = await asyncio.to_thread(daemon_stats, daemon, 30.0)
                await asyncio.sleep(3.0)  # the survivors' exits stopped on XOFF: no growth
                later = await asyncio.to_thread(daemon_stats, daemon, 30.0)
                fetched = await asyncio.to_thread(
                    lambda: curl_via(daemon, "http://target.test/files/1MiB").returncode == 0
                )
                resets = [await was_reset(reader) for reader, _ in conns]
                return first, later, resets, fetched
            finally:
                for _, writer in conns:
                    writer.close()

        first, later, resets, fetched = asyncio.run(main())
        growth = rss_mib(daemon.pid) - rss_before
        print("stats after the limit:", first, "3 s later:", later, "resets:", resets)
        print(f"RSS growth: {growth:.1f} MiB")
        log = daemon.log_text()
        assert OOM_LINE in log and "MaxMemInQueues 1048576" in log, daemon.log_tail()
        assert "Killing circuits with over-long queues" in log
        # The total was brought under the limit; the peak is at most one read past it.
        assert first["oom_tunnels_closed"] >= 1
        assert later["queued_bytes"] < LIMIT and later["queued_bytes_peak"] < LIMIT + 2**19
        # Each closed circuit carried one slow reader, whose SOCKS connection was reset (one
        # stalled download can hold about as much as this limit: often all six go), and new
        # connections still work.
        assert sum(resets) == later["oom_tunnels_closed"] >= first["oom_tunnels_closed"]
        assert fetched
        assert growth < 16, f"RSS grew by {growth:.1f} MiB"
    finally:
        daemon.stop()
