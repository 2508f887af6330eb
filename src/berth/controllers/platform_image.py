"""A platform image the leader hands to Swarm (the node guard's, the ingress nodes'): made the
first time a pass needs it (built offline, pushed to the platform registry, pinned by digest),
then kept for the process. A failure is answered again for ``retry_seconds`` without another
try: each try builds or pushes, and the pass that asks every few seconds must not."""

from __future__ import annotations

import time
from collections.abc import Callable

from berth.errors import BerthError

RETRY_SECONDS = 30.0


class PlatformImage:
    def __init__(
        self,
        make: Callable[[], str],
        what: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._make, self._what, self._clock, self._retry = make, what, clock, retry_seconds
        self.reference = ""
        self._failed: tuple[float, str] | None = None  # when, why

    def get(self) -> str:
        """The pinned reference; raises BerthError (why) while it cannot be made."""
        if self.reference:
            return self.reference
        now = self._clock()
        if self._failed is not None and now - self._failed[0] < self._retry:
            raise BerthError(f"{self._what} is not ready: {self._failed[1]}")
        try:
            self.reference = self._make()
        except BerthError as failure:
            self._failed = (now, failure.message)
            raise
        return self.reference
