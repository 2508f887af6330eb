"""Series and the Prometheus text from buckets of several servers (pure)."""

from __future__ import annotations

import pytest

from berth.errors import InvalidInput
from berth.metrics import histogram, prometheus, series
from berth.metrics.model import AppBucket
from tests.promtext import parse


def bucket(requests: int, *, s4xx: int = 0, body: int = 0, latency_us: int = 2000) -> AppBucket:
    b = AppBucket(requests=requests, body_bytes=body)
    b.by_class[1] = requests - s4xx
    b.by_class[3] = s4xx
    b.latency = {histogram.bucket_of(latency_us): requests}
    return b


def test_durations_and_windows_refuse_what_makes_no_sense() -> None:
    assert series.parse_duration("90s", "since") == 90
    assert series.parse_duration("2d", "since") == 172800
    for bad in ("", "1", "1w", "0s", "-5m", "1h\n2", "1.5h", "9999999999h"):
        with pytest.raises(InvalidInput):
            series.parse_duration(bad, "since")
    with pytest.raises(InvalidInput):
        series.window(1000.0, 3 * 86400, 60, 60, 86400)  # beyond retention
    with pytest.raises(InvalidInput):
        series.window(1000.0, 3600, 30, 60, 86400)  # a step smaller than a bucket
    with pytest.raises(InvalidInput):
        series.window(1000.0, 86400, 10, 10, 86400)  # too many points


def test_points_sum_servers_and_steps() -> None:
    now = 10_000.0 + 25  # 25 s into the bucket that starts at 10,000
    win = series.window(now, 600, 120, 60, 86400)
    rows = [
        (9_940, bucket(60, s4xx=6, body=600)),  # server A
        (9_940, bucket(30, body=300)),  # server B, same bucket
        (9_880, bucket(12)),  # same 120 s step as 9,940
        (10_000, bucket(5, latency_us=50_000)),  # the current, partial bucket
        (1_000, bucket(999)),  # outside the window
    ]
    points, totals = series.app_series(rows, win)
    by_t = {p["t"]: p for p in points}
    assert by_t[9_840]["requests"] == 102 and by_t[9_840]["status"]["4xx"] == 6
    assert by_t[9_840]["requests_per_second"] == pytest.approx(102 / 120, abs=1e-3)
    assert by_t[9_960]["requests"] == 5 and by_t[9_960]["seconds"] == pytest.approx(65)
    assert totals["requests"] == 107 and totals["body_bytes"] == 900
    assert totals["p99_ms"] == histogram.upper_bound_ms(histogram.bucket_of(50_000))


def test_exposition_parses_and_escapes_labels() -> None:
    text = prometheus.exposition(
        60,
        [prometheus.AppTraffic('we"ird\\', "web", bucket(120, s4xx=12, body=1200))],
        [prometheus.InstanceUsage("t", "web", "i1", 0.25, 123456, 3)],
    )
    types, samples = parse(text)
    assert types["berth_app_requests"] == "gauge"
    assert types["berth_instance_restarts_total"] == "counter"
    values = {(n, tuple(sorted(labels.items()))): v for n, labels, v in samples}
    key = (("app", "web"), ("status_class", "4xx"), ("tenant", 'we"ird\\'))
    assert values[("berth_app_requests", key)] == 12
    assert values[("berth_app_requests_per_second", key)] == pytest.approx(0.2)
    assert (
        values[
            ("berth_instance_memory_bytes", (("app", "web"), ("instance", "i1"), ("tenant", "t")))
        ]
        == 123456
    )


def test_the_strict_parser_refuses_malformed_text() -> None:
    for bad in (
        'x{a="1"} 1\n',  # no TYPE first
        '# TYPE x gauge\nx{a="1} 1\n',
        "# TYPE x gauge\nx 1",  # no final newline
        "# TYPE x gauge\nx one\n",
        '# TYPE x gauge\nx{a="1",a="2"} 1\n',
    ):
        with pytest.raises(ValueError):
            parse(bad)
