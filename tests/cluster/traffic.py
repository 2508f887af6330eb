"""Constant client load through an ingress, with every request's start, end and outcome.

``tests.harness.ClientLoop`` counts failures; the failure tests must also tell a request that
was in flight on a link when it was cut (lost with the link, whatever the ingress does) from
one sent after the cut (the ingress's fault), so each outcome keeps its times. Each request opens
a new connection to the ingress, as ClientLoop does, so an nginx reload never costs a request
that HTTP would let a client retry. Traffic goes only to the given address (loopback, or a node
of the test's own cluster).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from tests.harness import wait_until


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no HTTP answer (a timeout, a refused or reset connection)
    error: str  # "" for a 200
    body: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def timed_out(self) -> bool:
        """No answer in time: nginx's 504 or the client's own timeout."""
        return self.status == 504 or "Timeout" in self.error


@dataclass
class Tally:
    """Outcomes counted around the moments links were cut (``cuts``, monotonic times)."""

    total: int = 0
    ok: int = 0
    failed: list[Outcome] = field(default_factory=list)  # the ingress's fault
    in_flight_on_cut: list[Outcome] = field(default_factory=list)  # lost with a cut link

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.total,
            "ok": self.ok,
            "failed": len(self.failed),
            "in_flight_on_cut_link": len(self.in_flight_on_cut),
            "failures": [f"{o.status or ''} {o.error}".strip() for o in self.failed[:5]],
        }


def tally(outcomes: Iterable[Outcome], cuts: Iterable[float] = ()) -> Tally:
    """A failure counts as lost with a cut link only if it timed out and was sent before a cut
    that happened before it ended; every other failure counts against the ingress (pure)."""
    marks = sorted(cuts)
    out = Tally()
    for o in outcomes:
        out.total += 1
        if o.ok:
            out.ok += 1
        elif o.timed_out and any(o.started <= cut <= o.ended for cut in marks):
            out.in_flight_on_cut.append(o)
        else:
            out.failed.append(o)
    return out


class Traffic:
    """``clients`` threads GETting ``http://ADDRESS:PORT/`` with a Host header, each one
    request at a time, until stopped or past ``max_seconds`` (a test never spins forever).
    ``address``: loopback, or the address of a node of the test's own cluster."""

    def __init__(
        self,
        port: int,
        host: str,
        clients: int = 2,
        pause: float = 0.01,
        timeout: float = 10.0,
        max_seconds: float = 300.0,
        address: str = "127.0.0.1",
    ) -> None:
        self.url = f"http://{address}:{port}/"
        self.host, self.clients, self.pause = host, clients, pause
        self.timeout, self.max_seconds = timeout, max_seconds
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"traffic-{i}", daemon=True)
            for i in range(clients)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        return self.outcomes

    @property
    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def count(self) -> int:
        with self._lock:
            return len(self._outcomes)

    def wait_for(self, more: int, timeout: float = 30.0) -> None:
        """Until ``more`` requests beyond those made so far have ended."""
        target = self.count() + more
        wait_until(lambda: self.count() >= target, timeout, f"the clients made {target} requests")

    def since(self, mark: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= mark]

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=self.timeout, trust_env=False, limits=limits) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    resp = client.get(self.url, headers={"Host": self.host})
                except httpx.HTTPError as exc:
                    outcome = Outcome(started, time.monotonic(), None, type(exc).__name__)
                else:
                    error = "" if resp.status_code == 200 else resp.text[:120]
                    outcome = Outcome(
                        started, time.monotonic(), resp.status_code, error, resp.text[:200]
                    )
                with self._lock:
                    self._outcomes.append(outcome)
                time.sleep(self.pause)
