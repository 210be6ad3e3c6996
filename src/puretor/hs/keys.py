"""Time periods, key blinding and subcredentials (rend-spec-v3 §2.1, §2.2.1, App. A).

Time periods (§2.2.1 [TIME-PERIODS], C tor ``hs_common.c``)::

    period_num = (minutes_since_epoch(valid_after) - rotation_offset) // period_length

* ``valid_after`` is the consensus valid-after, never the local clock (§2.2.3).
* ``rotation_offset`` is one SR *phase*, ``12 × voting_interval`` seconds, used in
  whole minutes (C tor ``sr_state_get_phase_duration() / 60``).  The voting interval
  is the consensus's ``fresh-until − valid-after`` (C tor ``get_voting_interval()``):
  3600 s → 720 min on the live network; 20 s → 4 min on a 20-second test network.
* ``period_length`` is the consensus parameter ``hsdir_interval`` (C tor spells it
  with an underscore; the spec writes "hsdir-interval"), default 1440, range 30–14400
  minutes — **except** that a C tor with ``TestingTorNetwork 1`` ignores the
  parameter and uses one SR protocol run, ``24 × voting_interval`` seconds in whole
  minutes (C tor ``get_time_period_length()``): 8 minutes for a 20 s voting interval.
  A client on such a network must do the same or it computes other blinded keys
  than the service; pass ``testing_network=True``.

Key blinding (App. A.2)::

    h  = SHA3-256("Derive temporary signing key" | 0x00 | A | s | B | N)
    N  = "key-blind" | INT_8(period_num) | INT_8(period_length)
    A' = clamp(h) · A

with ``s`` empty and ``B`` the *ASCII text* of the base point below.
"""

from __future__ import annotations

import calendar
import hashlib
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import nacl.bindings
import nacl.exceptions

if TYPE_CHECKING:
    from puretor.dir.netdir import NetDir

__all__ = [
    "HsTimeParams",
    "blind_public_key",
    "blind_public_key_with_param",
    "blinding_param",
    "credential",
    "subcredential",
    "time_period_num",
    "time_period_start",
    "unix_time",
]

# rend-spec §2.2.1 / C tor hs_common.h: HS_TIME_PERIOD_LENGTH_{DEFAULT,MIN,MAX}
PERIOD_LENGTH_DEFAULT = 1440
PERIOD_LENGTH_MIN = 30
PERIOD_LENGTH_MAX = 14400
# C tor shared_random_client.h: SHARED_RANDOM_N_ROUNDS, SHARED_RANDOM_N_PHASES
SR_ROUNDS_PER_PHASE = 12
SR_PHASES = 2

BLIND_STRING = b"Derive temporary signing key\x00"
# App. A.2: the base point, written out as text and hashed as such.
ED25519_BASEPOINT = (
    b"(15112221349535400772501151409588531511454012693041857206046113283949847762202, "
    b"46316835694926478169428394003475163141307993866256225615783033603165251855960)"
)
_U64 = struct.Struct(">Q")


def unix_time(when: datetime | float) -> int:
    """Whole seconds since the epoch; a naive datetime is taken as UTC (as dir docs are)."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            return calendar.timegm(when.timetuple())
        return int(when.timestamp())
    return int(when)


@dataclass(frozen=True, slots=True)
class HsTimeParams:
    """The two numbers that define the time-period grid of one consensus."""

    period_length: int = PERIOD_LENGTH_DEFAULT  # minutes
    voting_interval: int = 3600  # seconds

    @classmethod
    def from_netdir(cls, netdir: NetDir, *, testing_network: bool = False) -> HsTimeParams:
        vi = netdir.voting_interval
        if vi <= 0:
            raise ValueError("consensus has no positive voting interval")
        if testing_network:
            # C tor get_time_period_length() under TestingTorNetwork: one SR run.
            length = (SR_ROUNDS_PER_PHASE * SR_PHASES * vi) // 60
        else:
            length = netdir.param(
                "hsdir_interval", PERIOD_LENGTH_DEFAULT, PERIOD_LENGTH_MIN, PERIOD_LENGTH_MAX
            )
        if length <= 0:
            raise ValueError(f"time period length {length} min is not positive")
        return cls(period_length=length, voting_interval=vi)

    @property
    def rotation_offset(self) -> int:
        """Seconds between the epoch-aligned grid and period starts (one SR phase)."""
        return SR_ROUNDS_PER_PHASE * self.voting_interval

    @property
    def srv_run_length(self) -> int:
        """Seconds in one shared-random protocol run (a new SRV each run)."""
        return SR_ROUNDS_PER_PHASE * SR_PHASES * self.voting_interval

    def period_num(self, when: datetime | float) -> int:
        return time_period_num(when, self.period_length, self.voting_interval)

    def period_start(self, period_num: int) -> int:
        return time_period_start(period_num, self.period_length, self.voting_interval)


def time_period_num(
    valid_after: datetime | float,
    period_length: int = PERIOD_LENGTH_DEFAULT,
    voting_interval: int = 3600,
) -> int:
    """The time period containing ``valid_after`` (C tor hs_get_time_period_num())."""
    minutes = unix_time(valid_after) // 60
    offset_minutes = (SR_ROUNDS_PER_PHASE * voting_interval) // 60
    if minutes <= offset_minutes:
        raise ValueError("time is before the first time period")
    return (minutes - offset_minutes) // period_length


def time_period_start(
    period_num: int,
    period_length: int = PERIOD_LENGTH_DEFAULT,
    voting_interval: int = 3600,
) -> int:
    """Unix time at which ``period_num`` begins (C tor hs_get_start_time_of_next_time_period()).

    C tor adds the offset in seconds here, but subtracts it in whole minutes in
    time_period_num(); the two agree whenever 12 × voting_interval is a whole
    number of minutes (any interval that is a multiple of 5 s).
    """
    return period_num * period_length * 60 + SR_ROUNDS_PER_PHASE * voting_interval


def blinding_param(
    pubkey: bytes, period_num: int, period_length: int = PERIOD_LENGTH_DEFAULT, secret: bytes = b""
) -> bytes:
    """The unclamped blinding factor ``h`` (C tor build_blinded_key_param())."""
    nonce = b"key-blind" + _U64.pack(period_num) + _U64.pack(period_length)
    return hashlib.sha3_256(BLIND_STRING + pubkey + secret + ED25519_BASEPOINT + nonce).digest()


def blind_public_key_with_param(pubkey: bytes, param: bytes) -> bytes:
    """``A' = clamp(param) · A`` — the operation ed25519_vectors.inc tests."""
    h = bytearray(param)
    h[0] &= 248
    h[31] &= 63
    h[31] |= 64
    try:
        # _noclamp: the scalar is already clamped; clamping again would be
        # harmless, but the clamping variant rejects an all-zero scalar.
        return bytes(nacl.bindings.crypto_scalarmult_ed25519_noclamp(bytes(h), pubkey))
    except nacl.exceptions.RuntimeError as e:
        raise ValueError("identity key is not a valid Ed25519 point of prime order") from e


def blind_public_key(
    pubkey: bytes, period_num: int, period_length: int = PERIOD_LENGTH_DEFAULT
) -> bytes:
    """The blinded key ``A'`` (KP_hs_blind_id) for one time period."""
    if len(pubkey) != 32:
        raise ValueError("an onion service identity key is 32 bytes")
    return blind_public_key_with_param(pubkey, blinding_param(pubkey, period_num, period_length))


def credential(pubkey: bytes) -> bytes:
    """``N_hs_cred = SHA3-256("credential" | A)`` (§2.1)."""
    return hashlib.sha3_256(b"credential" + pubkey).digest()


def subcredential(pubkey: bytes, blinded_key: bytes) -> bytes:
    """``N_hs_subcred = SHA3-256("subcredential" | N_hs_cred | A')`` (§2.1)."""
    return hashlib.sha3_256(b"subcredential" + credential(pubkey) + blinded_key).digest()
