"""Every command in README.md, docs/*.md and fuzz/README.md is run by a test.

What counts as a command:

* every shell block (a fence whose info string is ``sh``, ``bash``, ``shell`` or ``console``);
* every inline code span in the prose that a reader could copy as a command: one that starts
  with a program (``python``, ``pytest``, ``pip``, ``sudo``, ``tor-client``, a ``~/…/bin/``
  path, …, after optional ``VAR=value`` words) and has arguments, or that abbreviates the
  command of the line above (``… -k stalls``).

`PLAN` below says, for each of them - by file and first command line - what running it means
and what must come out of it. A block or span the plan does not know fails
`test_every_documented_command_has_an_expectation` ("add an expectation for this new command
block"), so no documented command slips in untested; an entry whose block is gone fails it too.

How a block runs: the whole block is one ``bash -e`` script, started in the repository root
(unless the plan names another directory), as a reader would paste it - so ``.
~/puretor/bin/activate`` holds for the lines after it and ``cmd &`` leaves a background job that
a later ``puretor-testnet down`` stops. Each command runs inside a `docs_sandbox.Sandbox`: fresh
network and mount namespaces with only loopback, a private ``/run/netns`` (so the docs' default
namespace name ``puretor-testnet`` is the sandbox's own: no collision with other tests, other
runs or a leftover of a failed run), and copy-on-write ``/tmp``, repository and Python
environment (so the docs' fixed paths - ``/tmp/ptnet``, ``/tmp/tn``, ``/tmp/1MiB`` - are used as
written, and nothing written there outlives the test). HOME is a fresh directory in the
sandbox's ``/tmp``. Blocks that build on each other (``~/puretor`` from the quick start, a
network that is up) run in order in one sandbox, a *session*; sessions run in parallel (a block
that needs a network some section has the reader bring up gets that ``puretor-testnet up`` as a
setup step first). When a session ends, every network still up is stopped with
``puretor-testnet down --dir …`` and every process still in the sandbox is ended by PID (and
reported: nothing may be left). Interrupting the test ends the sessions too; if the test process
dies, each sandbox's holder ends what is left of it.

Offline: the suite runs sealed, so ``pip install …`` gets ``PIP_NO_INDEX=1`` and
``PIP_FIND_LINKS=$PURETOR_WHEELHOUSE`` (made by .ci/run: puretor's dependencies, its build
backend, the test extras and atheris). Without a wheelhouse those commands skip - under CI
(``CI`` set) they fail instead, as does a wheelhouse without atheris or the test extras.

``sudo``: when the test runs as root, a leading ``sudo`` is dropped (bash runs ``sudo cmd`` as
``cmd``; ``sudo apt-get install -y …`` of installed packages needs no network). Not as root, the
sessions with ``sudo`` skip.

Commands that run for ever or for hours: "run" means run as written until they show real
progress, then stopped the way a user stops them - SIGINT to their process group (Ctrl-C) - and
they must then exit within a grace period, leaving no process behind. That is the README's
``~/puretor/bin/tor-client`` (in the sealed namespace it cannot reach the real Tor network: it
opens its SOCKS port and prints C tor's ``Problem bootstrapping. Stuck at 5% (conn)`` warning
with ``NOROUTE``, what a user offline sees; after Ctrl-C it must exit 0), full benchmarks
(``python -m puretor.bench`` until its "=== run 1/3" phase line), fuzzing campaigns
(``python -m fuzz.run …`` until libFuzzer's first status line in ``fuzz/logs/TARGET.log``) and the
heavy load test (until its "load: 1000 connections open" line; it takes a second Ctrl-C, as a
user would press it, since the first only cancels its asyncio load). Short commands
(``bench/bench_cells.py``, ``--quick`` benchmarks, ``puretor-testnet up/down``, curl) run to
completion and their exit status and output are checked.

``pytest …`` commands in docs/hardening.md select tests of this very suite, which run in the
same CI pass; they are run with ``--collect-only -q`` appended (the paths and ``-k``
expressions must select at least one test), except the unit-test ones, which run as written,
and the heavy load variant (see above). ``bash .ci/run`` and ``python3 -m pytest`` are this CI
run itself: checked, not started again. Placeholders a reader fills in (``--captured DIR``,
``my_program.py``, a crash file's name) get a value the plan names.

Each session's output is logged to ``docs-commands*/SESSION.log`` under pytest's temporary
directory; a failing test shows the tail of its block's output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from docs_sandbox import Closed, Run, Sandbox

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CMD_WRAPPER = HERE / "docs_cmd.py"
DOC_FILES = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]
DOC_FILES.append("fuzz/README.md")
SHELL_INFOS = {"sh", "bash", "shell", "console"}
NETWORK_DIRS = ["/tmp/ptnet", "/tmp/tn", f"{REPO}/testnet-run"]  # `down` at the end of a session
MAX_PARALLEL_SESSIONS = 8  # all of them: most of a session's time is waiting for a network
# The longest chain of steps starts alone: its network's key generation then has the CPU.
HEAD_START = {"bench": 0.0}
OTHERS_START_AFTER = 6.0

_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_SPAN = re.compile(r"(?<!`)(`{1,2})([^`\n]+)\1(?!`)")  # `code` or ``code``
_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=\S*")
_PROGRAMS = {
    "python", "python3", "pip", "pip3", "pytest", "sudo", "bash", "sh", "curl", "tor",
    "tor-client", "puretor-testnet", "apt-get", "apt", "ip", "tcpdump", "perf", "py-spy",
    "unshare", "nsenter", "git", "openssl", "chromium", "make", "env",
}  # fmt: skip

pytestmark = pytest.mark.timeout(900)


# --- what the docs contain ---------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    file: str
    line: int  # of its first code line
    code: str

    @property
    def key(self) -> str:
        return first_command(self.code)


def first_command(code: str) -> str:
    """A block's first command line: not blank, not a comment; its own comment cut off."""
    for line in code.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return re.sub(r"\s+#.*$", "", stripped)
    return ""


def shell_blocks() -> list[Block]:
    blocks = []
    for name in DOC_FILES:
        text = (REPO / name).read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            if m.group(1).strip().split()[:1] and m.group(1).split()[0] in SHELL_INFOS:
                line = text.count("\n", 0, m.start(2)) + 1
                blocks.append(Block(name, line, m.group(2)))
    return blocks


def is_command_like(span: str) -> bool:
    words = span.split()
    if words[:1] == ["…"] and len(words) > 1:
        return True  # "… -k stalls": the command of the row above, abbreviated
    while words and _ASSIGNMENT.fullmatch(words[0]):
        words.pop(0)
    if len(words) < 2:
        return False
    program = words[0]
    return program in _PROGRAMS or (program.startswith(("~/", "./", "/")) and "/bin/" in program)


def inline_commands() -> dict[tuple[str, str], int]:
    """(file, span) -> line of its first occurrence, for every command-like span in prose."""
    found: dict[tuple[str, str], int] = {}
    for name in DOC_FILES:
        text = (REPO / name).read_text(encoding="utf-8")
        prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for m in _SPAN.finditer(prose):
            span = m.group(2).strip()
            if is_command_like(span):
                found.setdefault((name, span), prose.count("\n", 0, m.start()) + 1)
    return found


# --- expectations --------------------------------------------------------------------------------

CTRL_C_OK = (0, 130, -2)  # after Ctrl-C: a clean exit, or Python's KeyboardInterrupt exit
LIBFUZZER_STATUS = r"^#\d+\s+\w+\s+cov: \d+ ft: \d+ corp: \d+"
BENCH_RUN = r"=== run 1/\d+"


@dataclass(frozen=True)
class Cmd:
    """One command of a block that is not simply run to completion with exit status 0."""

    command: str  # its text in the block
    until: str | None = None  # run until a line matches, then Ctrl-C (SIGINT to its group)
    watch: str | None = None  # ... a line of this file (its progress log) rather than output
    ok: tuple[int, ...] = (0,)  # allowed exit status (after Ctrl-C, or at the end)
    timeout: float = 240.0
    grace: float = 60.0
    again: float | None = None  # Ctrl-C again after this many seconds, as a user would


@dataclass
class Ctx:
    """What a check gets: the run, the sandbox it ran in, the wrapped commands' reports."""

    run: Run
    sandbox: Sandbox
    reports: dict[str, dict[str, Any]]

    def read(self, path: str) -> bytes:
        return self.sandbox.host_path(path).read_bytes()

    def output_after(self, command: str) -> str:
        """The block output after the report of `command` (the rest of the block)."""
        for name, report in self.reports.items():
            if report["command"] == command:
                marker = self.run.output.find(f'"name": "{name}"')
                return self.run.output[self.run.output.find("\n", marker) :]
        raise AssertionError(f"no report of {command!r}")


@dataclass(frozen=True)
class Expect:
    """How to run one documented command (block, inline span or setup) and what must result."""

    session: str
    means: str  # what "run" means for it, in a line
    run_as: str | None = None  # inline spans and setups: the script to run
    cmds: tuple[Cmd, ...] = ()
    output: tuple[str, ...] = ()  # regexes (multiline) the output must match
    check: Callable[[Ctx], None] | None = None
    verify: str = ""  # shell run afterwards in the same sandbox; must exit 0
    cwd: str = str(REPO)
    files: Mapping[str, Callable[[Sandbox], bytes]] = field(default_factory=dict)
    placeholders: Mapping[str, str] = field(default_factory=dict)
    prelude: str = ""  # shell run first, in the same script (e.g. the environment it needs)
    after_previous: bool = False  # builds on the session's earlier steps (skipped if one was)
    alongside: bool = False  # runs while the session's next steps run (same sandbox)
    needs: tuple[str, ...] = ()
    timeout: float = 420.0


@dataclass(frozen=True)
class Same:
    """An inline span that is the same command as another entry, which runs it."""

    as_: str
    why: str


@dataclass(frozen=True)
class NotACommand:
    why: str


@dataclass(frozen=True)
class ThisRun:
    """The command that runs this very suite: checked, not started again."""

    why: str


Entry = Expect | Same | NotACommand | ThisRun


@dataclass(frozen=True)
class Step:
    kind: str  # "block", "inline" or "setup"
    file: str  # for setups: a label
    key: str  # block: its first command line; inline: the span; setup: a name
    entry: Entry

    @property
    def id(self) -> str:
        return f"{self.file}: `{self.key}`" if self.kind == "inline" else f"{self.file}: {self.key}"


# --- checks --------------------------------------------------------------------------------------


def _no_traceback(ctx: Ctx) -> None:
    assert "Traceback (most recent call last)" not in ctx.run.output, "a traceback was printed"


def _downloaded_1mib(ctx: Ctx) -> None:
    info = json.loads(ctx.read("/tmp/ptnet/network.json"))
    meta = info["targets"]["files"]["1MiB"]
    body = ctx.read("/tmp/1MiB")
    assert len(body) == 1048576 == meta["size"], f"/tmp/1MiB has {len(body)} bytes"
    assert hashlib.sha256(body).hexdigest() == meta["sha256"], "/tmp/1MiB: wrong SHA-256"


def _quick_bench(ctx: Ctx) -> None:
    from puretor.bench.report import TARGETS

    out = ctx.output_after("python3 -m puretor.bench --netdir /tmp/ptnet --json bench.json")
    for target in TARGETS:
        assert re.search(rf"(?m)^\s+(PASS|MISS|n/a)\s+{re.escape(target.name)}", out), (
            f"no verdict line for {target.name!r}"
        )
    quick = next(r for r in ctx.reports.values() if "--quick" in r["command"])
    if quick["rc"] != 0:
        # As in test_bench_smoke: C tor's own client sometimes finds no onion descriptor for a
        # few seconds (SOCKS 0xF0); that is the reference client's problem, not the benchmark's.
        failures = re.findall(r"(?m)^  (\S.*)$", out.split("FAILURES (", 1)[-1])
        assert failures and all("[C tor]" in f and "SOCKS 0xf0" in f for f in failures), (
            f"the quick benchmark failed (exit status {quick['rc']})"
        )


def _readme_options_listed(ctx: Ctx) -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in re.findall(r"(?m)^\| (`.*?) \| ", section):
        names |= {span.split()[0] for span in re.findall(r"`([^`]+)`", row)}
    assert len(names) > 20, names
    missing = sorted(
        n for n in names if not re.search(rf"(?m)^\s*{re.escape(n)}\b", ctx.run.output)
    )
    assert not missing, (
        f"options in README's table that --list-torrc-options does not list: {missing}"
    )


def _fuzz_targets_listed(ctx: Ctx) -> None:
    text = (REPO / "fuzz/README.md").read_text(encoding="utf-8")
    section = text.split("## Targets", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"(?m)^\| `(\w+)` \|", section)
    assert len(names) >= 10, names
    missing = [n for n in names if not re.search(rf"(?m)^{n}\s", ctx.run.output)]
    assert not missing, f"targets in fuzz/README.md that --list does not list: {missing}"


def _api_docs_written(ctx: Ctx) -> None:
    text = ctx.read(f"{REPO}/docs/api.md").decode()  # the sandbox's copy
    assert "<!-- Generated by scripts/gen_api_docs.py" in text[:1000], text[:1000]
    assert "TorClient" in text, "no TorClient in the API reference"


# --- files a reader has written before running a block -------------------------------------------


def _guide_fences() -> list[tuple[str, str, str]]:
    """(info string, heading, code) of every fence in docs/guide.md."""
    text = (REPO / "docs/guide.md").read_text(encoding="utf-8")
    headings = [(m.start(), m.group(1)) for m in re.finditer(r"^#{2,3} (.+)$", text, re.M)]
    out = []
    for m in _FENCE.finditer(text):
        heading = next((h for pos, h in reversed(headings) if pos < m.start()), "")
        out.append((m.group(1).strip(), heading, m.group(2)))
    return out


def _doors_fetched(ctx: Ctx) -> None:
    """The guide's HTTPTunnelPort/DNSPort/MetricsPort block: what curl, git and pip fetched
    through the HTTP CONNECT port is what the network serves."""
    _downloaded_1mib(ctx)
    from puretor.testnet.demo_repos import README, WHEEL_NAME, index_files

    assert ctx.read("/tmp/demo/README") == README, "git clone through HTTPTunnelPort"
    wheel = ctx.read(f"/tmp/wheels/{WHEEL_NAME}")
    assert wheel == index_files()[f"/packages/{WHEEL_NAME}"], "pip download: wrong wheel"


def my_program(_: Sandbox) -> bytes:
    """The guide's ``my_program.py`` ("your program"): the guide's own setup block (the names
    for the private network, its paths as written) followed by its raw-stream example."""
    fences = _guide_fences()
    setup = [code for info, _, code in fences if info == "python run setup"]
    example = [c for info, h, c in fences if info == "python run" and h == "Opening a raw stream"]
    assert len(setup) == 1 and len(example) == 1, "docs/guide.md: setup or raw-stream example?"
    return (setup[0] + "\n\n" + example[0]).encode()


def fuzz_reproducer(_: Sandbox) -> bytes:
    """An input for the http target, as a crash file holds one (here: a harmless one)."""
    return b"\x00\x00HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"


def guide_torrc(sandbox: Sandbox) -> bytes:
    """What the guide asks the reader to write to /tmp/ptnet/puretor.torrc: its torrc block,
    followed by the DirAuthority lines from network.json."""
    torrc = [code for info, _, code in _guide_fences() if info == "torrc"]
    assert len(torrc) == 1 and "# /tmp/ptnet/puretor.torrc" in torrc[0]
    info = json.loads(sandbox.host_path("/tmp/ptnet/network.json").read_bytes())
    return (torrc[0] + "\n".join(info["dir_authority_lines"]) + "\n").encode()


# --- the plan ------------------------------------------------------------------------------------

README_QUICK = "sudo apt-get install -y python3-venv"
GUIDE_DAEMON = "puretor-testnet exec --dir /tmp/ptnet -- tor-client -f /tmp/ptnet/puretor.torrc &"
HARDENING_CAMPAIGN = "python -m puretor.testnet up --dir /tmp/tn"
REALISTIC_UP = "puretor-testnet up --dir /tmp/ptnet --network-profile realistic"
PERF_REALISTIC = "python -m puretor.testnet up --dir /tmp/tn --network-profile realistic"
MEMORY_BENCH = "python bench/bench_memory.py --netdir /tmp/tn --tracemalloc"
MUX_BENCH = (
    "python -m puretor.testnet exec --dir /tmp/tn -- python bench/bench_mux.py /tmp/tn "
    "--rounds 10 --mb 32"
)


def _collect(cmd: str) -> Expect:
    return Expect(
        session="pytest",
        means="selects tests of this suite (they run in this CI pass): run with "
        "--collect-only -q appended, at least one test selected",
        run_as=f"{cmd} --collect-only -q",
        output=(r"^(\d+/)?\d+ tests? collected",),
    )


def _unit(cmd: str) -> Expect:
    return Expect(session="pytest", means="unit tests: run as written", run_as=cmd,
                  output=(r"\b\d+ passed\b",))  # fmt: skip


PLAN: list[Step] = [
    # -- sessions "readme" and "guide": a reader following README.md / the guide -------------
    Step("block", "README.md", README_QUICK, Expect(
        session="readme",
        means="install into ~/puretor from the wheelhouse, then tor-client until C tor's "
        "NOROUTE bootstrap warning (no route out of the sealed namespace), then Ctrl-C",
        cmds=(Cmd("~/puretor/bin/tor-client", until=r"Problem bootstrapping\. Stuck at 5% "
                  r"\(conn\).*NOROUTE", ok=(0,), timeout=120, grace=30),),
        output=(r"Opened Socks listener connection \(ready\) on 127\.0\.0\.1:9050",
                r"Clean shutdown finished"),
        check=_no_traceback,
        needs=("root", "wheelhouse"),
    )),
    Step("inline", "README.md", "~/puretor/bin/tor-client --verify-install", Expect(
        session="readme", means="the installed tor-client's crypto self-test: exit status 0",
        after_previous=True,
    )),
    Step("inline", "README.md", "sudo apt-get install -y tor curl", Expect(
        session="readme", means="as root without sudo: installed already, exit status 0",
        needs=("root",),
    )),
    Step("block", "README.md", ". ~/puretor/bin/activate", Expect(
        session="readme",
        means="the whole block: up, tor-client in the background, the 1 MiB download, down",
        after_previous=True,
        output=(r"^ready in [\d.]+s", r"stopped \d+ processes and 1 run with `exec`"),
        check=_downloaded_1mib,
    )),
    Step("block", "docs/guide.md", "python3 -m venv ~/puretor && ~/puretor/bin/pip install "
         "'.[httpx]'", Expect(
        session="guide", means="the library and httpx into ~/puretor, from the wheelhouse",
        verify="~/puretor/bin/python -c 'import httpx, puretor.httpx_transport'",
        needs=("wheelhouse",),
    )),
    Step("block", "docs/guide.md", ". ~/puretor/bin/activate", Expect(
        session="guide",
        means="up, my_program.py (the guide's setup block + raw-stream example) inside, down",
        after_previous=True,
        cwd="/tmp/my-project",
        files={"/tmp/my-project/my_program.py": my_program},
        output=(r"^ready in [\d.]+s", r"^b'HTTP/1\.1 200 OK'", r"^exit relay: ",
                r"^stopped \d+ processes"),
    )),
    # -- session "bench": blocks for a network that is already up -----------------------------
    Step("setup", "setup", "a network up (README: \"a network from puretor-testnet up\")", Expect(
        session="bench",
        means="`puretor-testnet up --dir /tmp/ptnet` (README)",
        run_as="puretor-testnet up --dir /tmp/ptnet",
        output=(r"^ready in",),
    )),
    Step("block", "docs/guide.md", GUIDE_DAEMON, Expect(
        session="bench",
        means="with the torrc the guide shows (+ DirAuthority lines) written: tor-client in "
        "the background, curl through it gets the target's page (the session's final `down` "
        "stops the daemon); alongside the benchmark block",
        files={"/tmp/ptnet/puretor.torrc": guide_torrc},
        output=(r"puretor testnet",),
        alongside=True,
    )),
    Step("inline", "README.md", 'sudo "$(command -v puretor-testnet)"', Expect(
        session="bench",
        means="the prefix the README gives for the commands: here with `status`",
        run_as='sudo "$(command -v puretor-testnet)" status --dir /tmp/ptnet',
        output=(r"auth1\s+pid \d+\s+running",),
        needs=("root",),
    )),
    Step("block", "README.md", "python3 -m puretor.bench", Expect(
        session="bench",
        means="both full benchmarks until their first run starts, then Ctrl-C; the quick "
        "one to completion (exit 0, a verdict for every target)",
        cmds=(
            Cmd("python3 -m puretor.bench", until=BENCH_RUN, ok=CTRL_C_OK, timeout=300),
            Cmd("python3 -m puretor.bench --netdir /tmp/ptnet --json bench.json",
                until=BENCH_RUN, ok=CTRL_C_OK),
            Cmd("python3 -m puretor.bench --quick --netdir /tmp/ptnet", ok=(0, 1), timeout=300),
        ),
        check=_quick_bench,
    )),
    # -- session "perf": docs/performance.md -------------------------------------------------
    Step("block", "docs/performance.md", "python -m puretor.testnet up --dir /tmp/tn", Expect(
        session="perf",
        means="up; both benchmarks until their first run starts, then Ctrl-C; the cell "
        "microbenchmark to completion (the network stays up, as the block leaves it)",
        cmds=(
            Cmd("python -m puretor.bench --netdir /tmp/tn --json bench.json",
                until=BENCH_RUN, ok=CTRL_C_OK),
            Cmd("python -m puretor.bench --netdir /tmp/tn --profile cprofile",
                until=BENCH_RUN, ok=CTRL_C_OK),
            Cmd("python bench/bench_cells.py", timeout=300),
        ),
        output=(r"^ready in", r"^\s+inbound\s+receive_data"),
    )),
    Step("block", "docs/performance.md", MEMORY_BENCH, Expect(
        session="perf",
        means="the memory benchmark on the network the block above left up, until its first "
        "scenario is measured, then Ctrl-C (its clients stop with it)",
        cmds=(Cmd(MEMORY_BENCH, until=r"^  single: peak [\d.]+ MiB", ok=CTRL_C_OK, timeout=600),),
        output=(r"^  single: peak [\d.]+ MiB",),
    )),
    Step("block", "docs/performance.md", MUX_BENCH, Expect(
        session="perf",
        means="EWMA against FIFO on the network the perf block left up, until the first "
        "round is measured, then Ctrl-C",
        cmds=(Cmd(MUX_BENCH, until=r"^round 1 EWMA:", ok=CTRL_C_OK, timeout=300),),
        output=(r"^round 1 EWMA: 1 upload MB/s [\d.]+",),
    )),
    # -- session "fuzz": the campaign of docs/hardening.md, then fuzz/README.md --------------
    Step("setup", "setup", "atheris, as the campaign used it", Expect(
        session="fuzz",
        means="`pip install atheris` (fuzz/README.md) from the wheelhouse before the campaign",
        run_as="pip install atheris",
        needs=("atheris",),
    )),
    Step("block", "docs/hardening.md", HARDENING_CAMPAIGN, Expect(
        session="fuzz",
        means="up, then the campaign until libFuzzer's first status line, then Ctrl-C",
        cmds=(Cmd("python -m fuzz.run all --runs 1000000 --seconds 600 --captured /tmp/tn",
                  until=LIBFUZZER_STATUS, watch=f"{REPO}/fuzz/logs/socks.log", ok=CTRL_C_OK,
                  timeout=180),),
        output=(r"^ready in", r"^== socks \(atheris, \d+ corpus files\)"),
        needs=("atheris",),
    )),
    Step("block", "fuzz/README.md", "pip install atheris", Expect(
        session="fuzz",
        means="install; --list; each campaign until libFuzzer's first status line, then "
        "Ctrl-C; --reproduce of a crash file to completion",
        cmds=(
            Cmd("python -m fuzz.run socks --seconds 120", until=LIBFUZZER_STATUS,
                watch=f"{REPO}/fuzz/logs/socks.log", ok=CTRL_C_OK, timeout=120),
            Cmd("python -m fuzz.run all --seconds 600", until=LIBFUZZER_STATUS,
                watch=f"{REPO}/fuzz/logs/socks.log", ok=CTRL_C_OK, timeout=120),
            Cmd("python -m fuzz.run consensus --runs 1000000", until=LIBFUZZER_STATUS,
                watch=f"{REPO}/fuzz/logs/consensus.log", ok=CTRL_C_OK, timeout=120),
            Cmd("python -m fuzz.run all --seconds 600 --captured /tmp/tn",
                until=LIBFUZZER_STATUS, watch=f"{REPO}/fuzz/logs/socks.log", ok=CTRL_C_OK,
                timeout=120),
        ),
        # DIR: "captured C tor documents": those of the campaign's network just above.
        placeholders={"--captured DIR": "--captured /tmp/tn"},
        files={f"{REPO}/fuzz/crashes/http/crash-0123456789abcdef": fuzz_reproducer},
        output=(r"^no contract violation$",),
        check=_fuzz_targets_listed,
        needs=("atheris",),
    )),
    # -- session "realistic": the realistic network profile (README, guide, performance.md) ---
    Step("inline", "README.md", REALISTIC_UP, Expect(
        session="realistic",
        means="up with the realistic profile; `status` lists each relay's delay and cap and "
        "the stalling relay; then down (the performance.md block brings up its own)",
        run_as=f"{REALISTIC_UP}\npuretor-testnet status --dir /tmp/ptnet\n"
        "puretor-testnet down --dir /tmp/ptnet",
        output=(r"^ready in", r"network profile: realistic \(seed 1\)",
                r"^\s+stall1\s.*STALLS after 20 s", r"^\s+problems: none",
                r"^stopped \d+ processes"),
    )),
    Step("block", "docs/performance.md", PERF_REALISTIC, Expect(
        session="realistic",
        means="up with the realistic profile; the benchmark until its first run starts, then "
        "Ctrl-C (the session's final `down` stops the network)",
        cmds=(Cmd("python -m puretor.bench --netdir /tmp/tn --json bench-realistic.json",
                  until=BENCH_RUN, ok=CTRL_C_OK),),
        output=(r"^ready in", r"network profile: realistic", r"realistic profile"),
    )),
    # -- session "doors": the guide's HTTPTunnelPort, DNSPort and MetricsPort block ------------
    Step("block", "docs/guide.md", "puretor-testnet up --dir /tmp/ptnet", Expect(
        session="doors",
        means="up; tor-client with the three ports in the background; curl --proxytunnel, "
        "git clone and pip download through HTTPTunnelPort (the files they fetch are checked), "
        "dig A and -x through DNSPort, a metrics scrape; down (pip gets the network's index, "
        "not the wheelhouse; an inherited GIT_SSL_CAINFO would override the block's "
        "http.sslCAInfo, as a reader's shell has none it is unset)",
        prelude="unset PIP_NO_INDEX PIP_FIND_LINKS GIT_SSL_CAINFO",
        output=(r"^ready in", r"(?m)^198\.18\.0\.10$", r"(?m)^[a-z.]*target\.test\.$",
                r'puretor_port_bytes_total\{direction="to_client",port_type="http_tunnel"\} '
                r"[1-9]", r"^stopped \d+ processes"),
        check=_doors_fetched,
        needs=("doors-tools",),
    )),
    Step("inline", "docs/guide.md", "git -c http.proxy=http://127.0.0.1:9080 …",
         Same("docs/guide.md: puretor-testnet up --dir /tmp/ptnet", "the block's git line, "
              "abbreviated")),
    Step("inline", "docs/guide.md", "pip download --proxy http://127.0.0.1:9080 …",
         Same("docs/guide.md: puretor-testnet up --dir /tmp/ptnet", "the block's pip line, "
              "abbreviated")),
    # -- session "misc": single commands from the prose ---------------------------------------
    Step("inline", "README.md", "tor-client --list-torrc-options", Expect(
        session="misc", means="exit 0, and it lists every option of README's table",
        check=_readme_options_listed,
    )),
    Step("inline", "README.md", "tor-client --hash-password 'my password'", Expect(
        session="misc", means="prints a HashedControlPassword value: 16: and 58 hex digits",
        output=(r"^16:[0-9A-F]{58}$",),
    )),
    Step("inline", "docs/api.md", "tor-client --verify-install", Expect(
        session="misc", means="the crypto self-test: exit status 0",
    )),
    Step("inline", "docs/guide.md", "tor-client --verify-config", Expect(
        session="misc", means="checks the (default) configuration: exit status 0",
    )),
    Step("inline", "docs/api.md", "python scripts/gen_api_docs.py", Expect(
        session="misc", means="regenerates docs/api.md (in the sandbox's copy): exit status 0",
        check=_api_docs_written,
    )),
    Step("inline", "README.md", "pip install '.[test,httpx]'", Expect(
        session="misc",
        means="in a fresh virtual environment (\"an environment\"), from the wheelhouse",
        prelude="python3 -m venv ~/test-env && . ~/test-env/bin/activate",
        verify="~/test-env/bin/python -c 'import puretor, pytest, hypothesis, httpx, socksio'",
        needs=("wheelhouse", "test-wheels"),
    )),
    Step("inline", "docs/hardening.md", "python -m puretor.testnet up", Expect(
        session="misc",
        means="up in the default directory (testnet-run in the checkout's copy), "
        "then `down` at the end of the session",
        output=(r"^ready in",),
    )),
    # -- session "pytest": docs/hardening.md's reproduce column ---------------------------------
    Step("inline", "docs/hardening.md",
         "pytest tests/integration/test_zz_hardening_faults.py -k authority -s",
         _collect("pytest tests/integration/test_zz_hardening_faults.py -k authority -s")),
    Step("inline", "docs/hardening.md", "… -k stalls -s",
         _collect("pytest tests/integration/test_zz_hardening_faults.py -k stalls -s")),
    Step("inline", "docs/hardening.md", "… -k expired -s",
         _collect("pytest tests/integration/test_zz_hardening_faults.py -k expired -s")),
    Step("inline", "docs/hardening.md", "… -k expired",
         _collect("pytest tests/integration/test_zz_hardening_faults.py -k expired")),
    Step("inline", "docs/hardening.md", "… -k is_a_file",
         _collect("pytest tests/integration/test_zz_hardening_faults.py -k is_a_file")),
    Step("inline", "docs/hardening.md", "… -k read_only",
         _collect("pytest tests/integration/test_zz_hardening_faults.py -k read_only")),
    Step("inline", "docs/hardening.md", "… -k full_disk -s",
         _collect("pytest tests/integration/test_zz_hardening_faults.py -k full_disk -s")),
    Step("inline", "docs/hardening.md",
         "pytest tests/integration/test_engine_conflux.py -k losing_a_leg",
         _collect("pytest tests/integration/test_engine_conflux.py -k losing_a_leg")),
    Step("inline", "docs/hardening.md", "… -k falls_back",
         _collect("pytest tests/integration/test_engine_conflux.py -k falls_back")),
    Step("inline", "docs/hardening.md", "pytest tests/integration/test_zz_hardening_load.py -s",
         _collect("pytest tests/integration/test_zz_hardening_load.py -s")),
    Step("inline", "docs/hardening.md",
         "pytest tests/integration/test_zz_hardening_security.py -k refuses -s",
         _collect("pytest tests/integration/test_zz_hardening_security.py -k refuses -s")),
    Step("inline", "docs/hardening.md", "… test_zz_hardening_security.py -k safe_defaults",
         _collect("pytest tests/integration/test_zz_hardening_security.py -k safe_defaults")),
    Step("inline", "docs/hardening.md", "… -k non_loopback",
         _collect("pytest tests/integration/test_zz_hardening_security.py -k non_loopback")),
    Step("inline", "docs/hardening.md", "pytest tests/integration",
         _collect("pytest tests/integration")),
    Step("inline", "docs/hardening.md", "pytest tests/unit/test_hardening_failclosed.py",
         _unit("pytest tests/unit/test_hardening_failclosed.py")),
    Step("inline", "docs/hardening.md", "pytest tests/unit/test_hardening_defaults.py",
         _unit("pytest tests/unit/test_hardening_defaults.py")),
    Step("inline", "docs/hardening.md", "pytest tests/unit/core/test_core_conflux.py",
         _unit("pytest tests/unit/core/test_core_conflux.py")),
    # -- session "heavy" ------------------------------------------------------------------------
    Step("inline", "docs/hardening.md", "PURETOR_HEAVY=1 PURETOR_HEAVY_SECONDS=300 pytest "
         "tests/integration/test_zz_hardening_load.py -s", Expect(
        session="heavy",
        means="the heavy load test until all 1000 connections are open, then Ctrl-C "
        "and once more after 15 s (the first only cancels its asyncio load); pytest then "
        "stops its daemon and network: exit status 2 (interrupted)",
        cmds=(Cmd("PURETOR_HEAVY=1 PURETOR_HEAVY_SECONDS=300 pytest "
                  "tests/integration/test_zz_hardening_load.py -s",
                  # 2: pytest reports the interruption; -2: the second Ctrl-C found it
                  # already finishing (during its summary), as a user's can.
                  until=r"\bload: \d+ connections open after", ok=(2, -2), timeout=300,
                  again=15, grace=120),),
    )),
    # -- not run again: covered by another entry, or not a command ----------------------------
    Step("block", "README.md", "bash .ci/run", ThisRun(
        "CI runs exactly this; it runs `python3 -m pytest`, this suite, this test included "
        "(checked: `bash -n .ci/run`, and that it runs the README's test command)")),
    Step("inline", "README.md", "python3 -m pytest", ThisRun(
        "the README's test command: what .ci/run runs, i.e. this suite (checked: .ci/run "
        "runs it, and pytest's testpaths include this file)")),
    Step("inline", "README.md", "python3 -m puretor.bench",
         Same("README.md: python3 -m puretor.bench", "the first line of the benchmark block")),
    Step("inline", "docs/performance.md", "python -m puretor.bench",
         Same("README.md: python3 -m puretor.bench", "the same benchmark (python = the "
              "environment's python3)")),
    Step("inline", "docs/guide.md", REALISTIC_UP,
         Same(f"README.md: `{REALISTIC_UP}`", "the same command")),
    Step("inline", "docs/api.md", "tor-client -f PATH",
         Same(f"docs/guide.md: {GUIDE_DAEMON}", "PATH is a placeholder (a docstring)")),
    Step("inline", "docs/errors.md", "tor-client --verify-install",
         Same("docs/api.md: `tor-client --verify-install`", "the same command")),
    Step("inline", "docs/hardening.md", "python -m fuzz.run all --seconds 600",
         Same("fuzz/README.md: pip install atheris", "a line of fuzz/README.md's block")),
    Step("inline", "docs/hardening.md", "python -m puretor.testnet up --dir /tmp/tn && python -m "
         "fuzz.run all --runs 1000000 --seconds 600 --captured /tmp/tn",
         Same(f"docs/hardening.md: {HARDENING_CAMPAIGN}", "the Reproduce block of the "
              "campaign: the same two commands")),
    Step("inline", "README.md", "ip netns", NotACommand(
        "names the mechanism (iproute2's named namespaces), not an instruction")),
    Step("inline", "README.md", "openssl speed", NotACommand(
        "names what the benchmark's micro section runs itself")),
    Step("inline", "docs/guide.md", "python run", NotACommand("a fence's info string")),
    Step("inline", "docs/guide.md", "puretor-testnet exec", NotACommand(
        "names the subcommand of the block above it")),
    Step("inline", "docs/hardening.md", "ip netns exec", NotACommand(
        "names how the repeat figures entered the namespace; not a complete command")),
    Step("inline", "docs/hardening.md", "python -c <hook> -f torrc", NotACommand(
        "describes what a test helper runs (<hook> is code in test_zz_hardening_helpers.py)")),
    Step("inline", "docs/performance.md", "perf record -g", NotACommand(
        "names the profiler used; not a complete command")),
    Step("inline", "docs/performance.md", "pip install", NotACommand(
        "\"as `pip install` does\": names pip's behaviour")),
]  # fmt: skip
STEPS = {s.id: s for s in PLAN}
assert len(STEPS) == len(PLAN), "duplicate entries in PLAN"
RUN_STEPS = [s for s in PLAN if isinstance(s.entry, Expect) and s.kind != "setup"]
SESSIONS: dict[str, list[Step]] = {}
for _step in PLAN:
    if isinstance(_step.entry, Expect):
        SESSIONS.setdefault(_step.entry.session, []).append(_step)


# --- requirements ----------------------------------------------------------------------------------


def _real_root() -> bool:
    """Root of the machine, not uid 0 of a user namespace (the suite's own, when not root)."""
    try:
        first = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return os.geteuid() == 0 and first[:2] == ["0", "0"]


def _wheelhouse() -> Path | None:
    value = os.environ.get("PURETOR_WHEELHOUSE")
    return Path(value) if value and Path(value).is_dir() else None


def _has_wheels(*names: str) -> bool:
    wh = _wheelhouse()
    return wh is not None and all(any(wh.glob(f"{n}-*.whl")) for n in names)


_NEEDS: dict[str, tuple[Callable[[], bool], str]] = {
    "root": (_real_root, "the block uses sudo: it runs only as root"),
    "wheelhouse": (
        lambda: _wheelhouse() is not None,
        "PURETOR_WHEELHOUSE is not set (pip runs offline here; .ci/run makes the wheelhouse)",
    ),
    "test-wheels": (
        lambda: _has_wheels("pytest", "hypothesis", "ruff", "mypy"),
        "the wheelhouse has no wheels of the test extras (.ci/run: pip wheel '.[test,httpx]')",
    ),
    "doors-tools": (
        lambda: all(shutil.which(t) for t in ("dig", "git")),
        "dig and git run the guide's DNSPort and HTTPTunnelPort recipes (apt-get install "
        "dnsutils git)",
    ),
    "atheris": (
        lambda: _has_wheels("atheris"),
        "the wheelhouse has no atheris wheel (.ci/run: pip download --only-binary=:all: "
        "atheris); the fuzz commands' progress comes from atheris",
    ),
}


def missing(need: str) -> str | None:
    """Why `need` is not met here, or None."""
    if need in ("test-wheels", "atheris") and _wheelhouse() is None:
        need = "wheelhouse"
    met, why = _NEEDS[need]
    return None if met() else why


def environment_problem() -> str | None:
    tools = ["unshare", "nsenter", "ip", "mount", "bash", "tor", "curl"]
    absent = [t for t in tools if subprocess.run(["which", t], capture_output=True).returncode]
    if absent:
        return f"missing programs: {', '.join(absent)}"
    if os.geteuid() != 0:
        return "the sandboxes need root (mount and network namespaces)"
    return None


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} - CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


# --- running a step -------------------------------------------------------------------------------


@dataclass
class Result:
    skipped: str | None = None
    problems: list[str] = field(default_factory=list)
    output: str = ""
    seconds: float = 0.0


def wrap_command(code: str, cmd: Cmd, name: str) -> str:
    """`code` with `cmd` (at a command position) run through docs_cmd.py."""
    pattern = re.compile(
        r"(?m)(^|&&|;|\|\|)([ \t]*)"
        + re.escape(cmd.command)
        + r"(?=[ \t]*(?:#.*)?$|[ \t]*(?:&&|;|\|\|))"
    )
    found = pattern.findall(code)
    assert len(found) == 1, f"{cmd.command!r} occurs {len(found)} times as a command in the block"
    opts = ["--name", name, "--ok", ",".join(map(str, cmd.ok)), "--timeout", str(cmd.timeout)]
    opts += ["--grace", str(cmd.grace)]
    if cmd.again:
        opts += ["--again", str(cmd.again)]
    if cmd.until:
        opts += ["--until", cmd.until]
    if cmd.watch:
        opts += ["--watch", cmd.watch]
    wrapper = '"$DOCS_PYTHON" -I "$DOCS_CMD" ' + " ".join(map(shlex.quote, opts)) + " -- "
    words = cmd.command.split(" ")
    n = 0
    while n < len(words) and _ASSIGNMENT.fullmatch(words[n]):
        n += 1  # VAR=value words stay in front: bash puts them in the wrapper's environment
    wrapped = " ".join([*words[:n], wrapper + " ".join(words[n:])])
    return pattern.sub(lambda m: m.group(1) + m.group(2) + wrapped, code)


def block_env(home: str, cwd: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "XDG_")) and k not in ("TMPDIR", "PWD", "OLDPWD")
    }
    bindir = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(":")[:1] != [bindir]:  # as if the test environment is active
        env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}"
    env["HOME"] = home
    wh = _wheelhouse()
    if wh is not None:
        env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wh))
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_PROGRESS_BAR="off")
    env.update(DOCS_PYTHON=sys.executable, DOCS_CMD=str(CMD_WRAPPER), DOCS_CWD=cwd)
    return env


def script_for(step: Step, code: str, exp: Expect) -> str:
    head = ['mkdir -p -- "$DOCS_CWD" "$HOME"', 'cd -- "$DOCS_CWD"']
    if _real_root():
        head.append('sudo() { "$@"; }  # root: the leading sudo is dropped')
    if exp.prelude:
        head.append(exp.prelude)
    offset = "\n".join(head).count("\n") + 2  # the lines before the code, with the trap's
    head.insert(0, f"trap 'echo \"##docs-block: exit status $? at line $((LINENO - {offset}))"
                   f" of {step.file} ({step.kind})\" >&2' ERR")  # fmt: skip
    return "\n".join(head) + "\n" + code


def run_step(
    step: Step, sandbox: Sandbox, home: str, log: Path, blocks: dict[str, Block]
) -> Result:
    exp = step.entry
    assert isinstance(exp, Expect)
    code = blocks[step.id].code if step.kind == "block" else (exp.run_as or step.key)
    for placeholder, value in exp.placeholders.items():
        assert placeholder in code, f"placeholder {placeholder!r} is no longer in the block"
        code = code.replace(placeholder, value)
    names = {}
    for i, cmd in enumerate(exp.cmds, 1):
        names[f"cmd{i}"] = cmd.command
        code = wrap_command(code, cmd, f"cmd{i}")
    for path, content in exp.files.items():
        sandbox.write_file(path, content(sandbox))
    env = block_env(home, exp.cwd)
    with log.open("a", encoding="utf-8") as f:
        f.write(f"\n===== {step.id}\n")
    run = sandbox.run(script_for(step, code, exp), env=env, timeout=exp.timeout, log=log)
    result = Result(output=run.output, seconds=run.seconds)
    if run.rc != 0:
        result.problems.append(f"the script's exit status: {run.rc}")
    reports: dict[str, dict[str, Any]] = {}
    for m in re.finditer(r"^##docs-cmd (\{.*\})$", run.output, re.M):
        report = json.loads(m.group(1))
        report["command"] = names[report["name"]]
        reports[report["name"]] = report
    for name, command in names.items():
        report = reports.get(name)
        if report is None:
            result.problems.append(f"{command!r} never ran")
        elif report["problem"]:
            result.problems.append(f"{command!r}: {report['problem']}")
    for regex in exp.output:
        if not re.search(regex, run.output, re.M):
            result.problems.append(f"no output line matching {regex!r}")
    if exp.verify:
        verified = sandbox.run(f'cd -- "$DOCS_CWD"\n{exp.verify}', env=env, timeout=120, log=log)
        if verified.rc != 0:
            result.problems.append(f"afterwards, `{exp.verify}` failed:\n{verified.output}")
    if exp.check is not None:
        try:
            exp.check(Ctx(run, sandbox, reports))
        except (AssertionError, OSError, ValueError, KeyError) as exc:
            result.problems.append(f"check {exp.check.__name__}: {exc}")
    return result


class DocsRuns:
    """The sessions, run in background threads; each test waits for its own step."""

    def __init__(self, logdir: Path, wanted: set[str]) -> None:
        self.logdir = logdir
        self.results: dict[str, Result] = {}
        self.closed: dict[str, Closed | str] = {}
        self.done: dict[str, threading.Event] = {s.id: threading.Event() for s in PLAN}
        self.sessions_done = {name: threading.Event() for name in SESSIONS}
        self.blocks = {f"{b.file}: {b.key}": b for b in shell_blocks()}
        self.wanted = wanted
        self.seconds: dict[str, float] = {}
        self.sandboxes: dict[str, Sandbox] = {}
        self.aborting = threading.Event()

    def abort(self) -> None:
        """The test run ends (or was interrupted): stop the steps still running."""
        self.aborting.set()
        for sandbox in list(self.sandboxes.values()):
            sandbox.interrupt()

    def start(self) -> ThreadPoolExecutor:
        order = ["bench", "readme", "guide", "heavy", "perf", "fuzz", "misc", "pytest"]
        order += [s for s in SESSIONS if s not in order]
        pool = ThreadPoolExecutor(MAX_PARALLEL_SESSIONS, thread_name_prefix="docs-session")
        for name in order:
            if any(s.id in self.wanted for s in SESSIONS[name]):
                pool.submit(self._session, name)
            else:
                self._finish_session(name, "not selected")
        return pool

    def _set(self, step: Step, result: Result) -> None:
        self.results[step.id] = result
        self.done[step.id].set()

    def _finish_session(self, name: str, closed: Closed | str) -> None:
        self.closed[name] = closed
        for step in SESSIONS[name]:
            if not self.done[step.id].is_set():
                self._set(step, Result(problems=[f"not run: session {name} ended ({closed})"]))
        self.sessions_done[name].set()

    def _step(self, step: Step, sandbox: Sandbox, home: str, log: Path) -> Result:
        try:
            result = run_step(step, sandbox, home, log, self.blocks)
        except Exception:  # a broken check or helper: the step says so
            result = Result(problems=[traceback.format_exc()])
        self._set(step, result)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"\n===== {result.seconds:.1f} s: {step.id}\n")
        return result

    def _session(self, name: str) -> None:
        time.sleep(HEAD_START.get(name, OTHERS_START_AFTER))
        t0 = time.monotonic()
        steps = SESSIONS[name]
        home = f"/tmp/puretor-docs-home.{name}"
        log = self.logdir / f"{name}.log"
        closed: Closed | str = "did not start"
        try:
            sandbox = Sandbox(
                name,
                overlays=[REPO, Path("/tmp"), Path(sys.prefix)],
                env=block_env(home, "/"),
            )
            self.sandboxes[name] = sandbox
            if self.aborting.is_set():
                raise RuntimeError("the test run ended before this session started")
            sandbox.start()
            lanes: list[threading.Thread] = []
            try:
                blocked: str | None = None
                skipped: str | None = None
                for step in steps:
                    exp = step.entry
                    assert isinstance(exp, Expect)
                    why = "; ".join(dict.fromkeys(r for n in exp.needs if (r := missing(n))))
                    if exp.after_previous and skipped and not why:
                        why = f"it builds on a step that was skipped: {skipped}"
                    if why:
                        skipped = skipped or why
                        self._set(step, Result(skipped=why))
                        continue
                    if self.aborting.is_set():
                        blocked = "not run: the test run ended or was interrupted"
                    if blocked:
                        self._set(step, Result(problems=[blocked]))
                        continue
                    if exp.alongside:
                        lane = threading.Thread(
                            target=self._step, args=(step, sandbox, home, log.with_suffix(".2.log"))
                        )
                        lane.start()
                        lanes.append(lane)
                        continue
                    result = self._step(step, sandbox, home, log)
                    if step.kind == "setup" and result.problems:
                        blocked = f"not run: setup {step.key!r} failed: {result.problems}"
                        blocked += "\n" + result.output[-3000:]
            finally:
                for lane in lanes:
                    lane.join()
                closed = sandbox.close(
                    network_dirs=NETWORK_DIRS, python=sys.executable, env=block_env(home, "/")
                )
        except BaseException:  # a broken test helper: every step of the session says why
            closed = "error: " + traceback.format_exc()
        finally:
            self.seconds[name] = time.monotonic() - t0
            self._finish_session(name, closed)
            with (self.logdir / f"{name}.log").open("a", encoding="utf-8") as f:
                f.write(f"\n===== session {name}: {self.seconds[name]:.1f} s; closed: {closed}\n")


@pytest.fixture(scope="module")
def docs_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DocsRuns]:
    problem = environment_problem()
    if problem:
        skip_or_fail(problem)
    # Only the sessions of the selected tests run (all of them for the leftover check).
    mine = [
        item
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.module is request.module
    ]
    wanted: set[str] = {
        str(item.callspec.params["step_id"])
        for item in mine
        if hasattr(item, "callspec") and "step_id" in item.callspec.params
    }
    if any(item.originalname == "test_no_process_outlives_its_session" for item in mine):
        wanted |= {s.id for s in RUN_STEPS}
    runs = DocsRuns(tmp_path_factory.mktemp("docs-commands"), wanted)
    pool = runs.start()
    try:
        yield runs
    finally:
        runs.abort()  # a no-op after a full run; after Ctrl-C it ends the sessions promptly
        pool.shutdown(wait=True)
        print(f"\ndocs sessions: {runs.seconds} (logs in {runs.logdir})")


# --- tests ----------------------------------------------------------------------------------------


def test_every_documented_command_has_an_expectation() -> None:
    blocks = {(b.file, b.key): b for b in shell_blocks()}
    assert len(blocks) == len(shell_blocks()), "two blocks with the same first command line"
    known_blocks = {(s.file, s.key) for s in PLAN if s.kind == "block"}
    new = [f"{f}:{b.line}: {k}" for (f, k), b in blocks.items() if (f, k) not in known_blocks]
    assert not new, f"add an expectation for this new command block: {new}"
    gone = sorted(known_blocks - set(blocks))
    assert not gone, f"expectations for blocks that are no longer in the docs: {gone}"

    spans = inline_commands()
    known_spans = {(s.file, s.key) for s in PLAN if s.kind == "inline"}
    new_spans = [
        f"{f}:{line}: `{k}`" for (f, k), line in spans.items() if (f, k) not in known_spans
    ]
    assert not new_spans, f"add an expectation for this new inline command: {new_spans}"
    gone_spans = sorted(known_spans - set(spans))
    assert not gone_spans, f"expectations for inline commands no longer in the docs: {gone_spans}"
    for step in PLAN:
        if isinstance(step.entry, Same):
            target = STEPS.get(step.entry.as_)
            assert target is not None and isinstance(target.entry, Expect), step.entry.as_


def test_ci_entry_point_is_what_the_readme_says() -> None:
    """``bash .ci/run`` (README) is this CI run, and ``python3 -m pytest`` its test command."""
    ci = (REPO / ".ci/run").read_text(encoding="utf-8")
    syntax = subprocess.run(["bash", "-n", str(REPO / ".ci/run")], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    assert re.search(r"(?m)^\s*python3 -m pytest\s*$", ci), (
        ".ci/run no longer runs the README's test command"
    )
    assert "PURETOR_WHEELHOUSE" in ci, ".ci/run no longer makes the wheelhouse this test uses"
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'testpaths = \["tests"\]', pyproject), "python3 -m pytest: which tests?"


@pytest.mark.slow
@pytest.mark.testnet
@pytest.mark.parametrize("step_id", [s.id for s in RUN_STEPS], ids=[s.id for s in RUN_STEPS])
def test_documented_command(step_id: str, docs_runs: DocsRuns) -> None:
    step = STEPS[step_id]
    assert isinstance(step.entry, Expect)
    assert docs_runs.done[step_id].wait(880), f"{step_id}: still running"
    result = docs_runs.results[step_id]
    if result.skipped:
        skip_or_fail(result.skipped)
    if result.problems:
        problems = "\n  ".join(result.problems)
        pytest.fail(
            f"{step.id}\n(run means: {step.entry.means})\n  {problems}\n"
            f"--- output ({result.seconds:.0f} s, last 6000 characters) ---\n"
            f"{result.output[-6000:]}",
            pytrace=False,
        )


@pytest.mark.slow
@pytest.mark.testnet
def test_no_process_outlives_its_session(docs_runs: DocsRuns) -> None:
    for event in docs_runs.sessions_done.values():
        assert event.wait(880)
    problems = {}
    for name, closed in docs_runs.closed.items():
        if isinstance(closed, str):
            if closed != "not selected":
                problems[name] = closed
        elif closed.left_running:
            problems[name] = f"left running (ended by the test): {closed.left_running}"
    assert not problems, problems
