"""Inbound relay crypto: a run of cells peeled at once equals peeling them one by one.

`OnionCrypto.decrypt_inbound_run` batches cipher calls and checks digests without a
per-cell copy (it rolls the running digest back when a cell only looked recognised);
`OnionCrypto.decrypt_inbound` is the plain tor-spec §5.5.3 loop.  The relay side here
seals cells the way a relay does: its backward digest absorbs the body with the
Digest field zeroed, the first four bytes go in, then every hop from the originating
one back to the guard adds its AES-CTR layer.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from puretor.errors import RemoteProtocolError
from puretor.proto.relaycrypto import HopCrypto, OnionCrypto

BODY = 509


class RelaySide:
    """The relays' backward state for each hop of one circuit."""

    def __init__(self, keys: list[tuple[bytes, bytes]]) -> None:
        self.digests = [hashlib.sha1(db) for db, _ in keys]
        self.ciphers = [
            Cipher(algorithms.AES(kb), modes.CTR(b"\0" * 16)).encryptor() for _, kb in keys
        ]

    def seal(self, hop: int, data: bytes) -> bytes:
        """A relay DATA cell from ``hop``."""
        body = bytearray(BODY)
        body[0] = 2  # DATA
        body[3:5] = (1).to_bytes(2, "big")
        body[9:11] = len(data).to_bytes(2, "big")
        body[11 : 11 + len(data)] = data
        self.digests[hop].update(body)
        body[5:9] = self.digests[hop].digest()[:4]
        for i in range(hop, -1, -1):
            body = bytearray(self.ciphers[i].update(bytes(body)))
        return bytes(body)


def _pair(
    hops: int, backward_keys: list[bytes] | None = None
) -> tuple[OnionCrypto, OnionCrypto, RelaySide]:
    kbs = backward_keys or [os.urandom(16) for _ in range(hops)]
    keys = [(os.urandom(20), kb) for kb in kbs]
    clients = []
    for _ in range(2):
        oc = OnionCrypto()
        for db, kb in keys:
            oc.add_hop(HopCrypto(os.urandom(20), db, os.urandom(16), kb))
        clients.append(oc)
    return clients[0], clients[1], RelaySide(keys)


def _one_by_one(oc: OnionCrypto, cells: list[bytes]) -> tuple[list[int], list[bytes | None]]:
    hops, digests = [], []
    for cell in cells:
        try:
            hop, _body = oc.decrypt_inbound(bytearray(cell))
        except RemoteProtocolError:
            hops.append(-1)
            digests.append(None)
            continue
        hops.append(hop)
        digests.append(oc.hops[hop].bwd_digest.digest()[:20])
    return hops, digests


cell_specs = st.lists(
    st.tuples(st.integers(0, 2), st.binary(max_size=498)), min_size=1, max_size=40
)


@settings(max_examples=150, deadline=None)
@given(runs=st.lists(cell_specs, min_size=1, max_size=4))
def test_run_equals_cell_by_cell(runs: list[list[tuple[int, bytes]]]) -> None:
    batched, single, relay = _pair(3)
    for run in runs:
        cells = [relay.seal(hop, data) for hop, data in run]
        block = bytearray(b"".join(cells))
        hop_of, digests, block = batched.decrypt_inbound_run(block)
        assert (hop_of, digests) == _one_by_one(single, cells)
        for i, (hop, data) in enumerate(run):
            assert hop_of[i] == hop
            body = block[i * BODY : (i + 1) * BODY]
            assert body[11 : 11 + len(data)] == data and body[5:9] == b"\0\0\0\0"
    # The running digests ended in the same state too.
    for a, b in zip(batched.hops, single.hops, strict=True):
        assert a.bwd_digest.digest() == b.bwd_digest.digest()


# Backward keys for hops 1 and 2 whose first keystream blocks agree in bytes 1-2 (found
# by search): the first cell from hop 2, with the guard's layer off, has a zero
# Recognized field, so the guard's digest is tried on it, fails, and must be rolled back.
LOOKALIKE_KEYS = [
    os.urandom(16),
    bytes.fromhex("00000000000000000000000000002714"),
    bytes.fromhex("000102030405060708090a0b0c0d0e0f"),
]


def test_a_lookalike_cell_between_good_ones_rolls_the_digest_back() -> None:
    batched, single, relay = _pair(3, LOOKALIKE_KEYS)
    cells = [relay.seal(0, b"a"), relay.seal(2, b"lookalike"), relay.seal(0, b"c")]
    cells += [relay.seal(h, os.urandom(100)) for h in (0, 2, 1, 0, 2)]
    block = bytearray(b"".join(cells))
    hop_of, digests, block = batched.decrypt_inbound_run(block)
    assert hop_of == [0, 2, 0, 0, 2, 1, 0, 2]
    assert block[BODY + 11 : BODY + 20] == b"lookalike"
    assert (hop_of, digests) == _one_by_one(single, cells)
    for a, b in zip(batched.hops, single.hops, strict=True):
        assert a.bwd_digest.digest() == b.bwd_digest.digest()


@pytest.mark.parametrize("hops", [1, 3])
def test_long_runs_of_one_hop(hops: int) -> None:
    batched, single, relay = _pair(hops)
    cells = [relay.seal(hops - 1, os.urandom(498)) for _ in range(300)]
    hop_of, digests, block = batched.decrypt_inbound_run(bytearray(b"".join(cells)))
    assert hop_of == [hops - 1] * 300
    assert (hop_of, digests) == _one_by_one(single, cells)


@pytest.mark.parametrize("bad", [0, 5, 9])
def test_a_corrupted_digest_in_a_run_of_one_hop(bad: int) -> None:
    """Every Recognized field is zero (the batched check's case) but one digest is wrong:
    the run is redone cell by cell, and everything matches the plain loop."""
    batched, single, relay = _pair(1)
    cells = [bytearray(relay.seal(0, os.urandom(200))) for _ in range(10)]
    cells[bad][6] ^= 0x40  # CTR: flips the same bit of the plaintext Digest field
    block = bytearray(b"".join(cells))
    hop_of, digests, block = batched.decrypt_inbound_run(block)
    assert hop_of == [0] * bad + [-1] * (10 - bad)
    assert (hop_of, digests) == _one_by_one(single, [bytes(c) for c in cells])
    assert batched.hops[0].bwd_digest.digest() == single.hops[0].bwd_digest.digest()
