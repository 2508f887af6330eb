"""Benchmark: the edge of issue 9 on today's code, at Berth's default nginx config.

Berth's own renderer and ``NginxManager`` with the defaults a user gets (dynamic upstreams on
when the distro's Lua module is installed, HTTPS with HTTP/2 by ALPN for hostnames with a
certificate: one operator's wildcard certificate, made here, served for every app's
hostname), on loopback only, in a temp dir of its own:

1. Throughput and p50/p99 with 20 keep-alive connections, all driven by ``h2load`` (the same
   client for every path): direct to a backend (plain HTTP/1.1), and through Berth's nginx
   over plain HTTP/1.1, HTTPS HTTP/1.1 (``--h1``) and HTTPS HTTP/2 (``--connect-to`` so the
   SNI and ``:authority`` are the app's hostname). The ratio to direct and the p50 added.
2. Route change latency, ``apply()`` until a fresh request (a new plain-HTTP connection) sees
   the change, p50/p99, at 10 and at 10,000 domains: instance changes (an upstream added to an
   app and removed again: dynamic, no reload) and domain changes (a new app's domain added and
   removed again: a reload). During each run 20 keep-alive clients (10 plain HTTP, 10 HTTPS
   with the SNI of their app) count failed requests by type. The same instance churn with
   ``dynamic_upstreams=False`` (a reload each) for the comparison.

Redirects from HTTP to HTTPS (on by default once a certificate exists) are left off so that
plain HTTP through nginx serves the app and can be measured next to HTTPS; every other setting
is the default. Every phase is bounded; every process and the temp dir go at the end, also on
a failure or a signal. Prints one table and writes bench/results/edge_https.json.

    python bench/edge_https.py [--domains 10,10000] [--load-s 8] [--instance-changes 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import multiprocessing
import os
import platform
import queue
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from bench.edge.configs import LOOPBACK, render_backends_nginx  # noqa: E402
from bench.edge.plan import Change, EffectWatch, domain_name  # noqa: E402
from bench.edge.procs import Proc, free_ports, group_rss_mib, http_get, wait_until  # noqa: E402
from bench.edge.tally import FAILURE_TYPES, latency_summary, percentile  # noqa: E402
from bench.edge.traffic import Clients, wait_effect  # noqa: E402

NGINX = "/usr/sbin/nginx"
RESULTS = Path(__file__).resolve().parent / "results" / "edge_https.json"
CONNECTIONS = 20
BASE_HOSTS = 10  # the apps the keep-alive clients use and whose instances change
KEEPALIVE_REQUESTS = 1000  # nginx's default; Berth's config does not set it


# -- h2load: the command and its output (pure) ----------------------------------------------


def h2load_argv(
    url: str,
    *,
    connect_to: str | None,
    h1: bool,
    log_file: Path,
    connections: int = 20,
    seconds: float | None = None,
    requests: int | None = None,
    threads: int = 1,
) -> list[str]:
    """A timed run (``seconds``, after a 1 s warm-up) or a run of ``requests`` requests."""
    argv = [
        "h2load",
        f"--clients={connections}",
        f"--threads={threads}",
        "--max-concurrent-streams=1",  # one request at a time per connection, as over h1
        f"--log-file={log_file}",
    ]
    if seconds is not None:
        argv += [f"--duration={max(1, round(seconds))}", "--warm-up-time=1"]
    elif requests is not None:
        argv.append(f"--requests={requests}")
    else:
        raise ValueError("a timed run or a number of requests")
    if h1:
        argv.append("--h1")
    if connect_to:
        argv.append(f"--connect-to={connect_to}")
    return [*argv, url]


@dataclass(frozen=True)
class H2loadSummary:
    requests: int  # done
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    status_other: int
    rps: float
    elapsed_s: float
    protocol: str | None  # the negotiated one ("h2", "http/1.1"), None when none was printed


_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout",
    re.MULTILINE,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.MULTILINE)
_FINISHED = re.compile(r"^finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", re.MULTILINE)
_PROTOCOL = re.compile(r"^Application protocol: (\S+)", re.MULTILINE)
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_h2load_summary(out: str) -> H2loadSummary:
    """The figures of h2load's summary; ValueError when a part is missing."""
    requests, status, finished = _REQUESTS.search(out), _STATUS.search(out), _FINISHED.search(out)
    if requests is None or status is None or finished is None:
        raise ValueError(f"not an h2load summary:\n{out[-2000:]}")
    _total, _started, done, ok, failed, errored, timeout = (int(g) for g in requests.groups())
    s2, s3, s4, s5 = (int(g) for g in status.groups())
    protocol = _PROTOCOL.search(out)
    return H2loadSummary(
        requests=done,
        succeeded=ok,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=s2,
        status_other=s3 + s4 + s5,
        rps=float(finished.group(3)),
        elapsed_s=float(finished.group(1)) * _SECONDS[finished.group(2)],
        protocol=protocol.group(1) if protocol else None,
    )


def parse_h2load_log(text: str) -> tuple[list[float], int]:
    """Per-request latencies in ms from h2load's ``--log-file`` (start µs, status, µs to the
    end of the response, tab-separated), and how many lines answered other than 2xx (or not
    at all: h2load logs status -1 then)."""
    latencies: list[float] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise ValueError(f"not an h2load log line: {line!r}")
        status, took_us = int(fields[1]), int(fields[2])
        if 200 <= status < 300:
            latencies.append(took_us / 1000)
        else:
            bad += 1
    return latencies, bad


def load_figures(
    summaries: list[H2loadSummary], log_text: str, mode: str, connections: int = 20
) -> dict[str, Any]:
    """One path's figures from one timed run, or from back-to-back runs (added up)."""
    latencies, bad = parse_h2load_log(log_text)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    requests = sum(s.requests for s in summaries)
    elapsed = sum(s.elapsed_s for s in summaries)
    if len(summaries) == 1:
        rps = summaries[0].rps  # h2load's own, over its measurement period
    else:
        rps = round(requests / elapsed, 2) if elapsed else 0.0
    return {
        "tool": "h2load",
        "mode": mode,
        "seconds": round(elapsed, 3),
        "connections": connections,
        "protocol": summaries[0].protocol if summaries else None,
        "requests": requests,
        "failed": sum(s.failed + s.errored + s.timeout + s.status_other for s in summaries),
        "rps": rps,
        "p50_ms": None if p50 is None else round(p50, 3),
        "p99_ms": None if p99 is None else round(p99, 3),
        "logged_requests": len(latencies) + bad,
    }


def compare(direct: dict[str, Any], through: dict[str, Any]) -> dict[str, Any]:
    """Ratio of requests/s and latency added, through the proxy vs direct."""

    def added(key: str) -> float | None:
        if direct.get(key) is None or through.get(key) is None:
            return None
        return round(through[key] - direct[key], 3)

    return {
        "rps_ratio": round(through["rps"] / direct["rps"], 3) if direct.get("rps") else None,
        "p50_added_ms": added("p50_ms"),
        "p99_added_ms": added("p99_ms"),
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s (an actual run, not a blend of several)."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    return ordered[(len(ordered) - 1) // 2]


# -- the world: backends, Berth's nginx, routes ---------------------------------------------


def app_id(i: int) -> str:
    # Like the store's ids (16 hex digits), the same in every run.
    return hashlib.sha256(f"edge-https-{i}".encode()).hexdigest()[:16]


def make_route(i: int, domain: str, ports: tuple[int, ...]) -> Any:
    from berth.proxy.model import Route, Upstream

    return Route(
        app_id=app_id(i),
        app_name=f"app-{i}",
        tenant_id=f"t{i % 700}",
        hostnames=(domain,),
        upstreams=tuple(Upstream(LOOPBACK, p) for p in ports),
        state="serving",
    )


def wildcard_certificate(directory: Path) -> tuple[Path, Path]:
    """An operator's wildcard for the platform's base domain, from a CA made here."""
    from tests.certs import selfsigned

    made = selfsigned.issue(("*.edge.test", "*.churn.test"), valid_for=dt.timedelta(days=2))
    directory.mkdir(parents=True)
    chain, key = directory / "chain.pem", directory / "key.pem"
    chain.write_text(made.chain_pem)
    key.write_text(made.key_pem)
    key.chmod(0o600)
    return chain, key


class Edge:
    """Berth's nginx for one run: the routes by domain, applied as whole snapshots."""

    def __init__(
        self,
        workdir: Path,
        domains: int,
        backend_ports: list[int],
        cert: tuple[Path, Path],
        dynamic: bool | None,
        https_hosts: int | None = None,
    ) -> None:
        from berth.proxy.model import ServedCertificate, TlsConfig
        from berth.proxy.nginx import NginxManager

        self.port, self.tls_port = free_ports(2)
        self.manager = NginxManager(
            workdir / "nginx",
            nginx_binary=NGINX,
            listen_host=LOOPBACK,
            listen_port=self.port,
            dynamic_upstreams=dynamic,
        )
        chain, key = cert
        tls_port = self.tls_port

        self.backend_ports = backend_ports
        self.routes = {
            domain_name(i): make_route(i, domain_name(i), (backend_ports[i % len(backend_ports)],))
            for i in range(domains)
        }
        # The hostnames served over HTTPS: every one, or the first ``https_hosts`` (the
        # clients' apps among them), the last (the load's) and every domain added later.
        names = list(self.routes)
        limit = len(names) if https_hosts is None else max(https_hosts, BASE_HOSTS)
        self.https = {*names[:limit], names[-1]}
        https = self.https

        def tls(routes: tuple[Any, ...]) -> TlsConfig:
            # The operator's wildcard, served for the platform's hostnames.
            served = tuple(h for r in routes for h in r.hostnames if h in https)
            return TlsConfig(tls_port, (ServedCertificate(served, chain, key),))

        self.manager.tls = tls
        self.next_app = domains
        self.generation = 0
        self.master: int | None = None

    def apply(self) -> None:
        self.generation += 1
        self.manager.apply(self.manager.config(tuple(self.routes.values()), self.generation))

    def start(self) -> float:
        started = time.perf_counter()
        try:
            self.apply()
        finally:
            self.master = self.manager.pid()
        if not self.manager.wait_for_generation(self.generation, timeout=60):
            raise RuntimeError("Berth's nginx did not serve its first config in 60 s")
        return time.perf_counter() - started

    def change(self, change: Change) -> None:
        from berth.proxy.model import Upstream

        domain, port = change.domain, change.ports[0]
        if change.kind == "add_upstream":
            route = self.routes[domain]
            self.routes[domain] = replace(
                route, upstreams=(*route.upstreams, Upstream(LOOPBACK, port))
            )
        elif change.kind == "remove_upstream":
            route = self.routes[domain]
            kept = tuple(u for u in route.upstreams if u.port != port)
            self.routes[domain] = replace(route, upstreams=kept)
        elif change.kind == "add_domain":
            self.routes[domain] = make_route(self.next_app, domain, change.ports)
            self.https.add(domain)
            self.next_app += 1
        else:
            del self.routes[domain]
            self.https.discard(domain)
        self.apply()

    def config_check_s(self, timeout: float) -> float | None:
        """How long ``nginx -t`` of the current routes' config takes (no time limit of
        Berth's: after a start that ran into it); None when it rejects it or runs over."""
        from berth.proxy.render import render_nginx_conf

        self.manager._prepare_dirs()
        conf = self.manager.conf_dir / "check-only.conf"
        cfg = self.manager.config(tuple(self.routes.values()), self.generation)
        conf.write_text(render_nginx_conf(cfg, self.manager.paths))
        started = time.perf_counter()
        try:
            argv = [NGINX, "-t", "-q", "-c", str(conf), "-p", f"{self.manager.conf_dir}/"]
            done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return None
        finally:
            conf.unlink(missing_ok=True)
        return round(time.perf_counter() - started, 2) if done.returncode == 0 else None

    def stop(self) -> None:
        master = self.manager.pid() or self.master
        try:
            self.manager.stop()
        finally:
            if master is not None:
                # A master killed while it loads a config (stop's last resort) leaves its
                # workers behind, in its process group: they go too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(master, signal.SIGKILL)


def instance_plan(count: int, base_domains: list[str], extra_port: int) -> list[Change]:
    """An upstream added to a base app and removed again, the apps in turn. Each keeps its
    own upstream all along, so the clients on it always have a live route."""
    return [
        Change(
            "add_upstream" if n % 2 == 0 else "remove_upstream",
            base_domains[(n // 2) % len(base_domains)],
            (extra_port,),
        )
        for n in range(count)
    ]


def domain_plan(count: int, backend_ports: list[int]) -> list[Change]:
    """A new app's domain added and removed again (each a reload)."""
    return [
        Change(
            "add_domain" if n % 2 == 0 else "remove_domain",
            f"new{n // 2}.churn.test",
            (backend_ports[(n // 2) % len(backend_ports)],),
        )
        for n in range(count)
    ]


# -- keep-alive HTTPS clients -----------------------------------------------------------------


class _SniConnection(http.client.HTTPSConnection):
    """HTTPS to loopback with the app's hostname as SNI (the certificate is the test's own:
    not verified, as h2load does not)."""

    def __init__(self, port: int, sni: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(LOOPBACK, port, timeout=timeout, context=context)
        self.sni = sni
        self.tls_context = context

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self.tls_context.wrap_socket(raw, server_hostname=self.sni)


class TlsClients(Clients):
    """Like ``Clients``, over HTTPS (HTTP/1.1 keep-alive): client ``i`` stays on one app's
    hostname (its SNI) for its whole connection."""

    def _run(self, i: int) -> None:
        rng = random.Random(1000 + i)
        tally = self.tallies[i]
        host = self.hosts[i % len(self.hosts)]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = _SniConnection(self.port, host, context, timeout=5)
        try:
            while not self.stop_event.is_set():
                try:
                    conn.request("GET", "/", headers={"Host": host})
                    resp = conn.getresponse()
                    resp.read()
                    tally.record(None, resp.status, resp.will_close)
                    if resp.will_close:
                        conn.close()
                except (OSError, http.client.HTTPException) as e:
                    tally.record(_as_plain(e), None, False)
                    conn.close()
                time.sleep(rng.uniform(0, self.pause_s))
        finally:
            conn.close()


def _as_plain(error: BaseException) -> BaseException:
    """A TLS connection the server closed (an EOF in the TLS layer) is what a plain one
    reports as RemoteDisconnected: the same failure type."""
    if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return http.client.RemoteDisconnected(str(error))
    return error


def merge_counts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two ``Tally.as_dict()`` results added up."""
    return {
        "requests": a["requests"] + b["requests"],
        "ok": a["ok"] + b["ok"],
        "failed": a["failed"] + b["failed"],
        "failures": {k: a["failures"].get(k, 0) + b["failures"].get(k, 0) for k in FAILURE_TYPES},
        "closed_after_response": a["closed_after_response"] + b["closed_after_response"],
    }


def _clients_main(
    port: int, tls_port: int, hosts: list[str], each: int, ready: Any, stop: Any, out: Any
) -> None:
    with Clients(port, hosts, each) as plain, TlsClients(tls_port, hosts, each) as tls:
        ready.set()
        stop.wait()
    out.put((plain.tally().as_dict(), tls.tally().as_dict()))


class ClientProcess:
    """The keep-alive clients in a process of their own: 20 client threads in the bench's
    process would hold its interpreter lock against ``apply()`` and make every change look
    slower than Berth makes it."""

    def __init__(self, port: int, tls_port: int, hosts: list[str], each: int) -> None:
        # Forked while the bench has no other thread; the child needs nothing re-imported.
        ctx = multiprocessing.get_context("fork")
        self.ready, self.stop = ctx.Event(), ctx.Event()
        self.out: Any = ctx.Queue()
        self.proc = ctx.Process(
            target=_clients_main,
            args=(port, tls_port, hosts, each, self.ready, self.stop, self.out),
            daemon=True,
        )
        self.http: dict[str, Any] | None = None
        self.https: dict[str, Any] | None = None

    def __enter__(self) -> ClientProcess:
        self.proc.start()
        try:
            if not self.ready.wait(30):
                raise RuntimeError("the clients did not start in 30 s")
            time.sleep(0.5)  # every client connected before the first change
        except BaseException:
            self._end()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        with contextlib.suppress(queue.Empty):
            self.http, self.https = self.out.get(timeout=30)
        self._end()

    def _end(self) -> None:
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)


# -- the phases -------------------------------------------------------------------------------


def _h2load(argv: list[str], timeout: float) -> H2loadSummary:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"h2load exited {out.returncode}: {out.stderr[-1000:]}")
    return parse_h2load_summary(out.stdout)


def run_h2load(
    url: str, connect_to: str | None, h1: bool, seconds: float, workdir: Path, batches: bool
) -> dict[str, Any]:
    """HTTP/1.1: one timed run (h2load opens a new connection when nginx closes one after
    its keepalive_requests, 1,000 by default). HTTP/2: nginx ends a connection after as many
    requests (GOAWAY) and h2load does not reconnect there, so back-to-back runs of 1,000
    requests per connection (a warm-up run first, not counted) until ``seconds`` have passed:
    the same new connection every 1,000 requests as over HTTP/1.1. ``batches`` runs HTTP/1.1
    that way too, to tell what the batches cost from what HTTP/2 costs."""
    log_file = workdir / "h2load.log"
    try:
        if h1 and not batches:
            argv = h2load_argv(
                url, connect_to=connect_to, h1=True, log_file=log_file, seconds=seconds
            )
            summary = _h2load(argv, seconds + 60)
            return load_figures([summary], log_file.read_text(), "timed")
        batch = CONNECTIONS * KEEPALIVE_REQUESTS
        argv = h2load_argv(url, connect_to=connect_to, h1=h1, log_file=log_file, requests=batch)
        _h2load(argv, 60)  # warm-up
        summaries: list[H2loadSummary] = []
        logs: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            log_file.unlink(missing_ok=True)  # h2load appends to it
            summaries.append(_h2load(argv, 60))
            logs.append(log_file.read_text())
        return load_figures(summaries, "".join(logs), f"{len(summaries)} runs of {batch}")
    finally:
        log_file.unlink(missing_ok=True)


def measure_load(
    edge: Edge, host: str, seconds: float, rounds: int, workdir: Path
) -> dict[str, Any]:
    backend = edge.routes[host].upstreams[0].port
    tls = f"{LOOPBACK}:{edge.tls_port}"
    paths: dict[str, tuple[str, str | None, bool, bool]] = {
        "direct_http1": (f"http://{LOOPBACK}:{backend}/", None, True, False),
        "berth_http1": (f"http://{host}/", f"{LOOPBACK}:{edge.port}", True, False),
        "berth_https_http1": (f"https://{host}/", tls, True, False),
        "berth_https_http2": (f"https://{host}/", tls, False, True),
        # The same batches as HTTP/2's, over HTTP/1.1: what the batches alone cost.
        "berth_https_http1_batches": (f"https://{host}/", tls, True, True),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    # Rounds interleave the paths, so a burst of other work on the machine hits all alike.
    for _ in range(rounds):
        for name, (url, connect_to, h1, batches) in paths.items():
            runs[name].append(run_h2load(url, connect_to, h1, seconds, workdir, batches))
    chosen = {name: median_run(r) for name, r in runs.items()}
    direct = chosen["direct_http1"]
    result: dict[str, Any] = {"host": host, "paths": {}}
    for name, figures in chosen.items():
        entry = {**figures, "rps_of_each_round": [r["rps"] for r in runs[name]]}
        if name != "direct_http1":
            entry.update(compare(direct, figures))
        result["paths"][name] = entry
    return result


def churn(
    edge: Edge, plan: list[Change], phase_s: float, effect_timeout_s: float
) -> dict[str, Any]:
    hosts = list(edge.routes)[:BASE_HOSTS]
    latencies: list[float] = []
    by_kind: dict[str, list[float]] = {}
    apply_s: list[float] = []
    late = over_1s = done = 0
    error = None
    reloads_before = edge.manager.reload_count
    deadline = time.monotonic() + phase_s
    clients = ClientProcess(edge.port, edge.tls_port, hosts, CONNECTIONS // 2)
    with clients:
        for change in plan:
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            try:
                edge.change(change)
            except Exception as e:  # recorded in the result; the run goes on
                error = f"{change.kind} {change.domain}: {type(e).__name__}: {e}"
                break
            apply_s.append(time.perf_counter() - started)
            # Waited for to the end (not cut at 1 s): a change still pending would make the
            # next one (its undoing) look instant.
            if wait_effect(edge.port, EffectWatch(change), effect_timeout_s):
                took = time.perf_counter() - started
                latencies.append(took)
                by_kind.setdefault(change.kind, []).append(took)
                over_1s += took > 1.0
            else:
                late += 1
                over_1s += 1
            done += 1
        time.sleep(0.5)
    return {
        "changes_planned": len(plan),
        "changes_done": done,
        "stopped_by_phase_limit": done < len(plan) and error is None,
        "error": error,
        "reloads": edge.manager.reload_count - reloads_before,
        "change_latency": latency_summary(latencies),
        "change_latency_by_kind": {k: latency_summary(v) for k, v in by_kind.items()},
        "apply_call": latency_summary(apply_s),
        "not_effective_in_time": late,
        "over_1s": over_1s,
        "clients": merge_counts(clients.http, clients.https)
        if clients.http and clients.https
        else None,
        "clients_http": clients.http,
        "clients_https": clients.https,
    }


def parse_sizes(spec: str) -> list[tuple[int, int | None]]:
    """``10,10000,10000:100``: domains, and after a colon how many of them have HTTPS
    (none said: all)."""
    sizes: list[tuple[int, int | None]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        domains, _, https = part.partition(":")
        sizes.append((int(domains), int(https) if https else None))
    return sizes


def run_size(
    domains: int,
    https_hosts: int | None,
    top: Path,
    ports: list[int],
    extra: int,
    cert: tuple[Path, Path],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for mode, dynamic in (("default", None), ("dynamic_upstreams=False", False)):
        if results and "start_until_serving_s" not in results[0]:
            # The same config text but for the instances: it would not start either.
            first = results[0]
            results.append(
                {
                    "domains": domains,
                    "https_hostnames": first["https_hostnames"],
                    "mode": mode,
                    "dynamic_upstreams": False,
                    "skipped": "not run: the same config (but for the instances) did not start",
                }
            )
            break
        name = f"{domains}-{https_hosts or 'all'}-{'static' if dynamic is False else 'default'}"
        workdir = top / f"edge-{name}"
        workdir.mkdir()
        edge = Edge(workdir, domains, ports, cert, dynamic, https_hosts)
        result: dict[str, Any] = {
            "domains": domains,
            "https_hostnames": len(edge.https),
            "mode": mode,
            "dynamic_upstreams": edge.manager.dynamic,
        }
        results.append(result)
        try:
            try:
                result["start_until_serving_s"] = round(edge.start(), 3)
            except Exception:
                # What the config would need (the start's nginx -t has Berth's time limit).
                result["nginx_t_seconds_unlimited"] = edge.config_check_s(args.check_timeout_s)
                raise
            base = list(edge.routes)[:BASE_HOSTS]
            if dynamic is None:
                if args.load_s > 0:
                    print(f"-- load at {domains} domains", file=sys.stderr, flush=True)
                    host = list(edge.routes)[-1]  # a host matched one by one pays the most
                    result["load"] = measure_load(edge, host, args.load_s, args.rounds, workdir)
                print(f"-- instance churn at {domains} domains", file=sys.stderr, flush=True)
                result["instance_churn"] = churn(
                    edge,
                    instance_plan(args.instance_changes, base, extra),
                    args.phase_s,
                    args.effect_timeout_s,
                )
                print(f"-- domain churn at {domains} domains", file=sys.stderr, flush=True)
                result["domain_churn"] = churn(
                    edge,
                    domain_plan(args.domain_changes, ports),
                    args.phase_s,
                    args.effect_timeout_s,
                )
            else:
                print(f"-- reload churn at {domains} domains", file=sys.stderr, flush=True)
                result["instance_churn"] = churn(
                    edge,
                    instance_plan(args.instance_changes, base, extra),
                    args.phase_s,
                    args.effect_timeout_s,
                )
            pid = edge.manager.pid()
            result["rss_mib_after"] = group_rss_mib(pid) if pid else None
        except Exception as e:  # one run failing must not hide the others
            result["error"] = f"{type(e).__name__}: {e}"
            with contextlib.suppress(OSError):
                result["error_log_tail"] = edge.manager.paths.error_log.read_text()[-1500:]
        finally:
            edge.stop()
    return results


# -- the table (pure) -------------------------------------------------------------------------

LOAD_LABELS = {
    "direct_http1": "direct",
    "berth_http1": "berth http",
    "berth_https_http1": "berth https",
    "berth_https_http2": "berth https, batches",
    "berth_https_http1_batches": "berth https, batches",
}
TABLE_COLUMNS = (
    ("domains/https", 13),
    ("run", 34),
    ("rps", 8),
    ("x direct", 8),
    ("p50 ms", 7),
    ("p99 ms", 7),
    ("p50 +ms", 7),
    ("changes", 7),
    ("reloads", 7),
    (">1s", 4),
    ("requests", 8),
    ("failed", 6),
    ("resets", 6),
    ("closed", 6),
    ("conn closed", 11),
)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    blank = ["-"] * 8
    for r in results:
        domains = f"{r['domains']}/{r.get('https_hostnames', '-')}"
        for name, p in ((r.get("load") or {}).get("paths") or {}).items():
            rows.append(
                [
                    domains,
                    f"load {LOAD_LABELS.get(name, name)} {p.get('protocol') or '-'}",
                    _fmt(p.get("rps"), 0),
                    _fmt(p.get("rps_ratio"), 3),
                    _fmt(p.get("p50_ms"), 3),
                    _fmt(p.get("p99_ms"), 3),
                    _fmt(p.get("p50_added_ms"), 3),
                    *blank,
                ]
            )
        for key, label in (("instance_churn", "instances"), ("domain_churn", "domains")):
            c = r.get(key)
            if not c:
                continue
            lat, clients = c["change_latency"], c.get("clients") or {}
            failures = clients.get("failures") or {}
            rows.append(
                [
                    domains,
                    f"change {label}, {'dynamic' if r['dynamic_upstreams'] else 'reload'}",
                    "-",
                    "-",
                    _fmt(lat.get("p50_ms"), 1),
                    _fmt(lat.get("p99_ms"), 1),
                    "-",
                    _fmt(c["changes_done"]),
                    _fmt(c["reloads"]),
                    _fmt(c["over_1s"]),
                    _fmt(clients.get("requests")),
                    _fmt(clients.get("failed")),
                    _fmt(failures.get("reset")),
                    _fmt(failures.get("closed")),
                    _fmt(clients.get("closed_after_response")),
                ]
            )
        if r.get("error") or r.get("skipped"):
            what = "error (see the JSON)" if r.get("error") else "skipped"
            rows.append([domains, f"{r['mode']}: {what}", *(["-"] * 13)])
    return rows


def render_table(results: list[dict[str, Any]]) -> str:
    widths = [max(w, len(n)) for n, w in TABLE_COLUMNS]
    lines = ["  ".join(n.rjust(w) for (n, _), w in zip(TABLE_COLUMNS, widths, strict=True))]
    for row in table_rows(results):
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    def run(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError as e:
            return f"unavailable: {e}"
        text = (out.stdout + out.stderr).strip()
        return text.splitlines()[0] if text else ""

    return {
        "nginx": run([NGINX, "-v"]),
        "nginx-lua": run(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-http-lua"]),
        "h2load": run(["h2load", "--version"]),
        "openssl": ssl.OPENSSL_VERSION,
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
        "note": "2 cores shared with other work running at the same time (other helpers' "
        "tests and builds); client, proxy and backend share them too",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--domains",
        default="10,10000,10000:100",
        help="sizes: domains[:how many with HTTPS (default all)], comma-separated",
    )
    parser.add_argument("--check-timeout-s", type=float, default=300.0)
    parser.add_argument("--load-s", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--instance-changes", type=int, default=1000)
    parser.add_argument("--domain-changes", type=int, default=100)
    parser.add_argument("--backends", type=int, default=8)
    parser.add_argument("--phase-s", type=float, default=180.0, help="cap of one churn phase")
    parser.add_argument("--effect-timeout-s", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    try:
        sizes = parse_sizes(args.domains)
    except ValueError:
        parser.error("--domains: comma-separated counts")
    if (
        not sizes
        or min(d for d, _ in sizes) < BASE_HOSTS
        or args.backends < 2
        or args.rounds < 1
        or min(args.instance_changes, args.domain_changes) < 0
    ):
        parser.error(f"bad sizes or counts (at least {BASE_HOSTS} domains, 2 backends)")
    if args.load_s > 0 and shutil.which("h2load") is None:
        parser.error("h2load is not installed: bash scripts/ensure-edge-candidates.sh")

    # A signal ends the run through the finally blocks: every process and the temp dir go.
    def interrupted(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    started = time.time()
    load_before = os.getloadavg()
    top = Path(tempfile.mkdtemp(prefix="berth-edge-https-"))
    top.chmod(0o755)  # nginx's workers (nobody) reach their temp dirs below it
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
        cert = wildcard_certificate(top / "cert")
        for domains, https_hosts in sizes:
            results.extend(run_size(domains, https_hosts, top, ports, extra, cert, args))
    finally:
        if backends is not None:
            backends.stop()
        shutil.rmtree(top, ignore_errors=True)
    report = {
        "machine": {**machine(), "loadavg_at_start": load_before},
        "versions": versions(),
        "settings": {
            "domains": sizes,
            "connections": CONNECTIONS,
            "load_seconds": args.load_s,
            "rounds": args.rounds,
            "instance_changes": args.instance_changes,
            "domain_changes": args.domain_changes,
            "backends": args.backends,
            "phase_limit_seconds": args.phase_s,
            "effect_timeout_seconds": args.effect_timeout_s,
            "https_redirect": False,
            "change_probe": "a fresh plain-HTTP connection per probe, Host of the change",
            "churn_clients": f"{CONNECTIONS // 2} plain HTTP/1.1 + {CONNECTIONS // 2} HTTPS "
            "HTTP/1.1, keep-alive, a random pause of up to 10 ms between requests",
        },
        "wall_seconds": round(time.time() - started, 1),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render_table(results))
    for r in results:
        for key in ("instance_churn", "domain_churn"):
            if (r.get(key) or {}).get("error"):
                print(f"{r['mode']} @{r['domains']} {key}: {r[key]['error']}")
        if r.get("error"):
            print(f"{r['mode']} @{r['domains']}: {r['error']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
