"""The end-to-end harness cleans up after itself, even after a crash, and only its own things:
a server that was killed mid-flight leaves no container, network, built image, nginx process or
state directory behind, and another installation's containers are not touched."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import uuid

import docker.errors
import pytest

from tests.harness import BUSYBOX_APP, BerthServer, docker_client, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.nginx]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_cleanup_after_a_crash_removes_everything_it_made(real_platform: None) -> None:
    client = docker_client()
    decoy_installation = f"decoy-{uuid.uuid4().hex[:8]}"
    decoy = client.containers.run(
        "berth/busybox:latest",
        ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
        detach=True,
        labels={"berth.managed": "true", "berth.installation": decoy_installation},
    )
    server = BerthServer()
    try:
        server.start()
        server.create_app("mess")
        server.cli_ok("scale", "mess", "2")
        server.deploy_dir("mess", BUSYBOX_APP)
        server.wait_converged("mess", 2)
        assert server.built_images() and server.networks()
        # Crash both the server and nginx's master: the workers are orphaned but keep serving.
        server.stop(signal.SIGKILL)
        os.kill(int((server.home / "nginx" / "nginx.pid").read_text()), signal.SIGKILL)
        wait_until(lambda: server.app_body("mess"), 10, "orphaned nginx workers still serve")
        installation = server.installation
    finally:
        server.cleanup()
    try:
        owned = {"label": f"berth.installation={installation}"}
        assert client.containers.list(all=True, filters=owned) == []
        assert client.networks.list(filters=owned) == []
        built = {"label": f"berth.build.installation={installation}"}
        assert client.images.list(all=True, filters=built) == []
        assert not server._nginx_pids()
        assert not _listening(server.ingress_port)
        assert not _listening(server.api_port)
        assert not server.root.exists()
        decoy.reload()
        assert decoy.status == "running", "another installation's container was touched"
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            decoy.remove(force=True)
        client.close()


def test_cleanup_is_safe_before_start_and_twice(real_platform: None) -> None:
    server = BerthServer()
    server.cleanup()
    server.cleanup()
    assert not server.root.exists()
