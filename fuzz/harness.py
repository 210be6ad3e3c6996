"""What every fuzz target shares: the contract check, crash de-duplication, reproducers.

A target is a function ``one_input(data: bytes) -> None`` that feeds ``data`` to one
parser and catches *only* the exceptions that parser documents for bad input
(``RemoteProtocolError``, ``CertsError``, ``DocumentError``, ``OnionError``...).
Anything else escaping it is a bug: IndexError, struct.error, UnicodeDecodeError,
AssertionError, RecursionError, a ValueError from ``int()``, or an
`InvariantViolation` raised by the target's own checks (a buffer that grew without
bound, a round trip that does not hold).

`Harness` wraps a target for an engine (atheris/libFuzzer or the built-in one). It
saves the first input of every distinct crash under ``fuzz/crashes/<target>/`` with
its traceback beside it, and — unless told to stop on the first crash — keeps going,
so one run reports every shallow bug instead of the same one over and over.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (puretor itself is imported by the targets, after instrumentation)
    from puretor.proto.events import EventQueue
    from puretor.proto.streams import Stream

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
CRASH_DIR = FUZZ_DIR / "crashes"
CORPUS_DIR = FUZZ_DIR / "corpus"
PURETOR_SRC = str(REPO / "src" / "puretor")

# One input taking longer than this is recorded as a "slow" finding (a likely
# quadratic path or a hang-in-waiting); libFuzzer's -timeout catches real hangs.
SLOW_SECONDS = 1.0

# Fixed clock for every target: certificates and documents are checked against it.
NOW = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC


class InvariantViolation(Exception):
    """A harness check failed: the parser accepted input but broke its own promise."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantViolation(message)


class CheckingSink:
    """What a stream's owner is for the targets that drive circuits (the events of its
    streams reach it through `deliver_events`): it only checks what it is given."""

    def stream_connected(self, connected: object) -> None:
        pass

    def stream_data(self, data: bytes) -> None:
        # (The circuit may join the DATA of several cells into one call.)
        check(isinstance(data, bytes | bytearray | memoryview), f"stream got {type(data)}")

    def stream_resolved(self, answers: object) -> None:
        pass

    def stream_ended(self, reason: int, end: object, message: str) -> None:
        pass

    def stream_writable(self) -> None:
        pass


def deliver_events(events: EventQueue) -> None:
    """What the asyncio layer does after each call into the core: every queued event to
    the stream's owner (a `CheckingSink`); tunnel and channel events are dropped."""
    from puretor.proto import events as ev

    while events:
        for event in events.drain():
            if isinstance(event, ev.StreamData):
                event.stream.owner.stream_data(event.data)
            elif isinstance(event, ev.StreamConnected):
                event.stream.owner.stream_connected(event.connected)
            elif isinstance(event, ev.StreamEnded):
                event.stream.owner.stream_ended(event.reason, event.end, event.message)
            elif isinstance(event, ev.StreamResolved):
                event.stream.owner.stream_resolved(event.answers)
            elif isinstance(event, ev.StreamWritable):
                event.stream.owner.stream_writable()


STREAM_ACTIONS = 4  # the action kinds below 4 are `stream_action`'s


def stream_action(stream: Stream, kind: int, arg: int) -> None:
    """What an application does to an open stream, for the targets that drive circuits:
    write (1-8 cells' worth), close, abort, or pause/resume delivery."""
    if kind == 0:
        stream.write(bytes(498 * (arg % 8 + 1)))
    elif kind == 1:
        stream.close()
    elif kind == 2:
        stream.abort()
    elif stream.delivery_paused:
        stream.resume_delivery()
    else:
        stream.pause_delivery()


@dataclass(frozen=True)
class Target:
    name: str
    one_input: Callable[[bytes], None]
    seeds: Callable[[], Iterable[bytes]]  # minimal valid messages, real and synthetic documents
    # Kinds of captured document (see `fuzz.seeds.sniff`) this target takes as seeds.
    capture_kinds: tuple[str, ...] = ()
    max_len: int = 4096  # libFuzzer -max_len; documents need more than messages
    dictionary: tuple[bytes, ...] = ()  # tokens worth splicing in (keywords, magic numbers)
    doc: str = ""


def split_chunks(data: bytes, selector: int) -> Iterator[bytes]:
    """Cut ``data`` into pieces whose sizes ``selector`` (one input byte) decides.

    0 means "all at once"; otherwise a PRNG seeded by the selector picks sizes of
    1..(selector % 64 + 1) bytes, so partial reads at every boundary get tried.
    """
    if selector == 0 or len(data) <= 1:
        yield data
        return
    rng = random.Random(selector)
    top = selector % 64 + 1
    pos = 0
    while pos < len(data):
        n = rng.randint(1, top)
        yield data[pos : pos + n]
        pos += n


def _signature(exc: BaseException) -> str:
    """Type and innermost project frame: two inputs with the same one are the same bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(PURETOR_SRC)] or frames[-1:]
    where = ""
    if ours:
        f = ours[-1]
        where = f" at {Path(f.filename).name}:{f.lineno} ({f.name})"
    return f"{type(exc).__name__}{where}"


@dataclass
class Finding:
    kind: str  # "crash", "slow" or "timeout"
    signature: str
    path: Path
    count: int = 1


@dataclass
class Harness:
    """A target wrapped for an engine: times inputs, records and de-duplicates crashes."""

    target: Target
    keep_going: bool = True
    slow_seconds: float = SLOW_SECONDS
    crash_dir: Path = CRASH_DIR
    quiet: bool = False
    findings: dict[str, Finding] = field(default_factory=dict)
    inputs: int = 0

    def __call__(self, data: bytes) -> None:
        self.inputs += 1
        start = time.perf_counter()
        try:
            self.target.one_input(data)
        except Exception as exc:  # noqa: BLE001 - anything escaping the target is a bug
            self._record("crash", data, _signature(exc), traceback.format_exc())
            if not self.keep_going:
                raise
            return
        elapsed = time.perf_counter() - start
        if elapsed > self.slow_seconds:
            sig = f"slow input ({elapsed:.1f} s, {len(data)} bytes)"
            # One slow finding per size decade, or a slow parser floods the directory.
            self._record("slow", data, f"slow:{len(str(len(data)))}", sig)

    def record_timeout(self, data: bytes, seconds: float) -> None:
        """An engine interrupted this input after ``seconds``."""
        self._record("timeout", data, f"timeout:{len(str(len(data)))}", f"over {seconds} s")

    def _record(self, kind: str, data: bytes, signature: str, details: str) -> None:
        known = self.findings.get(signature)
        if known is not None:
            known.count += 1
            return
        out = self.crash_dir / self.target.name
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{kind}-{hashlib.sha1(data).hexdigest()[:16]}"
        path.write_bytes(data)
        path.with_suffix(".txt").write_text(f"{signature}\n\n{details}")
        self.findings[signature] = Finding(kind, signature, path)
        if not self.quiet:
            # One greppable line per new finding; the runner collects these.
            print(f"FUZZ-FINDING {kind} {path} :: {signature}", file=sys.stderr, flush=True)


def reproduce(target: Target, data: bytes) -> str | None:
    """Run one input; return the traceback if it violates the contract, else None."""
    try:
        target.one_input(data)
    except Exception:  # noqa: BLE001
        return traceback.format_exc()
    return None
