"""What the collectors aggregate before it reaches the store: pure data and arithmetic."""

from __future__ import annotations

from dataclasses import dataclass, field

from berth.metrics import histogram
from berth.metrics.access_log import Request

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> int:
    """0..4 for 1xx..5xx; anything outside 100-599 counts as 5xx (nginx logs 499 and 444 as
    4xx, and nothing else outside the range)."""
    if 100 <= status <= 599:
        return status // 100 - 1
    return 4


def bucket_start(ts: float, bucket_seconds: int) -> int:
    return int(ts // bucket_seconds) * bucket_seconds


@dataclass
class AppBucket:
    """One app's traffic on one server in one time bucket."""

    requests: int = 0
    by_class: list[int] = field(default_factory=lambda: [0] * len(STATUS_CLASSES))
    body_bytes: int = 0
    latency: histogram.Counts = field(default_factory=dict)

    def add(self, request: Request) -> None:
        self.requests += 1
        self.by_class[status_class(request.status)] += 1
        self.body_bytes += request.body_bytes
        index = histogram.bucket_of(request.latency_us)
        self.latency[index] = self.latency.get(index, 0) + 1

    def merge(self, other: AppBucket) -> None:
        self.requests += other.requests
        self.by_class = [a + b for a, b in zip(self.by_class, other.by_class, strict=True)]
        self.body_bytes += other.body_bytes
        histogram.merge(self.latency, other.latency)


BucketKey = tuple[str, int]  # (app id, bucket start)


def aggregate(
    requests: list[Request], bucket_seconds: int, into: dict[BucketKey, AppBucket]
) -> None:
    for request in requests:
        key = (request.app_id, bucket_start(request.ended_at, bucket_seconds))
        bucket = into.get(key)
        if bucket is None:
            bucket = into[key] = AppBucket()
        bucket.add(request)


@dataclass(frozen=True, slots=True)
class InstanceSample:
    """One instance's cgroup readings at one moment, and what it used since the last one."""

    instance_id: str
    app_id: str
    tenant_id: str
    container_id: str
    at: float
    cpu_usec: int  # cumulative, as the cgroup reports it
    cpu_usec_delta: int  # used since the previous reading (0 for the first)
    memory_bytes: int
    restarts: int
