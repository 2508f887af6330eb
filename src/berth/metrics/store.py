"""The metrics tables: writes from one server's collectors, reads summed over servers.

A collector adds what it counted since its last write to its own rows (one per app, or
instance, per bucket and server), so several servers on one store never write the same row,
and a reader sums the rows of a bucket to get the whole ingress's traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from berth.metrics import histogram
from berth.metrics.model import AppBucket, BucketKey, InstanceSample, bucket_start
from berth.store.tables import App, AppMetricRow, InstanceMetricRow

_CLASS_COLUMNS = ("status_1xx", "status_2xx", "status_3xx", "status_4xx", "status_5xx")
_IN_CHUNK = 500  # ids per IN (...) list


def app_tenants(session: Session, app_ids: Iterable[str]) -> dict[str, str]:
    """app id -> tenant id, for the apps that still exist."""
    ids = sorted(set(app_ids))
    out: dict[str, str] = {}
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ids[i : i + _IN_CHUNK]
        query = select(App.id, App.tenant_id).where(App.id.in_(chunk))
        out.update((app_id, tenant_id) for app_id, tenant_id in session.execute(query))
    return out


def add_app_buckets(
    session: Session, server_id: str, buckets: Mapping[BucketKey, AppBucket]
) -> int:
    """Add ``buckets`` to this server's rows. Counts of apps that no longer exist are dropped.
    Returns how many buckets were written."""
    tenants = app_tenants(session, (app for app, _ in buckets))
    wanted = {key: b for key, b in buckets.items() if key[0] in tenants}
    if not wanted:
        return 0
    existing = _existing_app_rows(session, server_id, wanted)
    for (app_id, start), bucket in wanted.items():
        row = existing.get((app_id, start))
        if row is None:
            row = AppMetricRow(
                server_id=server_id,
                app_id=app_id,
                tenant_id=tenants[app_id],
                bucket_start=start,
                requests=0,
                body_bytes=0,
                latency="",
                **dict.fromkeys(_CLASS_COLUMNS, 0),
            )
            session.add(row)
        row.requests += bucket.requests
        for column, count in zip(_CLASS_COLUMNS, bucket.by_class, strict=True):
            setattr(row, column, getattr(row, column) + count)
        row.body_bytes += bucket.body_bytes
        counts = histogram.decode(row.latency)
        histogram.merge(counts, bucket.latency)
        row.latency = histogram.encode(counts)
    return len(wanted)


def _existing_app_rows(
    session: Session, server_id: str, wanted: Mapping[BucketKey, AppBucket]
) -> dict[BucketKey, AppMetricRow]:
    starts = sorted({start for _, start in wanted})
    rows = session.scalars(
        select(AppMetricRow).where(
            AppMetricRow.server_id == server_id, AppMetricRow.bucket_start.in_(starts)
        )
    )
    return {(r.app_id, r.bucket_start): r for r in rows}


def add_instance_samples(
    session: Session, server_id: str, samples: Iterable[InstanceSample], bucket_seconds: int
) -> int:
    """Fold readings into this server's per-instance buckets: CPU used adds up, memory keeps
    the last reading and the bucket's highest, restarts the last count."""
    by_key: dict[tuple[str, int], list[InstanceSample]] = {}
    for sample in samples:
        by_key.setdefault((sample.instance_id, bucket_start(sample.at, bucket_seconds)), []).append(
            sample
        )
    if not by_key:
        return 0
    starts = sorted({start for _, start in by_key})
    existing = {
        (r.instance_id, r.bucket_start): r
        for r in session.scalars(
            select(InstanceMetricRow).where(
                InstanceMetricRow.server_id == server_id,
                InstanceMetricRow.bucket_start.in_(starts),
            )
        )
    }
    for (instance_id, start), group in by_key.items():
        group.sort(key=lambda s: s.at)
        last = group[-1]
        row = existing.get((instance_id, start))
        if row is None:
            row = InstanceMetricRow(
                server_id=server_id,
                instance_id=instance_id,
                app_id=last.app_id,
                tenant_id=last.tenant_id,
                container_id=last.container_id,
                bucket_start=start,
                cpu_usec_delta=0,
                memory_bytes=0,
                memory_max_bytes=0,
                restarts=0,
                sampled_at=last.at,
            )
            session.add(row)
        row.cpu_usec_delta += sum(s.cpu_usec_delta for s in group)
        row.memory_bytes = last.memory_bytes
        row.memory_max_bytes = max(row.memory_max_bytes, *(s.memory_bytes for s in group))
        row.restarts = last.restarts
        row.container_id = last.container_id
        row.sampled_at = last.at
    return len(by_key)


def purge_before(session: Session, cutoff: int) -> None:
    """Forget buckets that started before ``cutoff`` (the retention)."""
    session.execute(delete(AppMetricRow).where(AppMetricRow.bucket_start < cutoff))
    session.execute(delete(InstanceMetricRow).where(InstanceMetricRow.bucket_start < cutoff))


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose rows a read sees: one app, one tenant's apps, or (both None) every app."""

    app_id: str | None = None
    tenant_id: str | None = None


def app_rows(session: Session, scope: Scope, since: int, until: int) -> list[AppMetricRow]:
    query = select(AppMetricRow).where(
        AppMetricRow.bucket_start >= since, AppMetricRow.bucket_start < until
    )
    if scope.app_id is not None:
        query = query.where(AppMetricRow.app_id == scope.app_id)
    if scope.tenant_id is not None:
        query = query.where(AppMetricRow.tenant_id == scope.tenant_id)
    return list(session.scalars(query))


def instance_rows(
    session: Session, scope: Scope, since: int, until: int
) -> list[InstanceMetricRow]:
    query = select(InstanceMetricRow).where(
        InstanceMetricRow.bucket_start >= since, InstanceMetricRow.bucket_start < until
    )
    if scope.app_id is not None:
        query = query.where(InstanceMetricRow.app_id == scope.app_id)
    if scope.tenant_id is not None:
        query = query.where(InstanceMetricRow.tenant_id == scope.tenant_id)
    return list(session.scalars(query))


def bucket_of_row(row: AppMetricRow) -> AppBucket:
    return AppBucket(
        requests=row.requests,
        by_class=[getattr(row, c) for c in _CLASS_COLUMNS],
        body_bytes=row.body_bytes,
        latency=histogram.decode(row.latency),
    )
