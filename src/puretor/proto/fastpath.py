"""Pure helpers of the relay-cell hot paths: stretches of full DATA cells in a run.

A "run" is the bodies of consecutive RELAY cells for one circuit, back to back (509
bytes each).  After decryption, most of a bulk download is stretches of full DATA
cells for one stream; taking such a stretch whole - its headers checked with strided
slices, its data joined or viewed in one go - is what keeps the per-cell Python work
small.  Nothing here has state.
"""

from __future__ import annotations

import struct

from puretor.proto.relaymsg import RELAY_BODY_LEN, RELAY_DATA_LEN

# Most full DATA cells taken as one stretch.
MAX_STRETCH = 256

RELAY_HEADER = struct.Struct(">BHHIH")  # command, recognized, stream id, digest, length
RELAY_HEADER_SHORT = struct.Struct(">B2xH4xH")  # command, stream id, length
DATA_OFFSET = 11  # where a relay message's data starts in the body


def full_data_stretch(
    block: bytearray, offset: int, limit: int, hop_of: list[int], index: int, hop: int
) -> int:
    """How many cells from ``offset`` (at most ``limit``) are full DATA cells for the same
    stream as the first (which the caller checked is one) and from ``hop``; 1 if only it.

    The shortest run of equal leading bytes of each header field decides (command,
    stream ID, length: strided slices, `lstrip` in C).
    """
    body_len = RELAY_BODY_LEN
    if block[offset + body_len + 3 : offset + body_len + 5] != block[offset + 3 : offset + 5]:
        return 1
    hi = offset + limit * body_len
    for field in (0, 3, 4, 9, 10):
        column = block[offset + field : hi : body_len]
        limit = min(limit, len(column) - len(column.lstrip(column[:1])))
        hi = offset + limit * body_len
    if limit > 1 and hop_of[index : index + limit].count(hop) == limit:
        return limit
    return 1


def data_views(view: memoryview, offset: int, cells: int) -> list[memoryview]:
    """The data of ``cells`` full DATA cells from ``offset``, as views into the run."""
    start = offset + DATA_OFFSET
    return [
        view[p : p + RELAY_DATA_LEN]
        for p in range(start, offset + cells * RELAY_BODY_LEN, RELAY_BODY_LEN)
    ]


def join_data(view: memoryview, offset: int, cells: int) -> bytes:
    """The data of ``cells`` full DATA cells from ``offset``, joined."""
    return b"".join(data_views(view, offset, cells))
