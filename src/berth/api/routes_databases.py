"""Managed databases: the tenant's (/databases) and the operator's servers (/admin/db-servers).

Thin: parse, call a service with the caller's tenant, shape the answer. The admin URL of a
server is never in an answer; a database's password only in GET .../credentials, to callers
who may deploy (they could read it from their app's environment anyway), and that read is
audited like a change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from sqlalchemy.orm import Session

from berth.api import views
from berth.api.audit import record
from berth.api.deps import CurrentPrincipal, Operator, PlatformDep, SessionDep, Writer
from berth.api.schemas import DeploymentPublic, ReleasePublic, Strict
from berth.databases import memcached_dedicated as memcached
from berth.databases.backup import BackupFailed
from berth.databases.names import ALL_RESERVED, MAX_NAME_LENGTH, NAME_PATTERN
from berth.platform import Platform
from berth.services import apps as app_svc
from berth.services import databases as svc
from berth.services import databases_backups as backups_svc
from berth.services import databases_dedicated as dedicated
from berth.services import databases_launch as launch_svc
from berth.services import databases_servers as servers
from berth.services import databases_usage as usage_svc
from berth.services.databases_access import ProviderFactory
from berth.store.tables import DatabaseBackup, Deployment, ManagedDatabase, Release

router = APIRouter(tags=["databases"])
log = logging.getLogger(__name__)


def database_providers(platform: PlatformDep) -> ProviderFactory:
    """How Berth reaches a database server, shared or dedicated (tests override this with a
    fake provider)."""
    s, workloads = platform.settings, platform.workloads
    hook = platform.netpolicy.ensure_filtered if platform.netpolicy else lambda network: None

    def refuse_create() -> str:
        # The apps of an installation on a Swarm run on overlays a local container is not on.
        local = workloads is not None and workloads.kind == "local"
        return "" if local else dedicated.SWARM_REFUSAL

    return dedicated.local_factory(platform.runtime, s.docker_url, s.cache_dir, hook, refuse_create)


def clock() -> Callable[[], float]:
    """The time deletes and purges count retention from (tests override it)."""
    return time.time


def database_backups(platform: PlatformDep) -> backups_svc.BackupFactory:
    """How Berth backs up a database server's databases (tests override it with the fake)."""
    return dedicated.local_backups(
        platform.runtime, platform.settings.docker_url, platform.settings
    )


ProvidersDep = Annotated[ProviderFactory, Depends(database_providers)]
BackupsDep = Annotated[backups_svc.BackupFactory, Depends(database_backups)]
ClockDep = Annotated[Callable[[], float], Depends(clock)]


# -- shapes ---------------------------------------------------------------------------------


_RESERVED: list[JsonValue] = [*sorted(ALL_RESERVED)]


class DatabaseCreate(Strict):
    # The constraints are documented, not enforced by the model: the service checks them and
    # answers with a precise code (invalid_database_name, unknown_engine, not_available, ...).
    # Which plan and size go with which engine is a rule between fields: stated as the two
    # shapes a valid request has.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {
                    "properties": {
                        "engine": {"enum": ["postgres", "mariadb", "redis"]},
                        "plan": {"enum": ["shared", "dedicated"]},
                    }
                },
                {
                    "properties": {
                        "engine": {"enum": ["memcached"]},
                        "plan": {"enum": ["dedicated"]},
                        "size_mb": {
                            "minimum": memcached.MIN_SIZE_MB,
                            "maximum": memcached.MAX_SIZE_MB,
                        },
                    }
                },
            ]
        },
    )
    name: str = Field(
        max_length=100,
        description="the database's name in Berth (never sent to a server); some are reserved",
        json_schema_extra={
            "pattern": NAME_PATTERN.pattern.join("^$"),
            "maxLength": MAX_NAME_LENGTH,
            "not": {"enum": _RESERVED},
        },
    )
    engine: str = Field(
        max_length=32,
        description="memcached is always dedicated: a container of its own on your network",
        json_schema_extra={"enum": ["postgres", "mariadb", "redis", "memcached"]},
    )
    plan: str | None = Field(
        default=None,
        max_length=32,
        description="default: dedicated for memcached (its only plan), shared for the others "
        "(dedicated: a server of the database's own on your network; for redis, size_mb is "
        "its memory, 16-4096 MB)",
        json_schema_extra={"enum": list(svc.PLANS)},
    )
    size_mb: int | None = Field(
        default=None,
        description=f"storage quota in MB (default {svc.DEFAULT_SIZE_MB}); for memcached its "
        f"memory, {memcached.MIN_SIZE_MB}-{memcached.MAX_SIZE_MB} MB (default "
        f"{memcached.DEFAULT_SIZE_MB})",
        json_schema_extra={"minimum": svc.MIN_SIZE_MB, "maximum": svc.MAX_SIZE_MB},
    )
    connections: int | None = Field(
        default=None,
        description=f"concurrent connections allowed (default {svc.DEFAULT_CONNECTIONS})",
        json_schema_extra={"minimum": 1, "maximum": svc.MAX_CONNECTIONS},
    )


class AttachmentPublic(BaseModel):
    app: str
    var: str


class DatabasePublic(BaseModel):
    name: str
    engine: str
    plan: str
    state: str  # active | deleting | deleted
    size_mb: int
    connection_limit: int
    write_allowed: bool
    host: str
    port: int
    created_at: float
    deleted_at: float | None
    purge_after: float | None = Field(description="a deleted database is dropped after this")
    attached: list[AttachmentPublic]
    # The size quota, from the usage pass (berth.services.databases_usage).
    size_limit_bytes: int = Field(default=0, description="size_mb in bytes")
    bytes_used: int | None = Field(default=None, description="as last measured; null: never")
    connections: int | None = Field(default=None, description="open, as last measured")
    measured_at: float | None = Field(default=None, description="when it was last measured")
    writes_refused: bool = Field(default=False, description="over its size quota")
    quota_pending: bool = Field(
        default=False, description="the quota's last change is not applied on the server yet"
    )
    usage_error: str = Field(default="", description="why the last pass could not measure or apply")
    # db rotate (berth.services.databases_rotation): the credential before the last rotation.
    rotated_at: float | None = Field(default=None, description="when it was last rotated")
    old_credential: str = Field(
        default="",
        description="pending_revocation (until every attached app serves the new URL, or "
        "old_credential_revoke_by) or revoked; empty: never rotated",
    )
    old_credential_revoke_by: float | None = Field(
        default=None, description="pending: revoked at the latest then"
    )
    old_credential_revoked_at: float | None = Field(default=None, description="revoked: when")


class CredentialsPublic(BaseModel):
    engine: str
    host: str
    port: int
    database: str
    username: str
    password: str
    key_prefix: str
    url: str
    env: dict[str, str]
    note: str = Field(default="", description="what protects the database, when not a password")


MEMCACHED_NOTE = (
    "Memcached has no users and no password: its only protection is your own network (your "
    "apps' instances reach it, nothing else does)."
)


class AttachRequest(Strict):
    app: str = Field(max_length=100)
    as_: str | None = Field(
        default=None,
        alias="as",
        max_length=128,
        description="the config key (default DATABASE_URL, REDIS_URL or MEMCACHED_SERVERS)",
        json_schema_extra={"pattern": svc.ATTACH_KEY_PATTERN, "not": {"enum": ["PORT"]}},
    )


class ConfigRelease(BaseModel):
    """What a config change made: the keys now set (not their values: they hold the password),
    and the new release and its deployment once the app has a release."""

    app: str
    config_keys: list[str]
    release: ReleasePublic | None
    deployment: DeploymentPublic | None
    error: str = Field(default="", description="rotate: why this app did not get the new URL")


class RotateResult(BaseModel):
    database: DatabasePublic
    releases: list[ConfigRelease]


class ServerCreate(Strict):
    name: str = Field(max_length=100)
    engine: str = Field(max_length=32, description="postgres, mariadb or redis")
    url: str = Field(max_length=2000, description="admin URL; kept on the Berth server only")
    host: str | None = Field(default=None, max_length=253, description="tenants' address")
    port: int | None = Field(default=None, description="tenants' port")
    capacity: int = Field(default=servers.DEFAULT_CAPACITY, description="databases it may hold")


class ServerPublic(BaseModel):
    name: str
    engine: str
    host: str
    port: int
    state: str
    capacity: int
    databases: int
    deleted_databases: int
    load: float
    created_at: float


class ServerInfo(ServerPublic):
    reachable: bool
    message: str
    bytes_used: int
    connections: int


class BackupPublic(BaseModel):
    id: str
    database: str
    kind: str = Field(description="manual, scheduled, or final (taken by a delete)")
    state: str = Field(description="pending, running, verified or failed")
    reason: str = Field(description="why it failed")
    size_bytes: int
    sha256: str
    tables: dict[str, list[str | int]] = Field(
        description="what it was verified against: per table [rows, digest] (Redis: keys)"
    )
    created_at: float
    finished_at: float | None
    keep_until: float | None


class RestoreRequest(Strict):
    backup: str = Field(max_length=64)
    into: str | None = Field(
        default=None, max_length=100, description="a new database to restore into"
    )


class RestorePublic(BaseModel):
    database: DatabasePublic
    backup: BackupPublic
    new: bool


class PurgePublic(BaseModel):
    purged: int
    failed: list[str]


# -- views ----------------------------------------------------------------------------------


def _public(session: Session, db: ManagedDatabase) -> DatabasePublic:
    server = svc.server_of(session, db)
    last = usage_svc.last_measurement(session, db.id)
    return DatabasePublic(
        name=db.name,
        engine=db.engine,
        plan=db.plan,
        state=db.state,
        size_mb=db.size_mb,
        connection_limit=db.connection_limit,
        write_allowed=db.write_allowed,
        host=server.host,
        port=server.port,
        created_at=db.created_at,
        deleted_at=db.deleted_at,
        purge_after=db.purge_after,
        attached=[
            AttachmentPublic(app=app.name, var=a.var) for a, app in svc.attachments(session, db)
        ],
        size_limit_bytes=usage_svc.limit_bytes(db),
        bytes_used=last.bytes_used if last else None,
        connections=last.connections if last else None,
        measured_at=last.measured_at if last else None,
        writes_refused=db.state == "active" and not db.write_allowed,
        quota_pending=db.state == "active" and not db.write_applied,
        usage_error=db.usage_error,
        rotated_at=db.rotated_at,
        old_credential=(
            "pending_revocation" if db.retiring else "revoked" if db.retired_at is not None else ""
        ),
        old_credential_revoke_by=db.retire_after if db.retiring else None,
        old_credential_revoked_at=None if db.retiring else db.retired_at,
    )


def _backup_public(db: ManagedDatabase, row: DatabaseBackup) -> BackupPublic:
    return BackupPublic(
        id=row.id,
        database=db.name,
        kind=row.kind,
        state=row.state,
        reason=row.reason,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        tables=backups_svc.fingerprint_of(row),
        created_at=row.created_at,
        finished_at=row.finished_at,
        keep_until=row.keep_until,
    )


def _config_release(
    session: Session,
    tenant_id: str,
    app_name: str,
    config: dict[str, str],
    release: Release | None,
    dep: Deployment | None,
) -> ConfigRelease:
    app = app_svc.get_app(session, tenant_id, app_name)
    return ConfigRelease(
        app=app_name,
        config_keys=sorted(config),
        release=views.release_public(release, app) if release else None,
        deployment=views.deployment_public(session, dep),
    )


def _server_public(load: servers.ServerLoad) -> ServerPublic:
    s = load.server
    return ServerPublic(
        name=s.name,
        engine=s.engine,
        host=s.host,
        port=s.port,
        state=s.state,
        capacity=s.capacity,
        databases=load.databases,
        deleted_databases=load.deleted,
        load=round(load.databases / s.capacity, 4),
        created_at=s.created_at,
    )


# -- tenants --------------------------------------------------------------------------------


@router.post("/databases", status_code=201)
def create_database(
    body: DatabaseCreate,
    session: SessionDep,
    platform: PlatformDep,
    providers: ProvidersDep,
    who: Writer,
) -> DatabasePublic:
    """A database on the least loaded active server of the engine (409 when none has room)."""
    spec = svc.NewDatabase(body.name, body.engine, body.plan, body.size_mb, body.connections)
    created = _public(session, svc.create_database(session, providers, who.tenant_id, spec))
    _refilter(platform)
    return created


def _refilter(platform: Platform) -> None:
    """The tenant's app networks reach a server once it has a database there, and stop when
    its last one there is gone: the egress filter's rules now, not at its next pass."""
    if platform.netpolicy is None:
        return
    try:
        platform.netpolicy.sync()
    except Exception as exc:  # the filter's loop retries; the database itself is done
        log.warning("egress filter: sync after a database change failed: %s", exc)
        platform.netpolicy.wake()


@router.get("/databases")
def list_databases(session: SessionDep, who: CurrentPrincipal) -> list[DatabasePublic]:
    return [_public(session, db) for db in svc.list_databases(session, who.tenant_id)]


@router.get("/databases/{name}")
def get_database(name: str, session: SessionDep, who: CurrentPrincipal) -> DatabasePublic:
    return _public(session, svc.get_database(session, who.tenant_id, name))


@router.get("/databases/{name}/credentials")
def get_credentials(
    name: str,
    request: Request,
    session: SessionDep,
    platform: PlatformDep,
    providers: ProvidersDep,
    who: Writer,
) -> CredentialsPublic:
    """The password: for roles that may deploy (viewers and read tokens get 403). Audited."""
    creds = svc.credentials(session, providers, svc.get_database(session, who.tenant_id, name))
    ip = request.client.host if request.client else ""
    record(platform, who, "GET /databases/{name}/credentials", request.url.path, ip, 200)
    return CredentialsPublic(
        engine=creds.engine,
        host=creds.host,
        port=creds.port,
        database=creds.database,
        username=creds.username,
        password=creds.password,
        key_prefix=creds.key_prefix,
        url=creds.url,
        env=creds.env(),
        note=MEMCACHED_NOTE if creds.engine == "memcached" else "",
    )


@router.post("/databases/{name}/rotate")
def rotate(
    name: str,
    session: SessionDep,
    platform: PlatformDep,
    providers: ProvidersDep,
    now: ClockDep,
    who: Writer,
) -> RotateResult:
    """A new password; every attached app gets the new URL in a new release (start-first). The
    old one keeps working until every attached app serves the new URL (or the grace period
    ends): an app that connects per request never fails to log in."""
    db, done = svc.rotate(session, platform.settings, providers, who.tenant_id, name, now())
    platform.trigger()
    releases = []
    for item in done:
        app = app_svc.get_app(session, who.tenant_id, item.app)
        releases.append(
            ConfigRelease(
                app=item.app,
                config_keys=sorted(app_svc.app_config(app)),
                release=views.release_public(item.release, app) if item.release else None,
                deployment=views.deployment_public(session, item.deployment),
                error=item.error,
            )
        )
    return RotateResult(database=_public(session, db), releases=releases)


@router.delete("/databases/{name}")
def delete_database(
    name: str,
    session: SessionDep,
    platform: PlatformDep,
    providers: ProvidersDep,
    backups: BackupsDep,
    now: ClockDep,
    who: Writer,
) -> DatabasePublic:
    """A verified final backup first (kept as long as the database), then closes the database
    (writes refused, a password nobody knows) and keeps it until ``purge_after``; then the purge
    pass drops it. Refused (409) while apps are attached, or when the final backup fails."""
    db = backups_svc.delete_with_final_backup(
        session, platform.settings, providers, backups, who.tenant_id, name, now()
    )
    deleted = _public(session, db)
    _refilter(platform)
    return deleted


@router.post("/databases/{name}/backups", status_code=201)
def take_backup(
    name: str,
    session: SessionDep,
    platform: PlatformDep,
    backups: BackupsDep,
    now: ClockDep,
    who: Writer,
) -> BackupPublic:
    """A backup now: dumped, then restored into a scratch database and compared. Answers once
    it is verified; a backup that failed is a 502 ``backup_failed`` with its reason (and stays
    listed as failed)."""
    row = backups_svc.take_backup(session, platform.settings, backups, who.tenant_id, name, now())
    db = svc.get_database(session, who.tenant_id, name)
    if row.state != "verified":
        raise BackupFailed(f"backup {row.id} of {name!r} failed: {row.reason}")
    return _backup_public(db, row)


@router.get("/databases/{name}/backups")
def list_backups(name: str, session: SessionDep, who: CurrentPrincipal) -> list[BackupPublic]:
    db, rows = backups_svc.list_backups(session, who.tenant_id, name)
    return [_backup_public(db, row) for row in rows]


@router.get("/databases/{name}/backups/{backup_id}")
def get_backup(
    name: str, backup_id: str, session: SessionDep, who: CurrentPrincipal
) -> BackupPublic:
    db, row = backups_svc.get_backup(session, who.tenant_id, name, backup_id)
    return _backup_public(db, row)


@router.get(
    "/databases/{name}/backups/{backup_id}/file",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_backup(
    name: str,
    backup_id: str,
    request: Request,
    session: SessionDep,
    platform: PlatformDep,
    who: Writer,
) -> FileResponse:
    """The verified backup's file, streamed (its sha256 in ``X-Backup-Sha256``). Audited."""
    path, row = backups_svc.download(session, platform.settings, who.tenant_id, name, backup_id)
    ip = request.client.host if request.client else ""
    record(platform, who, "GET /databases/{name}/backups/{id}/file", request.url.path, ip, 200)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{name}-{row.id}.{row.engine}.dump",
        headers={"X-Backup-Sha256": row.sha256},
    )


@router.post("/databases/{name}/restore")
def restore_backup(
    name: str,
    body: RestoreRequest,
    session: SessionDep,
    platform: PlatformDep,
    providers: ProvidersDep,
    backups: BackupsDep,
    who: Writer,
) -> RestorePublic:
    """A verified backup of ``name`` into ``name`` itself (its content replaced, its sessions
    ended) or into a new database ``into`` of the same engine."""
    done = backups_svc.restore(
        session, platform.settings, providers, backups, who.tenant_id, name, body.backup,
        body.into,
    )  # fmt: skip
    source = svc.get_database(session, who.tenant_id, name)
    if done.new:
        _refilter(platform)
    return RestorePublic(
        database=_public(session, done.database),
        backup=_backup_public(source, done.backup),
        new=done.new,
    )


@router.post("/databases/{name}/attachments", status_code=201)
def attach(
    name: str,
    body: AttachRequest,
    session: SessionDep,
    platform: PlatformDep,
    providers: ProvidersDep,
    who: Writer,
) -> ConfigRelease:
    """The URL in the app's config (DATABASE_URL / REDIS_URL unless ``as``): a new release."""
    config, release, dep = svc.attach(
        session, platform.settings, providers, who.tenant_id, body.app, name, body.as_
    )
    platform.trigger()
    return _config_release(session, who.tenant_id, body.app, config, release, dep)


@router.delete("/databases/{name}/attachments/{app}")
def detach(
    name: str, app: str, session: SessionDep, platform: PlatformDep, who: Writer
) -> ConfigRelease:
    config, release, dep = svc.detach(session, platform.settings, who.tenant_id, app, name)
    platform.trigger()
    return _config_release(session, who.tenant_id, app, config, release, dep)


# -- operators ------------------------------------------------------------------------------


@router.post("/admin/db-servers", status_code=201)
def add_server(
    body: ServerCreate, session: SessionDep, providers: ProvidersDep, who: Operator
) -> ServerPublic:
    """Register a shared server: its provider's check() and prepare() run first, and a server
    that fails them is refused with the reason (nothing stored)."""
    server = servers.add_server(
        session,
        providers,
        body.name,
        body.engine,
        body.url,
        body.host,
        body.port,
        body.capacity,
    )
    return _server_public(servers.server_load(session, server))


@router.get("/admin/db-servers")
def list_servers(session: SessionDep, who: Operator) -> list[ServerPublic]:
    return [_server_public(load) for load in servers.list_servers(session)]


@router.get("/admin/db-servers/{name}")
def server_info(
    name: str, session: SessionDep, providers: ProvidersDep, who: Operator
) -> ServerInfo:
    """The server with what its databases hold and their connections, asked of it now."""
    server = servers.get_server(session, name)
    usage = servers.measure(session, providers, server)
    return ServerInfo(
        **_server_public(servers.server_load(session, server)).model_dump(),
        reachable=usage.reachable,
        message=usage.message,
        bytes_used=usage.bytes_used,
        connections=usage.connections,
    )


@router.post("/admin/db-servers/{name}/drain")
def drain_server(name: str, session: SessionDep, who: Operator) -> ServerPublic:
    """No new database goes there; the ones it holds keep working."""
    server = servers.set_state(session, name, "draining")
    return _server_public(servers.server_load(session, server))


@router.post("/admin/db-servers/{name}/activate")
def activate_server(name: str, session: SessionDep, who: Operator) -> ServerPublic:
    server = servers.set_state(session, name, "active")
    return _server_public(servers.server_load(session, server))


class ServerLaunch(Strict):
    name: str = Field(max_length=40)
    engine: str = Field(max_length=32, description="redis, postgres or mariadb")
    listen: str = Field(max_length=64, description="an IPv4 address of this machine")
    port: int | None = Field(default=None, description="default: the engine's")
    memory_mb: int | None = Field(default=None, description="the container's memory limit")
    capacity: int = Field(default=servers.DEFAULT_CAPACITY, description="databases it may hold")


def _engine_client(platform: Platform) -> Any:
    import docker

    url = platform.settings.docker_url
    try:
        return docker.DockerClient(base_url=url) if url else docker.from_env()
    except docker.errors.DockerException as exc:
        raise launch_svc.LaunchFailed(f"the container engine cannot be reached: {exc}") from None


@router.post("/admin/db-servers/launch", status_code=201)
def launch_server(
    body: ServerLaunch,
    session: SessionDep,
    platform: PlatformDep,
    providers: ProvidersDep,
    who: Operator,
) -> ServerPublic:
    """Berth runs the server itself (a container of an image made offline from the distro's
    packages, its data on a volume that outlives the container) and registers it."""
    client = _engine_client(platform)
    try:
        server = launch_svc.launch_server(
            session, providers, client, platform.settings, platform.installation,
            name=body.name, engine=body.engine, listen=body.listen, port=body.port,
            memory_mb=body.memory_mb, capacity=body.capacity,
        )  # fmt: skip
    finally:
        client.close()
    _refilter(platform)
    return _server_public(servers.server_load(session, server))


@router.delete("/admin/db-servers/{name}", status_code=204)
def remove_server(name: str, session: SessionDep, platform: PlatformDep, who: Operator) -> None:
    """Refused (409) while it holds any database, a deleted one kept for retention included.
    A server Berth launched loses its container; its data volume is kept."""
    servers.remove_server(session, name)
    if launch_svc.LAUNCH_NAME.fullmatch(name):
        client = _engine_client(platform)
        try:
            launch_svc.remove_launched(client, name, keep_data=True)
        finally:
            client.close()
    _refilter(platform)


@router.post("/admin/databases/purge")
def purge(
    session: SessionDep, providers: ProvidersDep, now: ClockDep, who: Operator
) -> PurgePublic:
    """Run the purge pass now: deleted databases past their retention are dropped."""
    result = svc.purge_due(session, providers, now())
    return PurgePublic(purged=len(result.purged), failed=[why for _, why in result.failed])


class UsagePassPublic(BaseModel):
    measured: int
    writes_refused: list[str] = Field(description="databases (tenant/name) refused writes now")
    writes_resumed: list[str] = Field(description="databases (tenant/name) given writes back")
    unreachable: list[str] = Field(description="servers not measured, and why")
    failed: list[str] = Field(description="databases not measured or not applied, and why")
    storage_charges: int


@router.post("/admin/databases/usage")
def usage_pass(
    session: SessionDep,
    platform: PlatformDep,
    providers: ProvidersDep,
    now: ClockDep,
    who: Operator,
) -> UsagePassPublic:
    """Run the usage pass now: every database measured, the size quota applied, the closed
    hours' storage billed (the leader runs it every database_usage_interval_seconds)."""
    result = usage_svc.run_pass(session, platform.settings, providers, now())
    labels = usage_svc.labels(session, result.refused + result.resumed)
    return UsagePassPublic(
        measured=len(result.measured),
        writes_refused=[labels[i] for i in result.refused],
        writes_resumed=[labels[i] for i in result.resumed],
        unreachable=[f"{name}: {why}" for name, why in result.unreachable],
        failed=[f"{db_id}: {why}" for db_id, why in result.failed],
        storage_charges=result.charges,
    )
