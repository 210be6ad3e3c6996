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
  --ControlPort PORT --CookieAuthentication 1   a control port for nyx and stem
  --verify-config         check the configuration and exit
  --verify-install        check the installed crypto libraries against known answers
  --hash-password PW      print a HashedControlPassword value for PW (as tor's)
  --list-torrc-options    the torrc options puretor implements
  --version, --help

Signals: SIGINT/SIGTERM shut down, SIGHUP reloads the torrc, SIGUSR1 logs
statistics, SIGUSR2 (NEWNYM) switches to new circuits for new connections.
"""


class CTorFormatter(logging.Formatter):
    """C tor's log line shape: ``Nov 25 01:04:17.123 [notice] message``.

    ``granularity`` is LogTimeGranularity in seconds: timestamps are rounded down to
    it, as C tor's log_prefix_ does (1 second, the default, prints ``.000``).
    """

    def __init__(self, granularity: float = 1.0) -> None:
        super().__init__()
        self.granularity_ms = max(1, round(granularity * 1000))

    LEVELS = {
        logging.DEBUG: "debug",
        logging.INFO: "info",
        logging.WARNING: "warn",
        logging.ERROR: "err",
        logging.CRITICAL: "err",
        25: "notice",
    }

    def format(self, record: logging.LogRecord) -> str:
        seconds, ms = int(record.created), int(record.msecs)
        if self.granularity_ms >= 1000:
            seconds -= seconds % (self.granularity_ms // 1000)
            ms = 0
        else:
            ms -= ms % self.granularity_ms
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(seconds))
        level = self.LEVELS.get(record.levelno, record.levelname.lower())
        text = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return f"{stamp}.{ms:03d} [{level}] {text}"


NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")


class StartupConsole(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Until bootstrap is done, warnings, errors and "Bootstrapped" lines also go to
    stderr, whatever the Log lines say: a port in use or an unreachable network must
    show on the terminal, not only in a log file (C tor prints its start-up on the
    console too)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setLevel(NOTICE)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.getMessage().startswith("Bootstrapped ")


def setup_logging(
    specs: Any, stream: TextIO = sys.stdout, *, granularity: float = 1.0
) -> StartupConsole | None:
    """Configure logging from the config's Log lines (default: notice to stdout).

    Returns the start-up console handler when no Log line writes to the console
    (`end_startup_console` removes it once bootstrapped), else None.
    """
    root = logging.getLogger("puretor")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.propagate = False
    formatter = CTorFormatter(granularity)
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
    console: StartupConsole | None = None
    if not any(spec.destination in ("stdout", "stderr") for spec in specs or ()) and specs:
        console = StartupConsole()
        handlers.append(console)
        lowest = min(lowest, NOTICE)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(lowest)
    return console


def end_startup_console(console: StartupConsole | None) -> None:
    if console is not None:
        logging.getLogger("puretor").removeHandler(console)


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


def listener_policy(config: Any, index: int) -> Any:
    """The SocksPort ``index``'s policy: its isolation flags and the SOCKS options."""
    from puretor.app.socks import HANDSHAKE_TIMEOUT, ListenerPolicy
    from puretor.path.isolation import ListenerFlags

    port_cfg = config.socks_ports[index]
    return ListenerPolicy(
        listener_id=index,
        flags=ListenerFlags(
            isolate_socks_auth=port_cfg.isolate_socks_auth,
            isolate_client_addr=port_cfg.isolate_client_addr,
            isolate_dest_addr=port_cfg.isolate_dest_addr,
            isolate_dest_port=port_cfg.isolate_dest_port,
            isolate_client_protocol=port_cfg.isolate_client_protocol,
            session_group=port_cfg.session_group,
        ),
        extended_errors=port_cfg.extended_errors,
        safe_logging=bool(config.safe_logging),
        safe_socks=config.safe_socks,
        test_socks=config.test_socks,
        socks_policy=config.socks_policy,
        handshake_timeout=min(HANDSHAKE_TIMEOUT, config.socks_timeout),
        connect_timeout=config.socks_timeout,
        prefer_ipv6_automap=port_cfg.prefer_ipv6_automap,
    )


async def serve(config: Any, argv: list[str], console: StartupConsole | None = None) -> int:
    from puretor.app.socks import SocksListener, start_socks_listener
    from puretor.client import TorClient

    tor = TorClient(config)
    bar = _ProgressBar()

    def on_progress(status: Any) -> None:
        bar.update(status.percent, status.summary)
        if status.percent >= 100:
            end_startup_console(console)

    tor.add_bootstrap_listener(on_progress)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    listeners: list[SocksListener] = []
    doors: list[Any] = []  # HTTPTunnelPort, TransPort, DNSPort, MetricsPort (app/doors.py)
    control: Any = None

    def on_signal(name: str) -> None:
        if name in ("SIGINT", "SIGTERM"):
            log.log(NOTICE, "Received %s: shutting down.", name)
            stop.set()
        elif name == "SIGUSR2":
            log.log(NOTICE, "Received NEWNYM signal: new circuits for new connections.")
            asyncio.ensure_future(tor.new_identity())
        elif name == "SIGHUP":
            log.log(NOTICE, "Received reload signal (hup). Reloading config.")
            _reload(tor, argv, listeners, doors)
            if control:
                control.reinstall_log_handler()
        elif name == "SIGUSR1":
            log.log(NOTICE, "%s", _statistics(tor, listeners))

    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        with contextlib.suppress(NotImplementedError, AttributeError):
            loop.add_signal_handler(getattr(signal, name), on_signal, name)

    from puretor import __version__

    log.log(
        NOTICE, "puretor %s (tor-client) starting; Python %s.", __version__, sys.version.split()[0]
    )
    # Listen first: a port in use is a start-up error, reported before bootstrapping.
    for index, port_cfg in enumerate(config.socks_ports):
        port = 0 if port_cfg.port == "auto" else port_cfg.port
        try:
            listener = await start_socks_listener(
                tor, port_cfg.address, port, listener_policy(config, index)
            )
        except OSError as exc:
            log.error(
                "Could not bind to %s:%s: %s. Is Tor already running?",
                port_cfg.address,
                port,
                os.strerror(exc.errno) if exc.errno else exc,
            )
            for other in listeners:
                other.close()
            await tor.aclose()
            return 1
        listeners.append(listener)
        host, bound = listener.address
        log.log(NOTICE, "Opened Socks listener connection (ready) on %s:%d", host, bound)
        if not port_cfg.is_loopback:
            log.warning(
                "You specified a public address '%s' for SocksPort. Other people on "
                "the Internet might find your computer and use it as an open proxy.",
                port_cfg.address,
            )
    # HTTPTunnelPort, DNSPort, MetricsPort (app/doors.py): bound before bootstrapping too.
    from puretor.app.doors import open_other_doors

    try:
        doors.extend(await open_other_doors(tor, config, listeners))
    except OSError as exc:
        log.error(
            "Could not bind to %s: %s. Is Tor already running?",
            getattr(exc, "door", "?"),
            os.strerror(exc.errno) if exc.errno else exc,
        )
        for other in listeners:
            other.close()
        await tor.aclose()
        return 1
    control = await _start_control(tor, config, argv, listeners, doors, stop)
    if control is False:
        for listener in listeners:
            listener.close()
        for door in doors:
            door.close()
        await tor.aclose()
        return 1
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
    if control:
        control.close()
    for listener in listeners:
        listener.close()
    for door in doors:
        door.close()
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


# GETINFO net/listeners/KIND -> the kind of door (app/doors.py) that listens for it.
_DOOR_KINDS = {"dns": "dns", "httptunnel": "http_tunnel", "trans": "trans", "metrics": "metrics"}


def _listener_addresses(kind: str, listeners: list[Any], doors: list[Any]) -> list[str]:
    """The bound addresses of the SOCKS listeners or of one kind of other door."""
    if kind == "socks":
        bound = [x.address for x in listeners]
    else:
        bound = [d.listener.address for d in doors if d.kind == _DOOR_KINDS.get(kind)]
    return [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in bound]


def _statistics(tor: Any, listeners: list[Any]) -> str:
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
        f"socks_active={sum(lst.stats.active for lst in listeners)} "
        f"socks_total={sum(lst.stats.total for lst in listeners)} "
        f"socks_refused={sum(lst.stats.refused for lst in listeners)} "
        f"streams_opened={stats['streams_opened']} "
        f"open_circuits={stats['open_circuits']} "
        f"circuits_built={stats['circuits_built']} "
        f"conflux_sets_linked={stats['conflux_sets_linked']} "
        f"channels_opened={stats['channels_opened']} "
        f"queued_bytes={stats['queued_bytes']} queued_bytes_peak={stats['queued_bytes_peak']} "
        f"oom_tunnels_closed={stats['oom_tunnels_closed']} "
        f"asyncio_tasks={len(asyncio.all_tasks())} "
        f"open_fds={fds} rss_kib={rss}"
    )


async def _start_control(
    tor: Any,
    config: Any,
    argv: list[str],
    listeners: list[Any],
    doors: list[Any],
    stop: asyncio.Event,
) -> Any:
    """The ControlPort/ControlSocket listeners, None without any, False if one cannot
    be opened (a start-up error, as for SocksPort)."""
    if not config.control_ports and not config.control_sockets:
        return None
    from puretor.app.control import ControlServer, DaemonHooks
    from puretor.config import default_torrc_path, load_config, parse_command_line

    torrc = parse_command_line(argv).torrc_path or default_torrc_path()

    def shutdown(message: str) -> None:
        log.log(NOTICE, "%s", message)
        stop.set()

    def apply_config(new: Any) -> None:
        _apply_config(tor, new, listeners)

    hooks = DaemonHooks(
        torrc_path=torrc,
        config_from_text=lambda text: load_config(argv, torrc_text=text),
        listener_addresses=lambda kind: _listener_addresses(kind, listeners, doors),
        apply_config=apply_config,
        reload=lambda: _reload(tor, argv, listeners, doors),
        shutdown=shutdown,
        statistics=lambda: _statistics(tor, listeners),
        started=time.monotonic(),
    )
    control = ControlServer(tor, hooks)
    try:
        await control.start()
    except OSError as exc:
        log.error(
            "Could not open the control port: %s.",
            os.strerror(exc.errno) if exc.errno else exc,
        )
        control.close()
        return False
    return control


def _apply_config(tor: Any, new: Any, listeners: list[Any]) -> None:
    """A changed configuration (SETCONF): the SOCKS options and logging at once."""
    old = tor.config
    if len(new.socks_ports) == len(listeners):
        for index, listener in enumerate(listeners):
            listener.policy = listener_policy(new, index)
    if (old.logs, old.log_time_granularity) != (new.logs, new.log_time_granularity):
        setup_logging(new.logs, granularity=new.log_time_granularity)
    tor.config = new


def _reload(tor: Any, argv: list[str], listeners: list[Any], doors: list[Any]) -> None:
    """SIGHUP: read the torrc again.  As in C tor, logging and the SOCKS options apply
    at once; listeners and the DataDirectory only change with a restart."""
    from puretor.config import load_config

    try:
        new = load_config(argv)
    except ConfigError as exc:
        log.warning("Reload failed, keeping the old configuration: %s", exc)
        return
    new = _keep_first_hop_options(tor.config, new)
    if len(new.socks_ports) == len(listeners):
        for index, listener in enumerate(listeners):
            listener.policy = listener_policy(new, index)
    setup_logging(new.logs, granularity=new.log_time_granularity)
    if new.hidden_services != tor.config.hidden_services:
        # C tor adds and removes services here; puretor does not yet.
        log.warning("Onion service changes (HiddenService* options) need a restart of tor-client.")
    tor.config = new
    from puretor.app.doors import reload_doors

    reload_doors(new, doors)  # the other doors' policies and timeouts, as the SocksPort's
    log.log(NOTICE, "Configuration reloaded (listeners and data directory changes need a restart).")


# How the client reaches Tor: decided at start.  A reload that changed them keeps the old
# values (a new UseBridges 1 silently not applied would mean direct connections the user
# believes are gone), and says so.
_FIRST_HOP_OPTIONS = {
    "use_bridges": "UseBridges",
    "bridges": "Bridge",
    "transport_plugins": "ClientTransportPlugin",
    "socks4_proxy": "Socks4Proxy",
    "socks5_proxy": "Socks5Proxy",
    "socks5_proxy_username": "Socks5ProxyUsername",
    "socks5_proxy_password": "Socks5ProxyPassword",
    "https_proxy": "HTTPSProxy",
    "https_proxy_authenticator": "HTTPSProxyAuthenticator",
}


def _keep_first_hop_options(old: Any, new: Any) -> Any:
    import dataclasses

    changed = [n for a, n in _FIRST_HOP_OPTIONS.items() if getattr(old, a) != getattr(new, a)]
    if not changed:
        return new
    log.warning(
        "%s changed: that takes a restart of tor-client; until then the old values stay.",
        ", ".join(changed),
    )
    return dataclasses.replace(new, **{a: getattr(old, a) for a in _FIRST_HOP_OPTIONS})


def run_daemon(argv: list[str], *, version: str) -> int:
    from puretor.config import load_config
    from puretor.dir.cache import DirCache

    if "-h" in argv or "--help" in argv:
        sys.stdout.write(USAGE)
        return 0
    if "--version" in argv:
        sys.stdout.write(f"puretor {version} (tor-client)\n")
        return 0
    if "--verify-install" in argv:
        from puretor.selftest import main as verify_install

        return verify_install()
    if "--hash-password" in argv:
        from puretor.proto.controlauth import hash_password

        index = argv.index("--hash-password")
        if index + 1 >= len(argv):
            sys.stderr.write("tor-client: --hash-password needs a password\n")
            return 1
        sys.stdout.write(hash_password(argv[index + 1].encode()) + "\n")
        return 0
    if "--list-torrc-options" in argv:
        from puretor.config import OPTION_NAMES

        sys.stdout.write("".join(f"{name}\n" for name in OPTION_NAMES))
        return 0
    try:
        config = load_config(argv)
    except ConfigError as exc:
        sys.stderr.write(f"tor-client: configuration error: {exc}\n")
        return 1
    if "--verify-config" in argv:
        sys.stdout.write("Configuration was valid\n")
        return 0
    console = setup_logging(config.logs, granularity=config.log_time_granularity)
    try:
        # An unusable DataDirectory (a file in its place, read-only, someone else's)
        # stops start-up here, before any listener opens, with a one-line error.
        DirCache(Path(config.data_directory).expanduser(), ()).ensure_dir(probe=True)
        return asyncio.run(serve(config, argv, console))
    except KeyboardInterrupt:
        return 130
    except TorError as exc:
        log.error("%s", exc)
        return 1
