"""A tenant's managed databases: create, list, credentials, rotate, delete (kept closed until
its purge), attach to and detach from apps.

Every function takes the caller's ``tenant_id`` and only sees that tenant's rows: another
tenant's database or app is not found. Server calls are the edge: a create whose store write
fails drops what it made on the server, a server that fails leaves no row; a delete marks its
intent first and undoes what it did on the server when the server fails half-way.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from berth.billing.plans import QuotaDelta
from berth.databases import dedicated_servers as servers_dedicated
from berth.databases import memcached_dedicated as memcached
from berth.databases.dedicated import DEDICATED, server_name
from berth.databases.errors import DatabaseServerError
from berth.databases.names import Engine, new_password, parse_engine, server_names, validate_name
from berth.databases.provider import ENV_VARS, Credentials, Provider
from berth.errors import BerthError, Conflict, InvalidInput, NotFound
from berth.services import apps as app_svc
from berth.services import databases_rotation as rotation
from berth.services import validation as v
from berth.services.billing import check_quota_for, ensure_not_suspended
from berth.services.databases_access import (
    ProviderFactory,
    account_of,
    address_of,
    provider,
    tenant_call,
)
from berth.services.databases_servers import least_loaded
from berth.settings import Settings
from berth.store.tables import (
    App,
    DatabaseAttachment,
    DatabaseBackup,
    DbServer,
    Deployment,
    ManagedDatabase,
    Release,
    new_id,
)

log = logging.getLogger(__name__)

PLANS: Final = ("shared", "dedicated")
# Engines that are only ever dedicated (a server of their own per database) and those that
# may be. Memcached has no users, so on a shared server nothing would keep tenants apart.
DEDICATED_ONLY: Final[frozenset[Engine]] = frozenset({"memcached"})
DEDICATED_ENGINES: Final[frozenset[Engine]] = DEDICATED_ONLY | servers_dedicated.ENGINES
DEFAULT_SIZE_MB: Final = 1024
MIN_SIZE_MB, MAX_SIZE_MB = 16, 1024 * 1024
DEFAULT_CONNECTIONS: Final = 20
MAX_CONNECTIONS: Final = 500
# Engines whose rotations alternate two logins (the URL's user changes); Redis adds passwords.
_PAIRED_LOGINS: Final = frozenset({"postgres", "mariadb"})
# A config key short enough that its Redis key-prefix companion (KEY_KEY_PREFIX) is one too.
ATTACH_KEY_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"


class NotAvailable(InvalidInput):
    code = "not_available"


class DatabaseDeleted(Conflict):
    code = "database_deleted"


def _validate_size_mb(value: int | None) -> int:
    if value is None:
        return DEFAULT_SIZE_MB
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("size_mb is a number of MB", code="invalid_size")
    if not MIN_SIZE_MB <= value <= MAX_SIZE_MB:
        raise InvalidInput(
            f"the size is between {MIN_SIZE_MB} MB and {MAX_SIZE_MB} MB ({MAX_SIZE_MB // 1024}G)",
            code="invalid_size",
        )
    return value


def _validate_connections(value: int | None) -> int:
    if value is None:
        return DEFAULT_CONNECTIONS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONNECTIONS:
        raise InvalidInput(
            f"connections is between 1 and {MAX_CONNECTIONS}", code="invalid_connections"
        )
    return value


def _tenant_engine(engine: object) -> Engine:
    return parse_engine(engine)


def _plan(plan: object, engine: Engine) -> str:
    """None is the engine's own default: dedicated for Memcached, shared for the others."""
    if plan is None:
        return "dedicated" if engine in DEDICATED_ONLY else "shared"
    if plan not in PLANS:
        raise InvalidInput("the plan is shared or dedicated", code="invalid_plan")
    if plan == "shared" and engine in DEDICATED_ONLY:
        raise NotAvailable(
            f"{engine} has no users, so it is never on a shared server: every {engine} "
            "database is dedicated (leave out --plan, or use --plan dedicated)",
            code="plan_not_available",
        )
    if plan == "dedicated" and engine not in DEDICATED_ENGINES:
        raise NotAvailable(f"dedicated {engine} databases are not available yet; use --plan shared")
    return str(plan)


def is_dedicated(server: DbServer) -> bool:
    return server.state == DEDICATED


def get_database(session: Session, tenant_id: str, name: str) -> ManagedDatabase:
    db = session.scalar(
        select(ManagedDatabase).where(
            ManagedDatabase.tenant_id == tenant_id, ManagedDatabase.name == name
        )
    )
    if db is None:
        raise NotFound(f"database {name!r} not found", code="database_not_found")
    return db


def _live(db: ManagedDatabase) -> ManagedDatabase:
    if db.state == "deleting":
        raise DatabaseDeleted(f"database {db.name!r} is being deleted; run the delete again")
    if db.state != "active":
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(db.purge_after or 0))
        raise DatabaseDeleted(
            f"database {db.name!r} is deleted (kept closed until {when}, then dropped)"
        )
    return db


def list_databases(session: Session, tenant_id: str) -> list[ManagedDatabase]:
    stmt = (
        select(ManagedDatabase)
        .where(ManagedDatabase.tenant_id == tenant_id)
        .order_by(ManagedDatabase.name)
    )
    return list(session.scalars(stmt))


def server_of(session: Session, db: ManagedDatabase) -> DbServer:
    server = session.get(DbServer, db.server_id)
    assert server is not None  # a foreign key
    return server


def attachments(session: Session, db: ManagedDatabase) -> list[tuple[DatabaseAttachment, App]]:
    rows = session.execute(
        select(DatabaseAttachment, App)
        .join(App, App.id == DatabaseAttachment.app_id)
        .where(DatabaseAttachment.database_id == db.id)
        .order_by(App.name)
    )
    return [(a, app) for a, app in rows]


@dataclass(frozen=True)
class NewDatabase:
    name: str
    engine: str
    plan: str | None = None  # the engine's default (see _plan)
    size_mb: int | None = None
    connections: int | None = None


def create_database(
    session: Session, factory: ProviderFactory, tenant_id: str, spec: NewDatabase
) -> ManagedDatabase:
    """Everything is checked before the server is asked; then the server, then the row."""
    engine = _tenant_engine(spec.engine)
    plan = _plan(spec.plan, engine)
    name = validate_name(spec.name, engine)
    if engine == "memcached":
        size_mb = memcached.validate_size_mb(
            memcached.DEFAULT_SIZE_MB if spec.size_mb is None else spec.size_mb
        )
    elif plan == "dedicated":
        size_mb = servers_dedicated.validate_size_mb(
            engine,
            servers_dedicated.default_size_mb(engine, DEFAULT_SIZE_MB)
            if spec.size_mb is None
            else spec.size_mb,
            shared_range=(MIN_SIZE_MB, MAX_SIZE_MB),
        )
    else:
        size_mb = _validate_size_mb(spec.size_mb)
    connections = _validate_connections(spec.connections)
    ensure_not_suspended(session, tenant_id)
    if plan == "dedicated":
        # Its container holds the machine's memory as an instance does: the plan's memory
        # quota counts it (QuotaExceeded, 403, when it would go past).
        memory_mb = (
            memcached.container_memory_mb(size_mb)
            if engine == "memcached"
            else servers_dedicated.container_memory_mb(engine, size_mb)
        )
        check_quota_for(session, tenant_id, QuotaDelta(memory_mb=memory_mb))
    existing = session.scalar(
        select(ManagedDatabase).where(
            ManagedDatabase.tenant_id == tenant_id, ManagedDatabase.name == name
        )
    )
    if existing is not None and _is_gone_dedicated(session, existing):
        _forget_dedicated(session, existing)  # a deleted cache keeps nothing: its name is free
        existing = None
    if existing is not None:
        if existing.state != "active":
            _live(existing)  # says it is deleted, and until when its name stays taken
        raise Conflict(f"you have a database named {name!r}", code="database_exists")
    database_id = new_id()
    if plan == "dedicated":
        server = _dedicated_server(engine, tenant_id, database_id)
    else:
        server = least_loaded(session, engine)
    db = ManagedDatabase(
        id=database_id,
        tenant_id=tenant_id,
        name=name,
        engine=engine,
        server_id=server.id,
        plan=plan,
        size_mb=size_mb,
        connection_limit=connections,
        write_allowed=True,
        state="active",
        created_at=time.time(),
    )
    account = account_of(db)
    try:
        p = provider(factory, address_of(server))
        with tenant_call(server, "create the database"):
            creds = p.create(account)
    except BaseException:
        session.rollback()  # with it, a deleted cache's rows forgotten above come back
        raise
    db.password = creds.password
    try:
        if plan == "dedicated":
            session.add(server)  # the server's row, new, goes with the database's
        session.add(db)
        session.commit()
    except BaseException:
        # The row is the only record of the server's objects: without it, they go.
        session.rollback()
        try:
            with tenant_call(server, "remove a database whose record failed"):
                p.drop(account)
        except BerthError:
            log.error("database %s stays on server %s with no record", account.names.database,
                      server.name)  # fmt: skip
        raise
    return db


def _dedicated_server(engine: Engine, tenant_id: str, database_id: str) -> DbServer:
    """The row of the server Berth runs for this one database: its address is the alias on the
    tenant's network (the URL's host), never chosen for shared placement (capacity one, state
    ``dedicated``). Memcached's admin URL holds no secret (it has none); the others' has the
    admin password made here, kept on the Berth server only, as a shared server's."""
    alias = server_name(server_names(tenant_id, database_id).database)
    if engine == "memcached":
        port, url = memcached.PORT, f"memcached://{alias}:{memcached.PORT}"
    else:
        port = servers_dedicated.PORTS[engine]
        url = servers_dedicated.admin_url(engine, alias, new_password())
    return DbServer(
        id=new_id(),
        name=alias,
        engine=engine,
        admin_url=url,
        host=alias,
        port=port,
        capacity=1,
        state=DEDICATED,
        created_at=time.time(),
    )


def _is_gone_dedicated(session: Session, db: ManagedDatabase) -> bool:
    """A deleted dedicated database past its retention (a cache's ends at its delete): its
    server went at the delete, and now its final backup may go too."""
    return (
        db.state == "deleted"
        and (db.purge_after or 0) <= time.time()
        and is_dedicated(server_of(session, db))
    )


def _forget_dedicated(session: Session, db: ManagedDatabase) -> None:
    """The rows of a deleted dedicated database (its server was removed by the delete)."""
    server = server_of(session, db)
    _forget_backups(session, db)
    session.delete(db)
    session.flush()
    session.delete(server)
    session.flush()


def _refuse_rotate(db: ManagedDatabase) -> None:
    if db.engine == "memcached":
        raise memcached.NothingToRotate(
            f"{db.name!r} is a Memcached database: it has no password to rotate, its only "
            "protection is your own network (to empty it: delete it and create it again)"
        )


def credentials(session: Session, factory: ProviderFactory, db: ManagedDatabase) -> Credentials:
    _live(db)
    server = server_of(session, db)
    with tenant_call(server, "give the credentials"):
        return provider(factory, address_of(server)).credentials(account_of(db), db.password)


def _env_for(creds: Credentials, var: str, prefix_var: str) -> dict[str, str]:
    env = {var: creds.url}
    if prefix_var:
        env[prefix_var] = creds.key_prefix
    return env


@dataclass(frozen=True)
class Rereleased:
    app: str
    release: Release | None
    deployment: Deployment | None
    error: str = ""  # the app did not get the new URL, and why (the others still did)


def rotate(
    session: Session,
    settings: Settings,
    factory: ProviderFactory,
    tenant_id: str,
    name: str,
    now: float | None = None,
) -> tuple[ManagedDatabase, list[Rereleased]]:
    """A second credential, valid at once, then every attached app re-released with its URL
    (start-first, as any config change). The old credential keeps working until every attached
    app serves the new URL, or the grace period ends (berth.services.databases_rotation), so
    an app that opens a connection per request never fails to log in."""
    now = time.time() if now is None else now
    db = _live(get_database(session, tenant_id, name))
    _refuse_rotate(db)
    ensure_not_suspended(session, tenant_id)
    server = server_of(session, db)
    if not rotation.settle(session, factory, db, now):
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(db.retire_after or now))
        raise Conflict(
            f"the last rotation of {name!r} is still pending: its old credential is revoked "
            f"once every attached app serves the new URL ({when} at the latest); rotate "
            "again after that",
            code="rotation_pending",
        )
    with tenant_call(server, "rotate the password"):
        rotated = provider(factory, address_of(server)).add_credential(account_of(db))
    creds = rotated.credentials
    db.password = creds.password
    db.login = creds.username if db.engine in _PAIRED_LOGINS else ""
    db.retiring = rotated.retiring
    db.retire_after = now + settings.database_rotation_grace_seconds
    db.rotated_at = now
    if not db.retiring:
        db.retired_at = now  # nothing to set aside
    try:
        session.commit()
    except SQLAlchemyError:
        # The server took a second credential the store could not keep; the old one still
        # works (it is the one stored), so another rotate is all it takes.
        session.rollback()
        log.exception("database %s: rotated on the server, not stored", db.id)
        raise DatabaseServerError(
            "the new password could not be stored; run the rotate again"
        ) from None
    return db, _rerelease(session, settings, tenant_id, db, creds)


def _rerelease(
    session: Session,
    settings: Settings,
    tenant_id: str,
    db: ManagedDatabase,
    creds: Credentials,
) -> list[Rereleased]:
    done = []
    for attachment, app in attachments(session, db):
        app_name, env = app.name, _env_for(creds, attachment.var, attachment.prefix_var)
        try:
            _, release, dep = app_svc.set_config(session, settings, tenant_id, app_name, env, [])
        except BerthError as exc:
            # The password has changed already: one app that cannot take a release now (being
            # deleted, say) must not keep the others on the old one.
            session.rollback()
            done.append(Rereleased(app_name, None, None, exc.message))
            continue
        done.append(Rereleased(app_name, release, dep))
    return done


def delete_database(
    session: Session,
    settings: Settings,
    factory: ProviderFactory,
    tenant_id: str,
    name: str,
    now: float,
) -> ManagedDatabase:
    """Nothing is lost: the database stays on its server with writes refused and its password
    replaced by one nobody knows, until ``purge_after``; the purge pass drops it then.

    The intent is stored first (``deleting``): a delete the server failed half-way is undone,
    and one cut short (a crash) is finished by deleting again."""
    db = get_database(session, tenant_id, name)
    if db.state == "deleted":
        return db  # deleted already: the same answer again
    apps = [app.name for _, app in attachments(session, db)]
    if apps:
        raise Conflict(
            f"database {name!r} is attached to {', '.join(apps)}: detach it first "
            f"(berth db detach {apps[0]} {name})",
            code="database_attached",
        )
    server = server_of(session, db)
    p, account = provider(factory, address_of(server)), account_of(db)
    db.state = "deleting"
    session.commit()
    if is_dedicated(server):
        kept = 0 if db.engine in DEDICATED_ONLY else settings.database_retention_days * 86400
        return _delete_dedicated(session, p, server, db, now, kept)
    try:
        with tenant_call(server, "close the database"):
            p.set_write_allowed(account, False)
            p.rotate_password(account)  # the new password is dropped here: nobody knows it
    except BerthError:
        try:
            with tenant_call(server, "reopen the database"):
                p.set_write_allowed(account, db.write_allowed)
        except BerthError:
            log.error("database %s: writes stay refused after a failed delete", db.id)
        db.state = "active"
        session.commit()
        raise
    db.state = "deleted"
    db.password = ""  # the server's new one was never kept: nobody knows it
    db.retiring, db.retire_after = "", None  # the rotate above refused every other one
    db.deleted_at = now
    db.purge_after = now + settings.database_retention_days * 86400
    db.write_allowed = False
    session.commit()
    return db


def _delete_dedicated(
    session: Session, p: Provider, server: DbServer, db: ManagedDatabase, now: float,
    kept_seconds: float,
) -> ManagedDatabase:  # fmt: skip
    """A dedicated server is removed at once, with its volume. A cache keeps nothing, so its
    name is free again straight away; a database's final backup (taken before) is kept for
    ``kept_seconds``, and its name with it, as a shared one's. A server that fails leaves the
    database as it was."""
    try:
        with tenant_call(server, "remove the database"):
            p.drop(account_of(db))
    except BerthError:
        db.state = "active"
        session.commit()
        raise
    db.state, db.password, db.write_allowed = "deleted", "", False
    db.deleted_at, db.purge_after = now, now + kept_seconds
    session.commit()
    return db


@dataclass(frozen=True)
class PurgeResult:
    purged: list[str]  # database ids dropped from their servers
    failed: list[tuple[str, str]]  # (database id, why): kept for the next pass


def purge_due(session: Session, factory: ProviderFactory, now: float) -> PurgeResult:
    """Drop every deleted database whose retention has ended, from its server and then from
    the store. A server that fails keeps its databases for the next pass."""
    due = list(
        session.scalars(
            select(ManagedDatabase).where(
                ManagedDatabase.state == "deleted",
                ManagedDatabase.purge_after.is_not(None),
                ManagedDatabase.purge_after <= now,
            )
        )
    )
    purged, failed = [], []
    for db in due:
        server = server_of(session, db)
        if is_dedicated(server):
            _forget_dedicated(session, db)  # its server went at the delete
            session.commit()
            purged.append(db.id)
            continue
        try:
            with tenant_call(server, "drop the database"):
                provider(factory, address_of(server)).drop(account_of(db))
        except BerthError as exc:
            failed.append((db.id, exc.message))
            continue
        _forget_backups(session, db)
        session.delete(db)
        session.commit()
        purged.append(db.id)
    return PurgeResult(purged, failed)


def _forget_backups(session: Session, db: ManagedDatabase) -> None:
    """Its backups go with it (the final one was kept for the same retention)."""
    for backup in session.scalars(
        select(DatabaseBackup).where(DatabaseBackup.database_id == db.id)
    ):
        if backup.path:
            try:
                Path(backup.path).unlink(missing_ok=True)
            except OSError as exc:
                log.error("backup %s: its file could not be removed: %s", backup.id, exc)
        session.delete(backup)
    session.flush()


def _default_vars(engine: Engine, var: str | None) -> tuple[str, str]:
    chosen = var if var is not None else ENV_VARS[engine]
    if re.fullmatch(ATTACH_KEY_PATTERN, chosen) is None:
        raise InvalidInput(
            "the config key is 1-100 letters, digits and '_', not starting with a digit",
            code="invalid_config",
        )
    v.validate_config({chosen: ""})
    if engine != "redis":
        return chosen, ""
    # The Redis user may only touch keys under its prefix: the app needs to know it.
    prefix = "REDIS_KEY_PREFIX" if chosen == "REDIS_URL" else f"{chosen}_KEY_PREFIX"
    v.validate_config({prefix: ""})
    return chosen, prefix


def attach(
    session: Session,
    settings: Settings,
    factory: ProviderFactory,
    tenant_id: str,
    app_name: str,
    db_name: str,
    var: str | None = None,
) -> tuple[dict[str, str], Release | None, Deployment | None]:
    """The database's URL in the app's config, as a new release through the ordinary config
    path (a start-first deploy once the app has a release)."""
    app = app_svc.get_app(session, tenant_id, app_name)
    db = _live(get_database(session, tenant_id, db_name))
    engine = parse_engine(db.engine)
    chosen, prefix = _default_vars(engine, var)
    if session.scalar(
        select(DatabaseAttachment.id).where(
            DatabaseAttachment.database_id == db.id, DatabaseAttachment.app_id == app.id
        )
    ):
        raise Conflict(f"{db_name!r} is attached to {app_name!r} already", code="attached")
    taken = [k for k in (chosen, prefix) if k and k in app_svc.app_config(app)]
    if taken:
        raise Conflict(
            f"app {app_name!r} has {', '.join(taken)} in its config already: choose another "
            "name with --as, or unset it first",
            code="config_key_taken",
        )
    creds = credentials(session, factory, db)
    row = DatabaseAttachment(
        id=new_id(),
        tenant_id=tenant_id,
        database_id=db.id,
        app_id=app.id,
        var=chosen,
        prefix_var=prefix,
        created_at=time.time(),
    )
    session.add(row)
    session.commit()
    try:
        return app_svc.set_config(
            session, settings, tenant_id, app_name, _env_for(creds, chosen, prefix), []
        )
    except BaseException:
        session.rollback()
        _forget(session, row.id)
        raise


def _forget(session: Session, attachment_id: str) -> None:
    try:
        found = session.get(DatabaseAttachment, attachment_id)
        if found is not None:
            session.delete(found)
            session.commit()
    except SQLAlchemyError:
        session.rollback()
        log.exception("could not remove attachment %s after a failed attach", attachment_id)


def detach(
    session: Session, settings: Settings, tenant_id: str, app_name: str, db_name: str
) -> tuple[dict[str, str], Release | None, Deployment | None]:
    """The database's keys out of the app's config (a new release), then the attachment."""
    app = app_svc.get_app(session, tenant_id, app_name)
    db = get_database(session, tenant_id, db_name)
    row = session.scalar(
        select(DatabaseAttachment).where(
            DatabaseAttachment.database_id == db.id, DatabaseAttachment.app_id == app.id
        )
    )
    if row is None:
        raise NotFound(f"{db_name!r} is not attached to {app_name!r}", code="not_attached")
    row_id, keys = row.id, [k for k in (row.var, row.prefix_var) if k]
    present = [k for k in keys if k in app_svc.app_config(app)]
    session.commit()  # ends the read before set_config locks the app
    result: tuple[dict[str, str], Release | None, Deployment | None]
    if present:
        result = app_svc.set_config(session, settings, tenant_id, app_name, {}, present)
    else:
        result = (app_svc.app_config(app), None, None)
    found = session.get(DatabaseAttachment, row_id)
    if found is not None:
        session.delete(found)
        session.commit()
    return result
