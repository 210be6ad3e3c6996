"""torrc-style configuration: the file syntax, command line and options C tor users know.

The file format follows tor's ``doc/torrc_format.txt`` (comments, backslash
continuations, C-escaped quoted values, ``+``/``/`` magic); option names, value
syntax (``0``/``1`` booleans, ``10 minutes`` intervals) and defaults follow C
tor's ``config.c`` and ``tor.1``.  Only options a client uses are accepted.  C tor
options we do not implement, and anything unknown or malformed, stop start-up
with a `ConfigError` naming the option and where it came from (``torrc:12``) -
silently ignoring e.g. ``ExcludeNodes`` would mislead the user about their privacy.

Three domains, lowest priority first (as C tor): ``--defaults-torrc`` file, the
torrc, the command line.  A list option (``SocksPort``, ``Log``, ``DirAuthority``,
``FallbackDir``) given in a higher domain replaces the lower domain's list,
unless its first entry there is ``+Option`` (append); ``/Option`` clears it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from puretor.errors import ConfigError
from puretor.proto.conflux import UX_BY_NAME

if TYPE_CHECKING:  # imported lazily at run time: it pulls in the directory layer
    from puretor.dir.authorities import Authority, FallbackDir

log = logging.getLogger(__name__)

__all__ = [
    "CommandLine",
    "LogRange",
    "LogSpec",
    "SocksPortConfig",
    "TorConfig",
    "default_data_directory",
    "default_torrc_path",
    "load_config",
    "parse_command_line",
    "parse_interval",
    "parse_torrc",
]


# --- the options we accept: canonical name -> value kind.  Defaults live on TorConfig.

_OPTIONS: dict[str, str] = {
    "SocksPort": "list",
    "DataDirectory": "path",
    "DirAuthority": "list",
    "FallbackDir": "list",
    "UseDefaultFallbackDirs": "bool",
    "TestingTorNetwork": "bool",
    "Log": "list",
    "SafeLogging": "safelogging",
    "LogTimeGranularity": "msec",
    "MaxCircuitDirtiness": "interval",
    "NewCircuitPeriod": "interval",
    "CircuitBuildTimeout": "interval",
    "LearnCircuitBuildTimeout": "bool",
    "CircuitStreamTimeout": "interval",
    "SocksTimeout": "interval",
    "MaxClientCircuitsPending": "posint",
    "UseEntryGuards": "bool",
    "NumEntryGuards": "posint",
    "ClientUseIPv4": "bool",
    "ClientUseIPv6": "bool",
    "ClientPreferIPv6ORPort": "autobool",
    "EnforceDistinctSubnets": "bool",
    "ClientRejectInternalAddresses": "bool",
    "ClientDNSRejectInternalAddresses": "bool",
    "ClientOnionAuthDir": "path",
    "PidFile": "path",
    "ConfluxEnabled": "autobool",
    "ConfluxClientUX": "confluxux",
}
OPTION_NAMES = tuple(_OPTIONS)  # for --list-torrc-options
_LIST_OPTIONS = frozenset(name for name, kind in _OPTIONS.items() if kind == "list")
_CANONICAL = {name.lower(): name for name in _OPTIONS}
# C tor's abbreviations for options we accept (config.c option_abbrevs_).
_CANONICAL.update(
    {
        "l": "Log",
        "dirserver": "DirAuthority",
        "usehelpernodes": "UseEntryGuards",
        "useentrynodes": "UseEntryGuards",
        "numhelpernodes": "NumEntryGuards",
        "numentrynodes": "NumEntryGuards",
    }
)

# Well-known C tor options we recognise but do not implement, so the message can
# say "not supported" instead of "unknown" (not exhaustive: the rest are "unknown").
_UNSUPPORTED_WORDS = (
    "AccountingMax AccountingStart AlternateBridgeAuthority AlternateDirAuthority "
    "AutomapHostsOnResolve AutomapHostsSuffixes AvoidDiskWrites BandwidthBurst BandwidthRate "
    "Bridge BridgeRelay CacheDirectory CircuitPadding CircuitsAvailableTimeout ClientOnly "
    "ClientTransportPlugin ConnectionPadding ContactInfo ControlPort ControlPortWriteToFile "
    "ControlSocket CookieAuthentication CookieAuthFile DirPort DisableNetwork DNSPort "
    "DormantClientTimeout DownloadExtraInfo EntryNodes ExcludeExitNodes ExcludeNodes "
    "ExitNodes ExitPolicy ExitRelay FascistFirewall FetchUselessDescriptors FirewallPorts "
    "GeoIPFile GeoIPv6File HardwareAccel HashedControlPassword HeartbeatPeriod "
    "HiddenServiceDir HiddenServicePort HiddenServiceVersion HTTPSProxy "
    "HTTPSProxyAuthenticator HTTPTunnelPort KeepalivePeriod KeyDirectory LogMessageDomains "
    "LongLivedPorts MapAddress MetricsPort MyFamily NATDPort Nickname NumDirectoryGuards "
    "ORPort PathsNeededToBuildCircuits ProtocolWarnings ReachableAddresses "
    "ReducedCircuitPadding ReducedConnectionPadding RejectPlaintextPorts RelayBandwidthBurst "
    "RelayBandwidthRate RunAsDaemon SafeSocks Sandbox Socks4Proxy Socks5Proxy "
    "Socks5ProxyPassword Socks5ProxyUsername SocksPolicy StrictNodes SyslogIdentityTag "
    "TestSocks TrackHostExits TransPort TruncateLogFile UseBridges UseMicrodescriptors User "
    "VirtualAddrNetworkIPv4 VirtualAddrNetworkIPv6 WarnPlaintextPorts"
)
_UNSUPPORTED = {name.lower(): name for name in _UNSUPPORTED_WORDS.split()}


def _canonical(key: str, where: str) -> str:
    name = _CANONICAL.get(key.lower())
    if name is not None:
        return name
    if key.startswith("%"):
        raise ConfigError(f"{where}: '{key}' is not supported; put every option in one torrc")
    if key.lower() in _UNSUPPORTED:
        raise ConfigError(
            f"{where}: C tor option '{_UNSUPPORTED[key.lower()]}' is not supported by puretor"
        )
    raise ConfigError(f"{where}: unknown option '{key}'")


# --- file syntax (torrc_format.txt)

_WS = " \t\n\r\x0b\x0c"  # C isspace(): Unicode spaces are ordinary characters here
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", '"': '"'}
_OCT = re.compile(r"[0-7]{1,3}")
_HEX2 = re.compile(r"[0-9a-fA-F]{2}")


def _unquote(text: str, i: int, where: str) -> tuple[str, int]:
    """Decode the C string starting at text[i] == '"'; return (value, index after it)."""
    out: list[str] = []
    i += 1
    while True:
        if i >= len(text) or text[i] == "\n":
            raise ConfigError(f"{where}: unterminated quoted string")
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and (m := _HEX2.match(text, i + 2)):
            out.append(chr(int(m.group(), 16)))
            i = m.end()
        elif m := _OCT.match(text, i + 1):
            out.append(chr(int(m.group(), 8)))
            i = m.end()
        else:
            raise ConfigError(f"{where}: invalid escape sequence in quoted string")
        if out[-1] == "\0":
            raise ConfigError(f"{where}: NUL in quoted string")


def _strip_continuations(raw: str) -> str:
    # In a continued value, '#' comments run to end of line and are dropped, and
    # each backslash-newline is removed (torrc_format.txt "ContinuedVal").
    out: list[str] = []
    i = 0
    while i < len(raw):
        if raw[i] == "#":
            nl = raw.find("\n", i)
            i = len(raw) if nl < 0 else nl + 1
        elif raw.startswith("\\\n", i):
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def parse_torrc(text: str, source: str) -> list[tuple[str, str, int]]:
    """Split torrc text into ``(key, value, line)`` with canonical option names.

    A ``+``/``/`` magic prefix stays on the key (``"+SocksPort"``); `load_config`
    interprets it.  Unknown options and bad syntax raise `ConfigError` naming
    ``source:line``.
    """
    text = text.replace("\r\n", "\n")
    if "\0" in text:
        raise ConfigError(f"{source}: NUL byte in configuration text")
    entries: list[tuple[str, str, int]] = []
    n = len(text)
    i = 0
    while True:
        # Skip blank lines and comment lines.
        while i < n and (text[i] in _WS or text[i] == "#"):
            if text[i] == "#":
                nl = text.find("\n", i)
                i = n if nl < 0 else nl
            i += 1
        if i >= n:
            return entries
        lineno = text.count("\n", 0, i) + 1
        where = f"{source}:{lineno}"
        start = i
        while i < n and text[i] not in _WS and text[i] != "#" and not text.startswith("\\\n", i):
            i += 1
        key = text[start:i]
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            value, i = _unquote(text, i, where)
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] not in "#\n":
                raise ConfigError(f"{where}: excess data after quoted string")
        else:
            val_start = i
            continuation = False
            while i < n and text[i] != "\n" and (text[i] != "#" or continuation):
                if text.startswith("\\\n", i):
                    continuation = True
                    i += 2
                elif text[i] == "#":  # only reached inside a continued value
                    nl = text.find("\n", i)
                    i = n if nl < 0 else nl + 1
                else:
                    i += 1
            value = text[val_start:i].rstrip(_WS)
            if continuation:
                value = _strip_continuations(value)
        if i < n and text[i] == "#":  # trailing comment
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
        magic = key[0] if key[:1] in ("+", "/") else ""
        entries.append((magic + _canonical(key[len(magic) :], where), value, lineno))


# --- command line


class CommandLine(NamedTuple):
    torrc_path: Path | None  # -f / --torrc-file
    overrides: list[tuple[str, str, int]]  # like parse_torrc; the int is the argv index
    flags: dict[str, str]  # command-line-only options -> argument ("" if none)


# Command-line-only options we honour: name -> takes an argument.
_CMDLINE_FLAGS = {
    "-f": True,
    "--torrc-file": True,
    "--defaults-torrc": True,
    "--ignore-missing-torrc": False,
    "--allow-missing-torrc": False,
    "--verify-config": False,
    "--version": False,
    "-h": False,
    "--help": False,
    "--list-torrc-options": False,
    "--quiet": False,
    "--hush": False,
}
_CMDLINE_UNSUPPORTED_WORDS = (
    "--hash-password --dump-config --list-fingerprint --keygen --key-expiration --format "
    "--newpass --no-passphrase --passphrase-fd --list-modules --library-versions "
    "--list-deprecated-options --nt-service -nt-service --dbg-dump-subsystem-list"
)
_CMDLINE_UNSUPPORTED = frozenset(_CMDLINE_UNSUPPORTED_WORDS.split())


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    """C tor style: ``-f FILE``, ``--Option value`` (one, two or no dashes), ``+Opt``/``/Opt``.

    ``argv`` excludes the program name.  ``-h`` is reported as ``--help``.
    """
    torrc: Path | None = None
    overrides: list[tuple[str, str, int]] = []
    flags: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        where = f"command line argument {i + 1} ('{arg}')"
        if arg in _CMDLINE_UNSUPPORTED:
            raise ConfigError(f"{where}: '{arg}' is not supported by puretor")
        if arg in _CMDLINE_FLAGS:
            value = ""
            if _CMDLINE_FLAGS[arg]:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{where}: '{arg}' needs a value")
                value = argv[i + 1]
                i += 1
            if arg in ("-f", "--torrc-file"):
                torrc = Path(value).expanduser()
            else:
                flags["--help" if arg == "-h" else arg] = value
            i += 1
            continue
        name = arg[2:] if arg.startswith("--") else arg[1:] if arg.startswith("-") else arg
        magic = name[0] if name[:1] in ("+", "/") else ""
        key = magic + _canonical(name[len(magic) :], where)
        if magic == "/":  # clearing takes no value
            overrides.append((key, "", i + 1))
            i += 1
            continue
        if i + 1 >= len(argv):
            raise ConfigError(f"{where}: option '{key.lstrip('+')}' with no value")
        overrides.append((key, argv[i + 1], i + 1))
        i += 2
    return CommandLine(torrc, overrides, flags)


# --- typed values


def _xdg(var: str, fallback: str) -> Path:
    base = os.environ.get(var)
    return Path(base) if base and os.path.isabs(base) else Path.home() / fallback


def default_data_directory() -> Path:
    """``$XDG_DATA_HOME/puretor``, else ``~/.local/share/puretor``."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "puretor"


def default_torrc_path() -> Path:
    """Read when no ``-f`` is given, if it exists: ``$XDG_CONFIG_HOME/puretor/torrc``."""
    return _xdg("XDG_CONFIG_HOME", ".config") / "puretor" / "torrc"


_TIME_UNITS = {"": 1, "second": 1, "seconds": 1, "minute": 60, "minutes": 60}
_TIME_UNITS |= {"hour": 3600, "hours": 3600, "day": 86400, "days": 86400}
_TIME_UNITS |= {"week": 604800, "weeks": 604800, "month": 2629728, "months": 2629728}
_MSEC_UNITS = {"": 1, "msec": 1, "millisecond": 1, "milliseconds": 1}
_MSEC_UNITS |= {unit: mult * 1000 for unit, mult in _TIME_UNITS.items() if unit[:5] != "month"}
_NUMBER_UNIT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")


def parse_interval(text: str, msec: bool = False) -> float:
    """C tor's INTERVAL (seconds) / MSEC_INTERVAL (milliseconds): ``"10 minutes"``, ``"30"``."""
    m = _NUMBER_UNIT.fullmatch(text)
    units = _MSEC_UNITS if msec else _TIME_UNITS
    if not m:
        raise ValueError(f"'{text}' is not a number with an optional time unit")
    unit = m.group(2).lower()
    if unit not in units:
        raise ValueError(f"unknown time unit '{m.group(2)}' in '{text}'")
    return float(m.group(1)) * units[unit]


def _parse_bool(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(f"boolean must be 0 or 1, not '{text}'")
    return text == "1"


def _parse_posint(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"'{text}' is not a non-negative integer")
    return int(text)


def _parse_path(text: str) -> Path:
    if not text:
        raise ValueError("empty path")
    return Path(text).expanduser().absolute()


# --- SocksPort


@dataclass(frozen=True)
class SocksPortConfig:
    """One ``SocksPort [addr:]port|auto [flags]`` line (tor.1 "SocksPort")."""

    address: str  # IP literal without brackets
    port: int | Literal["auto"]
    isolate_socks_auth: bool = True
    isolate_client_addr: bool = True
    isolate_client_protocol: bool = False
    isolate_dest_addr: bool = False
    isolate_dest_port: bool = False
    extended_errors: bool = False
    prefer_socks_no_auth: bool = False  # also implied by NoIsolateSOCKSAuth (as C tor)
    session_group: int | None = None  # ports in one group may share circuits

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


DEFAULT_SOCKS_PORT = SocksPortConfig("127.0.0.1", 9050)

_SOCKS_FLAGS = {
    "isolatesocksauth": "isolate_socks_auth",
    "isolateclientaddr": "isolate_client_addr",
    "isolateclientprotocol": "isolate_client_protocol",
    "isolatedestaddr": "isolate_dest_addr",
    "isolatedestport": "isolate_dest_port",
    "extendederrors": "extended_errors",
    "prefersocksnoauth": "prefer_socks_no_auth",
}
# C tor flags we do not implement, with C tor's default.  Setting one to its default
# is a harmless no-op; anything else is refused (None: no value is a no-op).
_SOCKS_FLAG_NOOPS: dict[str, bool | None] = {
    "ipv4traffic": True,
    "ipv6traffic": True,
    "dnsrequest": True,
    "oniontraffic": True,
    "preferipv6": False,
    "oniontrafficonly": False,
    "cacheipv4dns": False,
    "cacheipv6dns": False,
    "cachedns": False,
    "useipv4cache": False,
    "useipv6cache": False,
    "usednscache": False,
    "keepaliveisolatesocksauth": False,
    "groupwritable": False,
    "worldwritable": False,
    "relaxdirmodecheck": False,
    "preferipv6automap": None,  # only matters with AutomapHostsOnResolve, which we lack
}


def _parse_socks_address(addrport: str) -> tuple[str, int | Literal["auto"]]:
    if addrport.lower() == "auto":
        return "127.0.0.1", "auto"
    if addrport.isdigit():
        port = int(addrport)
        if port > 65535:
            raise ValueError(f"port {port} is out of range 0..65535")
        return "127.0.0.1", port
    if addrport.lower().startswith("unix:"):
        raise ValueError("unix socket SocksPorts are not supported")
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*)(?::([^:]*))?", addrport)
    if not m:
        raise ValueError(f"cannot parse address '{addrport}' (IPv6 needs brackets: [::1]:9050)")
    host, port_text = m.group(1), m.group(2)
    if host.lower() == "localhost":
        host = "127.0.0.1"
    try:
        address = str(ipaddress.ip_address(host[1:-1] if host.startswith("[") else host))
    except ValueError:
        raise ValueError(f"'{host}' is not an IP address") from None
    if ":" in address and not host.startswith("["):
        raise ValueError("IPv6 addresses need brackets, e.g. [::1]:9050")
    if port_text is None or port_text in ("", "0"):
        raise ValueError("address given but no port")
    if port_text.lower() == "auto":
        return address, "auto"
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"'{port_text}' is not a port (1..65535 or auto)")
    return address, int(port_text)


def _parse_socks_port(value: str) -> SocksPortConfig | None:
    """One SocksPort value; None for ``0`` (disabled)."""
    words = value.split()
    if not words:
        raise ValueError("SocksPort needs a port")
    address, port = _parse_socks_address(words[0])
    cfg = SocksPortConfig(address, port)
    changes: dict[str, Any] = {}
    for flag in words[1:]:
        lower = flag.lower()
        if lower.startswith("sessiongroup="):
            group = lower.partition("=")[2]
            if not group.isdigit():
                raise ValueError(f"invalid SocksPort flag '{flag}'")
            if "session_group" in changes:
                raise ValueError("more than one SessionGroup on a SocksPort")
            changes["session_group"] = int(group)
            continue
        enable = not lower.startswith("no")
        name = lower if enable else lower[2:]
        if name not in _SOCKS_FLAGS and name.endswith("s") and name[:-1] in _SOCKS_FLAGS:
            name = name[:-1]  # C tor accepts plurals: IsolateDestPorts
        if name in _SOCKS_FLAGS:
            changes[_SOCKS_FLAGS[name]] = enable
        elif name in _SOCKS_FLAG_NOOPS:
            default = _SOCKS_FLAG_NOOPS[name]
            if default is not None and enable != default:
                raise ValueError(f"SocksPort flag '{flag}' is not supported by puretor")
        else:
            raise ValueError(f"unknown SocksPort flag '{flag}'")
    cfg = replace(cfg, **changes)
    if not cfg.isolate_socks_auth:
        cfg = replace(cfg, prefer_socks_no_auth=True)
    return None if port == 0 else cfg


# --- Log


SEVERITIES = ("debug", "info", "notice", "warn", "err")  # least to most severe
PYTHON_LEVELS = {"debug": 10, "info": 20, "notice": 25, "warn": 30, "err": 40}
_LOG_DOMAIN_WORDS = (
    "general crypto net config fs protocol mm http app control circ rend bug dir dirserv or "
    "edge acct hist handshake heartbeat channel sched guard consdiff dos process pt btrack "
    "mesg"
)
LOG_DOMAINS = frozenset(_LOG_DOMAIN_WORDS.split())


@dataclass(frozen=True)
class LogRange:
    min_severity: str  # one of SEVERITIES
    max_severity: str = "err"
    domains: tuple[str, ...] = ()  # C tor domain names; "~x" excludes; () = all


@dataclass(frozen=True)
class LogSpec:
    """One ``Log`` line: ``[domains]min[-max] ... stdout|stderr|syslog|file PATH``."""

    ranges: tuple[LogRange, ...]
    destination: Literal["stdout", "stderr", "syslog", "file"]
    path: Path | None = None

    @property
    def min_level(self) -> int:
        """The most verbose Python logging level this destination wants."""
        return min(PYTHON_LEVELS[r.min_severity] for r in self.ranges)


DEFAULT_LOG = LogSpec((LogRange("notice"),), "stdout")


def _parse_severity(text: str) -> str:
    if text.lower() not in SEVERITIES:
        raise ValueError(f"unknown severity '{text}' (use {', '.join(SEVERITIES)})")
    return text.lower()


def _parse_log(value: str) -> LogSpec:
    ranges: list[LogRange] = []
    rest = value.strip()
    while rest and rest.split(None, 1)[0].lower() not in ("stdout", "stderr", "syslog", "file"):
        domains: tuple[str, ...] = ()
        if rest.startswith("["):
            close = rest.find("]")
            if close < 0:
                raise ValueError("unterminated [domain list]")
            names = [d.strip().lower() for d in rest[1:close].split(",")]
            for d in names:
                if d != "*" and d.lstrip("~") not in LOG_DOMAINS:
                    raise ValueError(f"no such logging domain as '{d}'")
            domains = () if "*" in names else tuple(names)
            rest = rest[close + 1 :].lstrip()
        elif any(not r.domains for r in ranges):
            raise ValueError("more than one severity range without a [domain list]")
        word, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        lo, dash, hi = word.partition("-")
        rng = LogRange(_parse_severity(lo), _parse_severity(hi) if dash else "err", domains)
        if SEVERITIES.index(rng.min_severity) > SEVERITIES.index(rng.max_severity):
            raise ValueError(f"severity range '{word}' is empty")
        ranges.append(rng)
    if not ranges:
        raise ValueError("no severity given, e.g. 'Log notice stdout'")
    dest, _, target = rest.partition(" ")
    dest, target = dest.lower(), target.strip()
    if dest in ("", "stdout", "stderr", "syslog") and not target:
        return LogSpec(tuple(ranges), dest or "stdout")  # type: ignore[arg-type]
    if dest == "file" and target:
        return LogSpec(tuple(ranges), "file", Path(target).expanduser())
    raise ValueError("destination must be stdout, stderr, syslog or 'file PATH'")


# --- the configuration


@dataclass(frozen=True)
class TorConfig:
    """Everything a puretor client reads from torrc.  Times are in seconds."""

    socks_ports: tuple[SocksPortConfig, ...] = (DEFAULT_SOCKS_PORT,)
    data_directory: Path = field(default_factory=default_data_directory)
    dir_authorities: tuple[Authority, ...] = ()  # () = the built-in authorities
    fallback_dirs: tuple[FallbackDir, ...] = ()
    use_default_fallback_dirs: bool = True
    testing_tor_network: bool = False
    logs: tuple[LogSpec, ...] = (DEFAULT_LOG,)
    safe_logging: bool | Literal["relay"] = True
    log_time_granularity: float = 1.0
    max_circuit_dirtiness: float = 600.0
    new_circuit_period: float = 30.0
    circuit_build_timeout: float | None = None  # None: learn it (initially 60 s)
    learn_circuit_build_timeout: bool = True
    circuit_stream_timeout: float | None = None  # None: C tor's adaptive default
    socks_timeout: float = 120.0
    max_client_circuits_pending: int = 32
    use_entry_guards: bool = True
    num_entry_guards: int | None = None  # None: consensus guard-n-primary-guards-to-use
    client_use_ipv4: bool = True
    client_use_ipv6: bool = True
    client_prefer_ipv6_orport: bool | None = None  # None: auto
    enforce_distinct_subnets: bool | None = None  # None: on unless TestingTorNetwork
    client_reject_internal_addresses: bool | None = None  # None: on unless TestingTorNetwork
    client_dns_reject_internal_addresses: bool | None = None  # likewise
    client_onion_auth_dir: Path | None = None
    pid_file: Path | None = None  # tor-client writes its PID here while it runs
    conflux_enabled: bool | None = None  # None: auto, as the consensus says (cfx_enabled)
    conflux_client_ux: str = "throughput"  # what a conflux exit should optimise for us

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
        return _build(_merge([entries, _option_entries(options)]))

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
        return _build(_merge([_option_entries(options)]))


_Scalar = str | int | float | os.PathLike[str]
OptionValue = _Scalar | Sequence[_Scalar]


def _option_entries(options: dict[str, OptionValue]) -> list[_Entry]:
    """Keyword options (`TorConfig.from_options`) as torrc entries."""
    out: list[_Entry] = []
    for name, value in options.items():
        where = f"option {name}="
        key = _canonical(name, where)
        values = list(value) if isinstance(value, list | tuple) else [value]
        if not values:
            out.append(_Entry(key, "/", "", where))  # an empty list clears the option
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
            out.append(_Entry(key, "", text.strip(), where))
    return out


def _or_testnet_default(value: bool | None, cfg: TorConfig) -> bool:
    return (not cfg.testing_tor_network) if value is None else value


class _Entry(NamedTuple):
    key: str  # canonical, magic stripped
    magic: str  # "", "+" or "/"
    value: str
    where: str  # "torrc:12" / "command line argument 3"


def _entries(lines: list[tuple[str, str, int]], source: str, cmdline: bool) -> list[_Entry]:
    out = []
    for key, value, line in lines:
        magic = key[0] if key[:1] in ("+", "/") else ""
        where = f"{source} argument {line}" if cmdline else f"{source}:{line}"
        if magic == "/" and value:
            raise ConfigError(f"{where}: '/{key[1:]}' clears the option and takes no value")
        out.append(_Entry(key[len(magic) :], magic, value, where))
    return out


def _merge(domains: list[list[_Entry]]) -> dict[str, list[_Entry]]:
    """Apply C tor's domain rules: a higher domain replaces, '+' appends, '/' clears."""
    merged: dict[str, list[_Entry]] = {}
    for entries in domains:
        seen: set[str] = set()
        for e in entries:
            if e.magic == "/":
                merged[e.key] = []
                seen.add(e.key)
                continue
            if e.key not in seen:
                seen.add(e.key)
                if e.magic != "+":
                    merged[e.key] = []
            merged.setdefault(e.key, []).append(e)
    return merged


def _single(merged: dict[str, list[_Entry]], name: str) -> _Entry | None:
    entries = merged.get(name) or []
    if len(entries) > 1:
        log.warning(
            "Option %s used more than once (%s); using the last value",
            name,
            ", ".join(e.where for e in entries),
        )
    return entries[-1] if entries else None


_KIND_PARSERS: dict[str, Callable[[str], Any]] = {
    "bool": _parse_bool,
    "posint": _parse_posint,
    "path": _parse_path,
    "interval": parse_interval,
    "msec": lambda text: parse_interval(text, msec=True) / 1000,
    "autobool": lambda text: None if text == "auto" else _parse_bool(text),
    "safelogging": lambda text: "relay" if text.lower() == "relay" else _parse_bool(text),
    "confluxux": lambda text: _parse_conflux_ux(text),
}


def _parse_conflux_ux(text: str) -> str:
    if text not in UX_BY_NAME:
        raise ValueError(f"must be one of {', '.join(UX_BY_NAME)}")
    return text


# Option -> (TorConfig field, extra check returning an error message or None).
_SINGLETONS: dict[str, tuple[str, Callable[[Any], str | None] | None]] = {
    "DataDirectory": ("data_directory", None),
    "UseDefaultFallbackDirs": ("use_default_fallback_dirs", None),
    "TestingTorNetwork": ("testing_tor_network", None),
    "SafeLogging": ("safe_logging", None),
    "LogTimeGranularity": ("log_time_granularity", lambda v: _check_granularity(round(v * 1000))),
    "MaxCircuitDirtiness": (
        "max_circuit_dirtiness",
        lambda v: None if 10 <= v <= 30 * 86400 else "must be between 10 seconds and 30 days",
    ),
    "NewCircuitPeriod": (
        "new_circuit_period",
        lambda v: None if v >= 1 else "must be at least 1 second",
    ),
    "CircuitBuildTimeout": ("circuit_build_timeout", None),
    "LearnCircuitBuildTimeout": ("learn_circuit_build_timeout", None),
    "CircuitStreamTimeout": (
        "circuit_stream_timeout",
        lambda v: None if v == 0 or v >= 10 else "must be 0 (automatic) or at least 10 seconds",
    ),
    "SocksTimeout": ("socks_timeout", lambda v: None if v > 0 else "must be positive"),
    "MaxClientCircuitsPending": (
        "max_client_circuits_pending",
        lambda v: None if 1 <= v <= 1024 else "must be between 1 and 1024",
    ),
    "UseEntryGuards": ("use_entry_guards", None),
    "NumEntryGuards": ("num_entry_guards", None),
    "ClientUseIPv4": ("client_use_ipv4", None),
    "ClientUseIPv6": ("client_use_ipv6", None),
    "ClientPreferIPv6ORPort": ("client_prefer_ipv6_orport", None),
    "EnforceDistinctSubnets": ("enforce_distinct_subnets", None),
    "ClientRejectInternalAddresses": ("client_reject_internal_addresses", None),
    "ClientDNSRejectInternalAddresses": ("client_dns_reject_internal_addresses", None),
    "ClientOnionAuthDir": ("client_onion_auth_dir", None),
    "PidFile": ("pid_file", None),
    "ConfluxEnabled": ("conflux_enabled", None),
    "ConfluxClientUX": ("conflux_client_ux", None),
}


def _check_granularity(msec: int) -> str | None:
    if msec > 0 and (1000 % msec == 0 or msec % 1000 == 0):
        return None
    return "must be a positive divisor or multiple of 1 second"


# "0 means the default" options, as in C tor.
_ZERO_IS_NONE = frozenset({"CircuitBuildTimeout", "CircuitStreamTimeout", "NumEntryGuards"})


def _build(merged: dict[str, list[_Entry]]) -> TorConfig:
    values: dict[str, Any] = {}
    for name, (attr, check) in _SINGLETONS.items():
        entry = _single(merged, name)
        if entry is None:
            continue
        try:
            value = _KIND_PARSERS[_OPTIONS[name]](entry.value)
        except ValueError as exc:
            raise ConfigError(f"{entry.where}: bad value for {name}: {exc}") from None
        problem = check(value) if check is not None and value is not None else None
        if problem:
            raise ConfigError(f"{entry.where}: {name} {entry.value!r} {problem}")
        values[attr] = None if name in _ZERO_IS_NONE and value == 0 else value

    values["socks_ports"] = _build_socks_ports(merged.get("SocksPort"))
    if merged.get("Log"):
        values["logs"] = tuple(_parse_line(e, _parse_log, "Log") for e in merged["Log"])
    values["dir_authorities"] = tuple(
        _parse_line(e, _dir_parser("parse_dir_authority_line"), "DirAuthority")
        for e in merged.get("DirAuthority") or []
    )
    values["fallback_dirs"] = tuple(
        _parse_line(e, _dir_parser("parse_fallback_dir_line"), "FallbackDir")
        for e in merged.get("FallbackDir") or []
    )

    cfg = TorConfig(**values)
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
    if not cfg.client_use_ipv4 and not cfg.client_use_ipv6:
        raise ConfigError("ClientUseIPv4 and ClientUseIPv6 are both 0: no way to reach relays")
    return cfg


_T = TypeVar("_T")


def _parse_line(entry: _Entry, parse: Callable[[str], _T], name: str) -> _T:
    try:
        return parse(entry.value)
    except ValueError as exc:  # ConfigError and DocumentError are ValueErrors too
        raise ConfigError(f"{entry.where}: bad {name} line: {exc}") from None


def _dir_parser(func: str) -> Callable[[str], Any]:
    # Lazy: puretor.dir.authorities pulls in the directory layer.
    from puretor.dir import authorities

    parser: Callable[[str], Any] = getattr(authorities, func)
    return parser


def _build_socks_ports(entries: list[_Entry] | None) -> tuple[SocksPortConfig, ...]:
    if entries is None:
        return (DEFAULT_SOCKS_PORT,)
    ports: list[SocksPortConfig] = []
    zero = nonzero = False
    for e in entries:
        cfg = _parse_line(e, _parse_socks_port, "SocksPort")
        if cfg is None:
            zero = True
            continue
        nonzero = True
        if not cfg.is_loopback:
            log.warning(
                "%s: SocksPort on %s is reachable from other hosts: anyone who can "
                "connect can use your Tor client, and SOCKS traffic is unencrypted",
                e.where,
                cfg.address,
            )
        ports.append(cfg)
    if zero and nonzero:
        raise ConfigError("you gave a nonzero SocksPort along with 'SocksPort 0'; which one?")
    return tuple(ports)


def load_config(argv: Sequence[str]) -> TorConfig:
    """Command line (without the program name) + torrc files -> validated `TorConfig`."""
    cmd = parse_command_line(argv)
    domains: list[list[_Entry]] = []
    missing_ok = "--ignore-missing-torrc" in cmd.flags or "--allow-missing-torrc" in cmd.flags
    defaults = cmd.flags.get("--defaults-torrc")
    if defaults:
        domains.append(_read_torrc(Path(defaults).expanduser(), missing_ok=True))
    if cmd.torrc_path is not None:
        domains.append(_read_torrc(cmd.torrc_path, missing_ok=missing_ok))
    else:
        domains.append(_read_torrc(default_torrc_path(), missing_ok=True))
    domains.append(_entries(cmd.overrides, "command line", cmdline=True))
    return _build(_merge(domains))


def _read_torrc(path: Path, missing_ok: bool) -> list[_Entry]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return []
        raise ConfigError(f"configuration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    return _entries(parse_torrc(text, str(path)), str(path), cmdline=False)
