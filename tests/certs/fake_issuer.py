"""A fake ACME issuer for unit tests: signs with a local CA, or fails as told.

It keeps the real issuer's contract (tests/certs/test_issuer_contract.py runs both): a chain
leaf first whose leaf covers the domain and matches the key, or a Failed with a reason.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

from cryptography.hazmat.primitives.asymmetric import ec

from berth.certs.acme_client import Failed, Issued, IssueResult
from berth.certs.names import normalize_domain
from tests.unit.certs.certgen import key_pem, make_ca, make_leaf, pem


class FakeIssuer:
    def __init__(self, *, lifetime: dt.timedelta = dt.timedelta(days=90)) -> None:
        self.root = make_ca("fake acme root")
        self.intermediate = make_ca("fake acme intermediate", parent=self.root)
        self.lifetime = lifetime
        self.failing: dict[str, Failed] = {}
        self.broken: set[str] = set()  # obtain raises for these (a bug, not a CA answer)
        self.calls: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold = 0.0  # seconds each obtain takes, to let concurrent calls overlap
        self._lock = threading.Lock()

    def obtain(self, domain: str) -> IssueResult:
        name = normalize_domain(domain)
        with self._lock:
            self.calls.append(name)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold:
                time.sleep(self.hold)
            if name in self.broken:
                raise RuntimeError("fake issuer bug")
            if name in self.failing:
                return self.failing[name]
            now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            key = ec.generate_private_key(ec.SECP256R1())
            leaf, _ = make_leaf(
                self.intermediate, [name], key=key, not_before=now, not_after=now + self.lifetime
            )
            return Issued(
                domain=name,
                chain_pem=pem(leaf) + pem(self.intermediate.cert),
                key_pem=key_pem(key),
                not_before=leaf.not_valid_before_utc,
                not_after=leaf.not_valid_after_utc,
            )
        finally:
            with self._lock:
                self.in_flight -= 1
