"""Consensus signature and timeliness checks (dir-spec §1.3, §3.4.1, §5.1; spec-map §5.4).

A microdesc consensus is accepted when more than half of the *configured* v3
authorities (C tor: ``n/2 + 1``; bridge authorities without a v3ident do not
count) have a valid signature on it.  Each signature names its authority's
v3ident and signing-key digest; the signing key comes from that authority's
key certificate (`puretor.dir.authcert`).  Signatures use SHA-256 (``sha256``)
or SHA-1 (``sha1`` or no algorithm) over the signed part, RSA without
DigestInfo; unknown algorithms are ignored.  At most one valid signature counts
per authority.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from puretor.dir.authcert import AuthCert
from puretor.dir.authorities import Authority
from puretor.dir.consensus import Consensus
from puretor.errors import DirectoryError, DocumentError
from puretor.proto.tor_rsa import tor_rsa_verify

__all__ = [
    "REASONABLY_LIVE",
    "SignatureStatus",
    "check_signatures",
    "missing_certs",
    "verify_consensus",
]

# dir-spec §5.1 / C tor REASONABLY_LIVE_TIME: a consensus stays usable 24 h past valid-until.
REASONABLY_LIVE = 24 * 3600.0
# Tolerated clock skew before valid-after (C tor only warns about early consensuses).
EARLY_SKEW = 60.0

CertSource = Mapping[tuple[bytes, bytes], AuthCert] | Iterable[AuthCert]


@dataclass(frozen=True)
class SignatureStatus:
    """How the signatures on a consensus stand against the trusted authorities."""

    needed: int  # n_trusted // 2 + 1
    n_trusted: int
    good: tuple[bytes, ...]  # v3idents with a valid signature (each counted once)
    bad: tuple[bytes, ...]  # a cert was available but the signature did not verify
    missing: tuple[tuple[bytes, bytes], ...]  # (v3ident, signing-key digest) without a cert
    unsigned: tuple[bytes, ...]  # trusted authorities with no usable signature at all

    @property
    def ok(self) -> bool:
        return len(self.good) >= self.needed

    @property
    def could_succeed(self) -> bool:
        """True if fetching the missing certificates might still reach the threshold."""
        missing_ids = {ident for ident, _ in self.missing} - set(self.good)
        return len(self.good) + len(missing_ids) >= self.needed


def _trusted(authorities: Iterable[Authority | bytes]) -> dict[bytes, str]:
    """v3ident -> display name, for the authorities that sign consensuses."""
    out: dict[bytes, str] = {}
    for a in authorities:
        if isinstance(a, Authority):
            if a.v3ident is not None:
                out[a.v3ident] = a.nickname or a.v3ident.hex().upper()
        else:
            out[bytes(a)] = bytes(a).hex().upper()
    return out


def _usable_certs(certs: CertSource, now: float) -> dict[tuple[bytes, bytes], AuthCert]:
    """Certificates keyed by (v3ident, signing-key digest), keeping only ones that verify now."""
    values = certs.values() if isinstance(certs, Mapping) else certs
    out: dict[tuple[bytes, bytes], AuthCert] = {}
    for cert in values:
        try:
            cert.verify(now)
        except DocumentError:
            continue
        out[cert.key] = cert
    return out


def check_signatures(
    consensus: Consensus,
    certs: CertSource,
    authorities: Iterable[Authority | bytes],
    now: float,
) -> SignatureStatus:
    """Classify every signature; never raises for a bad signature."""
    trusted = _trusted(authorities)
    usable = _usable_certs(certs, now)
    good: list[bytes] = []
    bad: list[bytes] = []
    missing: list[tuple[bytes, bytes]] = []
    for sig in consensus.signatures:
        ident = sig.identity
        if ident not in trusted or ident in good:
            continue
        digest = consensus.digest(sig.algorithm)
        if digest is None:
            continue  # unknown algorithm: ignore (dir-spec §3.4.1)
        cert = usable.get((ident, sig.signing_key_digest))
        if cert is None:
            missing.append((ident, sig.signing_key_digest))
        elif tor_rsa_verify(cert.signing_key, digest, sig.signature):
            good.append(ident)
        else:
            bad.append(ident)
    good_set = set(good)
    missing = [m for m in missing if m[0] not in good_set]
    bad = [b for b in bad if b not in good_set]
    signed = good_set | set(bad) | {ident for ident, _ in missing}
    return SignatureStatus(
        needed=len(trusted) // 2 + 1,
        n_trusted=len(trusted),
        good=tuple(good),
        bad=tuple(dict.fromkeys(bad)),
        missing=tuple(dict.fromkeys(missing)),
        unsigned=tuple(i for i in trusted if i not in signed),
    )


def missing_certs(
    consensus: Consensus,
    certs: CertSource,
    authorities: Iterable[Authority | bytes],
    now: float,
) -> list[tuple[bytes, bytes]]:
    """(v3ident, signing-key digest) pairs to fetch (``/tor/keys/fp/<V3IDENT>``, or
    ``/tor/keys/fp-sk/<V3IDENT>-<SKD>``) before ``consensus`` can be checked."""
    return list(check_signatures(consensus, certs, authorities, now).missing)


def _fmt_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_now(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S")


def check_timeliness(consensus: Consensus, now: float, *, allow_expired: bool = False) -> None:
    """Refuse a consensus that is not yet valid, or more than 24 h past valid-until."""
    va, _, vu = consensus.lifetime
    if now < va - EARLY_SKEW:
        raise DirectoryError(
            f"consensus is not yet valid: valid-after {_fmt_time(consensus.valid_after)} UTC, "
            f"now {_fmt_now(now)} UTC (is the local clock behind?)"
        )
    if now >= vu + REASONABLY_LIVE and not allow_expired:
        raise DirectoryError(
            f"consensus expired: valid-until {_fmt_time(consensus.valid_until)} UTC is more "
            f"than 24 h before now ({_fmt_now(now)} UTC)"
        )


def describe(status: SignatureStatus, authorities: Iterable[Authority | bytes]) -> str:
    names = _trusted(authorities)

    def fmt(idents: Iterable[bytes]) -> str:
        return ", ".join(names.get(i, i.hex().upper()) for i in idents) or "none"

    parts = [
        f"{len(status.good)} valid signature(s) of {status.needed} needed "
        f"(from {status.n_trusted} trusted authorities)",
        f"valid: {fmt(status.good)}",
    ]
    if status.bad:
        parts.append(f"bad signature: {fmt(status.bad)}")
    if status.missing:
        parts.append(f"certificate missing: {fmt(i for i, _ in status.missing)}")
    if status.unsigned:
        parts.append(f"not signed by: {fmt(status.unsigned)}")
    return "; ".join(parts)


def verify_consensus(
    consensus: Consensus,
    certs: CertSource,
    authorities: Iterable[Authority | bytes],
    now: float,
    *,
    allow_expired: bool = False,
) -> SignatureStatus:
    """Check timeliness and signatures; raise `DirectoryError` / `DocumentError` if unusable.

    ``authorities`` are the configured authorities (or bare v3idents).
    ``allow_expired`` accepts a consensus more than 24 h past valid-until.
    """
    authorities = list(authorities)
    if not _trusted(authorities):
        raise DirectoryError("no v3 directory authorities configured: cannot verify a consensus")
    check_timeliness(consensus, now, allow_expired=allow_expired)
    status = check_signatures(consensus, certs, authorities, now)
    if not status.ok:
        raise DocumentError("consensus is insufficiently signed: " + describe(status, authorities))
    return status
