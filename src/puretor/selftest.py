"""A known-answer self-test of every crypto primitive puretor relies on.

A new release of a dependency can break puretor without breaking its own tests:
cryptography 51 made every ``*_into`` method refuse overlapping buffers, so relay
crypto that encrypted in place failed deep inside the first circuit; the libsodium
that PyNaCl 1.5 bundles lets Ed25519 points with a torsion component through
``crypto_core_ed25519_is_valid_point``.  This module runs each primitive on fixed
vectors, through puretor's own code where it has one, so that an incompatible
install gives one clear error naming the dependency and its version.

    report = run_self_test()     # cached per process; a few milliseconds
    print(report)                # versions, then one line per check
    report.raise_if_failed()     # DependencyError naming the dependency

``python -m puretor.selftest`` prints the report and exits 0 or 1.

Every check catches whatever its code raises (also an import error, or a panic
from a Rust extension) and reports it; nothing escapes except KeyboardInterrupt
and SystemExit.  Vectors are inline hex, each with a comment naming its source.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from puretor.errors import DependencyError

if TYPE_CHECKING:  # imported where used, so that a broken dependency fails a check only
    from puretor.proto.relaycrypto import OnionCrypto

__all__ = [
    "CRYPTOGRAPHY",
    "HASHLIB",
    "PYNACL",
    "CheckResult",
    "SelfTestReport",
    "Versions",
    "main",
    "run_self_test",
    "verify_dependencies",
]

# The dependencies a check can name.
CRYPTOGRAPHY = "cryptography"
PYNACL = "PyNaCl"
HASHLIB = "hashlib/OpenSSL"


# -- versions ----------------------------------------------------------------------------


# What a check (or a version lookup) lets through; everything else becomes a failure,
# also pyo3's PanicException, which is a BaseException.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit)


def _version_of(read: Callable[[], str]) -> str:
    try:
        return str(read())
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # a missing or broken package must still give a report
        return f"unknown ({_one_line(exc)})"


def _cryptography_version() -> str:
    import cryptography

    return cryptography.__version__


def _cryptography_openssl() -> str:
    from cryptography.hazmat.backends.openssl import backend

    return backend.openssl_version_text()


def _pynacl_version() -> str:
    import nacl

    return str(nacl.__version__)


LIBSODIUM_UNREPORTED = "not reported by PyNaCl"


def _libsodium_version() -> str:
    import nacl.bindings

    # Not exposed by PyNaCl up to 1.6; use it once a release does.
    read = getattr(nacl.bindings, "sodium_version_string", None)
    if read is None:
        return LIBSODIUM_UNREPORTED
    value = read()
    return value.decode() if isinstance(value, bytes) else str(value)


def _hashlib_openssl() -> str:
    import ssl  # hashlib and ssl link the same OpenSSL

    return ssl.OPENSSL_VERSION


@dataclass(frozen=True, slots=True)
class Versions:
    """The versions of everything the self-test exercises."""

    python: str
    cryptography: str
    openssl: str  # what cryptography links (its backend)
    pynacl: str
    libsodium: str
    hashlib_openssl: str  # what Python's hashlib and ssl link

    @classmethod
    def found(cls) -> Versions:
        return cls(
            python=sys.version.split()[0],
            cryptography=_version_of(_cryptography_version),
            openssl=_version_of(_cryptography_openssl),
            pynacl=_version_of(_pynacl_version),
            libsodium=_version_of(_libsodium_version),
            hashlib_openssl=_version_of(_hashlib_openssl),
        )

    def describe(self, dependency: str) -> str:
        """``"cryptography 51.0.1 (OpenSSL 3.5.0 ...)"`` - how a failure names its dependency."""
        if dependency == CRYPTOGRAPHY:
            return f"cryptography {self.cryptography} ({self.openssl})"
        if dependency == PYNACL:
            if self.libsodium == LIBSODIUM_UNREPORTED:
                return f"PyNaCl {self.pynacl}"
            return f"PyNaCl {self.pynacl} (libsodium {self.libsodium})"
        return f"hashlib (Python {self.python}, {self.hashlib_openssl})"

    def table(self) -> list[tuple[str, str]]:
        return [
            ("Python", self.python),
            ("cryptography", self.cryptography),
            ("  OpenSSL", self.openssl),
            ("PyNaCl", self.pynacl),
            ("  libsodium", self.libsodium),
            ("hashlib OpenSSL", self.hashlib_openssl),
        ]


# -- results and report ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check: what it covers, the dependency it exercises, and why it failed."""

    name: str
    dependency: str  # CRYPTOGRAPHY, PYNACL or HASHLIB
    needs: str  # what puretor needs from the dependency
    error: str | None = None  # None: passed
    message: str | None = None  # the one-line, user-facing failure (with versions)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class SelfTestReport:
    """The outcome of `run_self_test`; ``str(report)`` is the printable table."""

    versions: Versions
    results: tuple[CheckResult, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [result for result in self.results if not result.ok]

    def error_message(self) -> str | None:
        """The one-line message for the first failure (None if all passed).

        Checks run basic primitives first, so the first failure is the likeliest cause.
        """
        failures = self.failures
        if not failures:
            return None
        message = f"puretor self-test failed: {failures[0].message}"
        if len(failures) > 1:
            more = len(failures) - 1
            message += (
                f" [and {more} more failed check{'s' if more > 1 else ''}; "
                "`tor-client --verify-install` lists them]"
            )
        return message

    def raise_if_failed(self) -> None:
        """Raise `DependencyError` naming the dependency, its version and the need."""
        message = self.error_message()
        if message is not None:
            raise DependencyError(message, self)

    def __str__(self) -> str:
        failed = len(self.failures)
        verdict = "ok" if not failed else f"FAILED ({failed} of {len(self.results)} checks)"
        lines = [f"puretor self-test: {verdict} in {self.seconds * 1000:.1f} ms"]
        lines += [f"  {name:<16} {value}" for name, value in self.versions.table()]
        width = max(len(r.name) + len(r.dependency) for r in self.results) + 3
        for r in self.results:
            label = f"{r.name} ({r.dependency})"
            status = "ok" if r.ok else f"FAILED: {r.error} (puretor needs {r.needs})"
            lines.append(f"  {label:<{width}}  {status}")
        return "\n".join(lines)


# -- helpers shared by the checks --------------------------------------------------------


class WrongAnswer(Exception):
    """A primitive returned something other than the known answer."""


def _expect(got: bytes | bytearray | str, want: bytes | str, what: str) -> None:
    if got == want:
        return
    shown = got.hex() if isinstance(got, bytes | bytearray) else got
    wanted = want.hex() if isinstance(want, bytes) else want
    # Show where they part: a wrong keystream after the first call differs late.
    start = next((i for i, (a, b) in enumerate(zip(shown, wanted, strict=False)) if a != b), 0)
    start -= start % 2
    raise WrongAnswer(
        f"{what}: got {shown[start : start + 16]}..., expected {wanted[start : start + 16]}... "
        f"from character {start} (lengths {len(shown)}, {len(wanted)})"
    )


def _expect_refusal(
    attempt: Callable[[], object], error: type[BaseException], what: str
) -> BaseException:
    """Run ``attempt``, which must raise ``error``; return the exception."""
    try:
        attempt()
    except error as exc:
        return exc
    raise WrongAnswer(f"{what} was accepted")


def _h(text: str) -> bytes:
    return bytes.fromhex(text)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, WrongAnswer):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= 240 else text[:237] + "..."


# -- hashlib -----------------------------------------------------------------------------

# FIPS 180-4 / FIPS 202 examples for the message "abc" (NIST CSRC example values).
SHA1_ABC = _h("a9993e364706816aba3e25717850c26c9cd0d89d")
SHA256_ABC = _h("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
SHA3_256_ABC = _h("3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532")
SHAKE256_ABC_64 = _h(
    "483366601360a8771c6863080cc4114d8db44530f8f1e1ee4f94ea37e78b5739"
    "d5a15bef186a5386c75744c0527e1faa9f8726e462a12a4feb06bd8801e751e4"
)
# KDF-TOR(K0="Tor"): C tor src/test/test_crypto.c test_crypto_kdf_TAP (first 40 of 100 bytes).
KDF_TOR_TOR_40 = _h(
    "776c6214fc647aaa5f683c737ee66ec44f03d0372e1cce69227950f236ddf1e329a7ce7c22790330"
)


def _check_running_digest(factory: Callable[[bytes], Any], abc: bytes, name: str) -> None:
    """Running digests as relay crypto keeps them: digest() does not finalise, copy() forks."""
    _expect(factory(b"abc").digest(), abc, name)
    running = factory(b"ab")
    snapshot = running.copy()
    running.update(b"c")
    _expect(running.digest(), abc, f"{name} after update()")
    _expect(running.digest(), abc, f"{name}, digest() taken twice")
    snapshot.update(b"c")
    _expect(snapshot.digest(), abc, f"{name} of a copy()")


def check_sha1_sha256() -> None:
    from puretor.proto.handshake import kdf_tor

    _check_running_digest(hashlib.sha1, SHA1_ABC, "SHA-1('abc')")
    _check_running_digest(hashlib.sha256, SHA256_ABC, "SHA-256('abc')")
    _expect(kdf_tor(b"Tor", 40), KDF_TOR_TOR_40, "KDF-TOR('Tor')")


def check_sha3_shake() -> None:
    _check_running_digest(hashlib.sha3_256, SHA3_256_ABC, "SHA3-256('abc')")
    shake = hashlib.shake_256(b"abc")
    _expect(shake.digest(64), SHAKE256_ABC_64, "SHAKE-256('abc', 64)")
    _expect(shake.digest(32), SHAKE256_ABC_64[:32], "SHAKE-256('abc', 32)")


# Onion-service PoW v1 effort check (hspow-spec): R = BLAKE2b-32(P | ID | C | N | E | S)
# read big-endian, valid iff R * E <= 2^32 - 1.  Vectors: C tor src/test/test_hs_pow.c,
# as zydou/arti crates/tor-hspow/tests/verify.rs verify_effort1m_ok,
# verify_seed86_effort100k_ok and verify_seed86_effort100k_effort_err (nonce corrupted).
# A 64-byte BLAKE2b cut to 4 bytes gives other values and fails the valid ones.
POW_PERSONALIZATION = b"Tor hs intro v1\0"
POW_VECTORS = [  # (blinded id, seed, nonce, effort, Equi-X solution, passes the check)
    ("11" * 32, "aa" * 32, "59217255555555555555555555555555", 1_000_000,
     "0f3db97b9cac20c1771680a1a34848d3", True),
    ("bfd298428562e530c52bdb36d81a0e293ef4a0e94d787f0f8c0c611f4f9e78ed",
     "86fb0acf4932cda44dbb451282f415479462dd10cb97ff5e7e8e2a53c3767a7f",
     "2eff9fdbc34326d9d2f18ed277469c63", 100_000, "400cb091139f86b352119f6e131802d6", True),
    ("bfd298428562e530c52bdb36d81a0e293ef4a0e94d787f0f8c0c611f4f9e78ed",
     "86fb0acf4932cda44dbb451282f415479462dd10cb97ff5e7e8e2a53c3767a7f",
     "2eff9fdbc34326d9a2f18ed277469c63", 100_000, "400cb091139f86b352119f6e131802d6", False),
]  # fmt: skip


def check_blake2b_32() -> None:
    for blinded_id, seed, nonce, effort, solution, valid in POW_VECTORS:
        challenge = (
            POW_PERSONALIZATION
            + _h(blinded_id)
            + _h(seed)
            + _h(nonce)
            + effort.to_bytes(4, "big")
            + _h(solution)
        )
        r = int.from_bytes(hashlib.blake2b(challenge, digest_size=4).digest(), "big")
        if (r * effort <= 0xFFFFFFFF) != valid:
            verdict = "rejects" if valid else "accepts"
            raise WrongAnswer(f"the PoW effort check {verdict} C tor's vector (nonce {nonce})")


# RFC 4231 §4.2, test case 1.
HMAC_KEY = b"\x0b" * 20
HMAC_DATA = b"Hi There"
HMAC_SHA256 = _h("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")


def check_hmac_sha256() -> None:
    from puretor.proto.handshake import _hmac256

    _expect(_hmac256(HMAC_KEY, HMAC_DATA), HMAC_SHA256, "HMAC-SHA256 (RFC 4231 case 1)")


# -- cryptography: AES-CTR ---------------------------------------------------------------


class _CipherContext(Protocol):
    def update(self, data: bytes) -> bytes: ...
    def update_into(self, data: Any, buf: Any) -> int: ...


def _buffers_overlap(data: Any, buf: Any) -> bool:
    """Whether writing ``buf`` changes ``data``: fill it twice, see if ``data`` follows.

    Only the part update_into will write is filled (CTR output is as long as the
    input), so ``data`` is disturbed only if the two overlap.
    """
    with (
        memoryview(data) as source,
        memoryview(buf) as view,
        view.cast("B") as out,
        out[: source.nbytes] as written,
    ):
        written[:] = bytes(len(written))
        with_zeros = source.tobytes()
        written[:] = b"\xff" * len(written)
        return source.tobytes() != with_zeros


class _NoOverlapCipher:
    """A cipher context that refuses overlapping buffers on any cryptography version.

    cryptography >= 51 refuses them itself; this makes the self-test catch puretor
    passing them on older versions too, before an upgrade does.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: _CipherContext) -> None:
        self._inner = inner

    def update(self, data: bytes) -> bytes:
        return self._inner.update(data)

    def update_into(self, data: Any, buf: Any) -> int:
        if _buffers_overlap(data, buf):
            raise WrongAnswer(
                "puretor passed overlapping input and output buffers to update_into "
                "(cryptography >= 51 refuses them)"
            )
        return self._inner.update_into(data, buf)


def _guard_overlaps(hop: Any) -> None:
    """Wrap the cipher contexts of a HopCrypto (Any: they are typed as cryptography's)."""
    hop._fwd_cipher = _NoOverlapCipher(hop._fwd_cipher)
    hop._bwd_cipher = _NoOverlapCipher(hop._bwd_cipher)


# AES with an all-zero key: the CTR keystream from an all-zero IV is E(K, 0), E(K, 1),
# E(K, 2).  The GCM specification (McGrew & Viega) test cases 1-2 (AES-128) and 13-14
# (AES-256), all-zero key: H = E(K, 0^128), E(K, Y0) with Y0 = 0^96 | 1, and the
# ciphertext of the zero block, E(K, 0^96 | 2).
AES128_ZERO_KEYSTREAM = _h(
    "66e94bd4ef8a2c3b884cfa59ca342b2e58e2fccefa7e3061367f1d57a4e7455a0388dace60b6a392f328c2b971b2fe78"
)
AES256_ZERO_KEYSTREAM = _h(
    "dc95c078a2408989ad48a21492842087530f8afbc74536b9a963b4f1c4cb738bcea7403d4d606b6e074ec5d3baf39d18"
)
# Odd pieces, so that the keystream has to carry over inside and across blocks.
KEYSTREAM_PIECES = (5, 27, 16)


def _keystream_through_relay_crypto(key_len: int, onion_service: bool) -> bytes:
    """The forward keystream of one hop with an all-zero key, from seal_layers on zeros."""
    from puretor.proto.relaycrypto import HopCrypto, OnionCrypto

    circuit = OnionCrypto()
    hop = HopCrypto(bytes(20), bytes(20), bytes(key_len), bytes(key_len), hs=onion_service)
    _guard_overlaps(hop)
    circuit.add_hop(hop)
    return b"".join(bytes(circuit.seal_layers(bytearray(n), 0)) for n in KEYSTREAM_PIECES)


def check_aes128_ctr() -> None:
    got = _keystream_through_relay_crypto(16, onion_service=False)
    _expect(got, AES128_ZERO_KEYSTREAM, "AES-128-CTR keystream across calls")


def check_aes256_ctr() -> None:
    got = _keystream_through_relay_crypto(32, onion_service=True)
    _expect(got, AES256_ZERO_KEYSTREAM, "AES-256-CTR keystream across calls")


# -- cryptography: relay crypto round trip ------------------------------------------------

BODY_LEN = 509
ZERO_IV = bytes(16)


def _relay_body(command: int, stream_id: int, data: bytes) -> bytes:
    """A relay cell body (tor-spec §6.1) with Recognized and Digest zero, zero padding."""
    header = bytes((command, 0, 0)) + stream_id.to_bytes(2, "big") + bytes(4)
    body = header + len(data).to_bytes(2, "big") + data
    return body + bytes(BODY_LEN - len(body))


class _RelayHopModel:
    """One relay's state for the circuit: cipher contexts (used only through update())
    and running digests, per direction."""

    __slots__ = ("forward", "backward", "forward_digest", "backward_digest")

    def __init__(self, df: bytes, db: bytes, kf: bytes, kb: bytes, onion_service: bool) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        digest = hashlib.sha3_256 if onion_service else hashlib.sha1
        self.forward: Any = Cipher(algorithms.AES(kf), modes.CTR(ZERO_IV)).decryptor()
        self.backward: Any = Cipher(algorithms.AES(kb), modes.CTR(ZERO_IV)).encryptor()
        self.forward_digest: Any = digest(df)
        self.backward_digest: Any = digest(db)


class _RelayModel:
    """What the relays of a circuit do to its cells, written directly on cryptography
    and hashlib (update() into new bytes: nothing here can overlap)."""

    def __init__(self, keys: Sequence[tuple[bytes, bytes, bytes, bytes, bool]]) -> None:
        self.hops = [_RelayHopModel(*hop_keys) for hop_keys in keys]

    def receive(self, cell: bytes) -> tuple[int, bytes, bytes]:
        """Peel layers hop by hop until one recognises the cell: (hop, body, its digest)."""
        for index, hop in enumerate(self.hops):
            cell = hop.forward.update(cell)
            if cell[1:3] == b"\0\0":
                body = cell[:5] + bytes(4) + cell[9:]
                trial = hop.forward_digest.copy()
                trial.update(body)
                if trial.digest()[:4] == cell[5:9]:
                    hop.forward_digest = trial
                    return index, body, trial.digest()
        raise WrongAnswer("no relay recognised a cell puretor sealed")

    def send(self, hop_index: int, body: bytes) -> tuple[bytes, bytes]:
        """Seal ``body`` at ``hop_index`` and add every layer back to the guard."""
        digest = self.hops[hop_index].backward_digest
        digest.update(body)
        full = digest.digest()
        cell = body[:5] + full[:4] + body[9:]
        for index in range(hop_index, -1, -1):
            cell = self.hops[index].backward.update(cell)
        return cell, full


# Three tor1 hops (Df Db Kf Kb) and an onion-service virtual hop (SHA3-256, AES-256),
# as on a rendezvous circuit.  Arbitrary fixed keys: the model is the reference.
def _hop_keys(index: int, onion_service: bool) -> tuple[bytes, bytes, bytes, bytes, bool]:
    digest_len, key_len = (32, 32) if onion_service else (20, 16)
    material = bytes((index * 37 + i) % 256 for i in range(2 * digest_len + 2 * key_len))
    df, db = material[:digest_len], material[digest_len : 2 * digest_len]
    kf = material[2 * digest_len : 2 * digest_len + key_len]
    return df, db, kf, material[2 * digest_len + key_len :], onion_service


CIRCUIT_KEYS = [_hop_keys(0, False), _hop_keys(1, False), _hop_keys(2, False), _hop_keys(3, True)]
OUTBOUND_HOPS = (3, 1, 2)  # one cell each through encrypt_outbound
SEALED_BATCH_HOP = 1  # two cells at once through seal_layers
INBOUND_RUNS = ([3, 3, 3], [0, 2, 3, 1, 3])  # decrypt_inbound_run: one hop; mixed hops
INBOUND_SINGLE_HOPS = (2, 0)  # decrypt_inbound


def _client_circuit() -> OnionCrypto:
    from puretor.proto.relaycrypto import HopCrypto, OnionCrypto

    circuit = OnionCrypto()
    for df, db, kf, kb, hs in CIRCUIT_KEYS:
        hop = HopCrypto(df, db, kf, kb, hs=hs)
        _guard_overlaps(hop)
        circuit.add_hop(hop)
    return circuit


def _check_outbound(circuit: OnionCrypto, relays: _RelayModel) -> None:
    for n, hop in enumerate(OUTBOUND_HOPS):
        body = _relay_body(2, n + 1, b"outbound %d" % n)
        sealed, sendme_digest = circuit.encrypt_outbound(bytearray(body), hop)
        got_hop, got_body, digest = relays.receive(bytes(sealed))
        if got_hop != hop or got_body != body:
            raise WrongAnswer(f"a cell sealed for hop {hop} reached hop {got_hop} garbled")
        _expect(sendme_digest, digest[:20], f"outbound digest of hop {hop}")
    running = circuit.outbound_digest(SEALED_BATCH_HOP)
    batch = bytearray()
    bodies = [_relay_body(2, 7, b"batched %d" % n) for n in range(2)]
    for body in bodies:
        cell = bytearray(body)
        running.update(cell)
        cell[5:9] = running.digest()[:4]
        batch += cell
    sealed_batch = bytes(circuit.seal_layers(batch, SEALED_BATCH_HOP))
    for n, body in enumerate(bodies):
        got_hop, got_body, _ = relays.receive(sealed_batch[n * BODY_LEN : (n + 1) * BODY_LEN])
        if got_hop != SEALED_BATCH_HOP or got_body != body:
            raise WrongAnswer("a batch sealed with seal_layers arrived garbled")


def _check_inbound(circuit: OnionCrypto, relays: _RelayModel) -> None:
    for hop in INBOUND_SINGLE_HOPS:
        body = _relay_body(2, 3, b"inbound from %d" % hop)
        cell, _ = relays.send(hop, body)
        got_hop, got_body = circuit.decrypt_inbound(cell)
        if got_hop != hop or bytes(got_body) != body:
            raise WrongAnswer(f"a cell from hop {hop} was read as hop {got_hop}, or garbled")
    for run in INBOUND_RUNS:
        bodies = [_relay_body(2, 5, b"run cell %d" % n) for n in range(len(run))]
        sent = [relays.send(hop, body) for hop, body in zip(run, bodies, strict=True)]
        block = bytearray(b"".join(cell for cell, _ in sent))
        hop_of, digests, result = circuit.decrypt_inbound_run(block)
        if hop_of != run:
            raise WrongAnswer(f"decrypt_inbound_run attributed cells to hops {hop_of}, not {run}")
        for n, body in enumerate(bodies):
            if bytes(result[n * BODY_LEN : (n + 1) * BODY_LEN]) != body:
                raise WrongAnswer(f"decrypt_inbound_run garbled cell {n} of {run}")
            _expect(bytes(digests[n]), sent[n][1], f"backward digest of cell {n} of {run}")


def check_relay_crypto() -> None:
    circuit = _client_circuit()
    relays = _RelayModel(CIRCUIT_KEYS)
    _check_outbound(circuit, relays)
    _check_inbound(circuit, relays)


# -- cryptography: HKDF, X25519, handshakes ----------------------------------------------

# RFC 5869 Appendix A.1 (test case 1).
HKDF_IKM = b"\x0b" * 22
HKDF_SALT = _h("000102030405060708090a0b0c")
HKDF_INFO = _h("f0f1f2f3f4f5f6f7f8f9")
HKDF_OKM = _h(
    "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
)


def check_hkdf_sha256() -> None:
    from puretor.proto.handshake import kdf_rfc5869

    got = kdf_rfc5869(HKDF_IKM, HKDF_SALT, HKDF_INFO, len(HKDF_OKM))
    _expect(got, HKDF_OKM, "HKDF-SHA256 (RFC 5869 case 1)")


# RFC 7748 §6.1.
X25519_ALICE_SK = _h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
X25519_ALICE_PK = _h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
X25519_BOB_SK = _h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
X25519_BOB_PK = _h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
X25519_SHARED = _h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
# Small-order points whose shared secret is all-zero: the identity and a point of order 8
# (as in tests/unit/proto/test_handshake.py test_ntor_rejects_small_order_points).
X25519_SMALL_ORDER = (
    bytes(32),
    _h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
)


def check_x25519() -> None:
    from puretor.errors import RemoteProtocolError
    from puretor.proto.handshake import _ephemeral, _exp

    alice, alice_pk = _ephemeral(X25519_ALICE_SK)
    bob, bob_pk = _ephemeral(X25519_BOB_SK)
    _expect(alice_pk, X25519_ALICE_PK, "X25519 public key (RFC 7748)")
    _expect(bob_pk, X25519_BOB_PK, "X25519 public key (RFC 7748)")
    _expect(_exp(alice, bob_pk), X25519_SHARED, "X25519 shared secret (RFC 7748)")
    _expect(_exp(bob, alice_pk), X25519_SHARED, "X25519 shared secret (RFC 7748)")
    for point in X25519_SMALL_ORDER:
        refuse = functools.partial(_exp, alice, point)
        _expect_refusal(refuse, RemoteProtocolError, "an all-zero X25519 shared secret")


# ntor: zydou/arti crates/tor-proto/src/crypto/handshake/ntor.rs testvec (fixed keys from
# C tor src/test/ntor_ref.py); also tests/unit/proto/test_handshake.py.
NTOR_B_PK = _h("ccbc8541904d18af08753eae967874749e6149f873de937f57f8fd903a21c471")
NTOR_X_SK = _h("706f6461792069207075742e2e2e2e2e2e2e2e4a454c4c59206f6e2074686973")
NTOR_X_PK = _h("e65dfdbef8b2635837fe2cebc086a8096eae3213e6830dc407516083d412b078")
NTOR_ID = _h("69546f6c64596f7541626f75745374616972732e")
NTOR_SERVER_HS = _h(
    "390480a14362761d6aec1fea840f6e9e928fb2adb7b25c670be1045e35133a37"
    "1cbdf68b89923e1f85e8e18ee6e805ea333fe4849c790ffd2670bd80fec95cc8"
)
NTOR_KEYS = _h(
    "0c62dee7f48893370d0ef896758d35729867beef1a5121df80e00f79ed349af39b51cae125719182f19d"
    "932a667dae1afbf2e336e6910e7822223e763afad0a13342157969dc6b79"
)


def check_ntor() -> None:
    from puretor.errors import RemoteProtocolError
    from puretor.proto.handshake import ntor_client_complete, ntor_client_create

    state, onionskin = ntor_client_create(NTOR_ID, NTOR_B_PK, private_key=NTOR_X_SK)
    _expect(onionskin, NTOR_ID + NTOR_B_PK + NTOR_X_PK, "ntor onionskin")
    keys = ntor_client_complete(state, NTOR_SERVER_HS)
    _expect(keys.df + keys.db + keys.kf + keys.kb, NTOR_KEYS, "ntor keys")
    tampered = NTOR_SERVER_HS[:-1] + bytes((NTOR_SERVER_HS[-1] ^ 1,))
    state, _ = ntor_client_create(NTOR_ID, NTOR_B_PK, private_key=NTOR_X_SK)
    _expect_refusal(
        lambda: ntor_client_complete(state, tampered), RemoteProtocolError, "a forged ntor AUTH"
    )


# ntor v3: C tor src/test/test_ntor_v3.c test_ntor3_testvecs (mirror syphyr/tor), also in
# zydou/arti ntor_v3.rs test_ntor3_testvec and tests/unit/proto/test_ntor_v3.py.
NTOR3_B_PK = _h("f8307a2bc1870b00b828bb74dbb8fd88e632a6375ab3bcd1ae706aaa8b6cdd1d")
NTOR3_ID = _h("9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2")
NTOR3_X_SK = _h("b825a3719147bcbe5fb1d0b0fcb9c09e51948048e2e3283d2ab7b45b5ef38b49")
NTOR3_CLIENT_MESSAGE = b"hello world"
NTOR3_VERIFICATION = b"xyzzy"
NTOR3_SERVER_MESSAGE = b"Hola Mundo"
NTOR3_CLIENT_HS = _h(
    "9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2f8307a2bc1870b00b828bb74"
    "dbb8fd88e632a6375ab3bcd1ae706aaa8b6cdd1d252fe9ae91264c91d4ecb8501f79d0387e34ad8ca0f7c995"
    "184f7d11d5da4f463bebd9151fd3b47c180abc9e044d53565f04d82bbb3bebed3d06cea65db8be9c72b68cd4"
    "61942088502f67"
)
NTOR3_SERVER_HS = _h(
    "4bf4814326fdab45ad5184f5518bd7fae25dc59374062698201a50a22954246d2fc5f8773ca824542bc6cf6f"
    "57c7c29bbf4e5476461ab130c5b18ab0a91276651202c3e1e87c0d32054c"
)
NTOR3_KEYS_92 = _h(  # the first 92 of the vector's 256 bytes: Df Db Kf Kb KH
    "9c19b631fd94ed86a817e01f6c80b0743a43f5faebd39cfaa8b00fa8bcc65c3bfeaa403d91acbd68a821bf6e"
    "e8504602b094a254392a07737d5662768c7a9fb1b2814bb34780eaee6e867c773e28c212ead563e98a1cd5d5"
    "b4576f5e"
)


def check_ntor_v3() -> None:
    from puretor.proto.handshake import ntor_v3_client_complete, ntor_v3_client_create

    state, onionskin = ntor_v3_client_create(
        NTOR3_ID,
        NTOR3_B_PK,
        NTOR3_CLIENT_MESSAGE,
        verification=NTOR3_VERIFICATION,
        private_key=NTOR3_X_SK,
    )
    _expect(onionskin, NTOR3_CLIENT_HS, "ntor v3 onionskin")
    keys, message = ntor_v3_client_complete(state, NTOR3_SERVER_HS)
    _expect(keys.df + keys.db + keys.kf + keys.kb + (keys.kh or b""), NTOR3_KEYS_92, "ntor v3 keys")
    _expect(message, NTOR3_SERVER_MESSAGE, "ntor v3 server message")


# -- cryptography: signatures -------------------------------------------------------------

# RFC 8032 §7.1, TEST 1 (empty message).
ED25519_SECRET = _h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
ED25519_PUBLIC = _h("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
ED25519_SIGNATURE = _h(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e3970"
    "1cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def check_ed25519() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from puretor.errors import CertsError
    from puretor.proto.certs import Ed25519Cert

    key = Ed25519PrivateKey.from_private_bytes(ED25519_SECRET)
    _expect(key.public_key().public_bytes_raw(), ED25519_PUBLIC, "Ed25519 public key")
    _expect(key.sign(b""), ED25519_SIGNATURE, "Ed25519 signature (RFC 8032 test 1)")
    # Verified the way CERTS and descriptor certificates are: Ed25519Cert.verify.
    cert = Ed25519Cert(
        cert_type=4,
        expiration_hours=0,
        key_type=1,
        certified_key=bytes(32),
        extensions=(),
        signed_with=None,
        signature=ED25519_SIGNATURE,
        signed_part=b"",
    )
    cert.verify(ED25519_PUBLIC)
    forged = dataclasses.replace(cert, signature=ED25519_SIGNATURE[:-1] + b"\x0c")
    _expect_refusal(lambda: forged.verify(ED25519_PUBLIC), CertsError, "a forged Ed25519 signature")


# Tor-style RSA signature (PKCS#1 v1.5 type 1, no DigestInfo) by a 1024-bit key, e = 65537.
# Made once with cryptography 51.0.1: rsa.generate_private_key(65537, 1024); digest =
# SHA-1(b"puretor self-test"); signature = (00 01 FF..FF 00 | digest) ^ d mod n, by hand
# from private_numbers(); RSA_ID_DIGEST = SHA-1 of the key's PKCS#1 DER.
RSA_MODULUS = _h(
    "bce8e6281a68eed3a479a3c6de3821cd8d2f963bd3a255f8e7776d974b560ac2bfa8da81ec66ff8c502a7a2f"
    "07651ec04c9d86e5b2c99b6d0075eeebf6de5f6177492bf09fa37e24f2334a83a6e4b7176505a625c0b2f7be"
    "7c74abc876df8ac51e4b006f8d8af6a1b51d63422a558bfba16f7ca8a3d9a5f1df7575f0dda58551"
)
RSA_DIGEST = _h("a2f052a42fb0c3b22d19072616b15788dfd5ca09")
RSA_SIGNATURE = _h(
    "a87c6c57cb18d28e44abfef3e72047f52fe14b9995f2629141a3496917785fd6344c48b3505cac38348f1f91"
    "892caa1abe7b91ac910038e25bf04b542cdb8644e1472011492274b4914f09b567a781671cb2c30f1766d9d7"
    "1a1c5d535c366fb508b1a155e553067e3070655f4ba52fd1ac4dfe9c3b2db0bd39d33b5b4f9e9f51"
)
RSA_ID_DIGEST = _h("90328b92c44c1e41be8ed1791370f1b5c4297053")


def check_tor_rsa() -> None:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

    from puretor.proto.tor_rsa import rsa_key_digest, tor_rsa_verify

    key = RSAPublicNumbers(65537, int.from_bytes(RSA_MODULUS, "big")).public_key()
    _expect(rsa_key_digest(key), RSA_ID_DIGEST, "RSA identity digest")
    if not tor_rsa_verify(key, RSA_DIGEST, RSA_SIGNATURE):
        raise WrongAnswer("a good Tor RSA signature did not verify")
    if tor_rsa_verify(key, RSA_DIGEST[::-1], RSA_SIGNATURE):
        raise WrongAnswer("a Tor RSA signature verified over the wrong digest")


# -- PyNaCl: onion services ---------------------------------------------------------------

# C tor src/test/test_hs_common.c test_blinding_basics (also zydou/arti tor-hscrypto pk.rs
# key_blinding_testvec; tests/unit/hs/test_hs_keys.py): period 1234, 1440 minutes.
BLIND_A = _h("833990b085c1a688c1d4c8b1f6b56afaf5a2eca674449e1d704f83765ccb7bc6")
BLIND_PARAM = _h("379e50db31fee6775abd0af6fb7c371e060308f4f847db09fe4cfe13af602287")
BLIND_A_PRIME = _h("3a50bf210e8f9ee955ae0014f7a6917fb65ebf098a86305abb508d1a7291b6d5")
BLIND_SUBCRED = _h("635d55907816e8d76398a675a50b1c2f3e36b42a5ca77ba3a0441285161ae07d")
# C tor src/test/ed25519_vectors.inc, first entry: public key, blinding parameter, result.
ED_VECTOR_PUBLIC = _h("c2247870536a192d142d056abefca68d6193158e7c1a59c1654c954eccaff894")
ED_VECTOR_PARAM = _h("54a513898b471d1d448a2f3c55c1de2c0ef718c447b04497eeb999ed32027823")
ED_VECTOR_BLINDED = _h("1fc1fa4465bd9d4956fdbdc9d3acb3c7019bb8d5606b951c2e1dfe0b42eaeb41")


def check_hs_key_blinding() -> None:
    from puretor.hs.keys import (
        blind_public_key,
        blind_public_key_with_param,
        blinding_param,
        subcredential,
    )

    _expect(blinding_param(BLIND_A, 1234, 1440), BLIND_PARAM, "blinding parameter")
    _expect(blind_public_key(BLIND_A, 1234, 1440), BLIND_A_PRIME, "blinded key")
    _expect(subcredential(BLIND_A, BLIND_A_PRIME), BLIND_SUBCRED, "subcredential")
    got = blind_public_key_with_param(ED_VECTOR_PUBLIC, ED_VECTOR_PARAM)
    _expect(got, ED_VECTOR_BLINDED, "blinded key (ed25519_vectors.inc)")


# C tor src/test/test_hs_common.c test_build_address (tests/unit/hs/test_hs_address.py):
# the RFC 8032 test 1 key.
ONION_ADDRESS = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenl5sid.onion"
# That key plus the point of order 2 (y = -1), with a correct checksum: made once as in
# test_hs_address.py test_torsion_component_rejected (crypto_core_ed25519_add).  The
# libsodium of PyNaCl 1.5 calls it a valid point; puretor must still refuse it.
TORSION_ONION_ADDRESS = "c2swp7t5j32uqkvuaewdng7yyxyr5dimevm5zwsq7xszochyv3s2rtyd.onion"


def check_onion_address() -> None:
    from puretor.errors import OnionError
    from puretor.hs.address import encode_onion_address, parse_onion_address

    _expect(encode_onion_address(ED25519_PUBLIC), ONION_ADDRESS, "onion address")
    _expect(parse_onion_address(ONION_ADDRESS), ED25519_PUBLIC, "onion address key")
    refusal = _expect_refusal(
        lambda: parse_onion_address(TORSION_ONION_ADDRESS),
        OnionError,
        "an onion address whose key has a torsion component",
    )
    if "torsion" not in str(refusal):
        raise WrongAnswer(f"the torsion address was refused for another reason: {refusal}")


# -- running -----------------------------------------------------------------------------


class _Check(NamedTuple):
    name: str
    dependency: str
    needs: str
    run: Callable[[], None]


# Basic primitives first: the first failure is the one a DependencyError reports.
CHECKS: tuple[_Check, ...] = (
    _Check("SHA-1, SHA-256, KDF-TOR", HASHLIB,
           "running digests that copy() and keep going after digest()", check_sha1_sha256),
    _Check("SHA3-256, SHAKE-256", HASHLIB,
           "SHA3-256 running digests and SHAKE-256 of any length", check_sha3_shake),
    _Check("BLAKE2b-32", HASHLIB,
           "BLAKE2b with digest_size=4 for the onion-service PoW", check_blake2b_32),
    _Check("HMAC-SHA256", HASHLIB, "HMAC-SHA256 for ntor", check_hmac_sha256),
    _Check("AES-128-CTR", CRYPTOGRAPHY,
           "AES-CTR update_into from one buffer into another, the keystream continuing "
           "across calls", check_aes128_ctr),
    _Check("AES-256-CTR", CRYPTOGRAPHY,
           "AES-256-CTR update_into for onion services, the keystream continuing across calls",
           check_aes256_ctr),
    _Check("relay crypto, 3 hops + onion-service hop", CRYPTOGRAPHY,
           "AES-CTR layers sealed and peeled between two distinct buffers", check_relay_crypto),
    _Check("HKDF-SHA256", CRYPTOGRAPHY, "HKDF-SHA256 for ntor key expansion", check_hkdf_sha256),
    _Check("X25519", CRYPTOGRAPHY,
           "X25519 with raw keys; an all-zero shared secret raising ValueError or returned",
           check_x25519),
    _Check("ntor handshake", CRYPTOGRAPHY, "X25519 and HKDF-SHA256 for ntor", check_ntor),
    _Check("ntor v3 handshake", CRYPTOGRAPHY,
           "X25519 and AES-256-CTR for ntor v3", check_ntor_v3),
    _Check("Ed25519 signatures", CRYPTOGRAPHY,
           "Ed25519 signatures with raw keys for relay certificates", check_ed25519),
    _Check("Tor RSA signatures", CRYPTOGRAPHY,
           "recover_data_from_signature with 1024-bit keys for directory signatures",
           check_tor_rsa),
    _Check("onion-service key blinding", PYNACL,
           "crypto_scalarmult_ed25519_noclamp for onion-service key blinding",
           check_hs_key_blinding),
    _Check("onion addresses, torsion check", PYNACL,
           "crypto_core_ed25519_* point checks and arithmetic to refuse keys with torsion",
           check_onion_address),
)  # fmt: skip


def _run_check(check: _Check, versions: Versions) -> CheckResult:
    try:
        check.run()
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        error = _one_line(exc)
        message = (
            f"{versions.describe(check.dependency)}: {check.name} failed: {error} "
            f"(puretor needs {check.needs})"
        )
        return CheckResult(check.name, check.dependency, check.needs, error, message)
    return CheckResult(check.name, check.dependency, check.needs)


_cached_report: SelfTestReport | None = None


def run_self_test(*, fresh: bool = False) -> SelfTestReport:
    """Run every check, once per process (``fresh=True``: again).

    Never raises, except KeyboardInterrupt and SystemExit: failures are in the report.
    """
    global _cached_report
    if _cached_report is not None and not fresh:
        return _cached_report
    started = time.perf_counter()
    versions = Versions.found()
    results = tuple(_run_check(check, versions) for check in CHECKS)
    report = SelfTestReport(versions, results, time.perf_counter() - started)
    _cached_report = report
    return report


def verify_dependencies() -> SelfTestReport:
    """The cached self-test; raises `DependencyError` if any check failed."""
    report = run_self_test()
    report.raise_if_failed()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m puretor.selftest``: print the report; exit status 0 if all passed."""
    del argv  # no options
    report = run_self_test()
    sys.stdout.write(f"{report}\n")
    if not report.ok:
        sys.stderr.write(f"{report.error_message()}\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
