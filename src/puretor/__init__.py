"""puretor: a pure-Python Tor client.

The ``tor-client`` command runs a SOCKS5 proxy whose every connection travels
through a 3-hop Tor circuit built by this package; the same engine is an asyncio
library (:class:`puretor.TorClient`).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
