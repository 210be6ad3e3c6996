"""One hop of a circuit: its relay crypto, windows, SENDMEs and congestion control.

tor-spec §7.3-7.4 (circuit windows and SENDMEs), proposal 289 (authenticated SENDMEs:
a SENDME quotes the running digest of the cell that triggered it) and proposal 324
(congestion control: SENDMEs every ``sendme_inc`` cells both ways, and Vegas instead
of a fixed package window for what we send).  Each hop of a circuit has its own; only
the last one normally carries stream data.
"""

from __future__ import annotations

from collections import deque

from puretor.errors import RemoteProtocolError
from puretor.proto.congestion import Vegas
from puretor.proto.relaycrypto import HopCrypto

CIRCWINDOW_START = 1000
CIRCWINDOW_INCREMENT = 100


class Hop:
    """The per-hop state of a circuit.

    Without congestion control ``package_window`` is the fixed window of DATA cells we
    may still send; with it, ``package_window`` only counts cells modulo ``sendme_inc``
    (it says which cell's digest the next SENDME will quote) and ``cc`` decides how many
    may go.  ``deliver_window`` counts the other way, as C tor does in both cases.
    """

    __slots__ = (
        "crypto",
        "cc",
        "circwindow",
        "package_window",
        "deliver_window",
        "sendme_inc",
        "sendme_at",
        "expected_sendmes",
    )

    def __init__(
        self,
        crypto: HopCrypto,
        *,
        circwindow: int = CIRCWINDOW_START,
        cc: Vegas | None = None,
    ) -> None:
        self.crypto = crypto
        self.cc = cc
        self.circwindow = circwindow
        if cc is None:
            self.package_window = circwindow
            self.deliver_window = circwindow
            self.sendme_inc = CIRCWINDOW_INCREMENT
            self.sendme_at = circwindow - CIRCWINDOW_INCREMENT
        else:
            # C tor keeps counting the deliver window from CIRCWINDOW_START and sends a
            # SENDME each time it is sendme_inc below; packaging has no fixed window.
            self.package_window = 0
            self.deliver_window = CIRCWINDOW_START
            self.sendme_inc = cc.sendme_inc
            self.sendme_at = CIRCWINDOW_START - cc.sendme_inc
        # Digests of cells we sent that the relay's next SENDMEs must quote, in order.
        self.expected_sendmes: deque[bytes] = deque()

    # -- what arrives ------------------------------------------------------------------

    def take_data_cell(self) -> bool:
        """Count one DATA cell from this hop; True when it triggers a SENDME (which
        quotes this cell's digest)."""
        window = self.deliver_window - 1
        if window < 0:
            raise RemoteProtocolError("relay overran the circuit deliver window")
        due = window <= self.sendme_at
        self.deliver_window = window + self.sendme_inc if due else window
        return due

    def take_data_cells(self, first: int, cells: int) -> list[int]:
        """Count the cells ``first .. first + cells - 1`` of a run at once: the indexes of
        those that trigger a SENDME (each quotes its own cell's digest)."""
        window, at, inc = self.deliver_window, self.sendme_at, self.sendme_inc
        due: list[int] = []
        j, end = first, first + cells
        while j + max(window - at, 1) <= end:
            j += max(window - at, 1)  # cell j - 1 takes the window down to the mark
            window = at + inc
            due.append(j - 1)
        window -= end - j
        if window < 0:
            raise RemoteProtocolError("relay overran the circuit deliver window")
        self.deliver_window = window
        return due

    def sendme_received(
        self, version: int, digest: bytes | None, accept_min: int, now_usec: int
    ) -> None:
        """A circuit SENDME from this hop (proposal 289 checks; Vegas with cc)."""
        if version < accept_min:
            raise RemoteProtocolError(f"SENDME version {version} below the accepted minimum")
        if not self.expected_sendmes:
            raise RemoteProtocolError("unexpected circuit SENDME")
        want = self.expected_sendmes.popleft()
        if version >= 1 and digest != want:
            raise RemoteProtocolError("circuit SENDME digest does not match")
        if self.cc is not None:
            self.cc.on_sendme(now_usec)
            return
        window = self.package_window + CIRCWINDOW_INCREMENT
        if window > self.circwindow:
            raise RemoteProtocolError("circuit SENDME overflowed the package window")
        self.package_window = window

    # -- what we send ------------------------------------------------------------------

    @property
    def send_window(self) -> int:
        """DATA cells that may go to this hop now."""
        cc = self.cc
        return self.package_window if cc is None else cc.cwnd - cc.inflight

    def note_data_cell(self, digest: bytes) -> bool:
        """One DATA cell sealed for this hop with running ``digest``: remember the digests
        SENDMEs will quote.  True when this cell is one of them."""
        count = self.package_window - 1
        recorded = count % self.sendme_inc == 0
        if recorded:
            self.expected_sendmes.append(digest[:20])
        self.package_window = count % self.sendme_inc if self.cc is not None else count
        return recorded

    def first_recorded(self) -> int:
        """Which of the next DATA cells (0 = the next one) is the first whose digest a
        SENDME will quote; every `sendme_inc`-th after it is one too.  For the batch
        sealing loop, which records those digests itself, then calls `advance`."""
        return (self.package_window - 1) % self.sendme_inc

    def advance(self, cells: int) -> None:
        """``cells`` DATA cells were sealed (their digests recorded as `first_recorded`
        said): what `note_data_cell` does to the window, for a whole batch."""
        window = self.package_window - cells
        self.package_window = window % self.sendme_inc if self.cc is not None else window

    def note_data_cells_sent(self, cells: int, recorded: int, now_usec: int) -> None:
        """Congestion control's accounting for ``cells`` DATA cells just sent, ``recorded``
        of which will be SENDMEd."""
        if self.cc is not None:
            self.cc.note_sent(cells, recorded, now_usec)
