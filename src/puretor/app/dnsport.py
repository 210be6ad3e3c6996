"""DNSPort: DNS over UDP, every answer from an exit (RELAY_RESOLVE / RESOLVE_PTR).

As C tor's dnsserv.c: the first IN question of type A, AAAA or PTR is answered (other
types: NOTIMP); one record per answer, its TTL at least 60 s; SocksPolicy applies
(REFUSED); the port's isolation flags choose the circuit.  With AutomapHostsOnResolve,
names with an AutomapHostsSuffixes suffix (``.onion`` by default) get a virtual address
(`TorClient.automap_address`) that later connections map back to the name.  A ``.onion``
name is never sent to an exit, and nothing is ever resolved locally.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from puretor.app.socks import ListenerPolicy
from puretor.config.values import policy_permits
from puretor.errors import StreamRefused, TorError
from puretor.path.addressmap import is_automapped_suffix
from puretor.path.isolation import isolation_key
from puretor.proto.dnsmsg import (
    CLASS_IN,
    DnsFormatError,
    DnsQuery,
    Question,
    Rcode,
    Rtype,
    build_response,
    format_error,
    parse_query,
)

if TYPE_CHECKING:
    from puretor.client import TorClient

log = logging.getLogger("puretor.dns")

MIN_TTL = 60  # dnsserv.c: "if (ttl < 60) ttl = 60"
MAX_DATAGRAM = 4096  # a query is a few dozen bytes; larger is no stub resolver
MAX_PENDING = 1024  # queries waiting for an exit at once; more get SERVFAIL at once


class DnsStats:
    def __init__(self) -> None:
        self.queries = 0
        self.dropped = 0
        self.pending = 0
        self.rcodes: Counter[int] = Counter()


class DnsPortProtocol(asyncio.DatagramProtocol):
    def __init__(self, tor: TorClient, policy: ListenerPolicy, stats: DnsStats) -> None:
        self.tor = tor
        self.policy = policy
        self.stats = stats
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for task in list(self.tasks):
            task.cancel()

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier answer: nothing to do

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.stats.queries += 1
        peer = str(addr[0])
        if len(data) > MAX_DATAGRAM:
            self.stats.dropped += 1
            return
        try:
            query = parse_query(data)
        except DnsFormatError as exc:
            log.info("DNS query from %s: %s", self._who(peer), exc)
            self._send_raw(format_error(data), addr, Rcode.FORMERR)
            return
        if not policy_permits(self.policy.socks_policy, peer):
            log.warning("Rejecting DNS request from disallowed IP.")
            self._send(build_response(query, rcode=Rcode.REFUSED), addr, Rcode.REFUSED)
            return
        if query.opcode != 0:
            self._send(build_response(query, rcode=Rcode.NOTIMP), addr, Rcode.NOTIMP)
            return
        if not query.questions:
            self._send(build_response(query), addr, Rcode.NOERROR)  # C tor's "nil reply"
            return
        question = next(
            (
                q
                for q in query.questions
                if q.qclass == CLASS_IN and q.qtype in (Rtype.A, Rtype.AAAA, Rtype.PTR)
            ),
            None,
        )
        if question is None:
            self._send(build_response(query, rcode=Rcode.NOTIMP), addr, Rcode.NOTIMP)
            return
        if self.stats.pending >= MAX_PENDING:
            self._send(build_response(query, rcode=Rcode.SERVFAIL), addr, Rcode.SERVFAIL)
            return
        self.stats.pending += 1
        task = asyncio.ensure_future(self._answer(query, question, addr, peer))
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.stats.pending -= 1

    async def _answer(self, query: DnsQuery, q: Question, addr: Any, peer: str) -> None:
        try:
            rcode, answers = await self._lookup(q, peer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one query take the port down
            log.warning("DNS query from %s failed unexpectedly: %r", self._who(peer), exc)
            rcode, answers = Rcode.SERVFAIL, []
        records = [(q.qtype, value, max(MIN_TTL, ttl)) for value, ttl in answers]
        try:
            reply = build_response(query, rcode=rcode, question=q, answers=records)
        except ValueError:  # an exit's PTR name we cannot encode
            reply = build_response(query, rcode=Rcode.SERVFAIL, question=q)
            rcode = Rcode.SERVFAIL
        self._send(reply, addr, rcode)

    async def _lookup(self, q: Question, peer: str) -> tuple[int, list[tuple[str, int]]]:
        name = q.name.rstrip(".")
        if q.qtype == Rtype.PTR:
            address = _reverse_name_to_address(name)
            if address is None:
                return Rcode.NXDOMAIN, []
            return await self._resolve(address, peer, reverse=True)
        version = 4 if q.qtype == Rtype.A else 6
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            literal = None
        if literal is not None:  # an address asks for no lookup (C tor answers at once)
            return (
                (Rcode.NOERROR, [(literal.compressed, MIN_TTL)])
                if literal.version == version
                else (Rcode.NOERROR, [])
            )
        config = self.tor.config
        if config.automap_hosts_on_resolve and is_automapped_suffix(
            name, config.automap_hosts_suffixes
        ):
            try:
                return Rcode.NOERROR, [(self.tor.automap_address(name, version), MIN_TTL)]
            except ValueError as exc:
                log.warning("Automapping %s failed: %s", self._who(name), exc)
                return Rcode.SERVFAIL, []
        if name.lower().endswith((".onion", ".exit")) or name.lower() in ("onion", "exit"):
            # C tor refuses to resolve these at an exit: the exit would learn the name.
            return Rcode.NXDOMAIN, []
        rcode, answers = await self._resolve(name, peer)
        wanted = [(a, ttl) for a, ttl in answers if ipaddress.ip_address(a).version == version]
        return rcode, wanted[:1]

    async def _resolve(
        self, name: str, peer: str, *, reverse: bool = False
    ) -> tuple[int, list[tuple[str, int]]]:
        try:
            answers = await asyncio.wait_for(
                self.tor.resolve_with_ttl(
                    name, reverse=reverse, isolation=self.isolation_key(name, peer)
                ),
                self.policy.connect_timeout,
            )
        except StreamRefused as exc:
            return (Rcode.SERVFAIL if exc.transient else Rcode.NXDOMAIN), []
        except (TimeoutError, TorError, ValueError) as exc:
            log.info("DNS lookup failed: %s", "[scrubbed]" if self.policy.safe_logging else exc)
            return Rcode.SERVFAIL, []
        return Rcode.NOERROR, answers[:1] if reverse else answers

    def isolation_key(self, name: str, peer: str) -> Hashable:
        return isolation_key(
            listener_id=self.policy.listener_id,
            listener_flags=self.policy.flags,
            client_addr=peer,
            socks_username=None,
            socks_password=None,
            dest_host=name,
            dest_port=0,
            protocol="dns",
        )

    def _send(self, reply: bytes, addr: Any, rcode: int) -> None:
        self._send_raw(reply, addr, rcode)

    def _send_raw(self, reply: bytes | None, addr: Any, rcode: int) -> None:
        if reply is None:
            self.stats.dropped += 1
            return
        self.stats.rcodes[rcode] += 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def _who(self, text: str) -> str:
        return "[scrubbed]" if self.policy.safe_logging else text


def _reverse_name_to_address(name: str) -> str | None:
    """``4.3.2.1.in-addr.arpa`` / the ip6.arpa nibble form -> the address, or None."""
    lower = name.lower()
    if lower.endswith(".in-addr.arpa"):
        parts = lower[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4:
            return None
        try:
            return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        except ValueError:
            return None
    if lower.endswith(".ip6.arpa"):
        nibbles = lower[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32 or not all(len(n) == 1 and n in "0123456789abcdef" for n in nibbles):
            return None
        hexa = "".join(reversed(nibbles))
        return str(ipaddress.IPv6Address(int(hexa, 16)))
    return None


class DnsListener:
    def __init__(self, transport: asyncio.DatagramTransport, protocol: DnsPortProtocol) -> None:
        self.transport = transport
        self.protocol = protocol

    @property
    def stats(self) -> DnsStats:
        return self.protocol.stats

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def close(self) -> None:
        self.transport.close()


async def start_dns_listener(
    tor: TorClient, host: str, port: int, policy: ListenerPolicy
) -> DnsListener:
    """Listen for DNS queries on UDP ``host:port``; a port in use raises OSError."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: DnsPortProtocol(tor, policy, DnsStats()), local_addr=(host, port)
    )
    assert isinstance(protocol, DnsPortProtocol)
    return DnsListener(transport, protocol)
