"""Stream isolation keys (C tor SocksPort isolation flags, library tokens)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from puretor.path.isolation import (
    DEFAULT_TOKEN,
    CircuitIsolation,
    IsolationKey,
    IsolationToken,
    ListenerFlags,
    isolation_key,
)

DEFAULT = ListenerFlags()
BASE = dict(
    listener_id="socks:9050",
    listener_flags=DEFAULT,
    client_addr="127.0.0.1",
    socks_username=None,
    socks_password=None,
    dest_host="example.com",
    dest_port=443,
    protocol="socks5",
)


def key(**changes: object) -> IsolationKey:
    return isolation_key(**{**BASE, **changes})  # type: ignore[arg-type]


def test_defaults_isolate_on_socks_auth_client_addr_and_listener() -> None:
    assert key() == key()
    assert hash(key()) == hash(key())
    # Default-on flags and the always-on ones separate streams:
    assert key(socks_username=b"alice", socks_password=b"x") != key()
    assert key(socks_username=b"alice", socks_password=b"x") != key(
        socks_username=b"alice", socks_password=b"y"
    )
    assert key(client_addr="127.0.0.2") != key()
    assert key(listener_id="socks:9150") != key()
    # Default-off flags do not:
    assert key(dest_host="other.example", dest_port=80) == key()
    assert key(protocol="socks4") == key()
    # The client's port is not part of its address.
    assert key(client_addr="[::1]") == key(client_addr="::1")


def test_no_auth_differs_from_empty_auth() -> None:
    # C tor memeq_opt: a NULL username is not an empty one.
    assert key(socks_username=b"", socks_password=b"") != key()
    assert key(socks_username=b"ab", socks_password=b"c") != key(
        socks_username=b"a", socks_password=b"bc"
    )


def test_optional_flags() -> None:
    flags = ListenerFlags(
        isolate_dest_addr=True, isolate_dest_port=True, isolate_client_protocol=True
    )
    k = key(listener_flags=flags)
    assert key(listener_flags=flags, dest_host="EXAMPLE.com") == k  # case-insensitive
    assert key(listener_flags=flags, dest_host="example.org") != k
    assert key(listener_flags=flags, dest_port=80) != k
    assert key(listener_flags=flags, protocol="socks4") != k


def test_disabled_default_flags() -> None:
    flags = ListenerFlags(isolate_socks_auth=False, isolate_client_addr=False)
    k = key(listener_flags=flags)
    assert key(listener_flags=flags, socks_username=b"u", socks_password=b"p") == k
    assert key(listener_flags=flags, client_addr="10.0.0.9") == k


def test_session_groups() -> None:
    group = ListenerFlags(session_group=7)
    assert key(listener_flags=group, listener_id="a") == key(listener_flags=group, listener_id="b")
    other = ListenerFlags(session_group=8)
    assert key(listener_flags=group) != key(listener_flags=other)
    # Same group, different flags: never shared (stricter than C tor).
    stricter = replace(group, isolate_dest_port=True)
    assert key(listener_flags=group) != key(listener_flags=stricter)


def test_keys_do_not_show_passwords() -> None:
    k = key(socks_username=b"alice", socks_password=b"hunter2")
    assert b"hunter2" not in repr(k).encode() and "hunter2" not in repr(k)


def test_circuit_keeps_the_first_streams_key() -> None:
    circuit = CircuitIsolation()
    assert circuit.admits(key()) and circuit.admits(key(client_addr="10.1.1.1"))
    circuit.attach(key())
    circuit.attach(key(dest_port=80))  # equal key: fine
    assert not circuit.admits(key(client_addr="10.1.1.1"))
    with pytest.raises(ValueError):
        circuit.attach(key(client_addr="10.1.1.1"))


def test_isolation_tokens() -> None:
    shop, bank = IsolationToken(), IsolationToken("bank")
    circuit = CircuitIsolation()
    circuit.attach(shop)
    assert circuit.admits(shop) and not circuit.admits(bank)
    assert not circuit.admits(DEFAULT_TOKEN)
    assert key() != shop and key() != DEFAULT_TOKEN  # library and listener keys never mix
    assert repr(bank) == "IsolationToken('bank')" and "IsolationToken" in repr(shop)


_fields = st.fixed_dictionaries(
    {
        "listener_id": st.sampled_from(["a", "b"]),
        "client_addr": st.sampled_from(["127.0.0.1", "10.0.0.1", None]),
        "socks_username": st.sampled_from([None, b"", b"u1", b"u2"]),
        "socks_password": st.sampled_from([None, b"", b"p"]),
        "dest_host": st.sampled_from(["a.example", "A.example", "b.example"]),
        "dest_port": st.sampled_from([80, 443]),
        "protocol": st.sampled_from(["socks4", "socks5"]),
    }
)


@given(
    flags=st.builds(
        ListenerFlags,
        isolate_socks_auth=st.booleans(),
        isolate_client_addr=st.booleans(),
        isolate_dest_addr=st.booleans(),
        isolate_dest_port=st.booleans(),
        isolate_client_protocol=st.booleans(),
        session_group=st.sampled_from([None, 1]),
    ),
    a=_fields,
    b=_fields,
)
def test_keys_equal_exactly_when_no_flag_separates(
    flags: ListenerFlags, a: dict[str, object], b: dict[str, object]
) -> None:
    """Model of C tor's connection_edge_compatible_with_circuit for one listener's flags."""
    same_session = flags.session_group is not None or a["listener_id"] == b["listener_id"]
    separated = (
        not same_session
        or (
            flags.isolate_socks_auth
            and (a["socks_username"], a["socks_password"])
            != (b["socks_username"], b["socks_password"])
        )
        or (flags.isolate_client_addr and a["client_addr"] != b["client_addr"])
        or (flags.isolate_dest_addr and str(a["dest_host"]).lower() != str(b["dest_host"]).lower())
        or (flags.isolate_dest_port and a["dest_port"] != b["dest_port"])
        or (flags.isolate_client_protocol and a["protocol"] != b["protocol"])
    )
    ka = isolation_key(listener_flags=flags, **a)  # type: ignore[arg-type]
    kb = isolation_key(listener_flags=flags, **b)  # type: ignore[arg-type]
    assert (ka == kb) == (not separated)
