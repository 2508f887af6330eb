"""The platform registry for real: the distro's docker-registry on a loopback port of each test's
own, the host's Docker Engine pushing and pulling through docker-py.

Every test's registry, images and networks carry a unique name and are removed by finalizers,
even when the test fails. Images are built from berth/busybox:latest with COPY only (no RUN, no
network); the engine treats 127.0.0.0/8 registries as insecure-allowed, so no daemon config.
"""

from __future__ import annotations

import io
import os
import secrets
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from berth.builds.image_policy import LABEL_BUILD_INSTALLATION
from berth.errors import InvalidInput, RuntimeFailure
from berth.registry.gc import MANIFEST_TYPES, collect_node_images, collect_registry
from berth.registry.push import PushedImage, RegistryReadOnly, push_image, repository_for
from berth.registry.server import RegistryError, RegistryServer
from berth.settings import Settings

pytestmark = pytest.mark.docker

BINARY = "/usr/bin/docker-registry"
BUSYBOX = "berth/busybox:latest"
PYTHON = "berth/python:3"


@pytest.fixture(autouse=True, scope="module")
def _registry_is_installed() -> None:
    """These tests need the real registry (scripts/ensure-system.sh installs it)."""
    if not os.access(BINARY, os.X_OK):
        pytest.fail(f"docker-registry is not installed at {BINARY}", pytrace=False)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    client = docker.from_env(version="auto")
    yield client
    client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Registries:
    """Starts registries in the test's own directories; stops them and removes every image
    name pushed to or pulled from them, and every image the test built."""

    client: Any
    root: Path
    servers: list[RegistryServer] = field(default_factory=list)
    built: list[str] = field(default_factory=list)

    def new(self, port: int | None = None, auth: str = "auto") -> RegistryServer:
        home = self.root / secrets.token_hex(4)
        settings = Settings(
            home=home,
            registry_listen=f"127.0.0.1:{port or free_port()}",
            registry_auth=auth,  # type: ignore[arg-type]
        )
        server = RegistryServer(settings)
        self.servers.append(server)
        return server

    def build(self, parent: str, files: dict[str, bytes], labels: dict[str, str]) -> str:
        """An image FROM ``parent`` with one COPY layer per file; returns its id."""
        lines = [f"FROM {parent}"] + [f"COPY {name} /{name}" for name in files]
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            for name, data in {"Dockerfile": "\n".join(lines).encode(), **files}.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        context.seek(0)
        image, _ = self.client.images.build(
            fileobj=context, custom_context=True, labels=labels, rm=True, forcerm=True
        )
        image_id: str = image.id
        self.built.append(image_id)
        return image_id

    def cleanup(self) -> None:
        for server in self.servers:
            try:
                server.stop()
            except Exception as exc:  # clean up the rest anyway
                print(f"registry cleanup: {exc!r}", file=sys.stderr)
        prefixes = tuple(f"{server.address}/" for server in self.servers)
        for image in self.client.api.images():
            for name in (*(image.get("RepoTags") or ()), *(image.get("RepoDigests") or ())):
                if name.startswith(prefixes):
                    remove_quietly(self.client, name, force=False)
        for image_id in reversed(self.built):
            remove_quietly(self.client, image_id, force=True)


def remove_quietly(client: Any, name: str, force: bool) -> None:
    try:
        client.api.remove_image(name, force=force)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        print(f"image cleanup {name}: {exc}", file=sys.stderr)


@pytest.fixture
def registries(client: Any, tmp_path: Path) -> Iterator[Registries]:
    registries = Registries(client, tmp_path)
    try:
        yield registries
    finally:
        registries.cleanup()


def head_manifest(server: RegistryServer, repository: str, digest: str) -> int:
    url = f"{server.url}/v2/{repository}/manifests/{digest}"
    with httpx.Client(timeout=5, trust_env=False) as http:
        return http.head(url, headers={"Accept": MANIFEST_TYPES}).status_code


def pull(client: Any, reference: str) -> str:
    """Pull ``ADDR/repo@sha256:...``; returns the pulled image's id."""
    repository, _, digest = reference.partition("@")
    client.api.pull(repository, tag=digest)
    image_id: str = client.api.inspect_image(reference)["Id"]
    return image_id


# -- push, pull, layers ----------------------------------------------------------------------


def test_push_pins_the_digest_and_a_pull_by_digest_brings_the_same_image(
    client: Any, registries: Registries
) -> None:
    server = registries.new()
    server.ensure_running()
    repo = repository_for(secrets.token_hex(8), "web")
    image_id = registries.build(BUSYBOX, {"index.html": b"v1\n"}, {})

    pushed = push_image(client, server.address, image_id, repo)

    assert pushed.reference == f"{server.address}/{repo}@{pushed.digest}"
    assert head_manifest(server, repo, pushed.digest) == 200
    # Gone from this engine (every name, then the image), then pulled back by its digest.
    for name in client.api.inspect_image(image_id)["RepoTags"]:
        client.api.remove_image(name)  # the last name removes the image
    with pytest.raises(docker.errors.ImageNotFound):
        client.api.inspect_image(image_id)
    assert pull(client, pushed.reference) == image_id  # the id is the config's digest


def test_a_second_image_sharing_layers_pushes_only_the_missing_one(
    client: Any, registries: Registries
) -> None:
    server = registries.new()
    server.ensure_running()
    repo = repository_for(secrets.token_hex(8), "web")
    v1 = registries.build(BUSYBOX, {"a.txt": b"a\n"}, {})
    v2 = registries.build(v1, {"b.txt": b"b\n"}, {})

    first = push_image(client, server.address, v1, repo)
    second = push_image(client, server.address, v2, repo)
    again = push_image(client, server.address, v2, repo)

    assert (first.layers_pushed, first.layers_existing) == (2, 0)  # busybox + a.txt
    assert (second.layers_pushed, second.layers_existing) == (1, 2)  # only b.txt
    assert (again.layers_pushed, again.layers_existing) == (0, 3)
    assert again.reference == second.reference  # same image, same tag, same digest


def test_bad_input_is_refused_before_the_engine_is_asked(
    client: Any, registries: Registries
) -> None:
    server = registries.new()
    with pytest.raises(InvalidInput):
        push_image(client, server.address, BUSYBOX, "t-00/web")  # a name, not an id
    with pytest.raises(InvalidInput):
        repository_for("../x", "web")
    with pytest.raises(InvalidInput, match="BERTH_REGISTRY_LISTEN"):
        RegistryServer(Settings(home=registries.root, registry_listen="0.0.0.0:5000"))


def test_a_push_to_a_registry_that_is_down_is_a_clear_runtime_failure(
    client: Any, registries: Registries
) -> None:
    server = registries.new()  # never started
    image_id = client.api.inspect_image(BUSYBOX)["Id"]
    with pytest.raises(RuntimeFailure, match=r"refused|connect"):
        push_image(client, server.address, image_id, repository_for("0a", "web"))


def test_with_auth_only_berths_account_reads_or_writes(client: Any, registries: Registries) -> None:
    """What a registry listening beyond loopback (a swarm) runs with: htpasswd."""
    server = registries.new(auth="on")
    server.ensure_running()
    credentials = server.credentials
    assert credentials is not None
    assert (server.dir / "credentials").stat().st_mode & 0o077 == 0
    repo = repository_for(secrets.token_hex(8), "web")
    image_id = registries.build(BUSYBOX, {"s.txt": b"secret\n"}, {})

    with pytest.raises(RuntimeFailure, match=r"no basic auth credentials|unauthorized"):
        push_image(client, server.address, image_id, repo)
    pushed = push_image(client, server.address, image_id, repo, auth_config=server.auth_config)

    with httpx.Client(timeout=5, trust_env=False) as anonymous:
        for path in ("/v2/", "/v2/_catalog", f"/v2/{repo}/manifests/{pushed.digest}"):
            assert anonymous.get(f"{server.url}{path}").status_code == 401, path
        wrong = anonymous.get(f"{server.url}/v2/", auth=(credentials.username, "guess"))
        assert wrong.status_code == 401
    # GC and supervision use the account: a collection with everything kept changes nothing.
    report = collect_registry(server, [pushed.reference], grace_seconds=0)
    assert [m.digest for m in report.kept] == [pushed.digest] and report.deleted == ()
    for name in client.api.inspect_image(image_id)["RepoTags"]:
        client.api.remove_image(name)
    repository, _, digest = pushed.reference.partition("@")
    client.api.pull(repository, tag=digest, auth_config=server.auth_config)
    assert client.api.inspect_image(pushed.reference)["Id"] == image_id


# -- garbage collection ----------------------------------------------------------------------


def test_gc_deletes_the_unkept_images_and_keeps_the_kept_one(
    client: Any, registries: Registries
) -> None:
    server = registries.new()
    server.ensure_running()
    tenant = secrets.token_hex(8)
    web, api = repository_for(tenant, "web"), repository_for(tenant, "api")
    base = registries.build(BUSYBOX, {"a.txt": b"a\n"}, {})
    kept_id = registries.build(base, {"b.txt": b"b\n"}, {})
    big_id = registries.build(BUSYBOX, {"big.bin": os.urandom(2 * 1024 * 1024)}, {})
    old = push_image(client, server.address, base, web)
    kept = push_image(client, server.address, kept_id, web)
    big = push_image(client, server.address, big_id, api)

    report = collect_registry(server, [kept.reference], grace_seconds=0)

    assert {(m.repository, m.digest) for m in report.deleted} == {
        (web, old.digest),
        (api, big.digest),
    }
    assert [(m.repository, m.digest) for m in report.kept] == [(web, kept.digest)]
    assert report.bytes_freed >= 2 * 1024 * 1024  # the random layer's blob is gone
    print(f"\nregistry GC freed {report.bytes_freed} bytes")
    assert head_manifest(server, web, kept.digest) == 200
    assert head_manifest(server, web, old.digest) == 404
    assert head_manifest(server, api, big.digest) == 404
    # Pulls: the kept one still works after the collection (its shared layers survived)...
    client.api.remove_image(kept.reference)
    assert pull(client, kept.reference) == kept_id
    # ... the deleted one does not.
    with pytest.raises(docker.errors.NotFound):
        client.api.pull(f"{server.address}/{api}", tag=big.digest)
    # The registry serves read-write again, and a deleted layer is uploaded anew, not
    # skipped on the word of a stale cache.
    again = push_image(client, server.address, big_id, api)
    assert again.layers_pushed >= 1
    assert head_manifest(server, api, again.digest) == 200


def test_gc_keeps_a_manifest_pushed_within_the_grace(client: Any, registries: Registries) -> None:
    server = registries.new()
    server.ensure_running()
    repo = repository_for(secrets.token_hex(8), "web")
    image_id = registries.build(BUSYBOX, {"y.txt": b"young\n"}, {})
    young = push_image(client, server.address, image_id, repo)

    report = collect_registry(server, [], grace_seconds=3600)

    assert report.deleted == ()
    assert [m.digest for m in report.young] == [young.digest]
    assert head_manifest(server, repo, young.digest) == 200


def test_node_gc_removes_this_installations_unkept_images_only(
    client: Any, registries: Registries
) -> None:
    server = registries.new()
    server.ensure_running()
    installation = f"t{secrets.token_hex(6)}"
    ours = {LABEL_BUILD_INSTALLATION: installation}
    repo = repository_for(secrets.token_hex(8), "web")
    parent = registries.build(BUSYBOX, {"p.txt": b"p\n"}, ours)
    kept_id = registries.build(parent, {"k.txt": b"k\n"}, ours)
    unkept_id = registries.build(BUSYBOX, {"u.txt": os.urandom(4096)}, ours)
    foreign_id = registries.build(BUSYBOX, {"f.txt": b"f\n"}, {LABEL_BUILD_INSTALLATION: "other"})
    kept = push_image(client, server.address, kept_id, repo)
    push_image(client, server.address, parent, repo)
    push_image(client, server.address, unkept_id, repo)

    report = collect_node_images(
        client,
        installation=installation,
        registry_address=server.address,
        keep_references=[kept.reference],
        keep_image_ids=[],
        grace_seconds=0,
    )

    assert unkept_id in report.removed
    with pytest.raises(docker.errors.ImageNotFound):
        client.api.inspect_image(unkept_id)
    # The parent of a kept image: its names go, the engine keeps its layers for the child.
    assert parent in report.skipped
    assert not client.api.inspect_image(parent)["RepoTags"]
    assert client.api.inspect_image(kept_id)["Id"] == kept_id
    assert client.api.inspect_image(foreign_id)["Id"] == foreign_id
    assert client.api.inspect_image(BUSYBOX)["Id"]


# -- supervision -----------------------------------------------------------------------------


def test_ensure_running_restarts_a_dead_registry_and_adopts_a_live_one(
    registries: Registries,
) -> None:
    server = registries.new()
    first = server.ensure_running()
    assert server.ensure_running() == first  # running: left alone

    # A new manager on the same directory (a restarted Berth) adopts it.
    adopted = RegistryServer(Settings(home=server.dir.parent, registry_listen=server.address))
    assert adopted.ensure_running() == first and adopted.start_count == 0

    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not server.is_running())
    second = server.ensure_running()
    assert second != first
    with httpx.Client(timeout=5, trust_env=False) as http:
        assert http.get(f"{server.url}/v2/").status_code == 200

    server.stop()
    assert not server.is_running()
    assert not adopted.is_running()


def test_a_registry_left_read_only_by_a_killed_server_is_restarted_read_write(
    client: Any, registries: Registries
) -> None:
    server = registries.new()
    server.set_read_only(True)
    image_id = registries.build(BUSYBOX, {"r.txt": b"r\n"}, {})
    repo = repository_for(secrets.token_hex(8), "web")
    with pytest.raises(RegistryReadOnly, match="read-only while it collects garbage"):
        push_image(client, server.address, image_id, repo, read_only_wait=0)

    restarted = RegistryServer(Settings(home=server.dir.parent, registry_listen=server.address))
    restarted.ensure_running()
    assert restarted.start_count == 1  # its config differed: restarted read-write
    assert push_image(client, server.address, image_id, repo).layers_pushed == 2


def test_a_push_during_a_collection_waits_for_it_and_succeeds(
    client: Any, registries: Registries
) -> None:
    server = registries.new()
    server.set_read_only(True)  # as RegistryServer.garbage_collect does while it runs
    image_id = registries.build(BUSYBOX, {"w.txt": b"w\n"}, {})
    repo = repository_for(secrets.token_hex(8), "web")
    outcome: list[PushedImage | BaseException] = []

    def pusher() -> None:
        try:
            outcome.append(push_image(client, server.address, image_id, repo, read_only_wait=60))
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=pusher)
    thread.start()
    try:
        time.sleep(1.5)  # the push meets the read-only registry at least once
        server.set_read_only(False)
    finally:
        thread.join(timeout=90)
    assert len(outcome) == 1 and isinstance(outcome[0], PushedImage), outcome
    assert head_manifest(server, repo, outcome[0].digest) == 200


def test_start_failures_are_clear(registries: Registries) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = registries.new(port=taken.getsockname()[1])
        with pytest.raises(RegistryError, match="address already in use"):
            server.ensure_running()
    assert not server.is_running()

    missing = RegistryServer(
        Settings(
            home=registries.root / "missing",
            registry_listen=f"127.0.0.1:{free_port()}",
            registry_binary="/nonexistent/docker-registry",
        )
    )
    with pytest.raises(RegistryError, match="cannot run"):
        missing.ensure_running()


# -- not reachable from tenants --------------------------------------------------------------


class Control:
    """A server on the test network's gateway: proves the container reaches the host at all."""

    def __init__(self, host: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True)
    return [line.split()[3].split("/")[0] for line in out.stdout.splitlines()]


def test_a_container_on_a_tenant_bridge_cannot_reach_the_registry(
    client: Any, registries: Registries
) -> None:
    server = registries.new()
    server.ensure_running()
    tag = secrets.token_hex(4)
    # Like a tenant network of DockerRuntime: a user-defined bridge with icc on.
    network = client.networks.create(
        f"berth-t-regtest{tag}",
        driver="bridge",
        options={"com.docker.network.bridge.enable_icc": "true"},
    )
    control: Control | None = None
    container = None
    try:
        gateway = client.api.inspect_network(network.id)["IPAM"]["Config"][0]["Gateway"]
        control = Control(gateway)
        port = server.listen.port
        # Every address of the host (the gateway among them once the network exists) and the
        # container's own loopback, at the registry's port.
        targets = sorted({*host_addresses(), gateway, "127.0.0.1"})
        # busybox's static wget crashes on this kernel: probe with Python, a GET of /v2/.
        probe = (
            "import socket, sys\n"
            "for target in sys.argv[1:]:\n"
            "    host, port = target.rsplit(':', 1)\n"
            "    try:\n"
            "        s = socket.create_connection((host, int(port)), timeout=3)\n"
            "        s.sendall(b'GET /v2/ HTTP/1.0\\r\\n\\r\\n')\n"
            "        answer = s.recv(12)\n"
            "        s.close()\n"
            "        print('open' if answer.startswith(b'HTTP/') else 'closed', target)\n"
            "    except OSError as exc:\n"
            "        print('closed', target)\n"
        )
        argv = [f"{t}:{port}" for t in targets] + [f"{gateway}:{control.port}"]
        container = client.containers.run(
            PYTHON,
            ["python3", "-c", probe, *argv],
            network=network.name,
            detach=True,
            name=f"berth-regtest-{tag}",
        )
        container.wait(timeout=120)
        lines = container.logs().decode().split("\n")
        results = dict(line.split(" ", 1)[::-1] for line in lines if line)
        assert results[f"{gateway}:{control.port}"] == "open", results  # the path works
        for t in targets:
            assert results[f"{t}:{port}"] == "closed", results
        # Berth itself reaches it.
        with httpx.Client(timeout=5, trust_env=False) as http:
            assert http.get(f"{server.url}/v2/").status_code == 200
    finally:
        if container is not None:
            container.remove(force=True)
        if control is not None:
            control.close()
        network.remove()


# -- figures ---------------------------------------------------------------------------------


def test_push_times_of_the_python_base_and_a_small_app_on_top(
    client: Any, registries: Registries
) -> None:
    """Measured, printed, not asserted: a cold registry, berth/python:3, then an app image."""
    server = registries.new()
    server.ensure_running()
    tenant = secrets.token_hex(8)
    base_id = client.api.inspect_image(PYTHON)["Id"]
    app_id = registries.build(PYTHON, {"app.py": b"print('hello')\n" * 100}, {})

    base: PushedImage = push_image(client, server.address, base_id, repository_for(tenant, "py"))
    app = push_image(client, server.address, app_id, repository_for(tenant, "app"))

    size = client.api.inspect_image(PYTHON)["Size"]
    print(
        f"\npush {PYTHON} ({size / 1e6:.0f} MB): {base.seconds:.2f} s, "
        f"{base.layers_pushed} pushed; app on top: {app.seconds:.2f} s, "
        f"{app.layers_pushed} pushed, {app.layers_existing} already there"
    )
    assert (app.layers_pushed, app.layers_existing) == (1, base.layers_pushed)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
