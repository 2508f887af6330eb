"""A container run by DockerRuntime is locked down the way the README's Isolation section says,
and still serves HTTP on its loopback port. Checked with the engine's own ``docker inspect``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest

from berth.runtime.docker_driver import DockerRuntime
from berth.runtime.protocol import (
    KEPT_CAPABILITIES,
    LABEL_APP,
    LABEL_TENANT,
    WRITABLE_PATHS,
    ContainerInfo,
    ContainerSpec,
)
from tests.contract.conftest import (
    APP_PORT,
    INDEX_HTML,
    import_busybox_image,
    remove_installation,
    unique,
    wait_until,
)

pytestmark = pytest.mark.docker

MEMORY_BYTES = 96 * 1024 * 1024
NANO_CPUS = 250_000_000
PIDS_LIMIT = 48
DISK_BYTES = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    client = docker.from_env(version="auto")
    yield client
    client.close()


@pytest.fixture(scope="module")
def image(client: Any) -> Iterator[str]:
    ref = f"berth-test/busybox-www:{uuid.uuid4().hex[:12]}"
    import_busybox_image(client, ref)
    yield ref
    client.images.remove(ref, force=True)


@pytest.fixture(scope="module")
def runtime(client: Any) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime(unique("berth-test-inst"), node="node-a")
    try:
        yield runtime
    finally:
        remove_installation(client, runtime.installation)


@pytest.fixture(scope="module")
def network(runtime: DockerRuntime) -> str:
    name = unique("berth-test-net")
    runtime.ensure_network(name, {LABEL_TENANT: "t1"})
    return name


def web_spec(image: str, network: str, command: tuple[str, ...] | None = None) -> ContainerSpec:
    return ContainerSpec(
        name=unique("berth-test-web"),
        image=image,
        port=APP_PORT,
        memory_bytes=MEMORY_BYTES,
        nano_cpus=NANO_CPUS,
        pids_limit=PIDS_LIMIT,
        network=network,
        labels={LABEL_TENANT: "t1", LABEL_APP: "web"},
        env={"GREETING": "hi", "PORT": "1"},
        command=command,  # None: the image's own command, busybox httpd serving /www
        disk_bytes=DISK_BYTES,
    )


@pytest.fixture(scope="module")
def web(runtime: DockerRuntime, image: str, network: str) -> ContainerInfo:
    return runtime.run(web_spec(image, network))


@pytest.fixture(scope="module")
def attrs(client: Any, web: ContainerInfo) -> dict[str, Any]:
    return dict(client.api.inspect_container(web.id))


def test_resources_are_limited(attrs: dict[str, Any]) -> None:
    host = attrs["HostConfig"]
    assert host["Memory"] == MEMORY_BYTES
    assert host["MemorySwap"] == MEMORY_BYTES  # no swap beyond the memory limit
    assert host["NanoCpus"] == NANO_CPUS
    assert host["PidsLimit"] == PIDS_LIMIT


def test_privileges_are_dropped(attrs: dict[str, Any]) -> None:
    host = attrs["HostConfig"]
    assert host["Privileged"] is False
    assert "ALL" in host["CapDrop"]
    assert sorted(host["CapAdd"]) == sorted(KEPT_CAPABILITIES)
    assert "no-new-privileges:true" in host["SecurityOpt"]


def test_namespaces_are_not_shared_with_the_host(attrs: dict[str, Any], network: str) -> None:
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == network
    assert list(attrs["NetworkSettings"]["Networks"]) == [network]
    assert host["PidMode"] in ("", "private")
    assert host["IpcMode"] in ("", "private", "shareable")
    assert host["UTSMode"] in ("", "private")
    assert host["UsernsMode"] == ""


def test_nothing_from_the_host_is_mounted(attrs: dict[str, Any]) -> None:
    # tmpfs (HostConfig.Tmpfs) is memory, not the host's disk: it is not among the mounts.
    assert not attrs["HostConfig"]["Binds"]
    assert not attrs["HostConfig"].get("Mounts")
    assert attrs["Mounts"] == []
    assert not attrs["HostConfig"]["Devices"]
    assert "docker.sock" not in json.dumps(attrs)


def test_the_app_port_is_published_on_loopback_only(
    attrs: dict[str, Any], web: ContainerInfo
) -> None:
    bindings = attrs["NetworkSettings"]["Ports"]
    assert list(bindings) == [f"{APP_PORT}/tcp"]
    assert bindings[f"{APP_PORT}/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(web.host_port)}]
    requested = attrs["HostConfig"]["PortBindings"][f"{APP_PORT}/tcp"]
    assert [b["HostIp"] for b in requested] == ["127.0.0.1"]


def test_berth_restarts_crashes_itself_and_logs_are_capped(attrs: dict[str, Any]) -> None:
    host = attrs["HostConfig"]
    assert host["RestartPolicy"]["Name"] in ("", "no")
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "10m", "max-file": "3"},
    }
    # tini is PID 1, so a stop's SIGTERM reaches the app even when its image ignores it.
    assert host["Init"] is True


def test_the_app_is_told_its_port(attrs: dict[str, Any]) -> None:
    env = attrs["Config"]["Env"]
    assert f"PORT={APP_PORT}" in env  # wins over the spec's own PORT
    assert "GREETING=hi" in env


def test_the_app_answers_http_on_its_loopback_port(web: ContainerInfo) -> None:
    url = f"http://127.0.0.1:{web.host_port}/index.html"

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, f"{url} answers")
    assert httpx.get(url, timeout=2).content == INDEX_HTML


def test_a_missing_program_is_a_crash_with_a_clear_exit_code(
    runtime: DockerRuntime, image: str, network: str
) -> None:
    """With tini as PID 1 the container starts, and the missing program is an exit (127) that
    the reconciler treats like any crash: backoff, crash loop in ps, a failed deploy."""
    spec = web_spec(image, network, command=("/no/such/program",))

    info = runtime.run(spec)

    def exited() -> bool:
        current = runtime.inspect(info.id)
        return current is not None and current.state == "exited"

    wait_until(exited, "the container exits")
    current = runtime.inspect(info.id)
    assert current is not None and current.exit_code == 127
    assert "/no/such/program" in runtime.logs(info.id)


# Capability numbers (linux/capability.h) of KEPT_CAPABILITIES, for the kernel's own view.
_CAP_BITS = {"CHOWN": 0, "SETGID": 6, "SETUID": 7, "NET_BIND_SERVICE": 10}


def _exec(client: Any, container_id: str, script: str) -> tuple[int, str]:
    code, output = client.containers.get(container_id).exec_run(["sh", "-c", script])
    return int(code), bytes(output).decode("utf-8", errors="replace")


def test_the_root_filesystem_is_read_only_with_sized_tmpfs(attrs: dict[str, Any]) -> None:
    host = attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert sorted(host["Tmpfs"]) == sorted(WRITABLE_PATHS)
    for options in host["Tmpfs"].values():
        assert f"size={DISK_BYTES}" in options.split(",")
        assert {"nosuid", "nodev"} <= set(options.split(","))


def test_the_kernel_enforces_the_read_only_root_and_the_tmpfs_size(
    client: Any, web: ContainerInfo
) -> None:
    code, output = _exec(client, web.id, "echo x > /written-by-the-app")
    assert code != 0 and "Read-only file system" in output
    code, output = _exec(client, web.id, "echo x > /tmp/ok && cat /tmp/ok")
    assert (code, output) == (0, "x\n")
    too_much = DISK_BYTES // (1024 * 1024) + 1
    code, output = _exec(client, web.id, f"dd if=/dev/zero of=/tmp/big bs=1048576 count={too_much}")
    assert code != 0 and "No space left on device" in output
    _exec(client, web.id, "rm -f /tmp/big /tmp/ok")


def test_the_kernel_sees_only_the_kept_capabilities_and_no_new_privileges(
    client: Any, web: ContainerInfo
) -> None:
    code, status = _exec(client, web.id, "cat /proc/1/status")
    assert code == 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    expected = sum(1 << _CAP_BITS[name] for name in KEPT_CAPABILITIES)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(fields[field].strip(), 16) == expected, (field, fields[field])
    assert fields["NoNewPrivs"].strip() == "1"
    assert int(fields["CapAmb"].strip(), 16) == 0
