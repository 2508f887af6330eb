"""The pure parts of bench/edge_https.py: h2load's output, the figures, the plans, the table."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.edge_https import (
    H2loadSummary,
    compare,
    domain_plan,
    h2load_argv,
    instance_plan,
    load_figures,
    median_run,
    merge_counts,
    parse_h2load_log,
    parse_h2load_summary,
    render_table,
)

# What h2load 1.52 (Debian 12's nghttp2-client) prints, as captured from a run of this bench.
H2_TIMED = """starting benchmark...
spawning thread #0: 20 total client(s). Timing-based test with 1s of warm-up time ...
TLS Protocol: TLSv1.3
Cipher: TLS_AES_128_GCM_SHA256
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 3.00s, 27336.50 req/s, 2.48MB/s
requests: 82010 total, 82030 started, 82010 done, 82005 succeeded, 3 failed, 2 errored, 0 timeout
status codes: 82005 2xx, 0 3xx, 3 4xx, 0 5xx
traffic: 7.43MB (7790950) total, 4.22MB (4428540) headers (space savings 49.06%), ...
                     min         max         mean         sd        +/- sd
time for request:       89us       570us       224us       121us    85.00%
"""

H1_COUNTED = """starting benchmark...
spawning thread #0: 2 total client(s). 20 total requests
Application protocol: http/1.1
progress: 100% done

finished in 5.94ms, 3365.87 req/s, 305.36KB/s
requests: 20 total, 20 started, 20 done, 20 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 20 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_a_timed_summary() -> None:
    s = parse_h2load_summary(H2_TIMED)
    assert s == H2loadSummary(
        requests=82010,
        succeeded=82005,
        failed=3,
        errored=2,
        timeout=0,
        status_2xx=82005,
        status_other=3,
        rps=27336.5,
        elapsed_s=3.0,
        protocol="h2",
    )


def test_a_counted_summary_in_milliseconds() -> None:
    s = parse_h2load_summary(H1_COUNTED)
    assert (s.requests, s.protocol, s.rps) == (20, "http/1.1", 3365.87)
    assert s.elapsed_s == pytest.approx(0.00594)


def test_plain_http_prints_no_protocol_line() -> None:
    text = H1_COUNTED.replace("Application protocol: http/1.1\n", "")
    assert parse_h2load_summary(text).protocol is None


@pytest.mark.parametrize(
    "text", ["", "finished in 1s, 10 req/s\n", H2_TIMED.replace("status codes", "codes")]
)
def test_not_a_summary_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an h2load summary"):
        parse_h2load_summary(text)


def test_the_log_gives_latencies_of_the_2xx_and_counts_the_rest() -> None:
    log = "1764600000000000\t200\t150\n1764600000000100\t200\t2500\n\n1764600000000200\t503\t90\n"
    log += "1764600000000300\t-1\t0\n"
    latencies, bad = parse_h2load_log(log)
    assert latencies == [0.15, 2.5]
    assert bad == 2


def test_a_log_line_without_its_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="not an h2load log line"):
        parse_h2load_log("1764600000000000 200 150\n")


def _summary(requests: int, elapsed_s: float, rps: float, failed: int = 0) -> H2loadSummary:
    ok = requests - failed
    return H2loadSummary(requests, ok, failed, 0, 0, requests, 0, rps, elapsed_s, "h2")


def test_figures_of_one_timed_run_keep_h2loads_rate() -> None:
    log = "".join(f"1\t200\t{us}\n" for us in range(100, 1100, 10))  # 0.1 .. 1.09 ms
    figures = load_figures([_summary(100, 2.0, 49.5, failed=1)], log, "timed")
    assert figures["rps"] == 49.5
    assert figures["requests"] == 100
    assert figures["failed"] == 1
    assert (figures["p50_ms"], figures["p99_ms"]) == (0.59, 1.08)
    assert figures["logged_requests"] == 100


def test_figures_of_batches_add_up_requests_over_time() -> None:
    batches = [_summary(20000, 0.5, 40000.0), _summary(20000, 0.3, 66666.7)]
    figures = load_figures(batches, "1\t200\t100\n", "2 runs of 20000")
    assert figures["rps"] == 50000.0
    assert figures["requests"] == 40000
    assert figures["seconds"] == 0.8


def test_compare_through_vs_direct() -> None:
    direct = {"rps": 1000.0, "p50_ms": 0.2, "p99_ms": 1.0}
    through = {"rps": 900.0, "p50_ms": 0.35, "p99_ms": None}
    assert compare(direct, through) == {
        "rps_ratio": 0.9,
        "p50_added_ms": 0.15,
        "p99_added_ms": None,
    }
    assert compare({"rps": 0.0}, through)["rps_ratio"] is None


def test_median_run_is_one_of_the_runs() -> None:
    runs = [{"rps": 3.0, "k": "c"}, {"rps": 1.0, "k": "a"}, {"rps": 2.0, "k": "b"}]
    assert median_run(runs)["k"] == "b"
    assert median_run(runs[:2])["k"] == "a"  # of two, the lower: never flattering


def test_h2load_argv() -> None:
    timed = h2load_argv(
        "https://d1.edge.test/",
        connect_to="127.0.0.1:8443",
        h1=True,
        log_file=Path("/tmp/x.log"),
        seconds=8,
    )
    assert timed[0] == "h2load" and timed[-1] == "https://d1.edge.test/"
    assert {"--clients=20", "--duration=8", "--warm-up-time=1", "--h1"} <= set(timed)
    assert "--connect-to=127.0.0.1:8443" in timed
    counted = h2load_argv(
        "http://127.0.0.1:9/", connect_to=None, h1=False, log_file=Path("/x"), requests=20000
    )
    assert "--requests=20000" in counted
    assert not any(a.startswith(("--duration", "--h1", "--connect-to")) for a in counted)
    with pytest.raises(ValueError):
        h2load_argv("http://x/", connect_to=None, h1=True, log_file=Path("/x"))


def test_instance_plan_adds_and_removes_in_turn() -> None:
    plan = instance_plan(6, ["a.test", "b.test"], 9000)
    assert [(c.kind, c.domain) for c in plan] == [
        ("add_upstream", "a.test"),
        ("remove_upstream", "a.test"),
        ("add_upstream", "b.test"),
        ("remove_upstream", "b.test"),
        ("add_upstream", "a.test"),
        ("remove_upstream", "a.test"),
    ]
    assert {c.ports for c in plan} == {(9000,)}


def test_domain_plan_adds_and_removes_new_domains() -> None:
    plan = domain_plan(4, [1, 2])
    assert [(c.kind, c.domain, c.ports) for c in plan] == [
        ("add_domain", "new0.churn.test", (1,)),
        ("remove_domain", "new0.churn.test", (1,)),
        ("add_domain", "new1.churn.test", (2,)),
        ("remove_domain", "new1.churn.test", (2,)),
    ]


def _counts(requests: int, reset: int, closed: int) -> dict[str, object]:
    failures = {"reset": reset, "closed": closed, "timeout": 0, "status": 0, "other": 0}
    return {
        "requests": requests,
        "ok": requests - reset - closed,
        "failed": reset + closed,
        "failures": failures,
        "closed_after_response": 1,
    }


def test_merge_counts() -> None:
    merged = merge_counts(_counts(10, 1, 2), _counts(5, 0, 1))
    assert merged["requests"] == 15
    assert merged["failed"] == 4
    assert merged["failures"]["reset"] == 1
    assert merged["failures"]["closed"] == 3
    assert merged["closed_after_response"] == 2


def test_table_has_a_row_per_load_path_and_per_churn() -> None:
    latency = {"count": 2, "p50_ms": 5.0, "p99_ms": 9.0, "max_ms": 9.0}
    churn = {
        "changes_done": 2,
        "reloads": 0,
        "over_1s": 0,
        "change_latency": latency,
        "clients": _counts(100, 0, 0),
    }
    results = [
        {
            "domains": 10,
            "mode": "default",
            "dynamic_upstreams": True,
            "load": {
                "paths": {
                    "direct_http1": {"rps": 1000.0, "p50_ms": 0.1, "protocol": None},
                    "berth_https_http2": {
                        "rps": 500.0,
                        "rps_ratio": 0.5,
                        "p50_ms": 0.4,
                        "p50_added_ms": 0.3,
                        "protocol": "h2",
                    },
                }
            },
            "instance_churn": churn,
        },
        {"domains": 10000, "mode": "dynamic_upstreams=False", "error": "boom"},
    ]
    lines = render_table(results).splitlines()
    assert len(lines) == 5
    assert "load berth https, batches h2" in lines[2] and "0.500" in lines[2]
    assert "change instances, dynamic" in lines[3] and "5.0" in lines[3]
    assert "error" in lines[4]
