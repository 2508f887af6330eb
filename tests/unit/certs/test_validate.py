"""An uploaded certificate and key: each way of being wrong is its own clear 4xx."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from berth.certs.validate import MAX_CERT_BYTES, validate_upload
from berth.errors import BerthError
from tests.unit.certs.certgen import NOW, key_pem, make_ca, make_leaf, pem

ROOT = make_ca()
INTERMEDIATE = make_ca("test intermediate", parent=ROOT)


def _refused(
    cert: bytes | str, key: bytes | str, domain: str, now: dt.datetime = NOW
) -> BerthError:
    with pytest.raises(BerthError) as info:
        validate_upload(cert, key, domain, now)
    assert 400 <= info.value.status < 500
    assert info.value.message
    return info.value


def test_a_good_certificate_with_its_chain_is_accepted_and_re_encoded() -> None:
    leaf, key = make_leaf(INTERMEDIATE, ["shop.example.com", "www.shop.example.com"])
    text = b"some comment the tenant left\n" + pem(leaf) + pem(INTERMEDIATE.cert)
    checked = validate_upload(text, key_pem(key), "Shop.Example.COM.", NOW)
    assert checked.domain == "shop.example.com"
    assert checked.names == ("shop.example.com", "www.shop.example.com")
    assert checked.chain_pem == pem(leaf) + pem(INTERMEDIATE.cert)  # the comment is gone
    assert checked.not_after == leaf.not_valid_after_utc
    assert b"BEGIN PRIVATE KEY" in checked.key_pem


def test_a_key_that_does_not_match_is_refused() -> None:
    leaf, _ = make_leaf(INTERMEDIATE, ["shop.example.com"])
    other = ec.generate_private_key(ec.SECP256R1())
    assert _refused(pem(leaf), key_pem(other), "shop.example.com").code == "key_mismatch"


def test_an_expired_certificate_is_refused() -> None:
    leaf, key = make_leaf(
        INTERMEDIATE,
        ["shop.example.com"],
        not_before=NOW - dt.timedelta(days=100),
        not_after=NOW - dt.timedelta(seconds=1),
    )
    err = _refused(pem(leaf), key_pem(key), "shop.example.com")
    assert err.code == "cert_expired" and "expired" in err.message


def test_a_certificate_not_valid_yet_is_refused() -> None:
    leaf, key = make_leaf(
        INTERMEDIATE,
        ["shop.example.com"],
        not_before=NOW + dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=90),
    )
    assert _refused(pem(leaf), key_pem(key), "shop.example.com").code == "cert_not_yet_valid"


@pytest.mark.parametrize(
    ("names", "domain"),
    [
        (["other.example.com"], "shop.example.com"),
        (["*.example.com"], "a.b.example.com"),
        (["*.example.com"], "example.com"),
        (["example.com"], "shop.example.com"),
    ],
)
def test_a_certificate_not_covering_the_domain_is_refused(names: list[str], domain: str) -> None:
    leaf, key = make_leaf(INTERMEDIATE, names)
    err = _refused(pem(leaf), key_pem(key), domain)
    assert err.code == "cert_not_covering" and domain in err.message


def test_the_common_name_alone_covers_nothing() -> None:
    leaf, key = make_leaf(INTERMEDIATE, ["shop.example.com"], san=False)
    assert _refused(pem(leaf), key_pem(key), "shop.example.com").code == "cert_not_covering"


def test_a_wildcard_covers_one_label_and_an_operator_may_upload_it_for_the_base() -> None:
    leaf, key = make_leaf(INTERMEDIATE, ["*.apps.example.com"])
    assert validate_upload(pem(leaf), key_pem(key), "a.apps.example.com", NOW).names == (
        "*.apps.example.com",
    )
    assert validate_upload(pem(leaf), key_pem(key), "*.apps.example.com", NOW).domain == (
        "*.apps.example.com"
    )


@pytest.mark.parametrize(
    "garbage",
    [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "é"],
)
def test_garbage_instead_of_a_certificate_is_refused(garbage: bytes | str) -> None:
    _, key = make_leaf(INTERMEDIATE, ["shop.example.com"])
    assert _refused(garbage, key_pem(key), "shop.example.com").code == "cert_unparsable"


def test_garbage_instead_of_a_key_is_refused() -> None:
    leaf, _ = make_leaf(INTERMEDIATE, ["shop.example.com"])
    assert _refused(pem(leaf), b"garbage", "shop.example.com").code == "key_unparsable"


def test_a_key_in_the_certificate_file_is_refused() -> None:
    leaf, key = make_leaf(INTERMEDIATE, ["shop.example.com"])
    err = _refused(pem(leaf) + key_pem(key), key_pem(key), "shop.example.com")
    assert err.code == "cert_unparsable" and "private key" in err.message


def test_an_encrypted_key_is_refused() -> None:
    leaf, key = make_leaf(INTERMEDIATE, ["shop.example.com"])
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    assert _refused(pem(leaf), encrypted, "shop.example.com").code == "key_encrypted"


def test_a_weak_rsa_key_is_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    leaf, key = make_leaf(INTERMEDIATE, ["shop.example.com"], key=weak)
    assert _refused(pem(leaf), key_pem(key), "shop.example.com").code == "key_weak"


def test_an_ed25519_key_is_refused() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    text = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    leaf, _ = make_leaf(INTERMEDIATE, ["shop.example.com"])
    assert _refused(pem(leaf), text, "shop.example.com").code == "key_unsupported"


def test_a_huge_input_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: object) -> list[x509.Certificate]:
        raise AssertionError("parsed a huge input")

    monkeypatch.setattr(x509, "load_pem_x509_certificates", never)
    huge = b"-----BEGIN CERTIFICATE-----\n" + b"A" * (MAX_CERT_BYTES + 1)
    err = _refused(huge, b"key", "shop.example.com")
    assert err.status == 413 and err.code == "cert_too_large"
    assert _refused(b"x", b"k" * (10 * 1024 * 1024), "shop.example.com").code == "key_too_large"


def test_a_chain_in_the_wrong_order_is_refused() -> None:
    leaf, key = make_leaf(INTERMEDIATE, ["shop.example.com"])
    err = _refused(
        pem(leaf) + pem(ROOT.cert) + pem(INTERMEDIATE.cert), key_pem(key), "shop.example.com"
    )
    assert err.code == "chain_order"
    # The leaf not first: the key matches no first certificate or the order is wrong.
    err = _refused(pem(INTERMEDIATE.cert) + pem(leaf), key_pem(key), "shop.example.com")
    assert err.code in {"key_mismatch", "chain_order"}


def test_a_full_chain_up_to_the_root_in_order_is_accepted() -> None:
    leaf, key = make_leaf(INTERMEDIATE, ["shop.example.com"])
    chain = pem(leaf) + pem(INTERMEDIATE.cert) + pem(ROOT.cert)
    assert validate_upload(chain, key_pem(key), "shop.example.com", NOW).chain_pem == chain


@pytest.mark.parametrize(
    "domain", ["", "a" * 300 + ".com", "-bad.example.com", "localhost", "1.2.3.4"]
)
def test_a_bad_domain_is_refused(domain: str) -> None:
    leaf, key = make_leaf(INTERMEDIATE, ["shop.example.com"])
    assert _refused(pem(leaf), key_pem(key), domain).code == "invalid_domain"
