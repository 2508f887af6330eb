"""Pure bookkeeping of the edge benchmark: failures by type, percentiles, the printed table."""

from __future__ import annotations

import http.client
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# The failure types a keep-alive client can see; "reset" and "closed" are the ones a reload
# causes (a worker closing an idle connection the client is just reusing).
FAILURE_TYPES = ("reset", "closed", "timeout", "status", "other")


def classify(error: BaseException | None, status: int | None) -> str | None:
    """The failure type of one request: None when it answered 200."""
    if error is None:
        return None if status == 200 else "status"
    # RemoteDisconnected (a ConnectionResetError too, so first): the server closed the
    # connection (FIN) without answering the request the client had sent on it.
    if isinstance(error, http.client.RemoteDisconnected | http.client.IncompleteRead):
        return "closed"
    if isinstance(error, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(error, socket.timeout | TimeoutError):
        return "timeout"
    return "other"


@dataclass
class Tally:
    """What the clients saw during one run; one per client thread, merged at the end."""

    requests: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    # Connections the proxy ended gracefully after a response (Connection: close): no failed
    # request, but the issue asks that no client connection be closed at all.
    closed_after_response: int = 0

    def record(self, error: BaseException | None, status: int | None, will_close: bool) -> None:
        self.requests += 1
        kind = classify(error, status)
        if kind is None:
            self.ok += 1
        else:
            self.failures[kind] += 1
        if error is None and will_close:
            self.closed_after_response += 1

    def merge(self, other: Tally) -> Tally:
        merged = Tally(self.requests + other.requests, self.ok + other.ok)
        merged.failures = self.failures + other.failures
        merged.closed_after_response = self.closed_after_response + other.closed_after_response
        return merged

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "failed": sum(self.failures.values()),
            "failures": {kind: self.failures.get(kind, 0) for kind in FAILURE_TYPES},
            "closed_after_response": self.closed_after_response,
        }


def percentile(samples: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``samples``; None when empty."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def latency_summary(samples_s: list[float]) -> dict[str, Any]:
    """p50/p99/max in milliseconds of change-to-effect times given in seconds."""
    ms = [s * 1000 for s in samples_s]
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    return {
        "count": len(ms),
        "p50_ms": None if p50 is None else round(p50, 2),
        "p99_ms": None if p99 is None else round(p99, 2),
        "max_ms": round(max(ms), 2) if ms else None,
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


TABLE_COLUMNS = (
    ("candidate", 12),
    ("domains", 7),
    ("changes", 7),
    ("chg p50 ms", 10),
    ("chg p99 ms", 10),
    (">1s", 4),
    ("requests", 8),
    ("resets", 6),
    ("closed", 6),
    ("other fail", 10),
    ("conn closed", 11),
    ("rps/direct", 10),
    ("p50 +ms", 7),
    ("p99 +ms", 7),
)


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row per (candidate, domains) run from the JSON result entries."""
    rows = []
    for r in results:
        churn, load = r.get("churn") or {}, r.get("load") or {}
        clients = churn.get("clients") or {}
        failures = clients.get("failures") or {}
        lat = churn.get("change_latency") or {}
        other = sum(v for k, v in failures.items() if k not in ("reset", "closed"))
        rows.append(
            [
                r["candidate"],
                str(r["domains"]),
                _fmt(churn.get("changes_done")),
                _fmt(lat.get("p50_ms")),
                _fmt(lat.get("p99_ms")),
                _fmt(churn.get("over_1s")),
                _fmt(clients.get("requests")),
                _fmt(failures.get("reset")),
                _fmt(failures.get("closed")),
                _fmt(other if failures else None),
                _fmt(clients.get("closed_after_response")),
                _fmt(load.get("rps_ratio"), 3),
                _fmt(load.get("p50_added_ms"), 2),
                _fmt(load.get("p99_added_ms"), 2),
            ]
        )
    return rows


def render_table(results: list[dict[str, Any]]) -> str:
    header = [name for name, _ in TABLE_COLUMNS]
    widths = [max(w, len(n)) for n, w in TABLE_COLUMNS]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    for row in table_rows(results):
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)
