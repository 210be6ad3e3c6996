"""Contract violations found by fuzzing and reported, but not yet fixed by their owners.

The CI smoke test tolerates these (it checks that the harnesses work, not that
other people's modules are fixed), and ``tests/unit/test_fuzz_regressions.py``
carries each one as a strict xfail: when the owner fixes it the xfail turns
into a failure, and the entry here comes out.  Patterns match `Harness`
signatures without line numbers, so they survive unrelated edits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownIssue:
    target: str
    pattern: str  # regex over the signature "ExcType at file.py:LINE (function)"
    summary: str


# Empty: everything found so far is fixed (see tests/unit/test_fuzz_regressions.py).
# An entry looks like
#   KnownIssue("http", r"ValueError at http\.py:\d+ \(_parse_head\)", "dir/http.py: int() of ...")
KNOWN_ISSUES: tuple[KnownIssue, ...] = ()


def is_known(target: str, signature: str) -> bool:
    return any(
        issue.target == target and re.search(issue.pattern, signature) for issue in KNOWN_ISSUES
    )
