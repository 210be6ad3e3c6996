"""A stream owner that records everything the core reports about its `Stream` (the
events reach it through `fakes.relay.deliver_events`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from puretor.proto.relaymsg import Connected, End, ResolvedAnswer


@dataclass
class Ended:
    reason: int
    end: End | None
    message: str


@dataclass(eq=False)
class RecordingSink:
    """Records the events; ``on_data`` lets a test react to data as it comes (e.g. pause)."""

    connected: Connected | None = None
    data: bytearray = field(default_factory=bytearray)
    data_calls: int = 0
    resolved: list[ResolvedAnswer] | None = None
    ended: list[Ended] = field(default_factory=list)
    writable_calls: int = 0
    data_after_end: int = 0
    on_data: Callable[[bytes], None] | None = None
    on_writable: Callable[[], None] | None = None

    def stream_connected(self, connected: Connected) -> None:
        self.connected = connected

    def stream_data(self, data: bytes) -> None:
        if self.ended:
            self.data_after_end += 1
        self.data += data
        self.data_calls += 1
        if self.on_data is not None:
            self.on_data(data)

    def stream_resolved(self, answers: list[ResolvedAnswer]) -> None:
        self.resolved = answers

    def stream_ended(self, reason: int, end: End | None, message: str) -> None:
        self.ended.append(Ended(reason, end, message))

    def stream_writable(self) -> None:
        self.writable_calls += 1
        if self.on_writable is not None:
            self.on_writable()

    @property
    def end_reason(self) -> int | None:
        return self.ended[0].reason if self.ended else None
