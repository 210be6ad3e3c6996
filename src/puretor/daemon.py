"""The ``tor-client`` daemon: configuration, logging, signals, SOCKS listeners."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from puretor.errors import ConfigError, TorError

log = logging.getLogger("puretor")

USAGE = """\
Usage: tor-client [-f TORRC] [--Option value ...]

Runs a SOCKS5 proxy (default 127.0.0.1:9050) whose every connection travels
through a 3-hop Tor circuit.  Options are C tor's torrc options, e.g.:

  -f FILE                 read the configuration from FILE
  --SocksPort [ADDR:]PORT [flags]   where to listen (auto, or 0 to disable)
  --DataDirectory DIR     cache, guard state (default ~/.local/share/puretor)
  --DirAuthority LINE     use a private network's authorities (repeatable)
  --TestingTorNetwork 1   test-network timings (needs DirAuthority lines)
  --Log "notice stdout"   logging (severity and destination)
  --verify-config         check the configuration and exit
  --version, --help

Signals: SIGINT/SIGTERM shut down, SIGHUP reloads the torrc, SIGUSR1 logs
statistics, SIGUSR2 (NEWNYM) switches to new circuits for new connections.
"""


class CTorFormatter(logging.Formatter):
    """C tor's log line shape: ``Nov 25 01:04:17.123 [notice] message``."""

    LEVELS = {
        logging.DEBUG: "debug",
        logging.INFO: "info",
        logging.WARNING: "warn",
        logging.ERROR: "err",
        logging.CRITICAL: "err",
        25: "notice",
    }

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(record.created))
        ms = int(record.msecs)
        level = self.LEVELS.get(record.levelno, record.levelname.lower())
        text = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return f"{stamp}.{ms:03d} [{level}] {text}"


NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")


def setup_logging(specs: Any, stream: TextIO = sys.stdout) -> None:
    """Configure logging from the config's Log lines (default: notice to stdout)."""
    root = logging.getLogger("puretor")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.propagate = False
    formatter = CTorFormatter()
    handlers: list[logging.Handler] = []
    lowest = logging.CRITICAL
    for spec in specs or ():
        level = spec.min_level
        if spec.destination == "stdout":
            handler: logging.Handler = logging.StreamHandler(sys.stdout)
        elif spec.destination == "stderr":
            handler = logging.StreamHandler(sys.stderr)
        elif spec.destination == "file":
            handler = logging.FileHandler(spec.path, encoding="utf-8")
        else:
            continue
        handler.setLevel(level)
        handlers.append(handler)
        lowest = min(lowest, level)
    if not handlers:
        handler = logging.StreamHandler(stream)
        handler.setLevel(NOTICE)
        handlers.append(handler)
        lowest = NOTICE
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(lowest)


class _ProgressBar:
    """A one-line bootstrap progress bar when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def update(self, percent: int, summary: str) -> None:
        if not self.enabled:
            return
        filled = percent * 30 // 100
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {percent:3d}% {summary[:40]:<40}"
        )
        if percent >= 100:
            sys.stderr.write("\n")
        sys.stderr.flush()


async def serve(config: Any, argv: list[str]) -> int:
    from puretor.aio.socks_server import (
        HANDSHAKE_TIMEOUT,
        ListenerPolicy,
        start_socks_listener,
    )
    from puretor.client import TorClient

    tor = TorClient(config)
    bar = _ProgressBar()
    tor.add_bootstrap_listener(lambda st: bar.update(st.percent, st.summary))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    servers: list[asyncio.AbstractServer] = []
    socks_stats: list[Any] = []

    def on_signal(name: str) -> None:
        if name in ("SIGINT", "SIGTERM"):
            log.log(NOTICE, "Received %s: shutting down.", name)
            stop.set()
        elif name == "SIGUSR2":
            log.log(NOTICE, "Received NEWNYM signal: new circuits for new connections.")
            asyncio.ensure_future(tor.new_identity())
        elif name == "SIGHUP":
            log.log(NOTICE, "Received reload signal (hup). Reloading config.")
            _reload(tor, argv)
        elif name == "SIGUSR1":
            log.log(NOTICE, "%s", _statistics(tor, socks_stats))

    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        with contextlib.suppress(NotImplementedError, AttributeError):
            loop.add_signal_handler(getattr(signal, name), on_signal, name)

    from puretor import __version__

    log.log(
        NOTICE, "puretor %s (tor-client) starting; Python %s.", __version__, sys.version.split()[0]
    )
    # Listen first: a port in use is a start-up error, reported before bootstrapping.
    for index, port_cfg in enumerate(config.socks_ports):
        policy = ListenerPolicy(
            listener_id=index,
            isolate_socks_auth=port_cfg.isolate_socks_auth,
            isolate_client_addr=port_cfg.isolate_client_addr,
            isolate_dest_addr=port_cfg.isolate_dest_addr,
            isolate_dest_port=port_cfg.isolate_dest_port,
            extended_errors=port_cfg.extended_errors,
            safe_logging=bool(config.safe_logging),
            handshake_timeout=min(HANDSHAKE_TIMEOUT, config.socks_timeout),
            connect_timeout=config.socks_timeout,
        )
        port = 0 if port_cfg.port == "auto" else port_cfg.port
        try:
            server, stats = await start_socks_listener(tor, port_cfg.address, port, policy)
        except OSError as exc:
            log.error(
                "Could not bind to %s:%s: %s. Is Tor already running?",
                port_cfg.address,
                port,
                exc.strerror or exc,
            )
            for s in servers:
                s.close()
            await tor.aclose()
            return 1
        servers.append(server)
        socks_stats.append(stats)
        bound = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        log.log(NOTICE, "Opened Socks listener connection (ready) on %s:%d", bound[0], bound[1])
        if not port_cfg.is_loopback:
            log.warning(
                "You specified a public address '%s' for SocksPort. Other people on "
                "the Internet might find your computer and use it as an open proxy.",
                port_cfg.address,
            )
    pid_file = _write_pid_file(config.pid_file)
    bootstrap = asyncio.ensure_future(tor.bootstrap())
    stop_wait = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({bootstrap, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    rc = 0
    if bootstrap in done and bootstrap.exception() is not None:
        log.error("Bootstrap failed: %s", bootstrap.exception())
        rc = 1
    else:
        await stop_wait
    bootstrap.cancel()
    for s in servers:
        s.close()
    await tor.aclose()
    _remove_pid_file(pid_file)
    log.log(NOTICE, "Clean shutdown finished. Exiting.")
    return rc


def _write_pid_file(path: Any) -> Path | None:
    """PidFile: our PID, for scripts that stop us (C tor writes it at start-up too)."""
    if path is None:
        return None
    target = Path(path).expanduser()
    try:
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(target)
    except OSError as exc:
        log.warning("Unable to write PidFile %s: %s", target, exc.strerror or exc)
        return None
    return target


def _remove_pid_file(path: Path | None) -> None:
    """Remove the PidFile if it still names us (another tor-client may have taken it)."""
    if path is None:
        return
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


def _statistics(tor: Any, socks_stats: list[Any]) -> str:
    """One line for SIGUSR1 (C tor dumps its statistics then): connections, circuits,
    and the process's own resources, to spot leaks under load."""
    stats = tor.stats()
    fds: int | str = "?"
    rss: int | str = "?"
    with contextlib.suppress(OSError):
        fds = len(os.listdir("/proc/self/fd")) - 1  # minus the listdir's own
    with (
        contextlib.suppress(OSError, ValueError, IndexError, StopIteration),
        open("/proc/self/status", encoding="ascii") as fh,
    ):
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return (
        "Statistics: "
        f"socks_active={sum(s.active for s in socks_stats)} "
        f"socks_total={sum(s.total for s in socks_stats)} "
        f"socks_refused={sum(s.refused for s in socks_stats)} "
        f"streams_opened={stats['streams_opened']} "
        f"open_circuits={stats['open_circuits']} "
        f"circuits_built={stats['circuits_built']} "
        f"conflux_sets_linked={stats['conflux_sets_linked']} "
        f"channels_opened={stats['channels_opened']} "
        f"asyncio_tasks={len(asyncio.all_tasks())} "
        f"open_fds={fds} rss_kib={rss}"
    )


def _reload(tor: Any, argv: list[str]) -> None:
    from puretor.config import load_config

    try:
        new = load_config(argv)
    except ConfigError as exc:
        log.warning("Reload failed, keeping the old configuration: %s", exc)
        return
    tor.config = new
    log.log(NOTICE, "Configuration reloaded (listeners and data directory changes need a restart).")


def run_daemon(argv: list[str], *, version: str) -> int:
    from puretor.config import load_config
    from puretor.dir.cache import DirCache

    if "-h" in argv or "--help" in argv:
        sys.stdout.write(USAGE)
        return 0
    if "--version" in argv:
        sys.stdout.write(f"puretor {version} (tor-client)\n")
        return 0
    try:
        config = load_config(argv)
    except ConfigError as exc:
        sys.stderr.write(f"tor-client: configuration error: {exc}\n")
        return 1
    if "--verify-config" in argv:
        sys.stdout.write("Configuration was valid\n")
        return 0
    setup_logging(getattr(config, "logs", ()))
    try:
        # An unusable DataDirectory (a file in its place, read-only) stops start-up here,
        # before any listener opens, with a one-line error.
        DirCache(Path(config.data_directory).expanduser(), ()).ensure_dir(probe=True)
        return asyncio.run(serve(config, argv))
    except KeyboardInterrupt:
        return 130
    except TorError as exc:
        log.error("%s", exc)
        return 1
