"""The control port's onion-service client commands (control-spec §3.26, §3.30-3.32):
HSFETCH and ONION_CLIENT_AUTH_ADD / _REMOVE / _VIEW, with C tor's replies
(control_cmd.c handle_control_hsfetch, control_hs.c).

Each is a thin view over `TorClient`: ``fetch_onion_descriptor`` (whose
`OnionDescriptorEvent`s the server sends as HS_DESC and HS_DESC_CONTENT) and the
client-authorization key API.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from puretor.app.control.connection import ControlConnection, command
from puretor.errors import ConfigError, OnionError, TorError
from puretor.hs.address import parse_onion_address
from puretor.proto import control as proto

if TYPE_CHECKING:
    from puretor.app.control.server import ControlServer
    from puretor.client import OnionClientAuth

log = logging.getLogger("puretor")

CLIENT_NAME_MAX_LEN = 16  # C tor's REND_CLIENTNAME_MAX_LEN
_ADDRESS_LEN = 56


@dataclass
class ParsedArgs:
    """A command line split as C tor's control_cmd_parse_args() does it: up to
    ``max_args`` positional words, and the rest as ``Key=Value`` pairs."""

    args: list[str]
    kwargs: list[tuple[str, str]]


class BadArguments(ValueError):
    pass


def parse_args(
    text: str, *, min_args: int, max_args: int, allowed: tuple[str, ...] | None = None
) -> ParsedArgs:
    """Raises BadArguments with C tor's text (sent as ``512 Bad arguments to CMD: ...``)."""
    words: list[str] = []
    rest = text.lstrip(" ")
    while rest and len(words) < max_args:
        word, _, rest = rest.partition(" ")
        words.append(word)
        rest = rest.lstrip(" ")
    if len(words) < min_args:
        raise BadArguments(f"Need at least {min_args} argument(s)")
    kwargs: list[tuple[str, str]] = []
    if rest:
        try:
            items = proto.parse_keywords(rest)
        except proto.ArgumentError:
            raise BadArguments("Cannot parse keyword argument(s)") from None
        for key, value, _quoted in items:
            if not key or value is None:
                raise BadArguments("Cannot parse keyword argument(s)")
            if allowed is not None and key.upper() not in allowed:
                raise BadArguments(f"Unrecognized keyword argument {proto.quote(key)}")
            kwargs.append((key, value))
    return ParsedArgs(words, kwargs)


def is_v3_address(text: str) -> bool:
    """C tor's hs_address_is_valid(): 56 base32 characters (no ``.onion``), version 3,
    checksum right."""
    if len(text) != _ADDRESS_LEN or "." in text:
        return False
    try:
        parse_onion_address(text)
    except OnionError:
        return False
    return True


def _bad_arguments(cmd: proto.ControlCommand, exc: BadArguments) -> bytes:
    return proto.reply(512, f"Bad arguments to {cmd.keyword}: {exc}")


# -- HSFETCH -------------------------------------------------------------------------------


@command("HSFETCH")
async def _hsfetch(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    """``HSFETCH <address> [SERVER=<fingerprint>]...``: 250 OK, then the fetch and its
    HS_DESC events."""
    try:
        parsed = parse_args(cmd.args, min_args=1, max_args=1, allowed=("SERVER",))
    except BadArguments as exc:
        return _bad_arguments(cmd, exc)
    address = parsed.args[0]
    if not is_v3_address(address):
        return proto.reply(513, f'Invalid argument "{address}"')
    tor = conn.server.tor
    servers: list[str] = []
    for _key, server in parsed.kwargs:
        fingerprint = hsdir_fingerprint(server, {r.fingerprint for r in tor.relays()})
        if fingerprint is None:
            return proto.reply(552, f'Server "{server}" not found')
        servers.append(fingerprint)
    # 250 OK before the first HS_DESC event, as C tor sends them.
    conn.send(proto.reply(250, "OK"))
    task = asyncio.ensure_future(_fetch(conn.server, address, servers or None))
    conn.server.background.add(task)
    task.add_done_callback(conn.server.background.discard)
    return b""


def hsdir_fingerprint(server: str, known: set[str]) -> str | None:
    """SERVER='s relay, as C tor's node_get_by_hex_id(): ``[$]HEX[~nick]`` of a relay in
    the consensus (a nickname alone, or ``=nick``, finds nothing)."""
    text = server[1:] if server.startswith("$") else server
    hex_id, sep, _nick = text.partition("~")
    if not sep and "=" in text:
        return None
    if len(hex_id) != 40 or any(c not in "0123456789abcdefABCDEF" for c in hex_id):
        return None
    fingerprint = hex_id.upper()
    return fingerprint if fingerprint in known else None


async def _fetch(server: ControlServer, address: str, servers: list[str] | None) -> None:
    try:
        await server.tor.fetch_onion_descriptor(address, servers)
    except (TorError, ValueError) as exc:
        # The controller has seen why in the HS_DESC FAILED events.
        log.info("HSFETCH of a descriptor failed: %s", exc)


# -- client authorization ------------------------------------------------------------------


def parse_private_key(text: str) -> bytes | tuple[int, str]:
    """``x25519:<base64>`` -> the 32-byte key, or (code, message) as C tor replies
    (control_hs.c parse_private_key_from_control_port)."""
    parts = [p for p in text.split(":") if p]
    if len(parts) != 2:
        return 512, "Invalid key type/blob"
    key_type, blob = parts
    if key_type.lower() != "x25519":
        return 552, f'Unrecognized key type "{key_type}"'
    key = _base64_decode(blob)
    if key is None or len(key) != 32:
        return 512, "Failed to decode x25519 private key"
    if not any(key):
        return 553, f'Invalid private key "{blob}"'
    return key


def _base64_decode(text: str) -> bytes | None:
    """Base64 with or without its ``=`` padding (C tor's base64_decode)."""
    body = text.rstrip("=")
    if len(text) - len(body) > 2:
        return None
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


@command("ONION_CLIENT_AUTH_ADD")
async def _client_auth_add(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    """``ONION_CLIENT_AUTH_ADD <address> x25519:<base64 key> [ClientName=N]
    [Flags=Permanent]``."""
    try:
        parsed = parse_args(cmd.args, min_args=0, max_args=2)
    except BadArguments as exc:
        return _bad_arguments(cmd, exc)
    if len(parsed.args) < 2:
        return proto.reply(512, "Incomplete ONION_CLIENT_AUTH_ADD command")
    address, key_text = parsed.args
    if not is_v3_address(address):
        return proto.reply(512, f'Invalid v3 address "{address}"')
    key = parse_private_key(key_text)
    if isinstance(key, tuple):
        return proto.reply(*key)
    permanent = False
    client_name: str | None = None
    for name, value in parsed.kwargs:
        if name.lower().startswith("flags"):
            flags = [f for f in value.split(",") if f]
            if not flags:
                return proto.reply(512, "Invalid 'Flags' argument")
            for flag in flags:
                if flag.lower() != "permanent":
                    return proto.reply(512, f"Invalid 'Flags' argument: {proto.quote(flag)}")
                permanent = True
        if name.lower() == "clientname":
            if len(value) > CLIENT_NAME_MAX_LEN:
                return proto.reply(512, f"ClientName longer than {CLIENT_NAME_MAX_LEN} chars")
            client_name = value
    try:
        outcome = conn.server.tor.add_onion_client_auth(
            address, key, client_name=client_name, permanent=permanent
        )
    except ConfigError as exc:
        log.warning("ONION_CLIENT_AUTH_ADD: %s", exc)
        return proto.reply(553, f'Unable to store creds for "{address}"')
    if outcome == "decrypted":
        return proto.reply(252, "Registered client and decrypted desc")
    if outcome == "replaced":
        return proto.reply(251, "Client for onion existed and replaced")
    return proto.reply(250, "OK")


@command("ONION_CLIENT_AUTH_REMOVE")
async def _client_auth_remove(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    try:
        parsed = parse_args(cmd.args, min_args=0, max_args=1)
    except BadArguments as exc:
        return _bad_arguments(cmd, exc)
    if not parsed.args:
        return proto.reply(512, "Incomplete ONION_CLIENT_AUTH_REMOVE command")
    address = parsed.args[0]
    if not is_v3_address(address):
        return proto.reply(512, f'Invalid v3 address "{address}"')
    if not conn.server.tor.remove_onion_client_auth(address):
        return proto.reply(251, f'No credentials for "{address}"')
    return proto.reply(250, "OK")


def client_auth_line(auth: OnionClientAuth) -> str:
    """``CLIENT <address> x25519:<base64 key>[ Flags=Permanent][ ClientName=N]``."""
    key = base64.b64encode(auth.private_key).decode("ascii")
    line = f"CLIENT {auth.address} x25519:{key}"
    if auth.permanent:
        line += " Flags=Permanent"
    if auth.client_name is not None:
        line += f" ClientName={auth.client_name}"
    return line


@command("ONION_CLIENT_AUTH_VIEW")
async def _client_auth_view(conn: ControlConnection, cmd: proto.ControlCommand) -> bytes:
    try:
        parsed = parse_args(cmd.args, min_args=0, max_args=1)
    except BadArguments as exc:
        return _bad_arguments(cmd, exc)
    address = parsed.args[0] if parsed.args else None
    if address is not None and not is_v3_address(address):
        return proto.reply(512, f'Invalid v3 address "{address}"')
    out = proto.Reply()
    out.line(f"ONION_CLIENT_AUTH_VIEW {address}" if address else "ONION_CLIENT_AUTH_VIEW")
    lines = [
        client_auth_line(auth)
        for auth in conn.server.tor.onion_client_auths()
        if address is None or auth.address == address
    ]
    for line in sorted(lines):
        out.line(line)
    return out.line("OK").to_bytes()
