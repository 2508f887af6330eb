"""Result tallies of the edge benchmark (bench/edge/tally.py)."""

from __future__ import annotations

import http.client

import pytest
from bench.edge.tally import Tally, classify, latency_summary, percentile, render_table


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (None, 200, None),
        (None, 503, "status"),
        (None, 404, "status"),
        (ConnectionResetError(), None, "reset"),
        (BrokenPipeError(), None, "reset"),
        (http.client.RemoteDisconnected("closed"), None, "closed"),
        (TimeoutError(), None, "timeout"),
        (ValueError("?"), None, "other"),
    ],
)
def test_classify(error: BaseException | None, status: int | None, kind: str | None) -> None:
    assert classify(error, status) == kind


def test_tally_counts_by_type_and_merges() -> None:
    a, b = Tally(), Tally()
    a.record(None, 200, False)
    a.record(ConnectionResetError(), None, False)
    b.record(None, 200, True)
    b.record(http.client.RemoteDisconnected("x"), None, True)  # no answer: not a graceful close
    b.record(None, 502, False)
    merged = a.merge(b).as_dict()
    assert merged["requests"] == 5
    assert merged["ok"] == 2
    assert merged["failed"] == 3
    assert merged["failures"] == {"reset": 1, "closed": 1, "timeout": 0, "status": 1, "other": 0}
    assert merged["closed_after_response"] == 1


def test_percentile_nearest_rank() -> None:
    samples = [float(x) for x in range(100, 0, -1)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_latency_summary_is_in_milliseconds() -> None:
    assert latency_summary([0.001, 0.002, 0.010]) == {
        "count": 3,
        "p50_ms": 2.0,
        "p99_ms": 10.0,
        "max_ms": 10.0,
    }
    assert latency_summary([]) == {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}


def test_table_has_a_row_per_run_and_dashes_for_what_is_missing() -> None:
    results = [
        {
            "candidate": "haproxy",
            "domains": 10,
            "churn": {
                "changes_done": 1000,
                "over_1s": 0,
                "change_latency": {"p50_ms": 2.5, "p99_ms": 9.0},
                "clients": {
                    "requests": 5000,
                    "failures": {"reset": 0, "closed": 1, "timeout": 2, "status": 3, "other": 0},
                    "closed_after_response": 0,
                },
            },
            "load": {"rps_ratio": 0.5, "p50_added_ms": 0.3, "p99_added_ms": 1.0},
        },
        {"candidate": "caddy", "domains": 10, "skipped": "not installed: /usr/bin/caddy"},
    ]
    lines = render_table(results).splitlines()
    assert len(lines) == 3
    assert lines[1].split() == [
        "haproxy", "10", "1000", "2.5", "9.0", "0", "5000", "0", "1", "5", "0", "0.500", "0.30",
        "1.00",
    ]  # fmt: skip
    assert lines[2].split()[:2] == ["caddy", "10"]
    assert set(lines[2].split()[2:]) == {"-"}
