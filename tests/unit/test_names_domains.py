"""Custom domain names: IP addresses (in any spelling a browser accepts) are never domains;
the proof-of-control decision and the resolver setting are checked without any network."""

from __future__ import annotations

import pytest

from berth.domain.names import is_valid_domain, validate_domain
from berth.errors import InvalidInput
from berth.services.dns_txt import ResolverMisconfigured, parse_server
from berth.services.domains import proof_problem

IP_LITERALS = [
    "127.0.0.1",
    "10.0.0.1",
    "169.254.169.254",
    "0.0.0.0",
    "255.255.255.255",
    "::1",
    "[::1]",
    "fe80::1",
    "::ffff:127.0.0.1",
]
# Spellings that a browser (WHATWG URL parsing) turns into an IPv4 address.
NUMERIC_LAST_LABEL = ["127.1", "0x7f.1", "0x7f.0.0.1", "1.0x7f", "2130706433.0", "example.123"]


@pytest.mark.parametrize("domain", IP_LITERALS)
def test_ip_literals_are_refused_and_the_message_says_why(domain: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_domain(domain)
    assert caught.value.code == "invalid_domain"
    assert "IP address" in str(caught.value)


@pytest.mark.parametrize("domain", NUMERIC_LAST_LABEL)
def test_a_numeric_last_label_is_refused(domain: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_domain(domain)
    assert caught.value.code == "invalid_domain"
    assert "last label" in str(caught.value)


@pytest.mark.parametrize(
    "domain", ["app.example.com", "10.0.0.1.nip.io", "1password.com", "a.b2", "x1.io", "0x.co"]
)
def test_names_with_digits_stay_valid(domain: str) -> None:
    assert validate_domain(domain) == domain
    assert is_valid_domain(domain)


def test_proof_holds_when_the_value_is_among_the_records() -> None:
    name = "_berth-challenge.app.example.com"
    assert proof_problem(["other", " berth-verify=abc "], "berth-verify=abc", name) is None


def test_proof_problems_say_what_was_found() -> None:
    name = "_berth-challenge.app.example.com"
    missing = proof_problem([], "berth-verify=abc", name)
    assert missing is not None and "no TXT record" in missing and "berth-verify=abc" in missing
    wrong = proof_problem(["berth-verify=nope"], "berth-verify=abc", name)
    assert wrong is not None and "'berth-verify=nope'" in wrong and name in wrong
    many = proof_problem([f"r{i}" for i in range(9)], "berth-verify=abc", name)
    assert many is not None and "4 more" in many


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:53", ("127.0.0.1", 53)), ("[::1]:5353", ("::1", 5353))],
)
def test_resolver_setting_is_an_address_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize(
    "text", ["127.0.0.1", "dns.example:53", "127.0.0.1:0", "1.2.3.4:99999", ":53"]
)
def test_a_bad_resolver_setting_is_a_clear_error(text: str) -> None:
    with pytest.raises(ResolverMisconfigured) as caught:
        parse_server(text)
    assert caught.value.status == 503
    assert "dns_resolver" in str(caught.value)
