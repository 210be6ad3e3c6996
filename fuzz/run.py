"""Run fuzz targets: ``python -m fuzz.run TARGET... --seconds N`` (or ``--runs N``).

    python -m fuzz.run --list
    python -m fuzz.run socks --seconds 120
    python -m fuzz.run all --seconds 600 --captured testnet-run/captured
    python -m fuzz.run consensus --runs 1000000 --engine builtin
    python -m fuzz.run http --reproduce fuzz/crashes/http/crash-0123456789abcdef

Engines: ``atheris`` (libFuzzer, coverage-guided; ``pip install atheris``) runs
the target in a child process and parses libFuzzer's statistics; ``builtin``
(`fuzz.engine`) is a pure-Python mutator with line-edge coverage from
``sys.settrace``.  ``auto`` picks atheris when it imports.

Seeds are generated at each start (see `fuzz.seeds`) into ``fuzz/corpus/TARGET``,
where the engines also keep what they evolve; ``--captured DIR`` adds captured
real documents.  Every distinct contract violation is saved with its traceback
under ``fuzz/crashes/TARGET/`` (libFuzzer's own crash/timeout/oom artifacts land
there too).  Findings listed in `fuzz.known_issues` (reported to their owners) are
marked as known.  Exit status: 1 if anything not already known was found, else 0.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fuzz.harness import CORPUS_DIR, CRASH_DIR, FUZZ_DIR, REPO, Harness, Target, reproduce
from fuzz.known_issues import is_known
from fuzz.seeds import CAPTURED_ENV
from fuzz.targets import TARGETS, load

LOG_DIR = FUZZ_DIR / "logs"
MAX_RESTARTS = 20  # libFuzzer stops at a timeout/oom; restart it this often at most


@dataclass
class Result:
    target: str
    engine: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # the engine's own CPU time: a rate that shared machines don't skew
    inputs: int = 0
    coverage: str = "-"  # libFuzzer "cov"/"ft", or traced edges
    corpus: int = 0
    findings: list[str] = field(default_factory=list)
    new: int = 0  # findings not in fuzz.known_issues

    def add(self, finding: str, signature: str) -> None:
        known = is_known(self.target, signature)
        self.findings.append(finding + (" [known, reported]" if known else ""))
        self.new += not known

    @property
    def per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    @property
    def per_cpu_second(self) -> float:
        return self.inputs / self.cpu_seconds if self.cpu_seconds else 0.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def prepare_corpus(target: Target, fresh: bool) -> tuple[Path, Path | None]:
    """Write the seeds into the target's corpus directory; also its dictionary file."""
    corpus = CORPUS_DIR / target.name
    if fresh and corpus.exists():
        for old in corpus.iterdir():
            old.unlink()
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in target.seeds():
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)
    dict_path = None
    if target.dictionary:
        dict_path = CORPUS_DIR / f"{target.name}.dict"
        lines = ['"' + "".join(f"\\x{b:02x}" for b in tok) + '"' for tok in target.dictionary]
        dict_path.write_text("\n".join(lines) + "\n")
    return corpus, dict_path


# -- atheris / libFuzzer ----------------------------------------------------------------

_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)")
_UNITS = re.compile(r"stat::number_of_executed_units: (\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_FINDING = re.compile(r"^FUZZ-FINDING (\S+) (\S+) :: (.*)$")


def run_atheris(
    target: Target,
    corpus: Path,
    dict_path: Path | None,
    *,
    seconds: float | None,
    runs: int | None,
    timeout: int,
    stop_on_crash: bool,
) -> Result:
    result = Result(target.name, "atheris")
    crash_dir = CRASH_DIR / target.name
    crash_dir.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(exist_ok=True)
    log_path = LOG_DIR / f"{target.name}.log"
    env = dict(os.environ, PURETOR_FUZZ_KEEP_GOING="0" if stop_on_crash else "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    start = time.monotonic()
    cpu_start = _children_cpu()
    restarts = 0
    with log_path.open("w") as log:
        while True:
            args = [
                sys.executable,
                "-m",
                "fuzz._atheris_main",
                target.name,
                str(corpus),
                f"-max_len={target.max_len}",
                f"-timeout={timeout}",
                "-rss_limit_mb=4096",
                f"-artifact_prefix={crash_dir}/",
                "-print_final_stats=1",
            ]
            if dict_path is not None:
                args.append(f"-dict={dict_path}")
            if seconds is not None:
                left = int(seconds - (time.monotonic() - start))
                if left <= 0:
                    break
                args.append(f"-max_total_time={left}")
            if runs is not None:
                args.append(f"-runs={runs - result.inputs}")
            units = 0
            proc = subprocess.Popen(
                args, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=log, text=True
            )
            assert proc.stderr is not None
            for line in proc.stderr:
                log.write(line)
                if m := _STATUS.match(line):
                    units = int(m.group(1))
                    result.coverage = f"cov {m.group(2)} ft {m.group(3)}"
                    result.corpus = int(m.group(4))
                elif m := _UNITS.search(line):
                    units = int(m.group(1))
                elif m := _ARTIFACT.search(line):
                    kind = Path(m.group(1)).name.split("-")[0]  # crash, timeout, oom, slow-unit
                    result.add(f"libFuzzer {kind} artifact {m.group(1)}", kind)
                elif m := _FINDING.match(line):
                    result.add(f"{m.group(1)} {m.group(2)} :: {m.group(3)}", m.group(3))
                    print(f"  [{target.name}] {m.group(1)}: {m.group(3)}", flush=True)
            code = proc.wait()
            result.inputs += units
            done = runs is not None and result.inputs >= runs
            if code == 0 or done or stop_on_crash or restarts >= MAX_RESTARTS:
                break
            restarts += 1  # a timeout/oom/native crash: go on with the rest of the time
    result.seconds = time.monotonic() - start
    result.cpu_seconds = _children_cpu() - cpu_start
    return result


# -- the built-in engine ------------------------------------------------------------------


def run_builtin(
    target: Target,
    corpus: Path,
    *,
    seconds: float | None,
    runs: int | None,
    stop_on_crash: bool,
    coverage: bool,
    timeout: int,
) -> Result:
    from fuzz.engine import fuzz

    harness = Harness(target, keep_going=not stop_on_crash)
    seeds = [p.read_bytes() for p in sorted(corpus.iterdir())]
    cpu_start = time.process_time()
    try:
        stats = fuzz(
            harness,
            seeds,
            seconds=seconds,
            runs=runs,
            coverage=coverage,
            corpus_dir=corpus,
            dictionary=target.dictionary,
            timeout=timeout,
        )
    except Exception:  # noqa: BLE001 - --stop-on-crash: already recorded by the harness
        stats = None
    result = Result(target.name, "builtin" + ("" if coverage else " (no coverage)"))
    result.cpu_seconds = time.process_time() - cpu_start
    if stats is not None:
        result.seconds, result.inputs, result.corpus = stats.seconds, stats.inputs, stats.corpus
        result.coverage = f"edges {stats.edges}" if stats.edges is not None else "-"
    else:
        result.inputs = harness.inputs
    for f in harness.findings.values():
        result.add(f"{f.kind} {f.path} :: {f.signature} (x{f.count})", f.signature)
    return result


# -- command line -------------------------------------------------------------------------


def _table(results: list[Result]) -> str:
    head = ("target", "engine", "seconds", "inputs", "inputs/s", "per cpu-s", "coverage", "corpus")
    rows = [(*head, "new/found")]
    for r in results:
        rows.append(
            (
                r.target,
                r.engine,
                f"{r.seconds:.0f}",
                f"{r.inputs:,}",
                f"{r.per_second:,.0f}",
                f"{r.per_cpu_second:,.0f}",
                r.coverage,
                str(r.corpus),
                f"{r.new}/{len(r.findings)}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", help="target names, or 'all'")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--seconds", type=float, help="time budget per target")
    parser.add_argument("--runs", type=int, help="input budget per target")
    parser.add_argument("--engine", choices=("auto", "atheris", "builtin"), default="auto")
    parser.add_argument("--no-coverage", action="store_true", help="builtin: skip tracing")
    parser.add_argument("--captured", action="append", default=[], type=Path, metavar="DIR")
    parser.add_argument("--timeout", type=int, default=10, help="per-input timeout (seconds)")
    parser.add_argument("--stop-on-crash", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="drop the evolved corpus first")
    parser.add_argument("--reproduce", type=Path, metavar="FILE", help="run one input")
    args = parser.parse_args(argv)

    if args.list:
        for name in TARGETS:
            print(f"{name:15} {load(name).doc.strip().splitlines()[0]}")
        return 0
    names = list(TARGETS) if args.targets == ["all"] else args.targets
    if not names:
        parser.error("name a target (or 'all'); --list shows them")
    if args.reproduce:
        tb = reproduce(load(names[0]), args.reproduce.read_bytes())
        print(tb or "no contract violation")
        return 1 if tb else 0
    if args.seconds is None and args.runs is None:
        parser.error("give --seconds or --runs")
    if args.captured:
        os.environ[CAPTURED_ENV] = os.pathsep.join(str(p.resolve()) for p in args.captured)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _atheris_available() else "builtin"

    results = []
    for name in names:
        target = load(name)
        corpus, dict_path = prepare_corpus(target, args.fresh)
        print(f"== {name} ({engine}, {sum(1 for _ in corpus.iterdir())} corpus files)", flush=True)
        if engine == "atheris":
            result = run_atheris(
                target,
                corpus,
                dict_path,
                seconds=args.seconds,
                runs=args.runs,
                timeout=args.timeout,
                stop_on_crash=args.stop_on_crash,
            )
        else:
            result = run_builtin(
                target,
                corpus,
                seconds=args.seconds,
                runs=args.runs,
                stop_on_crash=args.stop_on_crash,
                coverage=not args.no_coverage,
                timeout=args.timeout,
            )
        results.append(result)
        print("\n".join(_table([result]).splitlines()), flush=True)
        for finding in result.findings:
            print(f"   {finding}")
    print()
    print(_table(results))
    return 1 if any(r.new for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
