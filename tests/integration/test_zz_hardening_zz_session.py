"""Hardening, last of the integration suite: where did puretor connect during the session?

* In this process: the audit hook of ``test_zz_hardening_helpers`` (installed at collection,
  so before any test ran) saw every ``puretor.channel.connect`` - the one place puretor
  connects. Each must be a relay's or authority's ORPort, a DirAuthority/FallbackDir the
  connecting TorClient was configured with (tests configure unreachable ones on purpose), or
  a deliberate non-relay listener a hardening test registered (a relay's address with
  another identity is listed: tests of identity checking do that on purpose).
* Everywhere (daemons included): the targets' source log shows only exits and onion hosts,
  never a direct connection.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from ptclient import direct_sources
from test_zz_hardening_helpers import AUDIT, relay_orports

from puretor.testnet.targets import read_source_log

pytestmark = pytest.mark.testnet


def test_every_in_process_channel_went_to_a_relay(testnet_info: Any) -> None:
    relays = relay_orports(testnet_info)
    channels = list(AUDIT.channels)
    bad = [
        f"{test}: {address}:{port} ${ident}"
        for address, port, ident, test, configured in channels
        if (address, port) not in relays
        and not configured
        and (address, port) not in AUDIT.allowed_extra
    ]
    # A relay's address with another identity: only tests of identity checking do that
    # (and the link handshake refuses them); listed, not failed.
    odd = [
        f"{test}: {address}:{port} ${ident[:8]}"
        for address, port, ident, test, _ in channels
        if (address, port) in relays and relays[(address, port)] != ident
    ]
    if odd:
        print("relay addresses with another identity (identity-check tests):", *odd, sep="\n  ")
    sources = sorted(
        {f"{a}:{p}" for a, p, _, _, configured in channels if configured and (a, p) not in relays}
    )
    if sources:
        print("configured directory sources that are no relay (tests' own):", *sources)
    per_module = Counter(test.split("::")[0].rsplit("/", 1)[-1] for _, _, _, test, _ in channels)
    print(f"{len(channels)} in-process channel connections this session:", dict(per_module))
    assert channels, "the audit hook saw no channel at all"
    assert not bad, "channels to something that is no relay:\n" + "\n".join(bad[:20])


def test_no_direct_connection_reached_a_target(testnet_info: Any) -> None:
    records = read_source_log(testnet_info["targets"]["source_log"])
    assert records, "no connection reached the targets at all"
    print(f"{len(records)} connections reached the targets, all through exits or onion hosts")
    assert not direct_sources(testnet_info), direct_sources(testnet_info)[:20]
