"""The realistic network profile's pure parts: delays drawn from a seed, the plan, the link
emulator's listeners, torrc lines, network.json fields and what `status` prints."""

from __future__ import annotations

import ipaddress
import json
import statistics
from pathlib import Path

import pytest

from puretor.testnet import __main__ as cli
from puretor.testnet import layout, pki, prepare, profiles, torrc
from puretor.testnet.describe import node_info, profile_info
from puretor.testnet.layout import NetworkPlan
from puretor.testnet.network import TestNetwork
from puretor.testnet.prepare import NodeFiles, Prepared

PLAN = profiles.realistic_plan()


def _allows(policy: tuple[str, ...], port: int) -> bool:
    for rule in policy:  # first match wins; our policies use "*" addresses only
        verb, target = rule.split(" ", 1)
        spec = target.split(":", 1)[1]
        if spec == "*" or port == int(spec):
            return verb == "accept"
    return False


# --- delays ----------------------------------------------------------------------------------


def test_delays_are_a_function_of_seed_and_name() -> None:
    assert profiles.draw_delay_ms(1, "guard1") == profiles.draw_delay_ms(1, "guard1")
    names = [f"relay{i}" for i in range(40)]
    one = [profiles.draw_delay_ms(1, n) for n in names]
    two = [profiles.draw_delay_ms(2, n) for n in names]
    assert one != two
    assert profiles.realistic_plan(3) == profiles.realistic_plan(3)
    assert profiles.realistic_plan(3) != profiles.realistic_plan(4)


def test_delays_follow_the_distribution() -> None:
    drawn = [profiles.draw_delay_ms(7, f"relay{i}") for i in range(2000)]
    assert min(drawn) >= profiles.DELAY_MIN_MS and max(drawn) <= profiles.DELAY_MAX_MS
    assert 30 <= statistics.median(drawn) <= 40  # median 35 ms
    assert drawn.count(profiles.DELAY_MIN_MS) < 0.05 * len(drawn)  # clipped tails are thin
    assert drawn.count(profiles.DELAY_MAX_MS) < 0.05 * len(drawn)
    assert all(d == round(d, 1) for d in drawn)
    for seed in range(20):
        assert profiles.TARGET_MIN_MS <= profiles.target_delay_ms(seed) <= profiles.TARGET_MAX_MS


def test_a_relay_keeps_its_delay_when_others_are_added() -> None:
    # Each relay's generator is seeded with its own name: no draw depends on the order.
    assert PLAN.node("guard1").delay_ms == profiles.draw_delay_ms(profiles.DEFAULT_SEED, "guard1")


# --- the plan ----------------------------------------------------------------------------------


def test_the_loopback_plan_is_unchanged() -> None:
    plain = profiles.plan_for()
    assert plain == NetworkPlan() and plain.profile == "loopback" and not plain.emulated
    assert all(n.delay_ms == 0 and n.rate_kb == 0 and not n.emulated for n in plain.nodes)
    assert profiles.plan_for("realistic") == PLAN
    assert profiles.plan_for("realistic", 9).seed == 9
    with pytest.raises(ValueError, match="unknown network profile"):
        profiles.plan_for("lan")


def test_realistic_plan_shape() -> None:
    relays = [n for n in PLAN.nodes if n.is_relay]
    assert len(relays) == 18 and all(n.emulated for n in relays)
    assert len(PLAN.by_role("onion-service")) == 2
    assert [len(PLAN.by_role(r)) for r in ("authority", "guard", "middle", "exit")] == [3, 5, 6, 4]
    nets = {ipaddress.ip_network(f"{n.address}/16", strict=False) for n in PLAN.nodes}
    assert len(nets) == len(PLAN.nodes)
    # The loopback plan's nodes keep their names and addresses (its bridges: loopback only).
    for node in NetworkPlan().nodes:
        if node.is_bridge:
            assert node.nickname not in {n.nickname for n in PLAN.nodes}
            continue
        assert PLAN.node(node.nickname).address == node.address
    assert PLAN.ipv6_addresses == NetworkPlan().ipv6_addresses


def test_caps_are_the_weights() -> None:
    for node in PLAN.nodes:
        if node.is_relay:
            assert 2000 <= node.rate_kb <= 20000, node.nickname
            assert node.bandwidth_kb == node.rate_kb, node.nickname


def test_bad_relays() -> None:
    bad = {n.nickname: n for n in PLAN.nodes if n.fault}
    assert set(bad) == {"slow1", "stall1"}
    assert bad["slow1"].delay_ms == profiles.SLOW_DELAY_MS and bad["slow1"].stall_after is None
    assert bad["stall1"].stall_after == profiles.STALL_AFTER
    assert profiles.DELAY_MIN_MS <= bad["stall1"].delay_ms <= profiles.DELAY_MAX_MS
    for node in bad.values():  # met at random in the middle, never a guard, exit or HSDir
        assert node.role == "middle" and not node.hsdir
        assert {"Guard", "Exit", "HSDir"}.isdisjoint(layout.expected_flags(node))
    others = [n for n in PLAN.nodes if n.is_relay and not n.fault]
    assert all(profiles.DELAY_MIN_MS <= n.delay_ms <= profiles.DELAY_MAX_MS for n in others)


def test_families_and_exit_policies() -> None:
    families: dict[str, set[str]] = {}
    for node in PLAN.nodes:
        if node.family:
            families.setdefault(node.family, set()).add(node.nickname)
    assert families == {"beta": {"guard4", "middle3"}, "gamma": {"exit3", "exit4"}}
    exits = PLAN.by_role("exit")
    assert len({n.exit_policy for n in exits}) == 4
    for node in exits:  # what the targets' ports promise still holds
        for port in (layout.HTTP_PORT, layout.HTTPS_PORT, layout.CLOSED_PORT):
            assert _allows(node.exit_policy, port), (node.nickname, port)
        for port in (layout.EXIT1_ONLY_HTTP_PORT, layout.ECHO_PORT):
            assert _allows(node.exit_policy, port) == (node.nickname == "exit1"), node.nickname


def test_without_ipv6_keeps_the_profile() -> None:
    v4 = PLAN.without_ipv6()
    assert (v4.profile, v4.seed, v4.target_delay_ms) == (
        PLAN.profile,
        PLAN.seed,
        PLAN.target_delay_ms,
    )
    assert not v4.ipv6_addresses


# --- the link emulator's listeners --------------------------------------------------------


def test_every_advertised_orport_has_a_delaying_link() -> None:
    links = {link.name: link for link in profiles.link_plan(PLAN).links}
    for node in PLAN.nodes:
        if not node.is_relay:
            assert node.nickname not in links
            continue
        link = links[node.nickname]
        assert link.listen == (node.address, layout.OR_PORT) == (node.address, node.orport)
        assert link.target == (node.address, layout.PRIVATE_OR_PORT)
        assert link.delay == node.delay_ms / 1000 and not link.keep_source
        assert link.stall_after == node.stall_after
        if node.ipv6_address:  # IPv6 ORPorts too: no way around the delay
            v6 = links[f"{node.nickname}-v6"]
            assert v6.listen == (node.ipv6_address, layout.OR_PORT)
            assert v6.target == (node.ipv6_address, layout.PRIVATE_OR_PORT)
            assert v6.delay == link.delay
    assert len(links) == 18 + 5 + 4  # relays, dual-stack relays, target ports


def test_the_targets_links_keep_the_exits_address() -> None:
    targets = [link for link in profiles.link_plan(PLAN).links if link.name.startswith("target:")]
    assert {link.listen for link in targets} == {
        (layout.TARGET_IP, p) for p in (80, 443, 8080, layout.ECHO_PORT)
    }
    for link in targets:
        assert link.target == (layout.TARGET_PRIVATE_IP, link.listen[1])
        assert link.keep_source and link.delay == PLAN.target_delay_ms / 1000
    assert not profiles.link_plan(NetworkPlan()).links
    assert not any(
        link.name.endswith("-v6") for link in profiles.link_plan(PLAN.without_ipv6()).links
    )


def test_link_config_round_trip(tmp_path: Path) -> None:
    from puretor.testnet.linkemu import Link

    config = profiles.link_plan(PLAN).config(tmp_path)
    again = [Link.from_json(item) for item in json.loads(json.dumps(config))["links"]]
    assert tuple(again) == profiles.link_plan(PLAN).links
    assert config["stats_file"] == str(tmp_path / "links.stats.json")


def test_circuit_rtt() -> None:
    assert profiles.circuit_rtt_ms([10.0, 20.5, 30.0]) == 121.0


# --- torrc --------------------------------------------------------------------------------------

AUTHS = [torrc.AuthorityId("auth1", "127.1.0.1", 9001, 9030, "A" * 40, "B" * 40, "fd00:0:0:1::1")]


def _values(text: str, key: str) -> list[str]:
    return [
        line.partition(" ")[2]
        for line in text.splitlines()
        if line.partition(" ")[0] == key and not line.startswith("#")
    ]


def test_emulated_relay_listens_privately_and_advertises_the_emulator(tmp_path: Path) -> None:
    text = torrc.relay_torrc(PLAN.node("guard1"), tmp_path, AUTHS, family=["C" * 40])
    assert _values(text, "ORPort") == [
        "127.4.0.1:9001 NoListen",
        "127.4.0.1:9101 NoAdvertise",
        "[fd00:0:0:4::1]:9001 NoListen",
        "[fd00:0:0:4::1]:9101 NoAdvertise",
    ]
    assert _values(text, "BandwidthRate") == ["20000000 bytes"]
    assert _values(text, "BandwidthBurst") == ["20000000 bytes"]
    assert _values(text, "MyFamily") == [f"${'C' * 40}"]
    assert _values(text, "OutboundBindAddress") == ["127.4.0.1"]
    v4only = torrc.relay_torrc(PLAN.node("middle4"), tmp_path, AUTHS)
    assert _values(v4only, "ORPort") == ["127.16.0.1:9001 NoListen", "127.16.0.1:9101 NoAdvertise"]
    assert not _values(v4only, "MyFamily")
    auth = torrc.authority_torrc(
        PLAN.node("auth2"),
        tmp_path,
        AUTHS,
        bandwidth_file=tmp_path / "bw",
        guard_fps=[],
        exit_fps=[],
        hsdir_fps=[],
    )
    assert "127.2.0.1:9101 NoAdvertise" in _values(auth, "ORPort")
    assert _values(auth, "DirPort") == ["127.2.0.1:9030"]  # not emulated: relays' uploads


def test_loopback_relays_have_no_caps_or_private_ports(tmp_path: Path) -> None:
    text = torrc.relay_torrc(NetworkPlan().node("guard1"), tmp_path, AUTHS)
    assert _values(text, "ORPort") == ["127.4.0.1:9001", "[fd00:0:0:4::1]:9001"]
    assert not _values(text, "BandwidthRate") and not _values(text, "MyFamily")


def test_family_fingerprints() -> None:
    relays = [("a", "x", "A"), ("b", "x", "B"), ("c", "", "C"), ("d", "y", "D"), ("e", "x", "E")]
    assert prepare.family_fingerprints(relays) == {
        "a": ["B", "E"],
        "b": ["A", "E"],
        "d": [],
        "e": ["A", "B"],
    }


def test_the_first_vote_waits_longer_for_more_relays() -> None:
    assert prepare.first_vote_lead(NetworkPlan()) == layout.FIRST_VOTE_LEAD
    assert layout.FIRST_VOTE_LEAD < prepare.first_vote_lead(PLAN) < 2 * layout.FIRST_VOTE_LEAD


def test_targets_listen_privately_behind_the_emulator(tmp_path: Path) -> None:
    config = prepare.targets_config(
        cert=tmp_path / "c", key=tmp_path / "k", ready=tmp_path / "r", source_log=tmp_path / "s",
        ip=layout.TARGET_PRIVATE_IP,
    )  # fmt: skip
    hosts = {spec["name"]: spec["host"] for spec in config["http"]}
    assert hosts["http"] == hosts["https"] == hosts["http-exit1-only"] == layout.TARGET_PRIVATE_IP
    assert hosts["onion-plain"] == layout.ONION_PLAIN_BACKEND_IP  # local to the onion host
    assert config["echo"][0]["host"] == layout.TARGET_PRIVATE_IP


# --- network.json, state.json, the command line --------------------------------------------------


def _prepared(tmp_path: Path, links: bool) -> Prepared:
    return Prepared(
        tmp_path, {}, [], pki.new_client_auth_keys(), tmp_path / "d", tmp_path / "ca",
        tmp_path / "t", tmp_path / "r", tmp_path / "s",
        tmp_path / "links.json" if links else None,
    )  # fmt: skip


def test_network_json_fields(tmp_path: Path) -> None:
    stall = NodeFiles(PLAN.node("stall1"), tmp_path, tmp_path / "torrc", tmp_path / "log")
    info = node_info(stall, ["x"])
    assert info["one_way_delay_ms"] == PLAN.node("stall1").delay_ms
    assert info["bandwidth_rate_kb"] == info["bandwidth_kb"] == 4000
    assert (info["orport"], info["listen_orport"]) == (9001, 9101)
    assert (info["fault"], info["stall_after"], info["family"]) == ("stall", 20.0, ["x"])
    prof = profile_info(PLAN, _prepared(tmp_path, links=True))
    assert prof == {
        "name": "realistic",
        "seed": profiles.DEFAULT_SEED,
        "target_delay_ms": PLAN.target_delay_ms,
        "links_config": str(tmp_path / "links.json"),
        "links_stats": str(tmp_path / "links.stats.json"),
        "links_log": str(tmp_path / "links.log"),
    }
    plain = NetworkPlan()
    loop = profile_info(plain, _prepared(tmp_path, links=False))
    assert (loop["name"], loop["seed"], loop["target_delay_ms"], loop["links_config"]) == (
        "loopback",
        None,
        0.0,
        None,
    )
    guard = node_info(NodeFiles(plain.node("guard1"), tmp_path, tmp_path / "t", tmp_path / "l"))
    assert (guard["listen_orport"], guard["one_way_delay_ms"], guard["bandwidth_rate_kb"]) == (
        9001,
        0.0,
        0,
    )


def test_state_json_remembers_the_profile(tmp_path: Path) -> None:
    TestNetwork(tmp_path, plan=profiles.realistic_plan(5))._write_state()
    again = TestNetwork.attach(tmp_path)
    assert again.plan == profiles.realistic_plan(5)
    TestNetwork(tmp_path / "plain")._write_state()
    assert TestNetwork.attach(tmp_path / "plain").plan == NetworkPlan()


def test_cli_options() -> None:
    args = cli.build_parser().parse_args(["up", "--network-profile", "realistic", "--seed", "7"])
    assert (args.network_profile, args.seed) == ("realistic", 7)
    assert cli.build_parser().parse_args(["up"]).network_profile == "loopback"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["up", "--network-profile", "lan"])
    assert cli.main(["up", "--dir", "/nonexistent/x", "--seed", "3"]) == 2  # loopback has no seed


def test_status_lines() -> None:
    stall = {
        "one_way_delay_ms": 19.8, "bandwidth_rate_kb": 4000, "fault": "stall",
        "stall_after": 20.0, "family": [],
    }  # fmt: skip
    assert cli.link_summary(stall) == " 19.8 ms   4.0 MB/s  STALLS after 20 s  "
    slow = {**stall, "one_way_delay_ms": 400.0, "fault": "slow", "family": ["a", "b"]}
    assert cli.link_summary(slow) == "400.0 ms   4.0 MB/s  SLOW  family a,b  "
    plain = {**stall, "one_way_delay_ms": 0.0, "bandwidth_rate_kb": 0, "fault": None}
    assert cli.link_summary(plain) == ""
    info = {"network_profile": {"name": "realistic", "seed": 1, "target_delay_ms": 39.1}}
    assert cli.profile_summary(info) == (
        "realistic (seed 1), one-way delays per relay below, exits to targets 39.1 ms"
    )
    stats = {
        "cpu_seconds": 3.0,
        "links": {
            "a": {"connections": 2, "bytes": 1_000_000_000},
            "b": {"connections": 1, "bytes": 0},
        },
    }
    assert cli.emulator_summary(stats) == (
        "2 links, 3 connections, 1000.0 MB forwarded, 3.0 CPU s, 3.00 CPU s/GB"
    )
