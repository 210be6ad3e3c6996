"""torrc syntax: the file format, the command line and how the three domains combine.

The file format follows tor's ``doc/torrc_format.txt`` (comments, backslash
continuations, C-escaped quoted values, ``+``/``/`` magic).  Keys come back as
written; `puretor.config.options` turns them into option names.

Three domains, lowest priority first (as C tor): ``--defaults-torrc`` file, the
torrc, the command line.  A list option given in a higher domain replaces the lower
domain's list, unless its first entry there is ``+Option`` (append); ``/Option``
clears it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from puretor.errors import ConfigError

_WS = " \t\n\r\x0b\x0c"  # C isspace(): Unicode spaces are ordinary characters here
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", '"': '"'}
_OCT = re.compile(r"[0-7]{1,3}")
_HEX2 = re.compile(r"[0-9a-fA-F]{2}")


def _unquote(text: str, i: int, where: str) -> tuple[str, int]:
    """Decode the C string starting at text[i] == '"'; return (value, index after it)."""
    out: list[str] = []
    i += 1
    while True:
        if i >= len(text) or text[i] == "\n":
            raise ConfigError(f"{where}: unterminated quoted string")
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and (m := _HEX2.match(text, i + 2)):
            out.append(chr(int(m.group(), 16)))
            i = m.end()
        elif m := _OCT.match(text, i + 1):
            out.append(chr(int(m.group(), 8)))
            i = m.end()
        else:
            raise ConfigError(f"{where}: invalid escape sequence in quoted string")
        if out[-1] == "\0":
            raise ConfigError(f"{where}: NUL in quoted string")


def _strip_continuations(raw: str) -> str:
    # In a continued value, '#' comments run to end of line and are dropped, and
    # each backslash-newline is removed (torrc_format.txt "ContinuedVal").
    out: list[str] = []
    i = 0
    while i < len(raw):
        if raw[i] == "#":
            nl = raw.find("\n", i)
            i = len(raw) if nl < 0 else nl + 1
        elif raw.startswith("\\\n", i):
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def tokenize_torrc(
    text: str, source: str, canonical: Callable[[str, str], str]
) -> list[tuple[str, str, int]]:
    """Split torrc text into ``(key, value, line)``; ``canonical(key, where)`` names keys.

    A ``+``/``/`` magic prefix stays on the key (``"+SocksPort"``).  Bad syntax raises
    `ConfigError` naming ``source:line``.
    """
    text = text.replace("\r\n", "\n")
    if "\0" in text:
        raise ConfigError(f"{source}: NUL byte in configuration text")
    entries: list[tuple[str, str, int]] = []
    n = len(text)
    i = 0
    while True:
        # Skip blank lines and comment lines.
        while i < n and (text[i] in _WS or text[i] == "#"):
            if text[i] == "#":
                nl = text.find("\n", i)
                i = n if nl < 0 else nl
            i += 1
        if i >= n:
            return entries
        lineno = text.count("\n", 0, i) + 1
        where = f"{source}:{lineno}"
        start = i
        while i < n and text[i] not in _WS and text[i] != "#" and not text.startswith("\\\n", i):
            i += 1
        key = text[start:i]
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            value, i = _unquote(text, i, where)
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] not in "#\n":
                raise ConfigError(f"{where}: excess data after quoted string")
        else:
            val_start = i
            continuation = False
            while i < n and text[i] != "\n" and (text[i] != "#" or continuation):
                if text.startswith("\\\n", i):
                    continuation = True
                    i += 2
                elif text[i] == "#":  # only reached inside a continued value
                    nl = text.find("\n", i)
                    i = n if nl < 0 else nl + 1
                else:
                    i += 1
            value = text[val_start:i].rstrip(_WS)
            if continuation:
                value = _strip_continuations(value)
        if i < n and text[i] == "#":  # trailing comment
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
        magic = key[0] if key[:1] in ("+", "/") else ""
        entries.append((magic + canonical(key[len(magic) :], where), value, lineno))


# --- command line


class CommandLine(NamedTuple):
    torrc_path: Path | None  # -f / --torrc-file
    overrides: list[tuple[str, str, int]]  # like parse_torrc; the int is the argv index
    flags: dict[str, str]  # command-line-only options -> argument ("" if none)


# Command-line-only options we honour: name -> takes an argument.
CMDLINE_FLAGS = {
    "-f": True,
    "--torrc-file": True,
    "--defaults-torrc": True,
    "--ignore-missing-torrc": False,
    "--allow-missing-torrc": False,
    "--verify-config": False,
    "--verify-install": False,
    "--version": False,
    "-h": False,
    "--help": False,
    "--list-torrc-options": False,
    "--quiet": False,
    "--hush": False,
    "--hash-password": True,
}
_CMDLINE_UNSUPPORTED = frozenset(
    (
        "--dump-config --list-fingerprint --keygen --key-expiration --format "
        "--newpass --no-passphrase --passphrase-fd --list-modules --library-versions "
        "--list-deprecated-options --nt-service -nt-service --dbg-dump-subsystem-list"
    ).split()
)


def tokenize_command_line(argv: Sequence[str], canonical: Callable[[str, str], str]) -> CommandLine:
    """C tor style: ``-f FILE``, ``--Option value`` (one, two or no dashes), ``+Opt``/``/Opt``.

    ``argv`` excludes the program name.  ``-h`` is reported as ``--help``.
    """
    torrc: Path | None = None
    overrides: list[tuple[str, str, int]] = []
    flags: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        where = f"command line argument {i + 1} ('{arg}')"
        if arg in _CMDLINE_UNSUPPORTED:
            raise ConfigError(f"{where}: '{arg}' is not supported by puretor")
        if arg in CMDLINE_FLAGS:
            value = ""
            if CMDLINE_FLAGS[arg]:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{where}: '{arg}' needs a value")
                value = argv[i + 1]
                i += 1
            if arg in ("-f", "--torrc-file"):
                torrc = Path(value).expanduser()
            else:
                flags["--help" if arg == "-h" else arg] = value
            i += 1
            continue
        name = arg[2:] if arg.startswith("--") else arg[1:] if arg.startswith("-") else arg
        magic = name[0] if name[:1] in ("+", "/") else ""
        key = magic + canonical(name[len(magic) :], where)
        if magic == "/":  # clearing takes no value
            overrides.append((key, "", i + 1))
            i += 1
            continue
        if i + 1 >= len(argv):
            raise ConfigError(f"{where}: option '{key.lstrip('+')}' with no value")
        overrides.append((key, argv[i + 1], i + 1))
        i += 2
    return CommandLine(torrc, overrides, flags)


# --- domains


class Entry(NamedTuple):
    key: str  # canonical option name, magic stripped
    magic: str  # "", "+" or "/"
    value: str
    where: str  # "torrc:12" / "command line argument 3"


def entries(lines: list[tuple[str, str, int]], source: str, cmdline: bool) -> list[Entry]:
    out = []
    for key, value, line in lines:
        magic = key[0] if key[:1] in ("+", "/") else ""
        where = f"{source} argument {line}" if cmdline else f"{source}:{line}"
        if magic == "/" and value:
            raise ConfigError(f"{where}: '/{key[1:]}' clears the option and takes no value")
        out.append(Entry(key[len(magic) :], magic, value, where))
    return out


def merge(domains: list[list[Entry]]) -> dict[str, list[Entry]]:
    """Apply C tor's domain rules: a higher domain replaces, '+' appends, '/' clears."""
    merged: dict[str, list[Entry]] = {}
    for domain in domains:
        seen: set[str] = set()
        for e in domain:
            if e.magic == "/":
                merged[e.key] = []
                seen.add(e.key)
                continue
            if e.key not in seen:
                seen.add(e.key)
                if e.magic != "+":
                    merged[e.key] = []
            merged.setdefault(e.key, []).append(e)
    return merged


def read_torrc_text(path: Path, missing_ok: bool) -> str | None:
    """The file's text; None if it is missing and that is allowed."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ConfigError(f"configuration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
