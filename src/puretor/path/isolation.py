"""Stream isolation: which streams may share a circuit (C tor ``SocksPort`` isolation flags).

Every stream gets an :class:`IsolationKey`.  A circuit remembers the key of its first stream and
afterwards takes only streams with an *equal* key (:class:`CircuitIsolation`).  The key holds
exactly the stream attributes its listener isolates on, so equality means "no isolation flag
separates these streams":

* ``IsolateSOCKSAuth`` (default on): SOCKS username and password, compared as bytes; "no auth"
  differs from an empty username (C tor ``memeq_opt``).  Only a digest is kept, so keys can be
  logged.
* ``IsolateClientAddr`` (default on): the client's IP address (not its port).
* ``IsolateClientProtocol``: the listener protocol / SOCKS version (``"socks4"``, ``"socks5"``...).
* ``IsolateDestAddr`` / ``IsolateDestPort``: the requested host (case-insensitive) / port.
* ``SessionGroup=N``: listeners with the same group may share circuits; without it every
  listener is its own group (C tor gives each one a unique automatic group).
* The NEWNYM generation: after NEWNYM no earlier key equals a new one.

Unlike C tor, which compares each new stream only on its *own* listener's flags, the key also
carries the flags themselves: two listeners in one SessionGroup but with different flags never
share a circuit.  That is stricter, never looser.

Library callers use :class:`IsolationToken`: streams share circuits only with equal tokens.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from puretor.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ListenerFlags:
    """The isolation flags of one listener (C tor names in the field comments)."""

    isolate_socks_auth: bool = True  # IsolateSOCKSAuth / NoIsolateSOCKSAuth
    isolate_client_addr: bool = True  # IsolateClientAddr / NoIsolateClientAddr
    isolate_dest_addr: bool = False  # IsolateDestAddr
    isolate_dest_port: bool = False  # IsolateDestPort
    isolate_client_protocol: bool = False  # IsolateClientProtocol
    session_group: int | None = None  # SessionGroup=N


_FLAG_WORDS = {
    "isolatesocksauth": ("isolate_socks_auth", True),
    "noisolatesocksauth": ("isolate_socks_auth", False),
    "isolateclientaddr": ("isolate_client_addr", True),
    "noisolateclientaddr": ("isolate_client_addr", False),
    "isolatedestaddr": ("isolate_dest_addr", True),
    "noisolatedestaddr": ("isolate_dest_addr", False),
    "isolatedestport": ("isolate_dest_port", True),
    "noisolatedestport": ("isolate_dest_port", False),
    "isolateclientprotocol": ("isolate_client_protocol", True),
    "noisolateclientprotocol": ("isolate_client_protocol", False),
}


def parse_isolation_flags(words: Iterable[str]) -> tuple[ListenerFlags, list[str]]:
    """Read the isolation words of a ``SocksPort`` line (case-insensitive, as C tor).

    Returns the flags and the words that are not about isolation, in order, for the caller.
    """
    values: dict[str, bool | int | None] = {}
    rest: list[str] = []
    for word in words:
        lower = word.lower()
        if lower in _FLAG_WORDS:
            name, value = _FLAG_WORDS[lower]
            values[name] = value
        elif lower.startswith("sessiongroup="):
            number = word.split("=", 1)[1]
            if not number.isdigit():
                raise ConfigError(f"SessionGroup wants a non-negative integer, not {number!r}")
            values["session_group"] = int(number)
        else:
            rest.append(word)
    return ListenerFlags(**values), rest  # type: ignore[arg-type]


class IsolationToken:
    """An opaque token for library streams: streams share circuits only if their tokens are
    the same object.  Create one per "identity" you want kept apart."""

    __slots__ = ("_n",)
    _counter = itertools.count(1)

    def __init__(self) -> None:
        self._n = next(IsolationToken._counter)

    def __repr__(self) -> str:
        return f"IsolationToken(#{self._n})"


# Library streams that ask for no particular isolation share this one.
DEFAULT_TOKEN = IsolationToken()


@dataclass(frozen=True, slots=True)
class IsolationKey:
    """What a stream must match to join a circuit; compare with ``==``."""

    generation: int  # NEWNYM epoch
    session: Hashable  # ("listener", id), ("group", N) or ("token", IsolationToken)
    flags: ListenerFlags | None = None
    socks_auth: bytes | None = None  # digest of (username, password) if isolated on
    client_addr: str | None = None
    dest_addr: str | None = None
    dest_port: int | None = None
    protocol: str | None = None


def _auth_digest(username: bytes | None, password: bytes | None) -> bytes:
    # Length-prefixed so that ("ab", "c") ≠ ("a", "bc"), with None distinct from b"".
    h = hashlib.sha256(b"puretor-isolation-auth")
    for part in (username, password):
        h.update(b"\x00" if part is None else b"\x01" + len(part).to_bytes(4, "big") + part)
    return h.digest()


def _normalise_addr(addr: str) -> str:
    try:
        return ipaddress.ip_address(addr.strip("[]")).compressed
    except ValueError:
        return addr  # e.g. a Unix socket path


def isolation_key(
    listener_id: Hashable,
    listener_flags: ListenerFlags,
    client_addr: str | None,
    socks_username: bytes | None,
    socks_password: bytes | None,
    dest_host: str,
    dest_port: int,
    protocol: str,
    generation: int,
) -> IsolationKey:
    """The key of a stream that arrived on a listener (SOCKS, HTTP CONNECT, DNS...)."""
    f = listener_flags
    session: Hashable = (
        ("group", f.session_group) if f.session_group is not None else ("listener", listener_id)
    )
    return IsolationKey(
        generation=generation,
        session=session,
        flags=f,
        socks_auth=_auth_digest(socks_username, socks_password) if f.isolate_socks_auth else None,
        client_addr=(
            _normalise_addr(client_addr) if f.isolate_client_addr and client_addr else None
        ),
        dest_addr=dest_host.lower() if f.isolate_dest_addr else None,
        dest_port=dest_port if f.isolate_dest_port else None,
        protocol=protocol if f.isolate_client_protocol else None,
    )


def token_key(token: IsolationToken | None, generation: int) -> IsolationKey:
    """The key of a library stream: its token (or the shared default) and the NEWNYM epoch."""
    return IsolationKey(generation=generation, session=("token", token or DEFAULT_TOKEN))


class NymEpoch:
    """The NEWNYM counter: ``newnym()`` makes every earlier key unequal to every later one.
    (The circuit manager should also stop handing out existing clean circuits, as C tor marks
    them dirty.)"""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current = 0

    def newnym(self) -> int:
        self.current += 1
        return self.current


class CircuitIsolation:
    """A circuit's isolation: unset until the first stream, then only equal keys."""

    __slots__ = ("key",)

    def __init__(self) -> None:
        self.key: IsolationKey | None = None

    def admits(self, key: IsolationKey) -> bool:
        return self.key is None or self.key == key

    def attach(self, key: IsolationKey) -> None:
        if not self.admits(key):
            raise ValueError("stream isolation key differs from the circuit's")
        self.key = key
