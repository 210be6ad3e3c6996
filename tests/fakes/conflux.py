"""The exit end of conflux (prop 329) for the in-memory fake relays.

`FakeConfluxExit` plays the one exit that several `FakeRelay` guards' circuits end
at: it answers CONFLUX_LINK with LINKED (after the checks C tor makes), puts the
client's multiplexed cells back in order across legs before the fake relay acts on
them, shares one table of edge streams between the legs of a set, and sends the
exit's own multiplexed cells (CONNECTED, DATA, END, ...) on a leg chosen by a
pluggable scheduler, with SWITCH cells and congestion windows per leg, as C tor's
exit does.  Which bytes reach the client first is up to the test: every leg is a
separate link connection, so pumping them in different orders reorders the legs.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from puretor.proto.conflux import MULTIPLEXED, LinkPayload
from puretor.proto.relaymsg import RelayCommand

LINK, LINKED, LINKED_ACK, SWITCH = 19, 20, 21, 22
_DATA = int(RelayCommand.DATA)


@dataclass(eq=False)
class FakeLeg:
    fake: Any  # FakeRelay
    circ: Any  # FakeCircuit
    nonce: bytes
    link: LinkPayload
    acked: bool = False  # LINKED_ACK received
    last_seq_recv: int = 0
    last_seq_sent: int = 0
    cells_sent: int = 0  # multiplexed cells we sent on this leg
    switches_sent: int = 0

    @property
    def index(self) -> int:
        return len(self.circ.hops) - 1

    @property
    def hop(self) -> Any:
        return self.circ.hops[-1]

    def has_room(self) -> bool:
        hop = self.hop
        return not self.circ.closed and hop.inflight < hop.cwnd


@dataclass(eq=False)
class FakeSet:
    nonce: bytes
    legs: list[FakeLeg] = field(default_factory=list)
    delivered: int = 0  # client -> exit sequencing
    held: list[tuple[int, int, FakeLeg, int, int, bytes]] = field(default_factory=list)
    current: FakeLeg | None = None
    counter: int = 0


# A scheduler picks the leg for the next DATA cell among those with room.
Scheduler = Callable[[list[FakeLeg]], FakeLeg]


def first_with_room(legs: list[FakeLeg]) -> FakeLeg:
    """Fill the first leg's window, then the next (LowRTT with equal RTTs)."""
    return legs[0]


class FakeConfluxExit:
    def __init__(
        self,
        *,
        scheduler: Scheduler = first_with_room,
        linked_ux: int = 1,  # C tor exits ask clients for MIN_LATENCY
        answer_link: bool = True,
        linked_nonce: bytes | None = None,  # misbehaviour: answer with another nonce
        report_sent: int = 0,  # misbehaviour: claim to have sent this much already
    ) -> None:
        self.scheduler = scheduler
        self.linked_ux = linked_ux
        self.answer_link = answer_link
        self.linked_nonce = linked_nonce
        self.report_sent = report_sent
        self.sets: dict[bytes, FakeSet] = {}
        self._legs: dict[tuple[int, int], FakeLeg] = {}
        self.violations: list[str] = []
        self.links_received = 0

    def attach(self, *fakes: Any) -> None:
        for fake in fakes:
            fake.conflux = self

    def leg(self, fake: Any, circ: Any) -> FakeLeg | None:
        return self._legs.get((id(fake), circ.circ_id))

    def set_of(self, fake: Any, circ: Any) -> FakeSet | None:
        leg = self.leg(fake, circ)
        return None if leg is None else self.sets[leg.nonce]

    # -- hooks called by FakeRelay ---------------------------------------------------------

    def intercept(
        self, fake: Any, circ: Any, index: int, command: int, stream_id: int, data: bytes
    ) -> bool:
        """Handle conflux cells and sequence multiplexed ones; True if consumed."""
        last = index == len(circ.hops) - 1
        if command in (LINK, LINKED, LINKED_ACK, SWITCH):
            if not last:
                self._violate(fake, circ, index, f"conflux command {command} at a middle hop")
                return True
            getattr(self, f"_on_{('link', 'linked', 'linked_ack', 'switch')[command - LINK]}")(
                fake, circ, data
            )
            return True
        leg = self.leg(fake, circ)
        if leg is None or not last or command not in MULTIPLEXED:
            return False
        cset = self.sets[leg.nonce]
        if command == _DATA and not fake.count_circuit_data(circ, index):
            return True  # circuit windows count on arrival, whatever the order
        leg.last_seq_recv += 1
        seq = leg.last_seq_recv
        if seq <= cset.delivered:
            self._violate(fake, circ, index, f"sequence number {seq} went backwards")
            return True
        cset.counter += 1
        heapq.heappush(cset.held, (seq, cset.counter, leg, command, stream_id, data))
        while cset.held and cset.held[0][0] == cset.delivered + 1:
            _seq, _n, hleg, hcmd, hsid, hdata = heapq.heappop(cset.held)
            cset.delivered += 1
            if hleg.circ.closed:
                continue
            if hcmd == _DATA:
                hleg.fake.stream_data(hleg.circ, hleg.index, hsid, hdata)
                if not hleg.circ.closed:
                    hleg.fake._pump(hleg.circ)
            else:
                hleg.fake.dispatch(hleg.circ, hleg.index, hcmd, hsid, hdata, False)
        return True

    def routes(self, fake: Any, circ: Any, index: int, command: int) -> bool:
        leg = self.leg(fake, circ)
        return leg is not None and index == leg.index and command in MULTIPLEXED

    def send(self, fake: Any, circ: Any, command: int, stream_id: int, data: bytes) -> bytes:
        """A multiplexed cell from the exit: on the current leg (non-DATA), or wherever
        the scheduler says (DATA, from `pump_for`)."""
        leg = self.leg(fake, circ)
        assert leg is not None
        cset = self.sets[leg.nonce]
        target = cset.current or leg
        return self._send_on(cset, target, command, stream_id, data)

    def pump_for(self, fake: Any, circ: Any) -> bool:
        """Package stream data of ``circ``'s set over its legs; False if not conflux."""
        leg = self.leg(fake, circ)
        if leg is None:
            return False
        cset = self.sets[leg.nonce]
        ready = leg.hop.ready  # shared by the legs of the set
        while ready:
            stream = ready[0]
            if stream.closed or not stream.outgoing:
                ready.popleft()
                fake._finish_stream(circ, leg.index, stream)
                continue
            if stream.xoff_from_client and not fake.config.cc_ignore_xoff:
                ready.popleft()
                continue
            room = [x for x in cset.legs if x.acked and x.has_room()]
            if not room:
                break
            target = self.scheduler(room)
            chunk = bytes(stream.outgoing[:498])
            del stream.outgoing[:498]
            digest = self._send_on(cset, target, _DATA, stream.stream_id, chunk)
            stream.data_cells_sent += 1
            hop = target.hop
            hop.data_cells_sent += 1
            hop.inflight += 1
            if hop.inflight % hop.sendme_inc == 0:
                hop.sent_digests.append(digest)
            ready.rotate(-1)
        return True

    # -- the handshake -------------------------------------------------------------------

    def _on_link(self, fake: Any, circ: Any, data: bytes) -> None:
        self.links_received += 1
        if not circ.hops[-1].cc:
            self._violate(fake, circ, len(circ.hops) - 1, "LINK without congestion control")
            return
        if self.leg(fake, circ) is not None:
            self._violate(fake, circ, len(circ.hops) - 1, "second LINK on a leg")
            return
        try:
            link = LinkPayload.decode(data)
        except Exception as exc:
            self._violate(fake, circ, len(circ.hops) - 1, f"bad LINK: {exc}")
            return
        cset = self.sets.setdefault(link.nonce, FakeSet(link.nonce))
        leg = FakeLeg(fake, circ, link.nonce, link)
        if cset.legs:
            # One stream table for the set (C tor copies the stream list pointers).
            first = cset.legs[0].hop
            hop = leg.hop
            hop.streams = first.streams
            hop.all_streams = first.all_streams
            hop.ended_streams = first.ended_streams
            hop.ready = first.ready
        cset.legs.append(leg)
        self._legs[(id(fake), circ.circ_id)] = leg
        if not self.answer_link:
            return
        answer = LinkPayload(
            self.linked_nonce or link.nonce,
            self.report_sent,
            cset.delivered,
            self.linked_ux,
        )
        fake.send_relay_here(circ, leg.index, LINKED, 0, answer.encode())

    def _on_linked(self, fake: Any, circ: Any, data: bytes) -> None:
        self._violate(fake, circ, len(circ.hops) - 1, "LINKED from a client")

    def _on_linked_ack(self, fake: Any, circ: Any, data: bytes) -> None:
        leg = self.leg(fake, circ)
        if leg is None or leg.acked:
            self._violate(fake, circ, len(circ.hops) - 1, "unexpected LINKED_ACK")
            return
        leg.acked = True

    def _on_switch(self, fake: Any, circ: Any, data: bytes) -> None:
        leg = self.leg(fake, circ)
        if leg is None or len(data) < 4:
            self._violate(fake, circ, len(circ.hops) - 1, "bad SWITCH")
            return
        leg.last_seq_recv += struct.unpack(">I", data[:4])[0]

    # -- sending -------------------------------------------------------------------------

    def _send_on(
        self, cset: FakeSet, leg: FakeLeg, command: int, stream_id: int, data: bytes
    ) -> bytes:
        current = cset.current
        if current is not None and current is not leg:
            relative = current.last_seq_sent - leg.last_seq_sent
            leg.last_seq_sent = current.last_seq_sent
            # C tor sends SWITCH with a full-size (zero-padded) body.
            leg.fake.send_relay_here(
                leg.circ, leg.index, SWITCH, 0, struct.pack(">I", relative) + bytes(494)
            )
            leg.switches_sent += 1
        cset.current = leg
        leg.last_seq_sent += 1
        leg.cells_sent += 1
        digest: bytes = leg.fake.send_relay_here(leg.circ, leg.index, command, stream_id, data)
        return digest

    def _violate(self, fake: Any, circ: Any, index: int, message: str) -> None:
        self.violations.append(message)
        fake.close_circuit(circ, index, f"conflux: {message}")
