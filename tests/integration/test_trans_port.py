"""TransPort acceptance (Linux, nftables): the guide's ruleset, loaded in the sealed
namespace, sends one uid's TCP to TransPort and its DNS to DNSPort; a plain curl run as that
uid with no proxy settings reaches the target through an exit, and the same curl as another
uid is not redirected and fails (to a routeless address: the targets are local to the
namespace). A connection made straight to TransPort is closed."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ptclient
import pytest
from ptclient import PtClient

pytestmark = [pytest.mark.testnet, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
ROUTED_UID = 4242
OTHER_UID = 4343
_TRANS = re.compile(
    r"Opened Transparent pf/netfilter listener connection \(ready\) on 127\.0\.0\.1:(\d+)"
)
_DNS = re.compile(r"Opened DNS listener connection \(ready\) on 127\.0\.0\.1:(\d+)")


def guide_ruleset(trans_port: int, dns_port: int, uid: int) -> str:
    """The guide's nftables block, for these ports and this uid."""
    text = (REPO / "docs/guide.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```nft\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) == 1, "docs/guide.md: one nft block expected"
    rules = blocks[0].replace(":9040", f":{trans_port}").replace(":9053", f":{dns_port}")
    return rules.replace("skuid 1001", f"skuid {uid}")


@pytest.fixture(scope="module")
def trans_daemon(testnet: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PtClient]:
    if shutil.which("nft") is None:
        pytest.skip("nftables is not installed (apt-get install nftables)")
    if os.geteuid() != 0:
        pytest.skip("needs root: another uid's curl (setpriv) and a bind-mounted resolv.conf")
    client = ptclient.start_tor_client(
        testnet.info,
        tmp_path_factory.mktemp("tor-client-trans"),
        extra_options={"TransPort": "auto", "DNSPort": "auto"},
    )
    workdir = tmp_path_factory.mktemp("nft")
    try:
        text = client.log_text()
        client.trans_port = int(_TRANS.search(text).group(1))  # type: ignore[attr-defined,union-attr]
        client.dns_port = int(_DNS.search(text).group(1))  # type: ignore[attr-defined,union-attr]
        rules = workdir / "puretor.nft"
        rules.write_text(guide_ruleset(client.trans_port, client.dns_port, ROUTED_UID))  # type: ignore[attr-defined]
        subprocess.run(["nft", "-f", str(rules)], check=True, capture_output=True, timeout=30)
        # The routed uid's resolver: the local DNS the ruleset redirects (as the guide says).
        (workdir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions attempts:1\n")
        workdir.chmod(0o755)
        client.workdir_nft = workdir  # type: ignore[attr-defined]
        yield client
    finally:
        subprocess.run(["nft", "delete", "table", "inet", "puretor"], capture_output=True)
        client.stop()


def curl_as(daemon: PtClient, uid: int, url: str) -> subprocess.CompletedProcess[bytes]:
    """Plain curl, no proxy settings, as ``uid``, with ``nameserver 127.0.0.1``."""
    resolv = daemon.workdir_nft / "resolv.conf"  # type: ignore[attr-defined]
    script = (
        f"mount --bind {resolv} /etc/resolv.conf && exec setpriv --reuid {uid} --regid {uid} "
        f"--clear-groups env -u http_proxy -u https_proxy -u ALL_PROXY "
        f"curl --silent --show-error --max-time 60 {url}"
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        timeout=90,
    )


@pytest.mark.options("TransPort")
def test_routed_uid_reaches_the_target_through_an_exit(
    trans_daemon: PtClient, testnet_info: Any
) -> None:
    targets = testnet_info["targets"]
    url = f"http://{targets['hostname']}/ip"
    proc = curl_as(trans_daemon, ROUTED_UID, url)
    assert proc.returncode == 0, proc.stderr.decode() + trans_daemon.log_tail(20)
    seen = proc.stdout.decode().strip()
    print(f"uid {ROUTED_UID}: the target saw {seen}")
    assert seen in targets["exit_addresses"]
    assert not ptclient.direct_sources(testnet_info)
    # A 10 MiB file too, with the right size.
    f = targets["files"]["10MiB"]
    big = curl_as(trans_daemon, ROUTED_UID, f["urls"]["http_host"])
    assert big.returncode == 0 and len(big.stdout) == f["size"], big.stderr


def test_other_uid_is_not_redirected_and_fails(trans_daemon: PtClient, testnet_info: Any) -> None:
    # An address with no route in the sealed namespace (TEST-NET-3). (The targets themselves
    # are on this host's namespace, so only a routeless address shows "no way out" without
    # a direct connection to them.)
    url = "http://203.0.113.10/ip"
    other = curl_as(trans_daemon, OTHER_UID, url)
    assert other.returncode == 7, (other.returncode, other.stdout, other.stderr)
    assert b"nreachable" in other.stderr or b"Couldn't connect" in other.stderr, other.stderr
    assert not ptclient.direct_sources(testnet_info)


def test_a_connection_straight_to_transport_is_closed(trans_daemon: PtClient) -> None:
    with socket.create_connection(("127.0.0.1", trans_daemon.trans_port), timeout=10) as s:  # type: ignore[attr-defined]
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
    assert data == b""
    assert "no original destination" in trans_daemon.log_text()
    assert trans_daemon.is_running()
