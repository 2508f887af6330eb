"""Domain names and wildcard coverage, by example and by hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.certs.names import normalize_domain, normalize_pattern, pattern_covers
from berth.errors import InvalidInput

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(
    lambda s: not s.startswith("xn--") and "--" not in s[2:4]
)
tld = st.from_regex(r"[a-z]{2,10}", fullmatch=True)
domain = st.builds(
    lambda labels, end: ".".join([*labels, end]), st.lists(label, min_size=1, max_size=4), tld
)


def test_examples() -> None:
    assert normalize_domain("Shop.Example.COM.") == "shop.example.com"
    assert normalize_domain("bücher.example") == "xn--bcher-kva.example"
    assert normalize_domain("xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert normalize_pattern("*.Example.com") == "*.example.com"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " ",
        "a..b.com",
        "-a.com",
        "a-.com",
        "a" * 64 + ".com",
        "x" * 2000,
        "*.com",
        "a.*.com",
        "*a.example.com",
        "**.example.com",
        "a b.com",
        "a_b.com",
        "1.2.3.4",
        "example.123",
        "xn--zz.example",
        "localhost",
    ],
)
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_pattern(bad)
    assert info.value.code == "invalid_domain" and info.value.status == 422


def test_a_name_of_more_than_253_characters_is_refused() -> None:
    name = ".".join(["a" * 63] * 4) + ".com"  # 259 characters
    with pytest.raises(InvalidInput):
        normalize_domain(name)


@given(domain)
def test_normalising_is_idempotent_and_case_blind(name: str) -> None:
    once = normalize_domain(name.upper())
    assert once == name
    assert normalize_domain(once) == once
    assert normalize_domain(once + ".") == once


@given(domain)
def test_a_name_covers_itself_only(name: str) -> None:
    assert pattern_covers(name, name)
    assert not pattern_covers(name, "x." + name)
    assert not pattern_covers("x." + name, name)


@given(label, domain)
def test_a_wildcard_covers_exactly_one_more_label(head: str, base: str) -> None:
    wildcard = normalize_pattern("*." + base)
    assert pattern_covers(wildcard, f"{head}.{base}")
    assert not pattern_covers(wildcard, base)  # not the apex
    assert not pattern_covers(wildcard, f"{head}.{head}.{base}")  # not two labels deeper
    assert not pattern_covers(wildcard, f"{head}.x{base}")  # not a lookalike suffix


@given(label, label, domain)
def test_a_wildcard_covers_nothing_outside_its_base(head: str, other: str, base: str) -> None:
    wildcard = "*." + base
    candidate = f"{head}.{other}.com"
    assert pattern_covers(wildcard, candidate) == (f"{other}.com" == base)
