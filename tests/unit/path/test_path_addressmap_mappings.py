"""MapAddress / MAPADDRESS mappings: C tor's addressmap_rewrite rules (tor.1 "MapAddress")."""

from __future__ import annotations

import pytest

from puretor.path.addressmap import SOURCE_CONFIG, SOURCE_CONTROL, AddressMap, MappingError


def test_exact_mapping_and_chains() -> None:
    m = AddressMap()
    m.map("www.example.com", "198.51.100.1")
    m.map("198.51.100.1", "203.0.113.1")
    # tor.1 note 2: the map is applied until nothing more matches.
    assert m.rewrite("www.example.com") == "203.0.113.1"
    assert m.rewrite("WWW.Example.com.") == "203.0.113.1"
    assert m.rewrite("other.example.com") == "other.example.com"


def test_newest_mapping_of_an_address_wins() -> None:
    m = AddressMap()
    m.map("www.torproject.org", "192.0.2.1")
    m.map("www.torproject.org", "198.51.100.1")
    assert m.rewrite("www.torproject.org") == "198.51.100.1"


def test_wildcard_to_one_name_covers_the_domain_and_its_subdomains() -> None:
    m = AddressMap()
    m.map("*.example.com", "www.example.com")
    assert m.rewrite("a.b.example.com") == "www.example.com"
    assert m.rewrite("example.com") == "www.example.com"
    assert m.rewrite("notexample.com") == "notexample.com"


def test_wildcard_to_wildcard_keeps_the_subdomain() -> None:
    m = AddressMap()
    m.map("*.example.com", "*.example.net")
    assert m.rewrite("www.example.com") == "www.example.net"
    assert m.rewrite("a.b.example.com") == "a.b.example.net"
    assert m.rewrite("example.com") == "example.net"


def test_wildcard_onto_its_own_domain_is_not_a_loop() -> None:
    m = AddressMap()
    m.map("*.example.com", "example.com")
    assert m.rewrite("www.example.com") == "example.com"


def test_a_loop_ends_after_sixteen_rewrites() -> None:
    m = AddressMap()
    m.map("a.example", "b.example")
    m.map("b.example", "a.example")
    assert m.rewrite("a.example") in ("a.example", "b.example")


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("www.torproject.org", "*.torproject.org", "wildcard"),
        ("*", "example.com", "can't remap"),
        ("example.com", "bad host!", "invalid"),
        ("example.com", "x.y.exit", "not supported by puretor"),
    ],
)
def test_refused_mappings_say_why(old: str, new: str, reason: str) -> None:
    with pytest.raises(MappingError, match=reason):
        AddressMap().map(old, new)


def test_mapping_an_address_to_itself_removes_it() -> None:
    m = AddressMap()
    m.map("example.com", "example.org")
    m.map("example.com", "example.com")
    assert m.rewrite("example.com") == "example.com"
    assert m.mappings() == []


def test_config_mappings_are_replaced_as_a_set_and_listed_by_source() -> None:
    m = AddressMap()
    m.map("ctl.example", "192.0.2.7", SOURCE_CONTROL)
    problems = m.set_config_mappings([("a.example", "b.example"), ("x.example", "*.bad")])
    assert len(problems) == 1 and "x.example" in problems[0]
    assert m.mappings(SOURCE_CONFIG) == ["a.example b.example NEVER"]
    m.set_config_mappings([("*.c.example", "*.d.example")])
    assert m.mappings(SOURCE_CONFIG) == ["*.c.example *.d.example NEVER"]
    assert m.mappings(SOURCE_CONTROL) == ["ctl.example 192.0.2.7 NEVER"]
    assert m.rewrite("a.example") == "a.example"


def test_virtual_addresses_and_hostnames_rewrite_to_their_name() -> None:
    m = AddressMap()
    ip = m.automap("abc.onion", 4)
    host = m.automap("abc.onion", 0)
    assert host.endswith(".virtual") and len(host) == len("x" * 16 + ".virtual")
    assert m.automap("abc.onion", 0) == host
    assert m.rewrite(ip) == "abc.onion"
    assert m.rewrite(host) == "abc.onion"
    assert f"{host} abc.onion NEVER" in m.mappings(SOURCE_CONTROL)
