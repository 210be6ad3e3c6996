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

NEWNYM is the circuit manager's business: it stops handing out every circuit built
before it, whatever the keys.

Unlike C tor, which compares each new stream only on its *own* listener's flags, the key also
carries the flags themselves: two listeners in one SessionGroup but with different flags never
share a circuit.  That is stricter, never looser.

Library callers use :class:`IsolationToken` (or any hashable value): streams share circuits
only with equal tokens.  Library keys and listener keys never compare equal.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ListenerFlags:
    """The isolation flags of one listener (C tor names in the field comments)."""

    isolate_socks_auth: bool = True  # IsolateSOCKSAuth / NoIsolateSOCKSAuth
    isolate_client_addr: bool = True  # IsolateClientAddr / NoIsolateClientAddr
    isolate_dest_addr: bool = False  # IsolateDestAddr
    isolate_dest_port: bool = False  # IsolateDestPort
    isolate_client_protocol: bool = False  # IsolateClientProtocol
    session_group: int | None = None  # SessionGroup=N


class IsolationToken:
    """Streams opened with different tokens never share a circuit.

    Pass one as ``isolation=`` to `TorClient.open_connection`, `TorClient.resolve`,
    `TorTransport`...  Streams with the same token may share circuits (and so appear
    to come from the same exit); a fresh token gets circuits no other token has used.
    Tokens compare by identity; ``name`` only shows in ``repr``.  Any hashable value
    works as an isolation key too (equal values share circuits); ``None`` means the
    client's default key.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str = "") -> None:
        self._name = name

    def __repr__(self) -> str:
        return (
            f"IsolationToken({self._name!r})" if self._name else f"<IsolationToken {id(self):#x}>"
        )


# Library streams that ask for no particular isolation share this one.
DEFAULT_TOKEN = IsolationToken("default")


@dataclass(frozen=True, slots=True)
class IsolationKey:
    """What a stream must match to join a circuit; compare with ``==``."""

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
) -> IsolationKey:
    """The key of a stream that arrived on a listener (SOCKS, HTTP CONNECT, DNS...)."""
    f = listener_flags
    session: Hashable = (
        ("group", f.session_group) if f.session_group is not None else ("listener", listener_id)
    )
    return IsolationKey(
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


class CircuitIsolation:
    """A circuit's isolation: unset until the first stream, then only equal keys."""

    __slots__ = ("key",)

    def __init__(self) -> None:
        self.key: Hashable | None = None  # an IsolationKey, or a library token

    def admits(self, key: Hashable) -> bool:
        return self.key is None or self.key == key

    def attach(self, key: Hashable) -> None:
        if not self.admits(key):
            raise ValueError("stream isolation key differs from the circuit's")
        self.key = key
