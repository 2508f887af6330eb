"""Benchmark: deploy latency on the Swarm backend, beside ``docker service create``, in one run.

A cluster of the test harness (tests/cluster/nodes.py: a drained manager and 3 workers, each a
namespaced engine on this machine), examples/python-app built once on this machine's engine and
loaded into every node, and a real Berth server on the swarm backend at its DEFAULT intervals
(reconcile and health: what users get, not the tests' pace).

- **Berth**: the API call (``POST /apps/NAME/releases`` with the image, as
  ``berth deploy NAME --image``) until the first 200 through Berth's ingress (nginx on this
  machine reaching the task at its node's address and host-mode port), and until the
  deployment says ``succeeded``. A fresh app each run (its service and its tenant's overlay are
  made by that deploy).
- **docker service create**: the same image on the manager with the docker CLI (endpoint mode
  dnsrr, a host-mode port without a published port, the limits Berth gave its own service:
  memory limit and reservation, CPUs, pids, init, read-only root with the same tmpfs, dropped
  capabilities) until the first 200 straight at the task's node address and port, found by
  polling the manager for the task's published port (as a user of plain Swarm would). Beside
  it the same with a fresh overlay network created first and attached (Berth's first deploy
  of a tenant makes its overlay, and its last app's removal removes it): what of Berth's time
  is the overlay's.

Runs alternate (Berth, then plain Swarm), ``--repeat`` each; prints median, min and max, and
writes bench/results/swarm_deploy.json. Everything (apps, services, the cluster, the image,
the server) is removed at the end, also on failure. Traffic goes only to 127.0.0.1 and to the
harness's node addresses.

    python bench/swarm_deploy.py [--repeat 5] [--replicas 1] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cluster.nodes import Cluster, check_requirements, sweep_leftovers  # noqa: E402
from tests.harness import (  # noqa: E402
    PYTHON_APP,
    BerthServer,
    cleanup_on_sigterm,
    docker_client,
    wait_until,
)

from berth.settings import Settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "swarm_deploy.json"
APP_PORT = 8080
POLL = 0.01
BENCH_LABEL = "berth.bench"


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "median": round(statistics.median(samples), 4),
        "min": round(min(samples), 4),
        "max": round(max(samples), 4),
        "spread": round(max(samples) - min(samples), 4),
        "samples": [round(s, 4) for s in samples],
    }


def first_ok(url: str, headers: dict[str, str] | None = None, timeout: float = 120.0) -> float:
    """Poll ``url`` until it answers 200; returns when (perf_counter)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if http.get(url, headers=headers or {}).status_code == 200:
                    return time.perf_counter()
            time.sleep(POLL)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


@contextlib.contextmanager
def app_image() -> Iterator[str]:
    """examples/python-app built once under a ``berth/...`` name (a base image any tenant may
    deploy), removed at the end."""
    ref = f"berth/bench-swarm-{uuid.uuid4().hex[:8]}:latest"
    with contextlib.closing(docker_client()) as client:
        client.images.build(path=str(PYTHON_APP), tag=ref, rm=True, forcerm=True)
        try:
            yield ref
        finally:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.images.remove(ref, force=True)


def berth_server(cluster: Cluster) -> BerthServer:
    return BerthServer(
        default_intervals=True,
        extra_env={
            "BERTH_BACKEND": "swarm",
            "BERTH_DOCKER_URL": cluster.node(cluster.manager).base_url,
            # Tenant networks are overlays on the nodes (as in tests/cluster).
            "BERTH_EGRESS_FILTER": "false",
        },
    )


# -- Berth ----------------------------------------------------------------------------------


def services_of(cluster: Cluster, labels: list[str]) -> list[Any]:
    client = cluster.manager_client()
    try:
        return list(client.services.list(filters={"label": labels}))
    finally:
        client.close()


def berth_service_limits(cluster: Cluster, server: BerthServer, app: str) -> dict[str, Any]:
    """The task template Berth wrote for an app's service (what the baseline copies)."""
    labels = [f"berth.installation={server.installation}", f"berth.app-name={app}"]
    [service] = services_of(cluster, labels)
    template = service.attrs["Spec"]["TaskTemplate"]
    return {
        "resources": template["Resources"],
        "container": {
            k: template["ContainerSpec"].get(k)
            for k in ("Init", "ReadOnly", "CapabilityDrop", "CapabilityAdd", "Mounts")
        },
    }


def deployment_succeeded(server: BerthServer, path: str) -> bool:
    return bool(server.api_json("GET", path)["status"] == "succeeded")


def delete_berth_app(cluster: Cluster, server: BerthServer, name: str) -> None:
    server.api_json("DELETE", f"/apps/{name}")
    labels = [f"berth.installation={server.installation}", f"berth.app-name={name}"]
    wait_until(lambda: not services_of(cluster, labels), 120, f"{name}'s services are gone")

    def deleted() -> bool:
        return name not in {a["name"] for a in server.api_json("GET", "/apps")}

    wait_until(deleted, 120, f"{name} is deleted")


def berth_run(server: BerthServer, image: str, name: str, replicas: int) -> tuple[float, float]:
    server.api_json(
        "POST", "/apps", json={"name": name, "memory": "128M", "health_path": "/healthz"}
    )
    if replicas != 1:
        server.api_json("POST", f"/apps/{name}/scale", json={"replicas": replicas})
    url = f"http://127.0.0.1:{server.ingress_port}/"
    started = time.perf_counter()
    result = server.api_json("POST", f"/apps/{name}/releases", json={"image": image})
    first = first_ok(url, {"Host": server.host_of(name)}) - started
    dep = f"/apps/{name}/deployments/{result['deployment']['id']}"
    wait_until(lambda: deployment_succeeded(server, dep), 120, "the deployment succeeds")
    return first, time.perf_counter() - started


# -- plain Swarm ------------------------------------------------------------------------------


def service_create_args(
    image: str,
    name: str,
    label: str,
    limits: dict[str, Any],
    replicas: int,
    network: str | None = None,
) -> list[str]:
    """``docker service create`` with the limits Berth gave its own service."""
    resources = limits["resources"]
    container = limits["container"]
    args = [
        "service", "create", "--detach", "--quiet",
        "--name", name,
        "--label", f"{BENCH_LABEL}={label}",
        "--container-label", f"{BENCH_LABEL}={label}",
        "--replicas", str(replicas),
        "--endpoint-mode", "dnsrr",
        "--publish", f"mode=host,target={APP_PORT}",
        "--env", f"PORT={APP_PORT}",
        "--limit-memory", str(resources["Limits"]["MemoryBytes"]),
        "--reserve-memory", str(resources["Reservations"]["MemoryBytes"]),
        "--limit-cpu", str(resources["Limits"]["NanoCPUs"] / 1e9),
        "--limit-pids", str(resources["Limits"]["Pids"]),
        "--placement-pref", "spread=node.labels.zone",
    ]  # fmt: skip
    if network is not None:
        args += ["--network", network]
    if container.get("Init"):
        args.append("--init")
    if container.get("ReadOnly"):
        args.append("--read-only")
    for cap in container.get("CapabilityDrop") or []:
        args += ["--cap-drop", cap]
    for cap in container.get("CapabilityAdd") or []:
        args += ["--cap-add", cap]
    for mount in container.get("Mounts") or []:
        size = (mount.get("TmpfsOptions") or {}).get("SizeBytes")
        spec = f"type=tmpfs,dst={mount['Target']}" + (f",tmpfs-size={size}" if size else "")
        args += ["--mount", spec]
    return [*args, image]


def task_url(cluster: Cluster, service_name: str) -> str | None:
    """http://node:port/ of a running task of the service, once the manager says where."""
    client = cluster.manager_client()
    try:
        for task in client.api.tasks(filters={"service": service_name}):
            status = task.get("Status") or {}
            ports = (status.get("PortStatus") or {}).get("Ports") or []
            if status.get("State") != "running" or not ports or not task.get("NodeID"):
                continue
            node = client.api.inspect_node(task["NodeID"])
            address = (node.get("Status") or {}).get("Addr")
            if address:
                return f"http://{address}:{ports[0]['PublishedPort']}/"
        return None
    finally:
        client.close()


def docker_cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    host = cluster.node(cluster.manager).base_url
    return subprocess.run(
        ["docker", "-H", host, *args], capture_output=True, text=True, check=True, timeout=120
    )


def remove_bench_services(cluster: Cluster, label: str) -> None:
    for service in services_of(cluster, [f"{BENCH_LABEL}={label}"]):
        with contextlib.suppress(docker.errors.NotFound):
            service.remove()


def remove_bench_networks(cluster: Cluster, label: str) -> None:
    """The baseline's overlays, once no task uses them (a removed service's tasks stop in a
    few seconds)."""

    def removed() -> bool:
        client = cluster.manager_client()
        try:
            left = client.networks.list(filters={"label": f"{BENCH_LABEL}={label}"})
            for network in left:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    network.remove()
            return not client.networks.list(filters={"label": f"{BENCH_LABEL}={label}"})
        finally:
            client.close()

    wait_until(removed, 60, "the baseline's overlays are removed")


def swarm_run(
    cluster: Cluster,
    image: str,
    name: str,
    label: str,
    limits: dict[str, Any],
    replicas: int,
    overlay: bool = False,
) -> float:
    """``overlay``: first a fresh overlay network for the service, as Berth's first deploy of
    a tenant makes one (and removes it with the tenant's last app)."""
    started = time.perf_counter()
    network = None
    if overlay:
        network = f"{name}-net"
        docker_cli(
            cluster, "network", "create", "--driver", "overlay", "--label",
            f"{BENCH_LABEL}={label}", network,
        )  # fmt: skip
    docker_cli(cluster, *service_create_args(image, name, label, limits, replicas, network))
    url = wait_until(lambda: task_url(cluster, name), 120, f"{name} has a running task")
    return first_ok(url) - started


def wait_gone(cluster: Cluster, label: str) -> None:
    """The service's tasks have stopped on their nodes (so runs do not overlap)."""

    def gone() -> bool:
        for short in [s for s in cluster.nodes if s not in cluster.managers]:
            client = cluster.client(short)
            try:
                if client.containers.list(filters={"label": f"{BENCH_LABEL}={label}"}):
                    return False
            finally:
                client.close()
        return True

    wait_until(gone, 120, "the baseline's containers are gone")


# -- the run ----------------------------------------------------------------------------------


def bench(cluster: Cluster, image: str, repeat: int, replicas: int) -> dict[str, Any]:
    server = berth_server(cluster)
    label = f"swarm-deploy-{uuid.uuid4().hex[:8]}"
    first_200, succeeded, plain, plain_overlay = [], [], [], []
    limits: dict[str, Any] = {}
    try:
        server.start()
        for i in range(repeat):
            name = f"deploy{i}"
            first, done = berth_run(server, image, name, replicas)
            first_200.append(first)
            succeeded.append(done)
            if not limits:
                limits = berth_service_limits(cluster, server, name)
            delete_berth_app(cluster, server, name)
            print(f"run {i + 1}: Berth first 200 {first:.3f} s, succeeded {done:.3f} s", end="")

            plain.append(swarm_run(cluster, image, f"{label}-{i}", label, limits, replicas))
            remove_bench_services(cluster, label)
            wait_gone(cluster, label)
            plain_overlay.append(
                swarm_run(cluster, image, f"{label}-o{i}", label, limits, replicas, overlay=True)
            )
            remove_bench_services(cluster, label)
            wait_gone(cluster, label)
            remove_bench_networks(cluster, label)
            print(
                f"; docker service create first 200 {plain[-1]:.3f} s"
                f" (with a new overlay {plain_overlay[-1]:.3f} s)",
                flush=True,
            )
        settings = {
            name: server.settings.get(f"BERTH_{name.upper()}", Settings.model_fields[name].default)
            for name in ("reconcile_interval_seconds", "health_interval_seconds")
        }
    finally:
        installation = server.installation
        server.cleanup()
        remove_bench_services(cluster, label)
        with contextlib.suppress(Exception):
            remove_bench_networks(cluster, label)
        if installation:
            for service in services_of(cluster, [f"berth.installation={installation}"]):
                with contextlib.suppress(docker.errors.NotFound):
                    service.remove()
    return {
        "berth_first_200_through_ingress": summary(first_200),
        "berth_deployment_succeeded": summary(succeeded),
        "docker_service_create_first_200": summary(plain),
        "docker_network_and_service_create_first_200": summary(plain_overlay),
        "ratio_of_medians": round(statistics.median(first_200) / statistics.median(plain), 2),
        "ratio_to_plain_with_overlay": round(
            statistics.median(first_200) / statistics.median(plain_overlay), 2
        ),
        "intervals": settings,
        "limits": limits,
    }


def print_table(results: dict[str, Any], replicas: int) -> None:
    rows = [
        ("Berth: API call -> first 200 via ingress", "berth_first_200_through_ingress"),
        ("Berth: API call -> deployment succeeded", "berth_deployment_succeeded"),
        ("docker service create -> first 200", "docker_service_create_first_200"),
        ("  with a new overlay network first", "docker_network_and_service_create_first_200"),
    ]
    print(
        f"Deploy latency on Swarm (3 workers), examples/python-app, {replicas} replica(s), "
        f"Berth at default intervals {results['intervals']}"
    )
    print(f"{'':44}{'median':>10}{'min':>10}{'max':>10}{'n':>4}")
    for label, key in rows:
        s = results[key]
        print(f"{label:44}{s['median']:>9.3f}s{s['min']:>9.3f}s{s['max']:>9.3f}s{s['n']:>4}")
    print(
        f"Berth / docker service create (medians): {results['ratio_of_medians']:.2f}x; "
        f"with a new overlay: {results['ratio_to_plain_with_overlay']:.2f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    problems = check_requirements()
    if problems:
        raise SystemExit("this benchmark needs:\n  " + "\n  ".join(problems))
    cleanup_on_sigterm()
    sweep_leftovers()
    cluster = Cluster()
    try:
        started = time.monotonic()
        cluster.form(workers=3)
        formed = time.monotonic() - started
        with app_image() as image:
            cluster.load_images([image])
            print(f"cluster {cluster.run_id} formed in {formed:.1f} s; image {image} loaded")
            results = bench(cluster, image, args.repeat, args.replicas)
    finally:
        cluster.cleanup()
    print_table(results, args.replicas)
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "cluster": "1 drained manager + 3 workers (namespaced engines on this machine)",
        "replicas": args.replicas,
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
