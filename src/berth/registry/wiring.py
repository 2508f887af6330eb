"""What the platform does with its registry: push builds on a swarm, pin releases, collect.

On the **local** backend nothing here runs: containers start from the image id on the one
engine there is, so there is nothing to push and no registry to start.

On the **swarm** backend (``BERTH_BACKEND=swarm`` or after ``berth cluster init``):

- The registry is started (or adopted) with the Swarm backend, and checked before each push.
- A build, made by the builder on the engine Berth talks to, is pushed to
  ``ADDR/t-<tenant>/<app>`` and its release records the pinned digest
  (``Release.pinned_image``); the service runs that reference and every node pulls only the
  layers it lacks. A push that fails fails the build: no release is written.
- An image deploy: a base image (``berth/...``) keeps its image id, so **every node must have
  the base images loaded** (``docker load``; tests/cluster's harness loads them); a tenant's own
  earlier build is pushed (nothing new to upload: its tag derives from its id); a reference
  into the provider's registry (``BERTH_REGISTRY``) runs as written.
- Services are written with Berth's registry credentials in ``X-Registry-Auth``
  (:meth:`PlatformRegistry.auth_for`); Swarm hands them to the nodes that pull. They stay in
  Berth's memory and in Swarm's Raft store, never in a docker config file.
- The GC loop (the leader only, every ``registry_gc_interval_seconds``) keeps the digest of
  every release an app can roll back to (every release row: ``release_history`` bounds them),
  deletes the rest from the registry, and removes this installation's unkept images from the
  engine Berth talks to (its builds and their registry tags). The workers' engines are not
  collected: Berth has no socket to them, and a one-shot global service cannot remove images
  without mounting the Docker socket into a container, which Berth never does. A node's pulled
  layers go with ``docker image prune`` run by the provider on that node.

Who may reach the registry on a swarm: it listens on an address the nodes reach, so a
tenant's container on a node can reach it too, through its node's NAT with the node's own
source address. With credentials on (``registry_auth = "auto"`` beyond loopback) only the
credentials protect it: a tenant can connect but neither read nor write an image. To make it
unreachable as well, each node needs an egress rule refusing the registry's address to tenant
containers (the registry's address in ``BERTH_EGRESS_BLOCKED_RANGES`` on a node that runs
Berth's filter, or an iptables rule in DOCKER-USER on the overlay's traffic of each node),
or the registry on a network tenants' overlays cannot route to (a management VLAN).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from berth.builds.image_policy import classify
from berth.errors import BerthError
from berth.periodic import PeriodicLoop
from berth.registry.gc import (
    NodeGcReport,
    RegistryGcReport,
    collect_node_images,
    collect_registry,
)
from berth.registry.push import PushedImage, push_image, repository_for
from berth.registry.server import RegistryServer
from berth.settings import Settings
from berth.store.tables import App, Release
from berth.workloads.protocol import BackendKind

log = logging.getLogger(__name__)

# What an image deploy on the swarm backend records as the release's pinned image:
# "id": nothing (the image id, present on every node: a base image);
# "push": push it to the platform registry and pin the digest (a tenant's own build);
# "reference": the reference as written (an image of the provider's registry).
PinAction = Literal["id", "push", "reference"]


class PushFailed(BerthError):
    """The build could not be pushed to the platform registry; no release was made."""

    status = 502
    code = "push_failed"


# -- pure decisions --------------------------------------------------------------------------


def uses_registry(backend: BackendKind) -> bool:
    """Only a swarm needs images where every node can pull them."""
    return backend == "swarm"


def pin_action(backend: BackendKind, kind: str) -> PinAction:
    """What an image deploy of an image of ``kind`` (berth.builds.image_policy) pins."""
    if not uses_registry(backend) or kind == "base":
        return "id"
    if kind == "registry":
        return "reference"
    return "push"


def kept_images(rows: Iterable[tuple[str | None, str]]) -> tuple[frozenset[str], frozenset[str]]:
    """(pinned references, image ids) that the given ``(pinned_image, image_id)`` release rows
    keep: everything an app can still run or roll back to."""
    refs: set[str] = set()
    ids: set[str] = set()
    for pinned, image_id in rows:
        if pinned:
            refs.add(pinned)
        if image_id:
            ids.add(image_id)
    return frozenset(refs), frozenset(ids)


def push_summary(pushed: PushedImage) -> str:
    """The build log's line about the push."""
    layers = "layer" if pushed.layers_pushed == 1 else "layers"
    return (
        f"pushed {pushed.reference}: {pushed.layers_pushed} new {layers}, "
        f"{pushed.layers_existing} already there ({pushed.seconds:.1f}s)"
    )


def auth_header_config(
    image: str, address: str, auth_config: dict[str, str] | None
) -> dict[str, str] | None:
    """The ``X-Registry-Auth`` payload for a service running ``image``: Berth's credentials
    when the image is in its registry (and the registry takes credentials), else None, so no
    credential is ever sent along with someone else's image."""
    if auth_config is None or not image.startswith(f"{address}/"):
        return None
    return {**auth_config, "serveraddress": address}


@dataclass(frozen=True)
class Unpinned:
    """A release made before the installation moved to a swarm (no pinned image yet)."""

    release_id: str
    tenant_id: str
    app_name: str
    image_ref: str
    image_id: str


@dataclass(frozen=True)
class PinWork:
    release_id: str
    action: PinAction
    reference: str = ""  # "reference": what to record
    push: tuple[str, str, str] = ("", "", "")  # "push": (tenant id, app name, image id)


def plan_pins(unpinned: Iterable[Unpinned], provider_registry: str) -> list[PinWork]:
    """What each release made on one machine pins when the installation moves to a swarm, as an
    image deploy would (:func:`pin_action`). A reference the policy no longer allows keeps its
    image id: it runs where that image is, as before."""
    work = []
    for row in unpinned:
        try:
            ref = classify(row.image_ref, provider_registry)
        except BerthError:
            continue
        action = pin_action("swarm", ref.kind)
        if action == "reference":
            work.append(PinWork(row.release_id, action, reference=ref.name))
        elif action == "push":
            work.append(
                PinWork(row.release_id, action, push=(row.tenant_id, row.app_name, row.image_id))
            )
    return work


# -- the store -------------------------------------------------------------------------------


def kept_by_store(session: Session) -> tuple[frozenset[str], frozenset[str]]:
    """What every release of this installation keeps (the kept release history of each app)."""
    rows = session.execute(select(Release.pinned_image, Release.image_id))
    return kept_images((pinned, image_id) for pinned, image_id in rows)


def pin_releases(session: Session, registry: PlatformRegistry, provider_registry: str) -> int:
    """Pin every release made on one machine (``berth cluster init`` calls this before it
    records the swarm backend, in the same transaction): builds are pushed, each image once.
    Flushed, not committed. Raises PushFailed: the move must not start with images the other
    nodes could not pull. Returns how many releases were pinned."""
    stmt = (
        select(Release.id, Release.tenant_id, App.name, Release.image_ref, Release.image_id)
        .join(App, App.id == Release.app_id)
        .where(Release.pinned_image.is_(None))
    )
    unpinned = [Unpinned(*row) for row in session.execute(stmt)]
    session.rollback()  # no transaction stays open while images are pushed
    pushed: dict[tuple[str, str, str], str] = {}
    pins: dict[str, str] = {}
    for work in plan_pins(unpinned, provider_registry):
        if work.action == "push":
            if work.push not in pushed:
                pushed[work.push] = registry.publish(*work.push).reference
            pins[work.release_id] = pushed[work.push]
        else:
            pins[work.release_id] = work.reference
    for release_id, reference in pins.items():
        release = session.get(Release, release_id)
        if release is not None and release.pinned_image is None:
            release.pinned_image = reference
    session.flush()
    return len(pins)


# -- the actuator ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GcOutcome:
    registry: RegistryGcReport
    engine: NodeGcReport


class PlatformRegistry:
    """The platform's registry as the platform uses it.

    ``client`` is the docker-py DockerClient of the engine Berth builds on (it pushes, and its
    images are collected); ``backend`` reads the backend the store records now.
    """

    def __init__(
        self,
        server: RegistryServer | Callable[[], RegistryServer],
        client: Any,
        installation: str,
        backend: Callable[[], BackendKind],
        *,
        gc_interval_seconds: float = 3600.0,
        gc_grace_seconds: float = 3600.0,
    ) -> None:
        # Made on first use: on the local backend its settings are never even parsed.
        self._server = server if isinstance(server, RegistryServer) else None
        self._make_server = server if not isinstance(server, RegistryServer) else None
        self.client = client
        self.installation = installation
        self.backend = backend
        self.gc_interval_seconds = gc_interval_seconds
        self.gc_grace_seconds = gc_grace_seconds
        self.last_gc: GcOutcome | None = None
        self._gc_loop: PeriodicLoop | None = None
        self._gc_lock = threading.Lock()  # one collection at a time (loop or caller)

    @property
    def server(self) -> RegistryServer:
        if self._server is None:
            assert self._make_server is not None
            self._server = self._make_server()
        return self._server

    @property
    def address(self) -> str:
        return self.server.address

    def wanted(self) -> bool:
        return uses_registry(self.backend())

    def ensure_running(self) -> None:
        self.server.ensure_running()

    def start_quietly(self) -> bool:
        """Start it with the Swarm backend. A registry that cannot start must not stop the
        backend (image deploys, scaling, healing need no registry): it is logged, and each
        push tries again and fails its build with the reason."""
        try:
            self.server.ensure_running()
        except BerthError as exc:
            log.error("the platform registry is not running: %s", exc.message)
            return False
        if self.server.listen.is_loopback:
            log.warning(
                "the platform registry listens on %s: only this machine can pull builds; set "
                "BERTH_REGISTRY_LISTEN to an address the other nodes reach",
                self.address,
            )
        return True

    def auth_for(self, image: str) -> dict[str, str] | None:
        """For DockerSwarmAPI: the credentials a service running ``image`` needs, if any."""
        return auth_header_config(image, self.address, self.server.auth_config)

    def publish(self, tenant_id: str, app_name: str, image_id: str) -> PushedImage:
        """Push ``image_id`` to ``t-<tenant>/<app>``; raises PushFailed with the reason."""
        try:
            repository = repository_for(tenant_id, app_name)
            self.server.ensure_running()
            return push_image(
                self.client,
                self.address,
                image_id,
                repository,
                auth_config=self.server.auth_config,
            )
        except BerthError as exc:
            raise PushFailed(
                f"the image could not be pushed to the platform registry {self.address}: "
                f"{exc.message}"
            ) from exc

    def pin_for_deploy(
        self, reference: str, image_id: str, tenant_id: str, app_name: str, registry: str
    ) -> str | None:
        """The pinned image of an image deploy of ``reference`` (already allowed and resolved
        to ``image_id`` by the image policy)."""
        action = pin_action(self.backend(), classify(reference, registry).kind)
        if action == "id":
            return None
        if action == "reference":
            return classify(reference, registry).name
        return self.publish(tenant_id, app_name, image_id).reference

    # -- garbage collection ----------------------------------------------------------------

    def collect(self, sessions: sessionmaker[Session], now: float | None = None) -> GcOutcome:
        """One collection: the registry, then the engine Berth talks to. The keep set is read
        right before each: a release written meanwhile pins nothing this deletes, and a build
        pushed but not released yet is younger than the grace."""
        with self._gc_lock:
            when = time.time() if now is None else now
            with sessions() as session:
                refs, _ids = kept_by_store(session)
            registry = collect_registry(
                self.server, refs, grace_seconds=self.gc_grace_seconds, now=when
            )
            with sessions() as session:
                refs, ids = kept_by_store(session)
            engine = collect_node_images(
                self.client,
                installation=self.installation,
                registry_address=self.address,
                keep_references=refs,
                keep_image_ids=ids,
                grace_seconds=self.gc_grace_seconds,
                now=when,
            )
            self.last_gc = GcOutcome(registry, engine)
            log.info(
                "image GC: registry %d deleted, %d kept, %d bytes freed; engine %d removed, "
                "%d skipped",
                len(registry.deleted),
                len(registry.kept),
                registry.bytes_freed,
                len(engine.removed),
                len(engine.skipped),
            )
            return self.last_gc

    def gc_pass(
        self, sessions: sessionmaker[Session], is_leader: Callable[[], bool]
    ) -> GcOutcome | None:
        """The loop's body: only the leader collects, and only on a swarm."""
        if not self.wanted() or not is_leader():
            return None
        return self.collect(sessions)

    def start_gc(
        self, sessions: sessionmaker[Session], is_leader: Callable[[], bool] = lambda: True
    ) -> None:
        if self._gc_loop is not None:
            return
        self._gc_loop = PeriodicLoop(
            "berth-image-gc",
            lambda: self.gc_pass(sessions, is_leader),
            self.gc_interval_seconds,
        )
        self._gc_loop.start()

    def stop_gc(self) -> None:
        if self._gc_loop is not None:
            self._gc_loop.stop()
            self._gc_loop = None


def platform_registry(
    settings: Settings, client: Any, installation: str, backend: Callable[[], BackendKind]
) -> PlatformRegistry:
    """The platform's registry, not started: it starts with the swarm backend."""
    return PlatformRegistry(
        lambda: RegistryServer(settings),
        client,
        installation,
        backend,
        gc_interval_seconds=settings.registry_gc_interval_seconds,
        gc_grace_seconds=settings.registry_gc_grace_seconds,
    )
