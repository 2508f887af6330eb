"""Shape stored buckets into what the API answers: points at a step, totals, quantiles,
per-instance CPU and memory. Pure: rows in (from any number of servers), dicts out."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from berth.errors import InvalidInput
from berth.metrics import histogram
from berth.metrics.model import STATUS_CLASSES, AppBucket

_DURATION = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_POINTS = 1440
QUANTILES = (0.5, 0.95, 0.99)


def parse_duration(text: str, what: str) -> int:
    """``90s``, ``5m``, ``1h``, ``2d`` in seconds; anything else is a 422."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(
            f"{what} must be a number and a unit (s, m, h, d), like 1h; not {text!r}",
            code="invalid_duration",
        )
    return int(match.group(1)) * _UNIT[match.group(2)]


@dataclass(frozen=True, slots=True)
class Window:
    since: int  # aligned to step
    until: int  # end of the bucket that holds ``now``
    step: int
    now: float


def window(
    now: float, since_seconds: int, step_seconds: int, bucket_seconds: int, retention_seconds: float
) -> Window:
    """Check and align a query window; every refusal is a 422 that says what is allowed."""
    if since_seconds > retention_seconds:
        raise InvalidInput(
            f"since goes back further than the {retention_seconds / 3600:g} h kept",
            code="invalid_window",
        )
    if step_seconds < bucket_seconds or step_seconds % bucket_seconds:
        raise InvalidInput(
            f"step must be a multiple of the {bucket_seconds} s buckets", code="invalid_window"
        )
    if since_seconds < step_seconds:
        raise InvalidInput("since must be at least one step", code="invalid_window")
    if since_seconds // step_seconds > MAX_POINTS:
        raise InvalidInput(
            f"since/step gives more than {MAX_POINTS} points: use a larger step",
            code="invalid_window",
        )
    until = (int(now) // bucket_seconds + 1) * bucket_seconds
    since = (int(now - since_seconds) // step_seconds) * step_seconds
    return Window(since=since, until=until, step=step_seconds, now=now)


class InstanceRowLike(Protocol):
    instance_id: str
    container_id: str
    bucket_start: int
    cpu_usec_delta: int
    memory_bytes: int
    memory_max_bytes: int
    restarts: int
    sampled_at: float


def traffic_summary(bucket: AppBucket, seconds: float) -> dict[str, Any]:
    per = max(seconds, 1e-9)
    return {
        "requests": bucket.requests,
        "requests_per_second": round(bucket.requests / per, 3),
        "status": dict(zip(STATUS_CLASSES, bucket.by_class, strict=True)),
        "body_bytes": bucket.body_bytes,
        "bytes_per_second": round(bucket.body_bytes / per, 1),
        **{f"p{round(q * 100)}_ms": histogram.quantile_ms(bucket.latency, q) for q in QUANTILES},
    }


def app_series(
    buckets: Sequence[tuple[int, AppBucket]], win: Window
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Points at ``win.step`` (each with the seconds it covers so far) and the totals."""
    slots: dict[int, AppBucket] = {}
    total = AppBucket()
    for start, bucket in buckets:
        if not win.since <= start < win.until:
            continue
        slot = start - (start - win.since) % win.step
        slots.setdefault(slot, AppBucket()).merge(bucket)
        total.merge(bucket)
    points = []
    for t in range(win.since, win.until, win.step):
        covered = _covered(t, win)
        if covered <= 0:
            break
        points.append(
            {"t": t, "seconds": covered, **traffic_summary(slots.get(t, AppBucket()), covered)}
        )
    return points, traffic_summary(total, sum(p["seconds"] for p in points))


def _covered(t: int, win: Window) -> float:
    return max(0.0, min(float(win.step), win.now - t, float(win.until - t)))


def instance_series(rows: Sequence[InstanceRowLike], win: Window) -> list[dict[str, Any]]:
    """Per instance: CPU (cores) and memory per point, and its latest reading."""
    by_instance: dict[str, list[InstanceRowLike]] = {}
    for row in rows:
        by_instance.setdefault(row.instance_id, []).append(row)
    out = []
    for instance_id in sorted(by_instance):
        mine = sorted(by_instance[instance_id], key=lambda r: r.bucket_start)
        points: dict[int, dict[str, Any]] = {}
        for row in mine:
            t = row.bucket_start - (row.bucket_start - win.since) % win.step
            point = points.setdefault(
                t, {"t": t, "cpu_usec": 0, "memory_bytes": 0, "memory_max_bytes": 0}
            )
            point["cpu_usec"] += row.cpu_usec_delta
            point["memory_bytes"] = row.memory_bytes
            point["memory_max_bytes"] = max(point["memory_max_bytes"], row.memory_max_bytes)
        series = []
        for t in sorted(points):
            point = points.pop(t)
            covered = _covered(t, win) or float(win.step)
            usec = point.pop("cpu_usec")
            series.append({**point, "cpu_cores": round(usec / covered / 1e6, 4)})
        last = mine[-1]
        out.append({
            "instance_id": instance_id,
            "container_id": last.container_id,
            "memory_bytes": last.memory_bytes,
            "cpu_cores": series[-1]["cpu_cores"] if series else 0.0,
            "restarts": last.restarts,
            "sampled_at": last.sampled_at,
            "points": series,
        })  # fmt: skip
    return out
