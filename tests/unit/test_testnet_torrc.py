"""torrc generation for the private network (and, if tor is installed, tor's own verdict)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from puretor.testnet import layout, torrc
from puretor.testnet.network import find_binary

AUTHS = [
    torrc.AuthorityId("auth1", "127.1.0.1", 9001, 9030, "A" * 40, "B" * 40),
    torrc.AuthorityId("auth2", "127.2.0.1", 9001, 9030, "C" * 40, "D" * 40, "fd00:0:0:2::1"),
]
PLAN = layout.NetworkPlan()


def _options(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.append((key, value))
    return out


def _values(text: str, key: str) -> list[str]:
    return [v for k, v in _options(text) if k == key]


def test_dir_authority_line_matches_auth_dirs_inc_shape() -> None:
    assert torrc.dir_authority_line(AUTHS[0]) == (
        f"DirAuthority auth1 orport=9001 v3ident={'A' * 40} 127.1.0.1:9030 {'B' * 40}"
    )
    # A dual-stack authority: its IPv6 ORPort as in auth_dirs.inc (and parsed by tor-client).
    assert torrc.dir_authority_line(AUTHS[1]) == (
        f"DirAuthority auth2 orport=9001 ipv6=[fd00:0:0:2::1]:9001 v3ident={'C' * 40} "
        f"127.2.0.1:9030 {'D' * 40}"
    )


def test_common_options_everywhere(tmp_path: Path) -> None:
    texts = [
        torrc.relay_torrc(PLAN.node("guard1"), tmp_path, AUTHS),
        torrc.relay_torrc(PLAN.node("exit1"), tmp_path, AUTHS, resolv_conf=tmp_path / "r"),
        torrc.onion_host_torrc(PLAN.node("onion1"), tmp_path, AUTHS),
        torrc.client_torrc(tmp_path, AUTHS, socks_port=9050),
        torrc.authority_torrc(
            PLAN.node("auth1"),
            tmp_path,
            AUTHS,
            bandwidth_file=tmp_path / "bw",
            guard_fps=["1" * 40],
            exit_fps=["2" * 40],
            hsdir_fps=["3" * 40],
        ),
    ]
    for text in texts:
        assert _values(text, "TestingTorNetwork") == ["1"]
        assert _values(text, "UseDefaultFallbackDirs") == ["0"]
        # (Clients have no use for ShutdownWaitLength; tor-client refuses it.)
        assert _values(text, "ShutdownWaitLength") == ([] if text is texts[3] else ["2"])
        assert _values(text, "DataDirectory") == [str(tmp_path)]
        assert _values(text, "PidFile") and _values(text, "Log")
        assert len(_values(text, "DirAuthority")) == 2  # ours only


def test_relay_binds_everything_to_its_own_address(tmp_path: Path) -> None:
    text = torrc.relay_torrc(PLAN.node("guard2"), tmp_path, AUTHS)
    assert _values(text, "Address") == ["127.5.0.1"]
    assert _values(text, "OutboundBindAddress") == ["127.5.0.1"]
    assert _values(text, "AssumeReachable") == ["1"]
    assert _values(text, "ExitPolicy") == ["reject *:*"]
    assert not _values(text, "DirPort")
    # A dual-stack guard: a second ORPort on its own IPv6 address.
    assert _values(text, "ORPort") == ["127.5.0.1:9001", "[fd00:0:0:5::1]:9001"]
    assert _values(text, "AssumeReachableIPv6") == ["1"]
    ipv4_only = torrc.relay_torrc(PLAN.node("guard3"), tmp_path, AUTHS)
    assert _values(ipv4_only, "ORPort") == ["127.6.0.1:9001"]
    assert not _values(ipv4_only, "AssumeReachableIPv6")


def test_exits(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        torrc.relay_torrc(PLAN.node("exit1"), tmp_path, AUTHS)
    one = torrc.relay_torrc(PLAN.node("exit1"), tmp_path, AUTHS, resolv_conf=tmp_path / "rc")
    two = torrc.relay_torrc(PLAN.node("exit2"), tmp_path, AUTHS, resolv_conf=tmp_path / "rc")
    assert _values(one, "ExitPolicy") == ["accept *:*"]
    assert _values(two, "ExitPolicy")[-1] == "reject *:*"
    for text in (one, two):
        assert _values(text, "ExitRelay") == ["1"]
        assert _values(text, "ExitPolicyRejectPrivate") == ["0"]
        assert _values(text, "ExitPolicyRejectLocalInterfaces") == ["0"]
        assert _values(text, "ServerDNSResolvConfFile") == [str(tmp_path / "rc")]
        assert _values(text, "ServerDNSDetectHijacking") == ["0"]
        assert _values(text, "ServerDNSAllowBrokenConfig") == ["1"]


def test_authority_options(tmp_path: Path) -> None:
    text = torrc.authority_torrc(
        PLAN.node("auth1"),
        tmp_path,
        AUTHS,
        bandwidth_file=tmp_path / "bw",
        guard_fps=["1" * 40, "2" * 40],
        exit_fps=["3" * 40],
        hsdir_fps=["4" * 40],
    )
    assert _values(text, "DirPort") == ["127.1.0.1:9030"]
    assert _values(text, "V3AuthoritativeDirectory") == ["1"]
    assert _values(text, "AuthDirHasIPv6Connectivity") == ["1"]  # votes IPv6 ORPorts
    assert _values(text, "V3BandwidthsFile") == [str(tmp_path / "bw")]
    assert _values(text, "TestingDirAuthVoteGuard") == [f"${'1' * 40},${'2' * 40}"]
    assert _values(text, "TestingDirAuthVoteGuardIsStrict") == ["1"]
    assert _values(text, "TestingDirAuthVoteExitIsStrict") == ["1"]
    assert _values(text, "TestingDirAuthVoteHSDirIsStrict") == ["1"]
    assert _values(text, "AuthDirVoteStableGuaranteeMinUptime") == ["0"]
    assert _values(text, "AuthDirVoteStableGuaranteeMTBF") == ["0"]
    interval = int(_values(text, "V3AuthVotingInterval")[0])
    vote, dist = int(_values(text, "V3AuthVoteDelay")[0]), int(_values(text, "V3AuthDistDelay")[0])
    assert vote + dist < interval / 2  # tor's rule before the first consensus
    assert 86400 % interval == 0
    params = dict(p.split("=") for p in _values(text, "ConsensusParams")[0].split())
    assert params["sendme_accept_min_version"] == params["sendme_emit_min_version"] == "1"
    assert params["cc_alg"] == "2"
    assert list(params) == sorted(params)


@pytest.mark.parametrize("start", [0.0, 0.4, 5.0, 13.99, 19.5, 1765130000.25, 1765130017.0])
def test_voting_start_offset_puts_the_first_vote_lead_seconds_after_start(start: float) -> None:
    offset = torrc.voting_start_offset(start)
    interval = layout.VOTING_INTERVAL
    assert 0 <= offset < interval  # tor refuses an offset above the interval
    # tor's schedule: valid-after times at offset + k * interval; votes vote+dist before them.
    first = next(
        t
        for t in range(int(start) - interval, int(start) + 3 * interval)
        if t > start and t % interval == offset
    )
    first_vote = first - layout.VOTE_DELAY - layout.DIST_DELAY
    assert layout.FIRST_VOTE_LEAD <= first_vote - start < layout.FIRST_VOTE_LEAD + 1


def test_authority_torrc_carries_the_offset(tmp_path: Path) -> None:
    text = torrc.authority_torrc(
        PLAN.node("auth1"),
        tmp_path,
        AUTHS,
        bandwidth_file=tmp_path / "bw",
        guard_fps=["1" * 40],
        exit_fps=["2" * 40],
        hsdir_fps=["3" * 40],
        voting_start_offset=17,
    )
    assert _values(text, "TestingV3AuthVotingStartOffset") == ["17"]


def test_onion_and_client(tmp_path: Path) -> None:
    text = torrc.onion_host_torrc(PLAN.node("onion2"), tmp_path, AUTHS)
    assert _values(text, "HiddenServiceDir") == [str(tmp_path / "hs")]
    assert _values(text, "HiddenServicePort") == ["80 198.18.0.21:80"]
    assert "[rend]info file" in _values(text, "Log")[1]
    client = torrc.client_torrc(tmp_path, AUTHS, socks_port="auto", onion_auth_dir=tmp_path)
    assert _values(client, "SocksPort") == ["127.0.0.1:auto"]
    assert _values(client, "ClientOnionAuthDir") == [str(tmp_path)]


@pytest.mark.testnet  # runs real tor: skipped without it, a failure in CI
@pytest.mark.parametrize("nickname", ["auth1", "guard1", "exit2", "onion2", "client"])
def test_tor_accepts_the_torrc(tmp_path: Path, nickname: str) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    if nickname == "client":
        text = torrc.client_torrc(data, AUTHS, socks_port="auto")
    elif nickname == "auth1":
        text = torrc.authority_torrc(
            PLAN.node(nickname),
            data,
            AUTHS,
            bandwidth_file=tmp_path / "bw",
            guard_fps=["1" * 40],
            exit_fps=["2" * 40],
            hsdir_fps=["3" * 40],
            voting_start_offset=layout.VOTING_INTERVAL - 1,  # the largest we produce
        )
    elif nickname == "onion2":
        text = torrc.onion_host_torrc(PLAN.node(nickname), data, AUTHS)
    else:
        text = torrc.relay_torrc(PLAN.node(nickname), data, AUTHS, resolv_conf=tmp_path / "rc")
    (tmp_path / "torrc").write_text(text)
    (tmp_path / "defaults").write_text("")
    proc = subprocess.run(
        [
            str(find_binary("tor")),
            "--verify-config",
            "--defaults-torrc",
            str(tmp_path / "defaults"),
            "-f",
            str(tmp_path / "torrc"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_client_torrc_runs_under_tor_client(tmp_path: Path) -> None:
    """The network's client.torrc is what the README runs with ``tor-client -f``."""
    from puretor.config import TorConfig

    text = torrc.client_torrc(tmp_path, AUTHS, socks_port=9050)
    path = tmp_path / "client.torrc"
    path.write_text(text)
    cfg = TorConfig.from_torrc(path)
    assert cfg.testing_tor_network and len(cfg.dir_authorities) == 2
    assert cfg.dir_authorities[1].ipv6 == ("fd00:0:0:2::1", 9001)
    assert cfg.pid_file == tmp_path / "tor.pid"
