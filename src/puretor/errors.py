"""The exceptions puretor raises, in one tree.

    TorError
    ├── ConfigError                 bad torrc / option / argument
    ├── ProtocolError               a peer or document broke the protocol
    │   ├── RemoteProtocolError     ... the relay/peer did
    │   └── CertsError              the relay could not prove the identity we expected
    ├── DirectoryError              no usable, verified directory information
    │   └── DocumentError           a directory document is malformed or badly signed
    ├── BootstrapError              bootstrap could not complete
    ├── ChannelError                TLS/link failure to a relay (also OSError-compatible)
    ├── CircuitError                a circuit failed to build or was destroyed
    │   ├── CircuitBuildTimeout
    │   └── CircuitDestroyed        carries the DESTROY/TRUNCATED reason
    ├── NoPathError                 no relays satisfy the path constraints
    ├── StreamError(ConnectionError)  a stream failed
    │   ├── StreamRefused           the exit answered RELAY_END (carries the reason)
    │   └── StreamTimeout
    ├── OnionError                  onion service failures (carry a SOCKS extended error code)
    └── SocksError                  a SOCKS client sent something we cannot serve
"""

from __future__ import annotations


class TorError(Exception):
    """Base of every puretor error."""


class ConfigError(TorError, ValueError):
    pass


class ProtocolError(TorError):
    pass


class RemoteProtocolError(ProtocolError):
    pass


class CertsError(ProtocolError):
    pass


class DirectoryError(TorError):
    pass


class DocumentError(DirectoryError, ValueError):
    pass


class BootstrapError(TorError):
    pass


class ChannelError(TorError, OSError):
    pass


class CircuitError(TorError):
    pass


class CircuitBuildTimeout(CircuitError, TimeoutError):
    pass


class CircuitDestroyed(CircuitError):
    def __init__(self, message: str, reason: int = 0) -> None:
        super().__init__(message)
        self.reason = reason


class NoPathError(CircuitError):
    pass


class StreamError(TorError, ConnectionError):
    pass


class StreamRefused(StreamError):
    def __init__(self, message: str, reason: int = 1) -> None:
        super().__init__(message)
        self.reason = reason


class StreamTimeout(StreamError, TimeoutError):
    pass


class OnionError(StreamError):
    def __init__(self, message: str, socks_code: int = 0xF0) -> None:
        super().__init__(message)
        self.socks_code = socks_code


class SocksError(TorError):
    pass
