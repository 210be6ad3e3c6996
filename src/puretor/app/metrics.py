"""MetricsPort: ``GET /metrics`` in the Prometheus text format (C tor's MetricsPort).

Off unless configured.  As C tor: MetricsPortPolicy decides who may ask, first match
wins and anything unmatched - everyone, without a policy - is refused (the connection
closes without a reply).  The port shares the SOCKS port's limits: a connection cap, a
request head of at most 8 KiB, and a handshake timeout.

The numbers come from `TorClient.stats` and the listeners' own counters; reading
them costs nothing on the data path (the listeners add a chunk's length per read).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from puretor.app.socks import NOTICE
from puretor.config.values import PolicyRule, policy_permits_default_reject

if TYPE_CHECKING:
    from puretor.client import TorClient

log = logging.getLogger("puretor.metrics")

MAX_HEAD = 8192
MAX_CONNECTIONS = 64  # a scraper or two; more is not a monitoring system
HANDSHAKE_TIMEOUT = 10.0


class Exposition:
    """Prometheus text format 0.0.4: HELP and TYPE once per family, then samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            self.lines.append(
                f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}"
            )

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, [({}, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(tor: TorClient, ports: list[tuple[str, Any]]) -> str:
    """The exposition for ``tor`` and the listeners ``ports`` ((port type, listener))."""
    s = tor.stats()
    out = Exposition()
    out.one(
        "puretor_bootstrap_percent", "gauge", "Bootstrap progress (0-100).", s["bootstrap_percent"]
    )
    out.one(
        "puretor_channels_opened_total",
        "counter",
        "Channels (TLS connections to relays) opened.",
        s["channels_opened"],
    )
    out.one("puretor_circuits_built_total", "counter", "Circuits built.", s["circuits_built"])
    failures = s["circuit_build_failures_by_reason"]
    out.family(
        "puretor_circuit_build_failures_total",
        "counter",
        "Circuit builds that failed, by reason (timeout, channel, circuit).",
        [({"reason": r}, failures.get(r, 0)) for r in ("timeout", "channel", "circuit")],
    )
    out.one(
        "puretor_circuits_open",
        "gauge",
        "Open exit circuits (a conflux set counts once).",
        s["open_circuits"],
    )
    timeout = s["circuit_build_timeout"]
    if timeout is not None:
        out.one(
            "puretor_circuit_build_timeout_seconds",
            "gauge",
            "The circuit build timeout in use (learned unless LearnCircuitBuildTimeout 0).",
            timeout,
        )
    out.one(
        "puretor_conflux_sets_linked_total",
        "counter",
        "Conflux sets linked.",
        s["conflux_sets_linked"],
    )
    out.one("puretor_conflux_sets_open", "gauge", "Open conflux sets.", s["conflux_sets_open"])
    windows = s["congestion_windows"]
    out.one(
        "puretor_congestion_control_circuits",
        "gauge",
        "Open circuits with congestion control.",
        len(windows),
    )
    out.one(
        "puretor_congestion_windows_cells",
        "gauge",
        "Their congestion windows added up, in cells.",
        sum(windows),
    )
    out.one(
        "puretor_congestion_window_largest_cells",
        "gauge",
        "The largest congestion window, in cells.",
        max(windows, default=0),
    )
    out.family(
        "puretor_guards",
        "gauge",
        "Entry guards by state (sampled, confirmed, primary, unreachable).",
        [({"state": k}, v) for k, v in s["guards"].items()],
    )
    valid_after = s["consensus_valid_after"]
    if valid_after is not None:
        out.one(
            "puretor_consensus_age_seconds",
            "gauge",
            "Seconds since the consensus in use became valid.",
            max(0.0, s["time"] - valid_after),
        )
    out.one(
        "puretor_streams_opened_total",
        "counter",
        "Streams opened by the library, every port and API.",
        s["streams_opened"],
    )
    _port_families(out, ports)
    _process_families(out)
    return out.text()


def _port_families(out: Exposition, ports: list[tuple[str, Any]]) -> None:
    # Stream-carrying ports (SOCKS, HTTP CONNECT); DNSPort has its own families.
    streams = [(k, lst) for k, lst in ports if hasattr(lst.stats, "streams_opened")]
    kinds = sorted({kind for kind, _ in streams})

    def per_kind(get: Callable[[Any], float]) -> list[tuple[dict[str, str], float]]:
        return [
            ({"port_type": k}, sum(get(lst.stats) for kind, lst in streams if kind == k))
            for k in kinds
        ]

    if streams:
        out.family(
            "puretor_port_connections_total",
            "counter",
            "Client connections accepted, by port type.",
            per_kind(lambda st: getattr(st, "total", 0)),
        )
        out.family(
            "puretor_port_connections_active",
            "gauge",
            "Client connections open, by port type.",
            per_kind(lambda st: getattr(st, "active", 0)),
        )
        out.family(
            "puretor_port_streams_opened_total",
            "counter",
            "Streams opened for clients, by port type.",
            per_kind(lambda st: getattr(st, "streams_opened", 0)),
        )
        failed: list[tuple[dict[str, str], float]] = []
        for kind in kinds:
            merged: dict[str, int] = {}
            for k, lst in streams:
                if k == kind:
                    for reason, n in lst.stats.stream_failures.items():
                        merged[reason] = merged.get(reason, 0) + n
            failed += [({"port_type": kind, "reason": r}, n) for r, n in sorted(merged.items())]
        out.family(
            "puretor_port_stream_failures_total",
            "counter",
            "Streams that failed for clients, by port type and END reason.",
            failed,
        )
        bytes_samples: list[tuple[dict[str, str], float]] = []
        for direction in ("from_client", "to_client"):
            attr = f"bytes_{direction}"
            for labels, value in per_kind(functools.partial(_counter, attr)):
                bytes_samples.append(({**labels, "direction": direction}, value))
        out.family(
            "puretor_port_bytes_total",
            "counter",
            "Application bytes through the ports, by port type and direction.",
            bytes_samples,
        )
    dns = [lst for k, lst in ports if k == "dns"]
    if dns:
        out.one(
            "puretor_dns_queries_total",
            "counter",
            "DNS queries received on DNSPort.",
            sum(d.stats.queries for d in dns),
        )
        codes: dict[int, int] = {}
        for d in dns:
            for code, n in d.stats.rcodes.items():
                codes[code] = codes.get(code, 0) + n
        names = {
            0: "NOERROR",
            1: "FORMERR",
            2: "SERVFAIL",
            3: "NXDOMAIN",
            4: "NOTIMP",
            5: "REFUSED",
        }
        out.family(
            "puretor_dns_responses_total",
            "counter",
            "DNS responses sent, by rcode.",
            [({"rcode": names.get(c, str(c))}, n) for c, n in sorted(codes.items())],
        )


def _counter(attr: str, stats: Any) -> float:
    return float(getattr(stats, attr, 0))


def _process_families(out: Exposition) -> None:
    with contextlib.suppress(OSError):
        out.one(
            "puretor_process_open_fds",
            "gauge",
            "Open file descriptors.",
            len(os.listdir("/proc/self/fd")) - 1,
        )
    with (
        contextlib.suppress(OSError, ValueError, StopIteration),
        open("/proc/self/status", encoding="ascii") as fh,
    ):
        rss_kib = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        out.one(
            "puretor_process_resident_memory_bytes", "gauge", "Resident memory.", rss_kib * 1024
        )


class MetricsConnection(asyncio.Protocol):
    def __init__(self, server: MetricsListener) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        stats = self.server.stats
        stats.active += 1
        stats.total += 1
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if stats.active > MAX_CONNECTIONS or not policy_permits_default_reject(
            self.server.policy, address
        ):
            stats.refused += 1
            log.info("Refusing a MetricsPort connection (MetricsPortPolicy or too many).")
            transport.abort()
            return
        self.timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.stats.active -= 1
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._reply("400 Bad Request", b"request too long\n")
            return
        request_line = bytes(self.buf[: self.buf.find(b"\r\n")]).split(b" ")
        if len(request_line) != 3 or not request_line[2].startswith(b"HTTP/1."):
            self._reply("400 Bad Request", b"bad request\n")
        elif request_line[0] != b"GET":
            self._reply("405 Method Not Allowed", b"only GET\n")
        elif request_line[1] != b"/metrics":
            self._reply("404 Not Found", b"try /metrics\n")
        else:
            body = self.server.render().encode()
            self._reply("200 OK", body, "text/plain; version=0.0.4; charset=utf-8")

    def _reply(self, status: str, body: bytes, ctype: str = "text/plain") -> None:
        assert self.transport is not None
        head = f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        self.transport.write(head.encode() + body)
        self.transport.close()


class _Stats:
    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.refused = 0


class MetricsListener:
    def __init__(self, render: Callable[[], str], policy: tuple[PolicyRule, ...]) -> None:
        self.render = render
        self.policy = policy
        self.stats = _Stats()
        self.server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]  # type: ignore[attr-defined]
        return host, port

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def start_metrics_listener(
    tor: TorClient,
    host: str,
    port: int,
    policy: tuple[PolicyRule, ...],
    ports: Callable[[], list[tuple[str, Any]]],
) -> MetricsListener:
    """Serve ``/metrics`` on ``host:port``; ``ports()`` lists the listeners to report."""
    listener = MetricsListener(lambda: render(tor, ports()), policy)
    loop = asyncio.get_running_loop()
    listener.server = await loop.create_server(
        lambda: MetricsConnection(listener), host, port, reuse_address=True
    )
    if not policy:
        log.log(NOTICE, "MetricsPort without MetricsPortPolicy: every request is refused.")
    return listener
