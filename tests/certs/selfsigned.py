"""Certificates made by a test's own CA, for uploads and for nginx's HTTPS in tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Issued:
    chain_pem: str  # leaf, then the CA
    key_pem: str
    ca_pem: str
    fingerprint: bytes  # SHA-256 of the leaf's DER


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def issue(
    names: tuple[str, ...],
    *,
    valid_from: dt.datetime | None = None,
    valid_for: dt.timedelta = dt.timedelta(days=30),
) -> Issued:
    now = dt.datetime.now(dt.UTC)
    start = valid_from or now - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "berth test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(days=1))
        .not_valid_after(start + valid_for + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem).decode()
    return Issued(
        chain_pem=leaf.public_bytes(pem).decode() + ca_pem,
        key_pem=_pem_key(key),
        ca_pem=ca_pem,
        fingerprint=leaf.fingerprint(hashes.SHA256()),
    )


def other_key() -> str:
    return _pem_key(ec.generate_private_key(ec.SECP256R1()))
