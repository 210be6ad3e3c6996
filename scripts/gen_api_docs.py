#!/usr/bin/env python3
"""Generate docs/api.md from the public API's docstrings and signatures (inspect-based).

    python scripts/gen_api_docs.py           # rewrite docs/api.md
    python scripts/gen_api_docs.py --check   # exit 1 if docs/api.md is out of date

The output depends only on the source (no addresses, dates or environment), so
tests/unit/test_public_api.py can check that the committed file is current.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "api.md"

# (module, [names]) in reading order; the names are what users import.
SECTIONS: list[tuple[str, list[str]]] = [
    (
        "puretor",
        [
            "TorClient",
            "OnionService",
            "IsolationToken",
            "TorConfig",
            "BootstrapStatus",
            "start_tls",
            "EndReason",
        ],
    ),
    ("puretor.httpx_transport", ["TorTransport", "TorNetworkBackend"]),
    ("puretor.sync", ["TorClient", "OnionService", "TorSocket"]),
    ("puretor.errors", []),  # filled from puretor.errors.__all__
]

_SKIP_MEMBERS = {"__init__", "__aenter__", "__aexit__", "__enter__", "__exit__"}

# Private import aliases in annotations, shown by their public names.
_DISPLAY_NAMES = {"_ssl.": "ssl.", "AsyncTorClient": "puretor.TorClient"}

# Text for public classes whose docstring is the dataclass default (they live in
# modules this reference does not otherwise cover).
_DOC_OVERRIDES = {
    "puretor.BootstrapStatus": (
        "Bootstrap progress, as C tor reports it: ``percent`` (0-100) and ``phase`` (a\n"
        "``BootstrapPhase``, an IntEnum whose values are C tor's percentages); ``tag`` and\n"
        "``summary`` are C tor's words for the phase, and ``str(status)`` is its log line,\n"
        "e.g. ``Bootstrapped 100% (done): Done``."
    ),
}


def _doc(obj: Any) -> str:
    doc = inspect.getdoc(obj)
    if not doc:
        return ""
    if (
        inspect.isclass(obj)
        and dataclasses.is_dataclass(obj)
        and doc.startswith(obj.__name__ + "(")
    ):
        return ""  # the generated "Name(field: type, ...)" docstring says nothing new
    return doc.strip()


class _Source:
    """An annotation shown as written (``from __future__ import annotations`` makes
    them strings, which inspect would quote)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _unquote(annotation: Any) -> Any:
    if isinstance(annotation, str):
        return _Source(annotation)
    return annotation


def _signature(obj: Callable[..., Any], *, drop_self: bool = False, returns: bool = True) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = list(sig.parameters.values())
    if drop_self:
        params = params[1:]
    params = [p.replace(annotation=_unquote(p.annotation)) for p in params]
    ret = _unquote(sig.return_annotation) if returns else inspect.Signature.empty
    text = str(sig.replace(parameters=params, return_annotation=ret))
    for private, public in _DISPLAY_NAMES.items():
        text = text.replace(private, public)
    return text


def _own_members(cls: type) -> list[tuple[str, Any]]:
    """Public members defined on ``cls`` itself, in definition order."""
    out = []
    for name, value in cls.__dict__.items():
        if name.startswith("_") or name in _SKIP_MEMBERS:
            continue
        out.append((name, value))
    return out


def _render_member(name: str, value: Any, lines: list[str]) -> None:
    if isinstance(value, property):
        ann = inspect.signature(value.fget).return_annotation if value.fget else ""
        ann_text = f": {ann}" if ann and ann is not inspect.Signature.empty else ""
        for private, public in _DISPLAY_NAMES.items():
            ann_text = ann_text.replace(private, public)
        lines.append(f"#### property `{name}{ann_text}`")
        func = value.fget
    elif isinstance(value, classmethod):
        func = value.__func__
        lines.append(f"#### classmethod `{name}{_signature(func, drop_self=True)}`")
    elif isinstance(value, staticmethod):
        func = value.__func__
        lines.append(f"#### staticmethod `{name}{_signature(func)}`")
    elif inspect.iscoroutinefunction(value) or inspect.isasyncgenfunction(value):
        func = value
        lines.append(f"#### async `{name}{_signature(value, drop_self=True)}`")
    elif inspect.isfunction(value):
        func = value
        lines.append(f"#### `{name}{_signature(value, drop_self=True)}`")
    else:
        return
    lines.append("")
    doc = _doc(func)
    if doc:
        lines += [doc, ""]


def _context_manager_note(cls: type) -> str | None:
    if "__aenter__" in cls.__dict__:
        return "Async context manager: `async with ... as x:`."
    if "__enter__" in cls.__dict__:
        return "Context manager: `with ... as x:`."
    return None


def _render_dataclass_fields(cls: type, lines: list[str]) -> None:
    lines += ["| field | type | default |", "| --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f"`{f.default!r}`"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"`{f.default_factory.__name__}()`"
        else:
            default = "(required)"
        ftype = str(f.type).replace("|", "\\|")
        lines.append(f"| `{f.name}` | `{ftype}` | {default} |")
    lines.append("")


def _render_class(qualname: str, cls: type, lines: list[str]) -> None:
    if issubclass(cls, enum.Enum):
        lines += [f"### enum `{qualname}`", ""]
        doc = _doc(cls)
        if doc:
            lines += [doc, ""]
        lines.append(", ".join(f"`{m.name}` = {m.value!r}" for m in cls))
        lines.append("")
        return
    if dataclasses.is_dataclass(cls):
        lines += [f"### dataclass `{qualname}`", ""]
    else:
        lines += [f"### class `{qualname}{_signature(cls, returns=False)}`", ""]
    bases = [b for b in cls.__bases__ if b is not object]
    if bases:
        names = ", ".join(f"`{b.__module__}.{b.__qualname__}`" for b in bases)
        lines += [f"Bases: {names}", ""]
    doc = _DOC_OVERRIDES.get(qualname) or _doc(cls)
    if doc:
        lines += [doc, ""]
    note = _context_manager_note(cls)
    if note:
        lines += [note, ""]
    if dataclasses.is_dataclass(cls):
        _render_dataclass_fields(cls, lines)
    for name, value in _own_members(cls):
        _render_member(name, value, lines)


def _render_function(qualname: str, func: Callable[..., Any], lines: list[str]) -> None:
    prefix = "async " if inspect.iscoroutinefunction(func) else ""
    lines += [f"### {prefix}function `{qualname}{_signature(func)}`", ""]
    doc = _doc(func)
    if doc:
        lines += [doc, ""]


def _render_errors(lines: list[str]) -> None:
    errors = importlib.import_module("puretor.errors")
    lines += [f"## `{errors.__name__}`", "", _doc(errors), ""]
    for name in errors.__all__:
        cls = getattr(errors, name)
        lines += [f"### exception `puretor.errors.{name}`", ""]
        bases = ", ".join(
            f"`{b.__qualname__}`" if b.__module__ in ("builtins", errors.__name__) else b.__name__
            for b in cls.__bases__
        )
        lines += [f"Bases: {bases}", ""]
        doc = _doc(cls) if "__doc__" in cls.__dict__ and cls.__doc__ else ""
        if doc:
            lines += [doc, ""]
        for member, value in _own_members(cls):
            _render_member(member, value, lines)


def render() -> str:
    lines = [
        "# puretor API reference",
        "",
        "<!-- Generated by scripts/gen_api_docs.py from the docstrings: do not edit by hand."
        " Run `python scripts/gen_api_docs.py` after changing the public API. -->",
        "",
        "The user guide is [guide.md](guide.md); the exceptions are explained in"
        " [errors.md](errors.md).",
        "",
    ]
    for modname, names in SECTIONS:
        if modname == "puretor.errors":
            _render_errors(lines)
            continue
        module = importlib.import_module(modname)
        lines += [f"## `{modname}`", ""]
        doc = _doc(module)
        if doc:
            lines += [doc, ""]
        for name in names:
            obj = getattr(module, name)
            qualname = f"{modname}.{name}"
            if inspect.isclass(obj):
                _render_class(qualname, obj, lines)
            else:
                _render_function(qualname, obj, lines)
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
