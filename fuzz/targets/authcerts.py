"""Authority key certificates (`puretor.dir.authcert.parse_authcerts`, `AuthCert.verify`).

Input: one or more concatenated certificates.  Every parsed certificate is then
verified at the fixed `NOW` (RSA signatures, cross-cert, validity).  Only
``DocumentError`` may escape.
"""

from __future__ import annotations

import contextlib

from fuzz.harness import NOW, Target, check
from fuzz.seeds import documents
from fuzz.targets._docs import AUTHCERT_TOKENS, NETDOC_TOKENS
from puretor.dir.authcert import parse_authcerts
from puretor.errors import DocumentError


def one_input(data: bytes) -> None:
    try:
        certs = parse_authcerts(data)
    except DocumentError:
        return
    for cert in certs:
        check(len(cert.fingerprint) == 20, "fingerprint length")
        with contextlib.suppress(DocumentError):
            cert.verify(NOW)


def seeds() -> list[bytes]:
    return documents("authcert")


TARGET = Target(
    name="authcerts",
    one_input=one_input,
    seeds=seeds,
    max_len=16384,
    dictionary=NETDOC_TOKENS + AUTHCERT_TOKENS,
    doc=__doc__ or "",
)
