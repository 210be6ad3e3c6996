"""Channel link handshake against the fake relay (tor-spec §4; spec-map §1, §10.1–4)."""

from __future__ import annotations

import struct
import time

import certgen
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes.relay import FakeRelay, FakeRelayConfig, open_channel, transfer
from puretor.errors import ChannelError
from puretor.proto.cells import CellCommand
from puretor.proto.channel import Channel, ChannelState, _group_runs
from puretor.proto.events import ChannelClosed, ChannelOpened


def _new_channel(fake: FakeRelay, **kwargs: object) -> Channel:
    args: dict[str, object] = {
        "peer_address": fake.sim.address,
        "expected_rsa_id": fake.rsa_id,
        "expected_ed_id": fake.ed_id,
    }
    args.update(kwargs)
    ch = Channel(**args)  # type: ignore[arg-type]
    fake.attach(ch)
    ch.start()
    return ch


def test_handshake_opens_channel(fake: FakeRelay) -> None:
    opened: list[object] = []
    ch = _new_channel(fake)
    ch.owner = opened  # the fakes' event delivery appends the channel's events here
    transfer(ch, fake)
    assert ch.state is ChannelState.OPEN
    assert opened == [ChannelOpened(ch)]
    assert ch.link_protocol == 5
    assert ch.identity is not None
    assert ch.identity.rsa_id == fake.rsa_id and ch.identity.ed_id == fake.ed_id
    assert ch.relay_time == int(fake.now)
    assert fake.state == "open" and fake.violations == []
    # Our NETINFO: TIME=0, the relay's address, no addresses of our own (tor-spec §4.5).
    assert fake.client_netinfo is not None
    assert fake.client_netinfo[:11] == b"\0\0\0\0\x04\x04\x0a\x00\x00\x01\x00"


def test_handshake_byte_by_byte(fake: FakeRelay) -> None:
    ch = _new_channel(fake)
    transfer(ch, fake, chunk_size=1)
    assert ch.state is ChannelState.OPEN


def test_link_protocol_4_only(fake: FakeRelay) -> None:
    fake.config.link_versions = (3, 4)
    ch = open_channel(fake)
    assert ch.state is ChannelState.OPEN and ch.link_protocol == 4


def test_no_common_link_protocol() -> None:
    fake = FakeRelay(FakeRelayConfig(link_versions=(1, 2, 3)))
    ch = _new_channel(fake)
    transfer(ch, fake)
    assert ch.state is ChannelState.CLOSED
    assert "no common link protocol" in (ch.close_reason or "")


def test_expected_ids_optional(fake: FakeRelay) -> None:
    ch = open_channel(fake, expected_rsa_id=None, expected_ed_id=None)
    assert ch.state is ChannelState.OPEN
    assert ch.identity is not None and ch.identity.rsa_id == fake.rsa_id


def test_wrong_rsa_id_refused(fake: FakeRelay) -> None:
    events: list[object] = []
    ch = _new_channel(fake, expected_rsa_id=b"\x01" * 20)
    ch.owner = events
    transfer(ch, fake)
    closed = [e.reason for e in events if isinstance(e, ChannelClosed)]
    assert ch.state is ChannelState.CLOSED
    assert ch.close_reason is not None and ch.close_reason.startswith("CertsError")
    assert "RSA identity" in ch.close_reason
    assert closed == [ch.close_reason]
    with pytest.raises(ChannelError):
        ch.new_tunnel()


def test_wrong_ed_id_refused(fake: FakeRelay) -> None:
    ch = _new_channel(fake, expected_ed_id=b"\x02" * 32)
    transfer(ch, fake)
    assert ch.state is ChannelState.CLOSED
    assert ch.close_reason is not None and ch.close_reason.startswith("CertsError")
    assert "Ed25519 identity" in ch.close_reason


def _drop(ctype: int):  # noqa: ANN202
    return lambda certs: [(t, b) for t, b in certs if t != ctype]


def _replace(ctype: int, body: bytes):  # noqa: ANN202
    return lambda certs: [(t, body if t == ctype else b) for t, b in certs]


def _other_tls_link_cert(now: float) -> bytes:
    other = certgen.make_relay_chain(now)
    return other.cert_signing_link


@pytest.mark.parametrize(
    "mutator_name",
    [
        "missing_type5",
        "missing_type7",
        "duplicate_type4",
        "type5_other_tls",
        "truncated_type4",
        "crosscert_other_rsa",
        "swap_4_5",
    ],
)
def test_bad_certs_refused(mutator_name: str) -> None:
    now = time.time()
    chain = certgen.make_relay_chain(now)
    other = certgen.make_relay_chain(now, rsa_identity_key=certgen.rsa_key(1024, 1))
    mutators = {
        "missing_type5": _drop(5),
        "missing_type7": _drop(7),
        "duplicate_type4": lambda certs: [*certs, (4, chain.cert_id_signing)],
        "type5_other_tls": _replace(5, other.cert_signing_link),
        "truncated_type4": _replace(4, chain.cert_id_signing[:40]),
        "crosscert_other_rsa": _replace(7, other.cert_crosscert),
        "swap_4_5": lambda certs: [(5 if t == 4 else 4 if t == 5 else t, b) for t, b in certs],
    }
    fake = FakeRelay(FakeRelayConfig(certs_mutator=mutators[mutator_name]), now=now, chain=chain)
    ch = _new_channel(fake)
    transfer(ch, fake)
    assert ch.state is ChannelState.CLOSED
    assert ch.close_reason is not None and ch.close_reason.startswith("CertsError"), ch.close_reason


def test_expired_chain_refused() -> None:
    now = time.time()
    chain = certgen.make_relay_chain(now - 30 * 86400, lifetime_hours=2)
    fake = FakeRelay(now=now, chain=chain)
    ch = _new_channel(fake)
    transfer(ch, fake)
    assert ch.state is ChannelState.CLOSED
    assert "expired" in (ch.close_reason or "")


def test_tls_cert_mismatch_refused(fake: FakeRelay) -> None:
    ch = _new_channel(fake)
    ch.tls_cert_der = certgen.make_relay_chain(fake.now).tls_cert_der  # a different TLS cert
    transfer(ch, fake)
    assert ch.state is ChannelState.CLOSED
    assert "TLS certificate" in (ch.close_reason or "")


def test_garbage_instead_of_versions(fake: FakeRelay) -> None:
    ch = _new_channel(fake)
    ch.take_output()
    ch.receive_data(b"\x00\x00\x03" + bytes(600), fake.now)
    assert ch.state is ChannelState.CLOSED
    assert "expected VERSIONS" in (ch.close_reason or "")


def test_garbage_after_handshake_does_not_raise(channel: Channel, fake: FakeRelay) -> None:
    # Random bytes: unknown circuits and commands are dropped; a var cell may wait for more.
    fake.inject_garbage(5000)
    transfer(channel, fake)
    assert channel.state in (ChannelState.OPEN, ChannelState.CLOSED)


def test_padding_ignored_and_padding_negotiate_closes(channel: Channel, fake: FakeRelay) -> None:
    fake._send_fixed(0, CellCommand.PADDING, b"")
    fake._send_var(CellCommand.VPADDING, b"\0" * 17)
    transfer(channel, fake)
    assert channel.state is ChannelState.OPEN
    fake._send_fixed(0, CellCommand.PADDING_NEGOTIATE, b"\x00\x02")
    transfer(channel, fake)
    assert channel.state is ChannelState.CLOSED
    assert "PADDING_NEGOTIATE" in (channel.close_reason or "")


def test_relay_eof_closes_channel_and_circuits(channel: Channel, fake: FakeRelay) -> None:
    from fakes.relay import build_circuit

    circ = build_circuit(channel, fake, 1)
    events: list[object] = []
    circ.owner = events
    fake.close_connection("gone")
    transfer(channel, fake)
    assert channel.state is ChannelState.CLOSED
    assert circ.closed_reason is not None and circ.closed_reason.reason == 8  # CHANNEL_CLOSED
    assert channel.circuits == {}


def test_circuit_ids_have_high_bit(channel: Channel) -> None:
    ids = {channel.new_tunnel().circ_id for _ in range(200)}
    assert len(ids) == 200
    assert all(0x80000000 < i <= 0xFFFFFFFF for i in ids)


def test_no_cells_before_netinfo(fake: FakeRelay) -> None:
    """The client must not send anything but VERSIONS until the handshake finishes."""
    ch = _new_channel(fake)
    with pytest.raises(ChannelError):
        ch.new_tunnel()
    transfer(ch, fake)
    assert fake.violations == []


# -- sorting interleaved RELAY cells into per-circuit runs ---------------------------------


@settings(max_examples=200, deadline=None)
@given(
    circ_ids=st.lists(
        st.sampled_from([0x80000001, 0x80000002, 0x00000102, 0x01000000, 0xFFFFFFFF]),
        min_size=1,
        max_size=60,
    ),
    prefix=st.integers(0, 3),
    existing=st.booleans(),
)
def test_group_runs_matches_cell_by_cell(circ_ids: list[int], prefix: int, existing: bool) -> None:
    """`_group_runs` gives each circuit exactly the bodies a cell-by-cell split would, in
    arrival order, also appended to a run already started."""
    cells = [
        struct.pack(">IB", cid, CellCommand.RELAY) + bytes([i % 256]) * 509
        for i, cid in enumerate(circ_ids)
    ]
    buf = bytearray(b"x" * prefix + b"".join(cells))
    runs: dict[int, bytearray] = {circ_ids[0]: bytearray(b"old")} if existing else {}
    expected: dict[int, bytearray] = {k: bytearray(v) for k, v in runs.items()}
    for cell in cells:
        expected.setdefault(struct.unpack(">I", cell[:4])[0], bytearray()).extend(cell[5:])
    view = memoryview(buf)
    assert _group_runs(view, buf, prefix, len(cells), runs)
    view.release()
    assert runs == expected


def test_group_runs_refuses_circuit_zero() -> None:
    cells = [struct.pack(">IB", cid, CellCommand.RELAY) + bytes(509) for cid in (5, 0, 5)]
    buf = bytearray(b"".join(cells))
    runs: dict[int, bytearray] = {}
    assert not _group_runs(memoryview(buf), buf, 0, 3, runs)
    assert runs == {}
