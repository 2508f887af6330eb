"""Amounts typed by people and payment providers: strict parsing, exact formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.billing.money import (
    CHF,
    CURRENCIES,
    EUR,
    GBP,
    JPY,
    MAX_MAJOR_UNITS,
    USD,
    Currency,
    format_amount,
    get_currency,
    parse_amount,
)
from berth.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12", EUR, 1200),
        ("12.5", EUR, 1250),
        ("12.50", EUR, 1250),
        ("0.01", EUR, 1),
        ("0.5", USD, 50),
        ("7.05", GBP, 705),
        ("99.99", CHF, 9999),
        ("12", JPY, 12),
        ("1000", JPY, 1000),
        ("1000000000000", EUR, 10**14),
        ("1000000000000.00", EUR, 10**14),
        ("1000000000000", JPY, 10**12),
    ],
)
def test_parse_amount_accepts_plain_decimals(text: str, currency: Currency, minor: int) -> None:
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("", EUR),
        (" 12", EUR),
        ("12 ", EUR),
        ("12\n", EUR),
        ("\t12", EUR),
        ("-12", EUR),
        ("-0.01", EUR),
        ("+12", EUR),
        ("1e3", EUR),
        ("1E3", EUR),
        ("12e-2", EUR),
        ("NaN", EUR),
        ("nan", EUR),
        ("inf", EUR),
        ("-inf", EUR),
        ("Infinity", EUR),
        ("1,000", EUR),
        ("12,50", EUR),
        ("1 000", EUR),
        ("1_000", EUR),
        ("1'000", EUR),
        ("12.", EUR),
        (".5", EUR),
        ("12.5.0", EUR),
        ("0x10", EUR),
        ("007", EUR),
        ("\u0661\u0662", EUR),  # Arabic-Indic digits: int() would accept them
        ("\uff11\uff12", EUR),  # full-width digits
        ("12.345", EUR),
        ("12.001", USD),
        ("12.0", JPY),
        ("12.5", JPY),
        ("1000000000001", EUR),
        ("1000000000000.01", EUR),
        ("1000000000001", JPY),
        ("9" * 1000, EUR),
        ("€12", EUR),
        ("12EUR", EUR),
    ],
)
def test_parse_amount_rejects_junk(text: str, currency: Currency) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_amount(text, currency)
    assert caught.value.code == "invalid_amount"
    assert caught.value.status == 422


@pytest.mark.parametrize("value", [None, 12, 12.5, b"12"])
def test_parse_amount_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_amount(value, EUR)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_amount"


@pytest.mark.parametrize("text", ["0", "0.0", "0.00"])
def test_zero_is_rejected_unless_allowed(text: str) -> None:
    with pytest.raises(InvalidInput, match="greater than zero"):
        parse_amount(text, EUR)
    assert parse_amount(text, EUR, allow_zero=True) == 0


def test_the_ceiling_is_inclusive() -> None:
    assert parse_amount(str(MAX_MAJOR_UNITS), USD) == MAX_MAJOR_UNITS * 100
    with pytest.raises(InvalidInput):
        parse_amount(str(MAX_MAJOR_UNITS + 1), USD)


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1250, EUR, "12.50"),
        (5, EUR, "0.05"),
        (0, EUR, "0.00"),
        (-5, EUR, "-0.05"),
        (-1250, GBP, "-12.50"),
        (1200, JPY, "1200"),
        (-3, JPY, "-3"),
        (10**14, USD, "1000000000000.00"),
    ],
)
def test_format_amount(minor: int, currency: Currency, text: str) -> None:
    assert format_amount(minor, currency) == text


@pytest.mark.parametrize("value", [1.5, "12", True])
def test_format_amount_refuses_anything_but_int(value: object) -> None:
    with pytest.raises(TypeError):
        format_amount(value, EUR)  # type: ignore[arg-type]


@given(
    currency=st.sampled_from(sorted(CURRENCIES.values())),
    major_fraction=st.integers(min_value=0, max_value=MAX_MAJOR_UNITS * 10**4),
)
def test_format_then_parse_round_trips(currency: Currency, major_fraction: int) -> None:
    minor = major_fraction % (MAX_MAJOR_UNITS * currency.minor_per_major + 1)
    assert parse_amount(format_amount(minor, currency), currency, allow_zero=True) == minor


@given(st.text(max_size=30))
def test_parse_amount_never_crashes_and_never_goes_negative(text: str) -> None:
    try:
        minor = parse_amount(text, EUR)
    except InvalidInput as error:
        assert error.code == "invalid_amount"
    else:
        assert 0 < minor <= MAX_MAJOR_UNITS * 100


def test_currency_table() -> None:
    assert {c.code: c.exponent for c in CURRENCIES.values()} == {
        "EUR": 2,
        "USD": 2,
        "GBP": 2,
        "JPY": 0,
        "CHF": 2,
    }
    assert get_currency("JPY") is JPY
    assert str(EUR) == "EUR"
    assert EUR.minor_per_major == 100
    assert JPY.minor_per_major == 1


@pytest.mark.parametrize("code", ["eur", "EU", "EURO", "", "E1R", "XXX", "usd ", None])
def test_unknown_currency_codes_are_rejected(code: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        get_currency(code)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_currency"


@pytest.mark.parametrize(
    ("code", "exponent"),
    [("eur", 2), ("EURO", 2), ("E R", 2), ("EUR", -1), ("EUR", 5), ("EUR", True), ("EUR", 2.0)],
)
def test_currency_validates_code_and_exponent(code: str, exponent: int) -> None:
    with pytest.raises(InvalidInput) as caught:
        Currency(code, exponent)
    assert caught.value.code == "invalid_currency"


def test_a_custom_currency_can_be_configured() -> None:
    bahraini_dinar = Currency("BHD", 3)
    assert parse_amount("1.005", bahraini_dinar) == 1005
    assert format_amount(1005, bahraini_dinar) == "1.005"
