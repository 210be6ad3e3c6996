"""httpx over Tor through the public API: ``httpx.AsyncClient(transport=TorTransport(tor))``.

10 MiB with the right sha256, HTTPS verified with the network's CA (and refused without
it), one pooled Tor stream per transport for consecutive requests, names resolved by the
exit (nothing locally; the target sees an exit's address), an onion service.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_library_api import exits_ready, net_config, no_local_dns, run

from puretor import EndReason, IsolationToken, StreamError, StreamRefused, TorClient
from puretor.httpx_transport import TorTransport
from puretor.testnet.targets import read_source_log

pytestmark = [pytest.mark.testnet, pytest.mark.timeout(400)]  # includes the network start

__all__ = ["exits_ready", "no_local_dns"]  # fixtures (autouse), shared with test_library_api


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_httpx_10mib_pooling_and_remote_dns(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    targets = info["targets"]
    big = targets["files"]["10MiB"]
    source_log = targets["source_log"]

    async def main() -> int:
        async with TorClient(net_config(info, tmp_path / "data")) as tor:
            token = IsolationToken("httpx")
            async with httpx.AsyncClient(
                transport=TorTransport(tor, isolation=token), timeout=120
            ) as http:
                before_log = len(read_source_log(source_log))
                before = tor.stats()
                response = await http.get(big["urls"]["http_host"])  # http://target.test/...
                assert response.status_code == 200
                assert len(response.content) == big["size"]
                assert sha256(response.content) == big["sha256"]

                # The same origin again: the pooled connection, i.e. the same Tor stream.
                ip = await http.get(targets["ip_urls"]["http_host"])
                assert ip.status_code == 200
                after = tor.stats()
                new_sources = read_source_log(source_log)[before_log:]
            streams: int = after["streams_opened"] - before["streams_opened"]
            # The target saw one TCP connection, from an exit, for both requests.
            http_sources = [r for r in new_sources if r.listener == "http"]
            assert len(http_sources) == 1, new_sources
            assert http_sources[0].ip in targets["exit_addresses"]
            assert ip.text.strip() == http_sources[0].ip
            return streams

    # (circuits_built is no measure here: the client builds clean circuits in the background.)
    streams = run(main(), 200)
    assert streams == 1, f"{streams} Tor streams for two requests on one pooled connection"


def test_httpx_https_verified_with_the_network_ca(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    targets = info["targets"]
    f = targets["files"]["1MiB"]
    ca = ssl.create_default_context(cafile=targets["ca_cert"])

    async def main() -> None:
        async with TorClient(net_config(info, tmp_path / "data")) as tor:
            async with httpx.AsyncClient(transport=TorTransport(tor, verify=ca)) as http:
                response = await http.get(f["urls"]["https_host"])  # https://tls.target.test/
                assert response.status_code == 200 and sha256(response.content) == f["sha256"]
                ip = await http.get(targets["ip_urls"]["https_host"])
                assert ip.text.strip() in targets["exit_addresses"]
                by_ip = await http.get(targets["ip_urls"]["https_ip"])  # cert covers the IP
                assert by_ip.status_code == 200

            # A CA file path works as verify= too.
            async with httpx.AsyncClient(
                transport=TorTransport(tor, verify=targets["ca_cert"])
            ) as http:
                assert (await http.get(targets["ip_urls"]["https_host"])).status_code == 200

            # The system CAs do not know the private CA: refused, with the ssl error as cause.
            async with httpx.AsyncClient(transport=TorTransport(tor, verify=True)) as http:
                with pytest.raises(httpx.ConnectError) as untrusted:
                    await http.get(targets["ip_urls"]["https_host"])
            assert isinstance(untrusted.value.__cause__, ssl.SSLCertVerificationError)

            # Tor errors reach httpx users as httpx.ConnectError caused by the puretor error.
            async with httpx.AsyncClient(transport=TorTransport(tor)) as http:
                with pytest.raises(httpx.ConnectError) as refused:
                    await http.get(f"http://{targets['ip']}:{targets['closed_port']}/")
            cause = refused.value.__cause__
            assert isinstance(cause, StreamRefused), repr(cause)
            assert cause.reason in (EndReason.CONNECTREFUSED, EndReason.MISC)

    run(main())


def test_httpx_onion_service(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    onion = info["onion"]["plain"]

    async def main() -> None:
        async with (
            TorClient(net_config(info, tmp_path / "data")) as tor,
            httpx.AsyncClient(transport=TorTransport(tor), timeout=120) as http,
        ):
            response = await http.get(onion["url"])
            assert response.status_code == 200
            assert response.text == onion["index_text"]
            again = await asyncio.wait_for(http.get(onion["url"]), 60)
            assert again.text == onion["index_text"]

    run(main())


def test_httpx_stream_dying_mid_body_is_a_read_error(testnet: Any, tmp_path: Path) -> None:
    info = testnet.info
    big = info["targets"]["files"]["10MiB"]

    async def main() -> BaseException | None:
        tor = TorClient(net_config(info, tmp_path / "data"))
        await tor.bootstrap()
        try:
            async with (
                httpx.AsyncClient(transport=TorTransport(tor), timeout=60) as http,
                http.stream("GET", big["urls"]["http_host"]) as response,
            ):
                received = 0
                with pytest.raises(httpx.ReadError) as died:
                    async for chunk in response.aiter_raw():
                        received += len(chunk)
                        if received > 1 << 20:
                            await tor.aclose()  # every circuit goes, mid-body
                assert received < big["size"]
                return died.value.__cause__
        finally:
            await tor.aclose()

    cause = run(main())
    assert isinstance(cause, StreamError), repr(cause)
