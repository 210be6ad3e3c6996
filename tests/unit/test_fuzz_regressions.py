"""Regression tests for contract violations found by the fuzz targets (``fuzz/``).

The contract: hostile input makes a parser raise only its documented error
(RemoteProtocolError, CertsError, DocumentError, OnionError), never IndexError,
ValueError from ``int()``, a third-party exception, or unbounded work.

Each test holds a minimised reproducer and checks the parser's own error (and,
for the certs one, that the fuzz target it was found with is clean on it).  A
bug reported to an owner who has not fixed it yet goes in as a strict
``pytest.mark.xfail(strict=True, raises=<the escaping exception>)`` with a
matching `fuzz.known_issues` entry; both come out with the fix.  All of the
ones below are fixed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
for _p in (str(_REPO), str(_REPO / "tests" / "unit" / "proto")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import certgen  # noqa: E402
from fuzz.harness import NOW, reproduce  # noqa: E402
from fuzz.targets import load  # noqa: E402

from puretor.dir.authcert import parse_authcerts  # noqa: E402
from puretor.dir.http import HttpResponseParser  # noqa: E402
from puretor.errors import (  # noqa: E402
    CertsError,
    DirectoryError,
    DocumentError,
    OnionError,
    RemoteProtocolError,
)
from puretor.hs.address import parse_onion_address  # noqa: E402
from puretor.hs.descriptor import HsDescriptorOuter, parse_inner, parse_outer  # noqa: E402
from puretor.proto.certs import validate_relay_certs  # noqa: E402
from puretor.proto.relaymsg import RelayCommand  # noqa: E402

DATA = _REPO / "tests" / "unit" / "dir" / "data"


# -- proto/certs.py (fixed) -----------------------------------------------------------------


def test_certs_x509_unknown_version_is_certs_error() -> None:
    """cryptography raises x509.InvalidVersion (not a ValueError) for X.509 version 4.

    Found by the ``certs`` target: it escaped validate_relay_certs, and
    Channel.receive_data (which catches ProtocolError and ValueError) would have
    let it out of the link layer.
    """
    chain = certgen.make_relay_chain(NOW)
    der = chain.cert_rsa_id
    version = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (v3)
    assert version in der
    chain.cert_rsa_id = der.replace(version, bytes.fromhex("a003020103"), 1)
    with pytest.raises(CertsError, match="not a usable X.509 certificate"):
        validate_relay_certs(chain.certs, chain.tls_cert_der, NOW)
    digest = __import__("hashlib").sha256(chain.tls_cert_der).digest()
    assert reproduce(load("certs"), b"\x02" + digest + chain.certs_payload()) is None


# -- dir/http.py ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.0 \xb200 OK\r\n\r\n",  # the fuzzer's find: latin-1 superscript two
        b"HTTP/1.0 200 OK\r\nContent-Length: 1\xb9\r\n\r\n",
        b"HTTP/1.0 " + b"2" * 5000 + b" OK\r\n\r\n",  # over int()'s 4300-digit limit
    ],
    ids=["status-superscript", "content-length-superscript", "status-5000-digits"],
)
def test_http_non_ascii_or_huge_numbers(head: bytes) -> None:
    parser = HttpResponseParser()
    with pytest.raises((RemoteProtocolError, DirectoryError)):
        parser.feed(head + b"body")
        parser.finish()


# -- dir/authcert.py --------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["700\xb90", "7" * 5000], ids=["superscript", "5000-digits"])
def test_authcert_dir_address_port(port: str) -> None:
    doc = (DATA / "arti-dirmgr-cert-5696.txt").read_bytes()
    bad = re.sub(rb"dir-address [^\n]*", f"dir-address 127.0.0.1:{port}".encode("latin-1"), doc)
    with pytest.raises(DocumentError):
        parse_authcerts(bad)


# -- hs/address.py ----------------------------------------------------------------------------


def test_onion_address_with_base32_padding() -> None:
    host = "qe4xodvipuyzl7ks3mwtzos5olfgocn7dwkbeg7toseadnapn5optfa="
    assert len(host) == 56
    with pytest.raises(OnionError):
        parse_onion_address(host)


# -- hs/descriptor.py -------------------------------------------------------------------------


def _outer_for(signing_key: bytes) -> HsDescriptorOuter:
    return HsDescriptorOuter(bytes(32), signing_key, 0, 180, 1, b"")


def test_hs_descriptor_lifetime_with_5000_digits() -> None:
    body = b"hs-descriptor 3\ndescriptor-lifetime " + b"1" * 5000 + b"\nsignature x\n"
    with pytest.raises(OnionError):
        parse_outer(body, blinded_key=bytes(32), now=NOW)


def test_hs_inner_create2_formats_with_5000_digits() -> None:
    with pytest.raises(OnionError):
        parse_inner("create2-formats " + "2" * 5000 + "\n", _outer_for(bytes(32)), NOW)


def test_hs_inner_flow_control_huge_range() -> None:
    # Run where a hang or an OOM cannot take the test run down with it.
    code = textwrap.dedent(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from puretor.errors import OnionError
        from puretor.hs.descriptor import HsDescriptorOuter, parse_inner
        outer = HsDescriptorOuter(bytes(32), bytes(32), 0, 180, 1, b"")
        text = "create2-formats 2\\nflow-control 1-99999999999999 31\\n"
        try:
            parse_inner(text, outer, 1750000000.0)
        except OnionError:
            pass
        """
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        pytest.fail("parse_inner ran for 20 s on one flow-control line")
    if proc.returncode != 0:
        pytest.fail(f"parse_inner failed on one flow-control line:\n{proc.stderr[-1500:]}")


# -- proto/conflux.py (fixed) ---------------------------------------------------------------


def test_conflux_sequence_numbers_overlapping_across_legs() -> None:
    """Found by the ``conflux`` target: a SWITCH put leg 1's cells at 5-7 while leg 0
    went on to deliver 4-6.  Leg 1's cells could then never be delivered - the set
    stalled quietly with them held.  Now the overlap is a protocol violation that
    closes the set."""
    from fuzz.targets import conflux

    c = conflux
    data = RelayCommand.DATA
    program = (
        c._cell(0, RelayCommand.CONNECTED, 1, b"")
        + c._cell(0, data, 1, b"a")
        + c._deliver_op(0)  # delivered: 1-2
        + c._switch(1, 4)
        + c._cell(1, data, 1, b"", full=True) * 3
        + c._deliver_op(1)  # leg 1: 5-7, held
        + c._cell(0, data, 1, b"b")
        + c._cell(0, data, 1, b"", full=True) * 3
        + c._deliver_op(0)  # leg 0: 3, then 4-6 - overlapping 5-7
    )
    world = conflux._setup()
    conflux.run_program(world, program)
    reasons = [leg.circ.tunnel.closed_reason for leg in world.legs]
    assert all(r is not None for r in reasons)
    assert "overlap across legs" in (reasons[0] or reasons[1]).message  # type: ignore[union-attr]
    assert world.cfx.queued_cells == 0
