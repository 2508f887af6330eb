"""Benchmark: Berth's ingress (one nginx) at 10,000 domains.

5,000 apps, 2 hostnames each, 2 to 6 upstreams each on 10.x node addresses (nothing listens
there: the bench measures config handling, not proxying). Measures, against the real nginx on a
loopback port of its own:

- render time and config size of ``render_nginx_conf``;
- ``nginx -t`` time of that config;
- start, and reload until the new generation answers (``NginxManager.wait_for_generation``);
- memory of the nginx workers after the reload (RSS and PSS from /proc);
- one route changed (one upstream removed: the "lost node" case): render, check, install and
  reload through ``NginxManager.apply`` until the new generation answers.

Baseline in the same run: a hand-written minimal nginx.conf with the same server names and
upstreams, nothing else (the cost floor of nginx itself), checked, started and reloaded the
same way. nginx is stopped at the end, also on failure. Prints a table and writes
bench/results/ingress_scale.json.

    python bench/ingress_scale.py [--apps 5000] [--repeat 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from berth.proxy.model import ProxyConfig, Route, Upstream  # noqa: E402
from berth.proxy.nginx import GENERATION_PATH, NginxManager  # noqa: E402
from berth.proxy.render import _cached_route_view, render_nginx_conf  # noqa: E402

NGINX = "/usr/sbin/nginx"
RESULTS = Path(__file__).resolve().parent / "results" / "ingress_scale.json"


def routes_for(apps: int) -> tuple[Route, ...]:
    """``apps`` serving apps, two hostnames each, 2-6 upstreams on 10.x addresses."""
    routes = []
    for i in range(apps):
        upstreams = tuple(
            Upstream(f"10.{(i + k) % 8}.{(i // 256) % 256}.{(i + 7 * k) % 254 + 1}", 20000 + i + k)
            for k in range(2 + i % 5)
        )
        routes.append(
            Route(
                # Like the store's ids (secrets.token_hex(8)), but the same in every run.
                app_id=hashlib.sha256(f"app-{i}".encode()).hexdigest()[:16],
                app_name=f"app-{i}",
                tenant_id=f"t{i % 700}",
                hostnames=(f"app-{i}.tenant-{i % 700}.example.test", f"www.shop-{i}.example.org"),
                upstreams=upstreams,
                state="serving",
            )
        )
    return tuple(routes)


def lose_one_upstream(routes: tuple[Route, ...], index: int) -> tuple[Route, ...]:
    """The "lost node" case: one instance of one app is gone."""
    changed = replace(routes[index], upstreams=routes[index].upstreams[1:])
    return (*routes[:index], changed, *routes[index + 1 :])


def baseline_conf(manager: NginxManager, routes: tuple[Route, ...], generation: int) -> str:
    """The floor: the same server names and upstreams, with only what nginx needs to load
    them (hash sizes) and to answer the generation probe."""
    paths = manager.paths
    names = sum(len(r.hostnames) for r in routes)
    user = f"user {paths.worker_user} {paths.worker_group};\n" if paths.worker_user else ""
    lines = [
        f"{user}worker_processes auto;\npid {paths.pid_file};\nlock_file {paths.lock_file};\n"
        f"error_log {paths.error_log} warn;\nevents {{}}\nhttp {{\n"
        f"access_log off;\nclient_body_temp_path {paths.temp_dir}/client_body;\n"
        f"proxy_temp_path {paths.temp_dir}/proxy;\n"
        f"fastcgi_temp_path {paths.temp_dir}/fastcgi;\nuwsgi_temp_path {paths.temp_dir}/uwsgi;\n"
        f"scgi_temp_path {paths.temp_dir}/scgi;\n"
        f"server_names_hash_bucket_size 512;\nserver_names_hash_max_size {max(1024, 4 * names)};\n"
        f"server {{ listen {manager.listen_host}:{manager.listen_port} default_server; "
        f'location = {GENERATION_PATH} {{ return 200 "{generation}"; }} }}\n'
    ]
    for r in routes:
        servers = "".join(f"server {u.host}:{u.port};" for u in r.upstreams)
        lines.append(f"upstream u{r.app_id} {{{servers}}}\n")
        lines.append(
            f"server {{ listen {manager.listen_host}:{manager.listen_port}; "
            f"server_name {' '.join(r.hostnames)}; "
            f"location / {{ proxy_pass http://u{r.app_id}; }} }}\n"
        )
    lines.append("}\n")
    return "".join(lines)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def nginx_test(manager: NginxManager, conf: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [NGINX, "-t", "-q", "-c", str(conf), "-p", f"{manager.conf_dir}/"],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"nginx -t failed: {result.stderr.strip()}")
    return elapsed


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children if _cmdline(int(pid)).startswith("nginx: worker")]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def memory_kib(pid: int) -> dict[str, int]:
    """RSS and PSS (shared pages split among the processes sharing them) in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return {"rss_kib": fields["Rss"], "pss_kib": fields["Pss"]}


def settled_workers(manager: NginxManager, expected: int, timeout: float = 30.0) -> list[int]:
    """Worker pids once the old generation's workers have exited after a reload."""
    master = manager.pid()
    assert master is not None
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in worker_pids(master) if "shutting down" not in _cmdline(p)]
        if len(worker_pids(master)) == expected or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def workers_memory(manager: NginxManager, expected: int) -> dict[str, Any]:
    master = manager.pid()
    assert master is not None
    workers = [memory_kib(p) for p in settled_workers(manager, expected)]
    return {
        "workers": len(workers),
        "worker_rss_kib": [w["rss_kib"] for w in workers],
        "worker_pss_kib": [w["pss_kib"] for w in workers],
        "master": memory_kib(master),
    }


def live_after(manager: NginxManager, generation: int, action: Callable[[], object]) -> float:
    """Seconds from the start of ``action`` until nginx answers ``generation``."""
    started = time.perf_counter()
    action()
    if not manager.wait_for_generation(generation, timeout=60):
        raise SystemExit(f"generation {generation} never went live")
    return time.perf_counter() - started


def median(samples: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(samples), "samples": [round(s, 4) for s in samples]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def bench_berth(work: Path, routes: tuple[Route, ...], repeat: int) -> dict[str, Any]:
    manager = NginxManager(
        work / "berth", nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=free_port()
    )
    try:
        manager.conf_dir.mkdir(parents=True)
        manager.paths.temp_dir.mkdir()
        cfg = manager.config(routes, 1)
        renders = []
        for _ in range(repeat):
            _cached_route_view.cache_clear()  # a cold render: every route validated
            renders.append(timed(lambda: render_nginx_conf(cfg, manager.paths)))
        text = render_nginx_conf(cfg, manager.paths)
        probe = manager.conf_dir / "check.conf"
        probe.write_text(text)
        checks = [nginx_test(manager, probe) for _ in range(repeat)]
        probe.unlink()
        start = live_after(manager, 1, lambda: manager.apply(cfg))
        workers = _nginx_workers()
        # A reload that changes only the generation: nginx's own reload cost.
        generation = 1
        reloads = []
        for _ in range(repeat):
            generation += 1
            cfg_next = manager.config(routes, generation)
            reloads.append(live_after(manager, generation, _applier(manager, cfg_next)))
        memory = workers_memory(manager, workers)
        # One upstream of one app lost, a different app each time; the whole path: render,
        # nginx -t, install, reload, new generation answering.
        changes = []
        phases: dict[str, list[float]] = {"render": [], "nginx_t": [], "signal_to_live": []}
        stamps = instrument(manager)
        current = routes
        for k in range(repeat):
            generation += 1
            current = lose_one_upstream(current, len(routes) - 1 - k)
            cfg_next = manager.config(current, generation)
            changes.append(live_after(manager, generation, _applier(manager, cfg_next)))
            phases["render"].append(stamps["render"])
            phases["nginx_t"].append(stamps["nginx_t"])
            phases["signal_to_live"].append(time.perf_counter() - stamps["signalled"])
        return {
            "render_seconds": median(renders),
            "config_bytes": len(text.encode()),
            "nginx_t_seconds": median(checks),
            "start_until_live_seconds": round(start, 4),
            "reload_until_live_seconds": median(reloads),
            "route_change_until_live_seconds": median(changes),
            "route_change_phases_seconds": {k: median(v) for k, v in phases.items()},
            "memory_after_reload": memory,
        }
    finally:
        manager.stop()


def instrument(manager: NginxManager) -> dict[str, float]:
    """Time the phases of ``manager.apply``: render, ``nginx -t``, and when the master was
    signalled (the caller measures from there until the generation answers)."""
    stamps: dict[str, float] = {}
    render, check, reload = manager._render, manager._test_config, manager.reload

    def timed_render(cfg: ProxyConfig) -> str:
        started = time.perf_counter()
        text = render(cfg)
        stamps["render"] = time.perf_counter() - started
        return text

    def timed_check(conf: Path) -> None:
        started = time.perf_counter()
        check(conf)
        stamps["nginx_t"] = time.perf_counter() - started

    def timed_reload() -> None:
        reload()
        stamps["signalled"] = time.perf_counter()

    manager._render = timed_render  # type: ignore[method-assign]
    manager._test_config = timed_check  # type: ignore[method-assign]
    manager.reload = timed_reload  # type: ignore[method-assign]
    return stamps


def bench_baseline(work: Path, routes: tuple[Route, ...], repeat: int) -> dict[str, Any]:
    manager = NginxManager(
        work / "baseline", nginx_binary=NGINX, listen_host="127.0.0.1", listen_port=free_port()
    )
    try:
        manager.conf_dir.mkdir(parents=True)
        manager.paths.temp_dir.mkdir()
        text = baseline_conf(manager, routes, 1)
        renders = [timed(lambda: baseline_conf(manager, routes, 1)) for _ in range(repeat)]
        manager.conf_path.write_text(text)
        checks = [nginx_test(manager, manager.conf_path) for _ in range(repeat)]
        start = live_after(manager, 1, manager.ensure_running)
        workers = _nginx_workers()
        generation = 1
        reloads = []
        for _ in range(repeat):
            generation += 1
            manager.conf_path.write_text(baseline_conf(manager, routes, generation))
            reloads.append(live_after(manager, generation, manager.reload))
        memory = workers_memory(manager, workers)
        changes = []
        current = routes
        for k in range(repeat):
            generation += 1
            current = lose_one_upstream(current, len(routes) - 1 - k)

            def change(c: tuple[Route, ...] = current, g: int = generation) -> None:
                manager.conf_path.write_text(baseline_conf(manager, c, g))
                manager.reload()

            changes.append(live_after(manager, generation, change))
        return {
            "render_seconds": median(renders),
            "config_bytes": len(text.encode()),
            "nginx_t_seconds": median(checks),
            "start_until_live_seconds": round(start, 4),
            "reload_until_live_seconds": median(reloads),
            "route_change_until_live_seconds": median(changes),
            "memory_after_reload": memory,
        }
    finally:
        manager.stop()


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def print_table(apps: int, berth: dict[str, Any], floor: dict[str, Any]) -> None:
    def seconds(key: str) -> Callable[[dict[str, Any]], str]:
        def show(r: dict[str, Any]) -> str:
            value = r[key]["median"] if isinstance(r[key], dict) else r[key]
            return f"{value:.3f} s"

        return show

    def phase(key: str) -> Callable[[dict[str, Any]], str]:
        def show(r: dict[str, Any]) -> str:
            phases = r.get("route_change_phases_seconds")
            return f"{phases[key]['median']:.3f} s" if phases else "-"

        return show

    def workers_rss(r: dict[str, Any]) -> str:
        return " + ".join(_mib(v) for v in r["memory_after_reload"]["worker_rss_kib"])

    def workers_pss(r: dict[str, Any]) -> str:
        return " + ".join(_mib(v) for v in r["memory_after_reload"]["worker_pss_kib"])

    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("render, cold (Python)", seconds("render_seconds")),
        ("config size", lambda r: f"{r['config_bytes'] / 1e6:.2f} MB"),
        ("nginx -t", seconds("nginx_t_seconds")),
        ("start until live", seconds("start_until_live_seconds")),
        ("reload until live", seconds("reload_until_live_seconds")),
        ("one upstream lost until live", seconds("route_change_until_live_seconds")),
        ("  of which render", phase("render")),
        ("  of which nginx -t", phase("nginx_t")),
        ("  of which reload signal to live", phase("signal_to_live")),
        ("worker RSS after reload", workers_rss),
        ("worker PSS after reload", workers_pss),
        ("master RSS", lambda r: _mib(r["memory_after_reload"]["master"]["rss_kib"])),
    ]
    print(f"Ingress at {apps:,} apps / {2 * apps:,} domains (medians)")
    print(f"{'':32} {'Berth':>24}  {'minimal nginx.conf':>24}")
    for label, show in rows:
        print(f"{label:32} {show(berth):>24}  {show(floor):>24}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    routes = routes_for(args.apps)
    with tempfile.TemporaryDirectory(prefix="berth-ingress-bench-") as tmp:
        work = Path(tmp)
        berth = bench_berth(work, routes, args.repeat)
        floor = bench_baseline(work, routes, args.repeat)
    print_table(args.apps, berth, floor)
    result = {
        "apps": args.apps,
        "domains": sum(len(r.hostnames) for r in routes),
        "upstream_servers": sum(len(r.upstreams) for r in routes),
        "machine": {"cpus": _cpus(), "python": platform.python_version(), "nginx": _nginx()},
        "berth": berth,
        "minimal_nginx_conf": floor,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {args.out}")


def _applier(manager: NginxManager, cfg: ProxyConfig) -> Callable[[], object]:
    return lambda: manager.apply(cfg)


def _nginx_workers() -> int:
    # "worker_processes auto" starts one worker per online CPU.
    return os.cpu_count() or 1


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _nginx() -> str:
    result = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=False)
    return result.stderr.strip()


if __name__ == "__main__":
    main()
