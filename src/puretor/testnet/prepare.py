"""Create everything on disk before any process starts: keys, torrcs, bandwidth file, resolv.conf,
TLS CA, onion client-auth keys and the targets daemon's config.

Layout of the work directory::

    torrc-defaults            empty: keeps /etc/tor out of our processes
    resolv.conf               exits' resolver: our DNS responder
    bandwidth-file            V3BandwidthsFile of every authority
    nodes/<nickname>/         DataDirectory, torrc, notice.log (+ rend.log for onion hosts)
    targets/                  CA, server cert, targets.json, ready.json, sources.log
    links.json                realistic profile: the link emulator's config (linkemu.py)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from puretor.testnet import bwfile, layout, pki, profiles, torrc
from puretor.testnet.layout import NetworkPlan, NodeSpec

OBFS4PROXY = "/usr/bin/obfs4proxy"


class PrepareError(RuntimeError):
    pass


@dataclass
class NodeFiles:
    spec: NodeSpec
    dir: Path
    torrc: Path
    log: Path
    fingerprint: str | None = None  # RSA identity (relays only)
    ed25519: str | None = None
    v3ident: str | None = None  # authorities only

    @property
    def rend_log(self) -> Path:
        return self.dir / "rend.log"

    @property
    def hs_dir(self) -> Path:
        return self.dir / "hs"


@dataclass
class Prepared:
    workdir: Path
    nodes: dict[str, NodeFiles]
    authorities: list[torrc.AuthorityId]
    client_auth: pki.ClientAuthKeys
    defaults_torrc: Path
    ca_cert: Path
    targets_config: Path
    targets_ready: Path
    source_log: Path
    links_config: Path | None = None  # the link emulator's, when the plan has one


def _run_all(cmds: list[tuple[list[str], Path]]) -> None:
    """Run commands in parallel (key generation is CPU-bound, we have a few cores)."""
    procs = [
        (
            subprocess.Popen(
                c,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            ),
            c,
        )
        for c, cwd in cmds
    ]
    for proc, cmd in procs:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise PrepareError(f"{' '.join(cmd)} failed:\n{out.decode(errors='replace')}")


def _read_fingerprint(path: Path) -> str:
    # "nickname FINGERPRINT" as written by tor (fingerprint, fingerprint-ed25519)
    return path.read_text().split()[1]


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)  # tor refuses group/world-readable data and onion dirs
    return path


def prepare(
    workdir: Path, plan: NetworkPlan, *, tor: str, gencert: str, obfs4proxy: str = OBFS4PROXY
) -> Prepared:
    workdir = workdir.resolve()
    _private_dir(workdir)
    # A reused work dir must not leak the last run's consensus, logs or keys into this one.
    for stale in ("nodes", "targets", "client-data", "client-onion-auth"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    for stale_file in ("network.json", "links.json", "links.ready", "links.stats.json"):
        (workdir / stale_file).unlink(missing_ok=True)
    defaults = workdir / "torrc-defaults"
    defaults.write_text("# intentionally empty: nothing from /etc/tor\n")
    nodes = {
        n.nickname: NodeFiles(
            n,
            _private_dir(workdir / "nodes" / n.nickname),
            workdir / "nodes" / n.nickname / "torrc",
            workdir / "nodes" / n.nickname / "notice.log",
        )
        for n in plan.nodes
    }

    # 1. Authority voting keys (tor-gencert) and every relay's identity (tor --list-fingerprint).
    auths = [nodes[n.nickname] for n in plan.by_role("authority")]
    # --passphrase-fd 0 with stdin at EOF gives an empty passphrase, no prompt.
    gencert_cmds = [
        (
            [
                gencert,
                "--create-identity-key",
                "-m",
                "12",
                "-a",
                f"{a.spec.address}:{a.spec.dirport}",
                "--passphrase-fd",
                "0",
            ],
            _private_dir(a.dir / "keys"),
        )
        for a in auths
    ]
    relays = [nf for nf in nodes.values() if nf.spec.is_relay]
    fingerprint_cmds = [
        (
            [
                tor,
                "--list-fingerprint",
                "--defaults-torrc",
                str(defaults),
                "-f",
                str(defaults),
                "--DataDirectory",
                str(nf.dir),
                "--Nickname",
                nf.spec.nickname,
                "--ORPort",
                f"{nf.spec.address}:{nf.spec.orport}",
                "--Address",
                nf.spec.address,
            ],
            nf.dir,
        )
        for nf in relays
    ]
    _run_all(gencert_cmds + fingerprint_cmds)  # independent of each other
    for nf in relays:
        nf.fingerprint = _read_fingerprint(nf.dir / "fingerprint")
        nf.ed25519 = _read_fingerprint(nf.dir / "fingerprint-ed25519")
    for a in auths:
        cert_text = (a.dir / "keys" / "authority_certificate").read_text()
        a.v3ident = next(
            line.split()[1] for line in cert_text.splitlines() if line.startswith("fingerprint ")
        )
    authorities = [
        torrc.AuthorityId(
            a.spec.nickname,
            a.spec.address,
            a.spec.orport or 0,
            a.spec.dirport or 0,
            a.v3ident or "",
            a.fingerprint or "",
            a.spec.ipv6_address,
        )
        for a in auths
    ]

    # 2. Shared files.
    bw_path = workdir / "bandwidth-file"
    bw_path.write_text(
        bwfile.render(
            [
                bwfile.Measurement(nf.fingerprint or "", nf.spec.nickname, nf.spec.bandwidth_kb)
                for nf in relays
                if nf.spec.is_listed  # bridges are measured by no one
            ],
            now=time.time(),
        )
    )
    resolv = workdir / "resolv.conf"
    resolv.write_text(torrc.resolv_conf())

    def fps(*roles: layout.Role) -> list[str]:
        return [nf.fingerprint or "" for nf in relays if nf.spec.role in roles]

    hsdirs = [nf.fingerprint or "" for nf in relays if nf.spec.hsdir]
    families = family_fingerprints(
        [(nf.spec.nickname, nf.spec.family, nf.fingerprint or "") for nf in relays]
    )

    # 3. torrcs and onion service directories.
    client_auth = pki.new_client_auth_keys()
    # The tor processes start right after this (the emulator first, if any).
    offset = torrc.voting_start_offset(time.time(), first_vote_lead(plan))
    for nf in nodes.values():
        spec = nf.spec
        family = families.get(spec.nickname, [])
        if spec.role == "authority":
            text = torrc.authority_torrc(
                spec,
                nf.dir,
                authorities,
                bandwidth_file=bw_path,
                guard_fps=fps("guard"),
                exit_fps=fps("exit"),
                hsdir_fps=hsdirs,
                voting_start_offset=offset,
                family=family,
            )
        elif spec.role == "onion-service":
            text = torrc.onion_host_torrc(spec, nf.dir, authorities)
            _private_dir(nf.hs_dir)
            if spec.client_auth:
                auth_dir = _private_dir(nf.hs_dir / "authorized_clients")
                (auth_dir / "client.auth").write_text(client_auth.service_line() + "\n")
        elif spec.role == "bridge":
            text = torrc.bridge_torrc(spec, nf.dir, authorities, obfs4proxy=obfs4proxy)
        else:
            text = torrc.relay_torrc(spec, nf.dir, authorities, resolv_conf=resolv, family=family)
        nf.torrc.write_text(text)

    # 4. Targets: TLS material and the daemon's config.
    tdir = _private_dir(workdir / "targets")
    ca, cert, key = pki.write_ca_and_server_cert(tdir, list(layout.DNS_NAMES), [layout.TARGET_IP])
    ready = tdir / "ready.json"
    ready.unlink(missing_ok=True)
    sources = tdir / "sources.log"
    # Behind the emulator, the targets listen on a private address (the emulator serves theirs).
    target_ip = layout.TARGET_PRIVATE_IP if plan.emulated else layout.TARGET_IP
    config = targets_config(cert=cert, key=key, ready=ready, source_log=sources, ip=target_ip)
    config_path = tdir / "targets.json"
    config_path.write_text(json.dumps(config, indent=2))

    # 5. The link emulator's listeners.
    links_path = None
    if plan.emulated:
        links_path = workdir / "links.json"
        links_path.write_text(json.dumps(profiles.link_plan(plan).config(workdir), indent=2))
    return Prepared(
        workdir,
        nodes,
        authorities,
        client_auth,
        defaults,
        ca,
        config_path,
        ready,
        sources,
        links_path,
    )


def first_vote_lead(plan: NetworkPlan) -> float:
    """Seconds from start to the first vote: every relay must have published by then. Tor
    processes start about 0.3 s of CPU apart on a loaded 2-core machine, so a bigger network
    needs longer (the loopback plan's 9 relays: `layout.FIRST_VOTE_LEAD`)."""
    relays = sum(n.is_listed for n in plan.nodes)
    return layout.FIRST_VOTE_LEAD + max(0, relays - 9) * 0.35


def family_fingerprints(relays: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    """nickname -> the fingerprints of the other members of its family, from (nickname,
    family label, fingerprint) of every relay (an empty label: no family)."""
    out: dict[str, list[str]] = {}
    for nickname, label, _ in relays:
        if label:
            out[nickname] = [fp for n, lab, fp in relays if lab == label and n != nickname]
    return out


def targets_config(
    *, cert: Path, key: Path, ready: Path, source_log: Path, ip: str = layout.TARGET_IP
) -> dict[str, Any]:
    return {
        "files": layout.FILE_SIZES,
        "source_log": str(source_log),
        "ready_file": str(ready),
        "tls": {"cert": str(cert), "key": str(key)},
        "http": [
            {"name": "http", "host": ip, "port": layout.HTTP_PORT, "site": "target"},
            {"name": "https", "host": ip, "port": layout.HTTPS_PORT, "site": "target", "tls": True},
            {
                "name": "http-exit1-only",
                "host": ip,
                "port": layout.EXIT1_ONLY_HTTP_PORT,
                "site": "target",
            },
            {
                "name": "onion-plain",
                "host": layout.ONION_PLAIN_BACKEND_IP,
                "port": layout.HTTP_PORT,
                "site": "onion-plain",
            },
            {
                "name": "onion-client-auth",
                "host": layout.ONION_AUTH_BACKEND_IP,
                "port": layout.HTTP_PORT,
                "site": "onion-client-auth",
            },
        ],
        "echo": [{"host": ip, "port": layout.ECHO_PORT}],
        "dns": {"host": layout.DNS_IP, "port": layout.DNS_PORT, "names": layout.DNS_NAMES},
    }
