"""``python -m puretor.testnet``: run the private Tor network by hand.

    up     [--dir DIR] [--netns NAME | --current-netns]   start, wait until usable, print "ready"
    down   [--dir DIR]                                    stop exactly what `up` started
    status [--dir DIR]                                    processes and the latest consensus
    exec   [--dir DIR] -- CMD...                          run CMD inside the network's namespace
    serve-targets --config FILE                           (internal) the targets daemon

Needs root for the named namespace (``ip netns add``). Try it:

    python -m puretor.testnet up
    python -m puretor.testnet exec -- tor -f testnet-run/client.torrc &
    python -m puretor.testnet exec -- curl --socks5-hostname 127.0.0.1:9050 http://target.test/ip
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from puretor.testnet import consensus, layout, netns, procs

DEFAULT_DIR = "testnet-run"


def _cmd_up(args: argparse.Namespace) -> int:
    from puretor.testnet.network import NetworkError, TestNetwork

    workdir = Path(args.dir).resolve()
    state = workdir / "state.json"
    if state.exists():
        old = TestNetwork.attach(workdir)
        alive = [n for n in old.records if old.is_running(n)]
        if alive:
            print(
                f"already running in {workdir} ({len(alive)} processes); run `down` first",
                file=sys.stderr,
            )
            return 1
    name = None if args.current_netns else args.netns
    started = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        net = TestNetwork.start(
            workdir, netns=name, timeout=args.timeout, detach=True, progress=progress
        )
    except (NetworkError, netns.NamespaceError) as exc:
        print(f"failed (everything started was stopped again): {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped again", file=sys.stderr)
        return 130
    info = net.info
    print(f"ready in {info['ready_seconds']:.1f}s: {workdir / 'network.json'}")
    print(f"  client torrc: {info['client_torrc']} (SocksPort 127.0.0.1:{info['socks_port']})")
    if name:
        print(f"  run programs inside with: python -m puretor.testnet exec --dir {args.dir} -- CMD")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from puretor.testnet.network import TestNetwork

    workdir = Path(args.dir).resolve()
    if not (workdir / "state.json").exists():
        print(f"nothing to stop: no {workdir / 'state.json'}", file=sys.stderr)
        return 1
    net = TestNetwork.attach(workdir)
    alive = [n for n in net.records if net.is_running(n)]
    net.stop()
    print(f"stopped {len(alive)} processes" + (f", deleted netns {net.netns}" if net.netns else ""))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from puretor.testnet.network import TestNetwork

    workdir = Path(args.dir).resolve()
    if not (workdir / "state.json").exists():
        print(f"not started: no {workdir / 'state.json'}")
        return 1
    net = TestNetwork.attach(workdir)
    where = f"netns {net.netns}" if net.netns else "launcher's namespace"
    print(f"{workdir} ({where})")
    for name, rec in net.records.items():
        print(f"  {name:10} pid {rec.pid:<8} {'running' if procs.is_alive(rec) else 'DEAD'}")
    summary = net.latest_consensus()
    if summary is None:
        print("  no consensus yet")
        return 0
    print(f"  consensus valid-after {summary.valid_after}: {len(summary.routers)} relays")
    for entry in sorted(summary.routers.values(), key=lambda e: e.nickname):
        print(f"    {entry.nickname:10} {entry.address:12} {' '.join(sorted(entry.flags))}")
    if (workdir / "network.json").exists():
        expected = {
            r["fingerprint"]: (r["nickname"], frozenset(r["expected_flags"]))
            for r in net.info["relays"]
            if r["fingerprint"]
        }
        problems = consensus.missing_flags(summary, expected)
        print("  problems: " + ("; ".join(problems) if problems else "none"))
    return 0


def _cmd_exec(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("usage: exec [--dir DIR] -- CMD...", file=sys.stderr)
        return 2
    state = json.loads((Path(args.dir).resolve() / "state.json").read_text())
    argv = netns.wrap(state["netns"], cmd)
    os.execvp(argv[0], argv)


def _cmd_serve_targets(args: argparse.Namespace) -> int:
    from puretor.testnet.targets import serve

    serve(json.loads(Path(args.config).read_text()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m puretor.testnet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", default=DEFAULT_DIR, help=f"work directory (default {DEFAULT_DIR})")
        return p

    up = with_dir(sub.add_parser("up", help="start the network"))
    up.add_argument("--netns", default=layout.DEFAULT_NETNS, help="named namespace to use")
    up.add_argument(
        "--current-netns",
        action="store_true",
        help="run in the current namespace (must already be sealed: only `lo`)",
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

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
