"""Fixtures for the runtime contract suite: one harness per runtime ("fake" and "docker").

A harness hides the one thing the runtimes cannot share: how a test makes a container's process
print or exit. Docker runs a real busybox command; the fake is told to print or crash.
Everything a test creates is labelled with a fresh installation id and removed afterwards, even
when the test fails.
"""

from __future__ import annotations

import shlex
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from berth.images.bootstrap import import_rootfs, make_busybox_rootfs, write_tarball
from berth.runtime.docker_driver import DockerRuntime
from berth.runtime.fake import NO_SPACE, READ_ONLY_FS, FakeRuntime
from berth.runtime.protocol import (
    LABEL_APP,
    LABEL_INSTALLATION,
    LABEL_TENANT,
    ContainerInfo,
    ContainerSpec,
    Runtime,
)

INDEX_HTML = b"<h1>hello from berth</h1>\n"
APP_PORT = 8080
IMAGE_CMD = f'CMD ["httpd", "-f", "-p", "{APP_PORT}", "-h", "/www"]'
# A process that keeps running and still stops promptly on SIGTERM (PID 1 has no default handler).
SERVE = "trap 'exit 0' TERM; while true; do sleep 1; done"
WAIT_SECONDS = 30.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(0.05)


# -- the test image -----------------------------------------------------------------------------


def import_busybox_image(client: Any, ref: str) -> None:
    """The product's busybox root filesystem plus /www/index.html, imported as ``ref``; its
    default command serves /www."""
    with tempfile.TemporaryDirectory(prefix="berth-test-rootfs-") as scratch:
        root = Path(scratch) / "rootfs"
        root.mkdir()
        make_busybox_rootfs(root)
        (root / "www" / "index.html").write_bytes(INDEX_HTML)
        tarball = Path(scratch) / "rootfs.tar"
        write_tarball(root, tarball)
        import_rootfs(client, tarball, ref, changes=[IMAGE_CMD])


def remove_installation(client: Any, installation: str) -> None:
    """Remove every container and network labelled for ``installation`` (test cleanup)."""
    label = {"label": f"{LABEL_INSTALLATION}={installation}"}
    for container in client.containers.list(all=True, filters=label):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
    for network in client.networks.list(filters=label):
        try:
            network.remove()
        except docker.errors.NotFound:
            pass


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    client = docker.from_env(version="auto")
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> Iterator[str]:
    ref = f"berth-test/busybox:{uuid.uuid4().hex[:12]}"
    import_busybox_image(docker_client, ref)
    yield ref
    docker_client.images.remove(ref, force=True)


# -- harnesses ----------------------------------------------------------------------------------


class Harness:
    """A runtime under test, with a ready network and image, and ways to drive its processes."""

    kind: str
    runtime: Runtime
    image: str

    network = ""

    def prepare(self) -> None:
        self.network = unique("berth-test-net")
        self.runtime.ensure_network(self.network, {LABEL_TENANT: "t1"})

    def other_installation(self) -> Runtime:
        """A runtime on the same engine for a different Berth installation."""
        raise NotImplementedError

    def spec(
        self,
        *,
        app: str = "app1",
        network: str | None = None,
        image: str | None = None,
        labels: dict[str, str] | None = None,
        script: str = SERVE,
        disk_bytes: int = 8 * 1024 * 1024,
    ) -> ContainerSpec:
        return ContainerSpec(
            name=unique("berth-test"),
            image=image if image is not None else self.image,
            port=APP_PORT,
            memory_bytes=64 * 1024 * 1024,
            nano_cpus=500_000_000,
            pids_limit=64,
            network=network if network is not None else self.network,
            labels={LABEL_TENANT: "t1", LABEL_APP: app, **(labels or {})},
            command=("sh", "-c", script),
            disk_bytes=disk_bytes,
        )

    def run_printing(self, lines: list[str]) -> ContainerInfo:
        """A running container whose process has printed ``lines``."""
        raise NotImplementedError

    def run_exited(self, lines: list[str], exit_code: int) -> ContainerInfo:
        """A container whose process printed ``lines`` and exited; started again, it keeps
        running."""
        raise NotImplementedError

    def unreachable(self) -> Runtime:
        """A runtime of this kind whose engine cannot be reached."""
        raise NotImplementedError

    def write(self, path: str, size_bytes: int, disk_bytes: int) -> str:
        """A container (tmpfs of ``disk_bytes``) writes ``size_bytes`` of zeros to ``path``:
        "ok", or the error (READ_ONLY_FS, NO_SPACE)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError


class FakeHarness(Harness):
    kind = "fake"

    def __init__(self) -> None:
        self.fake = FakeRuntime(unique("berth-test-inst"), node="node-a")
        self.runtime = self.fake
        self.image = "berth-test/busybox:fake"
        self.fake.add_image(self.image)

    def other_installation(self) -> Runtime:
        return FakeRuntime(unique("berth-test-other"), node="node-a", engine=self.fake.engine)

    def run_printing(self, lines: list[str]) -> ContainerInfo:
        info = self.fake.run(self.spec())
        self.fake.write_output(info.id, "".join(f"{line}\n" for line in lines))
        return info

    def run_exited(self, lines: list[str], exit_code: int) -> ContainerInfo:
        info = self.run_printing(lines)
        self.fake.crash(info.id, exit_code)
        return info

    def unreachable(self) -> Runtime:
        down = FakeRuntime(unique("berth-test-down"), node="node-a")
        down.set_reachable(False)
        return down

    def write(self, path: str, size_bytes: int, disk_bytes: int) -> str:
        info = self.fake.run(self.spec(disk_bytes=disk_bytes))
        return self.fake.write_file(info.id, path, size_bytes) or "ok"

    def cleanup(self) -> None:
        """Nothing outlives the test: the fake engine is garbage."""


class DockerHarness(Harness):
    kind = "docker"

    def __init__(self, client: Any, image: str) -> None:
        self.client = client
        self.image = image
        self.installations = [unique("berth-test-inst")]
        self.runtime = DockerRuntime(self.installations[0], node="node-a")

    def other_installation(self) -> Runtime:
        self.installations.append(unique("berth-test-other"))
        return DockerRuntime(self.installations[-1], node="node-a")

    def run_printing(self, lines: list[str]) -> ContainerInfo:
        info = self.runtime.run(self.spec(script=f"{_echo(lines)}; {SERVE}"))
        expected = "".join(f"{line}\n" for line in lines)
        wait_until(lambda: self.runtime.logs(info.id) == expected, "the lines are printed")
        return info

    def run_exited(self, lines: list[str], exit_code: int) -> ContainerInfo:
        # The root filesystem is read-only and tmpfs is empty after a restart, so nothing inside
        # remembers a first run: the process exits only before a deadline, and this waits past
        # it, so a start() afterwards keeps running. A first run that starts too late (a loaded
        # machine) keeps running and is replaced, with more time.
        for margin in (3, 8, 20):
            deadline = int(time.time()) + margin
            first_run = f"{_echo(lines)}; exit {exit_code}"
            script = f'if [ "$(date +%s)" -ge {deadline} ]; then {SERVE}; fi; {first_run}'
            info = self.runtime.run(self.spec(script=script))

            def settled(cid: str = info.id, by: int = deadline) -> bool:
                return _state(self.runtime, cid) == "exited" or time.time() > by + 1

            wait_until(settled, "the process exits or its deadline passes")
            if _state(self.runtime, info.id) == "exited":
                wait_until(lambda by=deadline: time.time() > by + 1, "the deadline passes")
                return info
            self.runtime.remove(info.id, stop_timeout=1)
        raise AssertionError("the container never ran before its deadline")

    def unreachable(self) -> Runtime:
        # A socket path that does not exist: a real way for an engine to be down.
        missing = f"unix:///tmp/{unique('berth-no-engine')}.sock"
        return DockerRuntime(unique("berth-test-down"), docker_url=missing, node="node-a")

    def write(self, path: str, size_bytes: int, disk_bytes: int) -> str:
        mib = -(-size_bytes // (1024 * 1024))
        script = f"dd if=/dev/zero of={shlex.quote(path)} bs=1048576 count={mib} 2>&1; echo rc=$?"
        info = self.runtime.run(self.spec(script=f"{script}; {SERVE}", disk_bytes=disk_bytes))
        wait_until(lambda: "rc=" in self.runtime.logs(info.id), "the write ends")
        output = self.runtime.logs(info.id)
        for error in (READ_ONLY_FS, NO_SPACE):
            if error in output:
                return error
        assert "rc=0" in output, output
        return "ok"

    def cleanup(self) -> None:
        for installation in self.installations:
            remove_installation(self.client, installation)


def _echo(lines: list[str]) -> str:
    return "; ".join(f"echo {shlex.quote(line)}" for line in lines) or "true"


def _state(runtime: Runtime, container_id: str) -> str | None:
    info = runtime.inspect(container_id)
    return info.state if info is not None else None


@pytest.fixture(params=["fake", pytest.param("docker", marks=pytest.mark.docker)])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "fake":
        made: Harness = FakeHarness()
    else:
        made = DockerHarness(
            request.getfixturevalue("docker_client"), request.getfixturevalue("busybox_image")
        )
    try:
        made.prepare()
        yield made
    finally:
        made.cleanup()
