"""The project's own checks: ruff (lint + format) and mypy are clean."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE = ["src", "tests", "fuzz", "bench", "scripts"]


def _tool(name: str) -> list[str]:
    if importlib.util.find_spec(name) is None and not os.environ.get("CI"):
        pytest.skip(f"{name} is not installed")
    return [sys.executable, "-m", name]


def test_ruff_check_is_clean() -> None:
    out = subprocess.run([*_tool("ruff"), "check", *CODE], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean() -> None:
    out = subprocess.run(
        [*_tool("ruff"), "format", "--check", *CODE], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_is_clean() -> None:
    out = subprocess.run([*_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
