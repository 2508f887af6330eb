"""Keep-alive clients for the whole run, and probing a change until it has effect."""

from __future__ import annotations

import contextlib
import http.client
import random
import threading
import time

from bench.edge.configs import LOOPBACK
from bench.edge.plan import EffectWatch
from bench.edge.tally import Tally


class Clients:
    """``count`` clients, one keep-alive connection each, reused until it fails.

    A short random pause between requests leaves every connection idle part of the time:
    that idle moment is when a reloading nginx closes it under the client.
    """

    def __init__(self, port: int, hosts: list[str], count: int, pause_s: float = 0.01):
        self.port, self.hosts, self.pause_s = port, hosts, pause_s
        self.stop_event = threading.Event()
        self.tallies = [Tally() for _ in range(count)]
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)
        ]

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=15)

    def tally(self) -> Tally:
        total = Tally()
        for t in self.tallies:
            total = total.merge(t)
        return total

    def _run(self, i: int) -> None:
        rng = random.Random(i)
        tally = self.tallies[i]
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
        n = 0
        try:
            while not self.stop_event.is_set():
                host = self.hosts[(i + n) % len(self.hosts)]
                n += 1
                try:
                    conn.request("GET", "/", headers={"Host": host})
                    resp = conn.getresponse()
                    resp.read()
                    tally.record(None, resp.status, resp.will_close)
                    if resp.will_close:
                        conn.close()
                except (OSError, http.client.HTTPException) as e:
                    tally.record(e, None, False)
                    conn.close()
                    # A fresh connection next time (http.client reconnects on its own).
                time.sleep(rng.uniform(0, self.pause_s))
        finally:
            conn.close()


def wait_effect(port: int, watch: EffectWatch, timeout_s: float) -> bool:
    """Probe with a fresh connection each time until ``watch`` sees the change; False when
    ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status: int | None = None
        body = b""
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn.request("GET", "/", headers={"Host": watch.change.domain})
            resp = conn.getresponse()
            status, body = resp.status, resp.read()
        conn.close()
        if watch.seen(status, body):
            return True
        time.sleep(0.001)
    return False
