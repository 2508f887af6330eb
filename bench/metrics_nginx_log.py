"""Benchmark: what nginx's metrics log costs on the request path, and how it loses nothing.

Berth's own rendered nginx.conf (one app routed to a static backend nginx on loopback), run
under the same load (wrk, keep-alive) in four variants, side by side:
  (a) no access log at all;
  (b) Berth's access log only (as before metrics);
  (c) (b) + the metrics log to a file, buffered 64 KiB, flushed every second (what Berth does);
  (d) (b) + the metrics log to a unix datagram socket (``access_log syslog:server=unix:...``),
      read by a Python receiver, as the brief's alternative.
For (c) and (d) the lines that arrived are counted against the requests wrk made.
Prints a table and writes bench/results/metrics_nginx_log.json. Traffic: 127.0.0.1 only.
    python bench/metrics_nginx_log.py [--seconds 5] [--connections 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.load import run_load  # noqa: E402
from berth.proxy.model import NginxPaths, ProxyConfig, Route, Upstream  # noqa: E402
from berth.proxy.render import render_nginx_conf  # noqa: E402

NGINX = "/usr/sbin/nginx"
HOST = "app.metrics-bench.test"
console = Console(width=None if sys.stdout.isatty() else 110)
VARIANTS = ("no logs", "access log only", "+ metrics file (buffered)", "+ metrics unix socket")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_nginx(prefix: Path, conf: str) -> None:
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(conf)
    subprocess.run([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], check=True,
                   capture_output=True)  # fmt: skip


def stop_nginx(prefix: Path) -> None:
    pid_file = prefix / "nginx.pid"
    if not pid_file.exists():
        return
    subprocess.run([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-s", "quit"],
                   capture_output=True, check=False)  # fmt: skip
    deadline = time.monotonic() + 10
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def backend_conf(prefix: Path, port: int) -> str:
    return (
        f"worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
        "events { worker_connections 4096; }\nhttp {\n    access_log off;\n"
        "    keepalive_requests 100000000;\n"
        f"    client_body_temp_path {prefix}/tmp;\n    proxy_temp_path {prefix}/tmp;\n"
        f"    fastcgi_temp_path {prefix}/tmp;\n    uwsgi_temp_path {prefix}/tmp;\n"
        f"    scgi_temp_path {prefix}/tmp;\n"
        f'    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello\\n"; }} }}\n}}\n'
    )


def front_conf(prefix: Path, port: int, backend: int, variant: str, sock: Path) -> str:
    paths = NginxPaths.in_dir(prefix)
    route = Route("a1b2c3", "bench", "t1", (HOST,), (Upstream("127.0.0.1", backend),), "serving")
    conf = render_nginx_conf(ProxyConfig("127.0.0.1", port, (route,), 1), paths)
    metrics_line = f"    access_log {paths.metrics_log} berth_metrics buffer=64k flush=1s;\n"
    access_line = f"    access_log {paths.access_log} berth;\n"
    assert metrics_line in conf and access_line in conf
    if variant == "no logs":
        conf = conf.replace(metrics_line, "").replace(access_line, "    access_log off;\n")
    elif variant == "access log only":
        conf = conf.replace(metrics_line, "")
    elif variant == "+ metrics unix socket":
        conf = conf.replace(
            metrics_line, f"    access_log syslog:server=unix:{sock},nohostname berth_metrics;\n"
        )
    return conf


class Receiver:
    """Counts the datagrams nginx sends to a unix socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(str(path))
        path.chmod(0o666)  # nginx's workers (nobody, when started as root) send to it
        self.sock.settimeout(0.2)
        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.sock.recv(65536)
            except TimeoutError:
                continue
            self.count += 1

    def close(self) -> int:
        time.sleep(0.5)
        self.stop.set()
        self.thread.join()
        self.sock.close()
        return self.count


def one(base: Path, backend: int, variant: str, seconds: float, connections: int) -> dict[str, Any]:
    prefix = base / f"front-{VARIANTS.index(variant)}-{time.monotonic_ns()}"
    prefix.mkdir()
    prefix.chmod(0o755)
    sock = prefix / "metrics.sock"
    receiver = Receiver(sock) if variant == "+ metrics unix socket" else None
    port = free_port()
    start_nginx(prefix, front_conf(prefix, port, backend, variant, sock))
    try:
        figures = run_load(f"http://127.0.0.1:{port}/", HOST, seconds, connections)
    finally:
        stop_nginx(prefix)  # workers flush their buffers on the way out
    logged = None
    if receiver is not None:
        logged = receiver.close()
    elif variant == "+ metrics file (buffered)":
        logged = sum(1 for _ in (prefix / "metrics.log").open("rb"))
    shutil.rmtree(prefix, ignore_errors=True)
    return {"variant": variant, **figures.as_dict(), "logged": logged}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/metrics_nginx_log.json")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="berth-bench-nginx-log-"))
    base.chmod(0o755)
    backend_prefix = base / "backend"
    backend_prefix.mkdir()
    backend = free_port()
    runs: list[dict[str, Any]] = []
    try:
        start_nginx(backend_prefix, backend_conf(backend_prefix, backend))
        for _ in range(args.rounds):  # interleaved, so a noisy moment hits every variant
            for variant in VARIANTS:
                runs.append(one(base, backend, variant, args.seconds, args.connections))
    finally:
        stop_nginx(backend_prefix)
        shutil.rmtree(base, ignore_errors=True)
    table = Table(title=f"nginx with and without the metrics log (wrk, {args.connections} conn)")
    for col in ("variant", "req/s (median)", "vs access log only", "p50 ms", "p99 ms",
                "lines logged / requests"):  # fmt: skip
        table.add_column(col)
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {
            "rps": statistics.median(r["rps"] for r in mine),
            "p50_ms": statistics.median(r["p50_ms"] for r in mine),
            "p99_ms": statistics.median(r["p99_ms"] for r in mine),
            "logged": [r["logged"] for r in mine],
            "requests": [r["requests"] for r in mine],
        }
    reference = summary["access log only"]["rps"]
    for variant, s in summary.items():
        lines = ", ".join(
            f"{lg}/{rq}"
            for lg, rq in zip(s["logged"], s["requests"], strict=True)
            if lg is not None
        )
        table.add_row(variant, f"{s['rps']:.0f}", f"{s['rps'] / reference:.3f}x",
                      f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}", lines or "-")  # fmt: skip
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
