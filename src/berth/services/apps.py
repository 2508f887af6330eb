"""App operations over the store: each one validates fully before it writes, in one transaction.

Every function takes the caller's ``tenant_id`` and only ever sees that tenant's rows: another
tenant's app is simply not found.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from berth.billing.plans import QuotaDelta
from berth.domain import placement
from berth.domain.names import check_not_reserved, validate_app_name
from berth.errors import Conflict, InvalidInput, NotFound, TooManyRequests
from berth.services import validation as v
from berth.services.billing import check_quota_for, ensure_not_suspended
from berth.settings import Settings
from berth.store.tables import App, Deployment, Domain, Instance, Release, Tenant, new_id

ImageResolver = Callable[[str], str | None]
_IMAGE_ID = re.compile(r"(sha256:.*)|([0-9a-fA-F]{1,64})")


@dataclass(frozen=True)
class AppSpec:
    name: str
    memory: str | int = "256M"
    cpus: float | str = 0.5
    port: int = 8080
    health_path: str | None = "/"


def get_app(session: Session, tenant_id: str, name: str) -> App:
    app = session.scalar(select(App).where(App.tenant_id == tenant_id, App.name == name))
    if app is None:
        raise NotFound(f"app {name!r} not found", code="app_not_found")
    return app


def lock_app(session: Session, tenant_id: str, name: str, *, deleting_ok: bool = False) -> App:
    """The app, locked until the transaction ends: every write to an app starts here, so writes
    to one app run one after another and each one reads what the one before it wrote.

    Touching the row is the transaction's first write. On PostgreSQL that UPDATE takes the row
    lock; on SQLite it takes the database write lock before anything is read (pysqlite begins
    the transaction at the first DML, and a transaction that begins by writing waits out the
    busy timeout instead of failing on a stale snapshot). The re-select then replaces whatever
    the session cached with what is committed now. An app being deleted takes no more writes.
    """
    _end_read_transaction(session)
    mine = (App.tenant_id == tenant_id, App.name == name)
    session.execute(
        update(App)
        .where(*mine)
        .values(updated_at=time.time())
        .execution_options(synchronize_session=False)
    )
    app = session.scalar(select(App).where(*mine).execution_options(populate_existing=True))
    if app is None:
        raise NotFound(f"app {name!r} not found", code="app_not_found")
    if app.deleting_at is not None and not deleting_ok:
        raise Conflict(f"app {name!r} is being deleted", code="app_deleting")
    return app


def _end_read_transaction(session: Session) -> None:
    """The reads before the lock (the caller's credentials) may have begun a transaction (on
    PostgreSQL they do); its snapshot must not carry into the write, so it ends here."""
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("lock_app must come before any write of the transaction")
    if session.in_transaction():
        session.commit()


def list_apps(session: Session, tenant_id: str) -> list[App]:
    return list(session.scalars(select(App).where(App.tenant_id == tenant_id).order_by(App.name)))


def create_app(session: Session, settings: Settings, tenant_id: str, spec: AppSpec) -> App:
    name = check_not_reserved(validate_app_name(spec.name), settings.reserved_app_names)
    memory_mb = v.parse_memory_mb(spec.memory, settings.memory_min_mb, settings.memory_max_mb)
    cpus_milli = v.parse_cpus_milli(spec.cpus, settings.cpus_min, settings.cpus_max)
    port = v.validate_port(spec.port)
    health_path = v.validate_health_path(spec.health_path)
    if session.scalar(select(App.id).where(App.name == name)) is not None:
        raise Conflict(f"app name {name!r} is taken", code="app_exists")
    check_quota_for(session, tenant_id, QuotaDelta(apps=1))
    hostname = f"{name}.{settings.base_domain}"
    if session.scalar(select(Domain.id).where(Domain.hostname == hostname)) is not None:
        raise Conflict(f"{hostname} is already a domain of another app", code="domain_taken")
    app = App(
        id=new_id(),
        tenant_id=tenant_id,
        name=name,
        memory_mb=memory_mb,
        cpus_milli=cpus_milli,
        port=port,
        health_path=health_path,
        scale=1,
        config_json="{}",
    )
    session.add(app)
    session.commit()
    return app


@dataclass(frozen=True)
class Deletion:
    name: str
    gone: bool  # the app and its rows are gone already (it had no instances)
    instances_stopping: int


def delete_app(session: Session, settings: Settings, tenant_id: str, name: str) -> Deletion:
    """Mark the app deleting and answer at once; nothing here waits for the engine.

    The controllers treat a deleting app as absent (its instances stop, its routes and domains
    go) and delete its rows once the engine has none of its containers left. An app without
    instances goes at once. Deleting an app that is being deleted says the same again.
    """
    app = lock_app(session, tenant_id, name, deleting_ok=True)
    stopping = (
        session.scalar(
            select(func.count(Instance.id)).where(
                Instance.app_id == app.id, Instance.container_id.is_not(None)
            )
        )
        or 0
    )
    if app.deleting_at is not None:
        session.rollback()  # nothing to change
        return Deletion(app.name, False, stopping)
    if stopping == 0:
        purge_app(session, app)
        session.commit()
        return Deletion(app.name, True, 0)
    _check_delete_capacity(session, settings, tenant_id)
    app.deleting_at = time.time()
    session.commit()
    return Deletion(app.name, False, stopping)


def _check_delete_capacity(session: Session, settings: Settings, tenant_id: str) -> None:
    # The tenant row lock (PostgreSQL; SQLite writes are serial anyway) makes two deletes of
    # different apps count one after the other.
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    deleting = (
        session.scalar(
            select(func.count(App.id)).where(
                App.tenant_id == tenant_id, App.deleting_at.is_not(None)
            )
        )
        or 0
    )
    cap = settings.max_concurrent_deletes_per_tenant
    if deleting >= cap:
        raise TooManyRequests(
            f"{deleting} apps of this tenant are still being deleted (at most {cap} at once); "
            "retry once one of them is gone",
            code="too_many_deletes",
        )


def purge_app(session: Session, app: App) -> None:
    """Delete the app's rows: its domains, deployments, releases, leftover instance rows, itself.
    Only for an app none of whose containers is left (or that never had one)."""
    for model in (Domain, Deployment, Release, Instance):
        session.execute(delete(model).where(model.app_id == app.id))
    session.delete(app)
    session.flush()


def scale_app(session: Session, settings: Settings, tenant_id: str, name: str, n: int) -> App:
    n = v.validate_scale(n, settings.max_scale)
    app = lock_app(session, tenant_id, name)
    if n > app.scale:
        ensure_not_suspended(session, tenant_id)
    if app.target_release_id or app.serving_release_id:
        grow = n - app.scale
        check_quota_for(
            session, tenant_id, QuotaDelta(instances=grow, memory_mb=grow * app.memory_mb)
        )
    app.scale = n
    session.commit()
    return app


def app_config(app: App) -> dict[str, str]:
    return dict(json.loads(app.config_json))


def list_releases(session: Session, app: App) -> list[Release]:
    stmt = select(Release).where(Release.app_id == app.id).order_by(Release.version.desc())
    return list(session.scalars(stmt))


def get_release(session: Session, release_id: str | None) -> Release | None:
    return session.get(Release, release_id) if release_id else None


def current_release(session: Session, app: App) -> Release | None:
    """The release new config and restarts build on: the target, else the serving one."""
    return get_release(session, app.target_release_id or app.serving_release_id)


def deploy_image(
    session: Session,
    settings: Settings,
    tenant_id: str,
    name: str,
    image_ref: str,
    resolve: ImageResolver,
    description: str = "",
    pinned_image: str | None = None,
) -> tuple[Release, Deployment]:
    if not image_ref or len(image_ref) > 255 or any(c.isspace() for c in image_ref):
        raise InvalidInput("image reference is empty or malformed", code="invalid_image")
    if _IMAGE_ID.fullmatch(image_ref):
        # The engine resolves an id, or any unambiguous prefix of one, to whatever image has
        # it: another tenant's build among them. Images are deployed by name only.
        raise InvalidInput(
            "name the image (like name:tag); image ids are not accepted", code="invalid_image"
        )
    app = lock_app(session, tenant_id, name)
    ensure_not_suspended(session, tenant_id)
    if not (app.target_release_id or app.serving_release_id):
        check_quota_for(
            session,
            tenant_id,
            QuotaDelta(instances=app.scale, memory_mb=app.scale * app.memory_mb),
        )
    image_id = resolve(image_ref)
    if image_id is None:
        raise NotFound(
            f"image {image_ref!r} is not on this machine (no registry is configured to pull from)",
            code="image_not_found",
        )
    release = _new_release(app, image_ref, image_id, app_config(app), description or "deploy")
    # Where every node pulls it from on a swarm (berth.registry.wiring); None: the image id.
    release.pinned_image = pinned_image
    session.add(release)
    deployment = _start_rollout(session, settings, app, release, app.generation, "deploy")
    prune_releases(session, settings, app)
    session.commit()
    return release, deployment


def set_config(
    session: Session,
    settings: Settings,
    tenant_id: str,
    name: str,
    set_values: dict[str, str],
    unset_keys: list[str],
) -> tuple[dict[str, str], Release | None, Deployment | None]:
    v.validate_config(set_values)
    v.validate_config_keys(unset_keys)
    app = lock_app(session, tenant_id, name)  # the merge below reads the newest config
    config = app_config(app)
    missing = [k for k in unset_keys if k not in config]
    if missing:
        # Well formed, but the app's config has no such key now: a conflict with its state.
        raise Conflict(f"config keys not set: {', '.join(missing)}", code="config_not_set")
    config.update(set_values)
    for key in unset_keys:
        del config[key]
    if len(config) > v.MAX_CONFIG_KEYS:
        raise InvalidInput(f"at most {v.MAX_CONFIG_KEYS} config keys", code="invalid_config")
    v.validate_config_size(config, settings.max_config_bytes)
    app.config_json = json.dumps(config, sort_keys=True)
    base = current_release(session, app)
    if base is None:
        session.commit()
        return config, None, None
    ensure_not_suspended(session, tenant_id)
    changed = sorted(set(set_values) | set(unset_keys))
    release = _new_release(
        app, base.image_ref, base.image_id, config, f"config: {' '.join(changed)}"
    )
    release.command_json = base.command_json
    release.pinned_image = base.pinned_image
    session.add(release)
    deployment = _start_rollout(session, settings, app, release, app.generation, "config")
    prune_releases(session, settings, app)
    session.commit()
    return config, release, deployment


def rollback(
    session: Session, settings: Settings, tenant_id: str, name: str, version: int | None
) -> tuple[Release, Deployment]:
    """Roll back by creating a new release that copies an older one (releases are immutable)."""
    app = lock_app(session, tenant_id, name)
    ensure_not_suspended(session, tenant_id)
    serving = get_release(session, app.serving_release_id)
    if version is None:
        if serving is None:
            raise InvalidInput("app has no serving release to roll back from", code="no_release")
        stmt = (
            select(Release)
            .where(Release.app_id == app.id, Release.version < serving.version)
            .order_by(Release.version.desc())
        )
        older = session.scalars(stmt).first()
        if older is None:
            raise InvalidInput("no earlier release to roll back to", code="no_release")
    else:
        older = session.scalar(
            select(Release).where(Release.app_id == app.id, Release.version == version)
        )
        if older is None:
            raise NotFound(
                f"release v{version} of {name!r} not found (only the newest "
                f"{settings.release_history} releases are kept)",
                code="release_not_found",
            )
    release = _new_release(
        app,
        older.image_ref,
        older.image_id,
        json.loads(older.config_json),
        f"rollback to v{older.version}",
    )
    release.command_json = older.command_json
    release.pinned_image = older.pinned_image  # the earlier digest, not a rebuild
    release.memory_mb, release.cpus_milli = older.memory_mb, older.cpus_milli
    release.port, release.health_path = older.port, older.health_path
    session.add(release)
    app.config_json = older.config_json
    deployment = _start_rollout(session, settings, app, release, app.generation, "rollback")
    prune_releases(session, settings, app)
    session.commit()
    return release, deployment


def restart_app(session: Session, settings: Settings, tenant_id: str, name: str) -> Deployment:
    """A start-first replacement of every instance: same release, next generation."""
    app = lock_app(session, tenant_id, name)
    release = current_release(session, app)
    if release is None:
        raise InvalidInput(f"app {name!r} has no release to restart", code="no_release")
    ensure_not_suspended(session, tenant_id)
    app.generation += 1
    deployment = _start_rollout(session, settings, app, release, app.generation, "restart")
    session.commit()
    return deployment


def app_constraints(app: App) -> list[str]:
    return list(json.loads(app.constraints_json or "[]"))


def set_constraints(
    session: Session, settings: Settings, tenant_id: str, name: str, constraints: list[str]
) -> tuple[App, Deployment | None]:
    """Replace the app's placement constraints (``[]``: none).

    A change moves every instance, so it is a new revision rolled out start-first, exactly
    like ``restart`` (the next generation, a deployment): new instances are placed under the
    new constraints and healthy before the old ones stop. Swarm is never asked to move tasks
    in place (it would stop them first). The same constraints again change nothing."""
    wanted = placement.normalized(constraints)
    app = lock_app(session, tenant_id, name)
    if wanted == app_constraints(app):
        session.rollback()  # nothing to change
        return app, None
    app.constraints_json = json.dumps(wanted)
    release = current_release(session, app)
    if release is None:
        session.commit()  # the first deploy places its instances under them
        return app, None
    ensure_not_suspended(session, tenant_id)
    app.generation += 1
    deployment = _start_rollout(session, settings, app, release, app.generation, "constraints")
    session.commit()
    return app, deployment


def get_deployment(session: Session, tenant_id: str, name: str, deployment_id: str) -> Deployment:
    app = get_app(session, tenant_id, name)
    dep = session.scalar(
        select(Deployment).where(Deployment.id == deployment_id, Deployment.app_id == app.id)
    )
    if dep is None:
        raise NotFound(f"deployment {deployment_id!r} not found", code="deployment_not_found")
    return dep


def list_instances(session: Session, app: App) -> list[Instance]:
    stmt = select(Instance).where(Instance.app_id == app.id).order_by(Instance.seq)
    return list(session.scalars(stmt))


def releases_to_prune(newest_first: list[str], keep: int, in_use: set[str | None]) -> list[str]:
    """The releases beyond the newest ``keep``, except those something still uses."""
    return [rid for rid in newest_first[keep:] if rid not in in_use]


def prune_releases(session: Session, settings: Settings, app: App) -> None:
    """Bound the release history (each release copies the whole config): the oldest releases
    beyond settings.release_history go, never the serving or target one, nor one that an
    in-progress deployment or an instance still runs. Their finished deployments go with them.
    """
    session.flush()
    newest_first = list(
        session.scalars(
            select(Release.id).where(Release.app_id == app.id).order_by(Release.version.desc())
        )
    )
    if len(newest_first) <= settings.release_history:
        return
    in_use: set[str | None] = {app.serving_release_id, app.target_release_id}
    in_use |= set(
        session.scalars(
            select(Deployment.release_id).where(
                Deployment.app_id == app.id, Deployment.status == "in_progress"
            )
        )
    )
    in_use |= set(session.scalars(select(Instance.release_id).where(Instance.app_id == app.id)))
    doomed = releases_to_prune(newest_first, settings.release_history, in_use)
    if doomed:
        session.execute(
            delete(Deployment).where(
                Deployment.app_id == app.id,
                Deployment.release_id.in_(doomed),
                Deployment.status != "in_progress",
            )
        )
        session.execute(delete(Release).where(Release.id.in_(doomed)))


def _new_release(
    app: App, image_ref: str, image_id: str, config: dict[str, str], description: str
) -> Release:
    release = Release(
        id=new_id(),
        app_id=app.id,
        tenant_id=app.tenant_id,
        version=app.next_version,
        image_ref=image_ref,
        image_id=image_id,
        config_json=json.dumps(config, sort_keys=True),
        command_json=None,
        memory_mb=app.memory_mb,
        cpus_milli=app.cpus_milli,
        port=app.port,
        health_path=app.health_path,
        description=description[:255],
    )
    app.next_version += 1
    return release


def _start_rollout(
    session: Session, settings: Settings, app: App, release: Release, generation: int, kind: str
) -> Deployment:
    """Point the app's target at a revision; a rollout still in progress is superseded."""
    now = time.time()
    if app.deployment_id:
        previous = session.get(Deployment, app.deployment_id)
        if previous is not None and previous.status == "in_progress":
            previous.status = "superseded"
            previous.message = f"superseded by v{release.version}"
            previous.finished_at = now
    deployment = Deployment(
        id=new_id(),
        app_id=app.id,
        tenant_id=app.tenant_id,
        release_id=release.id,
        generation=generation,
        kind=kind,
        status="in_progress",
        message=f"rolling out v{release.version}",
        started_at=now,
        deadline=now + settings.deploy_timeout_seconds,
        constraints_json=app.constraints_json,
    )
    session.add(deployment)
    app.target_release_id = release.id
    app.target_generation = generation
    app.deployment_id = deployment.id
    return deployment
