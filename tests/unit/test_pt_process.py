"""A managed transport proxy's life (aio/pt.py) with Debian's real obfs4proxy: configured
through pt-spec's environment and stdout, restarted when it dies, stopped by closing stdin."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import pytest

from puretor.aio.pt import ManagedProxy, TransportError, Transports
from puretor.config.values import parse_transport_plugin

OBFS4PROXY = shutil.which("obfs4proxy") or "/usr/bin/obfs4proxy"
needs_obfs4proxy = pytest.mark.skipif(
    not os.access(OBFS4PROXY, os.X_OK), reason="obfs4proxy is not installed"
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@needs_obfs4proxy
def test_launch_restart_and_stop(tmp_path: Path) -> None:
    async def main() -> None:
        proxy = ManagedProxy(parse_transport_plugin(f"obfs4 exec {OBFS4PROXY}"), tmp_path / "pt")
        host, port = await proxy.address("obfs4")
        assert host == "127.0.0.1" and port > 0
        first = proxy.pid
        assert first is not None and (tmp_path / "pt").is_dir()
        os.kill(first, signal.SIGKILL)  # it dies: restarted
        for _ in range(100):
            await asyncio.sleep(0.05)
            if proxy.pid not in (None, first):
                break
        assert proxy.starts == 2 and proxy.pid not in (None, first)
        assert (await proxy.address("obfs4"))[1] > 0
        with pytest.raises(TransportError, match="no 'meek_lite'"):
            await proxy.address("meek_lite")  # not asked for
        second = proxy.pid
        assert second is not None
        await proxy.close()  # closing stdin is enough for obfs4proxy
        assert not _alive(second)

    asyncio.run(main())


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        t = Transports([parse_transport_plugin("obfs4 exec /nonexistent/obfs4proxy")], tmp_path)
        with pytest.raises(TransportError, match="could not launch managed proxy"):
            await t.connect("obfs4", "127.0.0.1", 9, ())
        with pytest.raises(TransportError, match="no ClientTransportPlugin"):
            await t.connect("snowflake", "127.0.0.1", 9, ())
        await t.close()

    asyncio.run(main())
