"""Fixtures for tests against the private network.

ctor_client   (session) a bootstrapped C tor client (with the client-auth onion key);
              `.socks_address`, `.curl(url, ...) -> bytes`, `.curl_argv(...)`, `.stop()`
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from puretor.testnet import CTorClient, TestNetwork, start_ctor_client


@pytest.fixture(scope="session")
def ctor_client(
    testnet: TestNetwork, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CTorClient]:
    client = start_ctor_client(testnet.info, tmp_path_factory.mktemp("ctor-client"), timeout=120)
    try:
        yield client
    finally:
        client.stop()
