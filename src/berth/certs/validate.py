"""Checks of a tenant's own certificate and key before the ingress may serve them.

Each failure is its own InvalidInput code, so a client (and ``berth certs add``) can say what
is wrong: the size is checked before any parsing (a multi-megabyte "PEM" is refused unread),
then the PEM, the key against the certificate, the chain's order, the domain and the dates.
What is accepted is re-encoded (chain leaf first, key as PKCS#8), so nothing of the tenant's
text beyond the parsed certificates and key ever reaches disk or the proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from berth.certs.names import normalize_pattern, pattern_covers
from berth.errors import InvalidInput, PayloadTooLarge

# A leaf and a few intermediates are 2-8 KiB; 64 KiB leaves room for long chains and RSA-4096.
MAX_CERT_BYTES = 64 * 1024
MAX_KEY_BYTES = 16 * 1024
MAX_CHAIN_LENGTH = 8
MIN_RSA_BITS = 2048
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CertificateRejected(InvalidInput):
    """An uploaded certificate or key that Berth will not serve (422, a code per reason)."""

    code = "certificate_invalid"


@dataclass(frozen=True)
class CheckedCertificate:
    domain: str
    names: tuple[str, ...]  # the certificate's DNS names (SAN), normalised
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str
    chain_pem: bytes  # leaf first, then its issuers
    key_pem: bytes  # PKCS#8, unencrypted: written 0600 beside the chain


def _as_bytes(data: bytes | str, what: str) -> bytes:
    if isinstance(data, str):
        try:
            return data.encode("ascii")
        except UnicodeEncodeError:
            raise CertificateRejected(
                f"the {what} is not PEM text (it holds non-ASCII characters)",
                code=f"{what}_unparsable",
            ) from None
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise CertificateRejected(f"the {what} must be PEM text", code=f"{what}_unparsable")


def check_sizes(cert_pem: bytes | str, key_pem: bytes | str) -> None:
    if len(cert_pem) > MAX_CERT_BYTES:
        raise PayloadTooLarge(
            f"the certificate is {len(cert_pem)} bytes; at most {MAX_CERT_BYTES} are accepted",
            code="cert_too_large",
        )
    if len(key_pem) > MAX_KEY_BYTES:
        raise PayloadTooLarge(
            f"the key is {len(key_pem)} bytes; at most {MAX_KEY_BYTES} are accepted",
            code="key_too_large",
        )


def parse_chain(cert_pem: bytes) -> list[x509.Certificate]:
    if b"PRIVATE KEY-----" in cert_pem:
        raise CertificateRejected(
            "the certificate file holds a private key: give the key separately",
            code="cert_unparsable",
        )
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateRejected(
            "the certificate is not a PEM certificate (-----BEGIN CERTIFICATE-----)",
            code="cert_unparsable",
        ) from None
    if len(chain) > MAX_CHAIN_LENGTH:
        raise CertificateRejected(
            f"the chain has {len(chain)} certificates; at most {MAX_CHAIN_LENGTH} are accepted",
            code="chain_too_long",
        )
    return chain


def parse_key(key_pem: bytes) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateRejected(
            "the key is encrypted; give it without a passphrase", code="key_encrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateRejected(
            "the key is not a PEM private key (-----BEGIN PRIVATE KEY-----)",
            code="key_unparsable",
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise CertificateRejected(
                f"the RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are required",
                code="key_weak",
            )
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, _EC_CURVES):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raise CertificateRejected(
            "Ed25519 certificates are not accepted by browsers; use RSA or ECDSA P-256/P-384",
            code="key_unsupported",
        )
    raise CertificateRejected(
        "the key type is not supported; use RSA (2048+ bits) or ECDSA P-256/P-384",
        code="key_unsupported",
    )


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The certificate's DNS names from its SAN; the subject's CN is ignored, as by browsers."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    names: list[str] = []
    for raw in san.value.get_values_for_type(x509.DNSName):
        try:
            names.append(normalize_pattern(raw))
        except InvalidInput:
            continue  # a name no client would match; others in the SAN may still do
    return tuple(names)


def check_chain_order(chain: list[x509.Certificate]) -> None:
    for index in range(len(chain) - 1):
        child, issuer = chain[index], chain[index + 1]
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise CertificateRejected(
                f"certificate {index + 2} of the chain did not issue certificate {index + 1}: "
                "give the leaf first, then each issuer in order",
                code="chain_order",
            ) from None


def validate_upload(
    cert_pem: bytes | str, key_pem: bytes | str, domain: str, now: datetime
) -> CheckedCertificate:
    check_sizes(cert_pem, key_pem)
    target = normalize_pattern(domain)  # the operator's wildcard upload names *.base
    chain = parse_chain(_as_bytes(cert_pem, "cert"))
    key = parse_key(_as_bytes(key_pem, "key"))
    leaf = chain[0]
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise CertificateRejected(
            "the key does not match the certificate (their public keys differ)",
            code="key_mismatch",
        )
    check_chain_order(chain)
    names = dns_names(leaf)
    if not any(pattern_covers(name, target) for name in names):
        shown = ", ".join(names[:5]) or "no DNS names"
        raise CertificateRejected(
            f"the certificate does not cover {target} (it names {shown})",
            code="cert_not_covering",
        )
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now >= not_after:
        raise CertificateRejected(
            f"the certificate expired at {not_after.isoformat()}", code="cert_expired"
        )
    if now < not_before:
        raise CertificateRejected(
            f"the certificate is not valid before {not_before.isoformat()}",
            code="cert_not_yet_valid",
        )
    return CheckedCertificate(
        domain=target,
        names=names,
        not_before=not_before,
        not_after=not_after,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
