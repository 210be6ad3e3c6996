"""A small pure-Python mutation fuzzer: the fallback when atheris is not installed.

Same idea as libFuzzer, much slower: keep a corpus, mutate an input from it
(bit flips, byte sets, "interesting" integers, inserts, deletes, duplicated
ranges, splices with another input, dictionary tokens), run it, and keep it if it
reached new code.  "New code" is an edge ``(previous line, line)`` inside
``src/puretor``, seen through ``sys.settrace`` — an honest but costly signal
(a few times slower than running untraced), so it can be switched off
(``coverage=False``) for smoke runs that only need the harness to keep working.

Deterministic for a given ``rng_seed`` and input budget (``runs``).
"""

from __future__ import annotations

import hashlib
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from fuzz.harness import PURETOR_SRC, Harness

INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0xFFFFFFFF)


class InputTimeout(BaseException):
    """Raised by the alarm when one input runs too long (a BaseException, so that a
    target's ``except Exception`` cannot swallow it)."""


def _alarm(signum: int, frame: object) -> None:
    raise InputTimeout


class EdgeCoverage:
    """Edges between consecutive traced lines in puretor's own source."""

    def __init__(self) -> None:
        self.edges: set[int] = set()
        self._current: set[int] = set()
        self._prev = 0
        self._ours: dict[Any, bool] = {}

    def _local(self, frame: FrameType, event: str, arg: object) -> Callable[..., Any]:
        if event == "line":
            loc = hash((frame.f_code, frame.f_lineno))
            self._current.add(self._prev * 31 ^ loc)
            self._prev = loc
        return self._local

    def _global(self, frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        code = frame.f_code
        ours = self._ours.get(code)
        if ours is None:
            ours = self._ours[code] = code.co_filename.startswith(PURETOR_SRC)
        return self._local if ours else None

    def run(self, fn: Callable[[bytes], None], data: bytes) -> int:
        """Run ``fn(data)`` traced; return how many edges were new."""
        self._current = set()
        self._prev = 0
        sys.settrace(self._global)
        try:
            fn(data)
        finally:
            sys.settrace(None)
        new = self._current - self.edges
        self.edges |= new
        return len(new)


@dataclass
class Stats:
    inputs: int = 0
    seconds: float = 0.0
    edges: int | None = None
    corpus: int = 0

    @property
    def per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


class Mutator:
    def __init__(self, rng: random.Random, dictionary: Iterable[bytes], max_len: int) -> None:
        self.rng = rng
        self.dictionary = list(dictionary)
        self.max_len = max_len

    def mutate(self, data: bytes, other: bytes) -> bytes:
        buf = bytearray(data)
        for _ in range(self.rng.choice((1, 1, 2, 3, 4, 8))):
            self._one(buf, other)
        return bytes(buf[: self.max_len])

    def _one(self, buf: bytearray, other: bytes) -> None:
        rng = self.rng
        n = len(buf)
        choice = rng.randrange(10)
        pos = rng.randrange(n + 1)
        if choice == 0 and n:
            buf[pos % n] ^= 1 << rng.randrange(8)
        elif choice == 1 and n:
            buf[pos % n] = rng.randrange(256)
        elif choice == 2 and n:
            width = rng.choice((1, 2, 4))
            value = rng.choice(INTERESTING) & ((1 << 8 * width) - 1)
            buf[pos : pos + width] = value.to_bytes(width, rng.choice(("big", "little")))
        elif choice == 3:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif choice == 4 and n:
            del buf[pos : pos + rng.randint(1, max(1, n // 8))]
        elif choice == 5 and n:
            start = rng.randrange(n)
            piece = buf[start : start + rng.randint(1, 64)]
            buf[pos:pos] = piece
        elif choice == 6 and other:
            start = rng.randrange(len(other))
            piece = other[start : start + rng.randint(1, 256)]
            if rng.random() < 0.5:
                buf[pos:pos] = piece
            else:
                buf[pos : pos + len(piece)] = piece
        elif choice == 7 and self.dictionary:
            token = rng.choice(self.dictionary)
            if rng.random() < 0.5:
                buf[pos:pos] = token
            else:
                buf[pos : pos + len(token)] = token
        elif choice == 8 and n:  # nudge an ASCII digit, or a byte by a small delta
            i = pos % n
            buf[i] = (buf[i] + rng.choice((-1, 1, -10, 10))) % 256
        elif choice == 9 and n > 1:  # truncate
            del buf[rng.randrange(1, n) :]


def fuzz(
    harness: Harness,
    seeds: Iterable[bytes],
    *,
    seconds: float | None = None,
    runs: int | None = None,
    coverage: bool = True,
    rng_seed: int = 0,
    corpus_dir: Path | None = None,
    max_len: int | None = None,
    dictionary: Iterable[bytes] = (),
    timeout: float | None = None,
) -> Stats:
    """Run ``harness`` for ``seconds`` or ``runs`` inputs (whichever ends first).

    ``timeout`` (main thread only) interrupts an input that runs longer and records
    it as a "timeout" finding.  Python checks for the alarm between bytecodes, so
    it cannot stop a single C-level call (a huge ``set.update(range(...))``).
    """
    rng = random.Random(rng_seed)
    max_len = max_len or harness.target.max_len
    cov = EdgeCoverage() if coverage else None

    def run(data: bytes) -> int:
        if timeout is not None:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            if cov is not None:
                return cov.run(harness, data)
            harness(data)
            return 0
        except InputTimeout:
            harness.record_timeout(data, timeout or 0.0)
            return 0
        finally:
            if timeout is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)

    old_handler = signal.signal(signal.SIGALRM, _alarm) if timeout is not None else None
    corpus = [s[:max_len] for s in seeds] or [b""]
    stats = Stats()
    start = time.perf_counter()
    deadline = start + seconds if seconds is not None else None

    def budget_left() -> bool:
        if runs is not None and stats.inputs >= runs:
            return False
        return deadline is None or time.perf_counter() < deadline

    try:
        for data in list(corpus):  # the seeds themselves first
            if not budget_left():
                break
            run(data)
            stats.inputs += 1
        mutator = Mutator(rng, dictionary, max_len)
        while budget_left():
            data = mutator.mutate(rng.choice(corpus), rng.choice(corpus))
            new = run(data)
            stats.inputs += 1
            if new:
                corpus.append(data)
                if corpus_dir is not None:
                    (corpus_dir / hashlib.sha1(data).hexdigest()).write_bytes(data)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGALRM, old_handler)
    stats.seconds = time.perf_counter() - start
    stats.edges = len(cov.edges) if cov else None
    stats.corpus = len(corpus)
    return stats
