"""Suite-wide setup. At import time - before pytest or any test starts a thread - this moves the
whole pytest process into a fresh private network namespace with only loopback up, plus a local
route for the targets' 198.18.0.0/15. Everything a test starts (tor processes, curl, puretor's
own client, in-process library code) is therefore sealed: nothing can reach a real network.

Fixtures:
    testnet        (session) a running `puretor.testnet.TestNetwork`; `.info` is network.json
    testnet_info   (session) just that info dict

Tests that need the network are marked ``@pytest.mark.testnet`` (done automatically for tests
using these fixtures). Without tor (or without a namespace) they skip - unless the ``CI``
environment variable is set, in which case they fail: CI must never silently skip them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import puretor  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from puretor.testnet import NetworkInfo, TestNetwork, missing_requirements
from puretor.testnet import netns as _netns

SEAL_MODE: str | None = None
SEAL_ERROR: str | None = None


def _seal() -> None:
    global SEAL_MODE, SEAL_ERROR
    try:
        SEAL_MODE = _netns.enter_private_netns()
    except OSError as exc:
        SEAL_ERROR = f"cannot enter a private network namespace ({exc})"
        return
    try:
        _netns.add_target_route(None)
    except _netns.NamespaceError as exc:
        SEAL_ERROR = f"cannot add the target route in the private namespace ({exc})"


_seal()


def testnet_unavailable() -> str | None:
    """Why the private network cannot run here, or None."""
    if SEAL_ERROR:
        return SEAL_ERROR
    missing = missing_requirements()
    if missing:
        return "private Tor network unavailable: " + "; ".join(missing) + " (apt install tor)"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} - CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


def pytest_report_header(config: pytest.Config) -> str:
    if SEAL_MODE:
        return f"network: sealed private namespace ({SEAL_MODE}), loopback only"
    return f"network: NOT sealed - {SEAL_ERROR}; testnet tests will not run"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if {"testnet", "testnet_info"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.testnet)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("testnet") is not None:
        reason = testnet_unavailable()
        if reason:
            _skip_or_fail(reason)


@pytest.fixture(scope="session")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestNetwork]:
    reason = testnet_unavailable()
    if reason:
        _skip_or_fail(reason)
    # Current namespace (already sealed above): processes run directly, no `ip netns exec`.
    net = TestNetwork.start(tmp_path_factory.mktemp("testnet"), netns=None, timeout=240.0)
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="session")
def testnet_info(testnet: TestNetwork) -> NetworkInfo:
    return testnet.info
