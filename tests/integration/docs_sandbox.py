"""A sandbox in which documented shell commands run as written (for test_docs_commands.py).

A `Sandbox` is a mount namespace and a network namespace of their own, kept by a holder
process (``unshare``; it exits when the test closes its stdin, or dies):

* the network namespace has only loopback, like the one the test suite seals itself in, but
  a fresh one: the session's own private network occupies the fixed 127.N.0.1 addresses of
  the suite's namespace, and a benchmark that starts its own network needs them free;
* ``/run/netns`` is a private tmpfs, so ``ip netns add puretor-testnet`` (what
  ``puretor-testnet up`` does as root) makes a name only this sandbox sees: the docs' default
  namespace name never collides with another sandbox, another test run or a developer's
  network, and nothing of it outlives the sandbox;
* ``/tmp``, the repository and the test's Python environment are copy-on-write overlays
  (their upper layers in a private tmpfs on ``/var/tmp``): the docs' fixed paths
  (``/tmp/ptnet``, ``/tmp/1MiB``, ``~/puretor`` under a HOME in ``/tmp``) are the sandbox's
  own, and whatever the commands write into the checkout (``build/``, fuzz corpora,
  ``bench.json``, ``testnet-run/``) or install (``pip install atheris``) is gone with it.

Commands run with ``nsenter`` into both namespaces; the test reads the files they made
through ``/proc/HOLDER/root``. `close` runs ``puretor-testnet down`` for every network the
commands left up, then ends every process still in the sandbox - each one started by it -
by PID, and reports them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HOLDER_SETUP = r"""
set -e
ip link set lo up
mount -t tmpfs -o mode=0700 puretor-docs-layers /var/tmp
mkdir -p /run/netns
mount -t tmpfs -o mode=0755 puretor-docs-netns /run/netns
i=0
for dir in "$@"; do
    i=$((i + 1))
    mkdir -p "/var/tmp/upper$i" "/var/tmp/work$i"
    mount -t overlay puretor-docs -o "lowerdir=$dir,upperdir=/var/tmp/upper$i,workdir=/var/tmp/work$i" "$dir"
done
"""

MARKER_ENV = "PURETOR_DOCS_SANDBOX"


def overlay_roots(paths: list[Path]) -> list[Path]:
    """The directories to overlay: `paths` without those inside another one of them."""
    resolved = sorted({p.resolve() for p in paths}, key=lambda p: len(p.parts))
    roots: list[Path] = []
    for p in resolved:
        if not any(p == r or r in p.parents for r in roots):
            roots.append(p)
    for p in roots:
        if "," in str(p) or ":" in str(p):
            raise ValueError(f"cannot overlay {p}: ',' or ':' in the path")
    return roots


def _ns(pid: int | str, kind: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)


def _state(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()[0]


@dataclass
class Run:
    """What one script run in the sandbox did."""

    output: str
    rc: int | None  # None: stopped at the timeout
    seconds: float


@dataclass
class Closed:
    """What `Sandbox.close` found and did."""

    down_output: str = ""
    left_running: list[str] = field(default_factory=list)


class Sandbox:
    def __init__(self, name: str, *, overlays: list[Path], env: dict[str, str]) -> None:
        self.name = name
        self.overlays = overlay_roots(overlays)
        self.marker = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
        self.env = {**env, MARKER_ENV: self.marker}
        self.holder: subprocess.Popen[bytes] | None = None
        self.named_nets: set[tuple[int, int]] = set()
        self._running: set[subprocess.Popen[bytes]] = set()
        self.interrupted = False

    # -- life -----------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        argv = ["unshare", "--mount", "--propagation", "private", "--net", "--"]
        argv += [sys.executable, "-I", __file__, "hold", *map(str, self.overlays)]
        self.holder = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        assert self.holder.stdout is not None
        lines: list[bytes] = []
        ready = threading.Event()

        def read() -> None:
            assert self.holder is not None and self.holder.stdout is not None
            for line in self.holder.stdout:
                lines.append(line)
                if line.strip() == b"ready":
                    ready.set()
                    return

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout):
            out = b"".join(lines).decode(errors="replace")
            self._end_holder()
            raise RuntimeError(f"sandbox {self.name} did not start: {out}")

    @property
    def pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    def host_path(self, path: str | Path) -> Path:
        """`path` as seen inside the sandbox, reachable from outside."""
        return Path(f"/proc/{self.pid}/root") / str(path).lstrip("/")

    def write_file(self, path: str | Path, content: bytes) -> None:
        target = self.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)

    def _note_named_nets(self) -> None:
        netns_dir = self.host_path("/run/netns")
        with contextlib.suppress(OSError):
            for entry in netns_dir.iterdir():
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    self.named_nets.add((st.st_dev, st.st_ino))

    def run(
        self,
        script: str,
        *,
        env: dict[str, str],
        timeout: float,
        log: Path | None = None,
        interruptible: bool = True,
    ) -> Run:
        """Run `script` with ``bash -e`` inside the sandbox (it must ``cd`` itself)."""
        if interruptible and self.interrupted:
            return Run("[test: not run, the test run was interrupted]\n", None, 0.0)
        argv = ["nsenter", f"--target={self.pid}", "--mount", "--net", "--"]
        argv += ["bash", "-e", "-c", script]
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**env, MARKER_ENV: self.marker},
            start_new_session=True,
        )
        if interruptible:
            self._running.add(proc)
        chunks: list[str] = []
        watcher = threading.Thread(target=self._watch_nets, args=(proc,), daemon=True)
        watcher.start()

        def pump() -> None:
            assert proc.stdout is not None
            with open(log, "a", encoding="utf-8") if log else contextlib.nullcontext() as f:
                for raw in proc.stdout:
                    line = raw.decode(errors="replace")
                    chunks.append(line)
                    if f is not None:
                        f.write(line)
                        f.flush()

        pumper = threading.Thread(target=pump, daemon=True)
        pumper.start()
        try:
            rc: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(15)
                    break
                except subprocess.TimeoutExpired:
                    continue
        pumper.join(20)
        self._running.discard(proc)
        self._note_named_nets()
        output = "".join(chunks)
        if rc is None:
            output += f"\n[test: stopped after {timeout:.0f} s]\n"
        return Run(output, rc, time.monotonic() - t0)

    def interrupt(self) -> None:
        """Stop the scripts running now and refuse new ones (`close` still works)."""
        self.interrupted = True
        for proc in list(self._running):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    def _watch_nets(self, proc: subprocess.Popen[bytes]) -> None:
        # Named namespaces a block makes and deletes again are remembered, so that a process
        # left running in one after `down` is still found at `close`.
        while proc.poll() is None:
            self._note_named_nets()
            time.sleep(1.0)

    # -- end ------------------------------------------------------------------------------

    def members(self) -> list[int]:
        """Every process that belongs to this sandbox (not the holder, not us)."""
        return members(self.pid, self.named_nets, self.marker)

    def close(self, *, network_dirs: list[str], python: str, env: dict[str, str]) -> Closed:
        """Stop the networks in `network_dirs` that are up, then everything else left."""
        closed = Closed()
        if self.holder is None:
            return closed
        try:
            if self.holder.poll() is None:
                self._note_named_nets()
                downs = [d for d in network_dirs if self.host_path(Path(d) / "state.json").exists()]
                if downs:
                    script = "\n".join(
                        f"{python} -m puretor.testnet down --dir {d} || true" for d in downs
                    )
                    run = self.run(script, env=env, timeout=120, interruptible=False)
                    closed.down_output = run.output
            left = self.members()
            closed.left_running = [f"{pid}: {_cmdline(pid)}" for pid in left]
            self._end(left)
        finally:
            self._end_holder()
        return closed

    @staticmethod
    def _end(pids: list[int]) -> None:
        end(pids)

    def _end_holder(self) -> None:
        if self.holder is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            if self.holder.stdin is not None:
                self.holder.stdin.close()
        try:
            self.holder.wait(30)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait(10)


def members(holder: int, named_nets: set[tuple[int, int]], marker: str) -> list[int]:
    """The processes of the sandbox that `holder` keeps: in its mount or network namespace,
    in a named namespace made in it, or with its marker in their environment."""
    mnt, net = _ns(holder, "mnt"), _ns(holder, "net")
    nets = {net, *named_nets}
    mark = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (holder, os.getpid()):
            continue
        pid = int(entry)
        if _state(pid) in (None, "Z"):
            continue
        environ: list[bytes] = []
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        # Another sandbox's process: a remembered named namespace may be gone and its inode
        # number reused by the other sandbox's namespace.
        other = any(e.startswith(f"{MARKER_ENV}=".encode()) and e != mark for e in environ)
        ours = _ns(pid, "mnt") == mnt or mark in environ
        ours = ours or (_ns(pid, "net") in nets and not other)
        if ours:
            found.append(pid)
    return found


def end(pids: list[int]) -> None:
    """SIGTERM (and SIGCONT), then SIGKILL after 10 s to whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGCONT):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_state(p) not in (None, "Z") for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _state(pid) not in (None, "Z"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def hold(overlays: list[str]) -> int:
    """The holder's life, inside the new namespaces: set them up, say "ready", wait until the
    test closes our stdin (or dies), then end whatever of the sandbox is still running (after
    a normal `close`, nothing)."""
    setup = subprocess.run(["bash", "-c", HOLDER_SETUP, "holder", *overlays])
    if setup.returncode != 0:
        return setup.returncode
    print("ready", flush=True)
    sys.stdin.buffer.read()
    named: set[tuple[int, int]] = set()
    with contextlib.suppress(OSError):
        for entry in Path("/run/netns").iterdir():
            with contextlib.suppress(OSError):
                st = entry.stat()
                named.add((st.st_dev, st.st_ino))
    end(members(os.getpid(), named, os.environ.get(MARKER_ENV, "?")))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["hold"]:
        sys.exit(hold(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} hold DIR...")
