"""GETINFO: each key's value, read from the client's public API and the daemon."""

from __future__ import annotations

import getpass
import os
import resource
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from puretor.app.control import formats
from puretor.config import OPTIONS, TorConfig

if TYPE_CHECKING:
    from puretor.app.control.server import ControlServer


class GetinfoError(Exception):
    """A key with no value: ``code`` 551 (no such thing here) or 552 (unknown key)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# C tor's BW/listener/event vocabulary, as `GETINFO events/names` etc. list it.
EVENT_NAMES = (
    "CIRC CIRC_MINOR STREAM ORCONN BW DEBUG INFO NOTICE WARN ERR NEWDESC ADDRMAP DESCCHANGED "
    "NS STATUS_GENERAL STATUS_CLIENT STATUS_SERVER GUARD STREAM_BW CLIENTS_SEEN NEWCONSENSUS "
    "BUILDTIMEOUT_SET SIGNAL CONF_CHANGED CONN_BW CELL_STATS CIRC_BW TRANSPORT_LAUNCHED "
    "HS_DESC HS_DESC_CONTENT NETWORK_LIVENESS"
).split()
SIGNAL_NAMES = (
    "RELOAD HUP SHUTDOWN DUMP USR1 DEBUG USR2 HALT TERM INT NEWNYM CLEARDNSCACHE HEARTBEAT "
    "ACTIVE DORMANT"
).split()
FEATURE_NAMES = ("VERBOSE_NAMES", "EXTENDED_EVENTS")
DEFAULT_EXIT_POLICY = (
    "reject *:25,reject *:119,reject *:135-139,reject *:445,reject *:563,reject *:1214,"
    "reject *:4661-4666,reject *:6346-6429,reject *:6699,reject *:6881-6999,accept *:*"
)

Getter = Callable[["ControlServer", str], str]
_EXACT: dict[str, tuple[Getter, str]] = {}
_PREFIX: dict[str, tuple[Getter, str]] = {}


def _key(name: str, doc: str) -> Callable[[Getter], Getter]:
    def register(fn: Getter) -> Getter:
        (_PREFIX if name.endswith("/*") else _EXACT)[name.removesuffix("*")] = (fn, doc)
        return fn

    return register


def getinfo(server: ControlServer, key: str) -> str:
    """The value of ``key``; raises `GetinfoError`."""
    entry = _EXACT.get(key)
    if entry is not None:
        return entry[0](server, key)
    for prefix, (fn, _doc) in _PREFIX.items():
        if key.startswith(prefix):
            return fn(server, key[len(prefix) :])
    raise GetinfoError(552, f'Unrecognized key "{key}"')


@_key("version", "The current version of Tor.")
def _version(server: ControlServer, _key: str) -> str:
    return server.version


@_key("config-file", 'Current location of the "torrc" file.')
def _config_file(server: ControlServer, _key: str) -> str:
    return str(server.daemon.torrc_path)


@_key("config-text", "Return the string that would be written by a saveconf command.")
def _config_text(server: ControlServer, _key: str) -> str:
    return config_text(server.tor.config)


def config_text(config: TorConfig) -> str:
    """The options that differ from their defaults, as torrc lines (C tor's minimal dump)."""
    defaults = type(config)()
    lines = []
    for name, spec in OPTIONS.items():
        value = getattr(config, spec.attr)
        if value != getattr(defaults, spec.attr):
            lines += [f"{name} {text}".rstrip() for text in spec.default_text(value)]
    return "\n".join(lines)


@_key("config/names", "List of configuration options, types, and documentation.")
def _config_names(_server: ControlServer, _key: str) -> str:
    return "\n".join(f"{name} {spec.kind.ctor_type}" for name, spec in OPTIONS.items())


@_key("config/defaults", "List of default values for configuration options.")
def _config_defaults(server: ControlServer, _key: str) -> str:
    defaults = type(server.tor.config)()
    lines = []
    for name, spec in OPTIONS.items():
        # As C tor: only the options that have a default value.
        texts = spec.default_text(getattr(defaults, spec.attr))
        lines += [f"{name} {text}" for text in texts if text]
    return "\n".join(lines)


@_key("info/names", "List of GETINFO options, types, and documentation.")
def _info_names(_server: ControlServer, _key: str) -> str:
    entries = [(k, d) for k, (_f, d) in _EXACT.items()]
    entries += [(k + "*", d) for k, (_f, d) in _PREFIX.items()]
    return "\n".join(f"{k} -- {d}" for k, d in sorted(entries))


@_key("events/names", "Events that the controller can ask for with SETEVENTS.")
def _events_names(_server: ControlServer, _key: str) -> str:
    return " ".join(EVENT_NAMES)


@_key("signal/names", "Signal names recognized by the SIGNAL command")
def _signal_names(_server: ControlServer, _key: str) -> str:
    return " ".join(SIGNAL_NAMES)


@_key("features/names", "What arguments can USEFEATURE take?")
def _features_names(_server: ControlServer, _key: str) -> str:
    return " ".join(FEATURE_NAMES)


@_key("process/pid", "Process id belonging to the main tor process.")
def _pid(_server: ControlServer, _key: str) -> str:
    return str(os.getpid())


@_key("process/uid", "User id running the tor process.")
def _uid(_server: ControlServer, _key: str) -> str:
    return str(os.getuid())


@_key("process/user", "Username under which the tor process is running.")
def _user(_server: ControlServer, _key: str) -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


@_key("process/descriptor-limit", "File descriptor limit.")
def _fd_limit(_server: ControlServer, _key: str) -> str:
    return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


@_key("net/listeners/*", "Bound addresses by type")
def _listeners(server: ControlServer, kind: str) -> str:
    if kind == "control":
        addresses = server.addresses
    elif kind in ("socks", "dns", "trans", "httptunnel", "metrics"):
        addresses = server.daemon.listener_addresses(kind)
    elif kind in ("or", "dir", "natd", "extor"):
        addresses = []  # a client has no relay, directory, NATD or ExtOR listeners
    else:
        raise GetinfoError(552, f'Unrecognized key "net/listeners/{kind}"')
    return " ".join(f'"{a}"' for a in addresses)


@_key("status/bootstrap-phase", "The last bootstrap phase status event that Tor sent.")
def _bootstrap_phase(server: ControlServer, _key: str) -> str:
    status = server.tor.bootstrap_status
    return formats.bootstrap_status(
        formats.BootstrapEvent(status.percent, status.tag, status.summary)
    )


@_key("status/circuit-established", "Whether we think client functionality is working.")
def _circuit_established(server: ControlServer, _key: str) -> str:
    return "1" if server.tor.is_bootstrapped else "0"


@_key(
    "status/enough-dir-info",
    "Whether we have enough up-to-date directory information to build circuits.",
)
def _enough_dir_info(server: ControlServer, _key: str) -> str:
    return "1" if server.tor.bootstrap_status.percent >= 75 else "0"


@_key("status/good-server-descriptor", "Whether our server descriptor is accepted.")
def _good_server_descriptor(_server: ControlServer, _key: str) -> str:
    raise GetinfoError(551, "Not running in server mode")


@_key("status/version/current", "Status of the current version.")
def _version_current(_server: ControlServer, _key: str) -> str:
    return "unknown"


@_key("status/clients-seen", "Breakdown of client countries seen by a bridge.")
def _clients_seen(_server: ControlServer, _key: str) -> str:
    raise GetinfoError(551, "Not running in server mode")


@_key("circuit-status", "List of current circuits originating here.")
def _circuit_status(server: ControlServer, _key: str) -> str:
    return "\n".join(formats.circuit_line(c) for c in server.tor.circuit_status())


@_key("stream-status", "List of current streams.")
def _stream_status(server: ControlServer, _key: str) -> str:
    return "\n".join(formats.stream_line(s, event=False) for s in server.tor.stream_status())


@_key("orconn-status", "A list of current OR connections.")
def _orconn_status(server: ControlServer, _key: str) -> str:
    return "\n".join(formats.channel_line(c, event=False) for c in server.tor.channel_status())


@_key("entry-guards", "Which nodes are we using as entry guards?")
def _entry_guards(server: ControlServer, _key: str) -> str:
    return "\n".join(f"{relay} {state}" for relay, state in server.tor.entry_guards())


def _relay_lines(server: ControlServer, match: Callable[[object], bool]) -> str:
    valid_after = server.tor.consensus_valid_after()
    relays = [r for r in server.tor.relays() if match(r)]
    return "\n".join(formats.router_status(r, valid_after) for r in relays)


@_key("ns/all", "Brief summary of router status (v2 directory format)")
def _ns_all(server: ControlServer, _key: str) -> str:
    return _relay_lines(server, lambda _r: True)


@_key("ns/id/*", "Brief summary of router status by ID (v2 directory format).")
def _ns_id(server: ControlServer, ident: str) -> str:
    want = ident.lstrip("$").split("~")[0].split("=")[0].upper()
    text = _relay_lines(server, lambda r: r.fingerprint == want)  # type: ignore[attr-defined]
    if not text:
        raise GetinfoError(552, f'Unrecognized key "ns/id/{ident}"')
    return text


@_key("ns/name/*", "Brief summary of router status by nickname (v2 directory format).")
def _ns_name(server: ControlServer, name: str) -> str:
    text = _relay_lines(server, lambda r: r.nickname.lower() == name.lower())  # type: ignore[attr-defined]
    if not text:
        raise GetinfoError(552, f'Unrecognized key "ns/name/{name}"')
    return text


@_key("traffic/read", "Bytes read since the process was started.")
def _traffic_read(server: ControlServer, _key: str) -> str:
    return str(server.tor.traffic[0])


@_key("traffic/written", "Bytes written since the process was started.")
def _traffic_written(server: ControlServer, _key: str) -> str:
    return str(server.tor.traffic[1])


@_key("uptime", "Uptime of the Tor daemon in seconds.")
def _uptime(server: ControlServer, _key: str) -> str:
    return str(int(time.monotonic() - server.daemon.started))


@_key("dormant", "Is Tor dormant (not building circuits because it's idle)?")
def _dormant(_server: ControlServer, _key: str) -> str:
    return "0"  # puretor never goes dormant


@_key("bw-event-cache", "Cached BW events for a short interval.")
def _bw_cache(server: ControlServer, _key: str) -> str:
    return " ".join(f"{r},{w}" for r, w in server.bandwidth_history)


@_key("accounting/enabled", "Is accounting currently enabled?")
def _accounting(_server: ControlServer, _key: str) -> str:
    return "0"


@_key("address", "IP address of this Tor host, if we can guess it.")
def _address(_server: ControlServer, _key: str) -> str:
    raise GetinfoError(551, "Address unknown")


@_key("fingerprint", "Fingerprint of this relay.")
def _fingerprint(_server: ControlServer, _key: str) -> str:
    raise GetinfoError(551, "Not running in server mode")


@_key("exit-policy/default", "The default value appended to the configured exit policy.")
def _exit_policy_default(_server: ControlServer, _key: str) -> str:
    return DEFAULT_EXIT_POLICY


@_key("exit-policy/*", "The exit policy of this onion router")
def _exit_policy(_server: ControlServer, _key: str) -> str:
    raise GetinfoError(552, "Not running in server mode")


@_key("ip-to-country/*", "Perform a GEOIP lookup")
def _ip_to_country(_server: ControlServer, _key: str) -> str:
    raise GetinfoError(551, "GeoIP data not loaded")


@_key("onions/current", "Onion services owned by the current control connection.")
def _onions_current(_server: ControlServer, _key: str) -> str:
    return ""


@_key("onions/detached", "Onion services detached from the control connection.")
def _onions_detached(_server: ControlServer, _key: str) -> str:
    return ""


@_key("address-mappings/*", "Current address mappings.")
def _address_mappings(server: ControlServer, kind: str) -> str:
    if kind not in ("all", "config", "cache", "control"):
        raise GetinfoError(552, f'Unrecognized key "address-mappings/{kind}"')
    if kind == "cache":
        return ""  # puretor keeps no DNS cache
    return "\n".join(server.tor.address_map.mappings(None if kind == "all" else kind))


def _microdescriptor(server: ControlServer, key: str, relay: str) -> str:
    text = server.tor.microdescriptor(relay)
    if text is None:
        raise GetinfoError(552, f'Unrecognized key "{key}"')
    return text.rstrip("\n")


@_key("md/id/*", "Microdescriptors by ID")
def _md_id(server: ControlServer, ident: str) -> str:
    return _microdescriptor(server, f"md/id/{ident}", "$" + ident.lstrip("$"))


@_key("md/name/*", "Microdescriptors by name")
def _md_name(server: ControlServer, name: str) -> str:
    return _microdescriptor(server, f"md/name/{name}", name)
