"""The ranges written into the OpenAPI document match exactly what the services accept."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from berth.api.openapi_limits import integer_range_pattern, memory_pattern
from berth.errors import InvalidInput
from berth.services.validation import parse_memory_mb


@given(st.integers(0, 20_000), st.integers(0, 20_000), st.integers(0, 40_000))
def test_the_range_pattern_matches_exactly_the_range(a: int, b: int, n: int) -> None:
    lo, hi = min(a, b), max(a, b)
    pattern = re.compile(f"^{integer_range_pattern(lo, hi)}$")
    assert bool(pattern.match(str(n))) == (lo <= n <= hi)


@given(st.integers(0, 40_000), st.sampled_from(["", "M", "m", "MB", "mb", "G", "g", "GB"]))
def test_a_memory_text_matches_the_pattern_only_when_the_service_takes_it(
    n: int, unit: str
) -> None:
    text = f"{n}{unit}"
    try:
        parse_memory_mb(text, 16, 16384)
        accepted = True
    except InvalidInput:
        accepted = False
    if re.match(memory_pattern(16, 16384), text):
        assert accepted, text
