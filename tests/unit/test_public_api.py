"""The public API's contract, without a network: exports, the documented error tree,
generated docs up to date, TorConfig construction, the sync facade's plumbing, and
``mypy --strict`` on the public modules."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import puretor
from puretor import errors

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_MODULES = [
    "src/puretor/__init__.py",
    "src/puretor/client.py",
    "src/puretor/sync.py",
    "src/puretor/httpx_transport.py",
    "src/puretor/errors.py",
    "src/puretor/config/__init__.py",
    "src/puretor/config/options.py",
    "src/puretor/config/values.py",
    "src/puretor/aio/observe.py",
]

EXPECTED_ALL = {
    "__version__",
    "TorClient",
    "OnionService",
    "TorConfig",
    "IsolationToken",
    "BootstrapStatus",
    "EndReason",
    "start_tls",
    "errors",
    *errors.__all__,
    # What `TorClient.events` yields (the control port's CIRC/STREAM/ORCONN/BW/STATUS_CLIENT).
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
    "OnionDescriptorEvent",  # HS_DESC / HS_DESC_CONTENT
    "OnionClientAuth",  # ONION_CLIENT_AUTH_VIEW
    "RelayRef",
}


def test_all_is_complete_and_every_name_resolves() -> None:
    assert len(puretor.__all__) == len(set(puretor.__all__))
    assert set(puretor.__all__) == EXPECTED_ALL
    for name in puretor.__all__:
        assert getattr(puretor, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from puretor import *", namespace)
    assert set(namespace) >= EXPECTED_ALL
    # The top-level error names are the classes of puretor.errors.
    for name in errors.__all__:
        assert getattr(puretor, name) is getattr(errors, name)
    assert puretor.errors is errors
    with pytest.raises(AttributeError):
        puretor.NoSuchThing  # noqa: B018
    # The documented entry points outside the top level.
    from puretor.httpx_transport import TorNetworkBackend, TorTransport
    from puretor.sync import SyncTorClient, TorSocket
    from puretor.sync import TorClient as Sync

    assert SyncTorClient is Sync and TorTransport and TorNetworkBackend and TorSocket
    assert puretor.TorClient.__module__ == "puretor.client"


def test_errors_all_lists_every_exception_class() -> None:
    classes = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }
    assert classes == set(errors.__all__)
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert cls.__doc__ and cls.__doc__.strip(), f"{name} has no docstring"


def _drawn_tree() -> dict[str, str | None]:
    """child -> parent, from the tree drawn in puretor.errors' docstring."""
    doc = errors.__doc__ or ""
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in doc.splitlines():
        m = re.match(r"^    ((?:[│ ]   )*)(?:[├└]── )?([A-Za-z]+)", line)
        if not m or not m.group(2).endswith(("Error", "Timeout", "Destroyed", "Refused")):
            continue
        depth = len(m.group(1)) // 4 + (1 if "──" in line else 0)
        name = m.group(2)
        del stack[depth:]
        parents[name] = stack[-1] if stack else None
        stack.append(name)
    return parents


def test_error_tree_drawing_matches_the_classes() -> None:
    drawn = _drawn_tree()
    assert set(drawn) == set(errors.__all__), set(drawn) ^ set(errors.__all__)
    for name, parent in drawn.items():
        cls = getattr(errors, name)
        tor_bases = [b.__name__ for b in cls.__bases__ if issubclass(b, errors.TorError)]
        if parent is None:
            assert name == "TorError"
        else:
            assert tor_bases == [parent], f"{name}: drawn under {parent}, derives from {tor_bases}"


def test_error_contract() -> None:
    assert issubclass(errors.StreamError, ConnectionError)
    for cls in (errors.StreamRefused, errors.StreamTimeout, errors.OnionError):
        assert issubclass(cls, errors.StreamError) and issubclass(cls, OSError)
    assert issubclass(errors.StreamTimeout, TimeoutError)
    assert issubclass(errors.CircuitBuildTimeout, TimeoutError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.ChannelError, OSError)
    assert not issubclass(errors.ClientClosedError, OSError)
    refused = errors.StreamRefused("x", puretor.EndReason.CONNECTREFUSED)
    assert refused.reason == 3 and refused.reason_name == "CONNECTREFUSED"
    assert errors.StreamRefused("x", 200).reason_name == "UNKNOWN(200)"
    assert errors.OnionError("x", 0xF4).socks_code == 0xF4


def test_api_reference_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts/gen_api_docs.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    current = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert current == gen.render(), "docs/api.md is stale: run python scripts/gen_api_docs.py"
    for name in ("TorClient", "TorTransport", "TorSocket", "from_options", "ClientClosedError"):
        assert name in current


def test_docs_exist_and_link_each_other() -> None:
    guide = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    errors_md = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert "api.md" in guide and "errors.md" in guide
    for name in errors.__all__:
        assert re.search(rf"\b{name}\b", errors_md), f"docs/errors.md does not mention {name}"


def test_torconfig_keyword_and_torrc_construction(tmp_path: Path) -> None:
    TorConfig = puretor.TorConfig
    line = "auth1 orport=9001 v3ident=" + "A" * 40 + " 127.1.0.1:9030 " + "B" * 40
    cfg = TorConfig.from_options(
        DataDirectory=tmp_path / "d",
        TestingTorNetwork=True,
        UseDefaultFallbackDirs=False,
        DirAuthority=[line],
        SocksPort=0,
        MaxCircuitDirtiness="5 minutes",
    )
    assert cfg.data_directory == tmp_path / "d" and cfg.testing_tor_network
    assert len(cfg.dir_authorities) == 1 and cfg.socks_ports == ()
    assert cfg.max_circuit_dirtiness == 300

    torrc = tmp_path / "torrc"
    torrc.write_text(f"SocksPort 9150\nDataDirectory /nowhere\nDirAuthority {line}\n")
    from_file = TorConfig.from_torrc(torrc, DataDirectory=tmp_path / "e", SocksPort=[])
    assert from_file.data_directory == tmp_path / "e"
    assert from_file.socks_ports == ()  # [] clears a list option
    assert len(from_file.dir_authorities) == 1

    for bad in (
        {"NoSuchOption": 1},
        {"ExcludeNodes": "{us}"},  # a C tor option puretor does not implement
        {"MaxCircuitDirtiness": 1},
        {"SocksPort": object()},
        {"DataDirectory": "a\nb"},
        {"TestingTorNetwork": True},  # needs DirAuthority lines
    ):
        with pytest.raises(puretor.ConfigError):
            TorConfig.from_options(**bad)
    with pytest.raises(puretor.ConfigError, match="does not exist"):
        TorConfig.from_torrc(tmp_path / "missing")


def test_isolation_tokens() -> None:
    a, b = puretor.IsolationToken(), puretor.IsolationToken("b")
    assert a != b and a == a and len({a, b, a}) == 2
    assert repr(b) == "IsolationToken('b')"
    tor = puretor.TorClient()
    assert isinstance(tor.isolated(), puretor.IsolationToken)


def test_closed_client_raises_client_closed(tmp_path: Path) -> None:
    async def main() -> None:
        tor = puretor.TorClient(puretor.TorConfig.from_options(DataDirectory=tmp_path))
        await tor.aclose()
        assert tor.closed
        with pytest.raises(puretor.ClientClosedError):
            await tor.open_connection("example.com", 80)
        with pytest.raises(puretor.ClientClosedError):
            await tor.bootstrap()
        await tor.aclose()  # idempotent

    asyncio.run(main())


def test_sync_facade_plumbing_without_network(tmp_path: Path) -> None:
    from puretor.sync import TorClient as SyncTorClient

    tor = SyncTorClient(puretor.TorConfig.from_options(DataDirectory=tmp_path))
    try:
        assert tor.run(asyncio.sleep(0, "x")) == "x"
        with pytest.raises(TimeoutError):
            tor.run(asyncio.sleep(5), timeout=0.05)

        async def boom() -> None:
            raise puretor.StreamRefused("refused", 3)

        with pytest.raises(puretor.StreamRefused):  # exceptions cross unchanged
            tor.run(boom())

        async def reenter() -> int:
            return tor.run(asyncio.sleep(0, 1))

        with pytest.raises(RuntimeError, match="own event loop thread"):
            tor.run(reenter())
        assert tor.loop.is_running() and not tor.closed
    finally:
        tor.close()
    assert tor.closed
    with pytest.raises(puretor.ClientClosedError):
        tor.run(asyncio.sleep(0))
    tor.close()


def test_mypy_strict_on_the_public_modules() -> None:
    if importlib.util.find_spec("mypy") is None:
        if os.environ.get("CI"):
            pytest.fail("mypy is not installed (pip install -e '.[test]')")
        pytest.skip("mypy is not installed")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", *PUBLIC_MODULES]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
