"""One controller's connection: authentication, then commands in order (control-spec §3)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from puretor.app.control.getinfo import EVENT_NAMES, FEATURE_NAMES, GetinfoError, getinfo
from puretor.config import OPTIONS
from puretor.config.options import canonical_name, parse_hs_port, with_changes
from puretor.errors import ConfigError, TorError
from puretor.hs.service import SECRET_KEY_HEADER
from puretor.proto import control as proto
from puretor.proto.controlauth import SERVER_NONCE_LEN, safecookie_hashes

if TYPE_CHECKING:
    from puretor.app.control.server import ControlServer

log = logging.getLogger("puretor")

BEFORE_AUTH = frozenset({"PROTOCOLINFO", "AUTHCHALLENGE", "AUTHENTICATE", "QUIT"})
# Options SETCONF may change while running: each is read where it is used, so the new
# value applies at once.  The rest need a restart of tor-client.
LIVE_OPTIONS = frozenset(
    (
        "SafeSocks TestSocks SocksPolicy SocksTimeout SafeLogging Log LogTimeGranularity "
        "CircuitStreamTimeout ClientRejectInternalAddresses ClientDNSRejectInternalAddresses "
        "HashedControlPassword __OwningControllerProcess __LeaveStreamsUnattached"
    ).split()
)
SIGNALS = {
    "RELOAD": "RELOAD",
    "HUP": "RELOAD",
    "SHUTDOWN": "SHUTDOWN",
    "INT": "SHUTDOWN",
    "HALT": "HALT",
    "TERM": "HALT",
    "DUMP": "DUMP",
    "USR1": "DUMP",
    "DEBUG": "DEBUG",
    "USR2": "DEBUG",
    "NEWNYM": "NEWNYM",
    "CLEARDNSCACHE": "CLEARDNSCACHE",
    "HEARTBEAT": "HEARTBEAT",
    "ACTIVE": "ACTIVE",
    "DORMANT": "DORMANT",
}

Handler = Callable[["ControlConnection", proto.ControlCommand], Awaitable[bytes]]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


class ControlConnection:
    def __init__(
        self, server: ControlServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.commands = proto.CommandReader()
        self.authenticated = False
        self.sent_protocolinfo = False
        self.safecookie_client_hash: bytes | None = None
        self.events: set[str] = set()
        self.owner = False
        self.closing = False
        self.hangup = False  # close once the current reply is sent (a failed auth...)

    # -- I/O --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.closing:
            return
        transport = self.writer.transport
        if transport.get_write_buffer_size() > 8 * 1024 * 1024:
            # A controller that subscribes to events and never reads: drop it rather
            # than keep its backlog in memory.
            log.warning("A controller is not reading its events; closing its connection.")
            self.close()
            return
        self.writer.write(data)

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.events = set()
            self.writer.close()

    async def run(self) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while not self.closing:
                cmd = self.commands.next_command()
                if cmd is None:
                    if self.commands.error is not None:
                        self.send(proto.reply(500, self.commands.error))
                        break
                    data = await self.reader.read(16 * 1024)
                    if not data:
                        break
                    self.commands.receive_data(data)
                    continue
                await self.handle(cmd)
                with contextlib.suppress(ConnectionError):
                    await self.writer.drain()
        with contextlib.suppress(ConnectionError, OSError):
            if not self.writer.is_closing():
                await self.writer.drain()
        self.close()

    async def handle(self, cmd: proto.ControlCommand) -> None:
        name = cmd.name
        if name == "QUIT":
            self.send(proto.reply(250, "closing connection"))
            self.close()
            return
        if not self.authenticated and name not in BEFORE_AUTH:
            self.send(proto.reply(514, "Authentication required."))
            self.close()
            return
        handler = COMMANDS.get(name)
        if handler is None:
            self.send(proto.reply(510, f'Unrecognized command "{cmd.keyword[:256]}"'))
            return
        try:
            self.send(await handler(self, cmd))
        except proto.ArgumentError as exc:
            self.send(proto.reply(513, str(exc)))
        if self.hangup:
            self.close()


# -- authentication ------------------------------------------------------------------------


@command("PROTOCOLINFO")
async def _protocolinfo(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    if conn.sent_protocolinfo and not conn.authenticated:
        conn.hangup = True
        return proto.reply(515, "Only one PROTOCOLINFO command allowed before AUTHENTICATE.")
    conn.sent_protocolinfo = True
    for word in cmd.args.split():
        if not word.isdigit():
            if not conn.authenticated:
                conn.hangup = True
            return proto.reply(513, f'No such version "{word[:64]}"')
    auth = conn.server.authenticator
    methods = f"METHODS={','.join(auth.methods)}"
    if auth.cookie_file is not None:
        methods += f" COOKIEFILE={proto.quote(str(auth.cookie_file))}"
    return (
        proto.Reply()
        .line("PROTOCOLINFO 1")
        .line(f"AUTH {methods}")
        .line(f"VERSION Tor={proto.quote(conn.server.version)}")
        .line("OK")
        .to_bytes()
    )


def _secret(conn: ControlConnection, args: str) -> bytes | None:
    """AUTHENTICATE's argument: a quoted string, or hex; None (connection closed) if bad."""
    text = args.strip()
    if not text:
        return b""
    if text.startswith('"'):
        value, end = proto.unquote(text)
        if text[end:].strip():
            raise proto.ArgumentError("Too many arguments to AUTHENTICATE.")
        return value.encode("latin-1")
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


@command("AUTHENTICATE")
async def _authenticate(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    try:
        secret = _secret(conn, cmd.args)
    except proto.ArgumentError as exc:
        conn.hangup = True
        return proto.reply(512, str(exc))
    if secret is None:
        conn.hangup = True
        return proto.reply(
            551,
            "Invalid hexadecimal encoding.  Maybe you tried a plain text password?  If so, "
            "the standard requires that you put it in double quotes.",
        )
    if conn.safecookie_client_hash is not None:
        expected, conn.safecookie_client_hash = conn.safecookie_client_hash, None
        import hmac

        if len(secret) != 32:
            problem: str | None = "Wrong length for safe cookie response."
        elif not hmac.compare_digest(secret, expected):
            problem = "Safe cookie response did not match expected value."
        else:
            problem = None
    else:
        problem = conn.server.authenticator.check(secret)
    if problem is not None:
        log.warning("Bad control port authentication attempt: %s", problem)
        conn.hangup = True
        return proto.reply(515, f"Authentication failed: {problem}")
    conn.authenticated = True
    return proto.reply(250, "OK")


@command("AUTHCHALLENGE")
async def _authchallenge(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    words = cmd.args.split(None, 1)
    if not words or words[0].upper() != "SAFECOOKIE":
        conn.hangup = True
        return proto.reply(513, "AUTHCHALLENGE only supports SAFECOOKIE authentication")
    cookie = conn.server.cookie
    if cookie is None:
        conn.hangup = True
        return proto.reply(515, "Cookie authentication is disabled")
    nonce_text = words[1].strip() if len(words) > 1 else ""
    if not nonce_text or " " in nonce_text and not nonce_text.startswith('"'):
        conn.hangup = True
        return proto.reply(512, "Wrong number of arguments for AUTHCHALLENGE")
    if nonce_text.startswith('"'):
        value, _end = proto.unquote(nonce_text)
        client_nonce = value.encode("latin-1")
    else:
        try:
            client_nonce = bytes.fromhex(nonce_text)
        except ValueError:
            conn.hangup = True
            return proto.reply(513, "Invalid base16 client nonce")
    server_nonce = os.urandom(SERVER_NONCE_LEN)
    server_hash, conn.safecookie_client_hash = safecookie_hashes(cookie, client_nonce, server_nonce)
    return proto.reply(
        250,
        f"AUTHCHALLENGE SERVERHASH={server_hash.hex().upper()} "
        f"SERVERNONCE={server_nonce.hex().upper()}",
    )


# -- information ---------------------------------------------------------------------------


@command("GETINFO")
async def _getinfo(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    keys = cmd.args.split()
    if not keys:
        return proto.reply(512, "Missing argument to GETINFO")
    out = proto.Reply()
    for key in keys:
        try:
            if key in ("onions/current", "onions/detached"):
                value = onions_of(conn, key == "onions/detached")
            else:
                value = getinfo(conn.server, key)
        except GetinfoError as exc:
            return proto.reply(exc.code, str(exc))
        if "\n" in value:
            out.data(f"{key}=", value)
        else:
            out.line(f"{key}={value}")
    return out.line("OK").to_bytes()


def _conf_lines(conn: ControlConnection, name: str) -> list[str]:
    spec = OPTIONS[name]
    lines = spec.default_text(getattr(conn.server.tor.config, spec.attr))
    lines = [line for line in lines if line != ""]
    return [f"{name}={line}" for line in lines] or [name]


@command("GETCONF")
async def _getconf(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    out = proto.Reply()
    for key in cmd.args.split():
        try:
            name = canonical_name(key, "GETCONF")
        except ConfigError as exc:
            reason = "not supported by puretor" if "not supported" in str(exc) else "unknown"
            return proto.reply(552, f'Unrecognized configuration key "{key}" ({reason})')
        for line in _conf_lines(conn, name):
            out.line(line)
    if not cmd.args.split():
        return proto.reply(250, "OK")
    return out.to_bytes()


async def _change_conf(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    changes: dict[str, list[str]] = {}
    for key, value, _quoted in proto.parse_keywords(cmd.args):
        try:
            name = canonical_name(key, cmd.name)
        except ConfigError as exc:
            return proto.reply(552, f"Unrecognized option: {exc}")
        values = changes.setdefault(name, [])
        if value:  # no value, or an empty one: the default
            values.append(value)
    if not changes:
        return proto.reply(512, f"Missing argument to {cmd.name}")
    current = conn.server.tor.config
    try:
        new = with_changes(current, changes)
    except ConfigError as exc:
        return proto.reply(513, f"Unacceptable option value: {exc}")
    for name in changes:
        spec = OPTIONS[name]
        if getattr(new, spec.attr) != getattr(current, spec.attr) and name not in LIVE_OPTIONS:
            return proto.reply(
                553,
                f"Transition not allowed: puretor applies {name} only at start-up "
                "(restart tor-client to change it)",
            )
    conn.server.daemon.apply_config(new)
    conn.server.reinstall_log_handler()
    if "__OwningControllerProcess" in changes:
        conn.server.watch_owner()
    lines = [line for name in changes for line in _conf_lines(conn, name)]
    event = proto.Reply().line("CONF_CHANGED", 650)
    for line in lines:
        event.line(line, 650)
    conn.server.broadcast("CONF_CHANGED", event.line("OK", 650).to_bytes())
    return proto.reply(250, "OK")


@command("SETCONF")
async def _setconf(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    return await _change_conf(conn, cmd)


@command("RESETCONF")
async def _resetconf(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    return await _change_conf(conn, cmd)


@command("SETEVENTS")
async def _setevents(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    wanted = set()
    known = set(EVENT_NAMES)
    for word in cmd.args.split():
        name = word.upper()
        if name == "EXTENDED":
            continue
        if name not in known:
            return proto.reply(552, f'Unrecognized event "{word[:64]}"')
        wanted.add(name)
    conn.events = wanted
    conn.server.subscriptions_changed()
    return proto.reply(250, "OK")


@command("USEFEATURE")
async def _usefeature(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    for word in cmd.args.split():
        if word.upper() not in FEATURE_NAMES:
            return proto.reply(552, f'Unrecognized feature "{word[:64]}"')
    return proto.reply(250, "OK")


@command("TAKEOWNERSHIP")
async def _takeownership(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    conn.owner = True
    return proto.reply(250, "OK")


@command("SIGNAL")
async def _signal(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    words = cmd.args.split()
    if len(words) != 1:
        return proto.reply(512, "SIGNAL requires one argument")
    name = SIGNALS.get(words[0].upper())
    if name is None:
        return proto.reply(552, f'Unrecognized signal code "{words[0][:64]}"')
    server = conn.server
    daemon = server.daemon
    if name in ("SHUTDOWN", "HALT"):
        # Reply first: the controller sees 250 OK before the connection goes.
        conn.send(proto.reply(250, "OK"))
        server.broadcast("SIGNAL", proto.event(f"SIGNAL {name}"))
        daemon.shutdown(f"Received {name} signal from the controller: shutting down.")
        return b""
    if name == "NEWNYM":
        server.newnym()
        return proto.reply(250, "OK")
    if name == "RELOAD":
        daemon.reload()
        server.reinstall_log_handler()
    elif name in ("DUMP", "HEARTBEAT"):
        log.log(25, "%s", daemon.statistics())
    elif name == "DEBUG":
        log.debug("%s", daemon.statistics())
    # CLEARDNSCACHE: puretor keeps no DNS cache.  ACTIVE/DORMANT: it never goes dormant.
    server.broadcast("SIGNAL", proto.event(f"SIGNAL {name}"))
    return proto.reply(250, "OK")


@command("CLOSECIRCUIT")
async def _closecircuit(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    words = cmd.args.split()
    if not words:
        return proto.reply(512, "Missing argument to CLOSECIRCUIT")
    if not words[0].isdigit() or not conn.server.tor.close_circuit(int(words[0])):
        return proto.reply(552, f'Unknown circuit "{words[0][:64]}"')
    return proto.reply(250, "OK")


@command("CLOSESTREAM")
async def _closestream(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    words = cmd.args.split()
    if len(words) < 2:
        return proto.reply(512, "Missing argument to CLOSESTREAM")
    if not words[0].isdigit() or not conn.server.tor.close_stream(int(words[0])):
        return proto.reply(552, f'Unknown stream "{words[0][:64]}"')
    return proto.reply(250, "OK")


@command("EXTENDCIRCUIT")
async def _extendcircuit(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    """``EXTENDCIRCUIT 0 FP,FP,FP [purpose=general]``: a new circuit through that path."""
    words = cmd.args.split()
    if not words:
        return proto.reply(512, "Missing argument to EXTENDCIRCUIT")
    if words[0] != "0":
        return proto.reply(
            552, f'Unknown circuit "{words[0][:64]}" (puretor only builds new circuits: use 0)'
        )
    path = [w for w in words[1:] if not w.lower().startswith("purpose=")]
    purposes = [w.split("=", 1)[1].lower() for w in words[1:] if w.lower().startswith("purpose=")]
    if purposes and purposes[0] != "general":
        return proto.reply(552, f'Unknown purpose "{purposes[0][:64]}"')
    if len(path) != 1:
        return proto.reply(512, "puretor builds a circuit only through a path the controller gives")
    try:
        circuit_id = conn.server.tor.launch_circuit(path[0].split(","))
    except TorError as exc:
        return proto.reply(552, f"No such router: {exc}")
    return proto.reply(250, f"EXTENDED {circuit_id}")


@command("ATTACHSTREAM")
async def _attachstream(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    words = cmd.args.split()
    if len(words) < 2 or not words[0].isdigit() or not words[1].isdigit():
        return proto.reply(512, "ATTACHSTREAM needs a stream and a circuit id")
    if any(w.upper().startswith("HOP=") for w in words[2:]):
        return proto.reply(552, "HOP= is not supported by puretor")
    stream_id, circuit_id = int(words[0]), int(words[1])
    try:
        conn.server.tor.attach_stream(stream_id, circuit_id)
    except KeyError:
        if stream_id in {s.id for s in conn.server.tor.stream_status()}:
            return proto.reply(555, "Connection is not managed by controller.")
        return proto.reply(552, f'Unknown stream "{stream_id}"')
    except ValueError:
        return proto.reply(551, "Can't attach stream to non-open origin circuit")
    return proto.reply(250, "OK")


@command("RESOLVE")
async def _resolve(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    """``RESOLVE [mode=reverse] NAME...``: 250 OK now, an ADDRMAP event per name later
    (resolved by an exit; puretor keeps no cache, so each answer is marked uncached)."""
    words = cmd.args.split()
    reverse = any(w.lower() == "mode=reverse" for w in words)
    names = [w for w in words if "=" not in w]
    if not names:
        return proto.reply(512, "Missing address to RESOLVE")
    for name in names:
        task = asyncio.ensure_future(_resolve_one(conn.server, name, reverse))
        conn.server.background.add(task)
        task.add_done_callback(conn.server.background.discard)
    return proto.reply(250, "OK")


async def _resolve_one(server: ControlServer, name: str, reverse: bool) -> None:
    tor = server.tor
    error = ""
    try:
        answers = await (tor.resolve_ptr(name) if reverse else tor.resolve(name))
        answer = answers[0]
    except (TorError, ValueError) as exc:
        log.info("RESOLVE failed: %s", "[scrubbed]" if tor.config.safe_logging else exc)
        answer, error = "<error>", " error=yes"
    now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    text = f'ADDRMAP {name} {answer} "{now}"{error} EXPIRES="{now}" CACHED="NO"'
    server.broadcast("ADDRMAP", proto.event(text))


# -- onion services (control-spec ADD_ONION, DEL_ONION) -----------------------------------

_ADD_ONION_FLAGS = frozenset({"DiscardPK", "Detach", "MaxStreamsCloseCircuit", "V3Auth"})


@command("ADD_ONION")
async def _add_onion(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    """``ADD_ONION KeyType:KeyBlob [Flags=..] [MaxStreams=N] Port=V[,Target]...
    [ClientAuthV3=<base32 key>]...``: a service for as long as this connection lasts
    (``Detach``: until DEL_ONION or exit)."""
    words = cmd.args.split()
    if not words:
        return proto.reply(512, "Missing argument to ADD_ONION")
    key_type, _, key_blob = words[0].partition(":")
    if key_type == "NEW":
        if key_blob not in ("BEST", "ED25519-V3"):
            return proto.reply(513, "Invalid key type")
        key: bytes | None = None
    elif key_type == "ED25519-V3":
        try:
            expanded = base64.b64decode(key_blob, validate=True)
        except ValueError:
            return proto.reply(512, "Failed to decode ED25519-V3 key")
        if len(expanded) != 64:
            return proto.reply(512, "Failed to decode ED25519-V3 key")
        key = SECRET_KEY_HEADER + expanded
    elif key_type == "RSA1024":
        return proto.reply(513, "Invalid key type: v2 onion services no longer exist")
    else:
        return proto.reply(513, "Invalid key type")
    flags: set[str] = set()
    max_streams = 0
    ports: dict[int, str | tuple[str, int]] = {}
    auth: list[str] = []
    for word in words[1:]:
        name, eq, value = word.partition("=")
        if not eq:
            return proto.reply(513, f"Invalid argument {word[:64]!r}")
        if name == "Flags":
            flags = set(value.split(",")) if value else set()
            unknown = flags - _ADD_ONION_FLAGS
            if unknown:
                return proto.reply(512, f"Invalid 'Flags' argument: {sorted(unknown)[0][:64]}")
        elif name == "MaxStreams":
            if not value.isdigit() or int(value) > 65535:
                return proto.reply(512, "Invalid MaxStreams")
            max_streams = int(value)
        elif name == "Port":
            virt, _, target = value.partition(",")
            try:
                port, parsed = parse_hs_port(f"{virt} {target}" if target else virt)
            except ValueError as exc:
                return proto.reply(512, f"Invalid VIRTPORT/TARGET: {exc}")
            if port in ports:
                return proto.reply(512, "Several targets for one virtual port are not supported")
            ports[port] = f"unix:{parsed}" if isinstance(parsed, Path) else parsed
        elif name == "ClientAuthV3":
            auth.append(value)
        elif name == "ClientAuth":
            return proto.reply(513, "ClientAuth is for v2 onion services, which no longer exist")
        else:
            return proto.reply(513, f"Invalid argument {name[:64]!r}")
    if not ports:
        return proto.reply(512, "Missing 'Port' argument")
    if auth and "V3Auth" not in flags:
        flags.add("V3Auth")
    tor = conn.server.tor
    try:
        service = tor.onion_service(
            ports,
            key=key,
            max_streams=max_streams,
            max_streams_close_circuit="MaxStreamsCloseCircuit" in flags,
            authorized_clients=auth,
        )
    except ConfigError as exc:
        return proto.reply(512, str(exc))
    service_id = service.address.removesuffix(".onion")
    if service_id in conn.server.onions:
        return proto.reply(550, "Onion address collision")
    try:
        await service.start()
    except TorError as exc:
        return proto.reply(551, f"Failed to add onion service: {exc}")
    conn.server.onions[service_id] = (service, None if "Detach" in flags else conn)
    out = proto.Reply().line(f"ServiceID={service_id}")
    if "DiscardPK" not in flags and key is None:
        blob = base64.b64encode(service.secret_key[32:]).decode("ascii")
        out.line(f"PrivateKey=ED25519-V3:{blob}")
    return out.line("OK").to_bytes()


@command("DEL_ONION")
async def _del_onion(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    words = cmd.args.split()
    if len(words) != 1:
        return proto.reply(512, "DEL_ONION takes one argument")
    service_id = words[0].removesuffix(".onion")
    entry = conn.server.onions.get(service_id)
    if entry is None or entry[1] not in (None, conn):
        return proto.reply(552, "Unknown Onion Service id")
    del conn.server.onions[service_id]
    await entry[0].stop()
    return proto.reply(250, "OK")


def onions_of(conn: ControlConnection, detached: bool) -> str:
    """GETINFO onions/current (this connection's) and onions/detached."""
    owner = None if detached else conn
    return "\n".join(sid for sid, (_svc, c) in conn.server.onions.items() if c is owner)
