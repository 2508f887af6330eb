"""Base image bootstrap and image builds against the real Docker Engine.

Every image and container made here carries a unique name and is removed at the end, except
``berth/python:3``, which is created only when missing (it is the platform's real base image,
and keeping it saves the next run a debootstrap).
"""

from __future__ import annotations

import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from berth.builds.builder import BuildEvent, build_image
from berth.builds.context import extract_context, pack_directory
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

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LABELS = {"berth.managed": "true", "berth.test": "test_builds_images"}


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
            try:
                self.client.api.remove_container(container, force=True)
            except docker.errors.NotFound:
                pass
        for image in reversed(self.images):
            self.remove_image_and_children(image)

    def remove_image_and_children(self, ref: str) -> None:
        """Remove ``ref`` and the untagged layers builds left on it (a failed build's cache)."""
        try:
            image_id = self.client.api.inspect_image(ref)["Id"]
        except docker.errors.ImageNotFound:
            return
        children: dict[str, list[str]] = {}
        for image in self.client.api.images(all=True):
            children.setdefault(image.get("ParentId", ""), []).append(image["Id"])
        doomed = [image_id]
        for current in doomed:  # grows while iterating: a breadth-first walk
            doomed.extend(children.get(current, []))
        for image in reversed(doomed):
            try:
                self.client.api.remove_image(image, force=True)
            except docker.errors.ImageNotFound:
                pass


@pytest.fixture
def tracker(client: docker.DockerClient) -> Iterator[Tracker]:
    made = Tracker(client)
    yield made
    made.cleanup()


@pytest.fixture(scope="module")
def busybox_base(client: docker.DockerClient) -> Iterator[str]:
    """A busybox image under a unique tag, for this module only."""
    made = Tracker(client)
    tag = made.image(f"berth-test/busybox:{uuid.uuid4().hex[:12]}")
    try:
        result = bootstrap_busybox(client, tag)
        made.image(result.image_id)
        yield tag
    finally:
        made.cleanup()


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


def busybox_app(tmp_path: Path, base: str) -> Path:
    """A copy of examples/busybox-app built FROM ``base``."""
    app = tmp_path / "busybox-app"
    shutil.copytree(EXAMPLES / "busybox-app", app)
    dockerfile = app / "Dockerfile"
    lines = dockerfile.read_text().splitlines()
    assert lines[0].startswith("FROM berth/busybox")
    dockerfile.write_text("\n".join([f"FROM {base}", *lines[1:]]) + "\n")
    return app


def build(client: docker.DockerClient, context: Path, tag: str) -> list[BuildEvent]:
    return list(build_image(client, context, tag, LABELS))


def log_text(events: list[BuildEvent]) -> str:
    return "\n".join(e.text for e in events if e.kind == "log")


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


# --- builds ----------------------------------------------------------------------------------


@pytest.mark.docker
def test_build_streams_logs_and_reuses_the_cache(
    client: docker.DockerClient, tracker: Tracker, busybox_base: str, tmp_path: Path
) -> None:
    # The same path an upload takes: pack on the client, extract on the server, build.
    context = tmp_path / "context"
    extract_context(pack_directory(busybox_app(tmp_path, busybox_base)), context, 10**7, 100)
    tag = tracker.image(f"berth-test/app:{uuid.uuid4().hex[:12]}")

    first = build(client, context, tag)

    assert [e.kind for e in first[:-1]] == ["log"] * (len(first) - 1)
    done = first[-1]
    assert done.kind == "done" and done.image_id and done.image_id.startswith("sha256:")
    assert "Step 1/" in log_text(first)
    image = client.images.get(tag)
    assert image.id == done.image_id
    assert image.labels["berth.test"] == "test_builds_images"

    started = time.monotonic()
    second = build(client, context, tag)
    assert time.monotonic() - started < 10
    assert "Using cache" in log_text(second)
    assert second[-1].kind == "done" and second[-1].image_id == done.image_id


@pytest.mark.docker
def test_built_busybox_app_serves_http(
    client: docker.DockerClient, tracker: Tracker, busybox_base: str, tmp_path: Path
) -> None:
    tag = tracker.image(f"berth-test/app:{uuid.uuid4().hex[:12]}")
    assert build(client, busybox_app(tmp_path, busybox_base), tag)[-1].kind == "done"
    container = client.containers.run(
        tag, detach=True, ports={"8080/tcp": ("127.0.0.1", None)}, labels=LABELS
    )
    tracker.containers.append(container.id)
    container.reload()
    port = container.ports["8080/tcp"][0]["HostPort"]
    assert http_get(port, "/healthz") == "ok\n"


@pytest.mark.docker
def test_failing_build_yields_an_error_event_and_no_image(
    client: docker.DockerClient, tracker: Tracker, busybox_base: str, tmp_path: Path
) -> None:
    context = tmp_path / "failing"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {busybox_base}\nRUN echo about-to-fail\nRUN false\n")
    tag = tracker.image(f"berth-test/failing:{uuid.uuid4().hex[:12]}")

    events = build(client, context, tag)

    last = events[-1]
    assert last.kind == "error" and last.image_id is None
    assert "returned a non-zero code: 1" in last.text
    assert "about-to-fail" in last.text  # the tail of the log rides along
    assert "error" not in [e.kind for e in events[:-1]]
    assert existing_image_id(client, tag) is None


@pytest.mark.docker
def test_bad_dockerfile_yields_an_error_event(
    client: docker.DockerClient, tracker: Tracker, tmp_path: Path
) -> None:
    context = tmp_path / "bad"
    context.mkdir()
    (context / "Dockerfile").write_text("THIS IS NOT AN INSTRUCTION\n")
    tag = tracker.image(f"berth-test/bad:{uuid.uuid4().hex[:12]}")
    events = build(client, context, tag)
    assert events[-1].kind == "error"
    assert "unknown instruction" in events[-1].text.lower()


@pytest.mark.docker
def test_missing_base_image_yields_an_error_event(
    client: docker.DockerClient, tracker: Tracker, tmp_path: Path
) -> None:
    # pull=False, and no registry is reachable: the build must fail fast and say why.
    missing = f"berth-test/missing:{uuid.uuid4().hex[:12]}"
    (tmp_path / "Dockerfile").write_text(f"FROM {missing}\n")
    tag = tracker.image(f"berth-test/orphan:{uuid.uuid4().hex[:12]}")
    started = time.monotonic()
    events = build(client, tmp_path, tag)
    assert time.monotonic() - started < 60
    assert events[-1].kind == "error"
    assert missing in events[-1].text
    assert existing_image_id(client, tag) is None


def test_invalid_tag_yields_an_error_event(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    offline = docker.DockerClient(base_url=f"unix:///tmp/{uuid.uuid4().hex}.sock", version="1.41")
    events = list(build_image(offline, tmp_path, "berth-test/UPPER:case", {}))
    assert [e.kind for e in events] == ["error"]
    assert "invalid reference format" in events[0].text


def test_missing_dockerfile_yields_an_error_event(tmp_path: Path) -> None:
    offline = docker.DockerClient(base_url=f"unix:///tmp/{uuid.uuid4().hex}.sock", version="1.41")
    events = list(build_image(offline, tmp_path, "berth-test/none:x", {}))
    assert [e.kind for e in events] == ["error"]


def test_unreachable_engine_raises_engine_error(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    offline = docker.DockerClient(base_url=f"unix:///tmp/{uuid.uuid4().hex}.sock", version="1.41")
    with pytest.raises(EngineError):
        list(build_image(offline, tmp_path, "berth-test/none:x", {}))


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
    client: docker.DockerClient, tracker: Tracker
) -> None:
    bootstrap_python(client)  # a no-op when berth/python:3 exists
    tag = tracker.image(f"berth-test/python-app:{uuid.uuid4().hex[:12]}")
    assert build(client, EXAMPLES / "python-app", tag)[-1].kind == "done"
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
