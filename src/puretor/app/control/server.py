"""The control port: listeners, connections, authentication and the event feed.

A thin text view over `TorClient`'s public API (events, circuit and stream lists,
configuration) plus the daemon's hooks (reload, shutdown, listeners), as C tor's
control port (control-spec).  Commands on one connection run one at a time, in order;
while one runs nothing more is read from that controller, so a flood of commands waits
in the socket, not in memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import puretor.app.control.onion  # noqa: F401  (registers HSFETCH, ONION_CLIENT_AUTH_*)
from puretor.app.control.auth import Authenticator, cookie_path, write_cookie
from puretor.app.control.connection import ControlConnection
from puretor.app.control.formats import event_text, hs_desc_content
from puretor.app.control.getinfo import getinfo
from puretor.client import (
    BandwidthEvent,
    BootstrapEvent,
    CircuitBandwidthEvent,
    NewConsensusEvent,
    OnionDescriptorEvent,
    StreamBandwidthEvent,
    TorClient,
)
from puretor.config import TorConfig
from puretor.proto import control as proto

log = logging.getLogger("puretor")

MAX_CONNECTIONS = 64  # control connections at once; more are closed at once
MAX_OUTPUT = 8 * 1024 * 1024  # queued replies and events to a controller that does not read
READ_SIZE = 16 * 1024
LOG_EVENTS = {"DEBUG": 10, "INFO": 20, "NOTICE": 25, "WARN": 30, "ERR": 40}


@dataclass
class DaemonHooks:
    """What the control port may ask of the daemon around the client."""

    torrc_path: Path  # where SAVECONF writes (C tor: the -f file, or the default torrc)
    config_from_text: Callable[[str], TorConfig]  # LOADCONF: torrc text + command line
    listener_addresses: Callable[[str], list[str]]  # "socks", "dns", "httptunnel"...
    apply_config: Callable[[TorConfig], None]
    reload: Callable[[], None]
    shutdown: Callable[[str], None]
    statistics: Callable[[], str]
    started: float


class ControlServer:
    """Every ControlPort and ControlSocket listener of the daemon, and their connections."""

    def __init__(self, tor: TorClient, daemon: DaemonHooks) -> None:
        from puretor import __version__

        self.tor = tor
        self.daemon = daemon
        # A C tor version stem and nyx can parse, naming puretor (control-spec "VERSION").
        self.version = f"0.4.9.0-puretor-{__version__}"
        self.servers: list[asyncio.Server] = []
        self.addresses: list[str] = []
        self.connections: set[ControlConnection] = set()
        self.cookie: bytes | None = None
        self.cookie_file: Path | None = None
        self.bandwidth_history: collections.deque[tuple[int, int]] = collections.deque(maxlen=300)
        self.last_newnym = 0.0
        self._newnym_pending = False
        self._log_handler = _ControlLogHandler(self)
        self._owner_task: asyncio.Task[None] | None = None
        self._bw_listening = False
        self.background: set[asyncio.Future[None]] = set()  # RESOLVE lookups in progress
        # ADD_ONION services by service id: (service, the connection that owns it; None:
        # detached, kept until DEL_ONION or exit).
        self.onions: dict[str, tuple[Any, ControlConnection | None]] = {}

    @property
    def authenticator(self) -> Authenticator:
        return Authenticator(self.tor.config, self.cookie, self.cookie_file)

    # -- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        """Open every listener (OSError if one cannot be bound) and write the cookie."""
        config = self.tor.config
        if config.cookie_authentication:
            self.cookie_file = cookie_path(config)
            self.cookie = write_cookie(self.cookie_file)
        for port_cfg in config.control_ports:
            port = 0 if port_cfg.port == "auto" else port_cfg.port
            server = await asyncio.start_server(
                self._accept, port_cfg.address, port, limit=READ_SIZE
            )
            self.servers.append(server)
            host, bound = server.sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self.addresses.append(f"{shown}:{bound}")
            log.log(25, "Opened Control listener connection (ready) on %s:%d", host, bound)
            if not port_cfg.is_loopback:
                log.warning(
                    "You have a ControlPort set to accept connections from a non-local "
                    "address (%s). This means that programs not running on your computer "
                    "can reconfigure your Tor. That's pretty bad, since the controller "
                    "protocol isn't encrypted! Maybe you should just listen on 127.0.0.1 "
                    "and use a tool like stunnel or ssh to encrypt remote connections.",
                    port_cfg.address,
                )
        for path in config.control_sockets:
            with contextlib.suppress(FileNotFoundError):
                if Path(path).is_socket():
                    Path(path).unlink()
            old_umask = os.umask(0o177)  # the socket is made 0600 at once
            try:
                server = await asyncio.start_unix_server(self._accept, str(path))
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
            self.servers.append(server)
            self.addresses.append(f"unix:{path}")
            log.log(25, "Opened Control listener connection (ready) on %s", path)
        if config.control_port_write_to_file is not None:
            lines = [f"PORT={a}" for a in self.addresses if not a.startswith("unix:")]
            lines += [f"UNIX_PORT={a[5:]}" for a in self.addresses if a.startswith("unix:")]
            target = Path(config.control_port_write_to_file)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in lines))
            tmp.replace(target)
        self.tor.add_event_listener(self._on_client_event)
        self.watch_owner()

    def close(self) -> None:
        self.tor.remove_event_listener(self._on_client_event)
        self.tor.remove_event_listener(self._on_bandwidth)
        logging.getLogger("puretor").removeHandler(self._log_handler)
        if self._owner_task is not None:
            self._owner_task.cancel()
        for task in list(self.background):
            task.cancel()
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.close()
        for path in self.tor.config.control_sockets:
            with contextlib.suppress(OSError):
                Path(path).unlink()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= MAX_CONNECTIONS:
            log.warning("Too many control connections (%d); closing a new one.", MAX_CONNECTIONS)
            writer.close()
            return
        conn = ControlConnection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            conn.close()
            self.subscriptions_changed()
            # Its non-detached onion services end with it (C tor).
            for sid, (service, owner) in list(self.onions.items()):
                if owner is conn:
                    del self.onions[sid]
                    await service.stop()
            if conn.owner:
                self.daemon.shutdown("Owning controller connection has closed -- exiting now.")

    # -- events -------------------------------------------------------------------------

    def broadcast(self, name: str, data: bytes) -> None:
        for conn in list(self.connections):
            if name in conn.events:
                conn.send(data)

    def _on_client_event(self, event: Any) -> None:
        if isinstance(event, BandwidthEvent | StreamBandwidthEvent | CircuitBandwidthEvent):
            return  # _on_bandwidth
        if isinstance(event, NewConsensusEvent):
            if any("NEWCONSENSUS" in conn.events for conn in self.connections):
                body = getinfo(self, "ns/all")
                self.broadcast("NEWCONSENSUS", proto.event("NEWCONSENSUS", body))
            return
        text = event_text(event)
        if text is not None:
            self.broadcast(text[0], proto.event(f"{text[0]} {text[1]}"))
        if isinstance(event, OnionDescriptorEvent) and event.content is not None:
            header, body = hs_desc_content(event)
            self.broadcast("HS_DESC_CONTENT", proto.event(header, body))
        if isinstance(event, BootstrapEvent) and event.percent == 100:
            self.broadcast("STATUS_CLIENT", proto.event("STATUS_CLIENT NOTICE CIRCUIT_ESTABLISHED"))

    def _on_bandwidth(self, event: Any) -> None:
        if isinstance(event, StreamBandwidthEvent | CircuitBandwidthEvent):
            text = event_text(event)
            if text is not None:
                self.broadcast(text[0], proto.event(f"{text[0]} {text[1]}"))
            return
        self.bandwidth_history.append((event.read, event.written))
        self.broadcast("BW", proto.event(f"BW {event.read} {event.written}"))

    def subscriptions_changed(self) -> None:
        """Start or stop what only subscribers need: the BW sampler, log forwarding."""
        wanted: set[str] = set()
        for conn in self.connections:
            wanted |= conn.events
        sampled = bool({"BW", "STREAM_BW", "CIRC_BW"} & wanted)
        if sampled and not self._bw_listening:
            self.tor.add_event_listener(
                self._on_bandwidth, BandwidthEvent, StreamBandwidthEvent, CircuitBandwidthEvent
            )
            self._bw_listening = True
        elif not sampled and self._bw_listening:
            self.tor.remove_event_listener(self._on_bandwidth)
            self._bw_listening = False
        levels = [LOG_EVENTS[name] for name in wanted if name in LOG_EVENTS]
        self._log_handler.install(min(levels) if levels else None)

    def reinstall_log_handler(self) -> None:
        """After the daemon set logging up again (SIGHUP, SETCONF Log)."""
        self._log_handler.installed_level = None
        self.subscriptions_changed()

    # -- owning controller ----------------------------------------------------------------

    def watch_owner(self) -> None:
        """__OwningControllerProcess: exit when that process is gone (checked every 15 s,
        as C tor does)."""
        if self._owner_task is not None:
            self._owner_task.cancel()
            self._owner_task = None
        pid = self.tor.config.owning_controller_process
        if pid is not None:
            self._owner_task = asyncio.ensure_future(self._watch(pid))

    async def _watch(self, pid: int) -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                self.daemon.shutdown(f"Owning controller (PID {pid}) has vanished -- exiting now.")
                return
            except PermissionError:
                pass  # it exists, under another user
            await asyncio.sleep(15.0)

    # -- signals --------------------------------------------------------------------------

    def newnym(self) -> None:
        """NEWNYM, at most once per 10 s (C tor's MAX_SIGNEWNYM_RATE): a later one waits."""
        now = time.monotonic()
        wait = self.last_newnym + 10.0 - now
        if wait <= 0:
            self._do_newnym()
            return
        if not self._newnym_pending:
            self._newnym_pending = True
            log.log(25, "Rate limiting NEWNYM request: delaying by %d second(s)", round(wait))
            asyncio.get_running_loop().call_later(wait, self._do_newnym)

    def _do_newnym(self) -> None:
        self._newnym_pending = False
        self.last_newnym = time.monotonic()
        asyncio.ensure_future(self.tor.new_identity())
        self.broadcast("SIGNAL", proto.event("SIGNAL NEWNYM"))


class _ControlLogHandler(logging.Handler):
    """Log records to the controllers that asked for their severity (DEBUG..ERR)."""

    NAMES = {10: "DEBUG", 20: "INFO", 25: "NOTICE", 30: "WARN", 40: "ERR", 50: "ERR"}

    def __init__(self, server: ControlServer) -> None:
        super().__init__(logging.DEBUG)
        self.server = server
        self.installed_level: int | None = None
        self._emitting = False
        self._saved_level: int | None = None

    def install(self, level: int | None) -> None:
        logger = logging.getLogger("puretor")
        if level is None:
            logger.removeHandler(self)
            if self._saved_level is not None:
                logger.setLevel(self._saved_level)
                self._saved_level = None
            self.installed_level = None
            return
        if self not in logger.handlers:
            logger.addHandler(self)
        if self._saved_level is None:
            self._saved_level = logger.level
        # Lower the logger's threshold only while a controller wants the detail; the
        # other handlers keep their own levels.
        logger.setLevel(min(self._saved_level or logging.WARNING, level))
        self.installed_level = level

    def emit(self, record: logging.LogRecord) -> None:
        if self._emitting:
            return
        self._emitting = True
        try:
            name = self.NAMES.get(record.levelno, "NOTICE")
            message = record.getMessage()
            if "\n" in message:
                data = proto.event(name, message)
            else:
                data = proto.event(f"{name} {message}")
            self.server.broadcast(name, data)
        except Exception:  # logging must never fail the caller
            pass
        finally:
            self._emitting = False
