"""Seed inputs, made at run time rather than committed.

Three sources, all optional but the first:

* minimal valid messages built with puretor's own encoders (in each target);
* documents: the real C tor / Arti documents under ``tests/unit/*/data``, the
  synthetic signed network of `puretor.dir.synth`, and any directory of captured
  documents given with ``--captured DIR`` (or ``PURETOR_FUZZ_CAPTURED``, a
  ``:``-separated list).  Captured files are sorted by content (`sniff`), so the
  directory layout and file names do not matter;
* a valid relay certificate chain from ``tests/unit/proto/certgen.py``.

Large documents are also offered trimmed (a consensus with its first few router
entries, the first few microdescriptors), because libFuzzer is fastest on small
inputs and truncates anything over ``-max_len``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from fuzz.harness import NOW, REPO

CAPTURED_ENV = "PURETOR_FUZZ_CAPTURED"
MAX_CAPTURED_FILE = 16 * 1024 * 1024
_DATA_DIRS = (REPO / "tests" / "unit" / "dir" / "data", REPO / "tests" / "unit" / "hs" / "data")

# What a document is, from how it starts (after C tor's "@..." cache annotations).
_KINDS = (
    (b"network-status-version", "consensus"),
    (b"dir-key-certificate-version", "authcert"),
    (b"onion-key", "microdesc"),
    (b"hs-descriptor", "hs_descriptor"),
    (b"create2-formats", "hs_inner"),
    (b"desc-auth-type", "hs_layer1"),
    (b"HTTP/1.", "http"),
    (b"router ", "routerdesc"),  # only the netdoc tokenizer reads these
    (b"extra-info ", "extrainfo"),
)


def sniff(data: bytes) -> str | None:
    """The kind of a captured document, or None if it is none we fuzz."""
    body = data
    while body.startswith(b"@") or body.startswith(b"\n"):
        cut = body.find(b"\n")
        if cut < 0:
            return None
        body = body[cut + 1 :]
    for prefix, kind in _KINDS:
        if body.startswith(prefix):
            return kind
    return None


def captured_dirs() -> list[Path]:
    raw = os.environ.get(CAPTURED_ENV, "")
    return [Path(p) for p in raw.split(os.pathsep) if p]


def _files(dirs: list[Path]) -> Iterator[bytes]:
    for d in dirs:
        if not d.is_dir():
            continue
        for path in sorted(d.rglob("*")):
            if path.is_file() and path.stat().st_size <= MAX_CAPTURED_FILE:
                yield path.read_bytes()


@functools.cache
def _synth() -> dict[str, list[bytes]]:
    """A small signed synthetic network (a few seconds: RSA keys are generated)."""
    from puretor.dir.synth import synth_network

    net = synth_network(12, seed=7, n_authorities=3)
    return {
        "consensus": [net.consensus],
        "microdesc": [net.microdescs],
        "authcert": [net.certs, *(a.cert for a in net.authorities)],
    }


def documents(kind: str, *, synth: bool = True) -> list[bytes]:
    """Every document of ``kind`` from the repo's test data, synth and captured dirs."""
    out = [d for d in _files(list(_DATA_DIRS)) if sniff(d) == kind]
    if synth:
        out += _synth().get(kind, [])
    out += [d for d in _files(captured_dirs()) if sniff(d) == kind]
    trimmed = [t for d in out for t in _trim(kind, d)]
    return _unique(out + trimmed)


def all_documents() -> list[bytes]:
    kinds = {k for _, k in _KINDS}
    return _unique([d for k in sorted(kinds) for d in documents(k)])


def _unique(items: list[bytes]) -> list[bytes]:
    seen: set[bytes] = set()
    out = []
    for item in items:
        key = hashlib.sha1(item).digest()
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


_R_LINE = re.compile(rb"^r ", re.M)
_FOOTER = re.compile(rb"^(directory-footer|directory-signature)", re.M)
_ONION_KEY = re.compile(rb"^onion-key", re.M)


def _trim(kind: str, doc: bytes, keep: int = 3) -> list[bytes]:
    """Smaller variants of a big document (still parseable, signatures aside)."""
    if len(doc) < 8192:
        return []
    if kind == "consensus":
        routers = [m.start() for m in _R_LINE.finditer(doc)]
        footer = _FOOTER.search(doc, routers[-1] if routers else 0)
        if len(routers) > keep and footer:
            return [doc[: routers[keep]] + doc[footer.start() :]]
    if kind == "microdesc":
        starts = [m.start() for m in _ONION_KEY.finditer(doc)]
        if len(starts) > keep:
            return [doc[: starts[keep]]]
    return []


# -- relay certificate chains -----------------------------------------------------


def _certgen():  # noqa: ANN202 - the test helper module
    path = str(REPO / "tests" / "unit" / "proto")
    if path not in sys.path:
        sys.path.append(path)
    import certgen

    return certgen


@functools.cache
def certs_payload(tls_cert_sha256: bytes | None = None) -> tuple[bytes, bytes]:
    """A valid CERTS payload at `NOW` and the SHA-256 of the TLS cert it certifies.

    With ``tls_cert_sha256`` the type-5 link cert certifies that digest instead of
    the chain's own TLS certificate (the channel target fakes its TLS layer).
    """
    cg = _certgen()
    chain = cg.make_relay_chain(NOW)
    digest = tls_cert_sha256 or hashlib.sha256(chain.tls_cert_der).digest()
    if tls_cert_sha256 is not None:
        exp = int(NOW // cg.HOUR) + 48
        chain.cert_signing_link = cg.make_ed25519_cert(
            5, digest, chain.ed_signing_key, exp, key_type=3, include_signed_with=False
        )
    return chain.certs_payload(), digest
