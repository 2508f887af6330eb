"""Arrears end to end: a real app through nginx goes serving → suspended page → serving again,
with the same replica count, and the billing webhook receiver gets signed events."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.billing.webhooks import SIGNATURE_HEADER, verify
from berth.builds.context import pack_directory
from tests.harness import BerthServer, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "busybox-app"
WEBHOOK_SECRET = "e2e-webhook-secret"


class Receiver:
    """A local webhook receiver on loopback that records what it is sent."""

    def __init__(self) -> None:
        received: list[tuple[dict[str, str], bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for headers, body in self.received:
            verify(WEBHOOK_SECRET.encode(), headers.get(SIGNATURE_HEADER), body, time.time())
            out.append(json.loads(body))
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def billing_berth(
    real_platform: None, receiver: Receiver, request: pytest.FixtureRequest
) -> Iterator[BerthServer]:
    server = BerthServer(
        extra_env={
            "BERTH_ARREARS_GRACE_SECONDS": "0",
            "BERTH_BILLING_INTERVAL_SECONDS": "0.5",
            "BERTH_LOW_BALANCE_THRESHOLD_MINOR": "100",
            "BERTH_BILLING_WEBHOOK_URL": receiver.url,
            "BERTH_BILLING_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "BERTH_WEBHOOK_INTERVAL_SECONDS": "0.5",
        }
    )
    request.addfinalizer(server.cleanup)
    server.start()
    yield server


def _user(berth: BerthServer, email: str) -> tuple[httpx.Client, str]:
    resp = httpx.post(
        f"{berth.api_url}/api/v1/auth/signup",
        json={"email": email, "password": "a long enough password"},
    )
    assert resp.status_code == 201, resp.text
    data = resp.json()
    client = httpx.Client(
        base_url=f"{berth.api_url}/api/v1",
        headers={"Authorization": f"Bearer {data['token']}"},
        timeout=120,
    )
    return client, data["tenant"]


def _deploy_busybox(user: httpx.Client, app: str) -> None:
    assert user.post("/apps", json={"name": app, "health_path": "/healthz"}).status_code == 201
    assert user.post(f"/apps/{app}/scale", json={"replicas": 2}).status_code == 200
    lines = []
    with user.stream(
        "POST",
        f"/apps/{app}/builds",
        content=pack_directory(EXAMPLE),
        headers={"Content-Type": "application/gzip"},
    ) as resp:
        assert resp.status_code == 200, resp.read()
        lines = [json.loads(line) for line in resp.iter_lines() if line.strip()]
    release = [e for e in lines if e["type"] == "release"]
    assert release, lines
    dep_id = release[0]["deployment_id"]
    wait_until(
        lambda: user.get(f"/apps/{app}/deployments/{dep_id}").json()["status"] == "succeeded",
        60,
        "the deployment succeeds",
    )


def test_suspension_and_resume_through_nginx(
    billing_berth: BerthServer, receiver: Receiver
) -> None:
    berth = billing_berth
    user, tenant = _user(berth, "payer@example.com")
    berth.api_json("POST", f"/admin/tenants/{tenant}/credit", json={"amount": "10"})
    app = "payer-app"
    _deploy_busybox(user, app)
    host = berth.host_of(app)
    wait_until(lambda: berth.ingress_get(host).status_code == 200, 30, "the app serves")
    assert len(berth.containers(app, all=False)) == 2

    # In arrears past the (zero) grace period: suspended, scaled to zero, a clear page.
    berth.api_json(
        "POST", f"/admin/tenants/{tenant}/adjust", json={"amount": "-25", "memo": "e2e debit"}
    )
    wait_until(
        lambda: user.get("/billing/balance").json()["suspended"], 30, "the tenant is suspended"
    )
    # An nginx reload lets old workers finish what they accepted: wait for the page itself.
    wait_until(
        lambda: (
            (page := berth.ingress_get(host)).status_code == 503
            and "suspended" in page.text.lower()
        ),
        30,
        "the suspended page",
    )
    wait_until(lambda: not berth.containers(app), 60, "the app's containers are gone")
    assert user.get(f"/apps/{app}").json()["scale"] == 2  # remembered
    refused = user.post(f"/apps/{app}/scale", json={"replicas": 3})
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "suspended"
    kinds = [n["kind"] for n in user.get("/billing/notifications").json()]
    assert "suspended" in kinds

    # A top-up resumes at the remembered scale.
    berth.api_json("POST", f"/admin/tenants/{tenant}/credit", json={"amount": "50"})
    wait_until(
        lambda: not user.get("/billing/balance").json()["suspended"], 30, "the tenant resumes"
    )
    wait_until(lambda: berth.ingress_get(host).status_code == 200, 60, "the app serves again")
    wait_until(lambda: len(berth.containers(app, all=False)) == 2, 60, "two instances again")
    assert user.get(f"/apps/{app}").json()["scale"] == 2
    assert "resumed" in [n["kind"] for n in user.get("/billing/notifications").json()]

    # The billing system heard about it, with valid signatures, and the log says delivered.
    wait_until(
        lambda: {"suspended", "resumed"} <= {e["event"] for e in receiver.events()},
        30,
        "signed webhooks for suspension and resume",
    )
    deliveries = user.get("/billing/webhooks").json()
    assert deliveries and all(d["status"] == "delivered" for d in deliveries)
    audit = berth.api_json("GET", "/audit", params={"all": "true"})
    assert any(e["action"].endswith("/adjust") for e in audit)
