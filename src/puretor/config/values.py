"""Value kinds of torrc options: how a value is read, checked and written back.

Each `Kind` has C tor's type name (what ``GETINFO config/names`` reports), a parser
from torrc text and a formatter back to it (``GETCONF``, ``config/defaults``).  The
syntax follows C tor's ``config.c`` and ``tor.1``: ``0``/``1`` booleans, ``auto``,
``10 minutes`` intervals, ``SocksPort`` and ``Log`` lines.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Kind:
    """How one option's value is read from torrc text and written back."""

    ctor_type: str
    parse: Callable[[str], Any]
    format: Callable[[Any], str] = str


# --- scalars

_TIME_UNITS = {"": 1, "second": 1, "seconds": 1, "minute": 60, "minutes": 60}
_TIME_UNITS |= {"hour": 3600, "hours": 3600, "day": 86400, "days": 86400}
_TIME_UNITS |= {"week": 604800, "weeks": 604800, "month": 2629728, "months": 2629728}
_MSEC_UNITS = {"": 1, "msec": 1, "millisecond": 1, "milliseconds": 1}
# A bare number stays milliseconds (C tor's time_msec_units: "" is 1).
_MSEC_UNITS |= {u: m * 1000 for u, m in _TIME_UNITS.items() if u and u[:5] != "month"}
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


# C tor's memory_units (unitparse.c): bytes, KB, MB, GB, TB (powers of 2), and bits.
_MEMORY_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1}
for _exp, _names in (
    (10, ("kb", "kbyte", "kbytes", "kilobyte", "kilobytes")),
    (20, ("m", "mb", "mbyte", "mbytes", "megabyte", "megabytes")),
    (30, ("gb", "gbyte", "gbytes", "gigabyte", "gigabytes")),
    (40, ("tb", "tbyte", "tbytes", "terabyte", "terabytes")),
):
    _bits = {"kb": "kilo", "m": "mega", "gb": "giga", "tb": "tera"}[_names[0]]
    _MEMORY_UNITS |= {name: 1 << _exp for name in _names}
    _MEMORY_UNITS |= {
        name: 1 << (_exp - 3)
        for name in (f"{_bits}bits", f"{_bits}bit", f"{_names[0][0]}bits", f"{_names[0][0]}bit")
    }


def parse_memunit(text: str) -> int:
    """C tor's MEMUNIT: ``"512 MB"``, ``"1.5 GBytes"``, ``"65536"`` (bytes)."""
    m = _NUMBER_UNIT.fullmatch(text)
    if not m:
        raise ValueError(f"'{text}' is not a number with an optional memory unit")
    unit = m.group(2).lower()
    if unit not in _MEMORY_UNITS:
        raise ValueError(f"unknown memory unit '{m.group(2)}' in '{text}'")
    return int(float(m.group(1)) * _MEMORY_UNITS[unit])


def _parse_bool(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(f"boolean must be 0 or 1, not '{text}'")
    return text == "1"


def _format_bool(value: Any) -> str:
    return "1" if value else "0"


def _parse_posint(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"'{text}' is not a non-negative integer")
    return int(text)


def _parse_path(text: str) -> Path:
    if not text:
        raise ValueError("empty path")
    return Path(text).expanduser().absolute()


def _format_number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _optional(kind: Kind) -> Kind:
    """The same kind, where ``None`` (unset) formats as an empty value."""
    return Kind(kind.ctor_type, kind.parse, lambda v: "" if v is None else kind.format(v))


BOOL = Kind("Boolean", _parse_bool, _format_bool)
OPTIONAL_BOOL = _optional(BOOL)  # unset: a default that depends on other options
AUTOBOOL = Kind(
    "Boolean+Auto",
    lambda text: None if text == "auto" else _parse_bool(text),
    lambda v: "auto" if v is None else _format_bool(v),
)
POSINT = Kind("Integer", _parse_posint)
MEMUNIT = Kind("DataSize", parse_memunit, lambda v: f"{v} bytes")
FLOAT = Kind("Float", float, _format_number)
# Written back as C tor's GETCONF does (config_encode): seconds with no unit - controllers
# such as txtorcon parse a TimeInterval as an integer.
INTERVAL = Kind("TimeInterval", parse_interval, lambda v: f"{v:g}")
MSEC_INTERVAL = Kind(
    "TimeMsecInterval",
    lambda text: parse_interval(text, msec=True) / 1000,
    lambda v: f"{v * 1000:g} msec",
)
FILENAME = _optional(Kind("Filename", _parse_path))
SAFELOGGING = Kind(
    "String",
    lambda text: "relay" if text.lower() == "relay" else _parse_bool(text),
    lambda v: v if isinstance(v, str) else _format_bool(v),
)


def choice(*names: str) -> Kind:
    """A string option that must be one of ``names``."""

    def parse(text: str) -> str:
        if text not in names:
            raise ValueError(f"must be one of {', '.join(names)}")
        return text

    return Kind("String", parse)


def line_list(parse_line: Callable[[str], Any], format_line: Callable[[Any], str]) -> Kind:
    """A repeatable option: the value is a tuple with one parsed item per line."""
    return Kind("LineList", parse_line, format_line)


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
    prefer_ipv6_automap: bool = True  # SOCKS5 RESOLVE of an automapped name: an IPv6 answer
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
    "preferipv6automap": "prefer_ipv6_automap",
}
_FLAG_NAMES = {
    "isolate_socks_auth": "IsolateSOCKSAuth",
    "isolate_client_addr": "IsolateClientAddr",
    "isolate_client_protocol": "IsolateClientProtocol",
    "isolate_dest_addr": "IsolateDestAddr",
    "isolate_dest_port": "IsolateDestPort",
    "extended_errors": "ExtendedErrors",
    "prefer_socks_no_auth": "PreferSOCKSNoAuth",
    "prefer_ipv6_automap": "PreferIPv6Automap",
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
}


def parse_listen_address(
    addrport: str, default_port: int | None = None
) -> tuple[str, int | Literal["auto"]]:
    """``[addr:]port|auto`` as C tor reads it for its listeners (loopback by default)."""
    if addrport.lower() == "auto":
        return "127.0.0.1", "auto"
    if addrport.isdigit():
        port = int(addrport)
        if port > 65535:
            raise ValueError(f"port {port} is out of range 0..65535")
        return "127.0.0.1", port
    if addrport.lower().startswith("unix:"):
        raise ValueError("unix socket ports are not supported by puretor")
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
        if default_port is not None and port_text is None:
            return address, default_port
        raise ValueError("address given but no port")
    if port_text.lower() == "auto":
        return address, "auto"
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"'{port_text}' is not a port (1..65535 or auto)")
    return address, int(port_text)


def parse_socks_port(value: str) -> SocksPortConfig | None:
    """One SocksPort value; None for ``0`` (disabled)."""
    words = value.split()
    if not words:
        raise ValueError("SocksPort needs a port")
    address, port = parse_listen_address(words[0])
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


def format_socks_port(cfg: SocksPortConfig) -> str:
    host = f"[{cfg.address}]" if ":" in cfg.address else cfg.address
    words = [f"{host}:{cfg.port}"]
    defaults = DEFAULT_SOCKS_PORT
    for attr, name in _FLAG_NAMES.items():
        value = getattr(cfg, attr)
        if value != getattr(defaults, attr) and not (
            attr == "prefer_socks_no_auth" and not cfg.isolate_socks_auth
        ):
            words.append(name if value else f"No{name}")
    if cfg.session_group is not None:
        words.append(f"SessionGroup={cfg.session_group}")
    return " ".join(words)


# --- Log

SEVERITIES = ("debug", "info", "notice", "warn", "err")  # least to most severe
PYTHON_LEVELS = {"debug": 10, "info": 20, "notice": 25, "warn": 30, "err": 40}
LOG_DOMAINS = frozenset(
    (
        "general crypto net config fs protocol mm http app control circ rend bug dir dirserv or "
        "edge acct hist handshake heartbeat channel sched guard consdiff dos process pt btrack "
        "mesg"
    ).split()
)


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


def parse_log(value: str) -> LogSpec:
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


def format_log(spec: LogSpec) -> str:
    words = []
    for r in spec.ranges:
        prefix = f"[{','.join(r.domains)}]" if r.domains else ""
        span = r.min_severity if r.max_severity == "err" else f"{r.min_severity}-{r.max_severity}"
        words.append(prefix + span)
    words.append(spec.destination if spec.path is None else f"file {spec.path}")
    return " ".join(words)


# --- address policies (SocksPolicy)


@dataclass(frozen=True)
class PolicyRule:
    accept: bool
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None  # None: every address
    family: int | None = None  # with network None: 4 or 6 for "*4"/"*6", None for "*"

    def matches(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        return self.family is None or address.version == self.family


# C tor's "private" (policies.c private_nets): what no exit should reach on our behalf.
_PRIVATE_NETS = (
    "0.0.0.0/8 169.254.0.0/16 127.0.0.0/8 192.168.0.0/16 10.0.0.0/8 172.16.0.0/12 "
    "::/8 fc00::/7 fe80::/10 fec0::/10 ff00::/8 ::/127"
).split()


def _policy_host(target: str) -> str:
    """``ADDR[/MASK]`` of a policy target, its ``:PORTS`` dropped; IPv6 in brackets."""
    if target.startswith("["):
        close = target.find("]")
        if close < 0:
            raise ValueError(f"unterminated IPv6 address in {target!r}")
        mask = target[close + 1 :].split(":", 1)[0]
        if mask and not mask.startswith("/"):
            raise ValueError(f"unexpected {mask!r} after the address in {target!r}")
        return target[1:close] + mask
    return target.split(":", 1)[0]


def parse_policy_entries(value: str) -> tuple[PolicyRule, ...]:
    """``accept|reject ADDR[/MASK][:PORTS], ...`` as in an exit policy; ports are ignored
    (C tor's SocksPolicy: "port specifiers are ignored")."""
    rules: list[PolicyRule] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        action, _, target = item.partition(" ")
        action = action.lower()
        if action not in ("accept", "reject", "accept6", "reject6"):
            raise ValueError(f"policy entry {item!r} must start with accept or reject")
        if not target.strip():
            raise ValueError(f"policy entry {item!r} names no address")
        accept = action.startswith("accept")
        host = _policy_host(target.strip())
        if host in ("*", "*4", "*6"):
            rules.append(PolicyRule(accept, None, {"*": None, "*4": 4, "*6": 6}[host]))
        elif host == "private":
            rules.extend(PolicyRule(accept, ipaddress.ip_network(n)) for n in _PRIVATE_NETS)
        else:
            try:
                network = ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise ValueError(f"{host!r} in {item!r} is not an address or network") from None
            rules.append(PolicyRule(accept, network))
    return tuple(rules)


def policy_permits(rules: tuple[PolicyRule, ...], address: str) -> bool:
    """The first matching rule decides; no match accepts (C tor's SocksPolicy rule)."""
    try:
        addr = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return True  # not an IP peer (a Unix socket): policies are about addresses
    for rule in rules:
        if rule.matches(addr):
            return rule.accept
    return True


def format_policy_rule(rule: PolicyRule) -> str:
    word = "accept" if rule.accept else "reject"
    if rule.network is None:
        return f"{word} *{rule.family or ''}"
    net = rule.network
    text = f"[{net.network_address}]" if net.version == 6 else str(net.network_address)
    return f"{word} {text}/{net.prefixlen}"


# --- the other application ports (HTTPTunnelPort, DNSPort, TransPort) and MetricsPort


def app_port_kind(option: str) -> Kind:
    """``Option [addr:]port|auto|0 [flags]``: SocksPort's grammar and isolation flags
    (C tor parses every client port with the same parse_port_config)."""

    def parse(value: str) -> SocksPortConfig | None:
        try:
            return parse_socks_port(value)
        except ValueError as exc:
            raise ValueError(str(exc).replace("SocksPort", option)) from None

    return line_list(parse, lambda c: "0" if c is None else format_socks_port(c))


@dataclass(frozen=True)
class MetricsPortConfig:
    """One ``MetricsPort [addr:]port [format]`` line."""

    address: str
    port: int | Literal["auto"]
    format: str = "prometheus"


def parse_metrics_port(value: str) -> MetricsPortConfig | None:
    words = value.split()
    if not words or len(words) > 2:
        raise ValueError("MetricsPort takes [address:]port and an optional format")
    address, port = parse_listen_address(words[0])
    fmt = words[1].lower() if len(words) == 2 else "prometheus"
    if fmt != "prometheus":
        raise ValueError(f"unknown MetricsPort format '{words[1]}' (only prometheus)")
    return None if port == 0 else MetricsPortConfig(address, port, fmt)


def format_metrics_port(cfg: MetricsPortConfig | None) -> str:
    if cfg is None:
        return "0"
    host = f"[{cfg.address}]" if ":" in cfg.address else cfg.address
    return f"{host}:{cfg.port} {cfg.format}"


def policy_permits_default_reject(rules: tuple[PolicyRule, ...], address: str) -> bool:
    """MetricsPortPolicy: first match wins, and unmatched (or no policy) is rejected."""
    try:
        addr = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    for rule in rules:
        if rule.matches(addr):
            return rule.accept
    return False


def _parse_suffixes(text: str) -> tuple[str, ...]:
    """AutomapHostsSuffixes: a comma-separated list (C tor's CSV)."""
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    for s in items:
        if not all(c.isalnum() or c in "-._" for c in s):
            raise ValueError(f"'{s}' is not a host name suffix")
    return items


SUFFIXES = Kind("CommaList", _parse_suffixes, ",".join)


def _parse_map_address(text: str) -> tuple[str, str]:
    """``MapAddress address newaddress``: the pair; C tor checks the pair itself only
    when it applies the mapping (an invalid one is skipped with a warning there)."""
    words = text.split()
    if len(words) != 2:
        raise ValueError("MapAddress needs an address and a new address")
    return words[0], words[1]


MAP_ADDRESS = line_list(_parse_map_address, " ".join)


def _virtual_network(version: int, max_prefix: int) -> Kind:
    """VirtualAddrNetworkIPv4/IPv6 ``addr/bits`` (C tor: at most 16 bits of prefix for
    IPv4 and 104 for IPv6, so the network has room)."""

    def parse(text: str) -> Any:
        raw = text.strip()
        if version == 6 and raw.startswith("["):
            close = raw.find("]")
            raw = raw[1:close] + raw[close + 1 :] if close > 0 else raw
        try:
            net = ipaddress.ip_network(raw, strict=False)
        except ValueError:
            raise ValueError(f"'{text}' is not an IPv{version} network (ADDR/BITS)") from None
        if net.version != version:
            raise ValueError(f"'{text}' is not an IPv{version} network")
        if net.prefixlen > max_prefix:
            raise ValueError(f"a prefix of more than {max_prefix} bits leaves too few addresses")
        return net

    def fmt(net: Any) -> str:
        return f"[{net.network_address}]/{net.prefixlen}" if version == 6 else str(net)

    return Kind("String", parse, fmt)


VIRTUAL_IPV4 = _virtual_network(4, 16)
VIRTUAL_IPV6 = _virtual_network(6, 104)


# --- Bridge


@dataclass(frozen=True)
class BridgeLine:
    """One ``Bridge [transport] IP:ORPort [fingerprint] [k=v ...]`` line (C tor's
    parse_bridge_line): where the bridge (or its transport's server) is, who it must be,
    and the arguments for the client side of its pluggable transport."""

    address: str  # IP literal, without brackets
    port: int
    rsa_id: bytes | None = None  # the fingerprint, when given
    transport: str | None = None  # e.g. "obfs4"; None: a plain bridge (TLS to its ORPort)
    args: tuple[tuple[str, str], ...] = ()  # k=v, in order

    @property
    def fingerprint(self) -> str | None:
        return self.rsa_id.hex().upper() if self.rsa_id is not None else None

    def describe(self) -> str:
        where = f"[{self.address}]" if ":" in self.address else self.address
        fp = f" ${self.fingerprint}" if self.rsa_id is not None else ""
        how = f"{self.transport} " if self.transport else ""
        return f"bridge {how}{where}:{self.port}{fp}"


_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_bridge_line(value: str) -> BridgeLine:
    words = value.split()
    if not words:
        raise ValueError("Too few arguments to Bridge line.")
    transport = None
    if _C_IDENTIFIER.match(words[0]):
        transport = words.pop(0)
        if not words:
            raise ValueError("Too few items to Bridge line.")
    addrport = words.pop(0)
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([0-9.]+)(?::(\d+))?", addrport)
    try:
        if m is None:
            raise ValueError
        address = str(ipaddress.ip_address(m.group(1) or m.group(3)))
        port = int(m.group(2) or m.group(4) or 443)  # C tor's default port for a bridge
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(f"Error parsing Bridge address '{addrport}'") from None
    fingerprint: str | None = None
    if transport is None:
        fingerprint = "".join(words) or None  # may be written in groups of 4
        words = []
    elif words and "=" not in words[0]:
        fingerprint = words.pop(0)
    rsa_id = None
    if fingerprint is not None:
        if len(fingerprint) != 40:
            raise ValueError("Key digest for Bridge is wrong length.")
        try:
            rsa_id = bytes.fromhex(fingerprint)
        except ValueError:
            raise ValueError("Unable to decode Bridge key digest.") from None
    args = []
    for word in words:
        key, eq, val = word.partition("=")
        if not eq or not key:
            raise ValueError(f"'{word}' is not a k=v item.")
        args.append((key, val))
    return BridgeLine(address, port, rsa_id, transport, tuple(args))


def format_bridge_line(b: BridgeLine) -> str:
    where = f"[{b.address}]" if ":" in b.address else b.address
    words = [*([b.transport] if b.transport else []), f"{where}:{b.port}"]
    words += [b.fingerprint] if b.fingerprint else []
    words += [f"{k}={v}" for k, v in b.args]
    return " ".join(words)


# --- ClientTransportPlugin


@dataclass(frozen=True)
class TransportPlugin:
    """``ClientTransportPlugin NAME[,NAME] exec PATH [ARGS]`` (a managed proxy we start) or
    ``ClientTransportPlugin NAME[,NAME] socks5 IP:PORT`` (an external one already running)."""

    transports: tuple[str, ...]
    kind: Literal["exec", "socks5"]
    argv: tuple[str, ...] = ()  # exec
    address: tuple[str, int] | None = None  # socks5


def parse_transport_plugin(value: str) -> TransportPlugin:
    words = value.split()
    if len(words) < 3:
        raise ValueError("Too few arguments on ClientTransportPlugin line.")
    names = tuple(words[0].split(","))
    for name in names:
        if not _C_IDENTIFIER.match(name):
            raise ValueError(f"Transport name is not a C identifier ({name}).")
    kind = words[1]
    if kind == "exec":
        return TransportPlugin(names, "exec", argv=tuple(words[2:]))
    if kind == "socks5":
        if len(words) != 3:
            raise ValueError("Too many arguments on ClientTransportPlugin line.")
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", words[2])
        try:
            if m is None:
                raise ValueError
            address = str(ipaddress.ip_address(m.group(1) or m.group(3)))
            port = int(m.group(2) or m.group(4))
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            raise ValueError(f"Error parsing transport address '{words[2]}'") from None
        return TransportPlugin(names, "socks5", address=(address, port))
    if kind == "socks4":
        raise ValueError("socks4 transport proxies are not supported by puretor")
    raise ValueError(f"Strange ClientTransportPlugin field '{kind}'.")


def format_transport_plugin(p: TransportPlugin) -> str:
    head = f"{','.join(p.transports)} {p.kind}"
    if p.kind == "exec":
        return f"{head} {' '.join(p.argv)}"
    assert p.address is not None
    host = f"[{p.address[0]}]" if ":" in p.address[0] else p.address[0]
    return f"{head} {host}:{p.address[1]}"


# --- Socks4Proxy, Socks5Proxy, HTTPSProxy


def proxy_address(default_port: int) -> Kind:
    """``IP[:PORT]`` of an outbound proxy (C tor's default port when none is given).  Only
    IP literals: resolving a proxy's name would be a DNS request outside Tor."""

    def parse(text: str) -> tuple[str, int]:
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?|([0-9.]+)(?::(\d{1,5}))?", text)
        try:
            if m is None:
                raise ValueError
            host = str(ipaddress.ip_address(m.group(1) or m.group(3)))
            port = int(m.group(2) or m.group(4) or default_port)
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"'{text}' is not IP[:PORT] (puretor takes an IP address for a proxy)"
            ) from None
        return host, port

    def fmt(v: tuple[str, int]) -> str:
        return f"[{v[0]}]:{v[1]}" if ":" in v[0] else f"{v[0]}:{v[1]}"

    return _optional(Kind("String", parse, fmt))


STRING = _optional(Kind("String", str, str))
