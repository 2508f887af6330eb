"""The life of one app, examples/python-app, through the CLI, the real Docker Engine and nginx:
deploy with 2 replicas (hardened containers), scale, change config, roll back, survive a killed
instance, and delete it. The tests run in order on one server and one app."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from typing import Any

import pytest

from berth.runtime.protocol import KEPT_CAPABILITIES
from tests.harness import PYTHON_APP, BerthServer, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

APP = "web"
MEMORY_MB = 128
CPUS = 0.25
DEFAULT_GREETING = "hello from berth"


@pytest.fixture(scope="module")
def web(berth: BerthServer) -> dict[str, Any]:
    """examples/python-app deployed with `berth deploy` and 2 replicas."""
    berth.create_app(
        APP, "--memory", f"{MEMORY_MB}M", "--cpus", str(CPUS), "--health-path", "/healthz"
    )
    berth.cli_ok("scale", APP, "2")
    result = berth.deploy_dir(APP, PYTHON_APP)
    assert result["deployment"]["status"] == "succeeded", result
    berth.wait_converged(APP, 2)
    return result


def _caps(values: list[str] | None) -> list[str]:
    return sorted(v.upper().removeprefix("CAP_") for v in values or [])


def _tenant_of(berth: BerthServer) -> str:
    tenants = {str(c.labels["berth.tenant"]) for c in berth.containers(APP)}
    assert len(tenants) == 1, tenants
    return tenants.pop()


def test_deploy_runs_two_hardened_instances(berth: BerthServer, web: dict[str, Any]) -> None:
    containers = berth.containers(APP)
    assert len(containers) == 2
    network = f"berth-t-{_tenant_of(berth)}"
    for container in containers:
        attrs = berth.inspect(container.id)
        host = attrs["HostConfig"]
        assert attrs["State"]["Running"] is True
        assert host["Memory"] == MEMORY_MB * 1024 * 1024
        assert host["NanoCpus"] == int(CPUS * 1e9)
        assert host["PidsLimit"] and host["PidsLimit"] > 0
        assert _caps(host["CapDrop"]) == ["ALL"]
        assert _caps(host["CapAdd"]) == sorted(KEPT_CAPABILITIES)
        assert "no-new-privileges:true" in (host["SecurityOpt"] or [])
        assert host["Privileged"] is False
        assert host["NetworkMode"] == network
        assert list(attrs["NetworkSettings"]["Networks"]) == [network]
        assert host["PidMode"] in ("", "private")
        assert host["IpcMode"] in ("", "private", "shareable")
        assert not host.get("Binds")
        assert not host.get("Mounts")
        assert attrs["Mounts"] == []
        assert "docker.sock" not in json.dumps(attrs)
        bindings = [b for group in attrs["NetworkSettings"]["Ports"].values() for b in group or []]
        assert bindings, "the app port is published"
        assert all(b["HostIp"] == "127.0.0.1" for b in bindings), bindings
        for group in host["PortBindings"].values():
            assert all(b["HostIp"] == "127.0.0.1" for b in group), host["PortBindings"]


def test_app_answers_through_nginx(berth: BerthServer, web: dict[str, Any]) -> None:
    resp = berth.ingress_get(berth.host_of(APP))
    assert resp.status_code == 200
    assert resp.text.startswith(DEFAULT_GREETING)
    # Both replicas serve: their hostnames (container ids) show up in the answers.
    hosts = {c.id[:12] for c in berth.containers(APP)}
    seen: set[str] = set()

    def both_answered() -> bool:
        body = berth.app_body(APP) or ""
        seen.update(h for h in hosts if h in body)
        return seen == hosts

    wait_until(both_answered, 20, "both replicas answered through nginx")


def test_apps_info_lists_urls(berth: BerthServer, web: dict[str, Any]) -> None:
    info = berth.cli_json("apps", "info", APP)
    url = f"http://{APP}.{berth.base_domain}:{berth.ingress_port}/"
    assert info["urls"] == [url]
    assert web["urls"] == [url]
    assert info["serving_release"] == 1
    assert info["instances"]["healthy"] == 2


def test_unknown_host_gets_the_404_page(berth: BerthServer, web: dict[str, Any]) -> None:
    for host in (f"nope.{berth.base_domain}", "example.org", "127.0.0.1"):
        resp = berth.ingress_get(host)
        assert resp.status_code == 404, host
        assert "text/html" in resp.headers["content-type"]
        assert DEFAULT_GREETING not in resp.text


def test_scale_up_and_down(berth: BerthServer, web: dict[str, Any]) -> None:
    for n in (3, 1, 2):
        out = berth.cli_json("scale", APP, str(n))
        assert out["scale"] == n
        rows = berth.wait_converged(APP, n)
        assert len(rows) == n
        assert len(berth.containers(APP, all=True)) == n
        assert berth.cli_json("apps", "info", APP)["instances"]["desired"] == n
        assert berth.app_body(APP) is not None


class _ContainerCounter:
    """Samples how many of the app's containers run, to see a rollout start before it stops."""

    def __init__(self, berth: BerthServer) -> None:
        self.berth, self.max_running = berth, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _ContainerCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            running = len(self.berth.containers(APP, all=False))
            self.max_running = max(self.max_running, running)
            self._stop.wait(0.1)


def test_config_change_rolls_out_start_first_without_failures(
    berth: BerthServer, web: dict[str, Any]
) -> None:
    berth.wait_converged(APP, 2)
    greeting = f"hola-{uuid.uuid4().hex[:8]}"
    with _ContainerCounter(berth) as counter, berth.client_loop(APP) as loop:
        loop.wait_for_requests(5)
        out = berth.cli_json("config", "set", APP, f"GREETING={greeting}")
        loop.wait_for_requests(loop.result.total + 20)
    result = loop.result
    assert out["deployment"]["status"] == "succeeded", out
    assert result.failures == [], result.failures[:5]
    assert any(b.startswith(DEFAULT_GREETING) for b in result.bodies), "old release served first"
    assert result.bodies[-1].startswith(greeting)
    # Start-first: new instances ran next to the old ones before the old ones went.
    assert counter.max_running > 2
    for _ in range(10):
        assert (berth.app_body(APP) or "").startswith(greeting)
    rows = berth.wait_converged(APP, 2)
    assert {r["release_version"] for r in rows} == {out["release"]}
    assert berth.cli_json("config", "show", APP) == {"GREETING": greeting}


def test_rollback_brings_the_old_greeting_back(berth: BerthServer, web: dict[str, Any]) -> None:
    before = berth.cli_json("releases", APP)
    with berth.client_loop(APP) as loop:
        loop.wait_for_requests(5)
        out = berth.cli_json("rollback", APP)
    assert loop.result.failures == [], loop.result.failures[:5]
    assert out["deployment"]["status"] == "succeeded", out
    assert out["release"] == before[0]["version"] + 1
    for _ in range(10):
        assert (berth.app_body(APP) or "").startswith(DEFAULT_GREETING)
    releases = berth.cli_json("releases", APP)
    assert releases[0]["serving"] is True
    assert releases[0]["description"].startswith("rollback to")
    assert berth.cli_json("config", "show", APP) == {}


def test_killed_instance_is_restarted_without_failed_requests(
    berth: BerthServer, web: dict[str, Any]
) -> None:
    rows = berth.wait_converged(APP, 2)
    victim = rows[0]
    attrs = berth.inspect(victim["container_id"])
    pid = attrs["State"]["Pid"]
    assert pid > 0
    with berth.client_loop(APP, max_seconds=30, max_requests=2000) as loop:
        loop.wait_for_requests(10)
        os.kill(pid, signal.SIGKILL)

        def victim_back() -> bool:
            row = next(
                (r for r in berth.ps(APP) if r["container_id"] == victim["container_id"]), None
            )
            return bool(
                row and row["restarts"] >= 1 and row["state"] == "running" and row["healthy"]
            )

        wait_until(victim_back, 30, "the killed instance runs and is healthy again")
        served = loop.result.total
        loop.wait_for_requests(served + 20)
    result = loop.result
    assert result.failures == [], result.failures[:5]
    assert result.ok >= 30
    after = berth.inspect(victim["container_id"])
    assert after["State"]["Running"] is True
    assert after["State"]["Pid"] != pid
    rows = berth.wait_converged(APP, 2)
    assert len(berth.containers(APP)) == 2
    # The restarted instance serves again (its hostname shows up through nginx).
    wait_until(
        lambda: victim["container_id"] in (berth.app_body(APP) or ""),
        20,
        "the restarted instance answers through nginx",
    )


def test_delete_removes_containers_network_and_route(
    berth: BerthServer, web: dict[str, Any]
) -> None:
    network = f"berth-t-{_tenant_of(berth)}"
    assert network in berth.networks()
    berth.cli_ok("apps", "delete", APP, "--yes")
    wait_until(lambda: not berth.containers(APP), 30, "the app's containers are gone")
    wait_until(lambda: network not in berth.networks(), 30, "the tenant network is gone")

    def route_gone() -> bool:
        resp = berth.ingress_get(berth.host_of(APP))
        return resp.status_code == 404 and DEFAULT_GREETING not in resp.text

    wait_until(route_gone, 20, "the app's Host gets the 404 page")
    assert berth.cli_json("apps", "list") == []
    gone = berth.cli("ps", APP)
    assert gone.returncode != 0
    assert "not found" in gone.stderr
