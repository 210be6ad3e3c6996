"""DNSPort acceptance with dig: A/AAAA/PTR answered by an exit, MX refused with NOTIMP,
answers and rcodes as a C tor client's DNSPort gives them on the same network, an .onion
name automapped to a virtual address that curl then reaches through the SOCKS port, and
hostile datagrams answered with FORMERR or dropped while the port keeps serving."""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import ptclient
import pytest
from ptclient import PtClient

from puretor.testnet import CTorClient, netns, start_ctor_client

pytestmark = pytest.mark.testnet

_DNS_LISTENER = re.compile(r"Opened DNS listener connection \(ready\) on 127\.0\.0\.1:(\d+)")
AUTOMAP = {"AutomapHostsOnResolve": 1, "VirtualAddrNetworkIPv4": "10.192.0.0/10"}


@pytest.fixture(scope="module")
def dns_daemon(testnet: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PtClient]:
    client = ptclient.start_tor_client(
        testnet.info,
        tmp_path_factory.mktemp("tor-client-dns"),
        extra_options={"DNSPort": "auto", **AUTOMAP},
    )
    try:
        m = _DNS_LISTENER.search(client.log_text())
        assert m, client.log_tail()
        client.dns_port = int(m.group(1))  # type: ignore[attr-defined]
        yield client
    finally:
        client.stop()


@pytest.fixture(scope="module")
def ctor_dns(testnet: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A C tor client's DNSPort: the reference for answers and rcodes."""
    lines = ["DNSPort auto", *(f"{k} {v}" for k, v in AUTOMAP.items())]
    client: CTorClient = start_ctor_client(
        testnet.info, tmp_path_factory.mktemp("ctor-dns"), extra_torrc=lines, timeout=120
    )
    try:
        text = client.log.read_text(errors="replace")
        m = _DNS_LISTENER.search(text)
        assert m, text[-2000:]
        yield int(m.group(1))
    finally:
        client.stop()


def dig(port: int, *args: str, netns_name: str | None = None) -> tuple[str, list[str]]:
    """(status, answer lines) of ``dig @127.0.0.1 -p PORT args``."""
    argv = ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=60", *args]
    proc = subprocess.run(netns.wrap(netns_name, argv), capture_output=True, text=True, timeout=90)
    m = re.search(r"status: ([A-Z]+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    section = proc.stdout.split(";; ANSWER SECTION:\n", 1)
    answers = section[1].split("\n\n", 1)[0].splitlines() if len(section) == 2 else []
    return m.group(1), answers


def _port(d: PtClient) -> int:
    return int(d.dns_port)  # type: ignore[attr-defined]


@pytest.mark.options("DNSPort")
def test_dig_gets_the_address_the_exit_resolved(dns_daemon: PtClient, testnet_info: Any) -> None:
    targets = testnet_info["targets"]
    t0 = time.monotonic()
    status, answers = dig(_port(dns_daemon), targets["hostname"], netns_name=dns_daemon.netns)
    print(f"dig A {targets['hostname']}: {answers} in {time.monotonic() - t0:.2f}s")
    assert status == "NOERROR"
    assert len(answers) == 1 and answers[0].split()[-1] == targets["ip"]
    assert answers[0].split()[3] == "A" and int(answers[0].split()[1]) >= 60  # TTL floor


def test_answers_and_rcodes_match_c_tor(
    dns_daemon: PtClient, ctor_dns: int, testnet_info: Any
) -> None:
    targets = testnet_info["targets"]
    nx = testnet_info["dns"]["nxdomain_example"]
    cases = {
        "A": [targets["hostname"]],
        "AAAA": [targets["hostname"], "AAAA"],
        "PTR": ["-x", targets["ip"]],
        "MX": [targets["hostname"], "MX"],
        "TXT": [targets["hostname"], "TXT"],
        "ANY": [targets["hostname"], "ANY", "+notcp"],
        "NXDOMAIN": [nx],
        "IP literal": ["198.18.0.99"],
    }
    for case, args in cases.items():
        ours = dig(_port(dns_daemon), *args, netns_name=dns_daemon.netns)
        ref = dig(ctor_dns, *args, netns_name=dns_daemon.netns)
        print(f"{case}: puretor {ours}, C tor {ref}")
        assert ours[0] == ref[0], case
        # The same records, TTL included (both clip it the same way).
        assert [a.split() for a in ours[1]] == [a.split() for a in ref[1]], case
    assert dig(_port(dns_daemon), targets["hostname"], "MX")[0] == "NOTIMP"


def test_dig_x_gets_the_ptr_through_resolve_ptr(dns_daemon: PtClient, testnet_info: Any) -> None:
    targets = testnet_info["targets"]
    status, answers = dig(_port(dns_daemon), "-x", targets["ip"], netns_name=dns_daemon.netns)
    assert status == "NOERROR" and len(answers) == 1
    assert answers[0].split()[3] == "PTR"
    assert answers[0].split()[-1].rstrip(".") in testnet_info["dns"]["names"]


@pytest.mark.options("AutomapHostsOnResolve", "VirtualAddrNetworkIPv4")
def test_onion_name_gets_a_virtual_address_that_reaches_the_service(
    dns_daemon: PtClient, testnet_info: Any
) -> None:
    onion = testnet_info["onion"]["plain"]
    status, answers = dig(_port(dns_daemon), onion["address"], netns_name=dns_daemon.netns)
    assert status == "NOERROR" and len(answers) == 1, answers
    virtual = answers[0].split()[-1]
    assert ipaddress.ip_address(virtual) in ipaddress.ip_network("10.192.0.0/10")
    # The same name keeps its address.
    assert dig(_port(dns_daemon), onion["address"])[1][0].split()[-1] == virtual
    # curl sends only the address (--socks5, not -hostname): the daemon maps it back.
    argv = ["curl", "--silent", "--show-error", "--fail", "--max-time", "110"]
    argv += ["--socks5", dns_daemon.socks_address, f"http://{virtual}/"]
    proc = subprocess.run(netns.wrap(dns_daemon.netns, argv), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode() + dns_daemon.log_tail(20)
    assert proc.stdout.decode() == onion["index_text"]
    # Reverse lookups of the virtual address answer from the map.
    status, answers = dig(_port(dns_daemon), "-x", virtual)
    assert status == "NOERROR" and answers[0].split()[-1].rstrip(".") == onion["address"]


def test_onion_name_without_automap_is_never_sent_to_an_exit(
    tor_daemon_factory: Any, testnet_info: Any
) -> None:
    daemon = tor_daemon_factory(extra_options={"DNSPort": "auto"})
    port = int(_DNS_LISTENER.search(daemon.log_text()).group(1))  # type: ignore[union-attr]
    onion = testnet_info["onion"]["plain"]["address"]
    assert dig(port, onion, netns_name=daemon.netns)[0] == "NXDOMAIN"


tor_daemon_factory = ptclient.tor_daemon_factory


def _raw(port: int, packet: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, ("127.0.0.1", port))
        try:
            return s.recv(4096)
        except TimeoutError:
            return None


HOSTILE = {
    "short": b"\x12",
    "response": struct.pack("!HHHHHH", 7, 0x8180, 0, 0, 0, 0),
    "pointer-loop": struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1",
    "label-past-end": struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x3fabc",
    "many-questions": struct.pack("!HHHHHH", 7, 0x0100, 0xFFFF, 0, 0, 0),
    "huge": struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x01a" * 3000,
    "opcode-update": struct.pack("!HHHHHH", 7, 0x2800, 0, 0, 0, 0),
}


def test_hostile_datagrams_get_formerr_or_nothing_and_the_port_keeps_serving(
    dns_daemon: PtClient, testnet_info: Any
) -> None:
    port = _port(dns_daemon)
    replies = {name: _raw(port, packet) for name, packet in HOSTILE.items()}
    print({k: (v.hex() if v else None) for k, v in replies.items()})
    assert replies["short"] is None and replies["response"] is None and replies["huge"] is None
    for name in ("pointer-loop", "label-past-end", "many-questions"):
        reply = replies[name]
        assert reply is not None and reply[:2] == b"\x00\x07" and reply[3] & 0xF == 1, name
    assert replies["opcode-update"] is not None and replies["opcode-update"][3] & 0xF == 4
    # A burst of garbage does not stop real answers.
    for i in range(2000):
        _raw(port, bytes([i % 256]) * (i % 40), timeout=0.001)
    assert dns_daemon.is_running()
    status, answers = dig(port, testnet_info["targets"]["hostname"], netns_name=dns_daemon.netns)
    assert status == "NOERROR" and answers[0].split()[-1] == testnet_info["targets"]["ip"]


def test_socks_resolve_automaps_too_preferring_ipv6(
    dns_daemon: PtClient, testnet_info: Any
) -> None:
    """AutomapHostsOnResolve also answers SOCKS RESOLVE (0xF0); PreferIPv6Automap, on by
    default, makes a SOCKS5 answer IPv6 (from VirtualAddrNetworkIPv6); a connection to it
    reaches the onion service."""
    import asyncio

    onion = testnet_info["onion"]["plain"]

    async def main() -> tuple[bytes, bytes]:
        reply, _r, w = await ptclient.socks5_request(
            dns_daemon.socks_port, onion["address"], 0, command=0xF0
        )
        w.close()
        assert reply[1] == 0 and reply[3] == 4, reply.hex()
        virtual = str(ipaddress.IPv6Address(reply[4:20]))
        assert ipaddress.ip_address(virtual) in ipaddress.ip_network("fe80::/10")
        reply, reader, writer = await ptclient.socks5_request(dns_daemon.socks_port, virtual, 80)
        try:
            writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            body = await asyncio.wait_for(reader.read(), 120)
        finally:
            writer.close()
        return reply, body

    reply, body = asyncio.run(main())
    assert reply[1] == 0, reply.hex()
    assert body.partition(b"\r\n\r\n")[2].decode() == onion["index_text"]
