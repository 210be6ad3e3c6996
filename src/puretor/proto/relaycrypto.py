"""Relay cell crypto for the client side of a circuit (tor-spec §5.5, §6.1).

Each hop has two AES-CTR streams (forward/backward, all-zero IV) and two running
digests seeded with Df/Db.  These objects live as long as the circuit: the CTR
keystream position and the digest state carry over from cell to cell.

Ordinary hops use "tor1" (AES-128, SHA-1); the onion-service virtual hop uses
AES-256 and SHA3-256 (rend-spec §5).  The 4-byte digest field is a prefix of the
running digest in both cases; authenticated SENDMEs carry its first 20 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from puretor.errors import RemoteProtocolError

_ZERO_IV = b"\0" * 16
_ZERO4 = b"\0\0\0\0"
_BODY_LEN = 509


def _zero_positions(row: bytearray, alive: list[int], contiguous: bool) -> Iterator[int]:
    """The cells in ``alive`` whose byte in ``row`` is zero, in order."""
    if contiguous:
        hi = alive[-1] + 1
        i = row.find(0, alive[0], hi)
        while i >= 0:
            yield i
            i = row.find(0, i + 1, hi)
    else:
        for i in alive:
            if not row[i]:
                yield i


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

    __slots__ = ("hops",)

    def __init__(self) -> None:
        self.hops: list[HopCrypto] = []

    def add_hop(self, hop: HopCrypto) -> None:
        self.hops.append(hop)

    def encrypt_outbound(self, body: bytearray, hop_index: int) -> tuple[bytearray, bytes]:
        """Seal a 509-byte relay body for ``hop_index``, in place.

        ``body`` must have Recognized and Digest zeroed and its padding filled: the
        digest covers all 509 bytes.  Returns (``body``, now onion-encrypted; the
        hop's running digest after this cell, 20 bytes — what a v1 SENDME quotes).
        """
        hops = self.hops
        d = hops[hop_index].fwd_digest
        d.update(body)
        full = d.digest()
        body[5:9] = full[:4]
        for i in range(hop_index, -1, -1):
            hops[i]._fwd_cipher.update_into(body, body)
        return body, full[:20]

    def outbound_layers(self, hop_index: int) -> tuple[Any, tuple[Callable[..., int], ...]]:
        """For sealing a batch of cells to ``hop_index`` (Circuit's DATA fast path).

        Returns the hop's forward running digest and the in-place encrypt
        functions (``update_into(buf, buf)``), target hop first.  The caller
        absorbs each body into the digest as :meth:`encrypt_outbound` does, then
        runs each function once over the whole batch: CTR keystreams carry over
        between calls, so that equals one call per cell.
        """
        hops = self.hops
        layers = tuple(hops[i]._fwd_cipher.update_into for i in range(hop_index, -1, -1))
        return hops[hop_index].fwd_digest, layers

    def decrypt_inbound(
        self, payload: bytes | bytearray | memoryview, first_hop: int = 0
    ) -> tuple[int, bytearray]:
        """Peel layers until a hop recognises the cell; return (hop index, body).

        Recognition = Recognized field zero *and* the digest matches a copy of that
        hop's backward digest; only then is the copy committed (tor-spec §5.5.3).

        A ``bytearray`` payload is decrypted in place; anything else is copied
        first.  The returned body has its Digest field zeroed.  ``first_hop`` > 0
        continues a cell whose earlier layers are already off (see
        :meth:`decrypt_inbound_run`).
        """
        body = payload if type(payload) is bytearray else bytearray(payload)
        hops = self.hops
        for index in range(first_hop, len(hops)):
            hop = hops[index]
            hop._bwd_cipher.update_into(body, body)
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

    def decrypt_inbound_run(self, block: bytearray) -> tuple[list[int], list[Any]]:
        """Peel a run of back-to-back 509-byte payloads in ``block``, in place.

        The same as :meth:`decrypt_inbound` on each cell in turn, but each hop's
        layer comes off every cell that reaches it in one cipher call (the CTR
        keystream carries over between calls, so one call over a stretch of cells
        equals one call per cell), and cells are tested for recognition only when
        their Recognized field is zero (found with ``bytearray.find``).

        Returns, per cell, the recognising hop (-1: none of the current hops) and
        that hop's backward digest state right after absorbing the cell — what a
        SENDME triggered by it must quote, even though later cells of the run have
        been absorbed since.  Recognised bodies have their Digest field zeroed.
        """
        count = len(block) // _BODY_LEN
        hop_of = [-1] * count
        states: list[Any] = [None] * count
        alive = list(range(count))  # cells no hop has recognised yet, in order
        mv = memoryview(block)
        try:
            for index, hop in enumerate(self.hops):
                if not alive:
                    break
                contiguous = alive[-1] - alive[0] + 1 == len(alive)
                update = hop._bwd_cipher.update_into
                if contiguous:
                    seg = mv[alive[0] * _BODY_LEN : (alive[-1] + 1) * _BODY_LEN]
                    update(seg, seg)
                    seg.release()
                else:
                    for i in alive:
                        seg = mv[i * _BODY_LEN : (i + 1) * _BODY_LEN]
                        update(seg, seg)
                        seg.release()
                recognized_hi = block[1::_BODY_LEN]  # byte 1 of every cell
                d = hop.bwd_digest
                found = 0
                for i in _zero_positions(recognized_hi, alive, contiguous):
                    o = i * _BODY_LEN
                    if block[o + 2]:
                        continue
                    tag = block[o + 5 : o + 9]
                    block[o + 5 : o + 9] = _ZERO4
                    trial = d.copy()
                    trial.update(mv[o : o + _BODY_LEN])
                    if trial.digest()[:4] == tag:
                        d = trial
                        hop_of[i] = index
                        states[i] = trial
                        found += 1
                    else:
                        block[o + 5 : o + 9] = tag
                hop.bwd_digest = d
                if found == len(alive):
                    alive = []
                elif found:
                    alive = [i for i in alive if hop_of[i] < 0]
        finally:
            mv.release()
        return hop_of, states

    def last_backward_digest(self, hop_index: int) -> bytes:
        """The hop's current backward digest, truncated to 20 bytes (proposal 289)."""
        return bytes(self.hops[hop_index].bwd_digest.digest()[:20])
