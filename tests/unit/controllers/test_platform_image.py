"""A platform image is made once, and a failure is not tried again at every pass."""

from __future__ import annotations

import pytest

from berth.controllers.platform_image import PlatformImage
from berth.errors import BerthError


def test_made_once_and_failures_paced() -> None:
    now = [0.0]
    calls: list[int] = []
    outcomes: list[str | BerthError] = [BerthError("registry down"), "reg/img@sha256:ab"]

    def make() -> str:
        calls.append(1)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BerthError):
            raise outcome
        return outcome

    image = PlatformImage(make, "the test image", clock=lambda: now[0], retry_seconds=30)
    with pytest.raises(BerthError, match="registry down"):
        image.get()
    now[0] = 10.0
    with pytest.raises(BerthError, match="the test image is not ready: registry down"):
        image.get()  # within the pace: not tried again
    assert len(calls) == 1
    now[0] = 31.0
    assert image.get() == "reg/img@sha256:ab"
    assert image.get() == "reg/img@sha256:ab"
    assert len(calls) == 2
