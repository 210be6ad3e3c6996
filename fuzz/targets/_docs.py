"""Dictionary tokens shared by the directory-document targets."""

from __future__ import annotations

NETDOC_TOKENS: tuple[bytes, ...] = (
    b"\n",
    b" ",
    b"-----BEGIN ",
    b"-----END ",
    b"-----",
    b"RSA PUBLIC KEY",
    b"SIGNATURE",
    b"ID SIGNATURE",
    b"ED25519 CERT",
    b"MESSAGE",
    b"2025-06-15 12:00:00",
    b"=",
    b"==",
    b"@",
)

CONSENSUS_TOKENS: tuple[bytes, ...] = (
    b"network-status-version 3 microdesc",
    b"vote-status consensus",
    b"consensus-method ",
    b"valid-after ",
    b"fresh-until ",
    b"valid-until ",
    b"voting-delay ",
    b"known-flags ",
    b"params ",
    b"shared-rand-current-value ",
    b"recommended-client-protocols ",
    b"dir-source ",
    b"contact ",
    b"vote-digest ",
    b"\nr ",
    b"\ns ",
    b"\nm ",
    b"\nw Bandwidth=",
    b"\npr ",
    b"\nv ",
    b"\na [",
    b"]:",
    b"directory-footer",
    b"bandwidth-weights ",
    b"directory-signature ",
    b"sha256 ",
    b"Link=1-5",
    b"Unmeasured=1",
)

AUTHCERT_TOKENS: tuple[bytes, ...] = (
    b"dir-key-certificate-version 3",
    b"dir-address ",
    b"fingerprint ",
    b"dir-identity-key",
    b"dir-key-published ",
    b"dir-key-expires ",
    b"dir-signing-key",
    b"dir-key-crosscert",
    b"dir-key-certification",
)

MICRODESC_TOKENS: tuple[bytes, ...] = (
    b"onion-key",
    b"ntor-onion-key ",
    b"id ed25519 ",
    b"family ",
    b"family-ids ",
    b"p accept ",
    b"p reject ",
    b"p6 accept ",
    b"1-65535",
    b"$",
    b"~",
)
