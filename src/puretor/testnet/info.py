"""The schema of ``network.json`` (what `TestNetwork.info` holds), as TypedDicts.

The JSON is the contract between the launcher and everything that uses the network (tests, the
benchmark, users of the CLI); these types document it and let mypy check readers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

SCHEMA_VERSION = 1


class NetnsInfo(TypedDict):
    name: str | None  # named namespace (`ip netns exec NAME ...`), or None
    mode: str  # "named" | "rootless" | "current" (the launcher's own)
    # rootless: the process keeping the namespace alive; run programs inside with
    # `nsenter --target PID --user --net --preserve-credentials -- CMD` (netns.wrap does).
    holder_pid: int | None


class NodeInfo(TypedDict):
    nickname: str
    role: str  # authority | guard | middle | exit | onion-service
    address: str  # its own 127.N.0.1 (also its outbound source address)
    orport: int | None
    # A dual-stack relay's second ORPort, on fd00:0:0:N::1 (None: IPv4 only, or no IPv6 in
    # the namespace); listed in the consensus `a` line.
    ipv6_address: str | None
    ipv6_orport: int | None
    dirport: int | None
    fingerprint: str | None  # RSA identity, 40 upper-case hex (None for onion hosts)
    ed25519: str | None  # base64 ed25519 identity
    bandwidth_kb: int  # measured value given to the authorities
    # The network profile's link (see profiles.py); the loopback profile: 0, 0, None ...
    listen_orport: int | None  # where tor itself listens (the emulator serves `orport`)
    one_way_delay_ms: float  # added to each direction of every connection to it
    bandwidth_rate_kb: int  # BandwidthRate = BandwidthBurst, KB/s (1000 bytes); 0: no cap
    family: list[str]  # nicknames of the other relays of its family (MyFamily)
    fault: str | None  # "stall" or "slow": a bad relay
    stall_after: float | None  # "stall": seconds into each connection it goes silent
    expected_flags: list[str]
    exit_policy: list[str]
    data_dir: str
    torrc: str
    log: str  # notice log


class AuthorityInfo(NodeInfo):
    v3ident: str
    dir_authority_line: str  # ready for a torrc


class BridgeInfo(TypedDict):
    nickname: str
    address: str
    orport: int
    fingerprint: str  # RSA identity, 40 upper-case hex
    ed25519: str
    transport: str | None  # "obfs4", or None for a plain bridge
    transport_address: str  # where a client connects: the ORPort, or the transport's port
    transport_port: int
    transport_args: dict[str, str]  # obfs4: cert, iat-mode (from pt_state/obfs4_bridgeline.txt)
    bridge_line: str  # the value of a torrc ``Bridge`` line
    data_dir: str
    torrc: str
    log: str


class CensorInfo(TypedDict):
    gid: int  # processes run with this group id are censored
    blocked: list[str]  # every authority and listed relay address (IPv4 and IPv6)
    nft_table: str  # inet table holding the rules (counters: dropped packets)


class ExitInfo(TypedDict):
    nickname: str
    address: str
    fingerprint: str
    policy: list[str]  # as in the torrc
    open_ports: str  # "all" or e.g. "80,443,8443"


class FileInfo(TypedDict):
    path: str  # e.g. /files/10MiB
    size: int
    sha256: str
    urls: dict[str, str]  # same keys as TargetsInfo.base_urls


class EchoInfo(TypedDict):
    ip: str
    hostname: str
    port: int


class Exit1OnlyInfo(TypedDict):
    ports: list[int]  # reachable through exit1 only (exit2's policy rejects them)
    exit: str  # "exit1"
    exit_address: str


class TargetsInfo(TypedDict):
    ip: str  # 198.18.0.10
    hostname: str  # target.test
    tls_hostname: str  # tls.target.test (the cert also covers every DNS name and the IP)
    http_port: int
    https_port: int
    echo_port: int
    closed_port: int  # allowed by both exits, nothing listens: "connection refused"
    exit1_only: Exit1OnlyInfo
    # http_ip, http_host, https_ip, https_host, exit1_only_ip, exit1_only_host
    base_urls: dict[str, str]
    files: dict[str, FileInfo]  # "1MiB", "10MiB", "100MiB"
    bytes_path: str  # GET /bytes/<n>: first n bytes of the 100MiB file
    ip_urls: dict[str, str]  # GET: the source address the target sees, one line
    upload_urls: dict[str, str]  # POST: answers the body's sha256 hex, one line
    echo: EchoInfo
    ca_cert: str  # PEM of the private CA that signed the HTTPS cert
    source_log: str  # "<time> <listener> <ip> <port>" per TCP connection, ever
    exit_addresses: list[str]  # sources a target may legitimately see from exits


class OnionInfo(TypedDict):
    address: str  # 56 chars + ".onion"
    url: str
    host: str  # nickname of the tor process hosting it
    host_address: str  # that process's outbound address, as the backend sees it
    backend: str  # IP:PORT behind "HiddenServicePort 80"
    index_text: str  # body of GET / through the service


class OnionAuthInfo(OnionInfo):
    auth_private_line: str  # "<addr-without-.onion>:descriptor:x25519:<base32 private key>"
    private_key_b32: str
    public_key_b32: str
    client_onion_auth_dir: str  # ready ClientOnionAuthDir holding that line


class OnionServices(TypedDict):
    plain: OnionInfo
    client_auth: OnionAuthInfo


class DnsInfo(TypedDict):
    server: str
    port: int
    names: dict[str, str]
    nxdomain_example: str
    internal_hostname: str  # in `names`, answered with an internal address (127.0.0.1)


class ConsensusInfo(TypedDict):
    valid_after: str
    relays: int
    params: dict[str, int]
    bandwidth_weights: dict[str, int]


class ProfileInfo(TypedDict):
    name: str  # "loopback" or "realistic"
    seed: int | None  # the realistic profile's delays are a function of it
    target_delay_ms: float  # one-way, between the exits and the targets (TargetsInfo.ip)
    # The link emulator (realistic profile; else None): its config (links.json), the counters
    # it rewrites every few seconds (cpu_seconds; per link connections, bytes, ...), its log.
    links_config: str | None
    links_stats: str | None
    links_log: str | None


class NetworkInfo(TypedDict):
    schema_version: int
    workdir: str
    netns: NetnsInfo
    tor_binary: str
    tor_version: str
    ready_seconds: float  # from start() to ready
    network_profile: ProfileInfo
    voting_interval: int  # seconds (consensus valid for 3 intervals)
    # C tor under TestingTorNetwork: the onion time period is one shared-random protocol run,
    # 24 voting intervals, in whole minutes (8 with 20 s voting) instead of a day.
    hs_time_period_minutes: int
    consensus_params: dict[str, int]  # what the authorities vote
    consensus: ConsensusInfo  # the consensus that made us say "ready"
    dir_authority_lines: list[str]
    authorities: list[AuthorityInfo]
    relays: list[NodeInfo]  # every listed relay, authorities included (not the bridges)
    exits: list[ExitInfo]
    onion_hosts: list[NodeInfo]
    bridges: list[BridgeInfo]  # unlisted: reachable only through their Bridge lines
    censor: CensorInfo | None  # None: nft missing, no censor
    targets: TargetsInfo
    onion: OnionServices
    dns: DnsInfo
    client_torrc: str  # a ready C tor client config (SocksPort below, DataDirectory in workdir)
    socks_port: int
    state_file: str  # pids etc., what `down` reads


def load(path: str | Path) -> NetworkInfo:
    info: NetworkInfo = json.loads(Path(path).read_text())
    if info.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema {info.get('schema_version')}, want {SCHEMA_VERSION}")
    return info
