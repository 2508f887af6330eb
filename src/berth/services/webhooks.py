"""Outgoing signed webhooks (HMAC-SHA256) with retries and a delivery log."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from berth.billing.webhooks import SIGNATURE_HEADER, is_retryable, retry_delay, sign
from berth.periodic import PeriodicLoop
from berth.settings import Settings
from berth.store.tables import WebhookDelivery, new_id

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 12


def enqueue(
    session: Session,
    settings: Settings,
    event: str,
    tenant_id: str | None,
    payload: dict[str, object],
    key: str,
) -> WebhookDelivery | None:
    """Queue an event for the billing webhook, once per key. No URL configured: nothing queued."""
    if not settings.billing_webhook_url:
        return None
    existing = session.scalar(select(WebhookDelivery).where(WebhookDelivery.key == key))
    if existing is not None:
        return existing
    row = WebhookDelivery(
        id=new_id(),
        key=key,
        event=event,
        tenant_id=tenant_id,
        url=settings.billing_webhook_url,
        payload_json=json.dumps(payload, sort_keys=True),
        status="pending",
        next_attempt_at=time.time(),
    )
    session.add(row)
    session.flush()
    return row


@dataclass
class WebhookSender:
    settings: Settings
    sessions: sessionmaker[Session]
    clock: Callable[[], float] = time.time
    # Several servers: only the lease holder sends (checked before each delivery), and its
    # record of a delivery commits only while it still holds the lease (fenced).
    may_act: Callable[[], bool] = lambda: True
    fence: Callable[[Session], None] = lambda session: None

    def __post_init__(self) -> None:
        self._client = httpx.Client(timeout=10.0, follow_redirects=False)
        self._loop = PeriodicLoop(
            "berth-webhooks", self.deliver_due, self.settings.webhook_interval_seconds
        )

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop(timeout=15)
        self._client.close()

    def deliver_due(self) -> int:
        """Try every pending delivery whose time has come; returns how many were delivered."""
        delivered = 0
        with self.sessions() as session:
            now = self.clock()
            due = session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.created_at)
                .limit(100)
            ).all()
            for row in due:
                if not self.may_act():
                    break
                delivered += self._attempt(row, now)
                self.fence(session)
                session.commit()
        return delivered

    def _attempt(self, row: WebhookDelivery, now: float) -> int:
        body = row.payload_json.encode()
        secret = (self.settings.billing_webhook_secret or "unsigned").encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret, int(now), body),
            "Berth-Event": row.event,
            "Berth-Delivery": row.id,
        }
        row.attempts += 1
        status: int | None = None
        try:
            resp = self._client.post(row.url, content=body, headers=headers)
            status = resp.status_code
            row.last_error = "" if status < 300 else f"HTTP {status}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            row.last_error = f"{type(exc).__name__}: {exc}"[:500]
        row.last_status = status
        if status is not None and 200 <= status < 300:
            row.status, row.delivered_at = "delivered", now
            return 1
        if not is_retryable(status) or row.attempts >= MAX_ATTEMPTS:
            row.status = "failed"
        else:
            row.next_attempt_at = now + retry_delay(row.attempts)
        return 0
