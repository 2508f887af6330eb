"""The ingress nodes' token: what an agent shows a Berth server to be sent the routes.

It reads every route (hostnames and instance addresses), so it is an operator's secret: the
leader makes it, hands it to Swarm as a secret that only the ``berth-ingress`` tasks mount,
and keeps only its SHA-256 in the store (every server checks it there). A new token is a new
secret (Swarm's secrets cannot change) and rolls the ingress tasks.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy.orm import Session

from berth.store.tables import Meta

TOKEN_HASH_KEY = "ingress_token_sha256"  # noqa: S105 (a store key)


def new_token() -> str:
    return "bit_" + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def stored_hash(session: Session) -> str:
    row = session.get(Meta, TOKEN_HASH_KEY)
    return row.value if row is not None else ""


def store_hash(session: Session, digest: str) -> None:
    row = session.get(Meta, TOKEN_HASH_KEY)
    if row is None:
        session.add(Meta(key=TOKEN_HASH_KEY, value=digest))
    else:
        row.value = digest


def verify(session: Session, presented: str) -> bool:
    """Whether ``presented`` is the current token (constant time; none is set: no)."""
    expected = stored_hash(session)
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected, token_sha256(presented))
