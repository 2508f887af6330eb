"""The platform's use of its registry: the pure decisions, the keep set read from a real store,
releases that carry their pinned digest through config changes and rollbacks, a push that
fails the build (no release), the GC loop's guards, the credentials header of services, the
pins of image deploys and of the releases an installation had before it moved to a swarm."""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from berth.api.routes_builds import _build_events
from berth.builds.protocol import BuildEvent, BuildRequest
from berth.builds.queue import BuildQueue
from berth.platform import Platform, open_store
from berth.registry.push import PushedImage
from berth.registry.server import RegistryServer
from berth.registry.wiring import (
    PinWork,
    PlatformRegistry,
    PushFailed,
    Unpinned,
    auth_header_config,
    kept_by_store,
    kept_images,
    pin_action,
    pin_releases,
    plan_pins,
    push_summary,
    uses_registry,
)
from berth.services import apps as svc
from berth.services.auth import Principal
from berth.services.bootstrap import ensure_admin
from berth.settings import Settings
from berth.store.tables import Release
from berth.swarm.api import DockerSwarmAPI
from berth.workloads.protocol import BackendKind

ADDR = "10.9.8.7:5000"
ID_A = "sha256:" + "a" * 64
ID_B = "sha256:" + "b" * 64
PIN_A = f"{ADDR}/t-0a/web@sha256:" + "1" * 64
PIN_B = f"{ADDR}/t-0a/web@sha256:" + "2" * 64


# -- pure decisions --------------------------------------------------------------------------


def test_only_a_swarm_uses_the_registry() -> None:
    assert uses_registry("swarm")
    assert not uses_registry("local")


@pytest.mark.parametrize(
    ("backend", "kind", "action"),
    [
        ("local", "base", "id"),
        ("local", "own", "id"),
        ("local", "registry", "id"),
        ("swarm", "base", "id"),  # loaded on every node
        ("swarm", "own", "push"),
        ("swarm", "registry", "reference"),
    ],
)
def test_pin_action_of_an_image_deploy(backend: BackendKind, kind: str, action: str) -> None:
    assert pin_action(backend, kind) == action


def test_kept_images_are_every_release_rows_pins_and_ids() -> None:
    refs, ids = kept_images([(PIN_A, ID_A), (None, ID_B), (PIN_B, ID_B), ("", "")])
    assert refs == {PIN_A, PIN_B}
    assert ids == {ID_A, ID_B}


def test_push_summary_says_what_was_uploaded() -> None:
    pushed = PushedImage(PIN_A, "t-0a/web", "sha256:" + "1" * 64, "id-a", 1, 6, 0.42)
    assert push_summary(pushed) == f"pushed {PIN_A}: 1 new layer, 6 already there (0.4s)"


def test_credentials_go_only_with_an_image_of_the_platform_registry() -> None:
    auth = {"username": "berth", "password": "pw"}
    assert auth_header_config(PIN_A, ADDR, auth) == {**auth, "serveraddress": ADDR}
    assert auth_header_config("berth/busybox:latest", ADDR, auth) is None
    assert auth_header_config(ID_A, ADDR, auth) is None
    # Another registry whose address merely starts like ours.
    assert auth_header_config(f"{ADDR}0/t-0a/web@sha256:{'1' * 64}", ADDR, auth) is None
    assert auth_header_config(PIN_A, ADDR, None) is None  # no credentials: no header


def test_swarm_api_sends_the_credentials_header_for_its_image() -> None:
    auth = {"username": "berth", "password": "pw", "serveraddress": ADDR}
    api = DockerSwarmAPI("unix:///nonexistent", registry_auth=lambda image: auth)
    spec = {"TaskTemplate": {"ContainerSpec": {"Image": PIN_A}}}
    header = api._auth_headers(spec)["X-Registry-Auth"]
    assert json.loads(base64.urlsafe_b64decode(header)) == auth
    assert DockerSwarmAPI("unix:///nonexistent")._auth_headers(spec) == {}
    none = DockerSwarmAPI("unix:///nonexistent", registry_auth=lambda image: None)
    assert none._auth_headers(spec) == {}


# -- the store -------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Settings, Platform, str]]:
    settings = Settings(
        home=tmp_path / "home",
        registry_listen="127.0.0.1:1",
        registry_binary=str(tmp_path / "no-such-registry"),
    )
    engine, sessions, inst = open_store(settings)
    with sessions() as session:
        tenant = ensure_admin(session, settings.home / "admin-token")
        svc.create_app(session, settings, tenant.id, svc.AppSpec(name="web"))
        tenant_id = tenant.id
    platform = Platform(settings=settings, engine=engine, sessions=sessions, installation=inst)
    yield settings, platform, tenant_id
    engine.dispose()


def _deploy(platform: Platform, tenant_id: str, image_id: str, pinned: str | None) -> Release:
    with platform.sessions() as session:
        release, _ = svc.deploy_image(
            session,
            platform.settings,
            tenant_id,
            "web",
            "berth-app/web:x",
            lambda _ref: image_id,
            pinned_image=pinned,
        )
        session.expunge(release)
        return release


def test_releases_keep_their_pinned_digest_through_config_and_rollback(
    store: tuple[Settings, Platform, str],
) -> None:
    settings, platform, tenant_id = store
    first = _deploy(platform, tenant_id, ID_A, PIN_A)
    assert first.pinned_image == PIN_A
    with platform.sessions() as session:
        app = svc.get_app(session, tenant_id, "web")
        app.serving_release_id = app.target_release_id  # as the reconciler does once it serves
        session.commit()
    _deploy(platform, tenant_id, ID_B, PIN_B)
    with platform.sessions() as session:
        _, config_release, _ = svc.set_config(session, settings, tenant_id, "web", {"A": "1"}, [])
        assert config_release is not None
        assert config_release.pinned_image == PIN_B  # same image, new config
        app = svc.get_app(session, tenant_id, "web")
        app.serving_release_id = config_release.id
        session.commit()
    with platform.sessions() as session:
        back, _ = svc.rollback(session, settings, tenant_id, "web", first.version)
        assert (back.image_id, back.pinned_image) == (ID_A, PIN_A)  # the earlier digest
    with platform.sessions() as session:
        refs, ids = kept_by_store(session)
    assert refs == {PIN_A, PIN_B}
    assert ids == {ID_A, ID_B}


def test_a_local_deploy_pins_nothing(store: tuple[Settings, Platform, str]) -> None:
    _, platform, tenant_id = store
    assert _deploy(platform, tenant_id, ID_A, None).pinned_image is None


# -- a build whose push fails ----------------------------------------------------------------


class OneImageBuilder:
    def build(self, request: BuildRequest) -> Iterator[BuildEvent]:
        yield BuildEvent("log", "Step 1/1 : FROM berth/busybox")
        yield BuildEvent("done", "", ID_A)


class RefusingEngine:
    """Stands for the engine Berth pushes from; nothing must reach it when the registry is
    down."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.api = self

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        raise AssertionError(f"the engine was asked to {name}")


def test_a_build_whose_push_fails_is_an_error_and_no_release(
    store: tuple[Settings, Platform, str],
) -> None:
    settings, platform, tenant_id = store
    engine = RefusingEngine()
    platform.builder = OneImageBuilder()
    platform.registry = PlatformRegistry(
        RegistryServer(settings), engine, platform.installation, lambda: "swarm"
    )
    who = Principal(tenant_id, "admin", None, "a@b", "owner", "admin", "token", "t")
    queue = BuildQueue(1)
    ticket = queue.enter(tenant_id, 1, 5)
    workdir = Path(tempfile.mkdtemp(dir=settings.home))
    request = BuildRequest(
        context_dir=workdir, tag="berth-app/web:1", labels={}, tenant_id=tenant_id
    )
    lines = [
        json.loads(line)
        for line in _build_events(platform, who, "web", request, queue, ticket, workdir)
    ]
    final = lines[-1]
    assert final["type"] == "error"
    assert final["error"]["code"] == "push_failed"
    assert "platform registry 127.0.0.1:1" in final["error"]["message"]
    assert "cannot run" in final["error"]["message"]  # the reason: the registry cannot start
    assert engine.calls == []
    with platform.sessions() as session:
        assert session.scalars(select(Release)).all() == []
    assert not workdir.exists()  # the build's traces are gone


def test_on_the_local_backend_a_build_is_not_pushed(store: tuple[Settings, Platform, str]) -> None:
    settings, platform, tenant_id = store
    engine = RefusingEngine()
    platform.builder = OneImageBuilder()
    platform.registry = PlatformRegistry(
        RegistryServer(settings), engine, platform.installation, lambda: "local"
    )
    who = Principal(tenant_id, "admin", None, "a@b", "owner", "admin", "token", "t")
    queue = BuildQueue(1)
    ticket = queue.enter(tenant_id, 1, 5)
    workdir = Path(tempfile.mkdtemp(dir=settings.home))
    request = BuildRequest(
        context_dir=workdir, tag="berth-app/web:1", labels={}, tenant_id=tenant_id
    )
    lines = [
        json.loads(line)
        for line in _build_events(platform, who, "web", request, queue, ticket, workdir)
    ]
    assert lines[-1]["type"] == "release"
    assert lines[-1]["pinned_image"] is None
    assert not any("push" in line.get("message", "") for line in lines)
    assert engine.calls == []


def test_publish_names_the_registry_and_the_reason(store: tuple[Settings, Platform, str]) -> None:
    settings, platform, _ = store
    registry = PlatformRegistry(
        RegistryServer(settings), RefusingEngine(), platform.installation, lambda: "swarm"
    )
    with pytest.raises(PushFailed) as caught:
        registry.publish("zz-not-hex", "web", ID_A)
    assert caught.value.status == 502
    assert "tenant id" in caught.value.message


# -- the GC loop's guards --------------------------------------------------------------------


class CountingRegistry(PlatformRegistry):
    def __init__(self, settings: Settings, backend: BackendKind) -> None:
        super().__init__(RegistryServer(settings), None, "inst", lambda: backend)
        self.collections = 0

    def collect(self, sessions: Any, now: float | None = None) -> Any:
        self.collections += 1
        return "collected"


@pytest.mark.parametrize(
    ("backend", "leader", "collects"),
    [("swarm", True, True), ("swarm", False, False), ("local", True, False)],
)
def test_only_the_leader_on_a_swarm_collects(
    store: tuple[Settings, Platform, str], backend: BackendKind, leader: bool, collects: bool
) -> None:
    settings, platform, _ = store
    registry = CountingRegistry(settings, backend)
    outcome = registry.gc_pass(platform.sessions, lambda: leader)
    assert registry.collections == (1 if collects else 0)
    assert outcome == ("collected" if collects else None)


def test_the_registry_server_is_made_only_when_used(tmp_path: Path) -> None:
    made: list[int] = []

    def make() -> RegistryServer:
        made.append(1)
        return RegistryServer(Settings(home=tmp_path, registry_listen="127.0.0.1:1"))

    registry = PlatformRegistry(make, None, "inst", lambda: "local")
    assert not registry.wanted()
    assert made == []  # a local installation never parses the registry's settings
    assert registry.address == "127.0.0.1:1"
    assert made == [1]


# -- image deploys and the move to a swarm ---------------------------------------------------


class RecordingRegistry(PlatformRegistry):
    """publish() records and answers a digest (the real push is tests/cluster's)."""

    def __init__(self, settings: Settings, backend: BackendKind = "swarm") -> None:
        super().__init__(RegistryServer(settings), None, "inst", lambda: backend)
        self.published: list[tuple[str, str, str]] = []

    def publish(self, tenant_id: str, app_name: str, image_id: str) -> PushedImage:
        self.published.append((tenant_id, app_name, image_id))
        digest = "sha256:" + image_id.removeprefix("sha256:")[::-1]
        ref = f"{self.address}/t-{tenant_id}/{app_name}@{digest}"
        return PushedImage(ref, f"t-{tenant_id}/{app_name}", digest, "id-x", 1, 0, 0.0)


def test_pin_for_deploy_per_kind(store: tuple[Settings, Platform, str]) -> None:
    settings, _, _ = store
    registry = RecordingRegistry(settings)
    tenant = "0a"
    assert registry.pin_for_deploy("berth/python:3", ID_A, tenant, "web", "") is None
    assert (
        registry.pin_for_deploy(
            "reg.example:5000/team/app", ID_A, tenant, "web", "reg.example:5000"
        )
        == "reg.example:5000/team/app:latest"
    )
    own = registry.pin_for_deploy("berth-app/web:1", ID_A, tenant, "web", "")
    assert own is not None and own.startswith("127.0.0.1:1/t-0a/web@sha256:")
    assert registry.published == [(tenant, "web", ID_A)]
    local = RecordingRegistry(settings, backend="local")
    assert local.pin_for_deploy("berth-app/web:1", ID_A, tenant, "web", "") is None
    assert local.published == []


def test_plan_pins_of_releases_made_on_one_machine() -> None:
    rows = [
        Unpinned("r1", "0a", "web", "berth-app/web:1", ID_A),
        Unpinned("r2", "0a", "web", "berth/python:3", ID_B),
        Unpinned("r3", "0a", "api", "reg.example:5000/x/y:2", ID_B),
        Unpinned("r4", "0a", "api", "docker.io/evil/image:1", ID_B),  # no longer allowed
    ]
    work = plan_pins(rows, "reg.example:5000")
    assert work == [
        PinWork("r1", "push", push=("0a", "web", ID_A)),
        PinWork("r3", "reference", reference="reg.example:5000/x/y:2"),
    ]


def test_pin_releases_pushes_each_build_once_and_leaves_base_images(
    store: tuple[Settings, Platform, str],
) -> None:
    settings, platform, tenant_id = store
    built = _deploy(platform, tenant_id, ID_A, None)
    again = _deploy(platform, tenant_id, ID_A, None)  # the same build deployed twice
    with platform.sessions() as session:
        base, _ = svc.deploy_image(
            session, settings, tenant_id, "web", "berth/python:3", lambda _ref: ID_B
        )
        base_id = base.id
    registry = RecordingRegistry(settings)
    with platform.sessions() as session:
        assert pin_releases(session, registry, "") == 2
        session.commit()
    assert registry.published == [(tenant_id, "web", ID_A)]
    with platform.sessions() as session:
        pins = {r.id: r.pinned_image for r in session.scalars(select(Release))}
    assert pins[built.id] == pins[again.id] is not None
    assert pins[built.id].startswith(f"127.0.0.1:1/t-{tenant_id}/web@sha256:")
    assert pins[base_id] is None
    with platform.sessions() as session:
        assert pin_releases(session, registry, "") == 0  # twice: nothing more
    assert len(registry.published) == 1
