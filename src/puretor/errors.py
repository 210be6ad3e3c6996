"""The exceptions puretor raises, in one tree.

    TorError
    ├── ConfigError                 bad torrc / option / argument
    ├── ProtocolError               a peer or document broke the protocol
    │   ├── RemoteProtocolError     ... the relay/peer did
    │   └── CertsError              the relay could not prove the identity we expected
    ├── DirectoryError              no usable, verified directory information
    │   └── DocumentError           a directory document is malformed or badly signed
    ├── BootstrapError              bootstrap could not complete (or not within its timeout)
    │   └── DependencyError         an installed crypto library fails puretor's self-test
    ├── ClientClosedError           the TorClient was closed (before or during the call)
    ├── ChannelError                TLS/link failure to a relay (also OSError-compatible)
    ├── CircuitError                a circuit failed to build or was destroyed
    │   ├── CircuitBuildTimeout     (also TimeoutError)
    │   ├── CircuitDestroyed        carries the DESTROY/TRUNCATED reason
    │   └── NoPathError             no relays satisfy the path constraints
    ├── StreamError(ConnectionError)  a stream failed
    │   ├── StreamRefused           the exit answered RELAY_END (carries the reason)
    │   ├── StreamTimeout           no answer to RELAY_BEGIN in time (also TimeoutError)
    │   └── OnionError              onion service failures (carry a SOCKS extended error code)
    └── SocksError                  a SOCKS client sent something we cannot serve

Every class is also importable from the top-level package (``puretor.StreamRefused``).
Errors are mapped once where they cross a layer: what ``TorClient.open_connection``
raises is one of these (its ``timeout`` gives `StreamTimeout`, a `TimeoutError`),
except TLS failures on ``ssl=`` streams, which are the standard library's `ssl.SSLError`
(`ssl.SSLCertVerificationError` for a bad certificate or hostname); the httpx transport
raises httpx's exceptions with the puretor or ssl error as ``__cause__``.  See
docs/errors.md for what each operation raises.
"""

from __future__ import annotations

from typing import Any


class TorError(Exception):
    """Base of every puretor error."""


class ConfigError(TorError, ValueError):
    """A bad torrc line, option value, argument or destination port (names the source)."""


class ProtocolError(TorError):
    """A peer or document broke the Tor protocol."""


class RemoteProtocolError(ProtocolError):
    """A relay or other peer sent something the protocol does not allow."""


class CertsError(ProtocolError):
    """A relay could not prove the identity we expected (CERTS cell, ed25519 certificates)."""


class DirectoryError(TorError):
    """No usable, verified directory information (consensus, certificates, microdescriptors)."""


class DocumentError(DirectoryError, ValueError):
    """A directory document is malformed or badly signed."""


class BootstrapError(TorError):
    """Bootstrap could not complete: unusable DataDirectory, no first circuit, or timeout.

    With no directory source reachable puretor keeps trying, as C tor does; a
    ``bootstrap_timeout`` turns that into this error, naming where it was stuck.
    """


class DependencyError(BootstrapError):
    """An installed dependency (cryptography, PyNaCl, hashlib's OpenSSL) fails the self-test.

    Bootstrap checks the primitives puretor needs against known answers first
    (`puretor.selftest`, ``tor-client --verify-install``).  The message names the
    dependency, its version and what puretor needs from it; ``report`` is the whole
    `puretor.selftest.SelfTestReport`.
    """

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class ClientClosedError(TorError):
    """The `TorClient` was closed before or while the call ran."""


class ChannelError(TorError, OSError):
    """A TLS/link failure to a relay (also an `OSError`).

    ``reason`` is C tor's name for why the connection ended (``NOROUTE``,
    ``CONNECTREFUSED``, ``TIMEOUT``, ``TLS_ERROR``, ``IDENTITY``, ``MISC``...);
    ``warning`` a short human-readable cause ("Network is unreachable"); ``state``
    where the connection was when it failed ("connect()ing", "handshaking").
    """

    def __init__(
        self, message: str, reason: str = "MISC", *, warning: str = "", state: str = ""
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.warning = warning or message
        self.state = state


class CircuitError(TorError):
    """A circuit failed to build or was destroyed."""


class CircuitBuildTimeout(CircuitError, TimeoutError):
    """A circuit took longer than the build timeout."""


class CircuitDestroyed(CircuitError):
    """A circuit was torn down; ``reason`` is the DESTROY/TRUNCATED reason code."""

    def __init__(self, message: str, reason: int = 0) -> None:
        super().__init__(message)
        self.reason = reason


class NoPathError(CircuitError):
    """No relays satisfy the path constraints (e.g. no exit allows the port)."""


class StreamError(TorError, ConnectionError):
    """A stream failed (also a `ConnectionError`, hence an `OSError`)."""


class StreamRefused(StreamError):
    """The stream was ended with a RELAY_END reason, by the exit or by us.

    ``reason`` is the tor-spec §6.3 code (`puretor.proto.relaymsg.EndReason`):
    ``RESOLVEFAILED`` (2) for a name the exit cannot resolve or an invalid host,
    ``CONNECTREFUSED`` (3) for a refused connection (C tor exits often report a refused
    asynchronous connect as ``MISC`` (1)), ``EXITPOLICY`` (4) when every exit tried
    refuses the destination, ``DESTROY`` (5) when the circuit went away.
    ``reason_name`` gives the name.
    """

    def __init__(self, message: str, reason: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        # A resolve the exit said may work later (RESOLVED "transient error").
        self.transient = False

    @property
    def reason_name(self) -> str:
        """The END reason's name, e.g. ``"CONNECTREFUSED"`` (``"UNKNOWN(n)"`` if new)."""
        from puretor.proto.relaymsg import EndReason

        return EndReason.describe(self.reason)


class StreamTimeout(StreamError, TimeoutError):
    """The exit did not answer the stream request in time (also a `TimeoutError`)."""


class OnionError(StreamError):
    """An onion service failure; ``socks_code`` is the proposal 304 SOCKS extended error.

    ``0xF0`` descriptor not found, ``0xF1`` invalid descriptor, ``0xF2`` introduction
    failed, ``0xF3`` rendezvous failed, ``0xF4`` client authorization missing, ``0xF5``
    client authorization wrong, ``0xF6`` malformed address, ``0xF7`` introduction timed out.
    """

    def __init__(self, message: str, socks_code: int = 0xF0) -> None:
        super().__init__(message)
        self.socks_code = socks_code


class SocksError(TorError):
    """A SOCKS client sent something the daemon cannot serve."""


__all__ = [
    "TorError",
    "ConfigError",
    "ProtocolError",
    "RemoteProtocolError",
    "CertsError",
    "DirectoryError",
    "DocumentError",
    "BootstrapError",
    "DependencyError",
    "ClientClosedError",
    "ChannelError",
    "CircuitError",
    "CircuitBuildTimeout",
    "CircuitDestroyed",
    "NoPathError",
    "StreamError",
    "StreamRefused",
    "StreamTimeout",
    "OnionError",
    "SocksError",
]
