"""A blocking facade: `puretor.sync.TorClient` runs the asyncio client on a thread of its own.

    from puretor.sync import TorClient

    with TorClient(config) as tor:                          # starts the thread, bootstraps
        print(tor.get("http://example.com/").text)          # one request (httpx)
        with tor.httpx_client() as http:                    # an httpx.Client: pooled, isolated
            http.get("https://example.com/")
        with tor.open_connection("example.com", 80) as sock:  # a blocking, socket-like stream
            sock.sendall(b"GET / HTTP/1.0\\r\\nHost: example.com\\r\\n\\r\\n")
            print(sock.recv(4096))

Each call hands a coroutine to the event loop thread and waits for its result, so the
API, the errors (the `puretor.errors` tree, `ssl.SSLError`, httpx's exceptions) and the
isolation rules are those of the asyncio `puretor.TorClient`.

Limits:

* Every call blocks its thread.  Many threads may call at once; their calls run
  concurrently on the one loop thread (the Tor work itself is single-threaded).
* Do not call the client from its own loop thread - from a bootstrap listener, or a
  coroutine passed to `TorClient.run` - it would wait for itself; that raises
  `RuntimeError` instead.
* `TorSocket` is socket-like, not a socket: it has no ``fileno()``, so ``select``,
  ``ssl.wrap_socket`` and libraries that need a real socket cannot use it (use
  ``ssl=`` for TLS).  There is no half-close (``shutdown``): a Tor stream ends both ways.
* httpx: request bodies that are not plain bytes are read from their iterator in a worker
  thread; response bodies are streamed one chunk (up to 64 KiB) per loop round trip.
* Anything not wrapped is reachable through `TorClient.aio` (the asyncio client) and
  `TorClient.run` (run a coroutine on the loop).
* Call `close` (or use ``with``): the loop thread is a daemon thread, so a forgotten
  client does not keep the process alive, but then circuits are not closed cleanly and
  guard state may not be saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import ssl as _ssl
import threading
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
)
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from puretor.client import STREAM_TOTAL_TIMEOUT, IsolationToken
from puretor.client import OnionService as AsyncOnionService
from puretor.client import TorClient as AsyncTorClient
from puretor.config import TorConfig
from puretor.dir.state import BootstrapStatus
from puretor.errors import ClientClosedError

if TYPE_CHECKING:
    import httpx

__all__ = ["OnionService", "TorClient", "SyncTorClient", "TorSocket"]

T = TypeVar("T")


class TorClient:
    """A blocking Tor client: the asyncio `puretor.TorClient` on a background event loop.

    Creating one starts its loop thread (nothing touches the network yet);
    ``with TorClient(config) as tor:`` bootstraps, and leaving the block closes the
    client and stops the thread (or call `bootstrap` and `close` yourself).  ``config``
    and ``bootstrap_timeout`` are those of the asyncio client.  Thread-safe.
    """

    def __init__(
        self, config: TorConfig | None = None, *, bootstrap_timeout: float | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name="puretor-sync-loop", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncTorClient:
            return AsyncTorClient(config, bootstrap_timeout=bootstrap_timeout)

        self._aio = self.run(make())

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    # -- running things on the loop ------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the client's event loop and wait for its result.

        ``timeout`` (seconds) cancels it on the loop and raises `TimeoutError`.  The
        coroutine's own exceptions propagate unchanged.  Raises `ClientClosedError` once
        the client is closed, and `RuntimeError` when called from the loop thread itself.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "puretor.sync.TorClient called from its own event loop thread (a bootstrap "
                "listener?); use the asyncio client (.aio) there"
            )
        with self._lock:
            if self._closed:
                coro.close()
                raise ClientClosedError("the TorClient is closed")
            bounded = coro if timeout is None else asyncio.wait_for(coro, timeout)
            fut = asyncio.run_coroutine_threadsafe(bounded, self._loop)
        try:
            return fut.result()
        except BaseException as exc:
            if not fut.done():  # KeyboardInterrupt or the like in this thread
                fut.cancel()
            if fut.cancelled() and self._closed and not isinstance(exc, ClientClosedError):
                raise ClientClosedError("the TorClient was closed during the call") from None
            raise

    def _call(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return self.run(call())

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> TorClient:
        try:
            self.bootstrap()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bootstrap(self, timeout: float | None = None) -> None:
        """Bootstrap and wait for it (see `puretor.TorClient.bootstrap`)."""
        self.run(self._aio.bootstrap(timeout))

    @property
    def bootstrap_status(self) -> BootstrapStatus:
        """The latest bootstrap progress (``.percent``, ``.tag``, ``.summary``)."""
        return self._aio.bootstrap_status

    def add_bootstrap_listener(self, callback: Callable[[BootstrapStatus], None]) -> None:
        """Call ``callback(status)`` on each progress step - on the loop thread, so it must
        be quick and must not call this client."""
        self._call(lambda: self._aio.add_bootstrap_listener(callback))

    def close(self) -> None:
        """Close the asyncio client, stop the loop thread; idempotent.

        Calls still running in other threads fail with `ClientClosedError`.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("puretor.sync.TorClient.close() called from its loop thread")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            if not self._thread.is_alive():
                self._loop.close()

    async def _shutdown(self) -> None:
        try:
            await self._aio.aclose()
        finally:
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            await self._loop.shutdown_asyncgens()

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    @property
    def aio(self) -> AsyncTorClient:
        """The asyncio client; use it only from `loop` (e.g. in coroutines given to `run`)."""
        return self._aio

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the client runs on (in its own thread)."""
        return self._loop

    @property
    def config(self) -> TorConfig:
        return self._aio.config

    # -- the Tor API, blocking -------------------------------------------------------------

    def open_connection(
        self,
        host: str,
        port: int,
        *,
        isolation: Hashable | None = None,
        ssl: _ssl.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> TorSocket:
        """A blocking, socket-like stream to ``host:port`` through Tor.

        Like ``socket.create_connection``: ``timeout`` bounds opening the stream (default
        120 s) and becomes the socket's timeout (default None: blocking).  ``ssl`` and
        ``server_hostname`` run TLS as in `puretor.TorClient.open_connection`, whose
        errors this raises.
        """
        reader, writer = self.run(
            self._aio.open_connection(
                host,
                port,
                isolation=isolation,
                ssl=ssl,
                server_hostname=server_hostname,
                timeout=STREAM_TOTAL_TIMEOUT if timeout is None else timeout,
            )
        )
        return TorSocket(self, reader, writer, timeout)

    def resolve(self, hostname: str, *, isolation: Hashable | None = None) -> list[str]:
        """Addresses for ``hostname``, resolved by an exit (see `puretor.TorClient.resolve`)."""
        return self.run(self._aio.resolve(hostname, isolation=isolation))

    def resolve_ptr(self, address: str, *, isolation: Hashable | None = None) -> list[str]:
        """Host names for an IP address, looked up by an exit."""
        return self.run(self._aio.resolve_ptr(address, isolation=isolation))

    def isolated(self, name: str = "") -> IsolationToken:
        """A new `IsolationToken` (streams with different tokens never share a circuit)."""
        return IsolationToken(name)

    def new_identity(self) -> None:
        """Like NEWNYM: new streams use new circuits."""
        self.run(self._aio.new_identity())

    def stats(self) -> dict[str, Any]:
        """The asyncio client's counters (see `puretor.TorClient.stats`)."""
        return self._call(self._aio.stats)

    def onion_service(
        self,
        ports: Mapping[int, int | tuple[str, int] | str | os.PathLike[str]],
        **options: Any,
    ) -> OnionService:
        """Host an onion service while ``with`` the result runs (``start``/``stop`` do the
        same); arguments as `puretor.TorClient.onion_service`."""
        service = self._call(lambda: self._aio.onion_service(ports, **options))
        return OnionService(self, service)

    # -- httpx ---------------------------------------------------------------------------

    def httpx_transport(
        self,
        *,
        isolation: Hashable | None = None,
        verify: _ssl.SSLContext | str | bool = True,
        http2: bool = False,
    ) -> httpx.BaseTransport:
        """A synchronous httpx transport over this client (a bridged `TorTransport`).

        Its connections are pooled and isolated with ``isolation`` as `TorTransport`'s;
        ``verify`` is an `ssl.SSLContext`, True (system CAs), a CA file, or False.
        """
        return _sync_transport_class()(self, isolation=isolation, verify=verify, http2=http2)

    def httpx_client(
        self,
        *,
        isolation: Hashable | None = None,
        verify: _ssl.SSLContext | str | bool = True,
        http2: bool = False,
        **kwargs: Any,
    ) -> httpx.Client:
        """An ``httpx.Client`` whose requests go through Tor; close it (``with``) after use.

        ``kwargs`` go to ``httpx.Client`` (``timeout``, ``headers``, ``follow_redirects``...).
        Environment proxies are ignored (httpx does so when given a transport), so
        nothing bypasses Tor.
        """
        import httpx

        transport = self.httpx_transport(isolation=isolation, verify=verify, http2=http2)
        return httpx.Client(transport=transport, **kwargs)

    def get(
        self,
        url: str,
        *,
        isolation: Hashable | None = None,
        verify: _ssl.SSLContext | str | bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """One GET through Tor, body read; ``kwargs`` go to ``httpx.Client.get``.

        Opens (and closes) a client per call, so nothing is pooled between calls: use
        `httpx_client` for several requests.
        """
        with self.httpx_client(isolation=isolation, verify=verify) as http:
            return http.get(url, **kwargs)


SyncTorClient = TorClient


class OnionService:
    """The blocking view of a `puretor.OnionService` (from `TorClient.onion_service`)."""

    def __init__(self, client: TorClient, service: AsyncOnionService) -> None:
        self._client = client
        self._service = service

    @property
    def address(self) -> str:
        return self._service.address

    @property
    def secret_key(self) -> bytes:
        return self._service.secret_key

    @property
    def stats(self) -> dict[str, Any]:
        return self._client._call(lambda: self._service.stats)

    def start(self) -> OnionService:
        self._client.run(self._service.start())
        return self

    def stop(self) -> None:
        self._client.run(self._service.stop())

    def wait_published(self, timeout: float | None = None) -> None:
        """Block until the descriptors are on the HSDirs (`TimeoutError` after ``timeout``)."""
        self._client.run(self._service.wait_published(timeout))

    def __enter__(self) -> OnionService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TorSocket:
    """A blocking Tor stream with the common socket methods (see the module's limits).

    ``recv`` returns ``b""`` at the end of the stream; failures raise the
    `puretor.errors` exceptions (`StreamError` is a `ConnectionError`, like a socket's),
    timeouts `TimeoutError` (= ``socket.timeout``).
    """

    def __init__(
        self,
        client: TorClient,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout: float | None = None,
    ) -> None:
        self._client = client
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._closed = False

    def settimeout(self, value: float | None) -> None:
        """Seconds each `recv`/`sendall` may take (None: no limit)."""
        if value is not None and value < 0:
            raise ValueError("timeout must be non-negative or None")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise OSError("the TorSocket is closed")
        return self._client.run(coro, self._timeout)

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes as soon as some are there; ``b""`` at the end."""
        if bufsize <= 0:
            return b""
        return self._run(self._reader.read(bufsize))

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view))
        view[: len(data)] = data
        return len(data)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data`` (waits while Tor's flow control holds it back)."""
        writer = self._writer

        async def send() -> None:
            writer.write(bytes(data))
            await writer.drain()

        self._run(send())

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Like `sendall` (a Tor stream takes everything); returns ``len(data)``."""
        self.sendall(data)
        return len(data)

    def makefile(self, mode: str = "rb", buffering: int | None = None) -> BinaryIO:
        """A buffered binary file over the stream (``"rb"``, ``"wb"`` or ``"rwb"``).

        Closing the file does not close the socket.
        """
        if not set(mode) <= set("rwb") or "b" not in mode or not set(mode) & set("rw"):
            raise ValueError(f"unsupported mode {mode!r}: use 'rb', 'wb' or 'rwb'")
        raw = _TorSocketIO(self, "r" in mode, "w" in mode)
        size = io.DEFAULT_BUFFER_SIZE if buffering is None or buffering < 0 else buffering
        if "r" in mode and "w" in mode:
            return cast(BinaryIO, io.BufferedRWPair(raw, raw, size))
        if "r" in mode:
            return cast(BinaryIO, io.BufferedReader(raw, size))
        return cast(BinaryIO, io.BufferedWriter(raw, size))

    def getpeername(self) -> tuple[str, int] | None:
        """The address the exit connected to, when it said (else None)."""
        peer: tuple[str, int] | None = self._writer.get_extra_info("peername")
        return peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The stream's extra info: ``"exit"``, ``"peername"``, ``"circuit"``, ``"peercert"``..."""
        return self._writer.get_extra_info(name, default)

    def close(self) -> None:
        """End the stream; idempotent."""
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if self._client.closed:
            return

        async def close() -> None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 5)

        with contextlib.suppress(ClientClosedError):
            self._client.run(close())

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TorSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TorSocketIO(io.RawIOBase):
    def __init__(self, sock: TorSocket, readable: bool, writable: bool) -> None:
        super().__init__()
        self._sock = sock
        self._readable = readable
        self._writable = writable

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return self._writable

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)

    def write(self, data: Any) -> int:
        self._sock.sendall(bytes(data))
        return len(data)


# -- httpx bridge (httpx is optional: the classes are made on first use) -------------------


@functools.cache
def _sync_transport_class() -> Callable[..., httpx.BaseTransport]:
    import httpx

    from puretor.httpx_transport import TorTransport

    class _SyncToAsyncStream(httpx.AsyncByteStream):
        """A sync request body read in a worker thread, for the async transport."""

        def __init__(self, stream: Iterable[bytes]) -> None:
            self._stream = stream

        async def __aiter__(self) -> AsyncIterator[bytes]:
            iterator = iter(self._stream)
            while True:
                chunk = await asyncio.to_thread(next, iterator, None)
                if chunk is None:
                    return
                yield chunk

    class _AsyncToSyncStream(httpx.SyncByteStream):
        """An async response body pulled chunk by chunk from the loop thread."""

        def __init__(self, client: TorClient, stream: httpx.AsyncByteStream) -> None:
            self._client = client
            self._stream = stream

        def __iter__(self) -> Iterator[bytes]:
            chunks = self._stream.__aiter__()

            async def step() -> bytes | None:
                try:
                    return await chunks.__anext__()
                except StopAsyncIteration:
                    return None

            while (chunk := self._client.run(step())) is not None:
                yield chunk

        def close(self) -> None:
            if not self._client.closed:
                self._client.run(self._stream.aclose())

    class SyncTorTransport(httpx.BaseTransport):
        """httpx's sync transport, bridged into an async `TorTransport` on the loop."""

        def __init__(
            self,
            client: TorClient,
            *,
            isolation: Hashable | None,
            verify: _ssl.SSLContext | str | bool,
            http2: bool,
        ) -> None:
            self._client = client
            self._transport = client._call(
                lambda: TorTransport(client.aio, isolation=isolation, verify=verify, http2=http2)
            )

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            stream = request.stream
            body: httpx.AsyncByteStream
            if isinstance(stream, httpx.AsyncByteStream):  # httpx.ByteStream is both
                body = stream
            else:
                body = _SyncToAsyncStream(stream)
            forwarded = httpx.Request(
                request.method,
                request.url,
                headers=request.headers,
                stream=body,
                extensions=request.extensions,
            )
            response = self._client.run(self._transport.handle_async_request(forwarded))
            assert isinstance(response.stream, httpx.AsyncByteStream)
            return httpx.Response(
                status_code=response.status_code,
                headers=response.headers,
                stream=_AsyncToSyncStream(self._client, response.stream),
                extensions=response.extensions,
            )

        def close(self) -> None:
            if not self._client.closed:
                self._client.run(self._transport.aclose())

    return SyncTorTransport
