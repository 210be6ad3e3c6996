"""The microdesc consensus parser (`puretor.dir.consensus.parse_consensus`).

Input: the document.  Only ``DocumentError`` may escape.  Checked besides: the
signed range lies inside the input and ends with ``directory-signature ``, and a
parsed consensus answers its own questions (digests, lifetime, liveness).
"""

from __future__ import annotations

from fuzz.harness import NOW, Target, check
from fuzz.seeds import documents
from fuzz.targets._docs import CONSENSUS_TOKENS, NETDOC_TOKENS
from puretor.dir.consensus import parse_consensus
from puretor.errors import DocumentError


def one_input(data: bytes) -> None:
    try:
        cons = parse_consensus(data)
    except DocumentError:
        return
    lo, hi = cons.signed_range
    check(0 <= lo < hi <= len(data), f"signed range {lo}..{hi}")
    check(cons.signed_bytes.rstrip(b" \t").endswith(b"directory-signature"), "signed range end")
    for alg in ("sha1", "sha256", "unknown"):
        cons.digest(alg)
    cons.lifetime  # noqa: B018 - a property with checks
    cons.is_live(NOW)
    cons.is_reasonably_live(NOW)


def seeds() -> list[bytes]:
    return documents("consensus")


TARGET = Target(
    name="consensus",
    one_input=one_input,
    seeds=seeds,
    max_len=32768,
    dictionary=NETDOC_TOKENS + CONSENSUS_TOKENS,
    doc=__doc__ or "",
)
