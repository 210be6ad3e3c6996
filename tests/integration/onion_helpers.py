"""Shared helpers for in-process TorClient tests against the private network."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from puretor.config import load_config


def client_argv(info: Any, data_dir: Path, *extra: str) -> list[str]:
    """Command-line options equivalent to the network's client torrc, for `load_config`."""
    argv = [
        "--ignore-missing-torrc",
        "--TestingTorNetwork",
        "1",
        "--UseDefaultFallbackDirs",
        "0",
        "--DataDirectory",
        str(data_dir),
        "--SocksPort",
        "0",
        "--Log",
        "notice stderr",
    ]
    for line in info["dir_authority_lines"]:
        value = line.split(None, 1)[1] if line.startswith("DirAuthority ") else line
        argv += ["--DirAuthority", value]
    return argv + list(extra)


def make_config(info: Any, data_dir: Path, *extra: str) -> Any:
    return load_config(client_argv(info, data_dir, *extra))


async def http_get(
    tor: Any, host: str, path: str, port: int = 80, *, isolation: Any = None, limit_s: float = 120.0
) -> tuple[int, bytes]:
    """A plain HTTP/1.0 GET through ``tor``; returns (status, body)."""
    reader, writer = await tor.open_connection(host, port, isolation=isolation)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(-1), limit_s)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
