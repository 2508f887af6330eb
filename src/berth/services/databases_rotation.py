"""The old credential of a rotation, revoked once it is no longer used (berth.databases.rotation).

``db rotate`` makes a second credential valid and re-releases the attached apps with it; the
old one is set aside (``ManagedDatabase.retiring``). It is revoked by ``settle``: once every
attached app serves a release whose config has the current URL and no instance of a release
with another one is alive, or once ``retire_after`` (the rotation's time plus
``database_rotation_grace_seconds``) has passed. The pass below looks at every pending one
every ``database_rotation_check_seconds``; a server that fails keeps it pending for the next
pass. Leader-only, as the other database passes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from berth.databases.rotation import AppServing, revocation_due
from berth.domain.model import ALIVE_STATES
from berth.errors import BerthError
from berth.periodic import LoopOwner, PeriodicLoop
from berth.services.databases_access import (
    ProviderFactory,
    account_of,
    address_of,
    provider,
    real_provider,
    tenant_call,
)
from berth.settings import Settings
from berth.store.tables import (
    App,
    DatabaseAttachment,
    DbServer,
    Instance,
    ManagedDatabase,
    Release,
)

log = logging.getLogger(__name__)


def _has(release: Release | None, var: str, url: str) -> bool:
    if release is None:
        return False
    config: dict[str, str] = json.loads(release.config_json or "{}")
    return config.get(var) == url


def app_serving(session: Session, app: App, var: str, url: str) -> AppServing:
    """Whether ``app`` serves ``url`` under ``var``, and whether an instance of a release
    without it is still alive (a rollout's old instances, still stopping)."""
    serving = session.get(Release, app.serving_release_id) if app.serving_release_id else None
    alive = session.scalars(
        select(Instance.release_id)
        .where(Instance.app_id == app.id, Instance.state.in_(sorted(ALIVE_STATES)))
        .distinct()
    ).all()
    old = any(not _has(session.get(Release, release_id), var, url) for release_id in alive)
    # An app that never had a release runs nothing with the old URL.
    serves = (serving is None and not alive) or _has(serving, var, url)
    return AppServing(serves_new_url=serves, old_instances_alive=old)


def settle(session: Session, factory: ProviderFactory, db: ManagedDatabase, now: float) -> bool:
    """Revoke ``db``'s old credential if it is due; True when none is pending afterwards.
    A server that fails raises (tenant_call's errors) and leaves it pending."""
    if not db.retiring:
        return True
    server = session.get(DbServer, db.server_id)
    assert server is not None  # a foreign key
    p, account = provider(factory, address_of(server)), account_of(db)
    url = p.credentials(account, db.password).url
    apps = [
        app_serving(session, app, attachment.var, url)
        for attachment, app in session.execute(
            select(DatabaseAttachment, App)
            .join(App, App.id == DatabaseAttachment.app_id)
            .where(DatabaseAttachment.database_id == db.id)
        )
    ]
    if not revocation_due(db.retiring, db.retire_after, apps, now):
        return False
    with tenant_call(server, "revoke the old credential"):
        p.revoke_credential(account, db.retiring)
    db.retiring, db.retire_after, db.retired_at = "", None, now
    session.commit()
    log.info("database %s: the credential before its rotation is revoked", db.id)
    return True


@dataclass
class RevokeResult:
    revoked: list[str] = field(default_factory=list)  # database ids
    pending: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (database id, why)


def revoke_due(session: Session, factory: ProviderFactory, now: float) -> RevokeResult:
    result = RevokeResult()
    ids = session.scalars(
        select(ManagedDatabase.id).where(
            ManagedDatabase.retiring != "", ManagedDatabase.state == "active"
        )
    ).all()
    for database_id in ids:
        db = session.get(ManagedDatabase, database_id)
        if db is None:
            continue
        try:
            done = settle(session, factory, db, now)
        except BerthError as exc:
            session.rollback()
            result.failed.append((database_id, exc.message))
            continue
        except ValueError as exc:  # a stored credential the provider cannot read: a bug
            session.rollback()
            log.error("database %s: its old credential cannot be revoked: %s", database_id, exc)
            result.failed.append((database_id, str(exc)))
            continue
        (result.revoked if done else result.pending).append(database_id)
        session.commit()  # ends the read: the next database's state is read fresh
    return result


class DatabaseRotationPass(LoopOwner):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        factory: ProviderFactory = real_provider,
        *,
        clock: Callable[[], float] = time.time,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        self.sessions, self.factory, self.clock, self.may_act = sessions, factory, clock, may_act
        self._loop = PeriodicLoop(
            "database-rotation", self.run_once, settings.database_rotation_check_seconds
        )

    def run_once(self) -> RevokeResult:
        if not self.may_act():
            return RevokeResult()
        with self.sessions() as session:
            result = revoke_due(session, self.factory, self.clock())
        for database_id, why in result.failed:
            log.warning("database %s: its old credential stays until the next pass: %s",
                        database_id, why)  # fmt: skip
        return result
