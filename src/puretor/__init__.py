"""puretor: a pure-Python Tor client.

The ``tor-client`` command runs a SOCKS5 proxy whose every connection travels
through a 3-hop Tor circuit built by this package; the same engine is an asyncio
library (:class:`puretor.TorClient`).

Public API: `TorClient` (and its `OnionService`), `TorConfig`, `IsolationToken`, `BootstrapStatus`,
`start_tls`, `EndReason` and the exceptions of `puretor.errors` (also importable
from here).  Elsewhere: `puretor.httpx_transport.TorTransport` (needs httpx) and
`puretor.sync.TorClient`, the blocking facade.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from puretor.errors import (
    BootstrapError,
    CertsError,
    ChannelError,
    CircuitBuildTimeout,
    CircuitDestroyed,
    CircuitError,
    ClientClosedError,
    ConfigError,
    DependencyError,
    DirectoryError,
    DocumentError,
    NoPathError,
    OnionError,
    ProtocolError,
    RemoteProtocolError,
    SocksError,
    StreamError,
    StreamRefused,
    StreamTimeout,
    TorError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "TorClient",
    "OnionService",
    "TorConfig",
    "IsolationToken",
    "BootstrapStatus",
    "EndReason",
    "start_tls",
    "errors",
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
    "CircuitEvent",
    "StreamEvent",
    "ChannelEvent",
    "BandwidthEvent",
    "StreamBandwidthEvent",
    "BootstrapEvent",
    "CircuitBandwidthEvent",
    "GuardEvent",
    "NetworkLivenessEvent",
    "BuildTimeoutEvent",
    "NewConsensusEvent",
    "GeneralStatusEvent",
    "OnionDescriptorEvent",
    "OnionClientAuth",
    "RelayRef",
]
_EVENTS = frozenset(
    (
        "CircuitEvent StreamEvent ChannelEvent BandwidthEvent StreamBandwidthEvent "
        "BootstrapEvent RelayRef CircuitBandwidthEvent GuardEvent NetworkLivenessEvent "
        "BuildTimeoutEvent NewConsensusEvent GeneralStatusEvent OnionDescriptorEvent"
    ).split()
)

if TYPE_CHECKING:
    from puretor import errors
    from puretor.aio.observe import (
        BandwidthEvent,
        BootstrapEvent,
        BuildTimeoutEvent,
        ChannelEvent,
        CircuitBandwidthEvent,
        CircuitEvent,
        GeneralStatusEvent,
        GuardEvent,
        NetworkLivenessEvent,
        NewConsensusEvent,
        OnionDescriptorEvent,
        RelayRef,
        StreamBandwidthEvent,
        StreamEvent,
    )
    from puretor.aio.tls import start_tls
    from puretor.client import IsolationToken, OnionClientAuth, OnionService, TorClient
    from puretor.config import TorConfig
    from puretor.dir.state import BootstrapStatus
    from puretor.proto.relaymsg import EndReason


def __getattr__(name: str) -> Any:
    # Imported on first use, so `python -m puretor.testnet` and the parsers stay light.
    if name in ("TorClient", "IsolationToken", "OnionClientAuth", "OnionService"):
        from puretor import client

        return getattr(client, name)
    if name == "TorConfig":
        from puretor.config import TorConfig

        return TorConfig
    if name == "BootstrapStatus":
        from puretor.dir.state import BootstrapStatus

        return BootstrapStatus
    if name == "EndReason":
        from puretor.proto.relaymsg import EndReason

        return EndReason
    if name in _EVENTS:
        from puretor.aio import observe

        return getattr(observe, name)
    if name == "start_tls":
        from puretor.aio.tls import start_tls

        return start_tls
    if name == "errors":
        import puretor.errors

        return puretor.errors
    raise AttributeError(f"module 'puretor' has no attribute {name!r}")
