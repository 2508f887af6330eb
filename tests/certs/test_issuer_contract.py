"""The contract every issuer keeps, run against pebble through AcmeIssuer and the fake."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from berth.certs.acme_client import AcmeIssuer, Failed, Issued
from berth.certs.challenges import ChallengeStore
from berth.certs.manager import Issuer
from berth.certs.validate import validate_upload
from tests.certs.conftest import AcmeEnv, unique_domain
from tests.certs.fake_issuer import FakeIssuer

IssuerPair = tuple[Issuer, Callable[[str], None]]  # an issuer, and how to make a domain fail


def _real(env: AcmeEnv, tmp: Path) -> IssuerPair:
    good = AcmeIssuer(env.pebble.directory_url, tmp / "a.key", env.store, trust=env.pebble.trust)
    unserved = AcmeIssuer(
        env.pebble.directory_url, tmp / "a.key", ChallengeStore(), trust=env.pebble.trust
    )
    failing: set[str] = set()

    class Switch:
        def obtain(self, domain: str) -> Issued | Failed:
            return (unserved if domain in failing else good).obtain(domain)

    return Switch(), failing.add


def _fake(_: AcmeEnv, __: Path) -> IssuerPair:
    fake = FakeIssuer()

    def fail(domain: str) -> None:
        fake.failing[domain] = Failed(
            domain, "fake: refused", "urn:ietf:params:acme:error:unauthorized"
        )

    return fake, fail


@pytest.fixture(params=["pebble", "fake"])
def issuer(request: pytest.FixtureRequest, tmp_path: Path) -> IssuerPair:
    env: AcmeEnv = request.getfixturevalue("acme_env")
    return (_real if request.param == "pebble" else _fake)(env, tmp_path)


def test_an_issued_chain_covers_the_domain_and_matches_its_key(issuer: IssuerPair) -> None:
    obtain, _ = issuer
    domain = unique_domain("contract")
    result = obtain.obtain(domain.upper())
    assert isinstance(result, Issued)
    assert result.domain == domain
    checked = validate_upload(result.chain_pem, result.key_pem, domain, dt.datetime.now(dt.UTC))
    assert checked.not_after == result.not_after and checked.not_before == result.not_before
    assert len(x509.load_pem_x509_certificates(result.chain_pem)) >= 2  # leaf + intermediate
    key = serialization.load_pem_private_key(result.key_pem, password=None)
    assert key.key_size >= 256  # type: ignore[union-attr]


def test_two_orders_get_two_keys(issuer: IssuerPair) -> None:
    obtain, _ = issuer
    domain = unique_domain("contract")
    first, second = obtain.obtain(domain), obtain.obtain(domain)
    assert isinstance(first, Issued) and isinstance(second, Issued)
    assert first.key_pem != second.key_pem


def test_a_refused_order_is_a_failed_result_with_a_reason(issuer: IssuerPair) -> None:
    obtain, make_fail = issuer
    domain = unique_domain("contract")
    make_fail(domain)
    result = obtain.obtain(domain)
    assert isinstance(result, Failed)
    assert result.domain == domain and result.reason
    assert result.problem == "urn:ietf:params:acme:error:unauthorized"
