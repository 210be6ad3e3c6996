"""The asyncio library API against the private network, through the public API only.

Bootstrap progress, raw streams, TLS (``ssl=`` and ``start_tls``) verified with the
network's CA, exit-side DNS, isolation tokens on different exits, NEWNYM, and what each
failure raises (docs/errors.md).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from puretor import (
    BootstrapError,
    BootstrapStatus,
    ClientClosedError,
    ConfigError,
    EndReason,
    IsolationToken,
    OnionError,
    StreamError,
    StreamRefused,
    TorClient,
    TorConfig,
    start_tls,
)

pytestmark = [pytest.mark.testnet, pytest.mark.timeout(400)]  # includes the network start


def net_config(info: Any, data_dir: Path, **options: Any) -> TorConfig:
    """The private network as a TorConfig, built with the public constructor."""
    return TorConfig.from_options(
        DataDirectory=data_dir,
        TestingTorNetwork=True,
        UseDefaultFallbackDirs=False,
        SocksPort=0,
        DirAuthority=[line.removeprefix("DirAuthority ") for line in info["dir_authority_lines"]],
        **options,
    )


def run(coro: Coroutine[Any, Any, Any], limit: float = 150.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, limit))


_exits_ready = False


def wait_until_exits_serve(info: Any, data_dir: Path, limit: float = 90.0) -> None:
    """Once per session: wait until both exits have served target.test by name.

    Right after the private network reports ready, an exit has been seen answering END
    MISC to hostname streams for ~15 s under load (see test_paths_isolation.py).  These
    tests are about the library, so they start once both exits work - observed through
    the public API: /ip answers with the exit's address, and fresh isolation tokens give
    fresh circuits, hence fresh exit picks (at least 29% each for the smaller exit).
    """
    global _exits_ready
    if _exits_ready:
        return
    want = set(info["targets"]["exit_addresses"])

    async def probe() -> set[str]:
        seen: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        async with TorClient(net_config(info, data_dir)) as tor:
            while seen != want and loop.time() < deadline:
                try:
                    status, body, _ = await http_get(
                        tor, "target.test", "/ip", isolation=IsolationToken()
                    )
                    if status == 200:
                        seen.add(body.decode().strip())
                except (StreamError, TimeoutError):
                    await asyncio.sleep(0.5)
        return seen

    seen = run(probe(), limit + 30)
    if seen != want:
        pytest.fail(f"private network: exits {sorted(want - seen)} never served target.test")
    _exits_ready = True


@pytest.fixture(autouse=True)
def exits_ready(testnet: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    wait_until_exits_serve(testnet.info, tmp_path_factory.mktemp("exits-ready"))


async def http_get(
    tor: TorClient, host: str, path: str, port: int = 80, **kwargs: Any
) -> tuple[int, bytes, asyncio.StreamWriter]:
    reader, writer = await tor.open_connection(host, port, **kwargs)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, writer


def forbid_local_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any local lookup of a name fail (and record it): names must go to an exit."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode() if isinstance(host, bytes) else str(host)
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        except OSError:
            asked.append(text)
            message = f"local DNS forbidden in this test: {text}"
            raise socket.gaierror(socket.EAI_NONAME, message) from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return asked


@pytest.fixture(autouse=True)
def no_local_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail any local lookup of a name: every name must be resolved by an exit."""
    asked = forbid_local_dns(monkeypatch)
    yield asked
    assert not asked, f"names resolved locally: {asked}"


def test_bootstrap_progress_listeners_and_async_with(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    seen: list[BootstrapStatus] = []
    removed: list[BootstrapStatus] = []

    async def main() -> None:
        tor = TorClient(net_config(info, tmp_path / "data"), bootstrap_timeout=120)
        tor.add_bootstrap_listener(seen.append)
        tor.add_bootstrap_listener(removed.append)
        tor.remove_bootstrap_listener(removed.append)
        assert not tor.is_bootstrapped
        # Concurrent callers wait for the same bootstrap.
        await asyncio.gather(tor.bootstrap(), tor.bootstrap())
        assert tor.is_bootstrapped and not tor.closed
        assert tor.bootstrap_status.percent == 100
        await tor.bootstrap()  # idempotent, immediate
        await tor.aclose()
        assert tor.closed

        # A warm start from the cache, through `async with`.
        async with TorClient(net_config(info, tmp_path / "data")) as again:
            assert again.is_bootstrapped

    run(main())
    percents = [s.percent for s in seen]
    assert percents == sorted(set(percents)), percents  # strictly increasing
    assert percents[-1] == 100 and seen[-1].tag == "done"
    assert any(s.tag == "enough_dirinfo" for s in seen)
    assert all(isinstance(s.summary, str) and s.summary for s in seen)
    assert str(seen[-1]) == "Bootstrapped 100% (done): Done"
    assert not removed


def test_raw_stream_exit_info_and_create_connection(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    targets = info["targets"]
    exits = {e["nickname"]: e["address"] for e in info["exits"]}

    class Collect(asyncio.Protocol):
        def __init__(self) -> None:
            self.data = bytearray()
            self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"GET /ip HTTP/1.0\r\nHost: target.test\r\n\r\n")

        def data_received(self, data: bytes) -> None:
            self.data += data

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.done.done():
                self.done.set_result(None)

    async def main() -> None:
        async with TorClient(net_config(info, tmp_path / "data")) as tor:
            status, body, writer = await http_get(tor, targets["hostname"], "/ip")
            assert status == 200
            exit_relay = writer.get_extra_info("exit")
            # The target saw the exit's address: the exit we were told about.
            assert body.decode().strip() == exits[exit_relay.nickname]
            assert writer.get_extra_info("peername") == (targets["ip"], 80)

            transport, proto = await tor.create_connection(Collect, targets["ip"], 80)
            await asyncio.wait_for(proto.done, 60)
            assert proto.data.startswith(b"HTTP/1.1 200")
            assert proto.data.rstrip().endswith(
                exits[transport.get_extra_info("exit").nickname].encode()
            )
            assert tor.stats()["streams_opened"] == 2

    run(main())


def test_tls_verified_with_the_network_ca_and_refused_otherwise(
    testnet: Any, tmp_path: Path
) -> None:
    info = testnet.info
    targets = info["targets"]
    ca = ssl.create_default_context(cafile=targets["ca_cert"])
    tls_host = targets["tls_hostname"]

    async def main() -> None:
        async with TorClient(net_config(info, tmp_path / "data")) as tor:
            status, body, writer = await http_get(tor, tls_host, "/ip", 443, ssl=ca)
            assert status == 200 and body.decode().strip() in targets["exit_addresses"]
            assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            assert writer.get_extra_info("peercert")["subject"]

            # The certificate also covers the IP address.
            status, _, _ = await http_get(tor, targets["ip"], "/", 443, ssl=ca)
            assert status == 200

            # A 1 MiB body over TLS: no data lost when the plaintext writer goes away.
            f = targets["files"]["1MiB"]
            status, body, _ = await http_get(tor, tls_host, f["path"], 443, ssl=ca)
            import hashlib

            assert status == 200 and hashlib.sha256(body).hexdigest() == f["sha256"]

            # start_tls: upgrade an open stream.
            reader, writer = await tor.open_connection(tls_host, 443)
            reader, writer = await start_tls(reader, writer, ca, tls_host)
            writer.write(f"GET /ip HTTP/1.0\r\nHost: {tls_host}\r\n\r\n".encode())
            assert (await reader.read()).startswith(b"HTTP/1.1 200")
            writer.close()

            streams = tor.stats()["streams_opened"]
            # Wrong host name: verification fails, clearly.
            with pytest.raises(ssl.SSLCertVerificationError) as wrong_name:
                await tor.open_connection(tls_host, 443, ssl=ca, server_hostname="wrong.example")
            assert "Hostname mismatch" in str(wrong_name.value), wrong_name.value
            # Wrong CA (the system's): the private CA is not trusted.
            with pytest.raises(ssl.SSLCertVerificationError) as wrong_ca:
                await tor.open_connection(tls_host, 443, ssl=True)
            assert wrong_ca.value.verify_code != 0, wrong_ca.value
            assert tor.stats()["streams_opened"] == streams + 2  # the streams were opened

            # A name the certificate does not cover, with start_tls too.
            reader, writer = await tor.open_connection(targets["ip"], 443)
            with pytest.raises(ssl.SSLCertVerificationError):
                await start_tls(reader, writer, ca, "not-in-the-cert.test")

    run(main())


def test_resolve_is_answered_by_the_exit(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    targets = info["targets"]

    async def main() -> None:
        async with TorClient(net_config(info, tmp_path / "data")) as tor:
            assert await tor.resolve(targets["hostname"]) == [targets["ip"]]
            assert await tor.resolve("tls.target.test.") == [targets["ip"]]
            names = await tor.resolve_ptr(targets["ip"])
            assert names and all(n.endswith("target.test") for n in names), names
            with pytest.raises(StreamRefused) as unknown:
                await tor.resolve(info["dns"]["nxdomain_example"])
            assert unknown.value.reason == EndReason.RESOLVEFAILED
            with pytest.raises(ValueError):
                await tor.resolve_ptr("not-an-address")

    run(main())


# Two exits: exit1 (measured bandwidth 10000) and exit2 (4000), both allowing port 80.
# Exits are picked in proportion to their weighted bandwidth, so a fresh circuit ends at
# exit1 with p ~ 10/14 = 0.71 and at exit2 with q ~ 0.29 (the consensus's Wee weight is
# the same for both).  Each fresh token gets a circuit no other token used - a new pick,
# independent of the others - so the chance that n tokens all end at the same exit is
# p**n + q**n: 0.59 for 2 tokens, 0.0011 for 20, 3.5e-5 for 30.  We add tokens until
# two exits have been seen, up to 30.
MAX_TOKENS = 30


def test_isolation_tokens_use_separate_circuits_and_reach_both_exits(
    testnet: Any, tmp_path: Path
) -> None:
    info = testnet.info
    targets = info["targets"]

    async def fetch_ip(tor: TorClient, token: Any) -> tuple[str, Any]:
        status, body, writer = await http_get(tor, targets["hostname"], "/ip", isolation=token)
        assert status == 200
        return body.decode().strip(), writer.get_extra_info("circuit")

    async def main() -> int:
        async with TorClient(net_config(info, tmp_path / "data")) as tor:
            exit_of: dict[IsolationToken, str] = {}
            circuit_of: dict[IsolationToken, Any] = {}
            for n in range(1, MAX_TOKENS + 1):
                token = tor.isolated(f"t{n}") if n % 2 else IsolationToken()
                address, circuit = await fetch_ip(tor, token)
                assert address in targets["exit_addresses"]
                # A fresh token never shares a circuit with another token.
                assert all(circuit is not other for other in circuit_of.values())
                exit_of[token], circuit_of[token] = address, circuit
                if len(set(exit_of.values())) == 2:
                    break
            else:
                pytest.fail(f"{MAX_TOKENS} isolation tokens all used the same exit")
            # The same token again: the same circuit, so the same exit.
            first = next(iter(exit_of))
            address, circuit = await fetch_ip(tor, first)
            assert circuit is circuit_of[first] and address == exit_of[first]
            # Any hashable value isolates too; equal values share.
            a1, c1 = await fetch_ip(tor, ("account", 42))
            a2, c2 = await fetch_ip(tor, ("account", 42))
            assert c1 is c2 and a1 == a2
            return n

    tokens = run(main())
    print(f"two exits seen after {tokens} tokens")


def test_new_identity_moves_new_streams_to_new_circuits(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info

    async def main() -> None:
        async with TorClient(net_config(info, tmp_path / "data")) as tor:
            _, _, w1 = await http_get(tor, "target.test", "/ip")
            _, _, w2 = await http_get(tor, "target.test", "/ip")
            assert w1.get_extra_info("circuit") is w2.get_extra_info("circuit")
            await tor.new_identity()
            _, _, w3 = await http_get(tor, "target.test", "/ip")
            assert w3.get_extra_info("circuit") is not w1.get_extra_info("circuit")

    run(main())


def test_what_open_connection_raises(testnet: Any, tmp_path: Path) -> None:
    """Each failure, through the public API, as docs/errors.md lists it."""
    info = testnet.info
    targets = info["targets"]
    from puretor.hs.address import encode_onion_address

    good_onion = info["onion"]["plain"]["address"]
    label = good_onion.removesuffix(".onion")
    bad_onion = label[:50] + ("a" if label[50] != "a" else "b") + label[51:] + ".onion"

    async def main() -> None:
        async with TorClient(net_config(info, tmp_path / "data")) as tor:
            # Closed port: the exit's END reason, as a StreamRefused (a ConnectionError).
            # C tor 0.4.9 exits report a refused *asynchronous* connect as MISC rather than
            # CONNECTREFUSED (connection_edge_end_errno() reads the global errno, not
            # SO_ERROR), so accept either: the reason is the exit's, passed through as is.
            with pytest.raises(StreamRefused) as closed:
                await tor.open_connection(targets["ip"], targets["closed_port"])
            assert closed.value.reason in (EndReason.CONNECTREFUSED, EndReason.MISC)
            assert isinstance(closed.value, ConnectionError)
            assert closed.value.reason_name in str(closed.value)

            # Exit policy: neither exit has an IPv6 exit policy, so both refuse an IPv6
            # destination with END EXITPOLICY; after trying each, that is what we report
            # (not "no path").
            with pytest.raises(StreamRefused) as policy:
                await tor.open_connection("2001:db8::1", 80)
            assert policy.value.reason == EndReason.EXITPOLICY, policy.value
            assert "EXITPOLICY" in str(policy.value)

            # A name the exit cannot resolve.
            with pytest.raises(StreamRefused) as nxdomain:
                await tor.open_connection(info["dns"]["nxdomain_example"], 80)
            assert nxdomain.value.reason == EndReason.RESOLVEFAILED

            # Invalid destinations are refused before any network activity.
            before = tor.stats()
            with pytest.raises(StreamRefused) as invalid:
                await tor.open_connection("bad host\r\n", 80)
            assert invalid.value.reason == EndReason.RESOLVEFAILED
            with pytest.raises(ConfigError):
                await tor.open_connection(targets["hostname"], 0)
            with pytest.raises(OnionError) as malformed:
                await tor.open_connection(bad_onion, 80)
            assert malformed.value.socks_code == 0xF6
            assert isinstance(malformed.value, StreamError)
            after = tor.stats()
            assert after["circuits_built"] == before["circuits_built"]
            assert after["streams_opened"] == before["streams_opened"]

            # A well-formed onion address nobody publishes: descriptor not found.
            from nacl.signing import SigningKey

            nowhere = encode_onion_address(bytes(SigningKey.generate().verify_key))
            with pytest.raises(OnionError) as missing:
                await tor.open_connection(nowhere, 80, timeout=100)
            assert missing.value.socks_code == 0xF0, missing.value

        # Closed client: every call says so.
        for call in (
            tor.open_connection(targets["hostname"], 80),
            tor.resolve(targets["hostname"]),
            tor.bootstrap(),
            tor.new_identity(),
        ):
            with pytest.raises(ClientClosedError):
                await call

    run(main())


def test_bootstrap_failure_and_close_during_calls(testnet: Any, tmp_path: Path) -> None:
    """No reachable authority: BootstrapError naming where it is stuck; aclose()
    makes waiting calls fail with ClientClosedError, not CancelledError."""
    info = testnet.info
    # The real authorities' lines with an ORPort nothing listens on.
    unreachable = [
        line.removeprefix("DirAuthority ").replace("orport=9001", "orport=1")
        for line in info["dir_authority_lines"]
    ]
    assert all("orport=1 " in line for line in unreachable)

    def config(name: str) -> TorConfig:
        return TorConfig.from_options(
            DataDirectory=tmp_path / name,
            TestingTorNetwork=True,
            UseDefaultFallbackDirs=False,
            DirAuthority=unreachable,
        )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tasks_before = asyncio.all_tasks()
        t0 = loop.time()
        with pytest.raises(BootstrapError) as stuck:
            async with TorClient(config("a"), bootstrap_timeout=3):
                pass
        assert 2.5 < loop.time() - t0 < 10
        assert "stuck at Bootstrapped 5% (conn)" in str(stuck.value), stuck.value
        assert "reachable" in str(stuck.value)

        tor = TorClient(config("b"))
        with pytest.raises(BootstrapError):
            await tor.bootstrap(timeout=1)
        # The bootstrap goes on; calls wait for it; closing fails them cleanly.
        waiting = [
            asyncio.ensure_future(tor.open_connection("target.test", 80)),
            asyncio.ensure_future(tor.resolve("target.test")),
            asyncio.ensure_future(tor.bootstrap()),
        ]
        await asyncio.sleep(0.5)
        assert not any(w.done() for w in waiting)
        await tor.aclose()
        for w in waiting:
            with pytest.raises(ClientClosedError):
                await w
        # Nothing left running.
        await asyncio.sleep(0)
        leftover = asyncio.all_tasks() - tasks_before
        assert all(t.done() for t in leftover), leftover

    run(main())
