"""The ``berth/memcached`` image, made offline from the host's .debs: its tree keeps the base's
merged /usr (no top-level lib/ or bin/ directory that would shadow the base's symlinks and with
them the dynamic loader), the binary links nothing missing, it runs as nobody on a read-only
root with no network and no capability, and making it again builds nothing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from berth.images import deb_image
from berth.images.__main__ import main as images_main
from berth.images.memcached_image import BINARY, RECIPE, ensure_memcached_image

CACHE = Path(os.environ.get("BERTH_CACHE_DIR", "/var/cache/berth"))

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    made = docker.from_env()
    yield made
    made.close()


def test_the_tree_keeps_the_bases_merged_usr(tmp_path: Path) -> None:
    debs = deb_image.download_debs(CACHE, RECIPE)
    assert sorted(d.name.split("_")[0] for d in debs) == sorted(RECIPE.packages)
    root = tmp_path / "rootfs"
    root.mkdir()
    deb_image.make_rootfs(root, RECIPE, debs, {})
    assert sorted(p.name for p in root.iterdir()) == ["usr"]
    assert (root / BINARY.lstrip("/")).is_file()
    assert not (root / "usr/share/memcached").exists()  # perl scripts: no perl in the image


def _run(client: docker.DockerClient, image: str, *argv: str, entrypoint: str = "") -> str:
    container = client.containers.create(
        image,
        command=list(argv),
        entrypoint=[entrypoint] if entrypoint else None,
        user="65534:65534",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        network_mode="none",
        labels={"berth.test": "memcached-image"},
    )
    try:
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs().decode()
        return str(container.logs().decode())
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


def test_it_runs_as_nobody_with_nothing_missing(client: docker.DockerClient) -> None:
    image = ensure_memcached_image(client, CACHE)
    assert _run(client, image.tag, "-V").startswith("memcached 1.6")
    linked = _run(client, image.tag, BINARY, entrypoint="/usr/bin/ldd")
    assert "libevent-2.1.so.7" in linked and "not found" not in linked


def test_making_it_again_builds_nothing(client: docker.DockerClient) -> None:
    first = ensure_memcached_image(client, CACHE)
    again = ensure_memcached_image(client, CACHE)
    assert (again.tag, again.image_id, again.built) == (first.tag, first.image_id, False)
    assert images_main(["--only", "memcached", "--cache-dir", str(CACHE)]) == 0
    assert client.images.get(first.tag).id == first.image_id
