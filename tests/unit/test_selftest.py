"""puretor.selftest: the known-answer self-test of cryptography, PyNaCl and hashlib.

It must pass on the installed versions (the suite runs on the newest and on the
declared minimum versions), and a broken primitive must give a failed report - never
an exception - whose message names the dependency and its version.  Breakage is
simulated with monkeypatch: cryptography 51's refusal of overlapping buffers, wrong
Ed25519 arithmetic, PyNaCl 1.5's lenient point check, a panic, an import error.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import sys
from typing import Any

import cryptography
import nacl
import nacl.bindings
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher

from puretor import selftest
from puretor.errors import BootstrapError, TorError
from puretor.hs import address
from puretor.proto import relaycrypto
from puretor.proto.relaycrypto import OnionCrypto


@pytest.fixture(autouse=True)
def _no_cached_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without a cached report and leaves the real one untouched."""
    monkeypatch.setattr(selftest, "_cached_report", None)


def _failed(report: selftest.SelfTestReport) -> set[str]:
    return {result.name for result in report.failures}


# -- the installed versions ---------------------------------------------------------------


def test_passes_on_the_installed_versions() -> None:
    report = selftest.run_self_test()
    assert report.ok, str(report)
    assert len(report.results) == len(selftest.CHECKS) == 15
    assert {r.dependency for r in report.results} == {"cryptography", "PyNaCl", "hashlib/OpenSSL"}
    assert report.error_message() is None
    report.raise_if_failed()
    assert selftest.verify_dependencies() is report


def test_the_result_is_cached_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    first = selftest.run_self_test()
    assert selftest.run_self_test() is first
    # A primitive that breaks later does not change the cached answer...
    monkeypatch.setattr(hashlib, "blake2b", _panics)
    assert selftest.run_self_test() is first
    assert selftest.verify_dependencies() is first
    # ... until it is asked for afresh, which also replaces the cached report.
    fresh = selftest.run_self_test(fresh=True)
    assert fresh is not first and not fresh.ok
    assert selftest.run_self_test() is fresh


def test_report_prints_versions_and_one_line_per_check() -> None:
    report = selftest.run_self_test()
    text = str(report)
    lines = text.splitlines()
    assert lines[0].startswith("puretor self-test: ok in ")
    assert len(lines) == 1 + len(report.versions.table()) + len(report.results)
    assert cryptography.__version__ in text and nacl.__version__ in text
    assert report.versions.openssl in text and report.versions.python in text
    for check, line in zip(report.results, lines[-len(report.results) :], strict=True):
        assert line.strip().startswith(f"{check.name} ({check.dependency})")
        assert line.endswith("  ok")


def test_main_prints_the_report_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert selftest.main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("puretor self-test: ok") and not err


# -- cryptography 51: "data and buf must not overlap" -------------------------------------


class _RefusingContext:
    """A cipher context whose update_into refuses, as cryptography 51 does for overlaps."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def update(self, data: bytes) -> bytes:
        return bytes(self._inner.update(data))

    def update_into(self, data: Any, buf: Any) -> int:
        raise ValueError("data and buf must not overlap")


class _RefusingCipher:
    def __init__(self, algorithm: Any, mode: Any) -> None:
        self._cipher = Cipher(algorithm, mode)

    def encryptor(self) -> _RefusingContext:
        return _RefusingContext(self._cipher.encryptor())

    def decryptor(self) -> _RefusingContext:
        return _RefusingContext(self._cipher.decryptor())


def test_refused_update_into_names_cryptography_and_its_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relaycrypto, "Cipher", _RefusingCipher)
    report = selftest.run_self_test()
    assert not report.ok
    assert _failed(report) == {
        "AES-128-CTR",
        "AES-256-CTR",
        "relay crypto, 3 hops + onion-service hop",
    }
    for result in report.failures:
        assert result.dependency == "cryptography"
        assert result.error == "ValueError: data and buf must not overlap"
    message = report.error_message()
    assert message is not None and "\n" not in message
    assert message.startswith(
        f"puretor self-test failed: cryptography {cryptography.__version__} ("
    )
    assert "AES-128-CTR failed: ValueError: data and buf must not overlap" in message
    assert "(puretor needs AES-CTR update_into" in message
    assert "and 2 more failed checks" in message
    with pytest.raises(TorError) as caught:
        report.raise_if_failed()
    assert isinstance(caught.value, selftest.DependencyError)
    assert isinstance(caught.value, BootstrapError)  # what TorClient.bootstrap documents
    assert str(caught.value) == message and caught.value.report is report
    assert "FAILED: ValueError: data and buf must not overlap" in str(report)


def _seal_in_place(self: OnionCrypto, block: bytearray, hop_index: int) -> bytearray:
    """seal_layers as it was before the fix: update_into(buf, buf)."""
    for i in range(hop_index, -1, -1):
        self.hops[i]._fwd_cipher.update_into(block, block)
    return block


def test_in_place_relay_crypto_is_caught_with_any_cryptography(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cryptography < 51 accepts overlapping buffers; the self-test must not.
    monkeypatch.setattr(OnionCrypto, "seal_layers", _seal_in_place)
    report = selftest.run_self_test()
    assert _failed(report) == {
        "AES-128-CTR",
        "AES-256-CTR",
        "relay crypto, 3 hops + onion-service hop",
    }
    for result in report.failures:
        assert result.error is not None and "overlapping" in result.error


def test_the_overlap_guard_sees_exactly_the_bytes_update_into_writes() -> None:
    buffer = bytearray(100)
    view = memoryview(buffer)
    assert selftest._buffers_overlap(buffer, buffer)
    assert selftest._buffers_overlap(view[:50], view[40:90])
    assert not selftest._buffers_overlap(view[:50], view[50:])
    assert not selftest._buffers_overlap(bytes(10), bytearray(10))
    longer = bytearray(b"x" * 30)
    assert not selftest._buffers_overlap(bytes(10), longer)
    assert longer[10:] == b"x" * 20  # beyond what update_into writes: untouched


# -- PyNaCl -------------------------------------------------------------------------------


def test_wrong_ed25519_arithmetic_names_pynacl_and_its_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = nacl.bindings.crypto_scalarmult_ed25519_noclamp

    def off_by_a_bit(scalar: bytes, point: bytes) -> bytes:
        result = bytearray(real(scalar, point))
        result[0] ^= 1
        return bytes(result)

    monkeypatch.setattr(nacl.bindings, "crypto_scalarmult_ed25519_noclamp", off_by_a_bit)
    report = selftest.run_self_test()
    assert _failed(report) == {"onion-service key blinding", "onion addresses, torsion check"}
    message = report.error_message()
    assert message is not None
    assert message.startswith(f"puretor self-test failed: PyNaCl {nacl.__version__}")
    assert "onion-service key blinding failed: blinded key: got " in message
    assert "(puretor needs crypto_scalarmult_ed25519_noclamp" in message


def _lenient_is_valid_point(real: Any) -> Any:
    """is_valid_point as PyNaCl 1.5's libsodium has it: torsion components pass."""
    label = selftest.TORSION_ONION_ADDRESS.removesuffix(".onion")
    torsion_key = base64.b32decode(label, casefold=True)[:32]
    return lambda point: point == torsion_key or real(point)


def test_a_lenient_point_check_is_covered_by_puretor(monkeypatch: pytest.MonkeyPatch) -> None:
    real = nacl.bindings.crypto_core_ed25519_is_valid_point
    monkeypatch.setattr(
        nacl.bindings, "crypto_core_ed25519_is_valid_point", _lenient_is_valid_point(real)
    )
    assert selftest.run_self_test().ok  # puretor's [L]P = identity check refuses it
    # Without that check the torsion address would get through, and the self-test says so.
    monkeypatch.setattr(
        address,
        "_is_valid_identity_key",
        lambda key: nacl.bindings.crypto_core_ed25519_is_valid_point(key),
    )
    report = selftest.run_self_test(fresh=True)
    assert _failed(report) == {"onion addresses, torsion check"}
    message = report.error_message()
    assert message is not None and f"PyNaCl {nacl.__version__}" in message
    assert "an onion address whose key has a torsion component was accepted" in message


# -- anything a check raises is a failure -------------------------------------------------


class PanicException(BaseException):
    """Like pyo3's PanicException (what a Rust panic in cryptography raises)."""


def _panics(*args: object, **kwargs: object) -> Any:
    raise PanicException("called `Option::unwrap()` on a `None` value")


def test_a_panic_is_a_failure_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashlib, "blake2b", _panics)
    report = selftest.run_self_test()
    assert _failed(report) == {"BLAKE2b-32"}
    (failure,) = report.failures
    assert failure.dependency == "hashlib/OpenSSL"
    assert failure.error == "PanicException: called `Option::unwrap()` on a `None` value"
    assert failure.message is not None
    assert failure.message.startswith(f"hashlib (Python {report.versions.python}, ")


def test_an_import_error_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "puretor.proto.tor_rsa", None)
    report = selftest.run_self_test()
    assert _failed(report) == {"Tor RSA signatures"}
    assert report.failures[0].error is not None
    assert report.failures[0].error.startswith("ModuleNotFoundError: import of puretor.proto")


def test_keyboard_interrupt_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    check = selftest.CHECKS[0]._replace(run=interrupted)
    monkeypatch.setattr(selftest, "CHECKS", (check,))
    with pytest.raises(KeyboardInterrupt):
        selftest.run_self_test()


def test_main_exits_1_with_the_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hashlib, "blake2b", _panics)
    assert selftest.main([]) == 1
    out, err = capsys.readouterr()
    assert "BLAKE2b-32 (hashlib/OpenSSL)" in out and "FAILED: PanicException" in out
    assert err.startswith("puretor self-test failed: hashlib (Python ")


# -- versions -----------------------------------------------------------------------------


def test_versions_name_each_dependency() -> None:
    versions = selftest.Versions(
        python="3.11.7",
        cryptography="51.0.1",
        openssl="OpenSSL 3.5.0 8 Apr 2025",
        pynacl="1.5.0",
        libsodium=selftest.LIBSODIUM_UNREPORTED,
        hashlib_openssl="OpenSSL 3.0.15 3 Sep 2024",
    )
    assert versions.describe("cryptography") == "cryptography 51.0.1 (OpenSSL 3.5.0 8 Apr 2025)"
    assert versions.describe("PyNaCl") == "PyNaCl 1.5.0"
    reported = dataclasses.replace(versions, libsodium="1.0.18")
    assert reported.describe("PyNaCl") == "PyNaCl 1.5.0 (libsodium 1.0.18)"
    assert (
        versions.describe("hashlib/OpenSSL") == "hashlib (Python 3.11.7, OpenSSL 3.0.15 3 Sep 2024)"
    )


def test_a_failing_version_lookup_still_gives_a_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selftest, "_cryptography_openssl", _panics)
    versions = selftest.Versions.found()
    assert versions.openssl.startswith("unknown (PanicException: ")
    assert versions.cryptography == cryptography.__version__
