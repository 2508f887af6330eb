"""Benchmark: failures under load on Berth's Swarm backend, beside the same on plain Swarm.

A cluster of its own (tests/cluster/nodes.py: 1 drained manager and 7 workers, namespaced
engines on this machine), one app image (tests/cluster/berth_app.py: busybox httpd, ``/healthz``;
``MODE=broken`` answers 404 everywhere). Two clients GET the app through the ingress the whole
time; every request's outcome is counted (tests/cluster/traffic.py).

Operations, each on Berth (a real server at its default intervals, Swarm backend) and on plain
Swarm (a service created with docker-py with a healthcheck, ``update_config`` start-first with
``failure_action=rollback``, a fixed host-mode port with at most one task per node, behind a
static nginx whose upstreams are every worker's ``address:port``, with Berth's retries,
``proxy_next_upstream error timeout http_502 http_503 http_504``, but no cap on the tries, since
most workers run no task of the service):

- node loss: 2 replicas; the node of one is killed whole. Measured: until 2 replicas serve
  again (healthy and routed; on plain Swarm: running tasks on live nodes), until the lost
  node's upstream is gone from the ingress (never, on a static nginx), failed requests;
- rolling deploy of 6 replicas (a config change);
- a broken release (``MODE=broken``): until it is rolled back and only the old release runs.

Berth's deploy timeout is the test harness's 30 s (its default is 120 s): a release that runs
but never passes its check fails at that deadline. Prints a table and writes
bench/results/swarm_failures.json. Traffic goes only to loopback and to the cluster's nodes.

    python bench/swarm_failures.py [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

import docker.errors  # noqa: E402
import docker.types  # noqa: E402
from tests.cluster.berth_app import routed, short_of, web_image  # noqa: E402
from tests.cluster.berth_swarm import berth_on_swarm  # noqa: E402
from tests.cluster.nodes import Cluster, check_requirements, sweep_leftovers  # noqa: E402
from tests.cluster.traffic import Traffic, tally  # noqa: E402
from tests.harness import BerthServer, free_port, wait_until  # noqa: E402

NGINX = "/usr/sbin/nginx"
RESULTS = Path(__file__).resolve().parent / "results" / "swarm_failures.json"
WORKERS = 7  # a fixed host port and start-first need a free node: 6 replicas + 1
DEPLOY_TIMEOUT = 30.0
Result = dict[str, Any]


# ---------------------------------------------------------------- where the time goes


def _swarm_time(stamp: str) -> float:
    """Swarm's RFC 3339 time (nanoseconds, Z) as a unix time."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    whole = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC)
    return whole.timestamp() + float(f"0.{frac or 0}")


def swarm_timeline(cluster: Cluster, node_name: str, app: str, killed: float) -> Result:
    """After a node loss, from Swarm's own records (the manager's clock is this machine's):
    when the manager marked the node down, and when the first replacement task was created
    and reached running. Read after the fact, so the measurement adds no load."""
    manager = cluster.client(cluster.manager)
    out: Result = {"swarm_marked_down_s": None, "replacement_created_s": None,
                   "replacement_running_s": None}  # fmt: skip
    for node in manager.api.nodes():
        if node["Description"]["Hostname"] == node_name and node["Status"]["State"] == "down":
            out["swarm_marked_down_s"] = round(_swarm_time(node["UpdatedAt"]) - killed, 2)
    replacements = []
    for service in manager.api.services(filters={"label": f"berth.app-name={app}"}):
        for task in manager.api.tasks(filters={"service": service["ID"]}):
            created = _swarm_time(task["CreatedAt"])
            if created > killed:
                replacements.append((created, task))
    if replacements:
        created, task = min(replacements, key=lambda pair: pair[0])
        out["replacement_created_s"] = round(created - killed, 2)
        if task["Status"]["State"] == "running":
            out["replacement_running_s"] = round(
                _swarm_time(task["Status"]["Timestamp"]) - killed, 2
            )
    return out


# ---------------------------------------------------------------- Berth


class BerthSide:
    def __init__(self, cluster: Cluster, server: BerthServer, image: str) -> None:
        self.cluster, self.server, self.image = cluster, server, image

    def app(self, prefix: str, scale: int) -> str:
        s, name = self.server, f"{prefix}-{uuid.uuid4().hex[:6]}"
        s.create_app(name, "--memory", "32M", "--cpus", "0.25", "--health-path", "/healthz")
        s.cli_ok("scale", name, str(scale))
        out = s.cli_json("deploy", name, "--image", self.image, timeout=180)
        assert out["deployment"]["status"] == "succeeded", out
        s.wait_converged(name, scale, timeout=120)
        return name

    def healthy(self, app: str) -> list[dict[str, Any]]:
        return [r for r in self.server.ps(app) if r["state"] == "running" and r["healthy"]]

    def traffic(self, app: str) -> Traffic:
        return Traffic(self.server.ingress_port, self.server.host_of(app), clients=2)

    def delete(self, app: str) -> None:
        self.server.cli("apps", "delete", app, "--yes", "--wait", timeout=120)

    def node_loss(self) -> Result:
        s, app = self.server, self.app("lost", 2)
        victim = s.ps(app)[0]
        short = short_of(self.cluster, victim["node"])
        address = self.cluster.node(short).address + ":"
        lost = {u for u in routed(s, app) if u.startswith(address)}
        with self.traffic(app) as load:
            load.wait_for(40)
            killed = time.monotonic()
            killed_wall = time.time()
            self.cluster.kill_node(short)
            wait_until(lambda: not (routed(s, app) & lost), 60, "the lost upstream is gone")
            unrouted = time.monotonic() - killed
            wait_until(
                lambda: (
                    len(rows := self.healthy(app)) == 2
                    and victim["node"] not in {r["node"] for r in rows}
                    and len(routed(s, app)) == 2
                ),
                120,
                "2 healthy routed replicas on the other nodes",
            )
            serving = time.monotonic() - killed
            load.wait_for(40)
        timeline = swarm_timeline(self.cluster, victim["node"], app, killed_wall)
        self.cluster.make_whole()
        self.delete(app)
        return {
            "serving_again_s": round(serving, 2),
            "lost_upstreams_gone_s": round(unrouted, 2),
            **timeline,
            **tally(load.outcomes, cuts=[killed]).as_dict(),
        }

    def rolling_deploy(self, replicas: int = 6) -> Result:
        s, app = self.server, self.app("roll", replicas)
        with self.traffic(app) as load:
            load.wait_for(40)
            started = time.monotonic()
            out = s.cli_json("config", "set", app, "GREETING=v2", timeout=300)
            assert out["deployment"]["status"] == "succeeded", out
            s.wait_converged(app, replicas, timeout=120)
            took = time.monotonic() - started
            load.wait_for(40)
        self.delete(app)
        return {"replicas": replicas, "rolled_s": round(took, 2), **tally(load.outcomes).as_dict()}

    def drain(self, replicas: int = 6) -> Result:
        """A node holding all 6 instances of an app (the others cordoned while it deploys),
        drained under load with `berth nodes drain` (start-first)."""
        s = self.server
        workers = [n for n in self.cluster.nodes if n not in self.cluster.managers]
        target, others = workers[0], workers[1:]
        names = [self.cluster.node(n).name for n in others]
        for name in names:
            s.cli_ok("nodes", "cordon", name)
        try:
            app = self.app("drain", replicas)
        finally:
            for name in names:
                s.cli_ok("nodes", "uncordon", name)
        node = self.cluster.node(target).name
        on_node = sum(1 for r in s.ps(app) if r["node"] == node)
        with self.traffic(app) as load:
            load.wait_for(40)
            started = time.monotonic()
            out = s.cli_json("nodes", "drain", node, "--timeout", "300", timeout=360)
            took = time.monotonic() - started
            load.wait_for(40)
        s.cli_ok("nodes", "uncordon", node)
        self.delete(app)
        return {
            "instances_on_node": on_node,
            "status": out.get("status"),
            "drained_s": round(took, 2),
            **tally(load.outcomes).as_dict(),
        }

    def broken_release(self) -> Result:
        s, app = self.server, self.app("broken", 2)
        with self.traffic(app) as load:
            load.wait_for(40)
            started = time.monotonic()
            change = s.api_json("PATCH", f"/apps/{app}/config", json={"set": {"MODE": "broken"}})
            dep_id = change["deployment"]["id"]
            dep = wait_until(
                lambda: (
                    (d := s.api_json("GET", f"/apps/{app}/deployments/{dep_id}"))["status"]
                    != "in_progress"
                    and d
                ),
                DEPLOY_TIMEOUT + 60,
                "the broken deployment ends",
            )
            s.wait_converged(app, 2, timeout=120)
            took = time.monotonic() - started
            load.wait_for(40)
        self.delete(app)
        return {
            "rolled_back_s": round(took, 2),
            "outcome": f"{dep['status']}: {dep['message']}",
            **tally(load.outcomes).as_dict(),
        }


# ---------------------------------------------------------------- plain Swarm

NGINX_CONF = """daemon on;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp; uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_connect_timeout 2s;
    proxy_read_timeout 60s;
    proxy_next_upstream error timeout http_502 http_503 http_504;
    # Every upstream may be tried (Berth's tries 3): most workers run no task of the service,
    # and the baseline must not lose a request to that.
    proxy_next_upstream_tries 0;
    proxy_next_upstream_timeout 10s;
    upstream app {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://app; }}
    }}
}}
"""


@contextlib.contextmanager
def static_nginx(upstreams: list[str]) -> Iterator[int]:
    """nginx on a loopback port of its own, upstreams written once; stopped at the end."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="berth-bench-nginx-") as tmp:
        os.chmod(tmp, 0o755)
        (Path(tmp) / "tmp").mkdir()
        servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=2s;" for u in upstreams)
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=tmp, servers=servers, port=port))
        subprocess.run([NGINX, "-c", str(conf), "-p", tmp], check=True, capture_output=True)
        try:
            yield port
        finally:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((Path(tmp) / "nginx.pid").read_text()), signal.SIGQUIT)
            time.sleep(0.5)


class PlainSide:
    def __init__(self, cluster: Cluster, image: str) -> None:
        self.cluster, self.image = cluster, image
        self.workers = [s for s in cluster.nodes if s not in cluster.managers]

    def service(self, replicas: int, port: int) -> Any:
        return self.cluster.manager_client().services.create(
            self.image,
            name=f"plain-{uuid.uuid4().hex[:6]}",
            env=["GREETING=hello"],
            mode=docker.types.ServiceMode("replicated", replicas=replicas),
            maxreplicas=1,
            endpoint_spec=docker.types.EndpointSpec(
                mode="dnsrr",
                ports=[
                    {
                        "Protocol": "tcp",
                        "TargetPort": 8080,
                        "PublishedPort": port,
                        "PublishMode": "host",
                    }
                ],
            ),
            healthcheck=docker.types.Healthcheck(
                test=["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/healthz"],
                interval=1_000_000_000,
                timeout=1_000_000_000,
                retries=2,
            ),
            update_config=docker.types.UpdateConfig(
                parallelism=1,
                delay=0,
                order="start-first",
                failure_action="rollback",
                monitor=5_000_000_000,
            ),
            rollback_config=docker.types.RollbackConfig(
                parallelism=1, delay=0, order="start-first", monitor=5_000_000_000
            ),
        )

    def running(self, service: Any, spec_env: str | None = None) -> list[dict[str, Any]]:
        """Tasks running on a live node (optionally of the spec with this env entry)."""
        service.reload()
        shorts = self.cluster.short_of_node_id()
        out = []
        for task in service.tasks(filters={"desired-state": "running"}):
            short = shorts.get(task.get("NodeID", ""))
            if task["Status"]["State"] != "running" or short is None:
                continue
            if not self.cluster.node(short).engine_alive():
                continue
            env = task["Spec"]["ContainerSpec"].get("Env") or []
            if spec_env is None or spec_env in env:
                out.append({**task, "short": short})
        return out

    @contextlib.contextmanager
    def deployed(self, replicas: int) -> Iterator[tuple[Any, Traffic, int]]:
        port = free_port()
        service = self.service(replicas, port)
        try:
            wait_until(lambda: len(self.running(service)) == replicas, 120, "the tasks run")
            upstreams = [f"{self.cluster.node(s).address}:{port}" for s in self.workers]
            with (
                static_nginx(upstreams) as ingress,
                Traffic(ingress, "plain.test", clients=2) as load,
            ):
                load.wait_for(40)
                yield service, load, port
        finally:
            self.cluster.make_whole()
            with contextlib.suppress(docker.errors.APIError):
                service.remove()

    def node_loss(self) -> Result:
        with self.deployed(2) as (service, load, _):
            victim = self.running(service)[0]["short"]
            killed = time.monotonic()
            self.cluster.kill_node(victim)
            wait_until(
                lambda: (
                    len(tasks := self.running(service)) == 2
                    and victim not in {t["short"] for t in tasks}
                ),
                120,
                "2 tasks running on the other nodes",
            )
            serving = time.monotonic() - killed
            load.wait_for(40)
        return {
            "serving_again_s": round(serving, 2),
            "lost_upstreams_gone_s": None,  # a static nginx keeps them
            **tally(load.outcomes, cuts=[killed]).as_dict(),
        }

    def rolling_deploy(self, replicas: int = 6) -> Result:
        with self.deployed(replicas) as (service, load, _):
            started = time.monotonic()
            service.update(env=["GREETING=v2"])
            wait_until(lambda: _update_state(service) == "completed", 300, "the update completes")
            wait_until(
                lambda: len(self.running(service, "GREETING=v2")) == replicas,
                60,
                "every task runs the new spec",
            )
            took = time.monotonic() - started
            load.wait_for(40)
        return {"replicas": replicas, "rolled_s": round(took, 2), **tally(load.outcomes).as_dict()}

    def drain(self, replicas: int = 6) -> Result:
        """Swarm's own drain (stop first) of a node running one of the service's tasks (a
        fixed host port allows one per node: the 7th worker is free for it)."""
        with self.deployed(replicas) as (service, load, _):
            victim = self.running(service)[0]["short"]
            started = time.monotonic()
            self.cluster.set_availability(victim, "drain")
            wait_until(
                lambda: (
                    len(tasks := self.running(service)) == replicas
                    and victim not in {t["short"] for t in tasks}
                ),
                120,
                "the task runs on another node",
            )
            took = time.monotonic() - started
            load.wait_for(40)
            self.cluster.set_availability(victim, "active")
        return {
            "instances_on_node": 1,
            "drained_s": round(took, 2),
            **tally(load.outcomes).as_dict(),
        }

    def broken_release(self) -> Result:
        with self.deployed(2) as (service, load, _):
            started = time.monotonic()
            service.update(env=["GREETING=hello", "MODE=broken"])
            state = wait_until(
                lambda: (st := _update_state(service)) in ("rollback_completed", "paused") and st,
                300,
                "the update is rolled back",
            )
            wait_until(
                lambda: (
                    len(self.running(service, "GREETING=hello")) == 2
                    and not self.running(service, "MODE=broken")
                ),
                60,
                "only the old spec runs",
            )
            took = time.monotonic() - started
            load.wait_for(40)
        return {
            "rolled_back_s": round(took, 2),
            "outcome": str(state),
            **tally(load.outcomes).as_dict(),
        }


def _update_state(service: Any) -> str:
    service.reload()
    return str((service.attrs.get("UpdateStatus") or {}).get("State") or "")


# ---------------------------------------------------------------- run


def _measure(name: str, step: Callable[[], Result]) -> Result:
    print(f"  {name} ...", flush=True)
    try:
        return step()
    except Exception as exc:  # one failed operation must not hide the others' figures
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


OPERATIONS = ("node_loss", "drain", "rolling_deploy", "broken_release")


def run(only: tuple[str, ...] = OPERATIONS) -> dict[str, Any]:
    problems = check_requirements()
    if problems:
        raise SystemExit("the benchmark needs:\n  " + "\n  ".join(problems))
    sweep_leftovers()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "workers": WORKERS,
        "berth_deploy_timeout_s": DEPLOY_TIMEOUT,
    }
    cluster = Cluster()
    try:
        with web_image("bench-web") as image:
            started = time.monotonic()
            cluster.form(workers=WORKERS, images=("berth/busybox:latest", image))
            results["cluster_formed_s"] = round(time.monotonic() - started, 2)
            plain = PlainSide(cluster, image)
            with berth_on_swarm(
                cluster, deploy_timeout=DEPLOY_TIMEOUT, default_intervals=True
            ) as server:
                berth = BerthSide(cluster, server, image)
                for op in only:
                    print(f"{op}:", flush=True)
                    results[op] = {
                        "berth": _measure("berth", getattr(berth, op)),
                        "plain_swarm": _measure("plain swarm", getattr(plain, op)),
                    }
    finally:
        cluster.cleanup()
    return results


def table(results: dict[str, Any]) -> str:
    rows = [("operation", "side", "time (s)", "upstreams gone (s)", "failed", "in flight", "of")]
    for op, key in (
        ("node_loss", "serving_again_s"),
        ("drain", "drained_s"),
        ("rolling_deploy", "rolled_s"),
        ("broken_release", "rolled_back_s"),
    ):
        if op not in results:
            continue  # not asked for (--only)
        for side in ("berth", "plain_swarm"):
            r = results.get(op, {}).get(side, {})
            if "error" in r:
                rows.append((op, side, "error", "", "", "", r["error"][:60]))
                continue
            gone = r.get("lost_upstreams_gone_s", "")
            rows.append(
                (
                    op,
                    side,
                    str(r.get(key, "")),
                    "never (static)" if op == "node_loss" and gone is None else str(gone or ""),
                    str(r.get("failed", "")),
                    str(r.get("in_flight_on_cut_link", "")),
                    str(r.get("requests", "")),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    text = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )
    lost = results.get("node_loss", {}).get("berth", {})
    if "swarm_marked_down_s" in lost:
        text += (
            "\nnode loss on Berth, seconds after the kill: Swarm marked the node down "
            f"{lost['swarm_marked_down_s']}, "
            f"created a replacement {lost['replacement_created_s']}, "
            f"which ran at {lost['replacement_running_s']}; Berth served it (healthy, routed) "
            f"at {lost['serving_again_s']}"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", nargs="+", choices=OPERATIONS, default=list(OPERATIONS))
    args = parser.parse_args(argv)
    results = run(tuple(args.only))
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
