"""Hostile RUN steps against the real engine: every limit holds and the log names it.

Each attack is bounded (a 64-process limit, a 128 MiB memory limit, a 32 MiB disk limit,
seconds of wall time), and every build runs under a unique installation id whose images,
containers and networks the ``world`` fixture removes, whatever happens.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from berth.builds.image_config import LABEL_BUILD_STEP
from berth.builds.leftovers import sweep_leftovers
from berth.builds.protocol import BuildLimits, BuildRequest
from berth.runtime.protocol import KEPT_CAPABILITIES
from tests.integration.test_builds_images import (
    BUSYBOX,
    LABELS,
    SMALL,
    BuildWorld,
    client,
    dockerfile_context,
    done_image,
    http_get,
    log_text,
    world,
)

__all__ = ["client", "world"]  # fixtures, shared with the other build tests

CAP_NUMBERS = {"CHOWN": 0, "SETGID": 6, "SETUID": 7, "NET_BIND_SERVICE": 10}


def kept_mask() -> int:
    return sum(1 << CAP_NUMBERS[name] for name in KEPT_CAPABILITIES)


def error_text(events: list) -> str:  # type: ignore[type-arg]
    assert events[-1].kind == "error", log_text(events)
    return str(events[-1].text)


@pytest.mark.docker
def test_run_has_the_capabilities_of_an_app_and_no_new_privileges(
    world: BuildWorld, tmp_path: Path
) -> None:
    context = dockerfile_context(
        tmp_path,
        f"FROM {BUSYBOX}\nRUN grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs)' /proc/self/status\n",
    )
    text = log_text(world.build(context, world.tenant()))
    fields = dict(line.split(":\t") for line in text.splitlines() if ":\t" in line)
    assert int(fields["CapEff"], 16) == kept_mask()
    assert int(fields["CapBnd"], 16) == kept_mask()
    assert not int(fields["CapEff"], 16) & (1 << 13)  # NET_RAW
    assert not int(fields["CapEff"], 16) & (1 << 27)  # MKNOD
    assert fields["NoNewPrivs"].strip() == "1"


@pytest.fixture
def bystander(world: BuildWorld) -> Iterator[str]:
    """Another tenant's 'app': a busybox httpd on loopback; yields its host port."""
    api = world.client.api
    container = api.create_container(
        BUSYBOX,
        command=["sh", "-c", "echo alive > /tmp/index.html && httpd -f -p 8080 -h /tmp"],
        labels=LABELS,
        name=f"berth-test-bystander-{uuid.uuid4().hex[:8]}",
        ports=[8080],
        host_config=api.create_host_config(port_bindings={8080: ("127.0.0.1", None)}),
    )
    try:
        api.start(container["Id"])
        port = api.inspect_container(container["Id"])["NetworkSettings"]["Ports"]["8080/tcp"]
        yield str(port[0]["HostPort"])
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(container["Id"], force=True)


class PidsWatcher:
    """The highest pids.current seen in any build container of the installation."""

    def __init__(self, world: BuildWorld) -> None:
        self.world = world
        self.highest = 0
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PidsWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for container in self.world.build_containers():
                path = Path(f"/sys/fs/cgroup/pids/docker/{container['Id']}/pids.current")
                with contextlib.suppress(OSError, ValueError):
                    self.highest = max(self.highest, int(path.read_text()))
                    self.seen += 1
            time.sleep(0.05)


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_fork_bomb_is_contained_and_named(
    world: BuildWorld, tmp_path: Path, bystander: str
) -> None:
    # Bounded: 300 sleepers at most, each gone after 20 s; the pids limit is 64.
    context = dockerfile_context(
        tmp_path,
        f"FROM {BUSYBOX}\nRUN i=0; while [ $i -lt 300 ]; do sleep 20 & i=$((i+1)); done; wait\n",
    )
    limits = BuildLimits(memory_mb=256, pids=64, disk_mb=64, timeout_seconds=60)
    with PidsWatcher(world) as watcher:
        events = world.build(context, world.tenant(), limits=limits)
    text = error_text(events)
    assert "hit the process limit of 64" in text, text
    assert "step 2 (RUN" in text
    assert watcher.seen > 0, "the watcher never saw the build container"
    assert watcher.highest <= 64
    assert http_get(bystander, "/") == "alive\n"
    assert world.build_containers() == []


@pytest.mark.docker
@pytest.mark.timeout(180)
def test_memory_bomb_is_oom_killed_and_named(
    world: BuildWorld, tmp_path: Path, bystander: str
) -> None:
    # Doubling a string to 512 MiB under a 128 MiB limit (no swap).
    context = dockerfile_context(
        tmp_path,
        f"FROM {BUSYBOX}\n"
        "RUN awk 'BEGIN { s = \"x\"; while (length(s) < 536870912) s = s s; print length(s) }'\n",
    )
    limits = BuildLimits(memory_mb=128, pids=64, disk_mb=64, timeout_seconds=60)
    text = error_text(world.build(context, world.tenant(), limits=limits))
    assert "was killed for using more than 128 MiB of memory (the build memory limit)" in text
    assert http_get(bystander, "/") == "alive\n"
    assert world.build_containers() == []


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_a_step_past_the_build_deadline_is_stopped(world: BuildWorld, tmp_path: Path) -> None:
    context = dockerfile_context(tmp_path, f"FROM {BUSYBOX}\nRUN echo started; sleep 120\n")
    limits = BuildLimits(memory_mb=128, pids=64, disk_mb=64, timeout_seconds=4)
    events = world.build(context, world.tenant(), limits=limits)
    text = error_text(events)
    assert "was stopped at the build time limit of 4 s" in text
    assert "started" in log_text(events)
    assert world.build_containers() == []


@pytest.mark.docker
@pytest.mark.timeout(120)
def test_writing_past_the_disk_limit_is_stopped(world: BuildWorld, tmp_path: Path) -> None:
    # 8 MiB every 0.3 s, 30 times at most (240 MiB), against a 32 MiB limit.
    context = dockerfile_context(
        tmp_path,
        f"FROM {BUSYBOX}\n"
        "RUN i=0; while [ $i -lt 30 ]; do "
        "dd if=/dev/zero of=/fill.$i bs=1048576 count=8 2>/dev/null; sleep 0.3; i=$((i+1)); done\n",
    )
    limits = BuildLimits(memory_mb=128, pids=64, disk_mb=32, timeout_seconds=60)
    text = error_text(world.build(context, world.tenant(), limits=limits))
    assert "more than 32 MiB (the build disk limit)" in text
    assert world.build_containers() == []


@pytest.mark.docker
def test_copy_past_the_disk_limit_is_refused(world: BuildWorld, tmp_path: Path) -> None:
    context = dockerfile_context(tmp_path, f"FROM {BUSYBOX}\nCOPY big /big\n")
    (context / "big").write_bytes(b"\0" * (17 * 1024 * 1024))
    limits = BuildLimits(memory_mb=128, pids=64, disk_mb=16, timeout_seconds=60)
    text = error_text(world.build(context, world.tenant(), limits=limits))
    assert "would write more than 16 MiB (the build disk limit)" in text


@pytest.mark.docker
def test_output_is_capped(world: BuildWorld, tmp_path: Path) -> None:
    context = dockerfile_context(
        tmp_path,
        f"FROM {BUSYBOX}\nRUN i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done\n",
    )
    limits = BuildLimits(memory_mb=128, pids=64, disk_mb=64, log_max_bytes=4096)
    events = world.build(context, world.tenant(), limits=limits)
    done_image(events)
    text = log_text(events)
    assert text.count("output truncated (more than 4096 bytes)") == 1
    assert "line-2999" not in text
    assert len(text) < 8192


@pytest.mark.docker
def test_closing_the_stream_mid_step_removes_the_container(
    world: BuildWorld, tmp_path: Path
) -> None:
    context = dockerfile_context(tmp_path, f"FROM {BUSYBOX}\nRUN echo running; sleep 60\n")
    tenant = world.tenant()
    request = BuildRequest(
        context, f"berth-app/gone-{uuid.uuid4().hex[:8]}:x", {}, tenant, limits=SMALL
    )
    events = world.builder.build(request)
    world.tenants.add(tenant)
    for event in events:
        if event.text == "running":
            break
    assert len(world.build_containers()) == 1
    events.close()  # type: ignore[attr-defined]
    assert world.build_containers() == []


@pytest.mark.docker
def test_sweep_removes_only_this_installations_build_containers_and_dirs(
    world: BuildWorld, tmp_path: Path
) -> None:
    api = world.client.api
    ours = api.create_container(
        BUSYBOX,
        command=["true"],
        labels={**LABELS, LABEL_BUILD_STEP: world.installation},
        name=f"berth-test-leftover-{uuid.uuid4().hex[:8]}",
    )
    other = api.create_container(
        BUSYBOX,
        command=["true"],
        labels={**LABELS, LABEL_BUILD_STEP: "another-installation"},
        name=f"berth-test-leftover-{uuid.uuid4().hex[:8]}",
    )
    builds_dir = tmp_path / "builds"
    (builds_dir / "build-abc" / "context" / "deep").mkdir(parents=True)
    (builds_dir / "build-abc" / "context" / "deep" / "f").write_text("x")
    try:
        assert sweep_leftovers(api, world.installation, builds_dir) == (1, 1)
        assert world.build_containers() == []
        assert api.inspect_container(other["Id"])["Id"] == other["Id"]
        assert list(builds_dir.iterdir()) == []
    finally:
        for container in (ours, other):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container["Id"], force=True)


@pytest.mark.docker
def test_no_step_runs_when_the_build_network_cannot_be_filtered(
    world: BuildWorld, tmp_path: Path
) -> None:
    def refuse(network: str) -> None:
        raise RuntimeError(f"no rules for {network}")

    world.builder.network_ready = refuse
    context = dockerfile_context(tmp_path, f"FROM {BUSYBOX}\nRUN echo must-not-run\n")
    events = world.build(context, world.tenant())
    assert events[-1].kind == "error"
    assert "could not be secured" in events[-1].text
    # The command never ran: its output line is nowhere (the step's own line names it).
    assert "must-not-run" not in [e.text for e in events if e.kind == "log"]
    assert "\nmust-not-run\n" not in f"\n{events[-1].text}\n"
    assert "no rules for" not in events[-1].text
    assert world.build_containers() == []
