"""A hop's window and SENDME bookkeeping (tor-spec §7.3, proposal 324)."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from puretor.proto.congestion import CCParams, Vegas
from puretor.proto.hop import Hop
from puretor.proto.relaycrypto import HopCrypto


def _hop(cc_inc: int | None) -> Hop:
    crypto = HopCrypto(os.urandom(20), os.urandom(20), os.urandom(16), os.urandom(16))
    cc = Vegas(CCParams(), cc_inc) if cc_inc is not None else None
    return Hop(crypto, cc=cc)


@given(
    st.one_of(st.none(), st.integers(1, 254)),
    st.lists(st.integers(1, 120), min_size=1, max_size=30),
)
def test_batch_sealing_records_the_same_digests_as_cell_by_cell(
    cc_inc: int | None, batches: list[int]
) -> None:
    """The upload batch loop (`first_recorded` + `advance`) keeps exactly the digests and
    window that `note_data_cell` would, one cell at a time."""
    one_by_one, batched = _hop(cc_inc), _hop(cc_inc)
    n = 0
    for size in batches:
        if cc_inc is None and size > one_by_one.package_window:
            break  # the windows would not allow it
        digests = [n.to_bytes(4, "big") * 8 for n in range(n, n + size)]
        n += size
        for d in digests:
            one_by_one.note_data_cell(d)
        first, inc = batched.first_recorded(), batched.sendme_inc
        batched.expected_sendmes.extend(d[:20] for d in digests[first::inc])
        batched.advance(size)
        assert batched.package_window == one_by_one.package_window
        assert batched.expected_sendmes == one_by_one.expected_sendmes
