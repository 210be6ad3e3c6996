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


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        "http",
        r"ValueError at http\.py:\d+ \(_parse_head\)",
        "dir/http.py: int() of a str.isdigit() status/Content-Length ('2\u00b3', 5000 digits)",
    ),
    KnownIssue(
        "authcerts",
        r"ValueError at authcert\.py:\d+ \(_parse_one\)",
        "dir/authcert.py: int() of a str.isdigit() dir-address port",
    ),
    KnownIssue(
        "onion_address",
        r"IndexError at address\.py:\d+ \(parse_onion_address\)",
        "hs/address.py: a 56-char label with base32 '=' padding decodes to < 35 bytes",
    ),
    KnownIssue(
        "hs_descriptor",
        r"ValueError at descriptor\.py:\d+ \((_uint|parse_inner)\)",
        "hs/descriptor.py: int() of more than 4300 digits",
    ),
    KnownIssue(
        "hs_descriptor",
        r"(MemoryError|timeout|slow)",
        "hs/descriptor.py: flow-control 1-10**12 builds a set of 10**12 ints (OOM/hang)",
    ),
)


def is_known(target: str, signature: str) -> bool:
    return any(
        issue.target == target and re.search(issue.pattern, signature) for issue in KNOWN_ISSUES
    )
