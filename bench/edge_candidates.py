"""Benchmark: which proxy should Berth's edge be? (issue 9, point 3: route changes drop nothing)

Candidates from the distro, each driven by a small prototype (bench/edge/drivers.py):

- ``nginx-reload``: today's way, every route change re-renders the config and reloads nginx;
- ``nginx-lua``: nginx with libnginx-mod-http-lua, routes in a lua_shared_dict set through a
  loopback control location, ``balancer_by_lua_block`` picking the peer (no reload);
- ``haproxy``: HAProxy 2.6, runtime API over its admin socket (add/del server, add/del map);
- ``caddy``: Caddy 2.6, admin API (POST/PUT/DELETE under /config/ and /id/).

For each, at 10 and at 10,000 domains, on loopback only: backends (one nginx serving N ports,
each answering its own tag, keep-alive); throughput and p50/p99 through the proxy vs direct to
the backend (``wrk`` when installed, else Python clients; 20 keep-alive connections); then 20
keep-alive clients for the whole churn while 1,000 route changes are made (an upstream added to
a domain and removed, a domain added and removed), each probed with fresh connections until it
has effect. Counts the clients' failed requests by type (reset, closed, timeout, status, other)
and the connections the proxy closed after a response. Every phase is bounded (``--phase-s``);
every process and the temp dir are removed at the end, also on failure or a signal. Prints one
table and writes bench/results/edge_candidates.json.

    python bench/edge_candidates.py [--domains 10,10000] [--changes 1000] [--only haproxy,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.edge.configs import NGINX_MODULES, render_backends_nginx  # noqa: E402
from bench.edge.drivers import DRIVERS, NGINX, Driver  # noqa: E402
from bench.edge.plan import EffectWatch, change_plan, domain_name, initial_routes  # noqa: E402
from bench.edge.procs import Proc, free_ports, group_rss_mib, http_get, wait_until  # noqa: E402
from bench.edge.tally import latency_summary, render_table  # noqa: E402
from bench.edge.traffic import Clients, wait_effect  # noqa: E402
from bench.load import run_load  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "edge_candidates.json"


def available(name: str) -> str | None:
    """Why candidate ``name`` cannot run here, or None."""
    need = {
        "nginx-reload": [NGINX],
        "nginx-lua": [NGINX, f"{NGINX_MODULES}/ngx_http_lua_module.so"],
        "haproxy": [shutil.which("haproxy") or "/usr/sbin/haproxy"],
        "caddy": [shutil.which("caddy") or "/usr/bin/caddy"],
    }[name]
    missing = [p for p in need if not os.path.exists(p)]
    return f"not installed: {', '.join(missing)}" if missing else None


def versions() -> dict[str, str]:
    def run(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError as e:
            return f"unavailable: {e}"
        return (
            (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr) else ""
        )

    return {
        "nginx": run([NGINX, "-v"]),
        "nginx-lua": run(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-http-lua"]),
        "haproxy": run(["haproxy", "-v"]),
        "caddy": run(["caddy", "version"]),
    }


def measure_load(driver: Driver, host: str, direct_port: int, seconds: float) -> dict[str, Any]:
    direct = run_load(f"http://127.0.0.1:{direct_port}/", None, seconds, 20)
    proxied = run_load(f"http://127.0.0.1:{driver.port}/", host, seconds, 20)
    return {
        "host": host,
        "direct": direct.as_dict(),
        "proxied": proxied.as_dict(),
        "rps_ratio": round(proxied.rps / direct.rps, 3) if direct.rps else None,
        "p50_added_ms": round(proxied.p50_ms - direct.p50_ms, 3),
        "p99_added_ms": round(proxied.p99_ms - direct.p99_ms, 3),
    }


def churn(
    driver: Driver,
    hosts: list[str],
    changes: int,
    extra_port: int,
    backend_ports: list[int],
    phase_s: float,
    effect_timeout_s: float,
    clients: int,
) -> dict[str, Any]:
    plan = change_plan(changes, hosts, extra_port, backend_ports)
    latencies: list[float] = []
    apply_s: list[float] = []
    late = 0
    over_1s = 0  # the target: every change in effect within 1 s
    error = None
    deadline = time.monotonic() + phase_s
    done = 0
    with Clients(driver.port, hosts, clients) as running:
        time.sleep(0.5)  # every client connected and idle/busy before the first change
        for change in plan:
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            try:
                if change.kind == "add_upstream":
                    driver.add_upstream(change.domain, change.ports[0])
                elif change.kind == "remove_upstream":
                    driver.remove_upstream(change.domain, change.ports[0])
                elif change.kind == "add_domain":
                    driver.add_domain(change.domain, list(change.ports))
                else:
                    driver.remove_domain(change.domain)
            except Exception as e:  # recorded in the result; the run goes on
                error = f"{change.kind} {change.domain}: {e}"
                break
            applied = time.perf_counter()
            apply_s.append(applied - started)
            # Waited for to the end (not cut at the 1 s target): a change that is still
            # pending would make the next one (its undoing) look instant.
            if wait_effect(driver.port, EffectWatch(change), effect_timeout_s):
                took = time.perf_counter() - started
                latencies.append(took)
                over_1s += took > 1.0
            else:
                late += 1
                over_1s += 1
            done += 1
        time.sleep(0.5)
    return {
        "changes_planned": changes,
        "changes_done": done,
        "stopped_by_phase_limit": done < changes and error is None,
        "error": error,
        "change_latency": latency_summary(latencies),
        "apply_call": latency_summary(apply_s),
        "not_effective_in_time": late,
        "over_1s": over_1s,
        "clients": running.tally().as_dict(),
        "proxy_alive_after": driver.proc is not None and driver.proc.alive(),
        "haproxy_servers_left_in_maintenance": getattr(driver, "undeleted", None),
    }


def run_candidate(
    name: str, domains: int, workdir: Path, ports: list[int], extra: int, args: argparse.Namespace
) -> dict[str, Any]:
    result: dict[str, Any] = {"candidate": name, "domains": domains}
    reason = available(name)
    if reason:
        result["skipped"] = reason
        return result
    routes = initial_routes(domains, ports)
    names = list(routes)
    hosts = names[: min(10, len(names))]
    load_host = names[-1]  # the last one: a proxy matching hosts one by one pays the most
    driver = DRIVERS[name](workdir)
    try:
        started = time.perf_counter()
        driver.start(routes)
        result["start_until_serving_s"] = round(time.perf_counter() - started, 3)
        assert driver.proc is not None
        result["rss_mib_after_start"] = group_rss_mib(driver.proc.pid)
        if args.load_s > 0:
            result["load"] = measure_load(driver, load_host, routes[load_host][0], args.load_s)
        result["churn"] = churn(
            driver,
            hosts,
            args.changes,
            extra,
            ports,
            args.phase_s,
            args.effect_timeout_s,
            args.clients,
        )
        result["rss_mib_after_churn"] = group_rss_mib(driver.proc.pid)
    except Exception as e:  # one candidate failing must not hide the others
        result["error"] = f"{type(e).__name__}: {e}"
        if driver.proc is not None:
            result["log_tail"] = driver.proc.tail(1500)
    finally:
        driver.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", default="10,10000")
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--backends", type=int, default=8)
    parser.add_argument("--load-s", type=float, default=5.0)
    parser.add_argument("--phase-s", type=float, default=240.0, help="cap of one churn phase")
    parser.add_argument("--effect-timeout-s", type=float, default=30.0)
    parser.add_argument("--only", default=",".join(DRIVERS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = [int(x) for x in args.domains.split(",") if x]
    candidates = [c for c in args.only.split(",") if c]
    unknown = [c for c in candidates if c not in DRIVERS]
    if unknown or args.backends < 2 or args.changes < 0 or not sizes:
        parser.error(f"unknown candidates {unknown}" if unknown else "bad sizes or counts")

    # A signal ends the run through the finally blocks: every process and the temp dir go.
    def interrupted(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    top = Path(tempfile.mkdtemp(prefix="berth-edge-"))
    results: list[dict[str, Any]] = []
    backends: Proc | None = None
    try:
        *ports, extra = free_ports(args.backends + 1)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (top / sub).mkdir()
        (top / "backends.conf").write_text(render_backends_nginx(str(top), [*ports, extra]))
        backends = Proc(
            "backends",
            [NGINX, "-p", str(top), "-c", str(top / "backends.conf"), "-g", "daemon off;"],
            top,
        )
        wait_until(lambda: http_get(extra, "x")[0] == 200, 30, "backends", backends)
        for domains in sizes:
            for name in candidates:
                workdir = top / f"{name}-{domains}"
                workdir.mkdir()
                print(f"-- {name} at {domains} domains", file=sys.stderr, flush=True)
                results.append(run_candidate(name, domains, workdir, ports, extra, args))
    finally:
        if backends is not None:
            backends.stop()
        shutil.rmtree(top, ignore_errors=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(),
        "settings": {
            "domains": sizes,
            "changes": args.changes,
            "clients": args.clients,
            "backends": args.backends,
            "load_seconds": args.load_s,
            "phase_limit_seconds": args.phase_s,
            "effect_timeout_seconds": args.effect_timeout_s,
            "first_domain": domain_name(0),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render_table(results))
    for r in results:
        for key in ("skipped", "error"):
            if r.get(key) or (r.get("churn") or {}).get(key):
                print(f"{r['candidate']} @{r['domains']}: {r.get(key) or r['churn'][key]}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
