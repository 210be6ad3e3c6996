"""puretor: a pure-Python Tor client.

The ``tor-client`` command runs a SOCKS5 proxy whose every connection travels
through a 3-hop Tor circuit built by this package; the same engine is an asyncio
library (:class:`puretor.TorClient`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "TorClient", "TorConfig", "IsolationToken", "errors"]

if TYPE_CHECKING:
    from puretor import errors
    from puretor.client import IsolationToken, TorClient
    from puretor.config import TorConfig


def __getattr__(name: str) -> Any:
    # Imported on first use, so `python -m puretor.testnet` and the parsers stay light.
    if name in ("TorClient", "IsolationToken"):
        from puretor import client

        return getattr(client, name)
    if name == "TorConfig":
        from puretor.config import TorConfig

        return TorConfig
    if name == "errors":
        import puretor.errors

        return puretor.errors
    raise AttributeError(f"module 'puretor' has no attribute {name!r}")
