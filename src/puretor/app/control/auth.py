"""Who may use the control port: the cookie file, hashed passwords, SAFECOOKIE."""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from pathlib import Path

from puretor.config import TorConfig
from puretor.proto.controlauth import (
    COOKIE_LEN,
    parse_hashed_password,
    password_matches,
)

log = logging.getLogger("puretor")


def cookie_path(config: TorConfig) -> Path:
    """CookieAuthFile, else DataDirectory/control_auth_cookie (as C tor)."""
    if config.cookie_auth_file is not None:
        return Path(config.cookie_auth_file)
    return Path(config.data_directory).expanduser() / "control_auth_cookie"


def write_cookie(path: Path) -> bytes:
    """A fresh 32-byte cookie, written 0600 (a new one at every start, as C tor)."""
    cookie = os.urandom(COOKIE_LEN)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(cookie)
    tmp.replace(path)
    return cookie


class Authenticator:
    """Checks AUTHENTICATE secrets against the current configuration."""

    def __init__(self, config: TorConfig, cookie: bytes | None, cookie_file: Path | None) -> None:
        self.config = config
        self.cookie = cookie
        self.cookie_file = cookie_file

    @property
    def methods(self) -> list[str]:
        methods = []
        if self.cookie is not None:
            methods += ["COOKIE", "SAFECOOKIE"]
        if self.config.hashed_control_passwords:
            methods.append("HASHEDPASSWORD")
        return methods or ["NULL"]

    def check(self, secret: bytes) -> str | None:
        """None if ``secret`` (a cookie or a password) lets the controller in, else why not."""
        methods = self.methods
        if methods == ["NULL"]:
            return None
        if (
            self.cookie is not None
            and len(secret) == COOKIE_LEN
            and hmac.compare_digest(secret, self.cookie)
        ):
            return None
        for hashed in self.config.hashed_control_passwords:
            if password_matches(secret, parse_hashed_password(hashed)):
                return None
        if self.cookie is not None and not self.config.hashed_control_passwords:
            if len(secret) != COOKIE_LEN:
                return "Wrong length on authentication cookie."
            return "Authentication cookie did not match expected value."
        if self.cookie is None:
            return "Password did not match HashedControlPassword value from configuration"
        return "Password did not match HashedControlPassword *or* authentication cookie."
