"""The directory layer (sans-I/O): documents, verification, the NetDir view, bootstrap state.

Modules:
    netdoc       dir-spec §1.2 tokenizer shared by all documents
    authcert     authority key certificates (§3.1)
    consensus    the microdesc consensus (§3.4.1, §3.9.2)
    microdesc    microdescriptors (§3.3)
    verify       signature / timeliness checks (§1.3, §5.1)
    authorities  DirAuthority / FallbackDir syntax and the built-in lists
    build        consensus + microdescs -> NetDir
    netdir       the NetDir / Relay records everything else reads
    state        DirState: what to fetch next, bootstrap progress, freshness
    http         HTTP/1.0 over BEGIN_DIR: requests, incremental response parser
    cache        the on-disk cache (blocking file I/O: run it in a thread)
    synth        signed synthetic documents for tests and benchmarks

The names below are importable from ``puretor.dir`` directly (loaded lazily so
that importing ``puretor.dir.netdir`` stays cheap).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_netdir": "build",
    "DirState": "state",
    "DirRequest": "state",
    "BootstrapPhase": "state",
    "BootstrapStatus": "state",
    "DirCache": "cache",
    "HttpResponseParser": "http",
    "HttpResponse": "http",
    "build_request": "http",
    "Authority": "authorities",
    "FallbackDir": "authorities",
    "DEFAULT_AUTHORITIES": "authorities",
    "default_fallbacks": "authorities",
    "parse_dir_authority_line": "authorities",
    "parse_fallback_dir_line": "authorities",
    "verify_consensus": "verify",
    "parse_consensus": "consensus",
    "parse_microdescs": "microdesc",
    "parse_authcerts": "authcert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'puretor.dir' has no attribute {name!r}")
    return getattr(importlib.import_module(f"puretor.dir.{module}"), name)
