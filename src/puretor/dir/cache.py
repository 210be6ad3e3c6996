"""The on-disk directory cache in the DataDirectory (C tor's file names).

* ``cached-microdesc-consensus`` - the exact consensus bytes;
* ``cached-certs`` - authority key certificates, concatenated;
* ``cached-microdescs`` - microdescriptors, each preceded by C tor's
  ``@last-listed YYYY-MM-DD HH:MM:SS`` annotation (so unreferenced ones can be
  forgotten after a week); C tor's ``cached-microdescs.new`` journal is read too,
  so a C tor DataDirectory can be loaded.

The directory is created (or tightened) to mode 0700; files are written
atomically (temporary file, fsync, rename, fsync of the directory) with mode
0600.  Everything is checked again on `DirCache.load`: certificates and
consensus signatures are verified as if they came from the network, and a
consensus more than 24 h past valid-until is not used.  Unparseable files
are skipped and reported in `DirCache.problems` (or raised with
``strict=True``); an unusable directory raises `DirectoryError`.

This module does blocking file I/O: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import stat
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from puretor.dir.authorities import Authority
from puretor.dir.microdesc import Microdesc, parse_microdesc, split_microdescs
from puretor.dir.state import DirState
from puretor.errors import DirectoryError

__all__ = ["CONSENSUS_FILE", "CERTS_FILE", "MICRODESCS_FILE", "DirCache"]

CONSENSUS_FILE = "cached-microdesc-consensus"
CERTS_FILE = "cached-certs"
MICRODESCS_FILE = "cached-microdescs"
_TIME_FMT = "%Y-%m-%d %H:%M:%S"


class DirCache:
    """Load a `DirState` from, and save it to, ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        authorities: Iterable[Authority],
        *,
        strict: bool = False,
        **state_options: Any,
    ) -> None:
        self.path = Path(data_dir)
        self.authorities = tuple(authorities)
        self.strict = strict
        self.state_options = state_options
        self.problems: list[str] = []  # what load() had to skip, for the log
        self._saved: dict[str, object] = {}

    # -- directory and files ------------------------------------------------

    def ensure_dir(self, *, probe: bool = False) -> None:
        """Create the directory 0700, or tighten an existing one we own (as C tor does).

        With ``probe``, also check that files can be created in it (a read-only
        directory would silently lose the guard state: refuse it instead).
        """
        if self.path.exists() and not self.path.is_dir():
            raise DirectoryError(f"cannot use {self.path} as the DataDirectory: not a directory")
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.path.stat()
            if not stat.S_ISDIR(st.st_mode):
                raise DirectoryError(
                    f"cannot use {self.path} as the DataDirectory: not a directory"
                )
            if st.st_uid != os.getuid():
                # C tor's check_private_dir: someone else's directory is never ours to use.
                raise DirectoryError(
                    f"cannot use {self.path} as the DataDirectory: it is not owned by this "
                    f"user ({_user_name(os.getuid())}, {os.getuid()}) but by "
                    f"{_user_name(st.st_uid)} ({st.st_uid}). Perhaps you are running "
                    "tor-client as the wrong user?"
                )
            if st.st_mode & 0o077:
                os.chmod(self.path, 0o700)
        except OSError as e:
            raise DirectoryError(
                f"cannot use {self.path} as the DataDirectory: {e.strerror or e}"
            ) from e
        if probe:
            try:
                fd, name = _create_temporary(self.path, ".write-test.", "")
                os.close(fd)
                os.unlink(name)
            except OSError as e:
                raise DirectoryError(
                    f"cannot use {self.path} as the DataDirectory: cannot create files in it "
                    f"({e.strerror or e})"
                ) from e

    def _read(self, name: str) -> bytes | None:
        path = self.path / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise DirectoryError(f"cannot read {path}: {e.strerror or e}") from e

    def _write(self, name: str, data: bytes) -> None:
        """Atomic replace: write a temporary file, fsync it, rename it over ``name``."""
        self.ensure_dir()
        path = self.path / name
        tmp: str | None = None
        try:
            fd, tmp = _create_temporary(self.path, f".{name}.", ".tmp")
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise DirectoryError(f"cannot write {path}: {e.strerror or e}") from e
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _problem(self, message: str, exc: Exception) -> None:
        if self.strict:
            raise DirectoryError(f"{message}: {exc}") from exc
        self.problems.append(f"{message}: {exc}")

    # -- load / save --------------------------------------------------------

    def load(self, now: float) -> DirState:
        """A `DirState` holding whatever cached documents still verify at ``now``."""
        self.problems.clear()
        self.ensure_dir(probe=True)
        state = DirState(self.authorities, **self.state_options)
        certs = self._read(CERTS_FILE)
        if certs:
            try:
                state.add_certs(certs, now)
            except DirectoryError as e:
                self._problem(f"ignoring {self.path / CERTS_FILE}", e)
        # C tor appends new microdescs to a ".new" journal; read it too if present.
        for name in (MICRODESCS_FILE, MICRODESCS_FILE + ".new"):
            mds = self._read(name)
            if mds:
                try:
                    state.restore_microdescs(_parse_cached_microdescs(mds, now, self.problems))
                except DirectoryError as e:
                    self._problem(f"ignoring {self.path / name}", e)
        consensus = self._read(CONSENSUS_FILE)
        if consensus:
            try:
                state.add_consensus(consensus, now)
            except DirectoryError as e:
                self._problem(f"not using {self.path / CONSENSUS_FILE}", e)
        state.forget_failures()  # cache problems must not delay the first network fetch
        self._saved = self._fingerprint(state)
        return state

    @staticmethod
    def _fingerprint(state: DirState) -> dict[str, object]:
        return {
            CONSENSUS_FILE: state.consensus.digest_sha3_256 if state.consensus else None,
            CERTS_FILE: frozenset(state.certs),
            MICRODESCS_FILE: frozenset(state.microdescs),
        }

    def save(self, state: DirState, *, force: bool = False) -> None:
        """Write whatever changed since the last load/save."""
        current = self._fingerprint(state)
        changed = {k for k, v in current.items() if force or self._saved.get(k) != v}
        if CONSENSUS_FILE in changed and state.consensus is not None:
            self._write(CONSENSUS_FILE, state.consensus.raw)
        if CERTS_FILE in changed and state.certs:
            self._write(CERTS_FILE, b"".join(_ensure_nl(c.raw) for c in state.certs.values()))
        if MICRODESCS_FILE in changed and state.microdescs:
            parts = []
            for digest, md in state.microdescs.items():
                seen = state.md_last_listed.get(digest, 0.0)
                stamp = datetime.fromtimestamp(seen, UTC).strftime(_TIME_FMT)
                parts.append(b"@last-listed " + stamp.encode() + b"\n" + _ensure_nl(md.raw))
            self._write(MICRODESCS_FILE, b"".join(parts))
        self._saved = current


def _ensure_nl(raw: bytes) -> bytes:
    return raw if raw.endswith(b"\n") else raw + b"\n"


def _parse_cached_microdescs(
    data: bytes, now: float, problems: list[str]
) -> list[tuple[Microdesc, float]]:
    """(Microdesc, last-listed) pairs; the annotation lines precede each microdesc."""
    out: list[tuple[Microdesc, float]] = []
    prev_end = 0
    for start, end in split_microdescs(data):
        last_listed = now
        for line in data[prev_end:start].split(b"\n"):
            if line.startswith(b"@last-listed "):
                try:
                    when = datetime.strptime(line[13:].decode().strip(), _TIME_FMT)
                    last_listed = when.replace(tzinfo=UTC).timestamp()
                except ValueError:
                    pass
        prev_end = end
        try:
            out.append((parse_microdesc(data, start, end), last_listed))
        except DirectoryError as e:
            problems.append(f"skipping a cached microdescriptor: {e}")
    return out


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "<unknown>"


def _create_temporary(directory: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file of our own, mode 0600, as ``tempfile.mkstemp`` - which would import
    ``tempfile``, ``shutil``, ``bz2`` and ``lzma`` (~0.5 MB of RSS) for this alone."""
    for _ in range(100):
        name = str(directory / f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {directory}")
