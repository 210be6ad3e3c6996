"""Applications of the library: the `tor-client` daemon and its listeners.

Everything here uses `puretor.TorClient` through its public API only, as any other
program would; nothing below `puretor.client` imports from here (an import-direction
test keeps it so).

* :mod:`puretor.app.daemon` - torrc, logging, signals, the listeners' life cycle;
* :mod:`puretor.app.socks` - the SOCKS4/4a/5 listener (``SocksPort``);
* :mod:`puretor.app.httptunnel`, :mod:`puretor.app.transport`, :mod:`puretor.app.dnsport`,
  :mod:`puretor.app.metrics` - the other doors (``HTTPTunnelPort``, ``TransPort``,
  ``DNSPort``, ``MetricsPort``), opened by :mod:`puretor.app.doors`;
* :mod:`puretor.app.proxied` - what the SOCKS, HTTP CONNECT and transparent doors share:
  an application connection relayed to a Tor stream;
* :mod:`puretor.app.control` - the control port.
"""
