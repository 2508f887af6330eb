"""Tenants' builds cannot see each other: images, cache, network (real engine).

Tenant B builds something secret; tenant A tries every way in: image ids and prefixes,
``berth-app/<B's app>``, ``COPY --from``, an identical Dockerfile (the cache), and B's RUN
container's address. Nothing of B's reaches A, and A's errors look like a missing image.
"""

from __future__ import annotations

import re
import secrets
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest

from berth.builds.image_config import LABEL_BUILD_STEP
from berth.builds.protocol import BuildEvent
from berth.runtime.protocol import LABEL_TENANT
from tests.integration.test_builds_images import (
    BUSYBOX,
    BuildWorld,
    client,
    dockerfile_context,
    done_image,
    log_text,
    world,
)

__all__ = ["client", "world"]  # fixtures, shared with the other build tests


def all_text(events: list[BuildEvent]) -> str:
    return "\n".join(e.text for e in events)


def assert_refused_before_any_step(events: list[BuildEvent], secret: str) -> str:
    assert events[-1].kind == "error", all_text(events)
    assert "Running in" not in all_text(events)
    assert secret not in all_text(events)
    return events[-1].text


@pytest.fixture
def tenant_b_image(world: BuildWorld, tmp_path: Path) -> tuple[str, str, str]:
    """(B's tenant id, B's image tag, the secret inside it)."""
    secret = secrets.token_hex(16)
    tenant = world.tenant()
    context = dockerfile_context(tmp_path, f"FROM {BUSYBOX}\nCOPY secret /secret\n", secret=secret)
    tag = f"berth-app/bee-{uuid.uuid4().hex[:8]}:v1"
    done_image(world.build(context, tenant, tag=tag))
    return tenant, tag, secret


@pytest.mark.docker
def test_other_tenants_images_are_refused_by_id_prefix_and_name(
    world: BuildWorld, tmp_path: Path, tenant_b_image: tuple[str, str, str]
) -> None:
    _b, tag, secret = tenant_b_image
    image_id = world.client.api.inspect_image(tag)["Id"]
    digest = image_id.removeprefix("sha256:")
    a = world.tenant()
    attempts = {
        "FROM " + digest[:2]: "image ids are not accepted",
        "FROM " + digest[:12]: "image ids are not accepted",
        "FROM " + image_id: "image ids are not accepted",
        "FROM " + tag: "is not on this machine",
    }
    for line, expected in attempts.items():
        context = dockerfile_context(tmp_path, f"{line}\nRUN cat /secret\n")
        text = assert_refused_before_any_step(world.build(context, a), secret)
        assert expected in text, text
    # COPY --from another tenant's image: refused before the RUN, like a missing image.
    for source in (tag, digest[:3], image_id):
        context = dockerfile_context(
            tmp_path, f"FROM {BUSYBOX}\nCOPY --from={source} /secret /stolen\nRUN cat /stolen\n"
        )
        assert_refused_before_any_step(world.build(context, a), secret)
    # The owner may use it.
    context = dockerfile_context(tmp_path, f"FROM {tag}\nRUN cat /secret\n")
    assert secret in log_text(world.build(context, tenant_b_image[0]))


@pytest.mark.docker
def test_another_tenants_image_reads_like_a_missing_one(
    world: BuildWorld, tmp_path: Path, tenant_b_image: tuple[str, str, str]
) -> None:
    _b, tag, _secret = tenant_b_image
    missing_tag = tag.rsplit(":", 1)[0] + ":v9"
    a = world.tenant()
    theirs = world.build(dockerfile_context(tmp_path, f"FROM {tag}\n"), a)[-1].text
    missing = world.build(dockerfile_context(tmp_path, f"FROM {missing_tag}\n"), a)[-1].text
    assert theirs.replace(tag, "X") == missing.replace(missing_tag, "X")


@pytest.mark.docker
@pytest.mark.parametrize(
    "base", ["ubuntu", "alpine:3", "missing/thing", "docker.io/library/busybox"]
)
def test_foreign_bases_are_refused_without_host_details(
    world: BuildWorld, tmp_path: Path, base: str
) -> None:
    events = world.build(dockerfile_context(tmp_path, f"FROM {base}\n"), world.tenant())
    text = events[-1].text
    assert events[-1].kind == "error"
    assert "berth/<name>" in text and "berth-app/<app>" in text
    for host_detail in ("/var/", "/run/", "unix://", "docker.sock", "127.0.0.", "registry-1"):
        assert host_detail not in text


@pytest.mark.docker
def test_missing_base_lists_the_base_images(world: BuildWorld, tmp_path: Path) -> None:
    events = world.build(dockerfile_context(tmp_path, "FROM berth/nothing-here\n"), world.tenant())
    text = events[-1].text
    assert "'berth/nothing-here' is not on this machine" in text
    assert "berth/busybox:latest" in text and "berth/python:latest" in text


@pytest.mark.docker
def test_from_a_base_without_tag_means_latest(world: BuildWorld, tmp_path: Path) -> None:
    context = dockerfile_context(tmp_path, "FROM berth/python\nRUN python3 -c 'print(6*7)'\n")
    events = world.build(context, world.tenant())
    done_image(events)
    assert "42" in log_text(events).splitlines()


@pytest.mark.docker
def test_the_cache_is_per_tenant(world: BuildWorld, tmp_path: Path) -> None:
    dockerfile = (
        f"FROM {BUSYBOX}\nRUN head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /secret\n"
    )
    b, a = world.tenant(), world.tenant()
    b_tag = f"berth-app/b-{uuid.uuid4().hex[:8]}:v1"
    a_tag = f"berth-app/a-{uuid.uuid4().hex[:8]}:v1"
    b_first = world.build(dockerfile_context(tmp_path, dockerfile), b, tag=b_tag)
    done_image(b_first)
    a_build = world.build(dockerfile_context(tmp_path, dockerfile), a, tag=a_tag)
    done_image(a_build)
    assert "Using cache" not in log_text(a_build)

    def secret_of(tag: str) -> str:
        context = dockerfile_context(tmp_path, f"FROM {tag}\nRUN cat /secret\n")
        owner = b if tag == b_tag else a
        lines = log_text(world.build(context, owner)).splitlines()
        return next(line for line in lines if re.fullmatch(r"[0-9a-f]{32}", line))

    assert secret_of(a_tag) != secret_of(b_tag)
    b_again = world.build(dockerfile_context(tmp_path, dockerfile), b, tag=b_tag)
    assert "Using cache" in log_text(b_again)


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_run_cannot_reach_another_tenants_run(world: BuildWorld, tmp_path: Path) -> None:
    b, a = world.tenant(), world.tenant()
    b_context = dockerfile_context(
        tmp_path,
        f"FROM {BUSYBOX}\n"
        "RUN mkdir /w && echo from-b > /w/index.html "
        "&& (httpd -f -p 8080 -h /w & sleep 12; kill %1) ; echo b-done\n",
    )
    results: list[list[BuildEvent]] = []
    thread = threading.Thread(target=lambda: results.append(world.build(b_context, b)))
    thread.start()
    try:
        address = wait_for_address(world, b)
        # Positive control: B's server answers (from the host, to a container we made).
        answer = wait_for_http(f"http://{address}:8080/")
        assert answer == b"from-b\n"
        # busybox's static wget crashes; nc speaks enough HTTP.
        a_context = dockerfile_context(
            tmp_path,
            f"FROM {BUSYBOX}\n"
            f"RUN printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {address} 8080; echo nc-exit-$?\n",
        )
        a_output = step_output(world.build(a_context, a))
    finally:
        thread.join(60)
    assert "from-b" not in a_output and "200 OK" not in a_output
    assert "nc-exit-1" in a_output, a_output
    assert results and "b-done" in step_output(results[0])


def step_output(events: list[BuildEvent]) -> str:
    """What the steps printed (not the builder's own Step/---> lines)."""
    lines = log_text(events).splitlines()
    return "\n".join(line for line in lines if not line.startswith(("Step ", " --->")))


def wait_for_http(url: str, timeout: float = 20.0) -> bytes:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as answer:
                return bytes(answer.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_for_address(world: BuildWorld, tenant: str, timeout: float = 30.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    labels = [f"{LABEL_BUILD_STEP}={world.installation}", f"{LABEL_TENANT}={tenant}"]
    while time.monotonic() < deadline:
        for summary in world.client.api.containers(filters={"label": labels}):
            networks = summary["NetworkSettings"]["Networks"]
            for net in networks.values():
                if net.get("IPAddress"):
                    return str(net["IPAddress"])
        time.sleep(0.1)
    raise AssertionError("tenant B's RUN container never got an address")
