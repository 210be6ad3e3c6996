"""Relay cell crypto for the client side of a circuit (tor-spec §5.5, §6.1).

Each hop has two AES-CTR streams (forward/backward, all-zero IV) and two running
digests seeded with Df/Db.  These objects live as long as the circuit: the CTR
keystream position and the digest state carry over from cell to cell.

Ordinary hops use "tor1" (AES-128, SHA-1); the onion-service virtual hop uses
AES-256 and SHA3-256 (rend-spec §5).  The 4-byte digest field is a prefix of the
running digest in both cases; authenticated SENDMEs carry its first 20 bytes.

Layers are never applied in place: since cryptography 51 every ``*_into`` method
refuses overlapping input and output buffers.  Each layer writes from one buffer
into another and the next layer writes back ("ping-pong"), which costs no more
than in place did; whichever buffer holds the result is handed back.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from puretor.errors import RemoteProtocolError

_ZERO_IV = b"\0" * 16
_ZERO4 = b"\0\0\0\0"
_BODY_LEN = 509


class HopCrypto:
    """The four per-direction objects of one hop, kept for the circuit's life."""

    __slots__ = ("_fwd_cipher", "_bwd_cipher", "fwd_digest", "bwd_digest")

    def __init__(self, df: bytes, db: bytes, kf: bytes, kb: bytes, *, hs: bool = False) -> None:
        digest = hashlib.sha3_256 if hs else hashlib.sha1
        self.fwd_digest: Any = digest(df)
        self.bwd_digest: Any = digest(db)
        # A 16-byte key gives AES-128, a 32-byte key AES-256.
        self._fwd_cipher = Cipher(algorithms.AES(kf), modes.CTR(_ZERO_IV)).encryptor()
        self._bwd_cipher = Cipher(algorithms.AES(kb), modes.CTR(_ZERO_IV)).decryptor()


class OnionCrypto:
    """Layered crypto of a whole circuit: hop 0 is the first hop (the guard)."""

    __slots__ = ("hops", "_spare")

    def __init__(self) -> None:
        self.hops: list[HopCrypto] = []
        self._spare = bytearray(_BODY_LEN)  # the other buffer of encrypt_outbound's ping-pong

    def add_hop(self, hop: HopCrypto) -> None:
        self.hops.append(hop)

    def encrypt_outbound(self, body: bytearray, hop_index: int) -> tuple[bytearray, bytes]:
        """Seal a 509-byte relay body for ``hop_index``.

        ``body`` must have Recognized and Digest zeroed and its padding filled: the
        digest covers all 509 bytes.  Returns (the onion-encrypted body - ``body``
        itself or a buffer this object reuses, so copy it before the next call; the
        hop's running digest after this cell, 20 bytes — what a v1 SENDME quotes).
        ``body``'s contents are undefined afterwards.
        """
        hops = self.hops
        d = hops[hop_index].fwd_digest
        d.update(body)
        full = d.digest()
        body[5:9] = full[:4]
        src, dst = body, self._spare
        for i in range(hop_index, -1, -1):
            hops[i]._fwd_cipher.update_into(src, dst)
            src, dst = dst, src
        return src, full[:20]

    def outbound_digest(self, hop_index: int) -> Any:
        """The forward running digest of ``hop_index`` (for sealing a batch by hand)."""
        return self.hops[hop_index].fwd_digest

    def seal_layers(self, block: bytearray, hop_index: int) -> bytearray:
        """Onion-encrypt ``block`` - one or more digested bodies - for ``hop_index``.

        One cipher call per layer over the whole block: CTR keystreams carry over
        between calls, so a batch of cells gives the bytes one call per cell would.
        Returns the buffer that holds the result (``block`` or a new one of its
        size); ``block``'s contents are undefined afterwards.
        """
        hops = self.hops
        src, dst = block, bytearray(len(block))
        for i in range(hop_index, -1, -1):
            hops[i]._fwd_cipher.update_into(src, dst)
            src, dst = dst, src
        return src

    def decrypt_inbound(
        self, payload: bytes | bytearray | memoryview, first_hop: int = 0
    ) -> tuple[int, bytearray]:
        """Peel layers until a hop recognises the cell; return (hop index, body).

        Recognition = Recognized field zero *and* the digest matches a copy of that
        hop's backward digest; only then is the copy committed (tor-spec §5.5.3).

        The returned body is a new buffer with its Digest field zeroed; the
        payload is not changed.  ``first_hop`` > 0 continues a cell whose earlier
        layers are already off (see :meth:`decrypt_inbound_run`).
        """
        buffers = (bytearray(len(payload)), bytearray(len(payload)))
        src: Any = payload
        hops = self.hops
        for index in range(first_hop, len(hops)):
            hop = hops[index]
            body = buffers[index & 1]
            hop._bwd_cipher.update_into(src, body)
            src = body
            if body[1] == 0 and body[2] == 0:
                # The digest covers the body with the Digest field zeroed: zero it in
                # place for the check, and put it back if this hop is not the one.
                tag = body[5:9]
                body[5:9] = _ZERO4
                trial = hop.bwd_digest.copy()
                trial.update(body)
                if trial.digest()[:4] == tag:
                    hop.bwd_digest = trial
                    return index, body
                body[5:9] = tag
        raise RemoteProtocolError("relay cell not recognised by any hop (digest mismatch)")

    def decrypt_inbound_run(self, block: bytearray) -> tuple[list[int], list[Any], bytearray]:
        """Peel a run of back-to-back 509-byte payloads in ``block``.

        The same as :meth:`decrypt_inbound` on each cell in turn, but each hop's
        layer comes off every cell that reaches it in one cipher call (the CTR
        keystream carries over between calls, so one call over a stretch of cells
        equals one call per cell), and cells are tested for recognition only when
        their Recognized field is zero (found with ``bytearray.find``).

        Returns, per cell, the recognising hop (-1: none of the current hops) and
        that hop's backward digest right after absorbing the cell (the whole hash,
        of which a SENDME quotes the first 20 bytes; None for cells no hop
        recognised) - what a SENDME triggered by it must quote,
        even though later cells of the run have been absorbed since - and the
        buffer that now holds the run (``block`` or a new one of its size; the
        other's contents are undefined).  Recognised bodies have their Digest
        field zeroed; unrecognised ones have every current layer off.
        """
        count = len(block) // _BODY_LEN
        hop_of = [-1] * count
        digests: list[Any] = [None] * count
        alive = list(range(count))  # cells no hop has recognised yet, in order
        buffers = (block, bytearray(len(block)))
        views = (memoryview(block), memoryview(buffers[1]))
        applied = 0  # layers taken off; the run is in buffers[applied & 1]
        try:
            for index, hop in enumerate(self.hops):
                if not alive:
                    break
                src, dst_mv = views[index & 1], views[(index + 1) & 1]
                dst = buffers[(index + 1) & 1]
                contiguous = alive[-1] - alive[0] + 1 == len(alive)
                update = hop._bwd_cipher.update_into
                if contiguous:
                    lo, hi = alive[0] * _BODY_LEN, (alive[-1] + 1) * _BODY_LEN
                    update(src[lo:hi], dst_mv[lo:hi])
                else:
                    for i in alive:
                        o = i * _BODY_LEN
                        update(src[o : o + _BODY_LEN], dst_mv[o : o + _BODY_LEN])
                applied = index + 1
                if contiguous:
                    # Byte 1 of the Recognized field of each cell, in one strided slice:
                    # none zero (the usual case before the last hop) - nothing here is
                    # for this hop; all zero - probably all of it is.
                    zeros = dst[lo + 1 : hi : _BODY_LEN].count(0)
                    if not zeros:
                        continue
                    if zeros == len(alive) and self._recognise_all(
                        index, hop, dst, dst_mv, alive, hop_of, digests
                    ):
                        break  # every remaining cell was for this hop
                found = self._recognise(index, hop, dst, dst_mv, alive, contiguous, hop_of, digests)
                if found == len(alive):
                    alive = []
                elif found:
                    alive = [i for i in alive if hop_of[i] < 0]
            result = buffers[applied & 1]
            if applied > 1 and hop_of.count(applied - 1) != count:
                # Cells an earlier hop recognised were left in the other buffer.
                other = views[(applied + 1) & 1]
                for i, hop_index in enumerate(hop_of):
                    if hop_index >= 0 and (hop_index + 1) & 1 != applied & 1:
                        o = i * _BODY_LEN
                        result[o : o + _BODY_LEN] = other[o : o + _BODY_LEN]
        finally:
            views[0].release()
            views[1].release()
        return hop_of, digests, result

    @staticmethod
    def _recognise_all(
        index: int,
        hop: HopCrypto,
        block: bytearray,
        mv: memoryview,
        alive: list[int],
        hop_of: list[int],
        digests: list[Any],
    ) -> bool:
        """The usual case at the last hop: is every cell of the stretch ``alive`` for ``hop``?

        Called when byte 1 of every Recognized field is zero.  When byte 2 is too, all Digest fields are taken out and
        zeroed with strided slices, the running digest absorbs the cells one after
        another, and the first four bytes of every resulting digest are compared
        with the taken-out fields at once.  On any mismatch nothing has changed
        (fields and digest restored) and False sends the stretch the careful way.
        """
        lo, hi = alive[0] * _BODY_LEN, (alive[-1] + 1) * _BODY_LEN
        count = len(alive)
        zeros = bytes(count)
        if block[lo + 2 : hi : _BODY_LEN] != zeros:  # (the caller checked byte 1)
            return False
        tags = [block[lo + j : hi : _BODY_LEN] for j in range(5, 9)]
        for j in range(5, 9):
            block[lo + j : hi : _BODY_LEN] = zeros
        d = hop.bwd_digest
        saved = d.copy()
        update, digest = d.update, d.digest
        fulls: list[bytes] = []
        append = fulls.append
        for o in range(lo, hi, _BODY_LEN):
            update(mv[o : o + _BODY_LEN])
            append(digest())
        joined = b"".join(fulls)
        size = d.digest_size
        if all(joined[j::size] == tags[j] for j in range(4)):
            first = alive[0]
            hop_of[first : first + count] = [index] * count
            digests[first : first + count] = fulls
            return True
        for j in range(5, 9):
            block[lo + j : hi : _BODY_LEN] = tags[j - 5]
        hop.bwd_digest = saved
        return False

    @staticmethod
    def _recognise(
        index: int,
        hop: HopCrypto,
        block: bytearray,
        mv: memoryview,
        alive: list[int],
        contiguous: bool,
        hop_of: list[int],
        digests: list[Any],
    ) -> int:
        """Digest-check the cells in ``alive`` whose Recognized field is zero at ``hop``.

        The running digest absorbs each candidate directly (no per-cell copy); a
        saved state lets a mismatch - a cell that only looked recognised - roll the
        digest back (replaying the cells this hop recognised since), as the spec's
        "check a copy, commit on match" requires.  Mismatches are rare (1 in 65,536
        cells per earlier hop, or a broken relay), so the rollback is too.
        """
        d = hop.bwd_digest
        saved = None
        saved_at = 0  # first cell absorbed after `saved` was taken
        if contiguous:
            recognized_hi = block[1::_BODY_LEN]  # byte 1 of every cell
            hi = alive[-1] + 1
            candidates: Any = []
            i = recognized_hi.find(0, alive[0], hi)
            while i >= 0:
                candidates.append(i)
                i = recognized_hi.find(0, i + 1, hi)
        else:
            candidates = [i for i in alive if not block[i * _BODY_LEN + 1]]
        for i in candidates:
            o = i * _BODY_LEN
            if block[o + 2]:
                continue
            if saved is None:
                saved, saved_at = d.copy(), i
            tag = block[o + 5 : o + 9]
            block[o + 5 : o + 9] = _ZERO4
            d.update(mv[o : o + _BODY_LEN])
            full = d.digest()
            if full[:4] == tag:
                hop_of[i] = index
                digests[i] = full
            else:
                block[o + 5 : o + 9] = tag
                d = saved.copy()
                for j in range(saved_at, i):
                    if hop_of[j] == index:
                        d.update(mv[j * _BODY_LEN : (j + 1) * _BODY_LEN])
                saved = None
        hop.bwd_digest = d
        return hop_of.count(index)

    def last_backward_digest(self, hop_index: int) -> bytes:
        """The hop's current backward digest, truncated to 20 bytes (proposal 289)."""
        return bytes(self.hops[hop_index].bwd_digest.digest()[:20])
