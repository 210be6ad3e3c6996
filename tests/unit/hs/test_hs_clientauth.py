"""ClientOnionAuthDir ``.auth_private`` files (rend-spec-v3 App. G.1.3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from puretor.errors import ConfigError
from puretor.hs.clientauth import load_client_auth_dir, parse_auth_private

# Arti tor-netdoc src/doc/hsdesc.rs test_data: the onion address of TEST_HSID_2 and
# TEST_SECKEY_2 in base32 (comments there), plus the hex values.
ADDR = "paozpdhgz2okvc6kgbxvh2bnfsmt4xergrtcl4obkhopyvwxkpjzvoad"
HSID = bytes.fromhex("781D978CE6CE9CAA8BCA306F53E82D2C993E5C91346625F1C151DCFC56D753D3")
KEY_B32 = "SDZNMD4RP4SCH4EYTTUZPFRZINNFWAOPPKZ6BINZAC7LREV24RBQ"
KEY = bytes.fromhex("90F2D60F917F2423F0989CE9979639435A5B01CF7AB3E0A1B900BEB892BAE443")


def test_parse_line() -> None:
    assert parse_auth_private(f"{ADDR}:descriptor:x25519:{KEY_B32}\n") == (HSID, KEY)
    # whitespace around fields (C tor SPLIT_SKIP_SPACE), lower case, ".onion", comments
    text = f"# made by a tool\n\n {ADDR}.onion : descriptor : x25519 : {KEY_B32.lower()} \n"
    assert parse_auth_private(text) == (HSID, KEY)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "one credential line"),
        (f"{ADDR}:descriptor:x25519:{KEY_B32}\n{ADDR}:descriptor:x25519:{KEY_B32}", "one"),
        (f"descriptor:x25519:{KEY_B32}", "fields"),
        (f"{ADDR}:password:x25519:{KEY_B32}", "auth type"),
        (f"{ADDR}:descriptor:ed25519:{KEY_B32}", "key type"),
        (f"{ADDR[:-1]}e:descriptor:x25519:{KEY_B32}", "onion address"),
        (f"{ADDR}:descriptor:x25519:{KEY_B32[:-1]}", "52"),
        (f"{ADDR}:descriptor:x25519:{KEY_B32[:-1]}1", "base32"),
        (f"{ADDR}:descriptor:x25519:{'A' * 52}", "all zeros"),
    ],
)
def test_malformed(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_auth_private(text, source="bob.auth_private")
    assert fragment in str(exc.value) and "bob.auth_private" in str(exc.value)


def test_load_dir(tmp_path: Path) -> None:
    (tmp_path / "alice.auth_private").write_text(f"{ADDR}:descriptor:x25519:{KEY_B32}\n")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".auth_private").write_text("ignored: no name before the suffix")
    assert load_client_auth_dir(tmp_path) == {HSID: KEY}
    (tmp_path / "again.auth_private").write_text(f"{ADDR}:descriptor:x25519:{KEY_B32}\n")
    with pytest.raises(ConfigError, match="duplicate"):
        load_client_auth_dir(tmp_path)
    (tmp_path / "again.auth_private").write_text("garbage")
    with pytest.raises(ConfigError, match="again.auth_private"):
        load_client_auth_dir(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        load_client_auth_dir(tmp_path / "missing")
