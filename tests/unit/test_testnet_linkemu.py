"""The link emulator: delays each direction, keeps the bytes and their order, stalls on cue."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

from puretor.testnet.linkemu import MAX_IN_FLIGHT, Link, LinkEmulator


async def _echo_server() -> tuple[asyncio.AbstractServer, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _emulator(target_port: int, delay: float, **kw: object) -> tuple[LinkEmulator, int]:
    import socket

    with socket.socket() as probe:  # a free port for the advertised listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emu = LinkEmulator([Link("r", ("127.0.0.1", port), ("127.0.0.1", target_port), delay, **kw)])  # type: ignore[arg-type]
    await emu.start()
    return emu, port


def test_round_trip_is_twice_the_one_way_delay() -> None:
    async def main() -> list[float]:
        server, target = await _echo_server()
        emu, port = await _emulator(target, 0.05)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            rtts = []
            for _ in range(5):
                t0 = time.monotonic()
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                rtts.append(time.monotonic() - t0)
            writer.close()
            return rtts
        finally:
            emu.close()
            server.close()

    rtts = asyncio.run(main())
    assert all(0.095 < rtt < 0.3 for rtt in rtts), rtts


def test_bulk_data_arrives_whole_and_in_order_with_flow_control() -> None:
    data = os.urandom(3 * MAX_IN_FLIGHT + 12345)

    async def main() -> tuple[bytes, int]:
        server, target = await _echo_server()
        emu, port = await _emulator(target, 0.01)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)

            async def send() -> None:
                for i in range(0, len(data), 100_000):
                    writer.write(data[i : i + 100_000])
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.ensure_future(send())
            got = await reader.readexactly(len(data))
            await sender
            writer.close()
            return got, emu.stats["r"].bytes
        finally:
            emu.close()
            server.close()

    got, counted = asyncio.run(main())
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert counted == 2 * len(data)  # both directions


def test_a_stalling_link_forwards_nothing_after_its_time() -> None:
    async def main() -> tuple[bytes, bool]:
        server, target = await _echo_server()
        emu, port = await _emulator(target, 0.0, stall_after=0.3)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"early")
            first = await reader.readexactly(5)
            await asyncio.sleep(0.4)
            writer.write(b"late")
            try:
                await asyncio.wait_for(reader.readexactly(4), 0.5)
                stalled = False
            except TimeoutError:
                stalled = True
            writer.close()
            return first, stalled
        finally:
            emu.close()
            server.close()

    first, stalled = asyncio.run(main())
    assert first == b"early" and stalled


def test_an_unreachable_target_closes_the_client_connection() -> None:
    async def main() -> bytes:
        emu, port = await _emulator(1, 0.0)  # nothing listens on port 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return data
        finally:
            emu.close()

    assert asyncio.run(main()) == b""


def test_keep_source_connects_onwards_from_the_clients_address() -> None:
    """A target behind the emulator still sees who connected (an exit's own 127.N.0.1)."""

    async def main() -> list[str]:
        seen: list[str] = []

        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(writer.get_extra_info("peername")[0])
            writer.close()

        server = await asyncio.start_server(record, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[1]
        plain, port = await _emulator(target, 0.0)
        keeping, kport = await _emulator(target, 0.0, keep_source=True)
        try:
            for p in (port, kport):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", p, local_addr=("127.0.0.7", 0)
                )
                await asyncio.wait_for(reader.read(), 5)
                writer.close()
            return seen
        finally:
            plain.close()
            keeping.close()
            server.close()

    assert asyncio.run(main()) == ["127.0.0.1", "127.0.0.7"]


def test_eof_follows_the_data_it_came_after() -> None:
    """Many small writes then EOF: all of them, then the EOF (a half-close, in order)."""

    async def main() -> bytes:
        server, target = await _echo_server()
        emu, port = await _emulator(target, 0.02)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for i in range(200):
                writer.write(b"%04d" % i)
                await asyncio.sleep(0)
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 5)  # until the echoed EOF
            writer.close()
            return data
        finally:
            emu.close()
            server.close()

    assert asyncio.run(main()) == b"".join(b"%04d" % i for i in range(200))


def test_link_json_round_trip() -> None:
    link = Link("t", ("198.18.0.10", 80), ("198.18.1.10", 80), 0.039, None, keep_source=True)
    assert Link.from_json(link.to_json()) == link
    old = {k: v for k, v in link.to_json().items() if k != "keep_source"}  # an older config
    assert Link.from_json(old).keep_source is False
