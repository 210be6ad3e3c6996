"""Congestion control (proposal 324) for the client end of an exit circuit, sans-I/O.

* `CCParams`: the consensus parameters, with C tor's defaults and ranges
  (congestion_control_common.c, congestion_control_vegas.c, congestion_control_flow.c);
* the negotiation: the ntor-v3 client message that requests congestion control and the
  parsing/validation of the exit's answer (C tor's ``congestion_control_parse_ext_response``);
* `Vegas`: TOR_VEGAS for what *we* send (cwnd, inflight, RTT from SENDMEs), as
  ``congestion_control_vegas_process_sendme`` does it;
* `StreamFlow`: per-stream XON/XOFF state (prop 324 §4).

Times are integer microseconds, like C tor's, so the integer arithmetic (BDP, EWMAs) is
the same.  The caller supplies the clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from puretor.errors import RemoteProtocolError
from puretor.proto.handshake import decode_extensions, encode_extensions

if TYPE_CHECKING:
    from puretor.proto.relaymsg import End

__all__ = [
    "CC_ALG_SENDME",
    "CC_ALG_VEGAS",
    "CCParams",
    "StreamFlow",
    "Vegas",
    "cc_request_message",
    "parse_cc_response",
    "validate_sendme_inc",
]

CC_ALG_SENDME = 0  # fixed windows
CC_ALG_VEGAS = 2

EXT_CC_REQUEST = 1  # trunnel TRUNNEL_EXT_TYPE_CC_FIELD_REQUEST (empty)
EXT_CC_RESPONSE = 2  # TRUNNEL_EXT_TYPE_CC_FIELD_RESPONSE: sendme_inc (1 byte)

RELAY_PAYLOAD_SIZE = 498  # C tor's RELAY_PAYLOAD_SIZE: cc_xoff_* are in these units
TLS_RECORD_MAX_CELLS = 31  # (16 * 1024) / 514
_OUTBUF_CELLS = 2 * TLS_RECORD_MAX_CELLS
_INT32_MAX = 2**31 - 1

# congestion_control_flow.c: XOFF only once the limit has been exceeded this long.
XOFF_GRACE_PERIOD_USEC = 5000

# A stream package window that never runs out: flow-controlled streams are limited by
# XON/XOFF, not by stream SENDMEs (see Circuit).
UNLIMITED_WINDOW = 1 << 62

GetParam = Callable[[str, int, int, int], int]


@dataclass(frozen=True, slots=True)
class CCParams:
    """Consensus parameters for congestion control; defaults are C tor's (exit paths)."""

    cc_alg: int = CC_ALG_VEGAS
    sendme_inc: int = TLS_RECORD_MAX_CELLS  # cc_sendme_inc
    cwnd_init: int = 4 * TLS_RECORD_MAX_CELLS  # cc_cwnd_init
    cwnd_min: int = 4 * TLS_RECORD_MAX_CELLS  # cc_cwnd_min
    cwnd_max: int = _INT32_MAX  # cc_cwnd_max
    cwnd_inc: int = 1  # cc_cwnd_inc
    cwnd_inc_pct_ss: int = 100  # cc_cwnd_inc_pct_ss
    cwnd_inc_rate: int = TLS_RECORD_MAX_CELLS  # cc_cwnd_inc_rate
    ss_cwnd_cap: int = 600  # cc_sscap_exit
    ss_cwnd_max: int = 5000  # cc_ss_max
    alpha: int = 3 * _OUTBUF_CELLS  # cc_vegas_alpha_exit
    beta: int = 4 * _OUTBUF_CELLS  # cc_vegas_beta_exit
    gamma: int = 3 * _OUTBUF_CELLS  # cc_vegas_gamma_exit
    delta: int = 5 * _OUTBUF_CELLS  # cc_vegas_delta_exit
    cwnd_full_gap: int = 4  # cc_cwnd_full_gap
    cwnd_full_minpct: int = 25  # cc_cwnd_full_minpct
    cwnd_full_per_cwnd: int = 1  # cc_cwnd_full_per_cwnd
    ewma_cwnd_pct: int = 50  # cc_ewma_cwnd_pct
    ewma_max: int = 10  # cc_ewma_max
    ewma_ss: int = 2  # cc_ewma_ss
    rtt_reset_pct: int = 100  # cc_rtt_reset_pct
    xoff_client: int = 500 * RELAY_PAYLOAD_SIZE  # cc_xoff_client, in bytes
    xoff_exit: int = 500 * RELAY_PAYLOAD_SIZE  # cc_xoff_exit, in bytes
    xon_rate: int = 500 * RELAY_PAYLOAD_SIZE  # cc_xon_rate, in bytes
    # Not a consensus parameter: how much a stream may still receive, beyond the XOFF
    # limit, while its reader is paused, before we call it a protocol violation.  The
    # exit keeps sending until our XOFF reaches it - at most what it has in flight, i.e.
    # its cwnd (slow start stops at cc_ss_max cells) - so twice that is a gross overrun.
    overrun_cells: int = 2 * 5000

    @property
    def enabled(self) -> bool:
        return self.cc_alg != CC_ALG_SENDME

    @property
    def overrun_bytes(self) -> int:
        """Stream data still accepted after our XOFF; more is a protocol violation."""
        return self.overrun_cells * RELAY_PAYLOAD_SIZE

    @property
    def max_held_bytes(self) -> int:
        """Held data past which we send XOFF even inside C tor's grace period."""
        return self.xoff_client + self.overrun_bytes

    @classmethod
    def from_consensus(cls, param: GetParam, path: str = "exit") -> CCParams:
        """Read the parameters with C tor's defaults and ranges; ``param(name, default,
        lo, hi)`` clamps (``NetDir.param``).

        ``path``: ``"exit"`` (also single onion services), or ``"onion"`` for the
        virtual hop of a rendezvous circuit, which has its own Vegas parameters and
        slow-start cap (C tor congestion_control_vegas_set_params, CC_PATH_ONION).
        """
        if path not in ("exit", "onion"):
            raise ValueError(f"unknown congestion control path {path!r}")
        d = cls() if path == "exit" else _ONION_DEFAULTS
        alg = param("cc_alg", d.cc_alg, 0, 2)
        if alg not in (CC_ALG_SENDME, CC_ALG_VEGAS):
            alg = CC_ALG_VEGAS  # C tor: unsupported algorithms fall back to the default
        ss_max = param("cc_ss_max", d.ss_cwnd_max, 500, _INT32_MAX)
        return cls(
            cc_alg=alg,
            sendme_inc=param("cc_sendme_inc", d.sendme_inc, 1, 254),
            cwnd_init=param("cc_cwnd_init", d.cwnd_init, TLS_RECORD_MAX_CELLS, 10000),
            cwnd_min=param("cc_cwnd_min", d.cwnd_min, TLS_RECORD_MAX_CELLS, 1000),
            cwnd_max=param("cc_cwnd_max", d.cwnd_max, 500, _INT32_MAX),
            cwnd_inc=param("cc_cwnd_inc", d.cwnd_inc, 1, 1000),
            cwnd_inc_pct_ss=param("cc_cwnd_inc_pct_ss", d.cwnd_inc_pct_ss, 1, 500),
            cwnd_inc_rate=param("cc_cwnd_inc_rate", d.cwnd_inc_rate, 1, 250),
            ss_cwnd_cap=param(f"cc_sscap_{path}", d.ss_cwnd_cap, 100, _INT32_MAX),
            ss_cwnd_max=ss_max,
            alpha=param(f"cc_vegas_alpha_{path}", d.alpha, 0, 1000),
            beta=param(f"cc_vegas_beta_{path}", d.beta, 0, 1000),
            gamma=param(f"cc_vegas_gamma_{path}", d.gamma, 0, 1000),
            delta=param(f"cc_vegas_delta_{path}", d.delta, 0, _INT32_MAX),
            cwnd_full_gap=param("cc_cwnd_full_gap", d.cwnd_full_gap, 0, 2**15 - 1),
            cwnd_full_minpct=param("cc_cwnd_full_minpct", d.cwnd_full_minpct, 0, 100),
            cwnd_full_per_cwnd=param("cc_cwnd_full_per_cwnd", d.cwnd_full_per_cwnd, 0, 1),
            ewma_cwnd_pct=param("cc_ewma_cwnd_pct", d.ewma_cwnd_pct, 1, 255),
            ewma_max=param("cc_ewma_max", d.ewma_max, 2, _INT32_MAX),
            ewma_ss=param("cc_ewma_ss", d.ewma_ss, 2, _INT32_MAX),
            rtt_reset_pct=param("cc_rtt_reset_pct", d.rtt_reset_pct, 0, 100),
            xoff_client=param("cc_xoff_client", 500, 1, 10000) * RELAY_PAYLOAD_SIZE,
            xoff_exit=param("cc_xoff_exit", 500, 1, 10000) * RELAY_PAYLOAD_SIZE,
            xon_rate=param("cc_xon_rate", 500, 1, 5000) * RELAY_PAYLOAD_SIZE,
            overrun_cells=2 * ss_max,
        )

    def replace(self, **changes: int) -> CCParams:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return CCParams(**values)


# C tor's defaults for onion-service paths (VEGAS_*_ONION_DFLT).
_ONION_DEFAULTS = CCParams(
    alpha=3 * _OUTBUF_CELLS,
    beta=7 * _OUTBUF_CELLS,
    gamma=5 * _OUTBUF_CELLS,
    delta=9 * _OUTBUF_CELLS,
    ss_cwnd_cap=600,
)


# -- negotiation (prop 324 §10, C tor congestion_control_common.c) -------------------------


def cc_request_message() -> bytes:
    """The ntor-v3 client message asking the exit for congestion control: ``01 01 00``."""
    return encode_extensions([(EXT_CC_REQUEST, b"")])


def validate_sendme_inc(sendme_inc: int, consensus_inc: int) -> bool:
    """C tor accepts an exit's sendme_inc only within ±1 of the consensus value (never 0)."""
    return sendme_inc != 0 and consensus_inc - 1 <= sendme_inc <= consensus_inc + 1


def parse_cc_response(message: bytes, params: CCParams) -> int | None:
    """The exit's ntor-v3 server message: its sendme_inc, or None (no congestion control).

    Raises RemoteProtocolError - the circuit must not be used - on a malformed message, an
    unacceptable sendme_inc, or congestion control the consensus does not allow.
    """
    for ftype, data in decode_extensions(message):
        if ftype != EXT_CC_RESPONSE:
            continue  # unknown fields are ignored
        if len(data) < 1:
            raise RemoteProtocolError("congestion control response without sendme_inc")
        inc = data[0]
        if not validate_sendme_inc(inc, params.sendme_inc):
            raise RemoteProtocolError(
                f"exit's sendme_inc {inc} is too far from the consensus {params.sendme_inc}"
            )
        if not params.enabled:
            raise RemoteProtocolError("exit enabled congestion control we did not ask for")
        return inc
    return None


# -- TOR_VEGAS (congestion_control_vegas.c) ------------------------------------------------


def _n_count_ewma(curr: int, prev: int, n: int) -> int:
    return curr if prev == 0 else (2 * curr + (n - 1) * prev) // (n + 1)


def _percent_max_mix(a: int, b: int, pct_max: int) -> int:
    hi, lo = max(a, b), min(a, b)
    return pct_max * hi // 100 + (100 - pct_max) * lo // 100


class Vegas:
    """Our sending side of a congestion-controlled circuit hop.

    The circuit calls `note_sent` for every DATA cell it packages (with the number of
    those cells that the exit's next SENDMEs will acknowledge - one per ``sendme_inc``)
    and `on_sendme` for every valid circuit SENDME; `window` is how many DATA cells may
    go out now.
    """

    __slots__ = (
        "p",
        "sendme_inc",
        "cwnd",
        "inflight",
        "in_slow_start",
        "cwnd_full",
        "blocked_chan",
        "next_cc_event",
        "next_cwnd_event",
        "ewma_rtt_usec",
        "min_rtt_usec",
        "max_rtt_usec",
        "bdp",
        "clock_broken",
        "sendmes_received",
        "max_inflight",
        "_sent_times",
    )

    def __init__(self, params: CCParams, sendme_inc: int) -> None:
        self.p = params
        self.sendme_inc = sendme_inc
        self.cwnd = params.cwnd_init
        self.inflight = 0
        self.in_slow_start = True
        self.cwnd_full = False
        self.blocked_chan = False
        self.next_cc_event = self._update_rate()
        self.next_cwnd_event = 0
        self.ewma_rtt_usec = 0
        self.min_rtt_usec = 0
        self.max_rtt_usec = 0
        self.bdp = 0
        self.clock_broken = False
        self.sendmes_received = 0
        self.max_inflight = 0  # statistics: the most DATA cells ever in flight
        self._sent_times: deque[int] = deque()

    def __repr__(self) -> str:
        return (
            f"<Vegas cwnd={self.cwnd} inflight={self.inflight} ss={int(self.in_slow_start)} "
            f"rtt={self.ewma_rtt_usec}/{self.min_rtt_usec}us inc={self.sendme_inc}>"
        )

    # -- what the circuit asks -------------------------------------------------------

    @property
    def window(self) -> int:
        """DATA cells we may still send (0 while inflight ≥ cwnd)."""
        return max(0, self.cwnd - self.inflight)

    def note_sent(self, cells: int, sendme_cells: int, now_usec: int) -> None:
        """``cells`` DATA cells went out; ``sendme_cells`` of them will be SENDMEd.

        (C tor: ``congestion_control_note_cell_sent`` timestamps the cell after which
        the exit will send a SENDME; the RTT is measured against it.)
        """
        self.inflight += cells
        if self.inflight > self.max_inflight:
            self.max_inflight = self.inflight
        for _ in range(sendme_cells):
            self._sent_times.append(now_usec)

    def on_sendme(self, now_usec: int) -> None:
        """A valid circuit SENDME arrived: update RTT, BDP and cwnd; ack ``sendme_inc``."""
        self.sendmes_received += 1
        if self.next_cc_event:
            self.next_cc_event -= 1
        if self.next_cwnd_event:
            self.next_cwnd_event -= 1
        if not self._update_estimates(now_usec):
            self.inflight = max(0, self.inflight - self.sendme_inc)
            return
        p = self.p
        bdp = self.bdp
        queue_use = 0 if bdp > self.cwnd else self.cwnd - bdp
        if self.inflight + p.cwnd_full_gap * self.sendme_inc >= self.cwnd:
            self.cwnd_full = True
        elif 100 * self.inflight < p.cwnd_full_minpct * self.cwnd:
            self.cwnd_full = False

        if self.in_slow_start:
            if queue_use < p.gamma and not self.blocked_chan:
                if self.cwnd_full:
                    inc = self._ss_inc()
                    self.cwnd += inc
                    if inc * self._sendme_per_cwnd() <= p.cwnd_inc * p.cwnd_inc_rate:
                        self.in_slow_start = False
            else:
                # Congestion signal: set cwnd to the gamma threshold.
                self.cwnd = bdp + p.gamma
                self.in_slow_start = False
            if self.cwnd >= p.ss_cwnd_max:
                self.cwnd = p.ss_cwnd_max
                self.in_slow_start = False
        elif self.next_cc_event == 0:
            if queue_use > p.delta:
                self.cwnd = bdp + p.delta - p.cwnd_inc
            elif queue_use > p.beta or self.blocked_chan:
                self.cwnd -= p.cwnd_inc
            elif self.cwnd_full and queue_use < p.alpha:
                self.cwnd += p.cwnd_inc
            self.cwnd = max(self.cwnd, p.cwnd_min)

        if self.next_cwnd_event == 0:
            self.next_cwnd_event = self._sendme_per_cwnd()
        if self.next_cc_event == 0:
            self.next_cc_event = self._update_rate()
        if p.cwnd_full_per_cwnd:
            reset = self.next_cwnd_event == self._sendme_per_cwnd()
        else:
            reset = self.next_cc_event == self._update_rate()
        if reset:
            self.cwnd_full = False
        self.inflight = max(0, self.inflight - self.sendme_inc)
        # congestion_control_dispatch_cc_alg clamps to cc_cwnd_max.
        self.cwnd = min(self.cwnd, p.cwnd_max)

    # -- C tor's helpers ---------------------------------------------------------------

    def _update_rate(self) -> int:
        """CWND_UPDATE_RATE: SENDMEs between cwnd updates (1 in slow start)."""
        if self.in_slow_start:
            return 1
        per = self.p.cwnd_inc_rate * self.sendme_inc
        return (self.cwnd + per // 2) // per

    def _sendme_per_cwnd(self) -> int:
        return (self.cwnd + self.sendme_inc // 2) // self.sendme_inc

    def _ss_inc(self) -> int:
        """RFC 3742 limited slow start (rfc3742_ss_inc)."""
        p = self.p
        if self.cwnd <= p.ss_cwnd_cap:
            return (p.cwnd_inc_pct_ss * self.sendme_inc + 50) // 100
        return max((self.sendme_inc * p.ss_cwnd_cap + self.cwnd) // (2 * self.cwnd), 1)

    def _n_ewma_count(self) -> int:
        p = self.p
        if self.in_slow_start:
            n = p.ewma_ss
        else:
            n = min(self._update_rate() * p.ewma_cwnd_pct // 100, p.ewma_max)
        return max(n, 2)

    def _stalled_or_jumped(self, old: int, new: int) -> bool:
        if new == 0:
            self.clock_broken = True
            return True
        if self.in_slow_start or not self.ewma_rtt_usec:
            return False  # not enough data for the heuristics yet
        if old > new * 5000:
            return self.clock_broken
        if new > old * 5000:
            return True
        self.clock_broken = False
        return False

    def _update_estimates(self, now_usec: int) -> bool:
        """congestion_control_update_circuit_rtt + _bdp; False: do not run the algorithm."""
        sent = self._sent_times.popleft() if self._sent_times else now_usec
        rtt = now_usec - sent
        if self._stalled_or_jumped(self.ewma_rtt_usec, rtt):
            rtt = 0
        else:
            self.ewma_rtt_usec = _n_count_ewma(rtt, self.ewma_rtt_usec, self._n_ewma_count())
            self.max_rtt_usec = max(self.max_rtt_usec, rtt)
            if self.min_rtt_usec == 0:
                self.min_rtt_usec = self.ewma_rtt_usec
            elif self.cwnd == self.p.cwnd_min and not self.in_slow_start:
                # Out of a wedge: raise min RTT when cwnd sits at its minimum.
                self.min_rtt_usec = _percent_max_mix(
                    self.ewma_rtt_usec, self.min_rtt_usec, self.p.rtt_reset_pct
                )
            elif self.ewma_rtt_usec < self.min_rtt_usec:
                self.min_rtt_usec = self.ewma_rtt_usec
        if not self.ewma_rtt_usec:
            # The clock has been stalled for the whole circuit: BDP from cwnd.
            self.bdp = self.cwnd
            return self.blocked_chan
        self.bdp = self.cwnd * self.min_rtt_usec // self.ewma_rtt_usec
        return self.blocked_chan or rtt != 0


# -- per-stream XON/XOFF (prop 324 §4, congestion_control_flow.c) --------------------------


class StreamFlow:
    """XON/XOFF state of one stream on a congestion-controlled circuit.

    Receiving: data for a reader that paused is held here (`held`); past the XOFF limit
    (and C tor's grace period) we send XOFF, and XON once the reader has taken all of it.
    Sending: an XOFF from the exit stops packaging the stream until an XON.
    """

    __slots__ = (
        "held",
        "held_bytes",
        "held_since",
        "end",
        "after_xoff",
        "xoff_sent",
        "xoff_received",
        "grace_start_usec",
        "xoffs_sent",
        "xons_sent",
        "xoffs_received",
        "xons_received",
        "rate_kbps",
        "bytes_sent",
    )

    def __init__(self) -> None:
        # A list, not a deque: an empty deque is ~600 bytes, on every stream (1000 idle ones).
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.held_since = 0.0  # when `held` last went from empty to not (MaxMemInQueues)
        self.end: End | None = None  # the exit's END, waiting behind held data
        self.after_xoff = 0  # stream bytes received since our (outstanding) XOFF
        self.xoff_sent = False
        self.xoff_received = False
        self.grace_start_usec = 0
        self.xoffs_sent = 0
        self.xons_sent = 0
        self.xoffs_received = 0
        self.xons_received = 0
        self.rate_kbps = 0  # the exit's advisory drain rate from its last XON (0: none)
        self.bytes_sent = 0

    def hold(self, data: bytes) -> None:
        self.held.append(data)
        self.held_bytes += len(data)

    def take_held(self) -> bytes:
        data = b"".join(self.held)
        self.held.clear()
        self.held_bytes = 0
        return data

    def should_send_xoff(self, limit: int, now_usec: int) -> bool:
        """flow_control_decide_xoff: buffered over ``limit`` for the grace period."""
        if self.held_bytes <= limit:
            self.grace_start_usec = 0
            return False
        if self.xoff_sent:
            return False
        if self.grace_start_usec == 0:
            self.grace_start_usec = now_usec or 1
            return False
        if now_usec > self.grace_start_usec + XOFF_GRACE_PERIOD_USEC:
            self.grace_start_usec = 0
            return True
        return False


def encode_xoff() -> bytes:
    return b"\x00"  # version 0


def encode_xon(kbps_ewma: int = 0) -> bytes:
    return b"\x00" + min(max(kbps_ewma, 0), 0xFFFFFFFF).to_bytes(4, "big")


def decode_xon(data: bytes) -> int | None:
    """The advisory rate of a version-0 XON (kB/s, 0 = unlimited); None if malformed."""
    if len(data) < 5 or data[0] != 0:
        return None
    return int.from_bytes(data[1:5], "big")
