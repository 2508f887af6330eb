"""The database usage pass: every active database measured on its server, the size quota
applied, and the storage billed (``databases_storage_bill``).

One pass: each server's databases are measured in a thread of their own, and the pass waits
for a server at most ``database_usage_timeout_seconds``: a server that does not answer in time
(or refuses the admin) is reported, its databases keep their last state, and every other
server's databases are measured all the same. Each measurement is stored
(``DatabaseMeasurement``); ``quota.write_allowed`` decides from it. A change is stored first
(``write_allowed`` with ``write_applied`` false) together with the tenant's notification and
webhook event (``database.writes_refused`` / ``database.writes_resumed``, once per change),
then applied on the server; a server that fails keeps it pending, retried by every later pass,
and the failure is in ``usage_error`` (``berth db info``). A suspended tenant's databases keep
their data and are measured and billed as any other.

Leader-only, as the purge and backup passes: the platform starts it with the other controllers;
``may_act`` lets the leader's lease veto a pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from berth.databases.errors import DatabaseServerUnavailable
from berth.databases.provider import Account, Usage
from berth.databases.quota import write_allowed
from berth.errors import BerthError
from berth.periodic import LoopOwner, PeriodicLoop
from berth.services.databases_access import (
    ProviderFactory,
    ServerAddress,
    account_of,
    address_of,
    provider,
    real_provider,
    scrub,
)
from berth.services.databases_storage_bill import bill_closed_storage, prune_measurements
from berth.services.webhooks import enqueue
from berth.settings import Settings
from berth.store.tables import (
    DatabaseMeasurement,
    DbServer,
    ManagedDatabase,
    Notification,
    Tenant,
    new_id,
)

log = logging.getLogger(__name__)

MIB = 1024 * 1024
REFUSED, RESUMED = "database.writes_refused", "database.writes_resumed"


def limit_bytes(db: ManagedDatabase) -> int:
    return int(db.size_mb) * MIB


def last_measurement(session: Session, database_id: str) -> DatabaseMeasurement | None:
    return session.scalar(
        select(DatabaseMeasurement)
        .where(DatabaseMeasurement.database_id == database_id)
        .order_by(DatabaseMeasurement.measured_at.desc())
        .limit(1)
    )


def labels(session: Session, database_ids: list[str]) -> dict[str, str]:
    """``tenant/name`` of each database, for the operator."""
    if not database_ids:
        return {}
    rows = session.execute(
        select(ManagedDatabase.id, Tenant.name, ManagedDatabase.name)
        .join(Tenant, Tenant.id == ManagedDatabase.tenant_id)
        .where(ManagedDatabase.id.in_(database_ids))
    )
    return {i: f"{t}/{n}" for i, t, n in rows}


@dataclass
class UsagePassResult:
    measured: list[str] = field(default_factory=list)  # database ids
    refused: list[str] = field(default_factory=list)  # writes refused in this pass
    resumed: list[str] = field(default_factory=list)  # writes given back in this pass
    unreachable: list[tuple[str, str]] = field(default_factory=list)  # (server name, why)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (database id, why)
    charges: int = 0  # storage charges posted to the ledger


class _Progress:
    """What one server's thread has done so far: read by the pass once the server's time is
    up, whether or not the thread has finished (a late one keeps running, daemon, until the
    providers' own timeouts end it, and what it does after is dropped)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[str, Usage | None] = {}  # database id -> usage (None: applied)
        self._failed: dict[str, str] = {}  # database id -> why
        self._unreachable = ""
        self._finished = False

    def ok(self, database_id: str, usage: Usage | None = None) -> None:
        with self._lock:
            self._done[database_id] = usage

    def fail(self, database_id: str, why: str) -> None:
        with self._lock:
            self._failed[database_id] = why

    def down(self, why: str) -> None:
        with self._lock:
            self._unreachable = why

    def finish(self) -> None:
        with self._lock:
            self._finished = True

    def snapshot(self) -> tuple[dict[str, Usage | None], dict[str, str], str, bool]:
        with self._lock:
            return dict(self._done), dict(self._failed), self._unreachable, self._finished


def _per_server(
    jobs: dict[str, Callable[[_Progress], None]], timeout: float
) -> dict[str, _Progress]:
    """Each server's job in a thread of its own; each waited for at most ``timeout`` from the
    start of the pass."""
    progress = {key: _Progress() for key in jobs}

    def run(key: str) -> None:
        try:
            jobs[key](progress[key])
        finally:
            progress[key].finish()

    threads = [
        threading.Thread(target=run, args=(key,), name=f"db-usage-{key}", daemon=True)
        for key in jobs
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return progress


def _measure(
    factory: ProviderFactory, address: ServerAddress, accounts: list[Account], out: _Progress
) -> None:
    try:
        p = provider(factory, address)
        for account in accounts:
            try:
                out.ok(account.database_id, p.usage(account))
            except DatabaseServerUnavailable:
                raise
            except BerthError as exc:
                out.fail(account.database_id, scrub(exc.message, address.admin_url))
    except DatabaseServerUnavailable as exc:
        out.down(scrub(exc.message, address.admin_url))
    except Exception as exc:  # a provider's bug must not end every server's pass
        log.exception("measuring a %s server failed", address.engine)
        out.down(scrub(f"unexpected error: {exc}", address.admin_url))


def _apply(
    factory: ProviderFactory,
    address: ServerAddress,
    changes: list[tuple[Account, bool]],
    out: _Progress,
) -> None:
    for account, allowed in changes:
        try:
            provider(factory, address).set_write_allowed(account, allowed)
            out.ok(account.database_id)
        except Exception as exc:
            message = exc.message if isinstance(exc, BerthError) else f"unexpected error: {exc}"
            out.fail(account.database_id, scrub(message, address.admin_url))


def _notify(
    session: Session,
    settings: Settings,
    db: ManagedDatabase,
    allowed: bool,
    used: int,
    now: float,
    key: str,
) -> None:
    limit = limit_bytes(db)
    if allowed:
        kind = RESUMED
        message = (
            f"Database {db.name!r} is under its size quota again ({used / MIB:.1f} MB of "
            f"{db.size_mb} MB): writes work again."
        )
    else:
        kind = REFUSED
        message = (
            f"Database {db.name!r} is over its size quota ({used / MIB:.1f} MB of {db.size_mb} "
            f"MB): writes are refused, reads keep working. Delete data (or ask for a larger "
            f"size) to write again."
        )
    session.add(
        Notification(
            id=new_id(), tenant_id=db.tenant_id, kind=kind, message=message, created_at=now
        )
    )
    tenant = session.get(Tenant, db.tenant_id)
    payload: dict[str, object] = {
        "event": kind,
        "tenant": tenant.name if tenant else db.tenant_id,
        "database": db.name,
        "engine": db.engine,
        "bytes_used": used,
        "limit_bytes": limit,
        "message": message,
        "at": now,
    }
    enqueue(session, settings, kind, db.tenant_id, payload, f"{kind}:{db.id}:{key}")


def measure_and_enforce(
    session: Session,
    settings: Settings,
    factory: ProviderFactory,
    now: float,
    result: UsagePassResult,
    *,
    fence: Callable[[Session], None] = lambda session: None,
) -> None:
    dbs = list(
        session.scalars(
            select(ManagedDatabase)
            # Memcached's memory is its container's limit, not a quota to measure.
            .where(ManagedDatabase.state == "active", ManagedDatabase.engine != "memcached")
            .order_by(ManagedDatabase.id)
        )
    )
    servers = {s.id: s for s in session.scalars(select(DbServer))}
    by_server: dict[str, list[ManagedDatabase]] = {}
    # The longest unmeasured first: a server too slow to answer for all its databases within
    # the pass's time still has every one of them measured over a few passes.
    for db in sorted(dbs, key=lambda d: (d.measured_at or 0.0, d.id)):
        by_server.setdefault(db.server_id, []).append(db)
    addresses = {sid: address_of(servers[sid]) for sid in by_server}
    accounts = {db.id: account_of(db) for db in dbs}
    timeout = settings.database_usage_timeout_seconds

    def measure_job(sid: str) -> Callable[[_Progress], None]:
        listed = [accounts[db.id] for db in by_server[sid]]
        return lambda out: _measure(factory, addresses[sid], listed, out)

    answers = _per_server({sid: measure_job(sid) for sid in by_server}, timeout)
    down: set[str] = set()
    for sid, progress in answers.items():
        done, failed, unreachable, finished = progress.snapshot()
        server_dbs = by_server[sid]
        late = f"did not answer within {timeout:g} s"
        if unreachable or not finished:
            down.add(sid)
            why = unreachable or (
                late if not done else f"{late} (measured {len(done)} of {len(server_dbs)})"
            )
            result.unreachable.append((servers[sid].name, why))
            log.warning("database server %s not (fully) measured: %s", servers[sid].name, why)
        for db in server_dbs:
            usage = done.get(db.id)
            if usage is None:
                if db.id in failed:
                    result.failed.append((db.id, failed[db.id]))
                    db.usage_error = f"not measured: {failed[db.id]}"
                else:
                    db.usage_error = (
                        f"not measured: the server did not answer ({unreachable or late})"
                    )
                continue
            measurement = DatabaseMeasurement(
                id=new_id(),
                database_id=db.id,
                tenant_id=db.tenant_id,
                measured_at=now,
                bytes_used=usage.bytes_used,
                connections=usage.connections,
            )
            session.add(measurement)
            db.measured_at = now
            result.measured.append(db.id)
            db.usage_error = "" if db.write_applied else db.usage_error
            decision = write_allowed(
                usage.bytes_used, limit_bytes(db), currently_allowed=db.write_allowed
            )
            if decision != db.write_allowed:
                # Only if still so in the store: a delete that closed it meanwhile wins.
                taken = session.execute(
                    update(ManagedDatabase)
                    .where(
                        ManagedDatabase.id == db.id,
                        ManagedDatabase.state == "active",
                        ManagedDatabase.write_allowed.is_(db.write_allowed),
                    )
                    .values(write_allowed=decision, write_applied=False)
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                _notify(session, settings, db, decision, usage.bytes_used, now, measurement.id)
                (result.resumed if decision else result.refused).append(db.id)
    fence(session)
    session.commit()  # the decisions and notifications are kept before any server is asked
    session.expire_all()  # the decisions were written past the objects: read them back

    pending: dict[str, list[tuple[Account, bool]]] = {}
    for db in dbs:
        if db.state == "active" and not db.write_applied and db.server_id not in down:
            pending.setdefault(db.server_id, []).append((accounts[db.id], db.write_allowed))
    if not pending:
        return

    def apply_job(sid: str) -> Callable[[_Progress], None]:
        return lambda out: _apply(factory, addresses[sid], pending[sid], out)

    applied = _per_server({sid: apply_job(sid) for sid in pending}, timeout)
    by_id = {db.id: db for db in dbs}
    for sid, progress in applied.items():
        done, failures, _, _ = progress.snapshot()
        for account, allowed in pending[sid]:
            db = by_id[account.database_id]
            session.refresh(db)
            if db.write_allowed != allowed:
                continue  # decided again meanwhile: the next pass applies that
            if account.database_id in done:
                db.write_applied, db.usage_error = True, ""
                continue
            why = failures.get(account.database_id, f"did not answer within {timeout:g} s")
            state = "refusing writes" if not allowed else "allowing writes again"
            db.usage_error = f"{state} is not applied on the server yet (retried): {why}"
            result.failed.append((db.id, why))
            log.warning("database %s: quota change not applied: %s", db.id, why)
    fence(session)
    session.commit()
    _close_deleted(session, factory, [by_id[a.database_id] for a, ok in _flat(pending) if ok])


def _flat(pending: dict[str, list[tuple[Account, bool]]]) -> list[tuple[Account, bool]]:
    return [item for items in pending.values() for item in items]


def _close_deleted(
    session: Session, factory: ProviderFactory, reopened: list[ManagedDatabase]
) -> None:
    """A delete that ran while this pass gave writes back must not stay reopened."""
    for db in reopened:
        session.refresh(db)
        if db.state == "active":
            continue
        server = session.get(DbServer, db.server_id)
        if server is None:
            continue
        try:
            provider(factory, address_of(server)).set_write_allowed(account_of(db), False)
        except BerthError as exc:
            log.error("database %s deleted meanwhile stays writable: %s", db.id, exc.message)


def run_pass(
    session: Session,
    settings: Settings,
    factory: ProviderFactory,
    now: float,
    *,
    fence: Callable[[Session], None] = lambda session: None,
) -> UsagePassResult:
    result = UsagePassResult()
    measure_and_enforce(session, settings, factory, now, result, fence=fence)
    prune_measurements(session, now - settings.database_measurement_retention_days * 86400)
    fence(session)
    session.commit()
    # Its own step, as the billing run's: the two never bill an hour twice.
    result.charges = bill_closed_storage(session, settings, now, fence)
    return result


class DatabaseUsagePass(LoopOwner):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        factory: ProviderFactory = real_provider,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.time,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        self.sessions, self.settings, self.factory = sessions, settings, factory
        self.clock, self.may_act = clock, may_act
        self._lock = threading.Lock()  # one pass at a time (the loop, or a direct call)
        self._loop = PeriodicLoop(
            "database-usage",
            self.run_once,
            interval if interval is not None else settings.database_usage_interval_seconds,
        )

    def run_once(self, now: float | None = None) -> UsagePassResult:
        if not self.may_act():
            return UsagePassResult()
        with self._lock, self.sessions() as session:
            result = run_pass(
                session, self.settings, self.factory, self.clock() if now is None else now
            )
        for name, why in result.unreachable:
            log.error("database server %s was not measured: %s", name, why)
        return result
