"""The asyncio side of the sans-I/O core: after every call into it, act on what it says.

One `Reactor` per client.  Whatever calls into the core - a channel's socket read, a
timer, an application write - calls `run` (or `kick`) afterwards, which

* hands each queued event to the object it names: a channel's `ChannelProtocol`, a
  tunnel's `TunnelHandle`, a stream's `TorStreamTransport` (their ``owner``);
* flushes the channels that have cells to send;
* re-arms the one timer per channel that the core's deadlines ask for.

Application code (a protocol's ``data_received``) therefore runs after the core
call returned, never inside it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from puretor.aio.observe import Observer
from puretor.proto.channel import Channel
from puretor.proto.events import (
    ChannelClosed,
    ChannelOpened,
    Event,
    EventQueue,
    StreamConnected,
    StreamData,
    StreamEnded,
    StreamResolved,
    StreamWritable,
)
from puretor.proto.memory import QueueBudget

log = logging.getLogger("puretor.channel")


# Rounds of events and flushes in one turn of the event loop before it gets the CPU back.
MAX_ROUNDS_PER_RUN = 64


class Reactor:
    def __init__(self) -> None:
        self.events = EventQueue()
        self.flush_wanted: set[Channel] = set()
        self._timers: dict[Channel, tuple[float, asyncio.TimerHandle]] = {}
        self._kicked = False
        self._running = False
        # MaxMemInQueues: checked once per pass (O(1)); over it, `relieve_memory` runs.
        self.queue_budget = QueueBudget()
        self.relieve_memory: Callable[[], None] | None = None
        # What the client reports about itself (circuit/stream/channel events, traffic).
        self.observer = Observer()

    def kick(self) -> None:
        """Something called into the core from outside a reactor pass: run soon."""
        if not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        """Deliver events, flush output, arm timers - until the core has nothing to say."""
        self._kicked = False
        if self._running:
            return  # a handler called back into us: the loop below picks it up
        self._running = True
        try:
            for _round in range(MAX_ROUNDS_PER_RUN):
                if self.queue_budget.over_limit and self.relieve_memory is not None:
                    self.relieve_memory()  # closes tunnels: their events are delivered below
                if not (self.events or self.flush_wanted):
                    break
                for event in self.events.drain():
                    try:
                        _dispatch(event)
                    except Exception:  # one broken handler must not stop the others
                        log.exception("error while handling %s", type(event).__name__)
                for channel in list(self.flush_wanted):
                    self.flush_wanted.discard(channel)
                    protocol = channel.owner
                    if protocol is not None:
                        protocol.flush()
            else:
                # Handlers keep making work: let the event loop have a turn (sockets,
                # signals, timers) and come back, rather than starve it.
                self.kick()
        finally:
            self._running = False
        self._arm_timers()

    # -- timers --------------------------------------------------------------------------

    def watch(self, channel: Channel) -> None:
        """Keep ``channel``'s deadline timer (the core's `next_deadline`) armed."""
        self._timers.setdefault(channel, (0.0, _NO_TIMER))

    def forget(self, channel: Channel) -> None:
        entry = self._timers.pop(channel, None)
        if entry is not None and entry[1] is not _NO_TIMER:
            entry[1].cancel()

    def _arm_timers(self) -> None:
        if not self._timers:
            return
        loop = asyncio.get_running_loop()
        for channel, (when, handle) in list(self._timers.items()):
            deadline = channel.next_deadline()
            if deadline == when and handle is not _NO_TIMER:
                continue
            if handle is not _NO_TIMER:
                handle.cancel()
            if deadline is None:
                self._timers[channel] = (0.0, _NO_TIMER)
                continue
            delay = max(0.0, deadline - time.time())
            self._timers[channel] = (deadline, loop.call_later(delay, self._fire, channel))

    def _fire(self, channel: Channel) -> None:
        self._timers[channel] = (0.0, _NO_TIMER)
        channel.handle_timer(time.time())
        self.run()


class _NoTimer:
    def cancel(self) -> None:
        pass


_NO_TIMER: Any = _NoTimer()


def _dispatch(event: Event) -> None:
    """Hand ``event`` to the owner of what it names."""
    if isinstance(event, StreamData):
        owner = event.stream.owner
        if owner is not None:
            owner.stream_data(event.data)
    elif isinstance(event, StreamEnded):
        owner = event.stream.owner
        if owner is not None:
            owner.stream_ended(event.reason, event.end, event.message)
    elif isinstance(event, StreamConnected):
        owner = event.stream.owner
        if owner is not None:
            owner.stream_connected(event.connected)
    elif isinstance(event, StreamResolved):
        owner = event.stream.owner
        if owner is not None:
            owner.stream_resolved(event.answers)
    elif isinstance(event, StreamWritable):
        owner = event.stream.owner
        if owner is not None:
            owner.stream_writable()
    elif isinstance(event, ChannelOpened | ChannelClosed):
        owner = event.channel.owner
        if owner is not None:
            owner.handle_event(event)
    else:
        handle = getattr(event.tunnel.owner, "handle_event", None)
        if handle is not None:
            handle(event)
