"""Berth benchmarks against a real server (Docker Engine + nginx), each side by side with plain
Docker, in one run:

(a) deploy latency: examples/python-app, image already built, one instance as the issue measured
    it (``--replicas``; again at ``--compare-replicas``, 2 by default, 0 skips it), from the API
    call to the first 200 through nginx and to the deployment's ``succeeded``; beside it,
    ``docker run`` of the same image until its first 200 (and, for reference, ``docker run
    --network`` on a user-defined bridge like a tenant's network). Each deploy is of a new app,
    created (and its host routed to its "no healthy instances" page) before the deploy is
    timed, of a tenant whose network already exists (as ``docker run`` uses an existing
    bridge): a tenant's very first app also makes and filters its network, ~0.1 s more;
(b) crash recovery: kill -9 of an instance's process until it is serving again (on its port and
    healthy in ``ps``); beside it, Docker's own ``--restart on-failure``;
(c) throughput: requests/s and p50/p99 latency through Berth's nginx vs straight to the same
    container's published port, for examples/python-app and examples/busybox-app.

The server runs at the default settings (reconcile and health intervals included): what users
get, not the tests' faster pace. Prints a table and writes bench/results/latest.json. All traffic
stays on 127.0.0.1.
Usage: python bench/run.py [--repeat 5] [--replicas 1] [--compare-replicas 2] [--seconds 10]
       [--connections 4] [--no-wrk] [--out PATH]
(``wrk`` is used for the load when installed: ``apt-get install wrk``; else Python clients.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness import (  # noqa: E402
    BUSYBOX_APP,
    PYTHON_APP,
    BerthServer,
    check_requirements,
    cleanup_on_sigterm,
    docker_client,
    running_server,
    wait_until,
)

from bench.load import run_load  # noqa: E402
from berth.settings import Settings  # noqa: E402

APP_PORT = 8080
POLL = 0.01
SETTLE = 0.3  # seconds after an app's creation before its deploy is timed
console = Console(width=None if sys.stdout.isatty() else 110)


@dataclass(frozen=True)
class Summary:
    samples: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": len(self.samples),
            "median": statistics.median(self.samples),
            "min": min(self.samples),
            "max": max(self.samples),
            "samples": [round(s, 4) for s in self.samples],
        }


def _first_ok(url: str, headers: dict[str, str] | None = None, timeout: float = 60.0) -> float:
    """Poll ``url`` until it answers 200; returns when (perf_counter)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if http.get(url, headers=headers or {}).status_code == 200:
                    return time.perf_counter()
            time.sleep(POLL)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def _published_port(container: Any) -> int | None:
    container.reload()
    for binding in (container.attrs["NetworkSettings"]["Ports"] or {}).get(f"{APP_PORT}/tcp") or []:
        if binding.get("HostIp") == "127.0.0.1" and binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


class RawDocker:
    """Plain ``docker run`` of an image, published on loopback, labelled for cleanup."""

    def __init__(self) -> None:
        self.client = docker_client()
        self.label = f"berth-bench-{uuid.uuid4().hex[:10]}"

    def run(self, image: str, restart: str = "no", network: str | None = None) -> Any:
        return self.client.containers.run(
            image,
            detach=True,
            ports={f"{APP_PORT}/tcp": ("127.0.0.1", None)},
            environment={"PORT": str(APP_PORT)},
            labels={"berth.bench": self.label},
            restart_policy={"Name": restart},
            mem_limit="128m",
            network=network,
        )

    def network(self) -> str:
        """A user-defined bridge network, as each Berth tenant has (removed in cleanup)."""
        name = f"{self.label}-net"
        self.client.networks.create(name, driver="bridge", labels={"berth.bench": self.label})
        return name

    def cleanup(self) -> None:
        for c in self.client.containers.list(
            all=True, filters={"label": f"berth.bench={self.label}"}
        ):
            with contextlib.suppress(Exception):
                c.remove(force=True)
        for n in self.client.networks.list(filters={"label": f"berth.bench={self.label}"}):
            with contextlib.suppress(Exception):
                n.remove()
        self.client.close()


# -- setup ----------------------------------------------------------------------------------


def built_image(berth: BerthServer, directory: Path, health_path: str) -> str:
    """Build an example app once (through Berth, layer cache on) and return its tag."""
    berth.create_app("seed", "--health-path", health_path)
    berth.deploy_dir("seed", directory)
    image: str = berth.api_json("GET", "/apps/seed/releases")[0]["image"]
    delete_app(berth, "seed")
    return image


def new_app(berth: BerthServer, name: str, scale: int, health_path: str = "/healthz") -> None:
    """Create an app and wait until nginx routes its host (its "no healthy instances" page):
    the work of creating it (a reload) is done before a deploy is timed, as when a user
    creates an app and deploys to it later."""
    berth.api_json(
        "POST", "/apps", json={"name": name, "memory": "128M", "health_path": health_path}
    )
    berth.api_json("POST", f"/apps/{name}/scale", json={"replicas": scale})
    wait_until(partial(_routed_page, berth, name), 30, f"nginx routes {name}'s host")
    # nginx serves the page a moment before the pass that routed it has ended (it then waits
    # for the reload, records it and lists the instances again): let that pass end too.
    time.sleep(SETTLE)


def _routed_page(berth: BerthServer, name: str) -> bool:
    return berth.ingress_get(berth.host_of(name)).status_code == 503


def delete_app(berth: BerthServer, name: str) -> None:
    berth.api_json("DELETE", f"/apps/{name}")
    wait_until(lambda: not berth.containers(name), 60, f"{name}'s containers are gone")


# -- (a) deploy latency -------------------------------------------------------------------------


def _deployment_succeeded(berth: BerthServer, path: str) -> bool:
    return bool(berth.api_json("GET", path)["status"] == "succeeded")


def _docker_run_first_ok(raw: RawDocker, image: str, network: str | None = None) -> float:
    started = time.perf_counter()
    container = raw.run(image, network=network)
    port = wait_until(partial(_published_port, container), 30, "docker publishes the port")
    took = _first_ok(f"http://127.0.0.1:{port}/") - started
    container.remove(force=True)
    return took


def bench_deploy(
    berth: BerthServer,
    raw: RawDocker,
    image: str,
    repeat: int,
    replicas: int = 1,
    network: str | None = None,
) -> dict[str, Any]:
    """With ``network``, ``docker run`` is also timed on that user-defined bridge network:
    what Docker itself takes more to start a container on a network like a tenant's."""
    first_200, all_healthy, docker_run, on_network = [], [], [], []
    for i in range(repeat):
        name = f"deploy{replicas}x{i}"
        new_app(berth, name, replicas)
        url = f"http://127.0.0.1:{berth.ingress_port}/"
        started = time.perf_counter()
        result = berth.api_json("POST", f"/apps/{name}/releases", json={"image": image})
        first_200.append(_first_ok(url, {"Host": berth.host_of(name)}) - started)
        dep = f"/apps/{name}/deployments/{result['deployment']['id']}"
        wait_until(partial(_deployment_succeeded, berth, dep), 60, "the deployment succeeds")
        all_healthy.append(time.perf_counter() - started)
        delete_app(berth, name)

        docker_run.append(_docker_run_first_ok(raw, image))
        if network is not None:
            on_network.append(_docker_run_first_ok(raw, image, network))
    first = Summary(first_200).as_dict()
    baseline = Summary(docker_run).as_dict()
    result = {
        "replicas": replicas,
        "berth_first_200_through_nginx": first,
        "berth_deployment_succeeded": Summary(all_healthy).as_dict(),
        "docker_run_first_200": baseline,
        "first_200_vs_docker_run": round(first["median"] / baseline["median"], 2),
    }
    if on_network:
        result["docker_run_on_a_user_network_first_200"] = Summary(on_network).as_dict()
    return result


# -- (b) crash recovery -------------------------------------------------------------------------


def _kill_main_process(container_id: str) -> None:
    client = docker_client()
    pid = int(client.api.inspect_container(container_id)["State"]["Pid"])
    client.close()
    assert pid > 0, "the container is not running"
    os.kill(pid, signal.SIGKILL)


def _serving_on_its_port(container: Any) -> bool:
    port = _published_port(container)
    if port is None or container.attrs["State"]["Status"] != "running":
        return False
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0, trust_env=False)
    except httpx.HTTPError:
        return False
    return resp.status_code == 200


def _time_until(cond: Callable[[], bool], started: float, timeout: float = 60.0) -> float:
    wait_until(cond, timeout, "the instance recovers")
    return time.perf_counter() - started


def bench_crash(berth: BerthServer, raw: RawDocker, image: str, repeat: int) -> dict[str, Any]:
    """Kill each of ``repeat`` fresh instances once (so Berth's restart backoff is at its first
    step for every sample), and as many fresh ``--restart on-failure`` containers."""
    name = "crash"
    new_app(berth, name, repeat)
    berth.api_json("POST", f"/apps/{name}/releases", json={"image": image})
    rows = berth.wait_converged(name, repeat)
    serving, healthy, docker_restart = [], [], []
    client = docker_client()
    try:
        for row in rows:
            container = client.containers.get(row["container_id"])
            _kill_main_process(container.id)
            started = time.perf_counter()
            serving.append(_time_until(partial(_serving_on_its_port, container), started))

            def healthy_again(cid: str = row["container_id"]) -> bool:
                now = {
                    r["container_id"]: r for r in berth.api_json("GET", f"/apps/{name}/instances")
                }
                r = now.get(cid)
                return bool(r and r["restarts"] >= 1 and r["healthy"] and r["state"] == "running")

            healthy.append(_time_until(healthy_again, started))
        delete_app(berth, name)

        for _ in range(repeat):
            container = raw.run(image, restart="on-failure")
            wait_until(partial(_serving_on_its_port, container), 30, "the container serves")
            _kill_main_process(container.id)
            started = time.perf_counter()
            docker_restart.append(_time_until(partial(_serving_on_its_port, container), started))
            container.remove(force=True)
    finally:
        client.close()
    return {
        "berth_serving_on_its_port": Summary(serving).as_dict(),
        "berth_healthy_in_ps": Summary(healthy).as_dict(),
        "docker_restart_on_failure_serving": Summary(docker_restart).as_dict(),
    }


# -- (c) throughput -------------------------------------------------------------------------------


def bench_throughput(
    berth: BerthServer,
    images: dict[str, str],
    seconds: float,
    connections: int,
    no_wrk: bool = False,
) -> dict[str, Any]:
    """For each app image: one instance, loaded through nginx, then straight on its port."""
    results: dict[str, Any] = {}
    for label, image in images.items():
        name = f"tput-{label}"
        new_app(berth, name, 1, health_path="/healthz" if label == "python-app" else "/")
        berth.api_json("POST", f"/apps/{name}/releases", json={"image": image})
        row = berth.wait_converged(name, 1)[0]
        direct = f"http://127.0.0.1:{row['host_port']}/"
        via_nginx = f"http://127.0.0.1:{berth.ingress_port}/"
        host = berth.host_of(name)
        run_load(via_nginx, host, 1, connections, no_wrk)  # warm up both paths
        run_load(direct, None, 1, connections, no_wrk)
        through = run_load(via_nginx, host, seconds, connections, no_wrk)
        straight = run_load(direct, None, seconds, connections, no_wrk)
        delete_app(berth, name)
        results[label] = {
            "through_nginx": through.as_dict(),
            "direct_to_container": straight.as_dict(),
        }
    return results


# -- output ---------------------------------------------------------------------------------------


def _seconds_row(table: Table, what: str, how: str, s: dict[str, Any]) -> None:
    table.add_row(
        what, how, f"{s['median']:.3f} s", f"{s['min']:.3f} s", f"{s['max']:.3f} s", str(s["n"])
    )


def print_report(results: dict[str, Any]) -> None:
    t = Table(title="Berth benchmarks (side by side with plain Docker)", header_style="bold")
    for col in ("benchmark", "path", "median", "min", "max", "n"):
        t.add_column(col)
    c = results["crash_recovery"]
    deploys = [results["deploy_latency"], *results.get("deploy_latency_compared", [])]
    for d in deploys:
        n = d["replicas"]
        what = f"deploy → first 200, {n} instance{'s' if n != 1 else ''}"
        how = f"Berth (API → nginx), {d['first_200_vs_docker_run']:.2f}x docker run"
        _seconds_row(t, what, how, d["berth_first_200_through_nginx"])
        _seconds_row(t, "", "Berth (deployment succeeded)", d["berth_deployment_succeeded"])
        _seconds_row(t, "", "docker run (own port)", d["docker_run_first_200"])
        if "docker_run_on_a_user_network_first_200" in d:
            on_network = d["docker_run_on_a_user_network_first_200"]
            _seconds_row(t, "", "docker run --network (a bridge like a tenant's)", on_network)
    _seconds_row(t, "kill -9 → serving", "Berth (instance's port)", c["berth_serving_on_its_port"])
    _seconds_row(t, "", "Berth (healthy in ps)", c["berth_healthy_in_ps"])
    _seconds_row(t, "", "docker --restart on-failure", c["docker_restart_on_failure_serving"])
    console.print(t)

    lt = Table(title="Throughput: one instance, through nginx vs direct", header_style="bold")
    for col in ("app", "path", "tool", "conns", "requests", "failed", "req/s", "p50", "p99"):
        lt.add_column(col)
    for app, paths in results["throughput"].items():
        for label, key in (("Berth's nginx", "through_nginx"), ("direct", "direct_to_container")):
            f = paths[key]
            lt.add_row(
                app if key == "through_nginx" else "",
                label,
                f["tool"],
                str(f["connections"]),
                str(f["requests"]),
                str(f["failures"]),
                f"{f['rps']:.0f}",
                f"{f['p50_ms']:.2f} ms",
                f"{f['p99_ms']:.2f} ms",
            )
    console.print(lt)


def environment(berth: BerthServer) -> dict[str, Any]:
    status = berth.api_json("GET", "/status")
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "docker": status["engine_version"],
        "berth": status["version"],
        "settings": {k: v for k, v in berth.settings.items() if "INTERVAL" in k or "TIMEOUT" in k},
        "intervals": {  # what the server ran with: its settings, else the defaults
            name: berth.settings.get(f"BERTH_{name.upper()}", Settings.model_fields[name].default)
            for name in ("reconcile_interval_seconds", "health_interval_seconds")
        },
    }


@contextlib.contextmanager
def raw_docker() -> Iterator[RawDocker]:
    raw = RawDocker()
    try:
        yield raw
    finally:
        raw.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=1, help="instances per deploy in (a)")
    parser.add_argument(
        "--compare-replicas", type=int, default=2, help="(a) again at this many (0: not)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per path")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--no-wrk", action="store_true", help="load with Python clients")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "latest.json")
    args = parser.parse_args(argv)
    check_requirements()
    cleanup_on_sigterm()
    with running_server(default_intervals=True) as berth, raw_docker() as raw:
        console.print(f"Berth server on {berth.api_url}, ingress 127.0.0.1:{berth.ingress_port}")
        image = built_image(berth, PYTHON_APP, "/healthz")
        busybox_image = built_image(berth, BUSYBOX_APP, "/")
        console.print(
            f"(a) deploy latency, image {image}, {args.replicas} replicas, {args.repeat} runs"
        )
        deploy = bench_deploy(berth, raw, image, args.repeat, args.replicas, raw.network())
        compared = []
        if args.compare_replicas and args.compare_replicas != args.replicas:
            console.print(f"(a) again at {args.compare_replicas} replicas")
            compared.append(bench_deploy(berth, raw, image, args.repeat, args.compare_replicas))
        console.print(f"(b) crash recovery, {args.repeat} kills")
        crash = bench_crash(berth, raw, image, args.repeat)
        console.print(
            f"(c) throughput, {args.connections} connections, {args.seconds:.0f}s per path"
        )
        images = {"python-app": image, "busybox-app": busybox_image}
        throughput = bench_throughput(berth, images, args.seconds, args.connections, args.no_wrk)
        results = {
            "environment": environment(berth),
            "deploy_latency": deploy,
            "deploy_latency_compared": compared,
            "crash_recovery": crash,
            "throughput": throughput,
        }
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
