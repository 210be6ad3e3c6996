"""The blocking facade, `puretor.sync.TorClient`, against the private network."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from test_library_api import exits_ready, net_config, no_local_dns

from puretor import ClientClosedError, EndReason, StreamRefused
from puretor.sync import SyncTorClient, TorClient, TorSocket

pytestmark = [pytest.mark.testnet, pytest.mark.timeout(400)]  # includes the network start

__all__ = ["exits_ready", "no_local_dns"]  # fixtures (autouse), shared with test_library_api


def test_sync_facade(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    targets = info["targets"]
    ca = ssl.create_default_context(cafile=targets["ca_cert"])
    f = targets["files"]["1MiB"]
    progress: list[int] = []

    assert SyncTorClient is TorClient
    tor = TorClient(net_config(info, tmp_path / "data"), bootstrap_timeout=120)
    tor.add_bootstrap_listener(lambda status: progress.append(status.percent))
    with tor:
        assert progress[-1] == 100 and tor.bootstrap_status.percent == 100

        # httpx: one-off GET, and a pooled client with the CA.
        response = tor.get(targets["ip_urls"]["http_host"])
        assert response.status_code == 200
        assert response.text.strip() in targets["exit_addresses"]
        with tor.httpx_client(verify=ca, timeout=60) as http:
            body = http.get(f["urls"]["https_host"]).content
            assert hashlib.sha256(body).hexdigest() == f["sha256"]
            # A streamed upload from a generator (read in a worker thread).
            chunks = [bytes([i]) * 65536 for i in range(16)]
            echoed = http.post(targets["upload_urls"]["http_host"], content=iter(chunks))
            assert echoed.text.strip() == hashlib.sha256(b"".join(chunks)).hexdigest()
            # A streamed download.
            with http.stream("GET", f["urls"]["http_host"]) as streamed:
                digest = hashlib.sha256()
                for part in streamed.iter_bytes():
                    digest.update(part)
            assert digest.hexdigest() == f["sha256"]

        # Errors: the puretor error itself reaches the caller through httpx (as an httpx
        # exception that is also the puretor one, with its SOCKS code).
        import httpx

        from puretor import OnionError

        with pytest.raises(OnionError) as bad_onion:
            tor.get("http://" + "a" * 56 + ".onion/")
        assert isinstance(bad_onion.value, httpx.ConnectError)
        assert bad_onion.value.socks_code == 0xF6  # malformed address (proposal 304)
        with pytest.raises(StreamRefused) as refused:
            tor.get(f"http://{targets['hostname']}:{targets['closed_port']}/")
        assert isinstance(refused.value, httpx.ConnectError)
        assert refused.value.reason in (EndReason.CONNECTREFUSED, EndReason.MISC)

        # A socket-like stream.
        with tor.open_connection(targets["hostname"], 80, timeout=60) as sock:
            assert isinstance(sock, TorSocket)
            sock.sendall(b"GET /ip HTTP/1.0\r\nHost: target.test\r\n\r\n")
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"HTTP/1.1 200")
            answer = reader.read().split(b"\r\n\r\n", 1)[1].decode().strip()
            assert answer in targets["exit_addresses"]
            assert sock.getpeername() == (targets["ip"], 80)
            assert sock.get_extra_info("exit").nickname in {e["nickname"] for e in info["exits"]}

        # TLS with the CA, recv until the end.
        with tor.open_connection(targets["tls_hostname"], 443, ssl=ca) as sock:
            sock.sendall(b"GET /ip HTTP/1.0\r\nHost: tls.target.test\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
        with pytest.raises(ssl.SSLCertVerificationError):
            tor.open_connection(targets["tls_hostname"], 443, ssl=True)

        # Timeouts: the echo server says nothing until spoken to.
        with tor.open_connection(targets["echo"]["hostname"], targets["echo"]["port"]) as echo:
            echo.settimeout(0.3)
            with pytest.raises(TimeoutError):
                echo.recv(10)
            echo.sendall(b"ping")
            echo.settimeout(30)  # a loaded machine may take longer than 0.3 s
            assert echo.recv(10) == b"ping"  # nothing was lost to the timeout

        # Resolution and errors, as in the asyncio API.
        assert tor.resolve(targets["hostname"]) == [targets["ip"]]
        with pytest.raises(StreamRefused) as closed:
            tor.open_connection(targets["ip"], targets["closed_port"])
        assert closed.value.reason in (EndReason.CONNECTREFUSED, EndReason.MISC)

        # Many threads at once, each with its own identity.
        answers: list[str] = []
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                r = tor.get(targets["ip_urls"]["http_host"], isolation=tor.isolated())
                answers.append(r.text.strip())
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(answers) == 6
        assert set(answers) <= set(targets["exit_addresses"])

        # The loop thread must not call back into the facade: refused, not a deadlock.
        async def reentrant() -> list[str]:
            return tor.resolve(targets["hostname"])

        with pytest.raises(RuntimeError, match="own event loop thread"):
            tor.run(reentrant())

        # Escape hatch: a coroutine on the client's loop, using the asyncio client.
        async def both() -> list[list[str]]:
            return list(await asyncio.gather(tor.aio.resolve("target.test"), asyncio.sleep(0)))

        assert tor.run(both(), timeout=60)[0] == [targets["ip"]]
        streams = tor.stats()["streams_opened"]
        assert streams >= 10

    assert tor.closed
    with pytest.raises(ClientClosedError):
        tor.resolve(targets["hostname"])
    tor.close()  # idempotent
