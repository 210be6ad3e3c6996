"""TLS over a Tor stream, with `ssl.MemoryBIO`.

`loop.start_tls()` only accepts asyncio's own transports, so TLS to the
destination (HTTPS through Tor) runs here: an `SSLObject` between the Tor
stream transport (ciphertext) and the application's protocol (plaintext).
Certificates are verified by the caller's `SSLContext` as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from puretor.errors import StreamError

_READ_CHUNK = 64 * 1024


class TLSTransport(asyncio.Transport, asyncio.Protocol):
    """Transport for the application; protocol for the underlying Tor stream."""

    def __init__(
        self,
        inner: asyncio.Transport,
        ctx: ssl.SSLContext,
        server_hostname: str | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__()
        self._inner = inner
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._app: asyncio.BaseProtocol | None = None
        self.handshake: asyncio.Future[None] = loop.create_future()
        self._closing = False
        self._lost = False
        self._pending_app_data: list[bytes] = []
        # The plaintext StreamWriter this transport replaces (see `start_tls`): kept alive
        # with us, because StreamWriter.__del__ closes its transport - our inner Tor stream.
        self._replaced_writer: asyncio.StreamWriter | None = None

    # -- start ----------------------------------------------------------------

    def begin(self) -> None:
        self._inner.set_protocol(self)
        self._step_handshake()

    def _step_handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._flush()
            if not self.handshake.done():
                self.handshake.set_exception(exc)
            self._inner.abort()
            return
        self._flush()
        if not self.handshake.done():
            self.handshake.set_result(None)
        # Application data that arrived with the last handshake flight.
        self._read_app_data()

    def attach(self, app: asyncio.BaseProtocol) -> None:
        self._app = app
        app.connection_made(self)
        for chunk in self._pending_app_data:
            app.data_received(chunk)  # type: ignore[attr-defined]
        self._pending_app_data.clear()

    # -- inner protocol (ciphertext from the Tor stream) --------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self._incoming.write(data)
        if not self.handshake.done():
            self._step_handshake()
        else:
            self._read_app_data()

    def _read_app_data(self) -> None:
        while True:
            try:
                chunk = self._ssl.read(_READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._peer_closed()
                break
            except ssl.SSLError as exc:
                self._fail(exc)
                break
            if not chunk:
                self._peer_closed()
                break
            if self._app is None:
                self._pending_app_data.append(chunk)
            else:
                self._app.data_received(chunk)  # type: ignore[attr-defined]
        self._flush()

    def eof_received(self) -> bool:
        self._peer_closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc or StreamError("stream closed during TLS handshake"))
        self._lose(exc)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # -- application transport (plaintext) ---------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        view = memoryview(data)
        while view:
            n = self._ssl.write(view)
            view = view[n:]
        self._flush()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(ssl.SSLError):
            self._ssl.unwrap()  # queue close_notify
        self._flush()
        self._inner.close()

    def abort(self) -> None:
        self._closing = True
        self._inner.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        return self._inner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._app is not None
        return self._app

    # -- internals ---------------------------------------------------------------

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and not self._inner.is_closing():
            self._inner.write(data)

    def _peer_closed(self) -> None:
        if self._app is not None and not self._lost:
            keep = self._app.eof_received()  # type: ignore[attr-defined]
            if not keep:
                self.close()

    def _fail(self, exc: Exception) -> None:
        self._inner.abort()
        self._lose(exc)

    def _lose(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._app is not None:
            self._app.connection_lost(exc)


async def wrap_tls(
    inner: asyncio.Transport,
    ctx: ssl.SSLContext,
    server_hostname: str | None,
    timeout: float = 60.0,
) -> TLSTransport:
    """Run the TLS handshake over ``inner``; attach the application protocol afterwards.

    Certificate or hostname verification failures raise `ssl.SSLCertVerificationError`
    (other handshake failures `ssl.SSLError`), a stream that ends during the handshake a
    `puretor.errors.StreamError`, and a handshake slower than ``timeout`` `TimeoutError`;
    in every case the Tor stream is closed.
    """
    loop = asyncio.get_running_loop()
    tls = TLSTransport(inner, ctx, server_hostname, loop)
    tls.begin()
    try:
        await asyncio.wait_for(asyncio.shield(tls.handshake), timeout)
    except BaseException:
        inner.abort()
        raise
    return tls


async def start_tls(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    ctx: ssl.SSLContext,
    server_hostname: str | None,
    *,
    limit: int = 2**16,
    timeout: float = 60.0,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Upgrade a Tor stream's reader/writer pair to TLS; returns the new pair.

    ``ctx`` verifies the server as usual (``ssl.create_default_context(cafile=...)``);
    ``server_hostname`` is sent as SNI and checked against the certificate.  Use only
    the returned pair afterwards: the old one no longer carries plaintext.  Errors are
    those of `wrap_tls` (verification failures are `ssl.SSLCertVerificationError`).
    Bytes the old reader had already buffered are not part of the TLS session, so call
    this before the server has sent anything.
    """
    loop = asyncio.get_running_loop()
    inner = writer.transport
    if not isinstance(inner, asyncio.Transport):
        raise TypeError("start_tls needs a writer from TorClient.open_connection")
    await writer.drain()
    tls = await wrap_tls(inner, ctx, server_hostname, timeout)
    tls._replaced_writer = writer
    new_reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(new_reader, loop=loop)
    tls.attach(protocol)
    return new_reader, asyncio.StreamWriter(tls, protocol, new_reader, loop)
