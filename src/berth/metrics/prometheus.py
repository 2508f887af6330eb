"""Prometheus text exposition (format 0.0.4) of the last complete window. Pure.

The store keeps buckets, not counters from the beginning of time (they would reset when old
buckets are purged), so the traffic is exposed as gauges over the last complete window:
requests per second by status class, bytes per second, latency quantiles; per instance, CPU in
cores, memory in bytes and the restart count (a counter: the reconciler's count only grows).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from berth.metrics import histogram
from berth.metrics.model import STATUS_CLASSES, AppBucket
from berth.metrics.series import QUANTILES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class AppTraffic:
    tenant: str
    app: str
    bucket: AppBucket


@dataclass(frozen=True, slots=True)
class InstanceUsage:
    tenant: str
    app: str
    instance: str
    cpu_cores: float
    memory_bytes: int
    restarts: int


def exposition(
    window_seconds: int, apps: Sequence[AppTraffic], instances: Sequence[InstanceUsage]
) -> str:
    out: list[str] = []
    _family(
        out,
        "berth_metrics_window_seconds",
        "gauge",
        "Length of the window the traffic gauges cover.",
        [("", window_seconds)],
    )
    _family(
        out,
        "berth_app_requests",
        "gauge",
        "Requests in the window, by status class.",
        [
            (_labels(a.tenant, a.app, status_class=cls), a.bucket.by_class[i])
            for a in apps
            for i, cls in enumerate(STATUS_CLASSES)
        ],
    )
    _family(
        out,
        "berth_app_requests_per_second",
        "gauge",
        "Requests per second over the window, by status class.",
        [
            (_labels(a.tenant, a.app, status_class=cls), a.bucket.by_class[i] / window_seconds)
            for a in apps
            for i, cls in enumerate(STATUS_CLASSES)
        ],
    )
    _family(
        out,
        "berth_app_response_body_bytes_per_second",
        "gauge",
        "Response body bytes sent per second over the window.",
        [(_labels(a.tenant, a.app), a.bucket.body_bytes / window_seconds) for a in apps],
    )
    _family(
        out,
        "berth_app_latency_seconds",
        "gauge",
        "Request time quantiles over the window (upper bounds of histogram buckets).",
        [
            (_labels(a.tenant, a.app, quantile=f"{q:g}"), _seconds(a.bucket, q))
            for a in apps
            for q in QUANTILES
            if a.bucket.requests
        ],
    )
    _family(
        out,
        "berth_instance_cpu_cores",
        "gauge",
        "CPU used by the instance, in cores, over its last sampled bucket.",
        [(_labels(i.tenant, i.app, instance=i.instance), i.cpu_cores) for i in instances],
    )
    _family(
        out,
        "berth_instance_memory_bytes",
        "gauge",
        "Memory used by the instance (without inactive page cache).",
        [(_labels(i.tenant, i.app, instance=i.instance), i.memory_bytes) for i in instances],
    )
    _family(
        out,
        "berth_instance_restarts_total",
        "counter",
        "Times the instance's container restarted.",
        [(_labels(i.tenant, i.app, instance=i.instance), i.restarts) for i in instances],
    )
    return "".join(out)  # fmt: skip


def _seconds(bucket: AppBucket, q: float) -> float:
    ms = histogram.quantile_ms(bucket.latency, q)
    return (ms or 0.0) / 1000.0


def _family(
    out: list[str], name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]
) -> None:
    out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
    for labels, value in samples:
        out.append(f"{name}{labels} {_value(value)}\n")


def _labels(tenant: str, app: str, **extra: str) -> str:
    pairs = {"tenant": tenant, "app": app, **extra}
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))
