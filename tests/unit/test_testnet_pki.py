"""TLS CA for the HTTPS target, and onion client-authorization keys."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import x25519

from puretor.testnet import pki


def test_server_cert_covers_names_and_ips(tmp_path: Path) -> None:
    ca, cert, _key = pki.write_ca_and_server_cert(tmp_path, ["a.test", "b.test"], ["198.18.0.10"])
    leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.test", "b.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.18.0.10")]
    root = x509.load_pem_x509_certificate(ca.read_bytes())
    leaf.verify_directly_issued_by(root)


def test_client_auth_lines() -> None:
    keys = pki.new_client_auth_keys()
    assert len(keys.private_b32) == len(keys.public_b32) == 52  # 32 bytes, no padding
    priv = x25519.X25519PrivateKey.from_private_bytes(base64.b32decode(keys.private_b32 + "===="))
    assert pki.b32(priv.public_key().public_bytes_raw()) == keys.public_b32
    assert keys.service_line() == f"descriptor:x25519:{keys.public_b32}"
    onion = "a" * 56 + ".onion"
    assert keys.client_line(onion) == f"{'a' * 56}:descriptor:x25519:{keys.private_b32}"
