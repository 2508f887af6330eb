"""HTTP-01 answers in the store: the ACME client (on the leader) writes them, any Berth
server's API answers them, so the CA may reach whichever ingress its DNS points at."""

from __future__ import annotations

import time

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from berth.certs.challenges import valid_key_authorization, valid_token
from berth.store.tables import AcmeChallenge

# An order finishes within the client's timeout (90 s); an answer older than this was left by
# a server that died mid-order and is dropped at the next put.
STALE_SECONDS = 3600.0


class StoreChallenges:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def put(self, token: str, key_authorization: str) -> None:
        if not valid_token(token) or not valid_key_authorization(key_authorization):
            raise ValueError("malformed ACME token or key authorisation")
        now = time.time()
        with self.sessions() as session, session.begin():
            session.execute(
                delete(AcmeChallenge).where(AcmeChallenge.created_at < now - STALE_SECONDS)
            )
            session.merge(
                AcmeChallenge(token=token, key_authorization=key_authorization, created_at=now)
            )

    def get(self, token: str) -> str | None:
        if not valid_token(token):
            return None
        with self.sessions() as session:
            row = session.get(AcmeChallenge, token)
            return row.key_authorization if row is not None else None

    def remove(self, token: str) -> None:
        if not valid_token(token):
            return
        with self.sessions() as session, session.begin():
            session.execute(delete(AcmeChallenge).where(AcmeChallenge.token == token))
