"""The daemon's doors other than SocksPort: HTTPTunnelPort, TransPort, DNSPort, MetricsPort.

`open_other_doors` opens every configured one (a port in use raises OSError, before
bootstrapping, as for SocksPort) and returns them as `Door`s: what they are, where they
listen, and their counters (which MetricsPort reads).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from puretor.app.socks import HANDSHAKE_TIMEOUT, ListenerPolicy
from puretor.path.isolation import ListenerFlags

if TYPE_CHECKING:
    from puretor.client import TorClient

log = logging.getLogger("puretor")
NOTICE = 25

# Listener ids (isolation sessions) of the other doors: apart from SocksPort's 0, 1, ...
HTTP_TUNNEL_IDS = 10_000
DNS_IDS = 20_000
TRANS_IDS = 30_000


@dataclass
class Door:
    kind: str  # "http_tunnel", "trans", "dns", "metrics" (the MetricsPort's port_type label)
    listener: Any  # .close(), .address, .stats
    index: int = 0  # which line of its option

    def close(self) -> None:
        self.listener.close()


def port_policy(config: Any, port_cfg: Any, listener_id: int) -> ListenerPolicy:
    """A SocksPort-like policy for another application port: its isolation flags, and the
    SOCKS options that C tor applies to every application port (SocksPolicy, SocksTimeout)."""
    return ListenerPolicy(
        listener_id=listener_id,
        flags=ListenerFlags(
            isolate_socks_auth=port_cfg.isolate_socks_auth,
            isolate_client_addr=port_cfg.isolate_client_addr,
            isolate_dest_addr=port_cfg.isolate_dest_addr,
            isolate_dest_port=port_cfg.isolate_dest_port,
            isolate_client_protocol=port_cfg.isolate_client_protocol,
            session_group=port_cfg.session_group,
        ),
        safe_logging=bool(config.safe_logging),
        socks_policy=config.socks_policy,
        handshake_timeout=min(HANDSHAKE_TIMEOUT, config.socks_timeout),
        connect_timeout=config.socks_timeout,
    )


async def open_other_doors(tor: TorClient, config: Any, socks: list[Any]) -> list[Door]:
    """Open every configured door; on OSError closes those already open and re-raises
    with ``.door`` naming the one that failed."""
    from puretor.app.dnsport import start_dns_listener
    from puretor.app.httptunnel import start_http_tunnel_listener
    from puretor.app.metrics import start_metrics_listener
    from puretor.app.transport import start_trans_listener

    doors: list[Door] = []

    def reported() -> list[tuple[str, Any]]:
        """The listeners MetricsPort reports on: port type and listener."""
        return [("socks", lst) for lst in socks] + [
            (d.kind, d.listener) for d in doors if d.kind != "metrics"
        ]

    try:
        for index, cfg in enumerate(config.http_tunnel_ports):
            policy = port_policy(config, cfg, HTTP_TUNNEL_IDS + index)
            listener = await _bind(
                "HTTP tunnel", cfg, start_http_tunnel_listener(tor, cfg.address, _port(cfg), policy)
            )
            doors.append(Door("http_tunnel", listener, index))
        for index, cfg in enumerate(config.trans_ports):
            policy = port_policy(config, cfg, TRANS_IDS + index)
            listener = await _bind(
                "Transparent pf/netfilter",
                cfg,
                start_trans_listener(tor, cfg.address, _port(cfg), policy),
            )
            doors.append(Door("trans", listener, index))
        for index, cfg in enumerate(config.dns_ports):
            policy = port_policy(config, cfg, DNS_IDS + index)
            listener = await _bind(
                "DNS", cfg, start_dns_listener(tor, cfg.address, _port(cfg), policy)
            )
            doors.append(Door("dns", listener, index))
        for cfg in config.metrics_ports:
            listener = await _bind(
                "Metrics",
                cfg,
                start_metrics_listener(
                    tor, cfg.address, _port(cfg), config.metrics_port_policy, reported
                ),
            )
            doors.append(Door("metrics", listener))
    except OSError:
        for door in doors:
            door.close()
        raise
    return doors


_PORTS = {
    "http_tunnel": ("http_tunnel_ports", HTTP_TUNNEL_IDS),
    "trans": ("trans_ports", TRANS_IDS),
    "dns": ("dns_ports", DNS_IDS),
}


def reload_doors(config: Any, doors: list[Door]) -> None:
    """SIGHUP: new connections and queries follow the reloaded SocksPolicy, SocksTimeout
    and MetricsPortPolicy (as for SocksPort: the ports themselves need a restart)."""
    for door in doors:
        if door.kind == "metrics":
            door.listener.policy = config.metrics_port_policy
            continue
        attr, base = _PORTS[door.kind]
        lines = getattr(config, attr)
        if door.index < len(lines):
            policy = port_policy(config, lines[door.index], base + door.index)
            if door.kind == "dns":
                door.listener.protocol.policy = policy
            else:
                door.listener.policy = policy


def _port(cfg: Any) -> int:
    return 0 if cfg.port == "auto" else int(cfg.port)


async def _bind(what: str, cfg: Any, opening: Any) -> Any:
    try:
        listener = await opening
    except OSError as exc:
        exc.door = f"{what} {cfg.address}:{_port(cfg)}"  # type: ignore[attr-defined]
        raise
    host, bound = listener.address
    log.log(NOTICE, "Opened %s listener connection (ready) on %s:%d", what, host, bound)
    return listener
