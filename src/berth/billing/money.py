"""Amounts of money are plain ``int`` counts of a currency's minor unit (cents, pence, yen).

There is no ``Money`` class and no float anywhere: an amount is an ``int`` and its currency travels
beside it (a plan, a ledger and an invoice each name one currency). Text from users and webhooks is
parsed strictly by :func:`parse_amount`; anything unusual is rejected, never guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from berth.errors import InvalidInput

MAX_MAJOR_UNITS = 10**12
"""The largest amount accepted from text, in major units (a trillion euros is not a top-up)."""

_MAX_EXPONENT = 4
_CODE = re.compile(r"[A-Z]{3}")
# ASCII digits only (``\d`` would accept Arabic-Indic digits); no sign, exponent, separator, space.
# A leading zero is only allowed alone ("0", "0.5"), so "007" is rejected as a probable typo.
_AMOUNT = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?")
_MAX_TEXT = 40


@dataclass(frozen=True, order=True)
class Currency:
    """An ISO 4217 code and the number of decimal places of its minor unit."""

    code: str
    exponent: int

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not _CODE.fullmatch(self.code):
            raise InvalidInput(
                f"currency code must be three uppercase letters, got {self.code!r}",
                code="invalid_currency",
            )
        if (
            isinstance(self.exponent, bool)
            or not isinstance(self.exponent, int)
            or not 0 <= self.exponent <= _MAX_EXPONENT
        ):
            raise InvalidInput(
                f"currency exponent must be an integer 0-{_MAX_EXPONENT}, got {self.exponent!r}",
                code="invalid_currency",
            )

    @property
    def minor_per_major(self) -> int:
        return int(10**self.exponent)

    def __str__(self) -> str:
        return self.code


EUR = Currency("EUR", 2)
USD = Currency("USD", 2)
GBP = Currency("GBP", 2)
JPY = Currency("JPY", 0)
CHF = Currency("CHF", 2)

CURRENCIES: dict[str, Currency] = {c.code: c for c in (EUR, USD, GBP, JPY, CHF)}


def get_currency(code: str) -> Currency:
    """Look up a supported currency by its code ("EUR"); unknown codes are rejected."""
    found = CURRENCIES.get(code) if isinstance(code, str) else None
    if found is None:
        supported = ", ".join(sorted(CURRENCIES))
        raise InvalidInput(
            f"unsupported currency {code!r}; supported: {supported}", code="invalid_currency"
        )
    return found


def parse_amount(text: str, currency: Currency, *, allow_zero: bool = False) -> int:
    """Parse a non-negative decimal amount in major units ("12", "12.5", "12.50") to minor units.

    Rejected with ``InvalidInput(code="invalid_amount")``: signs, exponents, NaN/inf, thousands
    separators, surrounding whitespace, more decimals than the currency has (``"12.0"`` in JPY),
    amounts above :data:`MAX_MAJOR_UNITS`, and zero unless ``allow_zero`` (money movements must
    move something, so zero is refused by default).
    """
    match = _AMOUNT.fullmatch(text) if isinstance(text, str) and len(text) <= _MAX_TEXT else None
    if match is None:
        raise _invalid(f"invalid amount {_preview(text)}: expected digits with an optional '.'")
    whole, decimals = match.group(1), match.group(2) or ""
    if len(decimals) > currency.exponent:
        raise _invalid(
            f"invalid amount {text!r}: {currency.code} has {currency.exponent} decimal places"
        )
    minor = int(whole) * currency.minor_per_major + int(decimals.ljust(currency.exponent, "0") or 0)
    if minor > MAX_MAJOR_UNITS * currency.minor_per_major:
        raise _invalid(f"invalid amount {text!r}: more than {MAX_MAJOR_UNITS} {currency.code}")
    if minor == 0 and not allow_zero:
        raise _invalid("amount must be greater than zero")
    return minor


def format_amount(minor: int, currency: Currency) -> str:
    """Minor units as a plain decimal in major units: 1250 EUR -> "12.50", -5 EUR -> "-0.05".

    For non-negative amounts ``parse_amount(format_amount(x, c), c, allow_zero=True) == x``.
    """
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"amount must be an int of minor units, got {type(minor).__name__}")
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), currency.minor_per_major)
    if currency.exponent == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{currency.exponent}d}"


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_amount")


def _preview(text: object) -> str:
    shown = repr(text)
    return shown if len(shown) <= _MAX_TEXT else shown[:_MAX_TEXT] + "..."
