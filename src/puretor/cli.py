"""The ``tor-client`` command: a SOCKS5 proxy whose every connection goes through Tor."""

from __future__ import annotations

import sys

from puretor import __version__


def main(argv: list[str] | None = None) -> int:
    from puretor.app.daemon import run_daemon

    return run_daemon(sys.argv[1:] if argv is None else argv, version=__version__)


if __name__ == "__main__":
    sys.exit(main())
