"""httpx over Tor: ``httpx.AsyncClient(transport=TorTransport(tor))``.

The transport owns an httpcore connection pool whose network backend opens Tor
streams, so names are resolved by the exit (no DNS leak), connections are
pooled per transport (one isolation token each), and HTTPS is verified as
normal by the SSL context.  httpx and httpcore are imported only when used.
"""

from __future__ import annotations

import asyncio
import ssl
import typing
from collections.abc import AsyncIterator, Hashable
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from puretor.aio.tls import start_tls
from puretor.errors import StreamError, StreamRefused, StreamTimeout, TorError

if TYPE_CHECKING:
    from puretor.client import TorClient


class _TorNetworkStream(httpcore.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return await asyncio.wait_for(self._reader.read(max_bytes), timeout)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except (ConnectionError, TorError) as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            await asyncio.wait_for(self._writer.drain(), timeout)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except (ConnectionError, TorError) as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # start_tls keeps the plaintext writer alive with the TLS transport: dropping it
        # would let StreamWriter.__del__ close the Tor stream under the TLS session.
        try:
            reader, writer = await start_tls(
                self._reader, self._writer, ssl_context, server_hostname, timeout=timeout or 60.0
            )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"TLS handshake timed out: {exc}") from exc
        except (ssl.SSLError, ConnectionError, TorError) as exc:
            raise httpcore.ConnectError(f"TLS handshake failed: {exc}") from exc
        return _TorNetworkStream(reader, writer)

    def get_extra_info(self, info: str) -> Any:
        transport = self._writer.transport
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "is_readable":
            return self._reader.at_eof() or bool(getattr(self._reader, "_buffer", b""))
        if info in ("server_addr", "client_addr", "socket"):
            return None
        return transport.get_extra_info(info)


class TorNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's plug point: every TCP connection becomes a Tor stream."""

    def __init__(self, tor: TorClient, isolation: Hashable | None = None) -> None:
        self.tor = tor
        self.isolation = isolation

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            reader, writer = await asyncio.wait_for(
                self.tor.open_connection(host, port, isolation=self.isolation), timeout
            )
        except (TimeoutError, StreamTimeout) as exc:
            raise httpcore.ConnectTimeout(f"Tor stream to {host}:{port} timed out") from exc
        except (StreamRefused, StreamError, TorError) as exc:
            raise httpcore.ConnectError(f"Tor stream to {host}:{port} failed: {exc}") from exc
        return _TorNetworkStream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets cannot be reached through Tor")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except httpcore.ReadTimeout as exc:
            raise _httpx_error(httpx.ReadTimeout, exc) from _root_cause(exc)
        except httpcore.ReadError as exc:
            raise _httpx_error(httpx.ReadError, exc) from _root_cause(exc)
        except httpcore.RemoteProtocolError as exc:
            raise _httpx_error(httpx.RemoteProtocolError, exc) from _root_cause(exc)

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _root_cause(exc: BaseException) -> BaseException:
    """The puretor/ssl error behind an httpcore exception raised by our backend.

    httpcore's pool re-raises with ``raise exc from None``, which clears ``__cause__``
    but keeps ``__context__`` (we raise inside the ``except`` for the root error).
    """
    for linked in (exc.__cause__, exc.__context__):
        if isinstance(linked, TorError | ssl.SSLError | OSError):
            return linked
    return exc


_BOTH: dict[tuple[type[Exception], type[TorError]], type[Exception]] = {}


def _both(httpx_class: type[Exception], tor_class: type[TorError]) -> type[Exception]:
    """An exception class that is both ``httpx_class`` and ``tor_class`` (made once)."""
    both = _BOTH.get((httpx_class, tor_class))
    if both is None:
        namespace = {"__module__": httpx_class.__module__, "__doc__": httpx_class.__doc__}
        both = type(httpx_class.__name__, (httpx_class, tor_class), namespace)
        _BOTH[httpx_class, tor_class] = both
    return both


def _httpx_error(httpx_class: type[Exception], exc: BaseException) -> Exception:
    """``httpx_class(str(exc))``; when a puretor error is behind it, the exception is that
    puretor error too (``except OnionError`` sees it, with its ``socks_code``), so code
    written for httpx and code written for puretor both catch it."""
    root = _root_cause(exc)
    if not isinstance(root, TorError):
        return httpx_class(str(exc))
    try:
        combined = _both(httpx_class, type(root))(str(exc))
    except TypeError:  # an exception class the two cannot share (a layout conflict)
        return httpx_class(str(exc))
    for name, value in vars(root).items():  # socks_code, reason, ...
        setattr(combined, name, value)
    return combined


_EXCEPTIONS: tuple[tuple[type[Exception], type[Exception]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


class TorTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections are Tor streams of one isolation token.

    ``httpx.AsyncClient(transport=TorTransport(tor))``: every connection is a stream
    opened with ``tor.open_connection(host, port, isolation=isolation)``, so host names
    are resolved by the exit.  Connections are pooled per transport as httpcore does
    (HTTP/1.1 keep-alive; ``http2=True`` needs the ``h2`` package), so consecutive
    requests to one origin reuse one Tor stream.  ``verify`` is an `ssl.SSLContext`,
    True (system CAs), a CA bundle path, or False (no verification).

    Failures surface as httpx exceptions (``httpx.ConnectError``, ``httpx.ConnectTimeout``,
    ``httpx.ReadError``...) whose ``__cause__`` is the puretor error (e.g. `StreamRefused`)
    or the `ssl.SSLError`.  When a puretor error is behind it, the exception is also an
    instance of that puretor class, with its attributes: ``except OnionError as e`` then
    sees ``e.socks_code`` as well as ``except httpx.ConnectError`` does.  Closing the transport (or the client) closes its streams,
    not the `TorClient`.
    """

    def __init__(
        self,
        tor: TorClient,
        *,
        isolation: Hashable | None = None,
        verify: ssl.SSLContext | str | bool = True,
        http2: bool = False,
        max_connections: int = 100,
        max_keepalive_connections: int = 20,
        keepalive_expiry: float = 30.0,
    ) -> None:
        if isinstance(verify, ssl.SSLContext):
            ctx = verify
        elif isinstance(verify, str):
            ctx = ssl.create_default_context(cafile=verify)
        elif verify:
            ctx = ssl.create_default_context()
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ctx,
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=http2,
            network_backend=TorNetworkBackend(tor, isolation),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            resp = await self._pool.handle_async_request(req)
        except Exception as exc:
            for core_exc, httpx_exc in _EXCEPTIONS:
                if isinstance(exc, core_exc):
                    # Chain to the root cause (a puretor.errors.TorError, an ssl.SSLError...)
                    # rather than to httpcore's intermediate exception.
                    raise _httpx_error(httpx_exc, exc) from _root_cause(exc)
            raise
        assert isinstance(resp.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_ResponseStream(resp.stream),
            extensions=resp.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
