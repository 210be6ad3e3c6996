"""``puretor-testnet`` (also ``python -m puretor.testnet``): run the private Tor network by hand.

    up     [--dir DIR] [--rootless | --netns NAME | --current-netns]
           [--network-profile loopback|realistic] [--seed N]
                               start, wait until usable, print "ready"
    down   [--dir DIR]         stop what `up` started and the commands `exec` runs
    status [--dir DIR]         processes and the latest consensus
    exec   [--dir DIR] -- CMD  run CMD inside the network's namespace

The network has only loopback. As root it runs in a named namespace (``ip netns add``); as any
other user, or with --rootless, in a user + network namespace kept by a small holder process.

--network-profile realistic: 18 relays with per-relay one-way delays (drawn with --seed), a
delayed target, bandwidth caps, families and two bad relays (a stalling and a slow one); a
userspace link emulator adds the delays. ``status`` shows them; network.json records them.

Try it, in a shell where the virtualenv that has puretor is active:

    puretor-testnet up --dir /tmp/ptnet
    puretor-testnet exec --dir /tmp/ptnet -- tor-client -f /tmp/ptnet/client.torrc &
    puretor-testnet exec --dir /tmp/ptnet -- curl --retry 5 --retry-connrefused \\
        --socks5-hostname 127.0.0.1:9050 http://target.test/ip
    puretor-testnet down --dir /tmp/ptnet
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from puretor.testnet import consensus, execs, layout, netns, procs, profiles
from puretor.testnet.info import NetworkInfo, NodeInfo
from puretor.testnet.procs import ProcRecord

PROG = "puretor-testnet"
DEFAULT_DIR = "testnet-run"


def _namespace_choice(args: argparse.Namespace) -> tuple[str | None, bool]:
    """(named namespace or None, rootless) for `up`."""
    if args.current_netns:
        return None, False
    if args.rootless or (args.netns is None and os.geteuid() != 0):
        return None, True
    return args.netns or layout.DEFAULT_NETNS, False


def _cmd_up(args: argparse.Namespace) -> int:
    from puretor.testnet.network import NetworkError, TestNetwork

    if args.seed is not None and args.network_profile != profiles.REALISTIC:
        print("--seed only applies to --network-profile realistic", file=sys.stderr)
        return 2
    plan = profiles.plan_for(args.network_profile, args.seed)
    workdir = Path(args.dir).resolve()
    if (workdir / "state.json").exists():
        old = TestNetwork.attach(workdir)
        alive = [r for r in old.records.values() if procs.is_alive(r)]
        if alive or (old.holder is not None and procs.is_alive(old.holder)):
            print(
                f"already running in {workdir} ({len(alive)} processes); run `down` first",
                file=sys.stderr,
            )
            return 1
    name, rootless = _namespace_choice(args)
    if name is not None and os.geteuid() != 0:
        print("a named namespace needs root; leave out --netns to run rootless", file=sys.stderr)
        return 2
    started = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {msg}", file=sys.stderr, flush=True)

    if rootless:
        progress("rootless: the network gets a user + network namespace of its own")
    try:
        net = TestNetwork.start(
            workdir,
            netns=name,
            rootless=rootless,
            plan=plan,
            timeout=args.timeout,
            detach=True,
            progress=progress,
        )
    except (NetworkError, netns.NamespaceError) as exc:
        print(f"failed (everything started was stopped again): {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped again", file=sys.stderr)
        return 130
    info = net.info
    print(f"ready in {info['ready_seconds']:.1f}s: {workdir / 'network.json'}")
    if plan.emulated:
        print(f"  network profile: {profile_summary(info)} (`status` lists each relay's)")
    print(f"  client torrc: {info['client_torrc']} (SocksPort 127.0.0.1:{info['socks_port']})")
    if name or rootless:
        print(f"  run programs inside with: {PROG} exec --dir {args.dir} -- CMD")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from puretor.testnet.network import TestNetwork

    workdir = Path(args.dir).resolve()
    if not (workdir / "state.json").exists():
        print(f"nothing to stop: no {workdir / 'state.json'}", file=sys.stderr)
        return 1
    net = TestNetwork.attach(workdir)
    alive = [r for r in net.records.values() if procs.is_alive(r)]
    try:
        commands = execs.stop_all(workdir)  # first: they are clients of the network
        if not alive and net.netns and netns.netns_exists(net.netns) and netns.pids_in(net.netns):
            # Stopped before: a namespace of that name now belongs to another network.
            print(
                f"already stopped; netns {net.netns} now holds processes {workdir} did not "
                f"start, so it stays (stopped {len(commands)} run with `exec`)"
            )
            return 0
        net.stop()
    except PermissionError:
        print(
            f"not allowed to stop the processes of {workdir}: run `down` as the user who ran `up`"
        )
        return 1
    where = f", deleted netns {net.netns}" if net.netns else ""
    where += ", stopped the namespace holder" if net.holder is not None else ""
    print(f"stopped {len(alive)} processes and {len(commands)} run with `exec`{where}")
    for rec in commands:
        print(f"  exec pid {rec.pid}: {' '.join(rec.argv)}")
    if net.left_running:
        print("left running in the namespace (not started by puretor-testnet; stop them yourself):")
        for pid in net.left_running:
            print(f"  pid {pid}: {procs.cmdline(pid) or '(gone)'}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from puretor.testnet.network import HOLDER, TestNetwork

    workdir = Path(args.dir).resolve()
    if not (workdir / "state.json").exists():
        print(f"not started: no {workdir / 'state.json'}")
        return 1
    net = TestNetwork.attach(workdir)
    where = (
        f"netns {net.netns}"
        if net.netns
        else "rootless namespace"
        if net.holder
        else "launcher's namespace"
    )
    print(f"{workdir} ({where})")
    ours = {**({HOLDER: net.holder} if net.holder else {}), **net.records}
    for name, rec in ours.items():
        print(f"  {name:12} pid {rec.pid:<8} {'running' if procs.is_alive(rec) else 'DEAD'}")
    for rec in execs.running(workdir):
        print(f"  {'exec':12} pid {rec.pid:<8} running: {' '.join(rec.argv)}")
    summary = net.latest_consensus()
    if summary is None:
        print("  no consensus yet")
        return 0
    info = net.info if (workdir / "network.json").exists() else None
    nodes = {r["nickname"]: r for r in info["relays"]} if info else {}
    if info and info.get("network_profile", {}).get("name", profiles.LOOPBACK) != profiles.LOOPBACK:
        print(f"  network profile: {profile_summary(info)}")
        stats = net.link_stats()
        if stats is not None:
            print(f"  link emulator: {emulator_summary(stats)}")
    print(f"  consensus valid-after {summary.valid_after}: {len(summary.routers)} relays")
    for entry in sorted(summary.routers.values(), key=lambda e: e.nickname):
        link = link_summary(nodes[entry.nickname]) if entry.nickname in nodes else ""
        flags = " ".join(sorted(entry.flags))
        print(f"    {entry.nickname:10} {entry.address:12} {link}{flags}")
    if info is not None:
        expected = {
            r["fingerprint"]: (r["nickname"], frozenset(r["expected_flags"]))
            for r in net.info["relays"]
            if r["fingerprint"]
        }
        problems = consensus.missing_flags(summary, expected)
        print("  problems: " + ("; ".join(problems) if problems else "none"))
    return 0


def profile_summary(info: NetworkInfo) -> str:
    """One line: the profile, its seed and the target's delay."""
    prof = info["network_profile"]
    if prof["name"] == profiles.LOOPBACK:
        return profiles.LOOPBACK
    return (
        f"{prof['name']} (seed {prof['seed']}), one-way delays per relay below, "
        f"exits to targets {prof['target_delay_ms']:g} ms"
    )


def link_summary(node: NodeInfo) -> str:
    """A relay's delay, cap and fault for `status` ("" in the loopback profile)."""
    if not node.get("one_way_delay_ms") and not node.get("bandwidth_rate_kb"):
        return ""
    cap = node["bandwidth_rate_kb"]
    parts = [f"{node['one_way_delay_ms']:5.1f} ms", f"{cap / 1000:4.1f} MB/s" if cap else "no cap"]
    if node["fault"] == "stall":
        parts.append(f"STALLS after {node['stall_after']:g} s")
    elif node["fault"]:
        parts.append(node["fault"].upper())
    if node["family"]:
        parts.append("family " + ",".join(node["family"]))
    return "  ".join(parts) + "  "


def emulator_summary(stats: dict[str, Any]) -> str:
    """The link emulator's counters (`TestNetwork.link_stats`) in one line."""
    links: dict[str, dict[str, int]] = stats.get("links") or {}
    total = sum(int(v.get("bytes", 0)) for v in links.values())
    conns = sum(int(v.get("connections", 0)) for v in links.values())
    cpu = float(stats.get("cpu_seconds", 0.0))
    per_gb = f", {cpu / (total / 1e9):.2f} CPU s/GB" if total >= 10_000_000 else ""
    return (
        f"{len(links)} links, {conns} connections, {total / 1e6:.1f} MB forwarded, "
        f"{cpu:.1f} CPU s{per_gb}"
    )


def _resolve(cmd: list[str]) -> list[str]:
    """`cmd` with its program found next to our Python if not on PATH: sudo resets PATH, so a
    virtualenv's ``tor-client`` would otherwise not be found."""
    beside = Path(sys.executable).parent / cmd[0]
    if "/" not in cmd[0] and shutil.which(cmd[0]) is None and beside.exists():
        return [str(beside), *cmd[1:]]
    return cmd


def _cmd_exec(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print(f"usage: {PROG} exec [--dir DIR] -- CMD...", file=sys.stderr)
        return 2
    workdir = Path(args.dir).resolve()
    if not (workdir / "state.json").exists():
        print(f"not started: no {workdir / 'state.json'}", file=sys.stderr)
        return 1
    state = json.loads((workdir / "state.json").read_text())
    holder = ProcRecord.from_json(state["holder"]) if state.get("holder") else None
    if holder is not None and not procs.is_alive(holder):
        print(f"the namespace of {workdir} is gone (holder pid {holder.pid}); run `down`")
        return 1
    cmd = _resolve(cmd)
    argv = netns.wrap(state["netns"], cmd, holder_pid=holder.pid if holder else None)
    record = execs.record_self(workdir, cmd)  # our PID and start time stay the command's
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        record.unlink(missing_ok=True)
        print(f"cannot run {argv[0]}: {exc}", file=sys.stderr)
        return 127


def _cmd_serve_targets(args: argparse.Namespace) -> int:
    from puretor.testnet.targets import serve

    serve(json.loads(Path(args.config).read_text()))
    return 0


def _cmd_serve_links(args: argparse.Namespace) -> int:
    from puretor.testnet.linkemu import serve

    serve(json.loads(Path(args.config).read_text()))
    return 0


def _cmd_hold_netns(args: argparse.Namespace) -> int:
    try:
        netns.hold(Path(args.ready))
    except OSError as exc:  # this log's tail is what `up` shows
        print(
            f"cannot make a user + network namespace: {exc}. Unprivileged user namespaces may "
            f"be disabled on this machine; run `up` as root instead (sudo).",
            file=sys.stderr,
        )
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", default=DEFAULT_DIR, help=f"work directory (default {DEFAULT_DIR})")
        return p

    up = with_dir(sub.add_parser("up", help="start the network"))
    where = up.add_mutually_exclusive_group()
    where.add_argument(
        "--rootless",
        action="store_true",
        help="use a user + network namespace (the default when not root)",
    )
    where.add_argument(
        "--netns", help=f"named namespace to use, as root (default {layout.DEFAULT_NETNS})"
    )
    where.add_argument(
        "--current-netns",
        action="store_true",
        help="run in the current namespace (must already be sealed: only `lo`)",
    )
    up.add_argument(
        "--network-profile",
        choices=profiles.PROFILES,
        default=profiles.LOOPBACK,
        help="loopback (default: no added latency) or realistic (delays, caps, more relays)",
    )
    up.add_argument(
        "--seed",
        type=int,
        help=f"realistic profile: draw the delays with this seed (default {profiles.DEFAULT_SEED})",
    )
    up.add_argument("--timeout", type=float, default=240.0)
    up.set_defaults(func=_cmd_up)
    with_dir(sub.add_parser("down", help="stop it")).set_defaults(func=_cmd_down)
    with_dir(sub.add_parser("status", help="show processes and consensus")).set_defaults(
        func=_cmd_status
    )
    ex = with_dir(sub.add_parser("exec", help="run a command inside the namespace"))
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(func=_cmd_exec)
    st = sub.add_parser("serve-targets", help="(internal) the targets + DNS daemon")
    st.add_argument("--config", required=True)
    st.set_defaults(func=_cmd_serve_targets)
    links = sub.add_parser("serve-links", help="(internal) the link emulator")
    links.add_argument("--config", required=True)
    links.set_defaults(func=_cmd_serve_links)
    hold = sub.add_parser("hold-netns", help="(internal) make and keep a rootless namespace")
    hold.add_argument("--ready", required=True)
    hold.set_defaults(func=_cmd_hold_netns)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
