"""Backups of a tenant's managed databases: take (on demand, on schedule, before a delete),
list, restore (into the same database or a new one of the tenant), download, prune.

A backup goes pending -> running -> verified, or -> failed with its reason. Verified means its
file was restored into a scratch database and found equal to the source (``compare``); nothing
short of that. A failure is loud: the row says why, the tenant gets a notification, the audit
log an event and the billing webhook (when configured) a ``database.backup_failed``.

Files live under ``settings.resolved_backup_dir``/<tenant id>/<database id>/<backup id>.dump,
every part an id of Berth's; a backup id from a request is only ever looked up in the store
(with the tenant's and the database's ids), never joined into a path.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.databases.backup import (
    BackupFailed,
    Backups,
    Tools,
    compare,
    private_file,
    sha256_of,
)
from berth.databases.backup_policy import BackupFacts, is_due, policy_for, to_prune
from berth.databases.backup_providers import backups_for
from berth.errors import BerthError, Conflict, InvalidInput, NotFound
from berth.services import databases as svc
from berth.services import webhooks
from berth.services.databases_access import ProviderFactory, ServerAddress, account_of, address_of
from berth.settings import Settings
from berth.store.tables import AuditEvent, DatabaseBackup, ManagedDatabase, Notification, new_id

log = logging.getLogger(__name__)

BackupFactory = Callable[[ServerAddress], Backups]
BACKUP_ID: Final = re.compile(r"[0-9a-f]{16}")
_HEX_ID: Final = re.compile(r"[0-9a-f]{1,32}")


def real_backups(address: ServerAddress) -> Backups:
    return backups_for(address.engine, address.admin_url)


def backups_with(settings: Settings) -> BackupFactory:
    """The real backups, their client tools bounded by the settings' timeout."""
    tools = Tools(timeout=settings.database_backup_timeout_seconds)

    def factory(address: ServerAddress) -> Backups:
        return backups_for(address.engine, address.admin_url, tools)

    return factory


class BackupNotFound(NotFound):
    code = "backup_not_found"


class BackupNotVerified(Conflict):
    code = "backup_not_verified"


class BackupRunning(Conflict):
    code = "backup_running"


class NoBackups(InvalidInput):
    status = 400
    code = "no_backups"


# A cache is rebuilt by its app: it is never backed up (nor kept after a delete).
UNBACKED_ENGINES: Final = frozenset({"memcached"})


def backed_up(db: ManagedDatabase) -> bool:
    return db.engine not in UNBACKED_ENGINES


class FinalBackupFailed(Conflict):
    code = "final_backup_failed"


# -- rows and files -------------------------------------------------------------------------


def backup_file(settings: Settings, row: DatabaseBackup) -> Path:
    for part in (row.tenant_id, row.database_id, row.id):
        if _HEX_ID.fullmatch(part) is None:
            raise ValueError("backup paths are made of Berth's hex ids only")
    return settings.resolved_backup_dir / row.tenant_id / row.database_id / f"{row.id}.dump"


def list_backups(
    session: Session, tenant_id: str, name: str
) -> tuple[ManagedDatabase, list[DatabaseBackup]]:
    db = svc.get_database(session, tenant_id, name)
    rows = session.scalars(
        select(DatabaseBackup)
        .where(DatabaseBackup.database_id == db.id, DatabaseBackup.tenant_id == tenant_id)
        .order_by(DatabaseBackup.created_at.desc(), DatabaseBackup.id)
    )
    return db, list(rows)


def get_backup(
    session: Session, tenant_id: str, name: str, backup_id: object
) -> tuple[ManagedDatabase, DatabaseBackup]:
    """Only a backup of this tenant's database of that name: any other id, however formed, is
    the same 404."""
    db = svc.get_database(session, tenant_id, name)
    row = None
    if isinstance(backup_id, str) and BACKUP_ID.fullmatch(backup_id):
        row = session.scalar(
            select(DatabaseBackup).where(
                DatabaseBackup.id == backup_id,
                DatabaseBackup.database_id == db.id,
                DatabaseBackup.tenant_id == tenant_id,
            )
        )
    if row is None:
        raise BackupNotFound(f"database {name!r} has no such backup")
    return db, row


def fingerprint_of(row: DatabaseBackup) -> dict[str, list[str | int]]:
    if not row.fingerprint:
        return {}
    found: dict[str, list[str | int]] = json.loads(row.fingerprint)
    return found


def _remove_file(settings: Settings, row: DatabaseBackup) -> None:
    try:
        backup_file(settings, row).unlink(missing_ok=True)
    except OSError as exc:
        log.error("backup %s: its file could not be removed: %s", row.id, exc.strerror)


# -- taking one -----------------------------------------------------------------------------


def _guard_running(session: Session, settings: Settings, db: ManagedDatabase, now: float) -> None:
    """One backup of a database at a time (they share its scratch database); one left running
    by a crash longer than the timeout is failed so it no longer blocks."""
    for row in session.scalars(
        select(DatabaseBackup).where(
            DatabaseBackup.database_id == db.id, DatabaseBackup.state.in_(("pending", "running"))
        )
    ):
        if now - row.created_at > 2 * settings.database_backup_timeout_seconds + 60:
            _fail(session, settings, db, row, "interrupted (Berth stopped during the backup)", now)
            continue
        raise BackupRunning(f"a backup of {db.name!r} is under way already; try again later")


def start_backup(
    session: Session, settings: Settings, db: ManagedDatabase, kind: str, now: float
) -> DatabaseBackup:
    _guard_running(session, settings, db, now)
    row = DatabaseBackup(
        id=new_id(),
        tenant_id=db.tenant_id,
        database_id=db.id,
        engine=db.engine,
        kind=kind,
        state="pending",
        created_at=now,
    )
    row.path = str(backup_file(settings, row))
    session.add(row)
    session.commit()
    return row


def _backups(session: Session, factory: BackupFactory, db: ManagedDatabase) -> Backups:
    return factory(address_of(svc.server_of(session, db)))


def dump_backup(
    session: Session, settings: Settings, factory: BackupFactory, db: ManagedDatabase,
    row: DatabaseBackup, now: float,
) -> bool:  # fmt: skip
    """The dump, written atomically and privately, its sha256 and fingerprint kept."""
    row.state = "running"
    session.commit()
    final = backup_file(settings, row)
    try:
        with private_file(final) as temp:
            fingerprint = _backups(session, factory, db).dump(account_of(db), temp)
    except BackupFailed as exc:
        _fail(session, settings, db, row, f"dump failed: {exc.message}", now)
        return False
    except OSError as exc:
        _fail(
            session, settings, db, row, f"dump failed: cannot write the file: {exc.strerror}", now
        )
        return False
    row.sha256, row.size_bytes = sha256_of(final), final.stat().st_size
    row.fingerprint = json.dumps(fingerprint, sort_keys=True)
    session.commit()
    return True


def verify_backup(
    session: Session, settings: Settings, factory: BackupFactory, db: ManagedDatabase,
    row: DatabaseBackup, now: float,
) -> bool:  # fmt: skip
    """The file as it was written (sha256), restored into the scratch database, the same
    content as the source: then, and only then, verified."""
    final = backup_file(settings, row)
    try:
        if not final.exists() or sha256_of(final) != row.sha256:
            raise BackupFailed("the file changed after its dump (its sha256 differs)")
        restored = _backups(session, factory, db).verify(account_of(db), final)
    except BackupFailed as exc:
        _fail(session, settings, db, row, f"verification failed: {exc.message}", now)
        return False
    differs = compare(fingerprint_of(row), restored)
    if differs:
        _fail(session, settings, db, row, f"verification failed: {differs}", now)
        return False
    row.state, row.reason, row.finished_at = "verified", "", time.time()
    session.commit()
    return True


def run_backup(
    session: Session, settings: Settings, factory: BackupFactory, db: ManagedDatabase,
    row: DatabaseBackup, now: float,
) -> DatabaseBackup:  # fmt: skip
    if dump_backup(session, settings, factory, db, row, now):
        verify_backup(session, settings, factory, db, row, now)
    return row


def take_backup(
    session: Session, settings: Settings, factory: BackupFactory, tenant_id: str, name: str,
    now: float, kind: str = "manual",
) -> DatabaseBackup:  # fmt: skip
    db = svc.get_database(session, tenant_id, name)
    if db.state != "active":
        svc._live(db)  # says why: deleted, or being deleted
    if not backed_up(db):
        raise NoBackups(
            f"{db.name!r} is a {db.engine} database, a cache: it has no backups (its app "
            "fills it again)"
        )
    row = start_backup(session, settings, db, kind, now)
    return run_backup(session, settings, factory, db, row, now)


def _fail(
    session: Session, settings: Settings, db: ManagedDatabase, row: DatabaseBackup,
    reason: str, now: float,
) -> None:  # fmt: skip
    session.rollback()
    row.state, row.reason, row.finished_at = "failed", reason[:2000], time.time()
    _remove_file(settings, row)  # never downloadable, never restored
    message = f"The backup {row.id} of database {db.name!r} failed: {reason}"
    session.add(
        Notification(id=new_id(), tenant_id=db.tenant_id, kind="database_backup_failed",
                     message=message[:4000], created_at=now)
    )  # fmt: skip
    session.add(
        AuditEvent(id=new_id(), at=now, tenant_id=db.tenant_id, user_id=None, actor="berth",
                   action="database backup failed",
                   target=f"/databases/{db.name}/backups/{row.id}"[:500], ip="", status=502)
    )  # fmt: skip
    webhooks.enqueue(
        session, settings, "database.backup_failed", db.tenant_id,
        {"event": "database.backup_failed", "database": db.name, "backup": row.id,
         "reason": reason, "at": now},
        key=f"database-backup-failed:{row.id}",
    )  # fmt: skip
    session.commit()
    log.error("backup %s of database %s failed: %s", row.id, db.id, reason)


# -- restoring, downloading -----------------------------------------------------------------


def _checked_file(settings: Settings, row: DatabaseBackup) -> Path:
    if row.state != "verified":
        raise BackupNotVerified(f"backup {row.id} is {row.state}: only a verified one can be used")
    path = backup_file(settings, row)
    if not path.exists() or sha256_of(path) != row.sha256:
        raise BackupFailed(f"the file of backup {row.id} is missing or changed since it was made")
    return path


def download(
    session: Session, settings: Settings, tenant_id: str, name: str, backup_id: object
) -> tuple[Path, DatabaseBackup]:
    _, row = get_backup(session, tenant_id, name, backup_id)
    return _checked_file(settings, row), row


@dataclass(frozen=True)
class Restored:
    database: ManagedDatabase
    backup: DatabaseBackup
    new: bool


def restore(
    session: Session, settings: Settings, providers: ProviderFactory, factory: BackupFactory,
    tenant_id: str, name: str, backup_id: object, into: str | None,
) -> Restored:  # fmt: skip
    """Into the same database (its content replaced; its apps' sessions end), or into a new
    database of the tenant named ``into`` (created first, removed again if the restore fails)."""
    source, row = get_backup(session, tenant_id, name, backup_id)
    path = _checked_file(settings, row)
    if into is None:
        target = svc._live(source)
        if not target.write_allowed:
            raise Conflict(
                f"database {name!r} is over its size quota (writes refused): restore into a "
                "new database with --into, or free space first",
                code="database_read_only",
            )
        _guard_running(session, settings, target, time.time())
    else:
        spec = svc.NewDatabase(into, source.engine, source.plan, source.size_mb,
                               source.connection_limit)  # fmt: skip
        target = svc.create_database(session, providers, tenant_id, spec)
    try:
        _backups(session, factory, target).restore(account_of(source), account_of(target), path)
    except BackupFailed as exc:
        session.add(
            AuditEvent(id=new_id(), at=time.time(), tenant_id=tenant_id, user_id=None,
                       actor="berth", action="database restore failed",
                       target=f"/databases/{target.name}/restore/{row.id}"[:500], ip="",
                       status=502)
        )  # fmt: skip
        session.commit()
        if into is not None:
            _remove_new(session, providers, target)
        raise BackupFailed(f"the restore failed: {exc.message}") from None
    return Restored(target, row, into is not None)


def _remove_new(session: Session, providers: ProviderFactory, db: ManagedDatabase) -> None:
    from berth.services.databases_access import provider, tenant_call

    server = svc.server_of(session, db)
    try:
        with tenant_call(server, "remove the database a failed restore made"):
            provider(providers, address_of(server)).drop(account_of(db))
        session.delete(db)
        session.commit()
    except BerthError:
        log.error("database %s: made for a restore that failed, left on its server", db.id)


# -- delete keeps a final backup -------------------------------------------------------------


def delete_with_final_backup(
    session: Session, settings: Settings, providers: ProviderFactory, factory: BackupFactory,
    tenant_id: str, name: str, now: float,
) -> ManagedDatabase:  # fmt: skip
    """A verified backup first, kept as long as the deleted database (``purge_after``); a
    delete whose final backup fails changes nothing and says why."""
    db = svc.get_database(session, tenant_id, name)
    if db.state == "active" and backed_up(db) and not svc.attachments(session, db):
        row = start_backup(session, settings, db, "final", now)
        run_backup(session, settings, factory, db, row, now)
        if row.state != "verified":
            raise FinalBackupFailed(
                f"database {name!r} was not deleted: its final backup failed ({row.reason})"
            )
    deleted = svc.delete_database(session, settings, providers, tenant_id, name, now)
    final = session.scalar(
        select(DatabaseBackup)
        .where(DatabaseBackup.database_id == deleted.id, DatabaseBackup.kind == "final",
               DatabaseBackup.state == "verified")
        .order_by(DatabaseBackup.created_at.desc())
    )  # fmt: skip
    if final is not None and deleted.purge_after is not None:
        final.keep_until = deleted.purge_after
        session.commit()
    return deleted


# -- the scheduled pass ---------------------------------------------------------------------


@dataclass
class PassResult:
    taken: list[str]  # backup ids verified
    failed: list[tuple[str, str]]  # (backup id, why)
    pruned: list[str]


def scheduled_pass(
    session: Session, settings: Settings, factory: BackupFactory, now: float
) -> PassResult:
    """Every active database whose plan's interval has passed since its last backup gets one;
    then every database's backups are pruned by its plan's retention."""
    result = PassResult([], [], [])
    for db in list(
        session.scalars(select(ManagedDatabase).where(ManagedDatabase.state == "active"))
    ):
        last = session.scalar(
            select(DatabaseBackup.created_at)
            .where(DatabaseBackup.database_id == db.id)
            .order_by(DatabaseBackup.created_at.desc())
            .limit(1)
        )
        if not backed_up(db) or not is_due(last, policy_for(db.plan), now):
            continue
        try:
            row = start_backup(session, settings, db, "scheduled", now)
        except BackupRunning:
            continue
        run_backup(session, settings, factory, db, row, now)
        if row.state == "verified":
            result.taken.append(row.id)
        else:
            result.failed.append((row.id, row.reason))
    result.pruned = prune(session, settings, now)
    return result


def prune(session: Session, settings: Settings, now: float) -> list[str]:
    removed: list[str] = []
    for db in list(session.scalars(select(ManagedDatabase))):
        rows = list(
            session.scalars(select(DatabaseBackup).where(DatabaseBackup.database_id == db.id))
        )
        facts = [BackupFacts(r.id, r.kind, r.state, r.created_at, r.keep_until) for r in rows]
        doomed = set(to_prune(facts, policy_for(db.plan), now))
        for r in rows:
            if r.id in doomed:
                _remove_file(settings, r)
                session.delete(r)
                removed.append(r.id)
        session.commit()
    return removed
