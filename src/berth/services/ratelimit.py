"""Sliding-window counters for the anonymous edges of the API (login and sign-up).

They live in the server's memory: one API process is one set of counters. Several API servers
behind one address will need the counters in the store (or a shared cache) instead.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from berth.errors import TooManyRequests

# Enough keys for a busy public sign-up page; past it the least recently seen key is forgotten,
# so an attacker cycling through addresses costs memory only up to this bound.
DEFAULT_MAX_KEYS = 50_000


class RateLimited(TooManyRequests):
    """A 429 that says when to come back: the API answers it with a ``Retry-After`` header."""

    def __init__(self, message: str, *, retry_after: int, code: str = "too_many_requests"):
        super().__init__(f"{message}; try again in {retry_after}s", code=code)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Rule:
    """At most ``limit`` events per key within ``window`` seconds."""

    limit: int
    window: float


class SlidingWindow:
    """Event times per key, for rules given per call; bounded both in keys and in the times
    kept per key (a rule needs only its last ``limit`` events). A plain dict in the order keys
    were last touched, and short lists: about 200 bytes a key (10 MB at the cap)."""

    def __init__(
        self, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._events: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait(self, key: str, rule: Rule) -> int:
        """Seconds until ``key`` may have another event under ``rule``; 0 when it may now."""
        now = self.clock()
        with self._lock:
            times = self._events.get(key)
            if times is None:
                return 0
            live = [t for t in times if t > now - rule.window]
            if not live:
                del self._events[key]
                return 0
            self._events[key] = live
            if len(live) < rule.limit:
                return 0
            # The window frees a slot when the oldest of the last ``limit`` events leaves it.
            oldest = live[-rule.limit]
            return max(1, math.ceil(oldest + rule.window - now))

    def add(self, key: str, rule: Rule) -> None:
        now = self.clock()
        with self._lock:
            times = self._events.pop(key, [])  # re-inserted below: now the newest key
            live = [t for t in times if t > now - rule.window]
            live.append(now)
            self._events[key] = live[-rule.limit :]
            while len(self._events) > self.max_keys:
                del self._events[next(iter(self._events))]

    def forget(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)

    def __len__(self) -> int:
        return len(self._events)


def address_key(ip: str) -> str:
    """The unit a limit counts per: an IPv4 address, or the /64 of an IPv6 address (one
    subscriber usually holds a whole /64, so counting single IPv6 addresses would count
    nothing). Anything else (a test client's name, a Unix socket) counts as itself."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return f"other:{ip[:64]}"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return f"v4:{addr.ipv4_mapped}"
        net = ipaddress.IPv6Network((addr, 64), strict=False)
        return f"v6:{net.network_address}/64"
    return f"v4:{addr}"
