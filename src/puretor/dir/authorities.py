"""Directory authorities and fallback directories: torrc syntax and the built-in lists.

`parse_dir_authority_line` accepts the value of C tor's ``DirAuthority`` option
(the same strings as C tor's ``src/app/config/auth_dirs.inc``)::

    [nickname] [flags] address:dirport fingerprint
    flags: orport=N  v3ident=HEX  ipv6=[addr]:port  bridge  no-v2  weight=W  hs  no-hs

`parse_fallback_dir_line` accepts the ``FallbackDir`` value syntax
(``fallback_dirs.inc``): ``address[:dirport] orport=N id=HEX [ipv6=[addr]:port]``.

The built-in lists are the CURRENT C tor ones.  torproject/tor on GitHub is an
archived mirror (last commit 2024-03-05, before tor26's new key and the new
faravahar), so they were taken from the up-to-date mirror ``syphyr/tor`` at
commit 83654481639de994c86a83afe0271f7812f72bc1 (2025-12-09, tor 0.4.8.21 era):
``auth_dirs.inc`` last changed by 39ba9ce0d7 "dirauth: Add new faravahar"
(2024-05-30); ``fallback_dirs.inc`` by 09f10559f8 "Update list generated on
November 17, 2025" (see `puretor.dir.fallback_data`).  The nine v3 identities
match the ``dir-source`` lines of a live consensus of 2026-07-27.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from puretor.errors import ConfigError

__all__ = [
    "DEFAULT_AUTHORITIES",
    "Authority",
    "FallbackDir",
    "default_fallbacks",
    "parse_dir_authority_line",
    "parse_fallback_dir_line",
    "v3_idents",
]

_HEX40 = re.compile(r"[0-9A-Fa-f]{40}")


@dataclass(frozen=True)
class Authority:
    """A directory authority as configured (``DirAuthority`` / ``auth_dirs.inc``)."""

    nickname: str
    address: str  # IPv4
    or_port: int
    dir_port: int
    v3ident: bytes | None  # 20 bytes; None for a bridge authority (does not sign consensuses)
    rsa_id: bytes  # 20-byte relay identity, checked in CERTS when connecting to the ORPort
    ipv6: tuple[str, int] | None = None
    bridge: bool = False  # the `bridge` flag (bridge authority)

    @property
    def fingerprint(self) -> str:
        return self.rsa_id.hex().upper()


@dataclass(frozen=True)
class FallbackDir:
    """A fallback directory cache (``FallbackDir`` / ``fallback_dirs.inc``)."""

    address: str
    or_port: int
    rsa_id: bytes
    ed_id: bytes | None = None  # C tor's list carries none
    ipv6: tuple[str, int] | None = None

    @property
    def fingerprint(self) -> str:
        return self.rsa_id.hex().upper()


def _is_nickname(text: str) -> bool:
    """C tor's is_legal_nickname: 1-19 characters of [A-Za-z0-9]."""
    return 0 < len(text) <= 19 and text.isascii() and text.isalnum()


def _port(text: str, what: str, line: str, *, allow_zero: bool = False) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ConfigError(f"bad {what} {text!r} in {line!r}")
    port = int(text)
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ConfigError(f"{what} {port} out of range in {line!r}")
    return port


def _ipv6_addrport(text: str, line: str) -> tuple[str, int]:
    """``[addr]:port`` with an IPv6 address (C tor: tor_addr_port_parse + AF_INET6)."""
    host, sep, port = text.partition("]:")
    if not host.startswith("[") or not sep:
        raise ConfigError(f"bad ipv6= value {text!r} (want [addr]:port) in {line!r}")
    try:
        addr = ipaddress.IPv6Address(host[1:])
    except ValueError:
        raise ConfigError(f"bad IPv6 address {host[1:]!r} in {line!r}") from None
    return (str(addr), _port(port, "IPv6 port", line))


def _ipv4(text: str, line: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ConfigError(f"bad IPv4 address {text!r} in {line!r}") from None


def _hex_id(text: str, what: str, line: str) -> bytes:
    if not _HEX40.fullmatch(text):
        raise ConfigError(f"{what} must be 40 hex digits, got {text!r} in {line!r}")
    return bytes.fromhex(text)


def parse_dir_authority_line(value: str) -> Authority:
    """Parse a ``DirAuthority`` value, following C tor's parse_dir_authority_line()."""
    line = " ".join(value.split())
    items = line.split()
    if not items:
        raise ConfigError("empty DirAuthority line")
    nickname = ""
    if _is_nickname(items[0]):
        nickname = items.pop(0)
    or_port = 0
    v3ident: bytes | None = None
    ipv6: tuple[str, int] | None = None
    bridge = False
    # Flags run until the first token starting with a digit (the address).
    while items and not items[0][:1].isdigit():
        flag = items.pop(0)
        lower = flag.lower()
        if lower == "bridge":
            bridge = True
        elif lower in ("no-v2", "hs", "no-hs"):
            pass  # obsolete flags C tor still accepts
        elif lower.startswith("orport="):
            or_port = _port(flag[7:], "orport", line)
        elif lower.startswith("v3ident="):
            v3ident = _hex_id(flag[8:], "v3ident", line)
        elif lower.startswith("ipv6="):
            if ipv6 is not None:
                raise ConfigError(f"more than one ipv6= in {line!r}")
            ipv6 = _ipv6_addrport(flag[5:], line)
        elif lower.startswith(("weight=", "upload=", "download=", "vote=")):
            pass  # only matter to relays/authorities
        else:
            raise ConfigError(f"unrecognised flag {flag!r} in DirAuthority line {line!r}")
    if len(items) < 2:
        raise ConfigError(
            f"DirAuthority line needs 'address:dirport fingerprint' after the flags: {line!r}"
        )
    host, _, dirport = items[0].rpartition(":")
    if not host:
        raise ConfigError(f"missing dirport in DirAuthority address {items[0]!r}: {line!r}")
    address = _ipv4(host, line)
    dir_port = _port(dirport, "dirport", line)
    rsa_id = _hex_id("".join(items[1:]), "DirAuthority fingerprint", line)
    if not or_port:
        raise ConfigError(
            f"DirAuthority line has no orport=N; puretor reaches authorities "
            f"only on their ORPort: {line!r}"
        )
    return Authority(
        nickname=nickname,
        address=address,
        or_port=or_port,
        dir_port=dir_port,
        v3ident=v3ident,
        rsa_id=rsa_id,
        ipv6=ipv6,
        bridge=bridge,
    )


def parse_fallback_dir_line(value: str) -> FallbackDir:
    """Parse a ``FallbackDir`` value, following C tor's parse_dir_fallback_line()."""
    line = " ".join(value.split())
    positional: list[str] = []
    or_port = 0
    rsa_id: bytes | None = None
    ipv6: tuple[str, int] | None = None
    for token in line.split():
        key, eq, val = token.partition("=")
        if not eq:
            positional.append(token)
        elif key == "orport":
            or_port = _port(val, "orport", line)
        elif key == "id":
            rsa_id = _hex_id(val, "FallbackDir id", line)
        elif key.lower() == "ipv6":
            if ipv6 is not None:
                raise ConfigError(f"more than one ipv6= in {line!r}")
            ipv6 = _ipv6_addrport(val, line)
        elif key == "weight":
            pass
        else:
            raise ConfigError(f"unrecognised option {token!r} in FallbackDir line {line!r}")
    if len(positional) != 1:
        raise ConfigError(f"FallbackDir line needs exactly one address[:dirport]: {line!r}")
    if rsa_id is None:
        raise ConfigError(f"FallbackDir line has no id=HEX: {line!r}")
    if not or_port:
        raise ConfigError(f"FallbackDir line has no orport=N: {line!r}")
    addr = positional[0]
    if addr.startswith("["):  # [IPv6] or [IPv6]:dirport
        host = addr[1:].partition("]")[0]
        try:
            address = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ConfigError(f"bad address {addr!r} in {line!r}") from None
    else:
        host, colon, dirport = addr.partition(":")
        if colon:
            _port(dirport, "dirport", line, allow_zero=True)
        address = _ipv4(host, line)
    return FallbackDir(address=address, or_port=or_port, rsa_id=rsa_id, ipv6=ipv6)


def v3_idents(authorities: Iterable[Authority]) -> frozenset[bytes]:
    """The v3 identities that sign consensuses (bridge authorities have none)."""
    return frozenset(a.v3ident for a in authorities if a.v3ident is not None)


# C tor src/app/config/auth_dirs.inc (see the module docstring for its provenance).
_AUTH_DIRS_INC = (
    "moria1 orport=9201 "
    "v3ident=F533C81CEF0BC0267857C99B2F471ADF249FA232 "
    "128.31.0.39:9231 1A25C6358DB91342AA51720A5038B72742732498",
    "tor26 orport=443 "
    "v3ident=2F3DF9CA0E5D36F2685A2DA67184EB8DCB8CBA8C "
    "ipv6=[2a02:16a8:662:2203::1]:443 "
    "217.196.147.77:80 FAA4 BCA4 A6AC 0FB4 CA2F 8AD5 A11D 9E12 2BA8 94F6",
    "dizum orport=443 "
    "v3ident=E8A9C45EDE6D711294FADF8E7951F4DE6CA56B58 "
    "45.66.35.11:80 7EA6 EAD6 FD83 083C 538F 4403 8BBF A077 587D D755",
    "Serge orport=9001 bridge 66.111.2.131:9030 BA44 A889 E64B 93FA A2B1 14E0 2C2A 279A 8555 C533",
    "gabelmoo orport=443 "
    "v3ident=ED03BB616EB2F60BEC80151114BB25CEF515B226 "
    "ipv6=[2001:638:a000:4140::ffff:189]:443 "
    "131.188.40.189:80 F204 4413 DAC2 E02E 3D6B CF47 35A1 9BCA 1DE9 7281",
    "dannenberg orport=443 "
    "v3ident=0232AF901C31A04EE9848595AF9BB7620D4C5B2E "
    "ipv6=[2001:678:558:1000::244]:443 "
    "193.23.244.244:80 7BE6 83E6 5D48 1413 21C5 ED92 F075 C553 64AC 7123",
    "maatuska orport=80 "
    "v3ident=49015F787433103580E3B66A1707A00E60F2D15B "
    "ipv6=[2001:67c:289c::9]:80 "
    "171.25.193.9:443 BD6A 8292 55CB 08E6 6FBE 7D37 4836 3586 E46B 3810",
    "longclaw orport=443 "
    "v3ident=23D15D965BC35114467363C165C4F724B64B4F66 "
    "199.58.81.140:80 74A9 1064 6BCE EFBC D2E8 74FC 1DC9 9743 0F96 8145",
    "bastet orport=443 "
    "v3ident=27102BC123E7AF1D4741AE047E160C91ADC76B21 "
    "ipv6=[2620:13:4000:6000::1000:118]:443 "
    "204.13.164.118:80 24E2 F139 121D 4394 C54B 5BCC 368B 3B41 1857 C413",
    "faravahar orport=443 "
    "v3ident=70849B868D606BAECFB6128C5E3D782029AA394F "
    "216.218.219.41:80 E3E4 2D35 F801 C9D5 AB23 584E 0025 D56F E2B3 3396",
)

DEFAULT_AUTHORITIES: tuple[Authority, ...] = tuple(
    parse_dir_authority_line(line) for line in _AUTH_DIRS_INC
)


@cache
def default_fallbacks() -> tuple[FallbackDir, ...]:
    """C tor's built-in fallback directories (parsed on first use)."""
    from puretor.dir.fallback_data import FALLBACK_DIRS_INC

    return tuple(parse_fallback_dir_line(line) for line in FALLBACK_DIRS_INC)
