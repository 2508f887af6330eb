"""Certificates in the store: the statuses, the order budget and the issued pairs, which every
Berth server reads, so a follower serves what the leader obtained and a new leader neither
orders again nor forgets a backoff. A ``certs_version`` counter in ``meta`` grows with every
change, so a server finds out with one small read whether there is anything new."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from berth.certs.model import CertStatus
from berth.store.tables import CertificateRow, Meta

VERSION_KEY = "certs_version"
ORDERS_KEY = "acme_orders"
ACCOUNT_KEY = "acme_account_key"

Material = dict[str, tuple[str, bytes, bytes]]  # name -> (version, chain, key)


def _bump(session: Session) -> None:
    row = session.get(Meta, VERSION_KEY)
    if row is None:
        session.add(Meta(key=VERSION_KEY, value="1"))
    else:
        row.value = str(int(row.value or "0") + 1)


class SqlCertStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        # What this process last read or wrote of each status: a save writes only the rows
        # this process changed, never one another server changed meanwhile.
        self._seen: dict[str, str] = {}
        self._orders_seen = ""

    def load(self) -> tuple[list[CertStatus], list[datetime]]:
        with self.sessions() as session:
            rows = session.execute(select(CertificateRow.name, CertificateRow.status_json)).all()
            orders = session.get(Meta, ORDERS_KEY)
        statuses: list[CertStatus] = []
        seen: dict[str, str] = {}
        for name, text in rows:
            try:
                statuses.append(CertStatus.from_json(json.loads(text)))
            except (ValueError, KeyError, TypeError):
                continue  # a row without a status yet (an install in flight) or damaged
            seen[name] = text
        self._seen = seen
        self._orders_seen = orders.value if orders is not None else ""
        placed: list[datetime] = []
        try:
            for value in json.loads(self._orders_seen or "[]"):
                placed.append(datetime.fromisoformat(value))
        except (ValueError, TypeError):
            placed = []
        return statuses, placed

    def save(self, statuses: Iterable[CertStatus], orders: Iterable[datetime]) -> None:
        changed = {}
        for status in statuses:
            text = json.dumps(status.to_json(), sort_keys=True)
            if self._seen.get(status.domain) != text:
                changed[status.domain] = text
        orders_text = json.dumps([t.isoformat() for t in orders])
        if not changed and orders_text == self._orders_seen:
            return
        with self.sessions() as session, session.begin():
            for name, text in changed.items():
                row = session.get(CertificateRow, name)
                if row is None:
                    session.add(CertificateRow(name=name, status_json=text, updated_at=time.time()))
                else:
                    row.status_json, row.updated_at = text, time.time()
            session.merge(Meta(key=ORDERS_KEY, value=orders_text))
            if changed:
                _bump(session)
        self._seen.update(changed)
        self._orders_seen = orders_text

    def install(self, name: str, chain_pem: bytes, key_pem: bytes) -> None:
        version = hashlib.sha256(chain_pem).hexdigest()[:24]
        with self.sessions() as session, session.begin():
            row = session.get(CertificateRow, name)
            if row is None:
                row = CertificateRow(name=name, status_json="")
                session.add(row)
            row.chain_pem, row.key_pem = chain_pem.decode("ascii"), key_pem.decode("ascii")
            row.version, row.updated_at = version, time.time()
            _bump(session)

    def remove(self, name: str) -> None:
        with self.sessions() as session, session.begin():
            session.execute(delete(CertificateRow).where(CertificateRow.name == name))
            _bump(session)
        self._seen.pop(name, None)

    def version(self) -> int:
        with self.sessions() as session:
            row = session.get(Meta, VERSION_KEY)
        try:
            return int(row.value) if row is not None else 0
        except ValueError:
            return 0

    def material(self) -> Material:
        """Every name with a pair installed: (version, chain, key)."""
        with self.sessions() as session:
            rows = session.execute(
                select(
                    CertificateRow.name,
                    CertificateRow.version,
                    CertificateRow.chain_pem,
                    CertificateRow.key_pem,
                ).where(CertificateRow.version != "")
            ).all()
        return {n: (v, c.encode("ascii"), k.encode("ascii")) for n, v, c, k in rows}

    def account_key(self) -> str | None:
        with self.sessions() as session:
            row = session.get(Meta, ACCOUNT_KEY)
            return row.value if row is not None and row.value else None

    def keep_account_key(self, pem: str) -> None:
        with self.sessions() as session, session.begin():
            if session.get(Meta, ACCOUNT_KEY) is None:
                session.add(Meta(key=ACCOUNT_KEY, value=pem))
