"""Make ``tests/fakes`` importable as ``fakes`` for the core two-party tests."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[2])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import pytest  # noqa: E402

from fakes.relay import FakeRelay, FakeRelayConfig, build_circuit, open_channel  # noqa: E402
from puretor.proto.channel import Channel  # noqa: E402
from puretor.proto.tunnel import Tunnel  # noqa: E402


@pytest.fixture
def fake() -> FakeRelay:
    return FakeRelay(FakeRelayConfig())


@pytest.fixture
def channel(fake: FakeRelay) -> Channel:
    return open_channel(fake)


@pytest.fixture
def circ(channel: Channel, fake: FakeRelay) -> Tunnel:
    """A 3-hop circuit, open."""
    return build_circuit(channel, fake, 3)
