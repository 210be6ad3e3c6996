"""Sealed network namespaces: only loopback, plus a local route for the target range.

Three ways to be sealed:
* the whole current process moves into a fresh namespace (`enter_private_netns`, used by the
  test suite's conftest before anything else runs),
* a persistent named namespace (``ip netns add``, needs root) whose processes we start with
  ``ip netns exec`` (``puretor-testnet up`` as root), or
* rootless: a small holder process (`hold`) unshares a user + network namespace and keeps it
  alive; the others join it with ``nsenter --target HOLDER --user --net``
  (``puretor-testnet up`` as any other user, or with ``--rootless``).

Inside, any connect to an address outside 127/8 and 198.18/15 fails at once with ENETUNREACH.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

from puretor.testnet import layout

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


class NamespaceError(RuntimeError):
    pass


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare({flags:#x}): {os.strerror(err)}")


def enter_private_netns(*, with_userns: bool = False) -> str:
    """Move this process into a fresh network namespace with only loopback up.

    As root a plain CLONE_NEWNET (unless `with_userns`); otherwise a user namespace too, where
    we map ourselves to uid 0 so we may configure the new namespace (the kernel requires a
    single-threaded process for that). Returns "netns" or "userns+netns".
    """
    try:
        if with_userns:
            raise PermissionError
        _unshare(CLONE_NEWNET)
        mode = "netns"
    except PermissionError:
        uid, gid = os.getuid(), os.getgid()
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        mode = "userns+netns"
    loopback_up()
    return mode


def loopback_up() -> None:
    """``ip link set lo up`` without needing the ip binary (ioctl on struct ifreq)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _ip(netns: str | None, *args: str) -> None:
    if shutil.which("ip") is None:
        raise NamespaceError("the `ip` command (iproute2) is not installed")
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NamespaceError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


def add_target_route(netns: str | None = None) -> None:
    """Make 198.18.0.0/15 local, with 127.0.0.1 as the preferred source.

    Every address in the range can then be bound by the targets; a client connecting directly
    shows up as 127.0.0.1, while exits (which bind their own 127.N.0.1) show their address.
    """
    _ip(
        netns,
        "route",
        "replace",
        "local",
        layout.LOCAL_TARGET_NET,
        "dev",
        "lo",
        "src",
        "127.0.0.1",
        "table",
        "local",
    )


def interfaces(netns: str | None = None) -> list[str]:
    """Interface names visible in the current (or a named) namespace."""
    if netns is None:
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
        return [line.split(":", 1)[0].strip() for line in lines]
    out = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line]


def is_sealed(netns: str | None = None) -> bool:
    """True if the namespace has nothing but loopback (so nothing can leave the machine)."""
    return interfaces(netns) == ["lo"]


def require_sealed(netns: str | None = None) -> None:
    found = interfaces(netns)
    if found != ["lo"]:
        where = f"namespace {netns!r}" if netns else "the current network namespace"
        raise NamespaceError(
            f"{where} is not sealed (interfaces: {', '.join(found)}); refusing to start the "
            "test network here. Use a named namespace (the CLI default) or enter a private "
            "one first (tests/conftest.py does)."
        )


# --- persistent named namespaces (CLI) ---------------------------------------------------------


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def pids_in(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def create_named(name: str) -> None:
    """``ip netns add`` + loopback + target route. Reuses an existing, idle, sealed namespace."""
    if netns_exists(name):
        busy = pids_in(name)
        if busy:
            raise NamespaceError(
                f"namespace {name!r} already has processes in it (pids {busy[:10]}); "
                "stop the other network first (`puretor-testnet down`)"
            )
    else:
        _ip(None, "netns", "add", name)
    require_sealed(name)
    _ip(name, "link", "set", "lo", "up")
    add_target_route(name)


def delete_named(name: str) -> None:
    if netns_exists(name):
        _ip(None, "netns", "delete", name)


def inside(name: str) -> bool:
    """Is this process already in the named namespace?"""
    try:
        mine, theirs = os.stat("/proc/self/ns/net"), os.stat(Path("/run/netns", name))
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def wrap(netns: str | None, argv: Sequence[str], *, holder_pid: int | None = None) -> list[str]:
    """The command line that runs `argv` in `netns`, or in the namespace that `holder_pid`
    holds (rootless), or unchanged for the current one."""
    if holder_pid is not None:
        # (Sealed too: a holder's PID reused by a process out here must not let argv run here.)
        inside_already = shares_netns(holder_pid) and is_sealed(None)
        return list(argv) if inside_already else nsenter_argv(holder_pid, argv)
    if netns is None or inside(netns):
        return list(argv)
    return ["ip", "netns", "exec", netns, *argv]


# --- rootless: a holder process keeps a user + network namespace alive ------------------------


def nsenter_argv(holder_pid: int, argv: Sequence[str]) -> list[str]:
    """Run `argv` in the holder's user and network namespaces.

    --preserve-credentials: nsenter would otherwise call setgroups(), which a user namespace
    made by an unprivileged user denies.
    """
    return [
        "nsenter",
        f"--target={holder_pid}",
        "--user",
        "--net",
        "--preserve-credentials",
        "--",
        *argv,
    ]


def netns_id(pid: int | str) -> tuple[int, int] | None:
    """Identity of the network namespace of `pid` ("self" for ours), None if unreadable."""
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return None
    return st.st_dev, st.st_ino


def shares_netns(pid: int) -> bool:
    """Is this process in the same network namespace as `pid`?"""
    theirs = netns_id(pid)
    return theirs is not None and theirs == netns_id("self")


def pids_in_netns(ns: tuple[int, int]) -> list[int]:
    """Every process we may inspect whose network namespace is `ns`."""
    return sorted(
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and netns_id(entry.name) == ns
    )


def hold(ready: Path) -> None:
    """The holder's whole life: make the namespace, say so in `ready`, sleep until signalled.

    Runs as its own process (``python -m puretor.testnet hold-netns``) right after start, while
    still single-threaded as unshare(CLONE_NEWUSER) requires.
    """
    enter_private_netns(with_userns=True)
    add_target_route(None)
    require_sealed(None)
    stop = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # so that sigwait, not a handler, gets them
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.rename(ready)
    signal.sigwait(stop)
