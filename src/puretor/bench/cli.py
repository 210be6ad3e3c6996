"""``python -m puretor.bench``: puretor's tor-client against Debian's C tor client, same network.

    python -m puretor.bench [--runs N] [--quick] [--netdir DIR] [--json out.json]
                            [--profile py-spy|cprofile] [--profile-dir DIR] [--no-micro]
                            [--network-profile loopback|realistic]

Without --netdir it starts its own private network (root: in a fresh network namespace of its
own; if the current namespace is already sealed - only `lo`, as inside the test suite - right
here). With --netdir it uses the network that `python -m puretor.testnet up --dir DIR` started,
entering its named namespace (needs root), or the current namespace for one started there.
--network-profile realistic starts the realistic network instead (per-relay delays, bandwidth
caps, 18 relays: see puretor.testnet.profiles); with --netdir the network is what it is.

Exit status: 0 when every measurement succeeded (targets may still be missed), 1 when any
failed or any download had a wrong SHA-256, 2 when the benchmark could not run at all.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import puretor
from puretor.bench import micro, procstat, report
from puretor.bench.clients import CTOR, KINDS, PURETOR
from puretor.bench.profiling import format_summary, summarize_collapsed, summarize_cprofile
from puretor.bench.report import Results
from puretor.bench.runner import Bench, Plan, say
from puretor.testnet import netns
from puretor.testnet.info import NetworkInfo, load

FD_WANT = 16384  # 1000 idle + 100 active SOCKS connections, twice over, with headroom


class BenchSetupError(RuntimeError):
    pass


def _enter_named_netns(name: str) -> None:
    path = Path("/run/netns", name)
    if not path.exists():
        raise BenchSetupError(f"network namespace {name!r} does not exist (is the network up?)")
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, netns.CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise BenchSetupError(
                f"cannot enter namespace {name!r}: {os.strerror(err)}; run as root, or run the "
                f"benchmark inside it: python -m puretor.testnet exec --dir DIR -- "
                f"{sys.executable} -m puretor.bench --netdir DIR"
            )
    finally:
        os.close(fd)


def _reachable(info: NetworkInfo) -> bool:
    for a in info["authorities"]:
        try:
            with socket.create_connection((a["address"], a["dirport"] or 0), timeout=2):
                return True
        except OSError:
            continue
    return False


def attach(netdir: Path) -> NetworkInfo:
    info_path = netdir / "network.json"
    if not info_path.exists():
        raise BenchSetupError(
            f"no {info_path}: start the network with python -m puretor.testnet up"
        )
    info = load(info_path)
    name = info["netns"]["name"]
    holder = info["netns"].get("holder_pid")
    if name and not netns.inside(name):
        _enter_named_netns(name)
    elif holder and not netns.shares_netns(holder):
        # A rootless network: run this benchmark again inside its namespace.
        argv = netns.nsenter_argv(holder, [sys.executable, "-m", "puretor.bench", *sys.argv[1:]])
        os.execvp(argv[0], argv)
    if not netns.is_sealed(None):
        raise BenchSetupError(
            "the current network namespace is not sealed (it has interfaces besides lo); "
            "refusing to run Tor clients here"
        )
    if not _reachable(info):
        raise BenchSetupError(
            f"no authority of {netdir} answers from this namespace; run the benchmark inside the "
            "network's namespace"
        )
    return info


def _git_describe() -> dict[str, Any]:
    root = Path(puretor.__file__).resolve().parents[2]
    out: dict[str, Any] = {}
    try:
        out["commit"] = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        out["src_modified"] = [line[3:] for line in status.splitlines()]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def _tor_version() -> str:
    tor = shutil.which("tor") or "/usr/sbin/tor"
    try:
        text = subprocess.run([tor, "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "unknown"
    return text.splitlines()[0] if text else "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m puretor.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--runs", type=int, default=None, help="repetitions (default 3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="1 run, small sizes (< 60 s)")
    ap.add_argument("--netdir", type=Path, help="use the running network in DIR")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--workdir", type=Path, help="client data (default: a temporary directory)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep client data and logs")
    ap.add_argument("--profile", choices=("py-spy", "cprofile"), help="profile puretor (skews it)")
    ap.add_argument("--profile-dir", type=Path, help="where profiles go (default: workdir)")
    ap.add_argument("--no-micro", action="store_true", help="skip the microbenchmarks")
    ap.add_argument(
        "--network-profile",
        choices=("loopback", "realistic"),
        help="the network to start (default loopback; with --netdir: the network's own)",
    )
    ap.add_argument("--clients", default="puretor,ctor", help=argparse.SUPPRESS)
    ap.add_argument(
        "--debug-logs", action="store_true", help="both clients also log at info level (skews)"
    )
    args = ap.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kinds = tuple(k for k in KINDS if k in args.clients.split(","))
    plan = Plan.quick(args.runs) if args.quick else Plan(runs=args.runs)
    started = time.monotonic()
    own_workdir = args.workdir is None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="puretor-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    network = None
    try:
        if args.netdir is not None:
            info = attach(args.netdir.resolve())
            running = _network_profile(info)
            say(
                f"using the network in {args.netdir} ({info['netns']['mode']} namespace, "
                f"{running} profile)"
            )
            if args.network_profile not in (None, running):
                raise BenchSetupError(
                    f"the network in {args.netdir} has the {running} profile, not "
                    f"{args.network_profile}"
                )
        else:
            from puretor.testnet import TestNetwork, missing_requirements
            from puretor.testnet.profiles import plan_for

            missing = missing_requirements()
            if missing:
                raise BenchSetupError("; ".join(missing))
            if not netns.is_sealed(None):
                mode = netns.enter_private_netns()
                say(f"entered a private network namespace ({mode})")
            say("starting the private network ...")
            network = TestNetwork.start(
                workdir / "network",
                netns=None,
                timeout=300,
                plan=plan_for(args.network_profile or "loopback"),
                progress=lambda m: say(f"  {m}"),
            )
            info = network.info
            say(
                f"network ready in {info['ready_seconds']:.1f} s ({_network_profile(info)} profile)"
            )
    except (BenchSetupError, netns.NamespaceError, OSError, ValueError) as exc:
        print(f"puretor.bench: cannot run: {exc}", file=sys.stderr)
        if network is not None:
            network.stop()
        return 2
    except BaseException:
        if network is not None:
            network.stop()
        raise
    net_ready = time.monotonic()

    soft, hard = procstat.raise_nofile(FD_WANT)
    _compile_bytecode()
    profile_dir = (args.profile_dir or workdir / "profiles").resolve() if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    results = Results()
    bench = Bench(
        info,
        plan,
        workdir,
        results,
        profile=args.profile,
        profile_dir=profile_dir,
        kinds=kinds,
        debug_log=args.debug_logs,
    )
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "mode": "quick" if args.quick else "full",
        "runs": plan.runs,
        "plan": plan.__dict__,
        "sizes": plan.sizes(),
        "puretor_version": puretor.__version__,
        "git": _git_describe(),
        "python": sys.version.split()[0],
        "tor": _tor_version(),
        "network_tor": info.get("tor_version"),
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": list(os.getloadavg()),
        },
        "rlimit_nofile": [soft, hard],
        "netdir": info["workdir"],
        "network_profile": info.get("network_profile") or {"name": "loopback"},
        "torrc": "identical for both (puretor.bench.clients.torrc_text)",
        "profile": args.profile,
        "debug_logs": args.debug_logs,
    }
    micro_result: dict[str, Any] = {}
    try:
        for r in range(plan.runs):
            say(f"=== run {r + 1}/{plan.runs}, order: {' then '.join(_order(kinds, r))} ===")
            asyncio.run(bench.run(r))
        if not args.no_micro:
            say("microbenchmarks ...")
            micro_result = micro.run_subprocess(plan.micro_mb, plan.micro_repeat)
    finally:
        if network is not None:
            network.stop()
    meta["host"]["loadavg_end"] = list(os.getloadavg())
    meta["seconds"] = {
        "network_start": round(net_ready - started, 1),
        "benchmark": round(time.monotonic() - net_ready, 1),
    }

    labels = report.labels_for(plan.sizes())
    header = [
        f"puretor bench ({meta['mode']}): {plan.runs} run(s), puretor {puretor.__version__} "
        f"(Python {meta['python']}) vs {meta['tor']}",
        f"host: {os.cpu_count()} CPUs, load average {_la(meta['host']['loadavg_start'])} at start, "
        f"{_la(meta['host']['loadavg_end'])} at end; {meta['seconds']['benchmark']:.0f} s "
        f"(network start {meta['seconds']['network_start']:.0f} s)",
        f"network profile: {_network_profile(info)}",
        f"git {meta['git'].get('commit', '?')[:12]}"
        + (
            f" + modified {', '.join(meta['git']['src_modified'])}"
            if meta["git"].get("src_modified")
            else ""
        ),
    ]
    idle = [
        v["machine_idle"]
        for run in bench.runs
        for k in kinds
        for v in run.get(k, {}).get("cpu", {}).values()
        if v.get("machine_idle") is not None
    ]
    if idle:
        header.append(
            f"machine CPU idle during the bulk transfers: median {statistics.median(idle):.0%} "
            f"(min {min(idle):.0%}); near 0% means the clients competed for CPU"
        )
    if args.debug_logs:
        header.append("NOTE: both clients logged at info level (--debug-logs)")
    if args.profile:
        header.append(f"NOTE: puretor ran under {args.profile}; its figures are skewed by it")
    if (os.cpu_count() or 1) < max(
        meta["host"]["loadavg_start"][0], meta["host"]["loadavg_end"][0]
    ):
        header.append("WARNING: the machine was busy (load average above the CPU count): noisy")
    text = report.table(results, labels, header)
    text += "\n" + "\n".join(report.micro_lines(micro_result))
    failures = results.failures()
    if results.hash_failures:
        text += f"\n\nHASH FAILURES ({len(results.hash_failures)}): " + json.dumps(
            results.hash_failures
        )
    if failures:
        text += f"\n\nFAILURES ({len(failures)}):\n" + "\n".join(f"  {f}" for f in failures[:50])
    prof_text = _profiles(bench)
    if prof_text:
        text += "\n\n" + prof_text
    print(text, flush=True)

    doc = {
        "meta": meta,
        **results.to_json(labels),
        "failures": failures,
        "micro": micro_result,
        "runs": bench.runs,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        say(f"wrote {args.json}")
    if own_workdir and not args.keep_workdir and not args.profile:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"work directory kept: {workdir}")
    return 1 if failures or results.hash_failures else 0


def _compile_bytecode() -> None:
    """Compile puretor's modules to bytecode once, as ``pip install`` does.

    Measure the client as users run it: an editable install under
    PYTHONDONTWRITEBYTECODE (as on CI machines) would otherwise recompile every module
    at every start (~70 ms of each bootstrap).
    """
    import compileall

    import puretor

    compileall.compile_dir(str(Path(puretor.__file__).parent), quiet=1)


def _profiles(bench: Bench) -> str:
    lines: list[str] = []
    for scenario, paths in bench.profiles.items():
        summary = summarize_collapsed(paths)
        lines += format_summary(f"puretor during '{scenario}' ({len(paths)} run(s))", summary)
        lines.append(f"  raw stacks: {', '.join(str(p) for p in paths)}")
    if bench.cprofiles:
        lines.append("cProfile of puretor's tor-client (whole process life, after warm start):")
        lines.append(summarize_cprofile(bench.cprofiles))
    return "\n".join(lines)


def _network_profile(info: NetworkInfo) -> str:
    """The network's profile name (networks from before profiles: loopback)."""
    prof = info.get("network_profile")
    return prof["name"] if prof else "loopback"


def _order(kinds: tuple[str, ...], r: int) -> tuple[str, ...]:
    names = {PURETOR: "puretor", CTOR: "C tor"}
    order = kinds if r % 2 == 0 else tuple(reversed(kinds))
    return tuple(names[k] for k in order)


def _la(xs: list[float]) -> str:
    return "/".join(f"{x:.1f}" for x in xs)
