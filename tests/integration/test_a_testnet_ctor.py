"""Proof that the private network works, using the C tor client itself (the reference client):
exits resolve hostnames with our DNS, targets see exits' own addresses, exit policies differ,
HTTPS with the private CA, uploads, and both onion services (plain and client-auth)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from puretor.testnet import CTorClient, NetworkInfo, TestNetwork, netns, start_ctor_client
from puretor.testnet.ctor_client import CurlError
from puretor.testnet.targets import read_source_log

pytestmark = pytest.mark.testnet


def test_network_is_sealed(testnet: TestNetwork) -> None:
    # Only loopback exists in the namespace the tests and the network run in.
    assert netns.is_sealed()
    assert testnet.info["netns"]["mode"] == "current"


def test_consensus_has_every_relay_with_its_flags(testnet: TestNetwork) -> None:
    info = testnet.info
    summary = testnet.latest_consensus()
    assert summary is not None
    for relay in info["relays"]:
        entry = summary.routers[relay["fingerprint"] or ""]
        assert set(relay["expected_flags"]) <= entry.flags, relay["nickname"]
        assert entry.address == relay["address"]
    guards = {e.nickname for e in summary.routers.values() if "Guard" in e.flags}
    exits = {e.nickname for e in summary.routers.values() if "Exit" in e.flags}
    assert guards == {"guard1", "guard2", "guard3"}
    assert exits == {"exit1", "exit2"}
    assert summary.params["sendme_accept_min_version"] == 1
    assert summary.bandwidth_weights["Wgg"] not in (0, 10000)  # really computed


def test_fetch_10mib_by_hostname(ctor_client: CTorClient, testnet_info: NetworkInfo) -> None:
    f = testnet_info["targets"]["files"]["10MiB"]
    body = ctor_client.curl(f["urls"]["http_host"])  # hostname resolved by the exit
    assert len(body) == f["size"]
    assert hashlib.sha256(body).hexdigest() == f["sha256"]


def test_fetch_1mib_by_ip(ctor_client: CTorClient, testnet_info: NetworkInfo) -> None:
    f = testnet_info["targets"]["files"]["1MiB"]
    body = ctor_client.curl(f["urls"]["http_ip"])
    assert hashlib.sha256(body).hexdigest() == f["sha256"]


def test_target_sees_an_exit_not_the_client(
    ctor_client: CTorClient, testnet_info: NetworkInfo
) -> None:
    seen = ctor_client.curl(testnet_info["targets"]["ip_urls"]["http_host"]).decode().strip()
    assert seen in testnet_info["targets"]["exit_addresses"]
    assert seen != "127.0.0.1"


def test_exit1_only_port_goes_through_exit1(
    ctor_client: CTorClient, testnet_info: NetworkInfo
) -> None:
    targets = testnet_info["targets"]
    seen = ctor_client.curl(targets["ip_urls"]["exit1_only_host"]).decode().strip()
    assert seen == targets["exit1_only"]["exit_address"]


def test_https_with_private_ca(ctor_client: CTorClient, testnet_info: NetworkInfo) -> None:
    targets = testnet_info["targets"]
    seen = ctor_client.curl(targets["ip_urls"]["https_host"], cacert=targets["ca_cert"])
    assert seen.decode().strip() in targets["exit_addresses"]


def test_upload(ctor_client: CTorClient, testnet_info: NetworkInfo, tmp_path: Path) -> None:
    body = hashlib.shake_256(b"upload").digest(3 << 20)
    (tmp_path / "body").write_bytes(body)
    answer = ctor_client.curl(
        testnet_info["targets"]["upload_urls"]["http_host"],
        "--data-binary",
        f"@{tmp_path / 'body'}",
    )
    assert answer.decode().strip() == hashlib.sha256(body).hexdigest()


def test_unknown_hostname_fails(ctor_client: CTorClient, testnet_info: NetworkInfo) -> None:
    with pytest.raises(CurlError) as err:
        ctor_client.curl(f"http://{testnet_info['dns']['nxdomain_example']}/")
    assert err.value.returncode == 97  # SOCKS failure: the exit could not resolve it


def test_closed_port_fails(ctor_client: CTorClient, testnet_info: NetworkInfo) -> None:
    targets = testnet_info["targets"]
    with pytest.raises(CurlError):
        ctor_client.curl(f"http://{targets['ip']}:{targets['closed_port']}/")


def test_onion_service(ctor_client: CTorClient, testnet_info: NetworkInfo) -> None:
    onion = testnet_info["onion"]["plain"]
    assert ctor_client.curl(onion["url"]).decode() == onion["index_text"]


def test_client_auth_onion_service(ctor_client: CTorClient, testnet_info: NetworkInfo) -> None:
    onion = testnet_info["onion"]["client_auth"]
    assert ctor_client.curl(onion["url"]).decode() == onion["index_text"]
    files = testnet_info["targets"]["files"]["1MiB"]
    body = ctor_client.curl(onion["url"].rstrip("/") + files["path"])
    assert hashlib.sha256(body).hexdigest() == files["sha256"]


def test_client_auth_onion_needs_the_key(testnet_info: NetworkInfo, tmp_path: Path) -> None:
    with (
        start_ctor_client(testnet_info, tmp_path, client_auth=False) as keyless,
        pytest.raises(CurlError),
    ):
        keyless.curl(testnet_info["onion"]["client_auth"]["url"], "--max-time", "30")


def test_fault_api_kill_restart_and_authority_stop(testnet: TestNetwork) -> None:
    # Later fault tests rely on these; keep the outage short since the network is shared.
    since = testnet.log_offset("middle1")
    testnet.kill_relay("middle1")
    assert not testnet.is_running("middle1")
    testnet.restart_relay("middle1")
    assert testnet.is_running("middle1")
    testnet.wait_for_log("middle1", "Bootstrapped 100%", since=since, timeout=90)

    testnet.pause_node("middle1")  # SIGSTOP: hangs, connections stay open
    try:
        assert testnet.is_running("middle1")
    finally:
        testnet.resume_node("middle1")

    since = testnet.log_offset("auth3")
    testnet.stop_authority("auth3")
    assert not testnet.is_running("auth3")
    testnet.start_authority("auth3")
    assert testnet.is_running("auth3")
    testnet.wait_for_log("auth3", "Bootstrapped 100%", since=since, timeout=90)


def test_no_direct_connection_ever_reached_a_target(testnet_info: NetworkInfo) -> None:
    # Runs last in this module: every source so far must be an exit or an onion host.
    allowed = set(testnet_info["targets"]["exit_addresses"])
    allowed |= {h["address"] for h in testnet_info["onion_hosts"]}
    records = read_source_log(testnet_info["targets"]["source_log"])
    assert records, "no connection reached the targets at all"
    assert {r.ip for r in records} <= allowed
