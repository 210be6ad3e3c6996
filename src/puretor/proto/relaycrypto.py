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
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from puretor.errors import RemoteProtocolError

_ZERO_IV = b"\0" * 16
_ZERO4 = b"\0\0\0\0"


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

    def encrypt_outbound(self, body: bytearray, hop_index: int) -> tuple[bytes, bytes]:
        """Seal a 509-byte relay body for ``hop_index``.

        ``body`` must have Recognized and Digest zeroed and its padding filled: the
        digest covers all 509 bytes.  Returns (onion-encrypted payload, the hop's
        full running digest after this cell — what a v1 SENDME would quote).
        """
        hops = self.hops
        target = hops[hop_index]
        d = target.fwd_digest
        d.update(body)
        full = d.digest()
        body[5:9] = full[:4]
        data: bytes = bytes(body)
        for i in range(hop_index, -1, -1):
            data = hops[i]._fwd_cipher.update(data)
        return data, full[:20]

    def decrypt_inbound(self, payload: bytes | memoryview) -> tuple[int, bytes]:
        """Peel layers until a hop recognises the cell; return (hop index, body).

        Recognition = Recognized field zero *and* the digest matches a copy of that
        hop's backward digest; only then is the copy committed (tor-spec §5.5.3).
        """
        data: bytes = payload  # type: ignore[assignment]
        for index, hop in enumerate(self.hops):
            data = hop._bwd_cipher.update(data)
            if data[1] == 0 and data[2] == 0:
                trial = hop.bwd_digest.copy()
                trial.update(data[:5])
                trial.update(_ZERO4)
                trial.update(data[9:])
                if trial.digest()[:4] == data[5:9]:
                    hop.bwd_digest = trial
                    return index, data
        raise RemoteProtocolError("relay cell not recognised by any hop (digest mismatch)")

    def last_backward_digest(self, hop_index: int) -> bytes:
        """The hop's current backward digest, truncated to 20 bytes (proposal 289)."""
        return bytes(self.hops[hop_index].bwd_digest.digest()[:20])
