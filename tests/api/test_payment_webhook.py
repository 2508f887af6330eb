"""Signed webhooks both ways.

In: a payment provider's notification, signed with the shared secret, tops a tenant up exactly
once; anything not signed right, stale, malformed, for an unknown tenant or in another currency
is refused and changes nothing; with no secret configured the endpoint does not exist.

Out: billing events go to a real HTTP receiver on loopback with a signature it can verify; a
receiver that fails gets retries with backoff until it answers; the delivery log shows it all.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from berth.billing.webhooks import SIGNATURE_HEADER, sign, verify
from berth.services.webhooks import WebhookSender, enqueue
from berth.settings import Settings
from berth.store.tables import AuditEvent, WebhookDelivery
from tests.api.conftest import Account, Env, assert_error

pytestmark = pytest.mark.store

SECRET = "whsec_test_payments"
OUT_SECRET = "whsec_test_outgoing"
PATH = "/billing/payments/webhook"


@pytest.fixture
def payments(env: Env) -> Iterator[Settings]:
    with env.settings_override(payment_webhook_secret=SECRET) as settings:
        yield settings


@pytest.fixture
def payer(env: Env) -> Account:
    return env.signup("payer")


def payment(tenant: str, amount: str = "25.00", key: str = "", currency: str = "EUR") -> bytes:
    body = {
        "tenant": tenant,
        "amount": amount,
        "currency": currency,
        "idempotency_key": key or f"evt_{time.monotonic_ns()}",
    }
    return json.dumps(body).encode()


def post_payment(
    env: Env, body: bytes, signature: str | None = None, *, at: float | None = None
) -> Any:
    if signature is None:
        signature = sign(SECRET.encode(), int(at if at is not None else time.time()), body)
    headers = {"Content-Type": "application/json"}
    if signature:
        headers[SIGNATURE_HEADER] = signature
    return env.call("POST", PATH, content=body, headers=headers)


def test_a_signed_payment_tops_up_once(env: Env, payments: Settings, payer: Account) -> None:
    body = payment(payer.tenant, "25.00", key="evt_1001")
    signature = sign(SECRET.encode(), int(time.time()), body)
    first = post_payment(env, body, signature)
    assert first.status_code == 200, first.text
    assert first.json()["created"] is True and first.json()["balance_minor"] == 2500
    # The provider retries (same body, same signature; or signed again later): no second credit.
    again = post_payment(env, body, signature)
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["transaction_id"] == first.json()["transaction_id"]
    later = post_payment(env, body, at=time.time() + 5)
    assert later.status_code == 200 and later.json()["created"] is False
    assert env.balance(payer.tenant) == 2500
    txs = env.ok("GET", "/billing/transactions", payer.session)
    assert [(t["kind"], t["amount_minor"]) for t in txs] == [("topup", 2500)]
    # The same event id for another amount is a conflict, not a second payment.
    resp = post_payment(env, payment(payer.tenant, "26.00", key="evt_1001"))
    assert_error(resp, 409, "idempotency_conflict")
    assert env.balance(payer.tenant) == 2500
    events = env.ok("GET", "/audit", env.admin, params={"all": "true"})
    assert any(e["actor"] == "payment provider" and e["target"] == payer.tenant for e in events)


def test_unsigned_or_tampered_payments_are_401(
    env: Env, payments: Settings, payer: Account
) -> None:
    body = payment(payer.tenant, "10.00")
    now = int(time.time())
    good = sign(SECRET.encode(), now, body)
    tampered = body.replace(b'"10.00"', b'"99.00"')
    assert tampered != body
    other_sig = sign(b"not the secret", now, body)
    digest = good.split("v1=")[1]
    attempts = {
        "no header": (body, ""),
        "wrong secret": (body, other_sig),
        "tampered body": (tampered, good),
        "stale": (body, sign(SECRET.encode(), now - 400, body)),
        "from the future": (body, sign(SECRET.encode(), now + 400, body)),
        "timestamp changed": (body, f"t={now + 1},v1={digest}"),
        "garbage": (body, "garbage"),
        "no v1": (body, f"t={now}"),
        "two timestamps": (body, f"t={now},t={now},v1={digest}"),
        "upper-case hex": (body, f"t={now},v1={digest.upper()}"),
        "huge header": (body, f"t={now},v1={digest}," + "x=y," * 400),
    }
    for label, (sent, signature) in attempts.items():
        resp = post_payment(env, sent, signature)
        err = assert_error(resp, 401)
        assert err["code"] in ("bad_signature", "stale_signature"), label
    assert env.balance(payer.tenant) == 0
    assert env.ok("GET", "/billing/transactions", payer.session) == []
    # A signature with an extra (rotated) v1 still verifies when one of them matches.
    rotated = f"t={now},v1={'0' * 64},v1={digest}"
    assert post_payment(env, body, rotated).status_code == 200
    assert env.balance(payer.tenant) == 1000


def test_forged_payments_fill_the_audit_log_only_so_far(
    env: Env, payments: Settings, payer: Account
) -> None:
    """Each refusal is audited, up to 20 rows per address per 5 minutes: a forger cannot
    grow the log without bound (a real provider is never 429'd for retrying)."""
    ip = "10.30.0.1"
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: "t=1,v1=" + "0" * 64}
    for _ in range(30):
        resp = env.call("POST", PATH, content=payment(payer.tenant), headers=headers, ip=ip)
        assert_error(resp, 401, ("bad_signature", "stale_signature"))
    with env.db() as session:
        rows = session.scalars(select(AuditEvent.status).where(AuditEvent.ip == ip)).all()
    assert rows == [401] * 20
    assert env.balance(payer.tenant) == 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 422, "invalid_payment"),
        (b"", 422, "invalid_payment"),
        (b"[]", 422, "invalid_payment"),
        (b'"text"', 422, "invalid_payment"),
        (b'{"tenant": "x"}', 422, "invalid_payment"),
        (b"\xff\xfe", 422, "invalid_payment"),
    ],
    ids=repr,
)
def test_malformed_payments_are_422(
    env: Env, payments: Settings, payer: Account, body: bytes, status: int, code: str
) -> None:
    assert_error(post_payment(env, body), status, code)
    assert env.balance(payer.tenant) == 0


def test_bad_payment_contents(env: Env, payments: Settings, payer: Account) -> None:
    cases = [
        (payment("no-such-tenant"), 404, "tenant_not_found"),
        (payment(payer.tenant, currency="USD"), 422, "invalid_currency"),
        (payment(payer.tenant, currency="eur"), 200, None),  # the code is case-insensitive
        (payment(payer.tenant, amount="-5"), 422, "invalid_amount"),
        (payment(payer.tenant, amount="0"), 422, "invalid_amount"),
        (payment(payer.tenant, amount="1.001"), 422, "invalid_amount"),
        (payment(payer.tenant, amount="1e9"), 422, "invalid_amount"),
        (payment(payer.tenant, key="has space"), 422, "invalid_idempotency_key"),
        (b"{" + b'"pad": "' + b"x" * 70_000 + b'"}', 413, "too_large"),
    ]
    for body, status, code in cases:
        resp = post_payment(env, body)
        if code is None:
            assert resp.status_code == status, resp.text
        else:
            assert_error(resp, status, code)
    assert env.balance(payer.tenant) == 2500


def test_without_a_secret_the_endpoint_is_404(env: Env, payer: Account) -> None:
    assert env.platform.settings.payment_webhook_secret == ""
    body = payment(payer.tenant)
    assert_error(post_payment(env, body), 404, "not_configured")
    assert_error(post_payment(env, body, "t=1,v1=" + "0" * 64), 404, "not_configured")
    assert env.balance(payer.tenant) == 0


# -- outgoing webhooks ----------------------------------------------------------------------------


class Receiver:
    """A billing system on loopback: records what it gets, answers with ``status``."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append((dict(self.headers.items()), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/berth-events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def queue(env: Env, settings: Settings, tenant: Account, event: str) -> str:
    with env.db() as session:
        row = enqueue(
            session,
            settings,
            event,
            env.tenant_id(tenant.tenant),
            {"event": event, "tenant": tenant.tenant, "balance_minor": -42},
            f"{event}:{tenant.tenant}:{time.monotonic_ns()}",
        )
        assert row is not None
        session.commit()
        return row.id


def delivery(env: Env, delivery_id: str) -> WebhookDelivery:
    with env.db() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        return row


def pending_ids(env: Env) -> set[str]:
    with env.db() as session:
        stmt = select(WebhookDelivery.id).where(WebhookDelivery.status == "pending")
        return set(session.scalars(stmt))


def test_billing_events_arrive_signed(env: Env, receiver: Receiver) -> None:
    settings = env.settings.model_copy(
        update={"billing_webhook_url": receiver.url, "billing_webhook_secret": OUT_SECRET}
    )
    tenant = env.signup("listener")
    delivery_id = queue(env, settings, tenant, "low_balance")
    sender = WebhookSender(settings, env.platform.sessions)
    try:
        assert sender.deliver_due() >= 1
    finally:
        sender.stop()
    ours = [(h, b) for h, b in receiver.received if h.get("Berth-Delivery") == delivery_id]
    assert len(ours) == 1
    headers, body = ours[0]
    verify(OUT_SECRET.encode(), headers[SIGNATURE_HEADER], body, time.time())
    assert json.loads(body) == {
        "balance_minor": -42,
        "event": "low_balance",
        "tenant": tenant.tenant,
    }
    assert headers["Berth-Event"] == "low_balance"
    assert headers["Content-Type"] == "application/json"
    with pytest.raises(Exception, match="signature"):
        verify(b"another secret", headers[SIGNATURE_HEADER], body, time.time())
    row = delivery(env, delivery_id)
    assert (row.status, row.attempts, row.last_status) == ("delivered", 1, 200)
    log = env.ok("GET", "/billing/webhooks", tenant.session)
    assert [(d["id"], d["status"], d["attempts"]) for d in log] == [(delivery_id, "delivered", 1)]


def test_a_failing_receiver_gets_retries_with_backoff(env: Env, receiver: Receiver) -> None:
    settings = env.settings.model_copy(
        update={"billing_webhook_url": receiver.url, "billing_webhook_secret": OUT_SECRET}
    )
    tenant, stranger = env.signup("flaky"), env.signup("stranger")
    for other in pending_ids(env):  # earlier tests' leftovers must not muddle the count
        with env.db() as session:
            row = session.get(WebhookDelivery, other)
            assert row is not None
            row.status = "failed"
            session.commit()
    delivery_id = queue(env, settings, tenant, "suspended")
    clock = Clock()
    sender = WebhookSender(settings, env.platform.sessions, clock=clock)
    try:
        receiver.status = 500
        started = clock.now
        assert sender.deliver_due() == 0
        first = delivery(env, delivery_id)
        assert (first.status, first.attempts, first.last_status) == ("pending", 1, 500)
        assert first.next_attempt_at > clock.now
        assert "HTTP 500" in first.last_error
        # Not due yet: nothing is sent.
        sent = len(receiver.received)
        assert sender.deliver_due() == 0
        assert len(receiver.received) == sent
        # Due again: a second failure waits longer (exponential backoff).
        clock.now = first.next_attempt_at
        assert sender.deliver_due() == 0
        second = delivery(env, delivery_id)
        assert second.attempts == 2
        first_delay = first.next_attempt_at - started
        second_delay = second.next_attempt_at - clock.now
        assert 0 < first_delay < second_delay
        # The receiver recovers: delivered, and the log says so.
        receiver.status = 200
        clock.now = second.next_attempt_at + 0.001
        assert sender.deliver_due() == 1
        done = delivery(env, delivery_id)
        assert (done.status, done.attempts, done.last_status) == ("delivered", 3, 200)
        assert done.delivered_at == clock.now
        bodies = [b for h, b in receiver.received if h.get("Berth-Delivery") == delivery_id]
        assert len(bodies) == 3 and len(set(bodies)) == 1  # the same event each time
    finally:
        sender.stop()
    log = env.ok("GET", "/billing/webhooks", tenant.session)
    assert [(d["event"], d["status"], d["attempts"], d["last_status"]) for d in log] == [
        ("suspended", "delivered", 3, 200)
    ]
    assert delivery_id in {d["id"] for d in env.ok("GET", "/admin/webhooks", env.admin)}
    assert env.ok("GET", "/billing/webhooks", stranger.session) == []
    assert_error(env.call("GET", "/admin/webhooks", tenant.session), 403, "operator_only")


def test_refusals_and_unreachable_receivers(env: Env, receiver: Receiver) -> None:
    tenant = env.signup("refused")
    settings = env.settings.model_copy(
        update={"billing_webhook_url": receiver.url, "billing_webhook_secret": OUT_SECRET}
    )
    refused = queue(env, settings, tenant, "low_balance")
    receiver.status = 400
    sender = WebhookSender(settings, env.platform.sessions)
    try:
        sender.deliver_due()
    finally:
        sender.stop()
    row = delivery(env, refused)
    assert (row.status, row.attempts, row.last_status) == ("failed", 1, 400)

    # Nobody listening: a connection error is retried later.
    closed = Receiver()
    closed.close()
    dead = settings.model_copy(update={"billing_webhook_url": closed.url})
    unreachable = queue(env, dead, tenant, "resumed")
    sender = WebhookSender(dead, env.platform.sessions)
    try:
        sender.deliver_due()
    finally:
        sender.stop()
    row = delivery(env, unreachable)
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, None)
    assert row.last_error and row.next_attempt_at > time.time()
    log = {d["id"]: d for d in env.ok("GET", "/billing/webhooks", tenant.session)}
    assert log[refused]["status"] == "failed" and log[unreachable]["status"] == "pending"
    assert log[unreachable]["last_error"]


def test_nothing_is_queued_without_a_url(env: Env) -> None:
    tenant = env.signup("quiet")
    with env.db() as session:
        row = enqueue(session, env.settings, "low_balance", env.tenant_id(tenant.tenant), {}, "k")
        assert row is None
