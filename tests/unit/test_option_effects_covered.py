"""The project rule: every option ``tor-client`` accepts has a test that shows its effect.

A test shows which options it demonstrates with ``@pytest.mark.options("SafeSocks", ...)``
(an observable effect of the option, not just that it parses). This scans the tests/ tree for
those markers - string literals only, so that the scan needs no import - and fails, naming
them, for options in `puretor.config.OPTIONS` without one, and for marker names that are no
option (a typo would otherwise hide a missing test).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from puretor.config import OPTIONS

TESTS = Path(__file__).resolve().parent.parent


def _is_options_marker(func: ast.expr) -> bool:
    """``pytest.mark.options`` or ``mark.options`` (``from pytest import mark``)."""
    if not (isinstance(func, ast.Attribute) and func.attr == "options"):
        return False
    owner = func.value
    if isinstance(owner, ast.Attribute):
        return owner.attr == "mark"
    return isinstance(owner, ast.Name) and owner.id == "mark"


def marked_options(root: Path = TESTS) -> tuple[dict[str, list[str]], list[str]]:
    """({option: ["path:line", ...]}, [problems]) for every ``options`` marker under root."""
    found: dict[str, list[str]] = defaultdict(list)
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _is_options_marker(node.func)):
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            if not node.args or node.keywords:
                problems.append(f"{where}: pytest.mark.options needs option names, nothing else")
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found[arg.value].append(where)
                else:
                    problems.append(f"{where}: option names must be string literals")
    return dict(found), problems


def test_the_scan_reads_markers(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text(
        "import pytest\nfrom pytest import mark\n\n"
        '@pytest.mark.options("SafeSocks",\n    "TestSocks")\ndef test_a(): ...\n\n'
        '@mark.options("PidFile")\ndef test_b(): ...\n\n'
        'pytestmark = pytest.mark.options("Log")\n'
        "NAME = 'x'\n@pytest.mark.options(NAME)\ndef test_c(): ...\n"
        '# pytest.mark.options("SocksTimeout") in a comment does not count\n'
    )
    found, problems = marked_options(tmp_path)
    assert found == {
        "SafeSocks": ["test_x.py:4"],
        "TestSocks": ["test_x.py:4"],
        "PidFile": ["test_x.py:8"],
        "Log": ["test_x.py:11"],
    }
    assert problems == ["test_x.py:13: option names must be string literals"]


def test_every_option_has_a_test_that_shows_its_effect() -> None:
    found, problems = marked_options()
    assert not problems, "\n".join(problems)
    unknown = {name: where for name, where in found.items() if name not in OPTIONS}
    assert not unknown, f"pytest.mark.options names that are no tor-client option: {unknown}"
    missing = sorted(set(OPTIONS) - set(found))
    assert not missing, (
        f"options without a test that shows their effect: {', '.join(missing)} "
        '(mark such a test with @pytest.mark.options("Name"))'
    )
