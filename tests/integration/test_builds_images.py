"""Base image bootstrap and image builds (Berth's own builder) against the real Docker Engine.

Every image and container made here carries a unique name or a unique installation id and is
removed at the end, except ``berth/python:3`` (and its ``latest`` tag), created only when
missing: it is the platform's real base image, and keeping it saves the next run a debootstrap.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from berth.builds.context import extract_context, pack_directory
from berth.builds.engine_builder import EngineBuilder, build_network_name
from berth.builds.image_config import LABEL_BUILD_STEP
from berth.builds.image_policy import LABEL_BUILD_INSTALLATION
from berth.builds.protocol import BuildEvent, BuildLimits, BuildRequest
from berth.errors import EngineError
from berth.images.bootstrap import (
    AptSource,
    bootstrap_busybox,
    bootstrap_python,
    debootstrap_command,
    existing_image_id,
    find_debian_mirror,
    parse_deb822_sources,
    parse_one_line_sources,
)
from berth.runtime.subnets import DEFAULT_NETWORK_POOL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LABELS = {"berth.managed": "true", "berth.test": "test_builds_images"}
BUSYBOX = "berth/busybox:latest"
SMALL = BuildLimits(memory_mb=256, cpus=1.0, pids=128, disk_mb=256, timeout_seconds=120)


# --- fixtures: an engine, and a tracker that removes what a test made ------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    try:
        engine = docker.from_env()
        engine.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"these tests need the Docker Engine (make test starts it): {exc}")
    yield engine
    engine.close()


class Tracker:
    """Remembers images and containers to remove, newest first."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.images: list[str] = []
        self.containers: list[str] = []

    def image(self, ref: str) -> str:
        self.images.append(ref)
        return ref

    def cleanup(self) -> None:
        for container in reversed(self.containers):
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(container, force=True)
        for image in reversed(self.images):
            with contextlib.suppress(docker.errors.ImageNotFound):
                self.client.api.remove_image(image, force=True)


@pytest.fixture
def tracker(client: docker.DockerClient) -> Iterator[Tracker]:
    made = Tracker(client)
    yield made
    made.cleanup()


class BuildWorld:
    """Builds under one unique installation id; cleanup removes every image, build container
    and build network of that installation, whatever the test did."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.installation = f"test-{uuid.uuid4().hex[:12]}"
        self.builder = EngineBuilder(client, self.installation)
        self.tenants: set[str] = set()

    def tenant(self) -> str:
        tenant = uuid.uuid4().hex[:16]
        self.tenants.add(tenant)
        return tenant

    def build(
        self,
        context: Path,
        tenant: str,
        limits: BuildLimits = SMALL,
        tag: str | None = None,
        registry: str = "",
    ) -> list[BuildEvent]:
        self.tenants.add(tenant)
        request = BuildRequest(
            context_dir=context,
            tag=tag or f"berth-app/test-{uuid.uuid4().hex[:10]}:{uuid.uuid4().hex[:8]}",
            labels={
                LABEL_BUILD_INSTALLATION: self.installation,
                "berth.build.tenant": tenant,
                "berth.build.app": "app-id",
                **{k: v for k, v in LABELS.items() if k != "berth.managed"},
            },
            tenant_id=tenant,
            limits=limits,
            registry=registry,
        )
        return list(self.builder.build(request))

    def build_containers(self) -> list[dict[str, object]]:
        label = f"{LABEL_BUILD_STEP}={self.installation}"
        return list(self.client.api.containers(all=True, filters={"label": [label]}))

    def cleanup(self) -> None:
        api = self.client.api
        for container in self.build_containers():
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container["Id"], force=True)
        label = f"{LABEL_BUILD_INSTALLATION}={self.installation}"
        images = api.images(all=True, filters={"label": [label]})
        # Tagged first, then children before parents (newest first).
        for image in sorted(images, key=lambda i: (not i.get("RepoTags"), -i["Created"])):
            for tag in image.get("RepoTags") or []:
                if tag != "<none>:<none>":
                    with contextlib.suppress(docker.errors.APIError):
                        api.remove_image(tag, force=True)
        for image in sorted(images, key=lambda i: -i["Created"]):
            with contextlib.suppress(docker.errors.APIError):
                api.remove_image(image["Id"], force=True)
        for tenant in self.tenants:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_network(build_network_name(tenant))


@pytest.fixture
def world(client: docker.DockerClient) -> Iterator[BuildWorld]:
    made = BuildWorld(client)
    yield made
    made.cleanup()


def dockerfile_context(tmp_path: Path, text: str, **files: str) -> Path:
    context = tmp_path / f"ctx-{uuid.uuid4().hex[:8]}"
    context.mkdir()
    (context / "Dockerfile").write_text(text)
    for name, content in files.items():
        (context / name).write_text(content)
    return context


def run_once(client: docker.DockerClient, tracker: Tracker, image: str, command: list[str]) -> str:
    """Run ``command`` in a fresh container of ``image``; its output (the container is removed)."""
    container = client.containers.create(image, command, labels=LABELS)
    tracker.containers.append(container.id)
    container.start()
    status = container.wait(timeout=60)
    output: bytes = container.logs()
    assert status["StatusCode"] == 0, output
    return output.decode()


def http_get(port: str, path: str, deadline_seconds: float = 15) -> str:
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                return str(answer.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def busybox_app(tmp_path: Path) -> Path:
    """A copy of examples/busybox-app."""
    app = tmp_path / "busybox-app"
    shutil.copytree(EXAMPLES / "busybox-app", app)
    return app


def log_text(events: list[BuildEvent]) -> str:
    return "\n".join(e.text for e in events if e.kind == "log")


def done_image(events: list[BuildEvent]) -> str:
    last = events[-1]
    assert last.kind == "done", last.text
    assert last.image_id is not None
    return last.image_id


# --- busybox ---------------------------------------------------------------------------------


@pytest.mark.docker
def test_bootstrap_busybox_makes_a_runnable_image(
    client: docker.DockerClient, tracker: Tracker
) -> None:
    tag = tracker.image(f"berth-test/busybox:{uuid.uuid4().hex[:12]}")

    first = bootstrap_busybox(client, tag)
    tracker.image(first.image_id)

    assert first.action == "created"
    assert first.image_id.startswith("sha256:")
    assert first.size_bytes < 5_000_000
    output = run_once(client, tracker, tag, ["sh", "-c", "echo hello-from-busybox; id -un"])
    assert output.split() == ["hello-from-busybox", "root"]
    assert run_once(client, tracker, tag, ["cat", "/etc/passwd"]).startswith("root:x:0:0:")


@pytest.fixture(scope="module")
def busybox_base(client: docker.DockerClient) -> Iterator[str]:
    """A busybox image under a unique tag, for this module only."""
    made = Tracker(client)
    tag = made.image(f"berth-test/busybox:{uuid.uuid4().hex[:12]}")
    try:
        bootstrap_busybox(client, tag)
        yield tag
    finally:
        made.cleanup()


@pytest.mark.docker
def test_bootstrap_busybox_skips_an_existing_tag_unless_forced(
    client: docker.DockerClient, tracker: Tracker, busybox_base: str
) -> None:
    again = bootstrap_busybox(client, busybox_base)
    assert again.action == "exists"
    assert again.image_id == existing_image_id(client, busybox_base)

    tag = tracker.image(f"berth-test/busybox:{uuid.uuid4().hex[:12]}")
    tracker.image(bootstrap_busybox(client, tag).image_id)
    forced = bootstrap_busybox(client, tag, force=True)
    tracker.image(forced.image_id)
    assert forced.action == "created"


@pytest.mark.docker
def test_versioned_base_images_get_a_latest_tag_once(
    client: docker.DockerClient, tracker: Tracker
) -> None:
    from berth.images.bootstrap import tag_latest

    repository = f"berth/test-{uuid.uuid4().hex[:10]}"
    image_id = client.api.inspect_image(BUSYBOX)["Id"]
    client.api.tag(image_id, repository, "3")
    tracker.image(f"{repository}:3")
    tracker.image(f"{repository}:latest")
    said: list[str] = []

    tag_latest(client, f"{repository}:3", image_id, said.append)
    assert client.api.inspect_image(f"{repository}:latest")["Id"] == image_id
    assert said == [f"tagged {repository}:latest ({image_id[:19]})"]
    tag_latest(client, f"{repository}:3", image_id, said.append)
    assert len(said) == 1  # nothing to do the second time
    tag_latest(client, "berth-test/other:3", image_id, said.append)
    assert existing_image_id(client, "berth-test/other:latest") is None


# --- builds ---------------------------------------------------------------------------------


@pytest.mark.docker
def test_build_streams_logs_and_reuses_the_cache(world: BuildWorld, tmp_path: Path) -> None:
    # The same path an upload takes: pack on the client, extract on the server, build.
    context = tmp_path / "context"
    extract_context(pack_directory(busybox_app(tmp_path)), context, 10**7, 100)
    tenant = world.tenant()
    tag = f"berth-app/cache-{uuid.uuid4().hex[:8]}:one"

    first = world.build(context, tenant, tag=tag)

    assert [e.kind for e in first[:-1]] == ["log"] * (len(first) - 1)
    image_id = done_image(first)
    assert image_id.startswith("sha256:")
    assert "Step 1/4 : FROM berth/busybox:latest" in log_text(first)
    assert "Using cache" not in log_text(first)
    attrs = world.client.api.inspect_image(tag)
    assert attrs["Id"] == image_id
    labels = attrs["Config"]["Labels"]
    assert labels["berth.test"] == "test_builds_images"
    assert labels["berth.build.tenant"] == tenant
    # Commit would carry the build container's labels: they are blanked, never "true".
    assert labels.get("berth.managed", "") == "" and labels.get(LABEL_BUILD_STEP, "") == ""
    assert attrs["Config"]["Cmd"] == ["httpd", "-f", "-p", "8080", "-h", "/www"]
    assert list(attrs["Config"]["ExposedPorts"]) == ["8080/tcp"]

    second = world.build(context, tenant, tag=tag)
    assert "Using cache" in log_text(second)
    assert done_image(second) == image_id
    assert world.build_containers() == []


@pytest.mark.docker
def test_built_busybox_app_serves_http(
    client: docker.DockerClient, world: BuildWorld, tracker: Tracker, tmp_path: Path
) -> None:
    tag = f"berth-app/serve-{uuid.uuid4().hex[:8]}:one"
    done_image(world.build(busybox_app(tmp_path), world.tenant(), tag=tag))
    container = client.containers.run(
        tag, detach=True, ports={"8080/tcp": ("127.0.0.1", None)}, labels=LABELS
    )
    tracker.containers.append(container.id)
    container.reload()
    port = container.ports["8080/tcp"][0]["HostPort"]
    assert http_get(port, "/healthz") == "ok\n"


@pytest.mark.docker
def test_instructions_shape_the_image(
    client: docker.DockerClient, world: BuildWorld, tracker: Tracker, tmp_path: Path
) -> None:
    context = dockerfile_context(
        tmp_path,
        "ARG BASE=berth/busybox\n"
        "FROM ${BASE} AS build\n"
        "ARG GREETING=hello\n"
        'RUN mkdir -p /out && echo "$GREETING from build" > /out/greeting\n'
        "FROM berth/busybox\n"
        'ENV APP_HOME=/srv/app MODE="two words"\n'
        "WORKDIR $APP_HOME\n"
        "COPY --from=build /out/greeting ./\n"
        "COPY --chown=1000:1000 data.txt conf/\n"
        "COPY *.md docs/\n"
        "USER 1000\n"
        "LABEL org.example.name=demo\n"
        "HEALTHCHECK CMD true\n"
        "VOLUME /data\n"
        "STOPSIGNAL SIGINT\n"
        'ENTRYPOINT ["sh", "-c"]\n'
        'CMD ["cat greeting conf/data.txt docs/*.md; id -u; stat -c %u conf/data.txt; '
        'echo $MODE"]\n',
        **{"data.txt": "data\n", "a.md": "A\n", "b.md": "B\n"},
    )
    tag = f"berth-app/shape-{uuid.uuid4().hex[:8]}:one"
    events = world.build(context, world.tenant(), tag=tag)
    done_image(events)
    text = log_text(events)
    assert "HEALTHCHECK ignored" in text and "VOLUME ignored" in text
    config = client.api.inspect_image(tag)["Config"]
    assert config["WorkingDir"] == "/srv/app"
    assert config["User"] == "1000"
    assert config["StopSignal"] == "SIGINT"
    assert config["Labels"]["org.example.name"] == "demo"
    assert "GREETING" not in " ".join(config["Env"])  # build args stay out of the image
    output = run_once(client, tracker, tag, [])
    assert output.split("\n")[:7] == [
        "hello from build",
        "data",
        "A",
        "B",
        "1000",
        "1000",
        "two words",
    ]


@pytest.mark.docker
def test_copy_chown_by_name_uses_the_images_accounts(world: BuildWorld, tmp_path: Path) -> None:
    context = dockerfile_context(
        tmp_path,
        f"FROM {BUSYBOX}\n"
        "RUN echo 'app:x:1234:1234::/:/bin/sh' >> /etc/passwd && echo 'app:x:1234:' >> /etc/group\n"
        "COPY --chown=app:app f.txt /f.txt\n"
        "COPY --chown=app f.txt /g.txt\n"
        "RUN stat -c 'owner=%u:%g' /f.txt /g.txt\n",
        **{"f.txt": "x\n"},
    )
    events = world.build(context, world.tenant())
    done_image(events)
    assert log_text(events).count("owner=1234:1234") == 2
    missing = dockerfile_context(
        tmp_path, f"FROM {BUSYBOX}\nCOPY --chown=nobody-here f /f\n", f="x"
    )
    assert "no user 'nobody-here' in the image" in world.build(missing, world.tenant())[-1].text


@pytest.mark.docker
def test_output_of_quick_steps_is_never_lost(world: BuildWorld, tmp_path: Path) -> None:
    # Each step exits at once and prints no line break: its output must still arrive.
    steps = "".join(f"RUN printf %s quick-{i}-{uuid.uuid4().hex[:6]}\n" for i in range(12))
    events = world.build(dockerfile_context(tmp_path, f"FROM {BUSYBOX}\n{steps}"), world.tenant())
    done_image(events)
    printed = [line for line in log_text(events).splitlines() if line.startswith("quick-")]
    assert [line.split("-")[1] for line in printed] == [str(i) for i in range(12)]


@pytest.mark.docker
def test_a_silent_step_may_outlast_the_client_timeout(world: BuildWorld, tmp_path: Path) -> None:
    impatient = docker.from_env(version="auto", timeout=2)
    try:
        builder = EngineBuilder(impatient, world.installation)
        context = dockerfile_context(tmp_path, f"FROM {BUSYBOX}\nRUN sleep 5; echo after-silence\n")
        tenant = world.tenant()
        request = BuildRequest(context, "berth-app/silent:x", {}, tenant, limits=SMALL)
        events = list(builder.build(request))
    finally:
        impatient.close()
    done_image(events)
    assert "after-silence" in log_text(events).splitlines()


@pytest.mark.docker
def test_failing_build_yields_an_error_event_and_no_image(
    world: BuildWorld, tmp_path: Path
) -> None:
    context = dockerfile_context(tmp_path, f"FROM {BUSYBOX}\nRUN echo about-to-fail\nRUN false\n")
    tag = f"berth-app/failing-{uuid.uuid4().hex[:8]}:one"

    events = world.build(context, world.tenant(), tag=tag)

    last = events[-1]
    assert last.kind == "error" and last.image_id is None
    assert "returned a non-zero code: 1" in last.text
    assert "about-to-fail" in last.text  # the tail of the log rides along
    assert "error" not in [e.kind for e in events[:-1]]
    assert existing_image_id(world.client, tag) is None
    assert world.build_containers() == []


@pytest.mark.docker
def test_bad_dockerfile_yields_an_error_event(world: BuildWorld, tmp_path: Path) -> None:
    context = dockerfile_context(tmp_path, f"FROM {BUSYBOX}\nTHIS IS NOT AN INSTRUCTION\n")
    events = world.build(context, world.tenant())
    assert [e.kind for e in events] == ["error"]
    assert "line 2: unknown instruction 'THIS'" in events[-1].text


@pytest.mark.docker
def test_missing_base_image_yields_an_error_event(world: BuildWorld, tmp_path: Path) -> None:
    missing = f"berth/missing-{uuid.uuid4().hex[:8]}"
    context = dockerfile_context(tmp_path, f"FROM {missing}\n")
    events = world.build(context, world.tenant())
    assert [e.kind for e in events] == ["log", "error"]
    assert f"{missing}" in events[-1].text
    assert "berth/busybox:latest" in events[-1].text  # the bases that exist are listed


@pytest.mark.docker
def test_copy_of_a_missing_file_is_an_error(world: BuildWorld, tmp_path: Path) -> None:
    context = dockerfile_context(tmp_path, f"FROM {BUSYBOX}\nCOPY nothing-here /x\n")
    events = world.build(context, world.tenant())
    assert events[-1].kind == "error"
    assert "'nothing-here' is not in the build context" in events[-1].text


def offline_builder() -> EngineBuilder:
    offline = docker.DockerClient(base_url=f"unix:///tmp/{uuid.uuid4().hex}.sock", version="1.41")
    return EngineBuilder(offline, "offline")


def test_missing_dockerfile_yields_an_error_event(tmp_path: Path) -> None:
    request = BuildRequest(tmp_path, "berth-app/none:x", {}, "tenant")
    events = list(offline_builder().build(request))
    assert [e.kind for e in events] == ["error"]
    assert "no Dockerfile" in events[0].text


def test_unreachable_engine_raises_engine_error(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {BUSYBOX}\n")
    request = BuildRequest(tmp_path, "berth-app/none:x", {}, "tenant")
    with pytest.raises(EngineError, match="unreachable"):
        list(offline_builder().build(request))


# --- python (debootstrap) --------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bootstrap_python_runs_python(client: docker.DockerClient, tracker: Tracker) -> None:
    # Create the real tag when it is missing (and keep it); otherwise exercise a unique one.
    tag = "berth/python:3"
    if existing_image_id(client, tag) is not None:
        tag = tracker.image(f"berth-test/python:{uuid.uuid4().hex[:12]}")
    lines: list[str] = []

    result = bootstrap_python(client, tag, progress=lines.append)
    if tag != "berth/python:3":
        tracker.image(result.image_id)

    assert result.action == "created"
    assert lines, "no progress was reported"
    assert run_once(client, tracker, tag, ["python3", "-c", "print(1+1)"]).strip() == "2"
    config = client.api.inspect_image(tag)["Config"]
    assert config["Cmd"] == ["python3"]
    assert "LANG=C.UTF-8" in config["Env"]
    assert result.size_bytes < 300_000_000
    assert bootstrap_python(client, tag).action == "exists"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_python_example_serves_and_stops_on_sigterm(
    client: docker.DockerClient, tracker: Tracker, world: BuildWorld
) -> None:
    bootstrap_python(client)  # a no-op when berth/python:3 exists
    tag = f"berth-app/python-app-{uuid.uuid4().hex[:8]}:one"
    done_image(world.build(EXAMPLES / "python-app", world.tenant(), tag=tag))
    container = client.containers.run(
        tag,
        detach=True,
        environment={"GREETING": "hi from the test"},
        ports={"8080/tcp": ("127.0.0.1", None)},
        labels=LABELS,
    )
    tracker.containers.append(container.id)
    container.reload()
    port = container.ports["8080/tcp"][0]["HostPort"]

    assert http_get(port, "/") == f"hi from the test (host {container.id[:12]})\n"
    assert http_get(port, "/healthz") == "ok\n"
    started = time.monotonic()
    container.stop(timeout=10)
    assert time.monotonic() - started < 5  # SIGTERM handled, not killed after the timeout
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0
    logs = container.logs().decode()
    assert '"GET /healthz HTTP/1.1" 200' in logs
    assert "shutting down" in logs


# --- mirror discovery (no engine needed) -----------------------------------------------------

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
"""


def test_deb822_sources_are_parsed() -> None:
    sources = parse_deb822_sources(DEB822)
    assert sources[0] == AptSource(
        "http://mirror.example/debian",
        ("bookworm", "bookworm-updates"),
        "/usr/share/keyrings/debian-archive-keyring.gpg",
    )
    assert [s.uri for s in sources] == [
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    ]


def test_one_line_sources_are_parsed() -> None:
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
        "deb http://mirror.example/debian-security bookworm-security main\n"
    )
    assert parse_one_line_sources(text) == [
        AptSource("http://mirror.example/debian", ("bookworm",), "/k.gpg"),
        AptSource("http://mirror.example/debian-security", ("bookworm-security",), None),
    ]


def test_mirror_is_the_main_suite_from_apt_sources(tmp_path: Path) -> None:
    sources_dir = tmp_path / "sources.list.d"
    sources_dir.mkdir()
    (sources_dir / "debian.sources").write_text(DEB822)
    (sources_dir / "other.sources.disabled").write_text(DEB822.replace("mirror", "nope"))
    (tmp_path / "sources.list").write_text(
        "deb http://security.example/debian-security bookworm-security main\n"
    )
    mirror = find_debian_mirror("bookworm", tmp_path / "sources.list", sources_dir)
    assert mirror.uri == "http://mirror.example/debian"
    command = debootstrap_command(Path("/target"), mirror)
    assert command[:3] == ["debootstrap", "--variant=minbase", "--include=python3"]
    assert command[-3:] == ["bookworm", "/target", "http://mirror.example/debian"]


def test_no_mirror_is_a_clear_error(tmp_path: Path) -> None:
    from berth.images.bootstrap import BootstrapError

    with pytest.raises(BootstrapError, match="no apt source"):
        find_debian_mirror("bookworm", tmp_path / "none.list", tmp_path / "none.d")


def test_build_steps_get_a_subnet_of_the_pool_and_the_network_goes_with_the_build(
    world: BuildWorld, client: docker.DockerClient, tmp_path: Path
) -> None:
    # Docker's default pools hold ~31 bridges; a network per building tenant, kept forever,
    # would use them up. The network lives only while the tenant builds.
    context = dockerfile_context(tmp_path, "FROM berth/busybox\nRUN ip -4 addr show eth0\n")
    tenant = world.tenant()
    events = world.build(context, tenant)
    assert events[-1].kind == "done", events[-1].text
    inet = next(line for line in log_text(events).splitlines() if "inet " in line)
    address = ipaddress.IPv4Interface(inet.split()[1])
    assert address.ip in ipaddress.IPv4Network(DEFAULT_NETWORK_POOL)
    assert client.api.networks(names=[build_network_name(tenant)]) == []
