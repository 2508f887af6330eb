"""What a CA's refusals become: a Failed with its words and its Retry-After, then a backoff.

The "CA" here is a tiny HTTP server on loopback answering every request with one problem
document (pebble has no rate limits to hit); the real CA's failures are in tests/certs.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from berth.certs.acme_client import AcmeIssuer, Failed, _retry_after_seconds
from berth.certs.challenges import ChallengeStore
from berth.certs.manager import CertManager
from berth.certs.model import CertState
from tests.certs.fakeclock import FakeClock

RATE_LIMITED = {
    "type": "urn:ietf:params:acme:error:rateLimited",
    "detail": "too many certificates (5) already issued for this exact set of identifiers",
    "status": 429,
}


class _Refusing(BaseHTTPRequestHandler):
    problem: dict[str, Any] = RATE_LIMITED
    retry_after = "7200"

    def _refuse(self) -> None:
        body = json.dumps(self.problem).encode()
        self.send_response(int(self.problem["status"]))
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Retry-After", self.retry_after)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _refuse

    def log_message(self, *_: object) -> None:
        return


@pytest.fixture
def refusing_ca() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dir"
    finally:
        server.shutdown()
        server.server_close()


def test_a_rate_limited_ca_becomes_a_failed_status_that_waits_its_retry_after(
    refusing_ca: str, tmp_path: Path
) -> None:
    issuer = AcmeIssuer(refusing_ca, tmp_path / "account.key", ChallengeStore(), timeout=5)
    result = issuer.obtain("shop.example.com")
    assert isinstance(result, Failed)
    assert result.problem == "urn:ietf:params:acme:error:rateLimited"
    assert result.reason == RATE_LIMITED["detail"]
    assert result.retry_after == 7200

    clock = FakeClock()
    manager = CertManager(issuer, tmp_path / "certs", clock=clock)
    status = manager.reconcile(["shop.example.com"])["shop.example.com"]
    assert status.state is CertState.FAILED and status.reason == RATE_LIMITED["detail"]
    assert status.next_retry == clock() + dt.timedelta(hours=2)  # longer than our 5 min backoff


def test_retry_after_forms() -> None:
    assert _retry_after_seconds("120") == 120
    assert _retry_after_seconds(None) is None and _retry_after_seconds("soon") is None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    seconds = _retry_after_seconds(later.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert seconds is not None and 3500 < seconds <= 3600
    assert _retry_after_seconds("Mon, 01 Jan 2001 00:00:00 GMT") == 0
