"""`TorConfig` and the one table of the torrc options puretor implements.

Each option is defined once, as a `TorConfig` field made with `option()`: its torrc
name, its value kind, its default (the field's) and its check.  Everything else -
the torrc and command-line reader, ``--list-torrc-options``, ``GETCONF`` - reads
`OPTIONS`, which is built from those fields.

Option names, value syntax and defaults follow C tor's ``config.c`` and ``tor.1``.
Only options a client uses are accepted.  A C tor option puretor does not implement,
and anything unknown or malformed, stops start-up with a `ConfigError` naming the
option and where it came from (``torrc:12``): silently ignoring e.g. ``ExcludeNodes``
would mislead the user about their privacy.  Options C tor itself calls obsolete are
skipped with C tor's warning.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from puretor.config import torrc
from puretor.config.control_values import (
    CONTROL_PORT,
    CONTROL_SOCKET,
    COOKIE_AUTH,
    HASHED_PASSWORD,
    OWNING_PROCESS,
    ControlPortConfig,
    combine_disablable,
)
from puretor.config.ctor_names import CTOR_OBSOLETE, CTOR_OPTIONS
from puretor.config.torrc import Entry
from puretor.config.values import (
    AUTOBOOL,
    BOOL,
    DEFAULT_LOG,
    DEFAULT_SOCKS_PORT,
    FILENAME,
    FLOAT,
    INTERVAL,
    MAP_ADDRESS,
    MEMUNIT,
    MSEC_INTERVAL,
    OPTIONAL_BOOL,
    POSINT,
    SAFELOGGING,
    STRING,
    SUFFIXES,
    VIRTUAL_IPV4,
    VIRTUAL_IPV6,
    BridgeLine,
    Kind,
    LogSpec,
    MetricsPortConfig,
    PolicyRule,
    SocksPortConfig,
    TransportPlugin,
    app_port_kind,
    choice,
    format_bridge_line,
    format_log,
    format_metrics_port,
    format_policy_rule,
    format_socks_port,
    format_transport_plugin,
    line_list,
    parse_bridge_line,
    parse_log,
    parse_metrics_port,
    parse_policy_entries,
    parse_socks_port,
    parse_transport_plugin,
    proxy_address,
)
from puretor.errors import ConfigError
from puretor.proto.conflux import UX_BY_NAME

if TYPE_CHECKING:  # imported lazily at run time: it pulls in the directory layer
    from puretor.dir.authorities import Authority, FallbackDir

log = logging.getLogger("puretor.config")

Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class OptionSpec:
    """One torrc option: how to read it and which `TorConfig` field it sets."""

    name: str
    kind: Kind
    check: Check | None = None
    repeatable: bool = False
    # C tor's "0 means the default": the field is None then.
    zero_means_default: bool = False
    # Repeatable options: lines -> field value (default: a tuple of the parsed lines).
    combine: Callable[[list[tuple[Any, Entry]]], Any] | None = None
    attr: str = ""  # the TorConfig field, filled in by the table

    def default_text(self, value: Any) -> list[str]:
        """The value as torrc lines (what ``GETCONF`` shows); [] for an empty list."""
        if self.repeatable:
            return [self.kind.format(item) for item in value or ()]
        if value is None and self.zero_means_default:
            return ["0"]
        return [self.kind.format(value)]


def option(
    name: str,
    kind: Kind,
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    check: Check | None = None,
    repeatable: bool = False,
    zero_means_default: bool = False,
    combine: Callable[[list[tuple[Any, Entry]]], Any] | None = None,
) -> Any:
    """A `TorConfig` field that is the torrc option ``name``."""
    spec = OptionSpec(name, kind, check, repeatable, zero_means_default, combine)
    metadata = {"option": spec}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def between(low: float, high: float, what: str) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {what}"


def _xdg(var: str, fallback: str) -> Path:
    base = os.environ.get(var)
    return Path(base) if base and os.path.isabs(base) else Path.home() / fallback


def default_data_directory() -> Path:
    """``$XDG_DATA_HOME/puretor``, else ``~/.local/share/puretor``."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "puretor"


def default_torrc_path() -> Path:
    """Read when no ``-f`` is given, if it exists: ``$XDG_CONFIG_HOME/puretor/torrc``."""
    return _xdg("XDG_CONFIG_HOME", ".config") / "puretor" / "torrc"


def _check_granularity(value: float) -> str | None:
    msec = round(value * 1000)
    if msec > 0 and (1000 % msec == 0 or msec % 1000 == 0):
        return None
    return "must be a positive divisor or multiple of 1 second"


def _combine_socks_ports(lines: list[tuple[Any, Entry]]) -> tuple[SocksPortConfig, ...]:
    ports = [cfg for cfg, _ in lines if cfg is not None]
    if ports and len(ports) != len(lines):
        raise ConfigError("you gave a nonzero SocksPort along with 'SocksPort 0'; which one?")
    for cfg, entry in lines:
        if cfg is not None and not cfg.is_loopback:
            log.warning(
                "%s: SocksPort on %s is reachable from other hosts: anyone who can "
                "connect can use your Tor client, and SOCKS traffic is unencrypted",
                entry.where,
                cfg.address,
            )
    return tuple(ports)


def _other_ports(name: str) -> Callable[[list[tuple[Any, Entry]]], tuple[Any, ...]]:
    """HTTPTunnelPort, DNSPort, MetricsPort...: like SocksPort's lines, but off by default."""

    def combine(lines: list[tuple[Any, Entry]]) -> tuple[Any, ...]:
        ports = [cfg for cfg, _ in lines if cfg is not None]
        if ports and len(ports) != len(lines):
            raise ConfigError(f"you gave a nonzero {name} along with '{name} 0'; which one?")
        if ports and name == "TransPort" and not sys.platform.startswith("linux"):
            raise ConfigError("TransPort is not supported by puretor on this platform (Linux only)")
        for cfg, entry in lines:
            if cfg is not None and not ipaddress.ip_address(cfg.address).is_loopback:
                log.warning(
                    "%s: %s on %s is reachable from other hosts", entry.where, name, cfg.address
                )
        return tuple(ports)

    return combine


def _combine_policy(lines: list[tuple[Any, Entry]]) -> tuple[PolicyRule, ...]:
    return tuple(rule for rules, _ in lines for rule in rules)


def _dir_line_kind(parser: str) -> Kind:
    def parse(text: str) -> Any:
        # Lazy: puretor.dir.authorities pulls in the directory layer.
        from puretor.dir import authorities

        return getattr(authorities, parser)(text)

    return line_list(parse, _dir_line_text)


def _dir_line_text(item: Any) -> str:
    """A DirAuthority as torrc text (GETCONF, config-text), else the item's own text."""
    if hasattr(item, "v3ident") and hasattr(item, "dir_port"):
        words = [item.nickname] if item.nickname else []
        words += ["bridge"] if item.bridge else []
        words.append(f"orport={item.or_port}")
        if item.v3ident is not None:
            words.append(f"v3ident={item.v3ident.hex().upper()}")
        if item.ipv6 is not None:
            words.append(f"ipv6=[{item.ipv6[0]}]:{item.ipv6[1]}")
        words += [f"{item.address}:{item.dir_port}", item.rsa_id.hex().upper()]
        return " ".join(words)
    return getattr(item, "line", None) or str(item)


# --- onion services (HiddenServiceDir and the per-service options after it)


@dataclass(frozen=True)
class HiddenServiceConfig:
    """One ``HiddenServiceDir`` block: the options between it and the next one."""

    directory: Path
    ports: tuple[tuple[int, tuple[str, int] | Path], ...]  # (VIRTPORT, local target)
    num_intro_points: int = 3
    max_streams: int = 0
    max_streams_close_circuit: bool = False


def parse_hs_port(text: str) -> tuple[int, tuple[str, int] | Path]:
    """``VIRTPORT [TARGET]``: TARGET is ``addr``, ``port``, ``addr:port`` (IPv6 as
    ``[addr]:port``) or ``unix:path``; without one, VIRTPORT on 127.0.0.1."""
    words = text.split()
    if not 1 <= len(words) <= 2:
        raise ValueError("expected VIRTPORT [TARGET]")
    virt = _port_number(words[0], "VIRTPORT")
    if len(words) == 1:
        return virt, ("127.0.0.1", virt)
    target = words[1]
    if target.startswith("unix:"):
        path = target[5:].strip('"')
        if not path:
            raise ValueError("empty unix: path")
        return virt, Path(path)
    if target.isdigit():
        return virt, ("127.0.0.1", _port_number(target, "target port"))
    if target.startswith("["):
        host, sep, port = target[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, sep, port = target.rpartition(":")
        if not sep:
            host, port = target, str(virt)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"target address {host!r} is not an IP address") from None
    return virt, (host, _port_number(port or str(virt), "target port"))


def _port_number(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{what} {text!r} is not a port (1-65535)")
    return int(text)


def _format_hs_port(item: tuple[int, tuple[str, int] | Path]) -> str:
    virt, target = item
    if isinstance(target, Path):
        return f"{virt} unix:{target}"
    host = f"[{target[0]}]" if ":" in target[0] else target[0]
    return f"{virt} {host}:{target[1]}"


def _parse_hs_version(text: str) -> int:
    if text.strip() != "3":
        raise ValueError("only version 3 onion services exist (HiddenServiceVersion 3)")
    return 3


def _parse_path_line(text: str) -> Path:
    if not text.strip():
        raise ValueError("empty path")
    return Path(text.strip()).expanduser().absolute()


def _parse_bool_line(text: str) -> bool:
    if text.strip() not in ("0", "1"):
        raise ValueError(f"{text!r} is not 0 or 1")
    return text.strip() == "1"


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or not lo <= int(text) <= hi:
            raise ValueError(f"{text!r} is not an integer in {lo}-{hi}")
        return int(text)

    return parse


_HS_OPTIONS = (
    "HiddenServiceDir",
    "HiddenServicePort",
    "HiddenServiceVersion",
    "HiddenServiceNumIntroductionPoints",
    "HiddenServiceMaxStreams",
    "HiddenServiceMaxStreamsCloseCircuit",
)


def _entry_position(entry: Entry) -> tuple[int, int]:
    """Where an entry stood: (source, line), for grouping the per-service options."""
    where = entry.where
    number = where.rsplit(":", 1)[-1] if ":" in where else where.rsplit(" ", 1)[-1]
    rank = 1 if where.startswith("command line") else 2 if where.startswith("option ") else 0
    return rank, int(number) if number.isdigit() else 0


def _hidden_services(merged: dict[str, list[Entry]]) -> tuple[HiddenServiceConfig, ...]:
    """Group the per-service options under the HiddenServiceDir before them (C tor)."""
    entries = [
        (name, e)
        for name in _HS_OPTIONS
        for e in merged.get(name, [])  # (HiddenServiceDir first among equals)
    ]
    entries.sort(key=lambda item: _entry_position(item[1]))
    services: list[dict[str, Any]] = []
    for name, entry in entries:
        spec = OPTIONS[name]
        value = _parse_entry(spec, entry)
        if name == "HiddenServiceDir":
            if any(s["directory"] == value for s in services):
                raise ConfigError(f"{entry.where}: HiddenServiceDir {value} is used twice")
            services.append({"directory": value, "ports": []})
            continue
        if not services:
            raise ConfigError(f"{entry.where}: {name} with no preceding HiddenServiceDir")
        current = services[-1]
        if name == "HiddenServicePort":
            current["ports"].append(value)
        elif name == "HiddenServiceNumIntroductionPoints":
            current["num_intro_points"] = value
        elif name == "HiddenServiceMaxStreams":
            current["max_streams"] = value
        elif name == "HiddenServiceMaxStreamsCloseCircuit":
            current["max_streams_close_circuit"] = value
    out = []
    for service in services:
        if not service["ports"]:
            raise ConfigError(f"HiddenServiceDir {service['directory']} has no HiddenServicePort")
        ports = tuple(service.pop("ports"))
        if len({virt for virt, _ in ports}) != len(ports):
            raise ConfigError(
                f"HiddenServiceDir {service['directory']}: several targets for one "
                "HiddenServicePort are not supported by puretor"
            )
        out.append(HiddenServiceConfig(ports=ports, **service))
    return tuple(out)


@dataclass(frozen=True)
class TorConfig:
    """Everything a puretor client reads from torrc.  Times are in seconds."""

    socks_ports: tuple[SocksPortConfig, ...] = option(
        "SocksPort",
        line_list(parse_socks_port, lambda c: "0" if c is None else format_socks_port(c)),
        (DEFAULT_SOCKS_PORT,),
        repeatable=True,
        combine=_combine_socks_ports,
    )
    socks_policy: tuple[PolicyRule, ...] = option(
        "SocksPolicy",
        line_list(parse_policy_entries, format_policy_rule),  # GETCONF: a line per rule
        (),
        repeatable=True,
        combine=_combine_policy,
    )
    safe_socks: bool = option("SafeSocks", BOOL, False)
    test_socks: bool = option("TestSocks", BOOL, False)
    socks_timeout: float = option(
        "SocksTimeout", INTERVAL, 120.0, check=lambda v: None if v > 0 else "must be positive"
    )
    data_directory: Path = option("DataDirectory", FILENAME, default_factory=default_data_directory)
    dir_authorities: tuple[Authority, ...] = option(
        "DirAuthority", _dir_line_kind("parse_dir_authority_line"), (), repeatable=True
    )
    fallback_dirs: tuple[FallbackDir, ...] = option(
        "FallbackDir", _dir_line_kind("parse_fallback_dir_line"), (), repeatable=True
    )
    use_default_fallback_dirs: bool = option("UseDefaultFallbackDirs", BOOL, True)
    testing_tor_network: bool = option("TestingTorNetwork", BOOL, False)
    logs: tuple[LogSpec, ...] = option(
        "Log", line_list(parse_log, format_log), (DEFAULT_LOG,), repeatable=True
    )
    safe_logging: bool | Literal["relay"] = option("SafeLogging", SAFELOGGING, True)
    log_time_granularity: float = option(
        "LogTimeGranularity", MSEC_INTERVAL, 1.0, check=_check_granularity
    )
    max_circuit_dirtiness: float = option(
        "MaxCircuitDirtiness",
        INTERVAL,
        600.0,
        check=between(10, 30 * 86400, "10 seconds and 30 days"),
    )
    new_circuit_period: float = option(
        "NewCircuitPeriod",
        INTERVAL,
        30.0,
        check=lambda v: None if v >= 1 else "must be at least 1 second",
    )
    circuit_build_timeout: float | None = option(
        "CircuitBuildTimeout", INTERVAL, None, zero_means_default=True
    )  # None: learn it (initially 60 s)
    learn_circuit_build_timeout: bool = option("LearnCircuitBuildTimeout", BOOL, True)
    # Seconds over which a circuit's count of recently sent cells halves (the channel's
    # scheduler serves the lowest count first); negative: the consensus
    # CircuitPriorityHalflifeMsec (30 s by default).  See circuitmux.choose_halflife.
    circuit_priority_halflife: float = option("CircuitPriorityHalflife", FLOAT, -1.0)
    circuit_stream_timeout: float | None = option(
        "CircuitStreamTimeout",
        INTERVAL,
        None,
        zero_means_default=True,
        check=lambda v: (
            None if v == 0 or v >= 10 else "must be 0 (automatic) or at least 10 seconds"
        ),
    )  # None: C tor's schedule (10 s, then 15 s)
    max_client_circuits_pending: int = option(
        "MaxClientCircuitsPending", POSINT, 32, check=between(1, 1024, "1 and 1024")
    )
    # Queued cell data past which circuits are closed, oldest queued data first (C tor's
    # OOM handler); None: from the machine's memory as C tor (see proto/memory.py).
    max_mem_in_queues: int | None = option("MaxMemInQueues", MEMUNIT, None, zero_means_default=True)
    use_entry_guards: bool = option("UseEntryGuards", BOOL, True)
    # Bridges: the only first hops, and the only directory sources (bridges.py).
    use_bridges: bool = option("UseBridges", BOOL, False)
    bridges: tuple[BridgeLine, ...] = option(
        "Bridge", line_list(parse_bridge_line, format_bridge_line), (), repeatable=True
    )
    # An outbound proxy for every connection of ours (the first hops): one of these three.
    socks4_proxy: tuple[str, int] | None = option("Socks4Proxy", proxy_address(1080), None)
    socks5_proxy: tuple[str, int] | None = option("Socks5Proxy", proxy_address(1080), None)
    socks5_proxy_username: str | None = option("Socks5ProxyUsername", STRING, None)
    socks5_proxy_password: str | None = option("Socks5ProxyPassword", STRING, None)
    https_proxy: tuple[str, int] | None = option("HTTPSProxy", proxy_address(443), None)
    https_proxy_authenticator: str | None = option("HTTPSProxyAuthenticator", STRING, None)
    transport_plugins: tuple[TransportPlugin, ...] = option(
        "ClientTransportPlugin",
        line_list(parse_transport_plugin, format_transport_plugin),
        (),
        repeatable=True,
    )
    num_entry_guards: int | None = option(
        "NumEntryGuards", POSINT, None, zero_means_default=True
    )  # None: consensus guard-n-primary-guards-to-use
    num_primary_guards: int | None = option(
        "NumPrimaryGuards", POSINT, None, zero_means_default=True
    )  # None: consensus guard-n-primary-guards
    client_use_ipv4: bool = option("ClientUseIPv4", BOOL, True)
    client_use_ipv6: bool = option("ClientUseIPv6", BOOL, True)
    client_prefer_ipv6_orport: bool | None = option(
        "ClientPreferIPv6ORPort", AUTOBOOL, None
    )  # None: auto (prefer IPv4)
    enforce_distinct_subnets: bool | None = option(
        "EnforceDistinctSubnets", OPTIONAL_BOOL, None
    )  # None: on unless TestingTorNetwork
    client_reject_internal_addresses: bool | None = option(
        "ClientRejectInternalAddresses", OPTIONAL_BOOL, None
    )  # None: on unless TestingTorNetwork
    client_dns_reject_internal_addresses: bool | None = option(
        "ClientDNSRejectInternalAddresses", OPTIONAL_BOOL, None
    )  # likewise
    client_onion_auth_dir: Path | None = option("ClientOnionAuthDir", FILENAME, None)
    # --- onion services hosted here: the raw lines; `hidden_services` groups them
    hidden_service_dirs: tuple[Path, ...] = option(
        "HiddenServiceDir", line_list(_parse_path_line, str), (), repeatable=True
    )
    hidden_service_ports: tuple[tuple[int, tuple[str, int] | Path], ...] = option(
        "HiddenServicePort", line_list(parse_hs_port, _format_hs_port), (), repeatable=True
    )
    hidden_service_versions: tuple[int, ...] = option(
        "HiddenServiceVersion", line_list(_parse_hs_version, str), (), repeatable=True
    )
    hidden_service_num_intro_points: tuple[int, ...] = option(
        "HiddenServiceNumIntroductionPoints", line_list(_int_in(1, 20), str), (), repeatable=True
    )
    hidden_service_max_streams: tuple[int, ...] = option(
        "HiddenServiceMaxStreams", line_list(_int_in(0, 65535), str), (), repeatable=True
    )
    hidden_service_max_streams_close_circuit: tuple[bool, ...] = option(
        "HiddenServiceMaxStreamsCloseCircuit",
        line_list(_parse_bool_line, lambda v: "1" if v else "0"),
        (),
        repeatable=True,
    )
    hidden_services: tuple[HiddenServiceConfig, ...] = ()  # from the lines above
    # --- the daemon's other doors (HTTP CONNECT, DNS, metrics): off unless configured
    http_tunnel_ports: tuple[SocksPortConfig, ...] = option(
        "HTTPTunnelPort",
        app_port_kind("HTTPTunnelPort"),
        (),
        repeatable=True,
        combine=_other_ports("HTTPTunnelPort"),
    )
    trans_ports: tuple[SocksPortConfig, ...] = option(
        "TransPort",
        app_port_kind("TransPort"),
        (),
        repeatable=True,
        combine=_other_ports("TransPort"),
    )
    dns_ports: tuple[SocksPortConfig, ...] = option(
        "DNSPort",
        app_port_kind("DNSPort"),
        (),
        repeatable=True,
        combine=_other_ports("DNSPort"),
    )
    automap_hosts_on_resolve: bool = option("AutomapHostsOnResolve", BOOL, False)
    automap_hosts_suffixes: tuple[str, ...] = option(
        "AutomapHostsSuffixes", SUFFIXES, (".exit", ".onion")
    )
    map_address: tuple[tuple[str, str], ...] = option(
        "MapAddress", MAP_ADDRESS, (), repeatable=True
    )
    virtual_addr_network_ipv4: ipaddress.IPv4Network = option(
        "VirtualAddrNetworkIPv4", VIRTUAL_IPV4, ipaddress.IPv4Network("127.192.0.0/10")
    )
    virtual_addr_network_ipv6: ipaddress.IPv6Network = option(
        "VirtualAddrNetworkIPv6", VIRTUAL_IPV6, ipaddress.IPv6Network("fe80::/10")
    )
    metrics_ports: tuple[MetricsPortConfig, ...] = option(
        "MetricsPort",
        line_list(parse_metrics_port, format_metrics_port),
        (),
        repeatable=True,
        combine=_other_ports("MetricsPort"),
    )
    metrics_port_policy: tuple[PolicyRule, ...] = option(
        "MetricsPortPolicy",
        line_list(parse_policy_entries, format_policy_rule),
        (),
        repeatable=True,
        combine=_combine_policy,
    )
    pid_file: Path | None = option("PidFile", FILENAME, None)
    conflux_enabled: bool | None = option(
        "ConfluxEnabled", AUTOBOOL, None
    )  # None: auto, as the consensus says (cfx_enabled)
    conflux_client_ux: str = option("ConfluxClientUX", choice(*UX_BY_NAME), "throughput")

    # -- the control port (control-spec; puretor.app.control) --
    control_ports: tuple[ControlPortConfig, ...] = option(
        "ControlPort", CONTROL_PORT, (), repeatable=True, combine=combine_disablable
    )
    control_sockets: tuple[Path, ...] = option(
        "ControlSocket", CONTROL_SOCKET, (), repeatable=True, combine=combine_disablable
    )
    control_port_write_to_file: Path | None = option("ControlPortWriteToFile", FILENAME, None)
    cookie_authentication: bool | None = option(
        "CookieAuthentication", COOKIE_AUTH, None
    )  # None: not given (off); an explicit 0 is how a user asks for no authentication
    cookie_auth_file: Path | None = option("CookieAuthFile", FILENAME, None)
    hashed_control_passwords: tuple[str, ...] = option(
        "HashedControlPassword", HASHED_PASSWORD, (), repeatable=True
    )
    owning_controller_process: int | None = option(
        "__OwningControllerProcess", OWNING_PROCESS, None
    )
    # New streams wait for the controller's ATTACHSTREAM instead of getting a circuit.
    leave_streams_unattached: bool = option("__LeaveStreamsUnattached", BOOL, False)

    # Resolved views of the "None = depends on TestingTorNetwork" options.
    @property
    def distinct_subnets(self) -> bool:
        return _or_testnet_default(self.enforce_distinct_subnets, self)

    @property
    def reject_internal_addresses(self) -> bool:
        return _or_testnet_default(self.client_reject_internal_addresses, self)

    @property
    def dns_reject_internal_addresses(self) -> bool:
        return _or_testnet_default(self.client_dns_reject_internal_addresses, self)

    @property
    def uses_default_fallbacks(self) -> bool:
        """C tor adds its built-in fallbacks only when nothing replaces them."""
        return (
            self.use_default_fallback_dirs and not self.fallback_dirs and not self.dir_authorities
        )

    @property
    def prefer_ipv6_orport(self) -> bool:
        """Connect to a first hop over IPv6 when it has both (C tor: auto prefers IPv4,
        and ClientUseIPv4 0 prefers IPv6)."""
        return bool(self.client_prefer_ipv6_orport) or not self.client_use_ipv4

    # Construction from torrc options: the same parsing and checks as ``tor-client``.

    @classmethod
    def from_torrc(cls, path: str | os.PathLike[str], **options: OptionValue) -> TorConfig:
        """Read the torrc at ``path`` as ``tor-client -f PATH`` does, ``options`` on top.

        ``options`` are torrc options by name, applied like command-line options
        (replacing the file's value; a list replaces a list option's lines, ``[]``
        clears it): ``TorConfig.from_torrc("torrc", DataDirectory="/tmp/d", SocksPort=0)``.
        Raises `ConfigError` naming the file line or option at fault.
        """
        entries = _read_torrc(Path(path).expanduser(), missing_ok=False)
        return build_config(torrc.merge([entries, _option_entries(options)]))

    @classmethod
    def from_options(cls, **options: OptionValue) -> TorConfig:
        """A configuration from torrc options given as keywords, no file.

        Values are strings as in a torrc, or ints, floats, booleans (``1``/``0``) and
        paths; a list gives a repeated option::

            TorConfig.from_options(
                DataDirectory="/tmp/puretor",
                TestingTorNetwork=True,
                DirAuthority=["auth1 orport=9001 v3ident=... 127.1.0.1:9030 ...", ...],
            )

        Unknown or malformed options raise `ConfigError`, exactly as in a torrc.
        """
        return build_config(torrc.merge([_option_entries(options)]))

    def option_lines(self, name: str) -> list[str]:
        """The current value of torrc option ``name`` as torrc lines (``GETCONF``)."""
        spec = OPTIONS[canonical_name(name, "GETCONF")]
        return spec.default_text(getattr(self, spec.attr))


def with_changes(cfg: TorConfig, changes: dict[str, list[str]]) -> TorConfig:
    """``cfg`` with options replaced (SETCONF/RESETCONF): name -> torrc values, [] for the
    default.  Checked as at start-up; raises `ConfigError`."""
    values: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(TorConfig)}
    for name, texts in changes.items():
        spec = OPTIONS[name]
        if name in _HS_OPTIONS:
            raise ConfigError(f"{name} cannot be changed while tor-client runs")
        if not texts:
            f = fields[spec.attr]
            if f.default_factory is not dataclasses.MISSING:
                values[spec.attr] = f.default_factory()
            else:
                values[spec.attr] = f.default
            continue
        lines = [Entry(name, "", text, f"SETCONF {name}") for text in texts]
        if spec.repeatable:
            parsed = [(_parse_entry(spec, e), e) for e in lines]
            combined = spec.combine(parsed) if spec.combine else tuple(v for v, _ in parsed)
            values[spec.attr] = combined
        else:
            value = _parse_entry(spec, lines[-1])
            values[spec.attr] = None if spec.zero_means_default and value == 0 else value
    return _check_together(replace(cfg, **values))


def _or_testnet_default(value: bool | None, cfg: TorConfig) -> bool:
    return (not cfg.testing_tor_network) if value is None else value


# --- the table


def _table() -> dict[str, OptionSpec]:
    table: dict[str, OptionSpec] = {}
    for f in dataclasses.fields(TorConfig):
        spec = f.metadata.get("option")
        if spec is not None:
            table[spec.name] = replace(spec, attr=f.name)
    return table


OPTIONS: dict[str, OptionSpec] = _table()
OPTION_NAMES = tuple(OPTIONS)  # for --list-torrc-options
_CANONICAL = {name.lower(): name for name in OPTIONS}
# C tor's abbreviations for options we accept (config.c option_abbrevs_).
_CANONICAL.update(
    {
        "l": "Log",
        "dirserver": "DirAuthority",
        "usehelpernodes": "UseEntryGuards",
        "useentrynodes": "UseEntryGuards",
        "numhelpernodes": "NumEntryGuards",
        "numentrynodes": "NumEntryGuards",
        "maxmemincellqueues": "MaxMemInQueues",
    }
)
_CTOR_LOWER = {name.lower(): name for name in CTOR_OPTIONS | CTOR_OBSOLETE}
_OBSOLETE_LOWER = {name.lower() for name in CTOR_OBSOLETE}
# Names whose entries are dropped after the obsolete-option warning.
SKIP = "\0obsolete"


def canonical_name(key: str, where: str) -> str:
    """The option ``key`` names, in C tor's spelling; `SKIP` for an obsolete one."""
    name = _CANONICAL.get(key.lower())
    if name is not None:
        return name
    if key.startswith("%"):
        raise ConfigError(f"{where}: '{key}' is not supported; put every option in one torrc")
    lower = key.lower()
    if lower in _OBSOLETE_LOWER:
        log.warning("Skipping obsolete configuration option %r.", _CTOR_LOWER[lower])
        return SKIP
    if lower in _CTOR_LOWER:
        raise ConfigError(
            f"{where}: C tor option '{_CTOR_LOWER[lower]}' is not supported by puretor"
        )
    raise ConfigError(f"{where}: unknown option '{key}'")


# --- reading


_Scalar = str | int | float | os.PathLike[str]
OptionValue = _Scalar | Sequence[_Scalar]


def parse_torrc(text: str, source: str) -> list[tuple[str, str, int]]:
    """Split torrc text into ``(key, value, line)`` with canonical option names.

    A ``+``/``/`` magic prefix stays on the key (``"+SocksPort"``); `load_config`
    interprets it.  Unknown options and bad syntax raise `ConfigError` naming
    ``source:line``; obsolete C tor options are dropped with a warning.
    """
    tokens = torrc.tokenize_torrc(text, source, canonical_name)
    return [t for t in tokens if t[0].lstrip("+/") != SKIP]


def parse_command_line(argv: Sequence[str]) -> torrc.CommandLine:
    """C tor style: ``-f FILE``, ``--Option value`` (one, two or no dashes), ``+Opt``/``/Opt``.

    ``argv`` excludes the program name.  ``-h`` is reported as ``--help``.
    """
    cmd = torrc.tokenize_command_line(argv, canonical_name)
    overrides = [t for t in cmd.overrides if t[0].lstrip("+/") != SKIP]
    return cmd._replace(overrides=overrides)


def _option_entries(options: dict[str, OptionValue]) -> list[Entry]:
    """Keyword options (`TorConfig.from_options`) as torrc entries."""
    out: list[Entry] = []
    for name, value in options.items():
        where = f"option {name}="
        key = canonical_name(name, where)
        if key == SKIP:
            continue
        values = list(value) if isinstance(value, list | tuple) else [value]
        if not values:
            out.append(Entry(key, "/", "", where))  # an empty list clears the option
            continue
        for v in values:
            if isinstance(v, bool):
                text = "1" if v else "0"
            elif isinstance(v, str | int | float):
                text = str(v)
            elif isinstance(v, os.PathLike):
                text = os.fspath(v)
            else:
                raise ConfigError(f"{where}: cannot use a {type(v).__name__} as a value")
            if "\n" in text or "\0" in text:
                raise ConfigError(f"{where}: a value cannot contain newlines or NUL")
            out.append(Entry(key, "", text.strip(), where))
    return out


def _parse_entry(spec: OptionSpec, entry: Entry) -> Any:
    try:
        value = spec.kind.parse(entry.value)
    except ValueError as exc:  # ConfigError and DocumentError are ValueErrors too
        if spec.repeatable:
            raise ConfigError(f"{entry.where}: bad {spec.name} line: {exc}") from None
        raise ConfigError(f"{entry.where}: bad value for {spec.name}: {exc}") from None
    if spec.check is not None and value is not None:
        problem = spec.check(value)
        if problem:
            raise ConfigError(f"{entry.where}: {spec.name} {entry.value!r} {problem}")
    return value


def build_config(merged: dict[str, list[Entry]]) -> TorConfig:
    """Merged torrc entries -> a checked `TorConfig`."""
    values: dict[str, Any] = {}
    for name, spec in OPTIONS.items():
        lines = merged.get(name)
        if lines is None:
            continue
        if spec.repeatable:
            parsed = [(_parse_entry(spec, e), e) for e in lines]
            if spec.combine is not None:
                values[spec.attr] = spec.combine(parsed)
            elif parsed or name != "Log":
                values[spec.attr] = tuple(item for item, _ in parsed)
            continue
        if not lines:
            continue  # '/Option' cleared it: the default
        if len(lines) > 1:
            log.warning(
                "Option %s used more than once (%s); using the last value",
                name,
                ", ".join(e.where for e in lines),
            )
        value = _parse_entry(spec, lines[-1])
        values[spec.attr] = None if spec.zero_means_default and value == 0 else value

    if any(merged.get(name) for name in _HS_OPTIONS):
        values["hidden_services"] = _hidden_services(merged)
    cfg = TorConfig(**values)
    return _check_together(cfg)


def _check_together(cfg: TorConfig) -> TorConfig:
    """Rules that involve several options, as C tor's options_validate has them."""
    if cfg.testing_tor_network and not cfg.dir_authorities:
        raise ConfigError(
            "TestingTorNetwork may only be configured together with a non-default set of "
            "DirAuthority lines"
        )
    if cfg.testing_tor_network:  # C tor's testnet defaults that matter to a client
        cfg = replace(
            cfg,
            enforce_distinct_subnets=cfg.distinct_subnets,
            client_reject_internal_addresses=cfg.reject_internal_addresses,
            client_dns_reject_internal_addresses=cfg.dns_reject_internal_addresses,
        )
    if cfg.client_dns_reject_internal_addresses is False and not cfg.dir_authorities:
        # C tor: "it is not allowed to be set on the default network".
        raise ConfigError("ClientDNSRejectInternalAddresses used for default network.")
    if not cfg.client_use_ipv4 and not cfg.client_use_ipv6:
        raise ConfigError("ClientUseIPv4 and ClientUseIPv6 are both 0: no way to reach relays")
    _check_control_auth(cfg)
    _check_bridges(cfg)
    _check_proxies(cfg)
    return cfg


def _check_proxies(cfg: TorConfig) -> None:
    """C tor's options_validate rules for the outbound proxies."""
    if (cfg.socks4_proxy is not None) + (cfg.socks5_proxy is not None) + (
        cfg.https_proxy is not None
    ) > 1:
        raise ConfigError(
            "You have configured more than one proxy type. (Socks4Proxy|Socks5Proxy|HTTPSProxy)"
        )
    user, password = cfg.socks5_proxy_username, cfg.socks5_proxy_password
    if user is not None:
        if not 1 <= len(user.encode()) <= 255:
            raise ConfigError("Socks5ProxyUsername must be between 1 and 255 characters.")
        if password is None:
            raise ConfigError("Socks5ProxyPassword must be included with Socks5ProxyUsername.")
        if not 1 <= len(password.encode()) <= 255:
            raise ConfigError("Socks5ProxyPassword must be between 1 and 255 characters.")
    elif password is not None:
        raise ConfigError("Socks5ProxyPassword must be included with Socks5ProxyUsername.")
    if cfg.https_proxy_authenticator is not None and len(cfg.https_proxy_authenticator) >= 512:
        raise ConfigError("HTTPSProxyAuthenticator is too long (>= 512 chars).")
    proxied = cfg.socks4_proxy or cfg.socks5_proxy or cfg.https_proxy
    if proxied and any(p.kind == "exec" for p in cfg.transport_plugins):
        raise ConfigError(
            "a managed transport behind Socks4Proxy/Socks5Proxy/HTTPSProxy (TOR_PT_PROXY) "
            "is not supported by puretor"
        )


def _check_bridges(cfg: TorConfig) -> None:
    """C tor's options_validate rules for UseBridges and Bridge lines."""
    if not cfg.use_bridges:
        return
    if not cfg.bridges:
        raise ConfigError("If you set UseBridges, you must specify at least one bridge.")
    if not cfg.use_entry_guards:
        raise ConfigError("Setting UseBridges requires also setting UseEntryGuards.")
    for b in cfg.bridges:
        names = {n for p in cfg.transport_plugins for n in p.transports}
        if b.transport is not None and b.transport not in names:
            raise ConfigError(
                f"Bridge line with transport {b.transport} is missing a ClientTransportPlugin line"
            )


def _check_control_auth(cfg: TorConfig) -> None:
    """A ControlPort lets whoever connects reconfigure the client: refuse one with no
    authentication unless the user chose that with an explicit ``CookieAuthentication 0``
    (C tor only warns; the warning is kept for the explicit choice)."""
    if not cfg.control_ports or cfg.cookie_authentication or cfg.hashed_control_passwords:
        return
    if cfg.cookie_authentication is None:
        raise ConfigError(
            "ControlPort is open, but no authentication method has been configured: set "
            "CookieAuthentication 1 or HashedControlPassword (tor-client --hash-password), "
            "or 'CookieAuthentication 0' to let any program on this computer control "
            "tor-client"
        )
    log.warning(
        "ControlPort is open, but no authentication method has been configured.  This "
        "means that any program on your computer can reconfigure your Tor.  That's bad!"
    )


def _read_torrc(path: Path, missing_ok: bool) -> list[Entry]:
    text = torrc.read_torrc_text(path, missing_ok)
    if text is None:
        return []
    return torrc.entries(parse_torrc(text, str(path)), str(path), cmdline=False)


def load_config(argv: Sequence[str], *, torrc_text: str | None = None) -> TorConfig:
    """Command line (without the program name) + torrc files -> validated `TorConfig`.

    ``torrc_text``: use this in place of the torrc file (the control port's LOADCONF)."""
    cmd = parse_command_line(argv)
    domains: list[list[Entry]] = []
    missing_ok = "--ignore-missing-torrc" in cmd.flags or "--allow-missing-torrc" in cmd.flags
    defaults = cmd.flags.get("--defaults-torrc")
    if defaults:
        domains.append(_read_torrc(Path(defaults).expanduser(), missing_ok=True))
    if torrc_text is not None:
        where = "LOADCONF"
        domains.append(torrc.entries(parse_torrc(torrc_text, where), where, cmdline=False))
    elif cmd.torrc_path is not None:
        domains.append(_read_torrc(cmd.torrc_path, missing_ok=missing_ok))
    else:
        domains.append(_read_torrc(default_torrc_path(), missing_ok=True))
    domains.append(torrc.entries(cmd.overrides, "command line", cmdline=True))
    return build_config(torrc.merge(domains))
