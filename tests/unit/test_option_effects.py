"""Option effects that show without relays (those that need relays are in
tests/integration/test_options_effects.py).

UseDefaultFallbackDirs decides which directory sources a client with C tor's default
authorities tries first. The suite runs in a sealed network namespace (tests/conftest.py), so
every one of those connections fails at once with ENETUNREACH: what the client *tried* is what
the ``puretor.channel.connect`` audit event shows, and nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from puretor import TorClient, TorConfig
from puretor.dir.authorities import DEFAULT_AUTHORITIES, default_fallbacks
from puretor.testnet import netns


class _Attempts:
    """``puretor.channel.connect`` events of this process, by ChannelManager."""

    def __init__(self) -> None:
        self.by_manager: dict[int, list[tuple[str, int]]] = defaultdict(list)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "puretor.channel.connect":
            return
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_name != "_open":
            frame = frame.f_back  # type: ignore[assignment]
        manager = frame.f_locals.get("self") if frame is not None else None
        self.by_manager[id(manager)].append((str(args[0]), int(args[1])))


ATTEMPTS = _Attempts()
sys.addaudithook(ATTEMPTS.hook)


def _require_sealed() -> None:
    if netns.is_sealed(None):
        return
    reason = "not in a sealed network namespace: this would connect to the public Tor network"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


async def _sources_tried(config: TorConfig, want: int, limit: float) -> list[tuple[str, int]]:
    """Bootstrap in the sealed namespace until ``want`` connections were tried (or ``limit``
    seconds passed): the (address, port) of each."""
    tor = TorClient(config)
    task = asyncio.ensure_future(tor.bootstrap())
    deadline = time.monotonic() + limit
    try:
        while len(ATTEMPTS.by_manager[id(tor._chanmgr)]) < want and time.monotonic() < deadline:
            assert not task.done() or task.exception() is None, task.exception()
            await asyncio.sleep(0.05)
    finally:
        await tor.aclose()
        task.cancel()
    return ATTEMPTS.by_manager[id(tor._chanmgr)][:want]


@pytest.mark.options("UseDefaultFallbackDirs")
def test_default_fallbacks_are_tried_unless_turned_off(tmp_path: Path) -> None:
    _require_sealed()
    authorities = {(a.address, a.or_port) for a in DEFAULT_AUTHORITIES}
    fallbacks = {(f.address, f.or_port) for f in default_fallbacks()}
    assert len(fallbacks) > 10 * len(authorities)

    def config(name: str, **options: Any) -> TorConfig:
        return TorConfig.from_options(DataDirectory=tmp_path / name, SocksPort=0, **options)

    try:
        with_fallbacks = asyncio.run(_sources_tried(config("on"), 3, 10))
        without = asyncio.run(_sources_tried(config("off", UseDefaultFallbackDirs=0), 2, 10))
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    # Default: C tor's fallback list joins the authorities (about 20 fallbacks to each
    # authority, sources picked uniformly): 3 tries all on authorities would be ~1e-4.
    assert len(with_fallbacks) == 3 and set(with_fallbacks) <= authorities | fallbacks
    assert set(with_fallbacks) & fallbacks, with_fallbacks
    # UseDefaultFallbackDirs 0: the authorities only.
    assert len(without) == 2 and set(without) <= authorities, without
