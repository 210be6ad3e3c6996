"""Describe a ready network: build the `NetworkInfo` (network.json) from what `prepare` made."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence

from puretor.testnet import censor, layout, torrc
from puretor.testnet.consensus import ConsensusSummary
from puretor.testnet.info import (
    SCHEMA_VERSION,
    AuthorityInfo,
    BridgeInfo,
    ExitInfo,
    FileInfo,
    NetworkInfo,
    NodeInfo,
    ProfileInfo,
)
from puretor.testnet.layout import NetworkPlan
from puretor.testnet.prepare import NodeFiles, Prepared


def build_info(
    prep: Prepared,
    plan: NetworkPlan,
    *,
    netns: str | None,
    holder_pid: int | None = None,
    tor: str,
    summary: ConsensusSummary,
    elapsed: float,
    censored: list[str] | None = None,
) -> NetworkInfo:
    """network.json for a network that just became ready."""
    ready = json.loads(prep.targets_ready.read_text())
    ip, host, tls_host = layout.TARGET_IP, layout.HOSTNAME, layout.TLS_HOSTNAME
    x1 = layout.EXIT1_ONLY_HTTP_PORT
    base_urls = {
        "http_ip": f"http://{ip}",
        "http_host": f"http://{host}",
        "https_ip": f"https://{ip}",
        "https_host": f"https://{tls_host}",
        "exit1_only_ip": f"http://{ip}:{x1}",
        "exit1_only_host": f"http://{host}:{x1}",
    }
    files: dict[str, FileInfo] = {
        name: {
            "path": f"/files/{name}",
            "size": meta["size"],
            "sha256": meta["sha256"],
            "urls": {k: f"{v}/files/{name}" for k, v in base_urls.items()},
        }
        for name, meta in ready["files"].items()
    }
    families = {
        nf.spec.nickname: [
            o.spec.nickname
            for o in prep.nodes.values()
            if nf.spec.family and o.spec.family == nf.spec.family and o is not nf
        ]
        for nf in prep.nodes.values()
    }
    relays = [
        node_info(nf, families[nf.spec.nickname]) for nf in prep.nodes.values() if nf.spec.is_listed
    ]
    auth_lines = [torrc.dir_authority_line(a) for a in prep.authorities]
    authorities: list[AuthorityInfo] = [
        {
            **node_info(prep.nodes[a.nickname], families[a.nickname]),
            "v3ident": a.v3ident,
            "dir_authority_line": line,
        }
        for a, line in zip(prep.authorities, auth_lines, strict=True)
    ]
    exits: list[ExitInfo] = [
        {
            "nickname": nf.spec.nickname,
            "address": nf.spec.address,
            "fingerprint": nf.fingerprint or "",
            "policy": list(nf.spec.exit_policy),
            "open_ports": open_ports(nf.spec.exit_policy),
        }
        for nf in prep.nodes.values()
        if nf.spec.role == "exit"
    ]
    onion_nodes = {
        nf.spec.nickname: nf for nf in prep.nodes.values() if nf.spec.role == "onion-service"
    }
    plain = next(nf for nf in onion_nodes.values() if not nf.spec.client_auth)
    authed = next(nf for nf in onion_nodes.values() if nf.spec.client_auth)
    plain_addr = (plain.hs_dir / "hostname").read_text().strip()
    auth_addr = (authed.hs_dir / "hostname").read_text().strip()
    auth_dir = prep.workdir / "client-onion-auth"
    exit1 = plan.node("exit1")
    return {
        "schema_version": SCHEMA_VERSION,
        "workdir": str(prep.workdir),
        "netns": {
            "name": netns,
            "mode": "named" if netns else "rootless" if holder_pid else "current",
            "holder_pid": holder_pid,
        },
        "tor_binary": tor,
        "tor_version": tor_version(tor),
        "ready_seconds": round(elapsed, 1),
        "network_profile": profile_info(plan, prep),
        "voting_interval": layout.VOTING_INTERVAL,
        "hs_time_period_minutes": 24 * layout.VOTING_INTERVAL // 60,
        "consensus_params": dict(layout.CONSENSUS_PARAMS),
        "consensus": {
            "valid_after": summary.valid_after,
            "relays": len(summary.routers),
            "params": summary.params,
            "bandwidth_weights": summary.bandwidth_weights,
        },
        "dir_authority_lines": auth_lines,
        "authorities": authorities,
        "relays": relays,
        "exits": exits,
        "onion_hosts": [node_info(nf) for nf in onion_nodes.values()],
        "bridges": [bridge_info(nf) for nf in prep.nodes.values() if nf.spec.is_bridge],
        "censor": (
            {"gid": layout.CENSORED_GID, "blocked": list(censored), "nft_table": censor.TABLE}
            if censored is not None
            else None
        ),
        "targets": {
            "ip": ip,
            "hostname": host,
            "tls_hostname": tls_host,
            "http_port": layout.HTTP_PORT,
            "https_port": layout.HTTPS_PORT,
            "echo_port": layout.ECHO_PORT,
            "closed_port": layout.CLOSED_PORT,
            "exit1_only": {
                "ports": [x1, layout.ECHO_PORT],
                "exit": exit1.nickname,
                "exit_address": exit1.address,
            },
            "base_urls": base_urls,
            "files": files,
            "bytes_path": "/bytes/",
            "ip_urls": {k: f"{v}/ip" for k, v in base_urls.items()},
            "upload_urls": {k: f"{v}/upload" for k, v in base_urls.items()},
            "echo": {"ip": ip, "hostname": "echo.target.test", "port": layout.ECHO_PORT},
            "ca_cert": str(prep.ca_cert),
            "source_log": str(prep.source_log),
            "exit_addresses": [e["address"] for e in exits],
        },
        "onion": {
            "plain": {
                "address": plain_addr,
                "url": f"http://{plain_addr}/",
                "host": plain.spec.nickname,
                "host_address": plain.spec.address,
                "backend": plain.spec.onion_backend or "",
                "index_text": "puretor testnet onion-plain\n",
            },
            "client_auth": {
                "address": auth_addr,
                "url": f"http://{auth_addr}/",
                "host": authed.spec.nickname,
                "host_address": authed.spec.address,
                "backend": authed.spec.onion_backend or "",
                "index_text": "puretor testnet onion-client-auth\n",
                "auth_private_line": prep.client_auth.client_line(auth_addr),
                "private_key_b32": prep.client_auth.private_b32,
                "public_key_b32": prep.client_auth.public_b32,
                "client_onion_auth_dir": str(auth_dir),
            },
        },
        "dns": {
            "server": layout.DNS_IP,
            "port": layout.DNS_PORT,
            "names": dict(layout.DNS_NAMES),
            "nxdomain_example": layout.NXDOMAIN_EXAMPLE,
            "internal_hostname": layout.INTERNAL_HOSTNAME,
        },
        "client_torrc": str(prep.workdir / "client.torrc"),
        "socks_port": layout.DEFAULT_SOCKS_PORT,
        "state_file": str(prep.workdir / "state.json"),
    }


def bridge_info(nf: NodeFiles) -> BridgeInfo:
    """A bridge and the ``Bridge`` line a client needs for it."""
    spec = nf.spec
    fp = nf.fingerprint or ""
    if spec.transport is None:
        address, port, args = spec.address, spec.orport or 0, {}
        line = f"{address}:{port} {fp}"
    else:
        text = (nf.dir / "pt_state" / f"{spec.transport}_bridgeline.txt").read_text()
        address, port = spec.address, layout.OBFS4_PORT
        args = pt_args_from_bridgeline(text, spec.transport)
        line = " ".join(
            [spec.transport, f"{address}:{port}", fp, *(f"{k}={v}" for k, v in args.items())]
        )
    return {
        "nickname": spec.nickname,
        "address": spec.address,
        "orport": spec.orport or 0,
        "fingerprint": fp,
        "ed25519": nf.ed25519 or "",
        "transport": spec.transport,
        "transport_address": address,
        "transport_port": port,
        "transport_args": args,
        "bridge_line": line,
        "data_dir": str(nf.dir),
        "torrc": str(nf.torrc),
        "log": str(nf.log),
    }


def pt_args_from_bridgeline(text: str, transport: str) -> dict[str, str]:
    """The k=v arguments of the one ``Bridge <transport> ...`` line in obfs4proxy's
    <transport>_bridgeline.txt (its other lines are comments)."""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 4 and words[0] == "Bridge" and words[1] == transport:
            return dict(w.split("=", 1) for w in words[4:] if "=" in w)
    raise ValueError(f"no 'Bridge {transport}' line in the bridge line file")


def profile_info(plan: NetworkPlan, prep: Prepared) -> ProfileInfo:
    emulated = prep.links_config is not None
    return {
        "name": plan.profile,
        "seed": plan.seed,
        "target_delay_ms": plan.target_delay_ms,
        "links_config": str(prep.links_config) if emulated else None,
        "links_stats": str(prep.workdir / "links.stats.json") if emulated else None,
        "links_log": str(prep.workdir / "links.log") if emulated else None,
    }


def node_info(nf: NodeFiles, family: Sequence[str] = ()) -> NodeInfo:
    return {
        "nickname": nf.spec.nickname,
        "role": nf.spec.role,
        "address": nf.spec.address,
        "orport": nf.spec.orport,
        "ipv6_address": nf.spec.ipv6_address,
        "ipv6_orport": nf.spec.ipv6_orport,
        "dirport": nf.spec.dirport,
        "fingerprint": nf.fingerprint,
        "ed25519": nf.ed25519,
        "bandwidth_kb": nf.spec.bandwidth_kb,
        "listen_orport": nf.spec.listen_orport,
        "one_way_delay_ms": nf.spec.delay_ms,
        "bandwidth_rate_kb": nf.spec.rate_kb,
        "family": list(family),
        "fault": nf.spec.fault,
        "stall_after": nf.spec.stall_after,
        "expected_flags": sorted(layout.expected_flags(nf.spec)) if nf.spec.is_relay else [],
        "exit_policy": list(nf.spec.exit_policy) if nf.spec.is_relay else [],
        "data_dir": str(nf.dir),
        "torrc": str(nf.torrc),
        "log": str(nf.log),
    }


def open_ports(policy: Sequence[str]) -> str:
    if policy and policy[0] == "accept *:*":
        return "all"
    return ",".join(r.split(":", 1)[1] for r in policy if r.startswith("accept "))


def tor_version(tor: str) -> str:
    try:
        out = subprocess.run([tor, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first.removeprefix("Tor version ").rstrip(".")
