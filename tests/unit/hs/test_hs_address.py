"""Onion address parsing/encoding (rend-spec-v3 §6, §2.2.7)."""

from __future__ import annotations

import base64
import hashlib

import nacl.bindings
import pytest
from hypothesis import given
from hypothesis import strategies as st

from puretor.errors import OnionError
from puretor.hs.address import (
    encode_onion_address,
    is_onion_host,
    parse_onion_address,
)

# C tor src/test/test_hs_common.c test_build_address (made with hs_build_address.py;
# the key is the first Ed25519 test vector of draft-josefsson-eddsa-ed25519-02).
TOR_PUBKEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
TOR_ADDR = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid"

# rend-spec-v3 §6 example addresses.
SPEC_EXAMPLES = [
    "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion",
    "sp3k262uwy4r2k3ycr5awluarykdpag6a7y33jxop4cs2lu5uz5sseqd.onion",
    "xa4r2iadxm55fbnqgwwi5mymqdcofiu3w6rpbtqn7b2dyn7mgwj64jyd.onion",
]


def _bad(host: str, fragment: str) -> None:
    with pytest.raises(OnionError) as exc:
        parse_onion_address(host)
    assert exc.value.socks_code == 0xF6
    assert fragment in str(exc.value)


def test_c_tor_vector_encode_and_parse() -> None:
    assert encode_onion_address(TOR_PUBKEY) == TOR_ADDR + ".onion"
    assert parse_onion_address(TOR_ADDR + ".onion") == TOR_PUBKEY


def test_subdomains_case_and_trailing_dot() -> None:
    # C tor test_parse_extended_hostname: "www.<addr>.onion" names <addr>.
    assert parse_onion_address(f"www.{TOR_ADDR}.onion") == TOR_PUBKEY
    assert parse_onion_address(f"a.b.{TOR_ADDR}.ONION") == TOR_PUBKEY
    assert parse_onion_address(TOR_ADDR.upper() + ".onion.") == TOR_PUBKEY
    # Arti hsid_strings: alternating case parses to the same key.
    weird = "".join(c.upper() if i % 2 else c for i, c in enumerate(TOR_ADDR + ".onion"))
    assert parse_onion_address(weird) == TOR_PUBKEY


@pytest.mark.parametrize("addr", SPEC_EXAMPLES)
def test_spec_examples_roundtrip(addr: str) -> None:
    assert encode_onion_address(parse_onion_address(addr)) == addr


def test_errors_name_the_problem() -> None:
    _bad("aaaaaaaa.onion", "characters long")
    _bad("abcdefghijklmnop.onion", "v2")
    _bad("@" * 56 + ".onion", "base32")
    # C tor test_parse_extended_hostname address9: a '1' is not base32.
    _bad("www.15njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid.onion", "base32")
    # Arti hsid_strings: edit the version / checksum characters.
    _bad(TOR_ADDR[:55] + "e.onion", "version 4")
    _bad(TOR_ADDR[:53] + "x" + TOR_ADDR[54:] + ".onion", "checksum")
    _bad("example.com", "not a .onion")
    _bad(".onion", "empty")


def test_torsion_component_rejected() -> None:
    # A + (order-2 point): same checksum rules, but not in the prime-order subgroup.
    order2 = (2**255 - 19 - 1).to_bytes(32, "little")
    bad_key = nacl.bindings.crypto_core_ed25519_add(TOR_PUBKEY, order2)
    raw = bad_key + hashlib.sha3_256(b".onion checksum" + bad_key + b"\x03").digest()[:2] + b"\x03"
    host = base64.b32encode(raw).decode().lower() + ".onion"
    _bad(host, "torsion")
    # The identity point (small order) too.
    ident = (1).to_bytes(32, "little")
    raw = ident + hashlib.sha3_256(b".onion checksum" + ident + b"\x03").digest()[:2] + b"\x03"
    _bad(base64.b32encode(raw).decode().lower() + ".onion", "torsion")


def test_is_onion_host() -> None:
    assert is_onion_host("x.ONION")
    assert is_onion_host(TOR_ADDR + ".onion.")
    assert not is_onion_host("onion.example")
    assert not is_onion_host("example.com")


@given(st.text(max_size=80))
def test_fuzz_only_onion_error(host: str) -> None:
    try:
        key = parse_onion_address(host)
    except OnionError as e:
        assert e.socks_code == 0xF6
    else:
        assert len(key) == 32
