"""One directory request over BEGIN_DIR (tor-spec §6.2.1, dir-spec §6).

The request is HTTP/1.0 over a Tor stream to a directory cache; the response
ends when the relay ends the stream.  Parsing and decompression belong to
`puretor.dir.http`; this module only moves the bytes, with a size cap and a
deadline so a slow or hostile cache cannot hold us.
"""

from __future__ import annotations

import asyncio

from puretor.aio.circuit import TunnelHandle
from puretor.errors import DirectoryError
from puretor.proto.relaymsg import Connected, End, EndReason, ResolvedAnswer

DEFAULT_MAX_RESPONSE = 16 * 1024 * 1024


class _Collector:
    """The owner of a directory stream: gathers the whole response."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.done: asyncio.Future[None] = loop.create_future()
        self.stream = None

    def stream_connected(self, connected: Connected) -> None:
        pass

    def stream_data(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            if not self.done.done():
                self.done.set_exception(
                    DirectoryError(f"directory response over {self.limit} bytes")
                )
            return
        self.chunks.append(data)

    def stream_resolved(self, answers: list[ResolvedAnswer]) -> None:
        pass

    def stream_ended(self, reason: int, end: End | None, message: str) -> None:
        if self.done.done():
            return
        if reason == EndReason.DONE or (end is not None and self.size):
            self.done.set_result(None)
        else:
            self.done.set_exception(
                DirectoryError(f"directory stream failed: {message} ({EndReason.describe(reason)})")
            )

    def stream_writable(self) -> None:
        pass


async def fetch_raw(
    handle: TunnelHandle,
    request: bytes,
    *,
    timeout: float = 60.0,
    max_size: int = DEFAULT_MAX_RESPONSE,
) -> bytes:
    """Send ``request`` on a new BEGIN_DIR stream and return every byte of the reply."""
    loop = asyncio.get_running_loop()
    sink = _Collector(loop, max_size)
    stream = handle.tunnel.open_dir_stream(sink)
    stream.write(request)
    handle.reactor.kick()
    try:
        await asyncio.wait_for(asyncio.shield(sink.done), timeout)
    except TimeoutError as exc:
        stream.abort()
        handle.reactor.kick()
        raise DirectoryError(f"directory request timed out after {timeout:.0f}s") from exc
    except DirectoryError:
        stream.abort()
        handle.reactor.kick()
        raise
    return b"".join(sink.chunks)
