"""Value kinds of the control port options (ControlPort, ControlSocket, the auth options)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from puretor.config.values import BOOL, Kind, line_list, parse_listen_address
from puretor.proto.controlauth import parse_hashed_password


@dataclass(frozen=True)
class ControlPortConfig:
    """One ``ControlPort [addr:]port|auto`` line (loopback unless an address is given)."""

    address: str
    port: int | Literal["auto"]

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


def parse_control_port(value: str) -> ControlPortConfig | None:
    """A ControlPort value; None for ``0``.  Unix sockets are ControlSocket's."""
    words = value.split()
    if not words:
        raise ValueError("ControlPort needs a port")
    if words[0].lower().startswith("unix:"):
        raise ValueError(
            "use ControlSocket PATH for a unix socket (ControlPort unix: is not supported by puretor)"
        )
    if len(words) > 1:
        raise ValueError(f"ControlPort flag '{words[1]}' is not supported by puretor")
    if words[0] == "0":
        return None
    address, port = parse_listen_address(words[0])
    return ControlPortConfig(address, port)


def format_control_port(cfg: ControlPortConfig | None) -> str:
    if cfg is None:
        return "0"
    host = f"[{cfg.address}]" if ":" in cfg.address else cfg.address
    return f"{host}:{cfg.port}"


def parse_control_socket(value: str) -> Path | None:
    words = value.split()
    if not words:
        raise ValueError("ControlSocket needs a path")
    if len(words) > 1:
        raise ValueError(f"ControlSocket flag '{words[1]}' is not supported by puretor")
    if words[0] == "0":
        return None
    path = words[0][5:] if words[0].lower().startswith("unix:") else words[0]
    if not path:
        raise ValueError("empty ControlSocket path")
    return Path(path).expanduser().absolute()


def parse_hashed_control_password(value: str) -> str:
    parse_hashed_password(value)  # raises ValueError when malformed
    return value.strip()


def parse_owning_process(value: str) -> int:
    """C tor's process specifier: a PID (decimal)."""
    text = value.strip()
    if not text.isdigit() or not 0 < int(text) < 2**31:
        raise ValueError(f"'{value}' is not a process ID")
    return int(text)


CONTROL_PORT = line_list(parse_control_port, format_control_port)
CONTROL_SOCKET = line_list(parse_control_socket, lambda p: "0" if p is None else str(p))
HASHED_PASSWORD = line_list(parse_hashed_control_password, str)
# Unset (None, shown empty) and 0 both mean "off"; unset lets us tell whether the user
# chose no authentication.
COOKIE_AUTH = Kind("Boolean", BOOL.parse, lambda v: "" if v is None else "1" if v else "0")
OWNING_PROCESS = Kind("String", parse_owning_process, lambda v: "" if v is None else str(v))


def combine_disablable(lines: list[tuple[Any, Any]]) -> tuple[Any, ...]:
    """Lines with ``0`` (None) among them: no listener (C tor: "0" disables)."""
    values = [value for value, _ in lines]
    return () if any(v is None for v in values) else tuple(values)
