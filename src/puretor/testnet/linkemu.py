"""A userspace link emulator: delaying TCP forwarders in front of the relays' ORPorts.

This machine's kernel has no ``netem``, so latency is added in userspace.  Each relay
advertises an ORPort that a `LinkEmulator` listens on and really listens on a private
one (C tor's ``ORPort … NoListen`` / ``ORPort … NoAdvertise``).  Every connection made
to the advertised port - by a client, or by another relay extending a circuit - is
forwarded to the private one, and the bytes of each direction are held for the
relay's one-way delay before they go on.  A circuit through guard, middle and exit
so gets a round trip of 2 × (d_guard + d_middle + d_exit), as on the live network
where each hop adds its own distance.

Delaying keeps TCP's own flow control: a direction stops reading from its source when
more than `MAX_IN_FLIGHT` bytes are held or queued towards the sink, so memory stays
bounded and a slow sink slows the sender, as a real path would.

Faults for the "bad relay" of the realistic profile: ``stall_after`` stops forwarding
(both ways, connections stay open) that many seconds after each connection starts.

The emulator keeps its own CPU cost measurable: `LinkStats` counts bytes and chunks, and
the process's CPU time is in /proc like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import selectors
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_IN_FLIGHT = 4 * 1024 * 1024  # per direction: above a 100 MB/s x 40 ms bandwidth-delay product
RESUME_BELOW = MAX_IN_FLIGHT // 2
# Wake-ups are what the emulator's CPU goes on (a context switch and a turn of asyncio's loop
# each), so it has few: deliveries happen on a TICK grid, shared by every link, and when a
# socket becomes readable the loop first waits COALESCE for more to arrive (`_CoalescingSelector`).
# Each direction's delay is shortened by the average lateness that adds, so that a delivery is
# on time on average (within about a millisecond either way).
TICK = 0.001
COALESCE = 0.001
LATENESS = COALESCE + TICK / 2  # a sparse chunk's average: read COALESCE late, then the grid


@dataclass(frozen=True)
class Link:
    """One delayed listener: ``listen`` is forwarded to ``target`` after ``delay`` seconds."""

    name: str
    listen: tuple[str, int]
    target: tuple[str, int]
    delay: float  # one way, applied in each direction
    stall_after: float | None = None  # a bad relay: forwards nothing after this long
    # Connect onwards from the accepted connection's own source address (which must be local),
    # so the target sees who connected (the targets log exits' addresses); otherwise the
    # kernel picks the source (127.0.0.1 towards 127/8).
    keep_source: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": list(self.listen),
            "target": list(self.target),
            "delay": self.delay,
            "stall_after": self.stall_after,
            "keep_source": self.keep_source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Link:
        return cls(
            data["name"],
            (data["listen"][0], int(data["listen"][1])),
            (data["target"][0], int(data["target"][1])),
            float(data["delay"]),
            data.get("stall_after"),
            bool(data.get("keep_source", False)),
        )


@dataclass
class LinkStats:
    connections: int = 0
    bytes: int = 0
    chunks: int = 0
    paused: int = 0  # times a direction stopped reading because the sink lagged

    def to_json(self) -> dict[str, int]:
        return {
            "connections": self.connections,
            "bytes": self.bytes,
            "chunks": self.chunks,
            "paused": self.paused,
        }


_EOF = b""  # queued after the last chunk: the source's EOF
_LOST = None  # queued after the last chunk: the source went away


def _on_grid(due: float) -> float:
    """The tick a chunk due at `due` goes out at: the last one before it (the flush sends
    what comes due within a tick)."""
    return math.floor(due / TICK) * TICK


class _CoalescingSelector(selectors.DefaultSelector):
    """Once something is ready, wait COALESCE and take everything ready by then: one wake-up
    for many chunks when busy (an idle emulator still sleeps as long as asyncio asks)."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(timeout)
        if ready and (timeout is None or timeout > 0):
            time.sleep(COALESCE if timeout is None else min(COALESCE, timeout))
            ready = super().select(0)  # level-triggered: what was ready still is
        return ready


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The emulator's event loop (`serve` runs in it)."""
    return asyncio.SelectorEventLoop(_CoalescingSelector())


class _Direction:
    """Bytes from one transport to another, each chunk held for ``delay`` seconds.

    Chunks wait in a queue in arrival order, behind one timer for the oldest: whatever has
    come due when it fires goes to the sink in one write (so a busy link costs one timer and
    one send per batch, not per chunk), and the source's EOF keeps its place behind them.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        delay: float,
        stats: LinkStats,
        deadline: float | None,
    ) -> None:
        self.loop = loop
        self.delay = max(0.0, delay - LATENESS) if delay else 0.0
        self.stats = stats
        self.deadline = deadline  # loop time after which nothing is forwarded (a stall)
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.in_flight = 0
        self.paused = False
        self.eof_pending = False

    def _enqueue(self, now: float, item: bytes | None) -> None:
        due = now + self.delay
        self.queue.append((due, item))
        if self.timer is None:
            self.timer = self.loop.call_at(_on_grid(due), self._flush)

    def feed(self, data: bytes) -> None:
        now = self.loop.time()
        if self.deadline is not None and now >= self.deadline:
            return  # stalled: swallowed, as by a relay that stopped answering
        self.in_flight += len(data)
        self.stats.bytes += len(data)
        self.stats.chunks += 1
        self._enqueue(now, data)
        if self.in_flight > MAX_IN_FLIGHT and not self.paused and self.source is not None:
            self.paused = True
            self.stats.paused += 1
            self.source.pause_reading()

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time() + TICK  # what comes due before the next tick goes now
        batch: list[bytes] = []
        ended = lost = False
        queue = self.queue
        while queue and queue[0][0] <= now:
            item = queue.popleft()[1]
            if not item:  # _EOF or _LOST: nothing comes after it
                ended, lost = True, item is _LOST
                break
            batch.append(item)
        if batch:
            size = sum(map(len, batch))
            self.in_flight -= size
            sink = self.sink
            if sink is not None and not sink.is_closing():
                sink.write(batch[0] if len(batch) == 1 else b"".join(batch))
        if ended:
            self._finish(lost=lost)
        elif queue:
            self.timer = self.loop.call_at(_on_grid(queue[0][0]), self._flush)
        self._maybe_resume()

    def sink_drained(self) -> None:
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if not self.paused or self.source is None or self.source.is_closing():
            return
        buffered = self.sink.get_write_buffer_size() if self.sink is not None else 0
        if self.in_flight + buffered < RESUME_BELOW:
            self.paused = False
            self.source.resume_reading()

    def end(self, *, lost: bool) -> None:
        """The source sent EOF (``lost``: or went away): pass it on once the held bytes are
        out - a half-close for an EOF, so the other direction goes on."""
        if self.eof_pending:
            return
        self.eof_pending = True
        self._enqueue(self.loop.time(), _LOST if lost else _EOF)

    def _finish(self, *, lost: bool) -> None:
        sink = self.sink
        if sink is None or sink.is_closing():
            return
        if lost or not sink.can_write_eof():
            sink.close()
            return
        try:
            sink.write_eof()
        except OSError:  # the sink's peer is gone already (ENOTCONN)
            sink.abort()


class _Side(asyncio.Protocol):
    """One end of a forwarded connection; ``outbound`` carries what it receives."""

    def __init__(self, outbound: _Direction, inbound: _Direction) -> None:
        self.outbound = outbound  # bytes we read go this way
        self.inbound = inbound  # bytes for us arrive this way
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=MAX_IN_FLIGHT // 4)
        self.outbound.source = transport
        self.inbound.sink = transport

    def data_received(self, data: bytes) -> None:
        self.outbound.feed(data)

    def eof_received(self) -> bool:
        self.outbound.end(lost=False)
        # Keep our side open while the other direction may still carry data.
        return not self.inbound.eof_pending

    def connection_lost(self, exc: Exception | None) -> None:
        self.outbound.end(lost=True)

    def pause_writing(self) -> None:
        pass  # the direction checks the sink's buffer itself

    def resume_writing(self) -> None:
        self.inbound.sink_drained()


class _ClientSide(_Side):
    """The accepted end: connects onwards first, reading nothing until that is done."""

    def __init__(
        self,
        outbound: _Direction,
        inbound: _Direction,
        relay: _Side,
        target: tuple[str, int],
        keep_source: bool = False,
    ) -> None:
        super().__init__(outbound, inbound)
        self.relay = relay
        self.target = target
        self.keep_source = keep_source

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()  # until there is somewhere to send what it says
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        source = None
        if self.keep_source:
            peer = self.transport.get_extra_info("peername")
            source = (peer[0], 0) if peer else None
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: self.relay, *self.target, local_addr=source
            )
        except OSError:
            self.transport.abort()
            return
        if not self.transport.is_closing():
            self.transport.resume_reading()


class LinkEmulator:
    """Forwarders for a set of `Link` s in one asyncio loop."""

    def __init__(self, links: Sequence[Link]) -> None:
        self.links = list(links)
        self.stats = {link.name: LinkStats() for link in self.links}
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for link in self.links:
            server = await loop.create_server(
                lambda link=link: self._accept(link),  # type: ignore[misc]
                link.listen[0],
                link.listen[1],
                reuse_address=True,
                backlog=1024,
            )
            self._servers.append(server)

    def _accept(self, link: Link) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        stats = self.stats[link.name]
        stats.connections += 1
        deadline = loop.time() + link.stall_after if link.stall_after is not None else None
        up = _Direction(loop, link.delay, stats, deadline)  # client -> relay
        down = _Direction(loop, link.delay, stats, deadline)  # relay -> client
        return _ClientSide(up, down, _Side(down, up), link.target, link.keep_source)

    def close(self) -> None:
        for server in self._servers:
            server.close()

    def stats_json(self) -> dict[str, Any]:
        return {name: st.to_json() for name, st in self.stats.items()}


def serve(config: dict[str, Any]) -> None:
    """The emulator daemon: ``python -m puretor.testnet serve-links --config FILE``.

    Writes ``ready_file`` once every listener is up, and ``stats_file`` (bytes and chunks
    per link) every few seconds and at exit; runs until SIGTERM/SIGINT.
    """
    links = [Link.from_json(item) for item in config["links"]]

    async def main() -> None:
        emu = LinkEmulator(links)
        await emu.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stats_path = Path(config["stats_file"]) if config.get("stats_file") else None
        Path(config["ready_file"]).write_text(json.dumps({"links": len(links)}))

        def write_stats() -> None:
            if stats_path is not None:
                tmp = stats_path.with_suffix(".tmp")
                cpu = time.process_time()
                tmp.write_text(json.dumps({"cpu_seconds": cpu, "links": emu.stats_json()}))
                tmp.replace(stats_path)

        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5.0)
            write_stats()
        emu.close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())


@dataclass(frozen=True)
class LinkPlan:
    """The emulator's configuration as the network launcher writes it."""

    links: tuple[Link, ...] = field(default_factory=tuple)

    def config(self, workdir: Path) -> dict[str, Any]:
        return {
            "links": [link.to_json() for link in self.links],
            "ready_file": str(workdir / "links.ready"),
            "stats_file": str(workdir / "links.stats.json"),
        }
