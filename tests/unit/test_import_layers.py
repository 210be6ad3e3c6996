"""Imports point downward only (docs/architecture.md).

Every ``import puretor...`` in the package - at module level, inside functions and under
TYPE_CHECKING alike - goes to the importing module's own layer or one below it.  The
sans-I/O core (``proto``, ``dir``, ``path``, ``hs``) never imports the asyncio shell, the
client or anything above; only the applications (``app``, ``cli``) and the tools on top
import the daemon and its listeners.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "puretor"

# Bottom to top.  A module may import from its own layer and the layers below.
LAYERS: list[set[str]] = [
    {"errors", "proto", "ratelimit"},  # wire formats, the core state machines, errors
    {"dir", "path", "hs", "config", "selftest"},  # documents, policy, onion services (sans-I/O)
    {"aio"},  # the asyncio shell around the core
    {"client"},  # TorClient: the public API
    {"sync", "httpx_transport", "__init__"},  # conveniences over the public API
    {"app", "cli", "bench", "testnet"},  # applications and tools
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}
APPLICATIONS = {"app", "cli", "bench"}  # may import the daemon and its listeners


def _top(module: Path) -> str:
    rel = module.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def _imports(module: Path) -> list[tuple[int, str]]:
    """(line, puretor subpackage) for every import of puretor in ``module``."""
    found = []
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "puretor":
                names = [f"puretor.{alias.name}" for alias in node.names]
            elif node.module.startswith("puretor."):
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("puretor.")]
        found.extend((node.lineno, name.split(".")[1]) for name in names)
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_part_of_the_package_has_a_layer() -> None:
    tops = {_top(m) for m in _modules()}
    assert tops - set(LAYER_OF) == set(), "add the new module or package to LAYERS"


def test_imports_point_downward_only() -> None:
    upward = []
    for module in _modules():
        here = _top(module)
        for line, target in _imports(module):
            if target == "__version__":
                continue  # the top-level package's version string
            if LAYER_OF.get(target, -1) > LAYER_OF[here]:
                upward.append(f"{module.relative_to(PACKAGE)}:{line} imports puretor.{target}")
    assert upward == []


def test_only_applications_import_the_daemon_and_its_listeners() -> None:
    offenders = [
        f"{module.relative_to(PACKAGE)}:{line}"
        for module in _modules()
        if _top(module) not in APPLICATIONS
        for line, target in _imports(module)
        if target == "app"
    ]
    assert offenders == []


def test_the_sans_io_core_never_reads_the_asyncio_shell() -> None:
    core = {"proto", "dir", "path", "hs"}
    above = {name for layer in LAYERS[2:] for name in layer}
    offenders = [
        f"{module.relative_to(PACKAGE)}:{line} imports puretor.{target}"
        for module in _modules()
        if _top(module) in core
        for line, target in _imports(module)
        if target in above
    ]
    assert offenders == []
    # ... nor asyncio itself.
    assert [m for m in _modules() if _top(m) in core and "import asyncio" in m.read_text()] == []
