"""The wiring of one Berth server: store, runtime, builder, nginx, health checks, reconciler.

``berth server`` builds one ``Platform`` and runs the API plus the loops in one process. Tests
build it with a fake runtime and without loops.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from berth.agent.health import HealthMonitor, WorkloadTargets, instance_target
from berth.builds.image_policy import ImageStore
from berth.builds.protocol import ImageBuilder
from berth.builds.queue import BuildQueue
from berth.cluster.init import current_backend
from berth.cluster.nodes import ManagerClient
from berth.controllers.billing import BillingController
from berth.controllers.certificates import AcmePass
from berth.controllers.engine_events import ControllerWaker, EngineEvents
from berth.controllers.ingress_nodes_sync import IngressNodesSync
from berth.controllers.ingress_sync import IngressSync
from berth.controllers.lease import LeaderLease, Leadership, server_identity
from berth.controllers.node_guard_sync import NodeGuardSync
from berth.controllers.reconciler import Reconciler, healthy_rows, instance_seed
from berth.controllers.swarm_watch import SwarmWatch
from berth.metrics.wiring import Collectors, build_collectors
from berth.netpolicy.controller import EgressController
from berth.netpolicy.setup import build_egress_controller
from berth.proxy.model import Upstream
from berth.proxy.nginx import NginxManager
from berth.registry.wiring import PlatformRegistry, platform_registry
from berth.runtime.protocol import Runtime
from berth.services import databases_dedicated
from berth.services.accounts import LoginLimiter
from berth.services.bootstrap import ensure_admin, installation_id
from berth.services.certificates import Certificates
from berth.services.databases_backup_pass import DatabaseBackupPass
from berth.services.databases_purge import DatabasePurge
from berth.services.databases_rotation import DatabaseRotationPass
from berth.services.databases_usage import DatabaseUsagePass
from berth.services.webhooks import WebhookSender
from berth.settings import Settings
from berth.store.db import make_engine, make_sessionmaker, migrate
from berth.workloads.local import LocalWorkloads
from berth.workloads.moving import MovingWorkloads
from berth.workloads.protocol import BackendKind, WorkloadInstance, Workloads

if TYPE_CHECKING:
    import docker

    from berth.builds.engine_builder import EngineBuilder
    from berth.runtime.docker_driver import DockerRuntime
    from berth.swarm.api import DockerSwarmAPI

log = logging.getLogger(__name__)
BACKUP_PASS_SECONDS = 300.0  # how often the leader looks for databases due a scheduled backup
INGRESS_SYNC_SECONDS = 1.0  # how often a follower's ingress reads the routes from the store
BUILD_API_TIMEOUT = 600  # seconds, for the build and image client (not the runtime's)


@dataclass
class Platform:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    installation: str
    runtime: Runtime | None = None
    workloads: Workloads | None = None  # where apps run: this machine, or a Swarm
    builder: ImageBuilder | None = None
    build_queue: BuildQueue | None = None  # made by the build route on first use
    images: ImageStore | None = None  # image lookups with labels (the image policy)
    nginx: NginxManager | None = None
    health: HealthMonitor | None = None
    reconciler: Reconciler | None = None
    billing: BillingController | None = None
    webhooks: WebhookSender | None = None
    netpolicy: EgressController | None = None  # egress filter; None when settings turn it off
    events: EngineEvents | None = None  # the engine's events: wake the loops at once
    swarm_watch: SwarmWatch | None = None  # Swarm's task changes: wake the reconciler
    swarm_manager: ManagerClient | None = None  # the Swarm's nodes (None: one machine)
    registry: PlatformRegistry | None = None  # builds pushed for every node (swarm only)
    node_guard: NodeGuardSync | None = None  # every node's firewall, kept current (swarm only)
    ingress_nodes: IngressNodesSync | None = None  # nginx on the ingress=true nodes (swarm only)
    database_purge: DatabasePurge | None = None  # drops deleted databases after retention
    database_backups: DatabaseBackupPass | None = None  # scheduled backups, verified, per plan
    database_usage: DatabaseUsagePass | None = None  # measured, size quota, storage billed
    database_rotation: DatabaseRotationPass | None = None  # a rotation's old credential revoked
    metrics: Collectors | None = None  # this server's nginx traffic and containers' cgroups
    certificates: Certificates | None = None  # HTTPS: what is served, uploads, statuses
    acme: AcmePass | None = None  # orders and renews certificates (leader only)
    login_limiter: LoginLimiter = field(default_factory=LoginLimiter)
    started: bool = field(default=False)
    # Several servers on one store: the lease's holder runs the controllers, the others keep
    # their nginx routing like it (berth.controllers.lease). None: this server always leads.
    lease: LeaderLease | None = None
    leadership: Leadership | None = None
    ingress_sync: IngressSync | None = None
    # A new set of controllers (a stopped loop does not start again), for each later term.
    build_controllers: Callable[[], object] | None = None
    _controllers_fresh: bool = field(default=True, repr=False)

    def __post_init__(self) -> None:
        if self.workloads is None and self.runtime is not None:
            self.workloads = LocalWorkloads(self.runtime)  # logs, without the loops (tests)

    @property
    def admin_token_file(self) -> Path:
        return self.settings.home / "admin-token"

    def trigger(self) -> None:
        """Wake the reconciler after an API write (no-op without loops)."""
        if self.reconciler is not None:
            self.reconciler.trigger()
        if self.acme is not None:
            self.acme.wake()  # a new app or a verified domain is ordered now, not in a minute

    def billing_kick(self) -> None:
        """Re-evaluate arrears soon after a top-up (resume without waiting for the next pass)."""
        if self.billing is not None and self.started:
            self.billing.kick()

    def start_loops(self) -> None:
        """Every server serves the API and the ingress; the leader also runs the controllers."""
        if self.metrics is not None:
            self.metrics.start()  # every server counts its own traffic, leader or not
        if self.leadership is None:
            self.start_controllers()
            return
        if self.nginx is not None:
            self.nginx.ensure_running()
        if self.ingress_sync is not None:
            self.ingress_sync.start()  # a follower until the lease says otherwise
        self.leadership.start()

    def stop_loops(self) -> None:
        """Stop Berth's own threads. Containers and nginx keep serving (the data plane)."""
        if self.metrics is not None:
            self.metrics.stop()
        if self.leadership is None:
            self.stop_controllers()
            return
        self.leadership.stop()  # a leader stops its controllers, then releases the lease
        if self.ingress_sync is not None:
            self.ingress_sync.stop()

    def elected(self) -> None:
        """This server holds the lease: its reconciler routes from now on (one writer of its
        nginx), with every controller's commits fenced by the lease."""
        if self.ingress_sync is not None:
            self.ingress_sync.stop()
        if not self._controllers_fresh and self.build_controllers is not None:
            self.build_controllers()
        self._controllers_fresh = False
        if self.lease is not None:
            fence = self.lease.term_fence()  # this term's: an older pass never passes it
            for controller in (self.reconciler, self.billing):
                if controller is not None:
                    controller.fence = fence
            lease, term = self.lease, self.lease.token
            for actor in (
                self.reconciler,
                self.webhooks,
                self.database_purge,
                self.database_backups,
                self.database_usage,
                self.database_rotation,
                self.acme,
            ):
                if actor is not None:
                    actor.may_act = lambda: lease.holds() and lease.token == term
            if self.webhooks is not None:
                self.webhooks.fence = fence
        self.start_controllers()

    def deposed(self) -> None:
        """The lease is lost (or given up): the controllers stop now (a pass in flight is
        fenced), and the ingress follows the store again."""
        self.stop_controllers()
        if self.leadership is not None and self.leadership.stopping:
            return
        if self.build_controllers is not None:
            try:  # the API keeps live objects (logs, nodes) and the next term is ready
                self.build_controllers()
                self._controllers_fresh = True
            except Exception:
                log.exception("building the next term's controllers failed (retried if elected)")
        if self.ingress_sync is not None:
            self.ingress_sync.start()

    def start_controllers(self) -> None:
        if self.netpolicy is not None:
            self.netpolicy.start()  # before the reconciler runs anything on a tenant network
        if self.nginx is not None:
            self.nginx.ensure_running()
        if self.events is not None:
            self.events.start()  # subscribers were wired in build_platform
        if self.health is not None:
            self.health.seed(healthy_rows(self.sessions))  # readiness survives a restart
            self.health.start()
        if self.reconciler is not None:
            self.reconciler.start()
        if self.billing is not None:
            self.billing.start()
        if self.webhooks is not None:
            self.webhooks.start()
        if self.database_purge is not None:
            self.database_purge.start()
        if self.database_backups is not None:
            self.database_backups.start()
        if self.database_usage is not None:
            self.database_usage.start()
        if self.database_rotation is not None:
            self.database_rotation.start()
        if self.acme is not None:
            self.acme.start()
        if self.registry is not None:
            # Collects on a swarm only, and only while this server's term lasts.
            self.registry.start_gc(self.sessions, lambda: self.lease is None or self.lease.holds())
        self.started = True
        if self.swarm_watch is not None:
            self.swarm_watch.start()
        if self.node_guard is not None:
            self.node_guard.start()
        if self.ingress_nodes is not None:
            self.ingress_nodes.start()

    def stop_controllers(self) -> None:
        for loop in (
            self.webhooks,
            self.billing,
            self.database_purge,
            self.database_backups,
            self.database_usage,
            self.database_rotation,
            self.acme,
        ):
            if loop is not None:
                loop.stop()
        if self.registry is not None:
            self.registry.stop_gc()
        if self.reconciler is not None:
            self.reconciler.stop()
        if self.health is not None:
            self.health.stop()
        if self.netpolicy is not None:
            self.netpolicy.stop()
        if self.events is not None:
            self.events.stop()
        if self.swarm_watch is not None:
            self.swarm_watch.stop()
        if self.node_guard is not None:
            self.node_guard.stop()
        if self.ingress_nodes is not None:
            self.ingress_nodes.stop()
        self.started = False


def open_store(settings: Settings) -> tuple[Engine, sessionmaker[Session], str]:
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        inst = installation_id(session)
    return engine, sessions, inst


def build_platform(settings: Settings) -> Platform:
    """The real thing: Docker Engine, the distro's nginx, SQLite or PostgreSQL."""
    import docker

    from berth.builds.engine_builder import EngineBuilder
    from berth.builds.image_stores import DockerImageStore
    from berth.builds.leftovers import sweep_leftovers
    from berth.runtime.docker_driver import DockerRuntime

    engine, sessions, inst = open_store(settings)
    with sessions() as session:
        ensure_admin(session, settings.home / "admin-token", settings.currency)
    pool, prefix = settings.network_pool, settings.network_prefix
    runtime = DockerRuntime(inst, settings.docker_url, network_pool=pool, network_prefix=prefix)
    # Builds commit layers of up to the build disk limit: a commit may take minutes.
    client = (
        docker.DockerClient(base_url=settings.docker_url, version="auto", timeout=BUILD_API_TIMEOUT)
        if settings.docker_url
        else docker.from_env(version="auto", timeout=BUILD_API_TIMEOUT)
    )
    # Before any build can start: what a server killed mid-build left behind.
    sweep_leftovers(client.api, inst, settings.builds_dir)
    builder = EngineBuilder(client, inst, network_pool=pool, network_prefix=prefix)
    nginx = NginxManager(
        settings.nginx_dir,
        settings.nginx_binary,
        settings.ingress_listen,
        settings.ingress_port,
        dynamic_upstreams=None if settings.proxy_dynamic_upstreams else False,
    )
    platform = Platform(
        settings=settings,
        engine=engine,
        sessions=sessions,
        installation=inst,
        runtime=runtime,
        builder=builder,
        images=DockerImageStore(client.api),
        nginx=nginx,
    )
    platform.lease = LeaderLease(
        sessions, server_identity(settings.server_id), ttl=settings.lease_ttl_seconds
    )
    platform.leadership = Leadership(
        platform.lease,
        platform.elected,
        platform.deposed,
        renew_seconds=settings.lease_renew_seconds,
    )
    platform.ingress_sync = IngressSync(settings, sessions, nginx, interval=INGRESS_SYNC_SECONDS)
    platform.certificates = _certificates(settings, sessions, nginx, platform.trigger)
    platform.metrics = build_collectors(
        settings, sessions, platform.lease.holder, nginx, client.api
    )
    platform.build_controllers = lambda: _build_controllers(
        platform, runtime, builder, nginx, client
    )
    return _build_controllers(platform, runtime, builder, nginx, client)


def _build_controllers(
    platform: Platform,
    runtime: DockerRuntime,
    builder: EngineBuilder,
    nginx: NginxManager,
    client: docker.DockerClient,
) -> Platform:
    """The leader's controllers and the backend they drive, not started yet."""
    import docker

    settings, sessions, inst = platform.settings, platform.sessions, platform.installation
    # One stream of engine events for every loop, on a connection of its own.
    events_client = (
        docker.APIClient(base_url=settings.docker_url, version="auto")
        if settings.docker_url
        else docker.from_env(version="auto").api
    )
    platform.events = EngineEvents(events_client, inst)
    if settings.egress_filter:
        platform.netpolicy = build_egress_controller(settings, sessions, inst, platform.events)
    local = LocalWorkloads(
        runtime,
        host_memory_reserve_mb=settings.host_memory_reserve_mb,
        seed=instance_seed(sessions),
        node_labels=settings.node_labels,
    )
    holder: dict[str, Reconciler] = {}  # the reconciler, for the callbacks made before it
    workloads = MovingWorkloads(
        local,
        make_swarm=lambda: _start_swarm_backend(platform, holder["reconciler"]),
        backend=_recorded_backend(settings, sessions),
        routed=lambda: set(holder["reconciler"].routed),
    )
    health = HealthMonitor(WorkloadTargets(workloads), settings.health_interval_seconds)
    local.healthy = health.is_healthy
    local.on_started = health.probe_soon  # checked at once, not at the next round
    reconciler = Reconciler(settings, sessions, workloads, nginx, health)
    if not settings.resolved_database_url.startswith("sqlite"):
        # A shared store may have other servers whose ingress polls it every second: an old
        # revision is retired only once theirs route the new one too.
        reconciler.ingress_settle_seconds = 2.0 * INGRESS_SYNC_SECONDS
    holder["reconciler"] = reconciler
    # A Swarm task Berth did not start itself is checked as soon as it is seen running.
    reconciler.on_running = lambda inst: _probe_instance(health, inst)
    reconciler.set_node_availability = lambda node, availability: (
        platform.swarm_manager.set_availability(node, availability)
        if platform.swarm_manager is not None
        else None
    )
    local.on_change = reconciler.trigger
    platform.events.subscribe(ControllerWaker(reconciler.trigger, health.probe_soon, health.forget))
    if platform.netpolicy is not None:
        local.network_ready = platform.netpolicy.ensure_filtered
        builder.network_ready = platform.netpolicy.ensure_filtered  # build networks too
    # A tenant's network stays while a dedicated database (Memcached) is on it, apps or not.
    dedicated_runner = databases_dedicated.local_runner(
        runtime, settings.docker_url, local.network_ready
    )
    local.held_networks = dedicated_runner.held_networks
    health.on_change = reconciler.trigger
    platform.health, platform.reconciler = health, reconciler
    platform.workloads = workloads
    platform.registry = platform_registry(settings, client, inst, workloads.backend)
    if workloads.backend() == "swarm":
        platform.swarm_manager = _manager_client(settings, inst)
    platform.billing = BillingController(
        settings, sessions, on_suspension_change=reconciler.trigger
    )
    platform.webhooks = WebhookSender(settings, sessions)
    platform.database_purge = DatabasePurge(
        sessions,
        sweep=lambda session, now: databases_dedicated.sweep_leftovers(
            session, dedicated_runner, now
        ),
    )
    # Dedicated servers (berth-db-*) are reached at their container's address on its bridge.
    platform.database_backups = DatabaseBackupPass(
        sessions,
        settings,
        databases_dedicated.local_backups(runtime, settings.docker_url, settings),
        interval=BACKUP_PASS_SECONDS,
    )
    admin = databases_dedicated.local_factory(
        runtime, settings.docker_url, settings.cache_dir, local.network_ready
    )
    platform.database_usage = DatabaseUsagePass(sessions, settings, admin)
    platform.database_rotation = DatabaseRotationPass(sessions, settings, admin)
    if platform.certificates is not None and platform.certificates.acme_on:
        platform.acme = AcmePass(sessions, settings, platform.certificates)
    return platform


def _certificates(
    settings: Settings,
    sessions: sessionmaker[Session],
    nginx: NginxManager,
    trigger: Callable[[], None],
) -> Certificates:
    """HTTPS on this server's nginx: certificates from the ACME CA (when one is configured)
    and uploads, HTTP-01 answered by the API from the store."""
    from berth.certs.acme_client import AcmeIssuer
    from berth.certs.store_challenges import StoreChallenges

    issuer = None
    if settings.acme_directory_url:
        issuer = AcmeIssuer(
            settings.acme_directory_url,
            settings.home / "certs" / "account.key",
            StoreChallenges(sessions),
            trust=Path(settings.acme_ca_bundle) if settings.acme_ca_bundle else None,
            contact_email=settings.acme_email or None,
        )
    certificates = Certificates(settings, issuer, sessions=sessions)
    certificates.share_account_key()  # one ACME account, whichever server leads
    certificates.on_change = trigger
    nginx.tls = certificates.tls_config
    # Every routing pass (the leader's reconciler, a follower's ingress sync) asks: what the
    # store holds (another server's upload, the leader's issuance) is served within a pass.
    nginx.tls_version = certificates.refresh_if_changed
    nginx.acme_upstream = api_upstream(settings)
    return certificates


def api_upstream(settings: Settings) -> Upstream | None:
    """This server's API as nginx reaches it (an IP literal; a wildcard listen is reached on
    loopback), or None when it listens on a name nginx would have to resolve."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
        settings.api_host, settings.api_host
    )
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return Upstream(host, settings.api_port)


def _recorded_backend(
    settings: Settings, sessions: sessionmaker[Session]
) -> Callable[[], BackendKind]:
    """The backend the store records (``berth cluster init`` writes it), read at most once a
    second: every pass asks."""
    last: list[tuple[float, BackendKind]] = []

    def read() -> BackendKind:
        if settings.backend == "swarm":
            return "swarm"
        now = time.monotonic()
        if last and now - last[0][0] < 1.0:
            return last[0][1]
        with sessions() as session:
            kind = current_backend(session)
        last[:] = [(now, kind)]
        return kind

    return read


def _manager_client(settings: Settings, installation: str) -> ManagerClient:
    import docker

    api = (
        docker.APIClient(base_url=settings.docker_url, version="auto")
        if settings.docker_url
        else docker.from_env(version="auto").api
    )
    return ManagerClient(api, installation)


def _start_swarm_backend(platform: Platform, reconciler: Reconciler) -> Workloads:
    """The Swarm backend over the manager Berth talks to, and the watch that wakes the
    reconciler on every task change (Swarm has no task events on 20.10)."""
    from berth.swarm.api import DockerSwarmAPI
    from berth.workloads.swarm import SwarmWorkloads

    registry = platform.registry
    if registry is not None:
        registry.start_quietly()  # before any service names an image in it
    api = DockerSwarmAPI(
        platform.settings.docker_url,
        registry_auth=registry.auth_for if registry is not None else None,
    )
    # Removed tasks are reported for a minute: every reader (billing among them) sees them.
    backend = SwarmWorkloads(api, platform.installation, removed_report_seconds=60.0)
    if platform.swarm_manager is None:
        platform.swarm_manager = _manager_client(platform.settings, platform.installation)
    platform.swarm_watch = SwarmWatch(api, platform.installation, reconciler.trigger)
    if platform.settings.node_guard:
        platform.node_guard = _node_guard_sync(platform, api)
    if platform.settings.ingress_nodes and registry is not None:
        platform.ingress_nodes = _ingress_nodes_sync(platform, api)
    if platform.started:
        platform.swarm_watch.start()
        if platform.node_guard is not None:
            platform.node_guard.start()
        if platform.ingress_nodes is not None:
            platform.ingress_nodes.start()
    return backend


def _ingress_nodes_sync(platform: Platform, api: DockerSwarmAPI) -> IngressNodesSync:
    """The leader keeps an nginx on every node labelled ingress=true; its image is built on
    the engine Berth talks to and pushed to the platform registry the first time a pass needs
    it."""
    from berth.controllers.ingress_nodes_sync import agent_server_url
    from berth.controllers.node_guard_sync import source_address_toward
    from berth.images.ingress_image import ensure_ingress_image, push_ingress_image
    from berth.swarm.guard_service import node_address

    settings, registry = platform.settings, platform.registry
    assert registry is not None

    def image() -> str:
        registry.ensure_running()
        built = ensure_ingress_image(registry.client, settings.cache_dir)
        return push_ingress_image(
            registry.client, built, registry.address, registry.server.auth_config
        )

    def server_url() -> str:
        source = ""
        if not settings.ingress_server_url and settings.api_host in ("0.0.0.0", "::"):
            managers = [n for n in api.nodes() if (n.get("Spec") or {}).get("Role") == "manager"]
            for node in managers:
                source = source_address_toward(node_address(node)) if node_address(node) else ""
                if source and not source.startswith("127."):
                    break
        return agent_server_url(
            settings.ingress_server_url, settings.api_host, settings.api_port, source
        )

    lease = platform.lease
    return IngressNodesSync(
        api,
        platform.sessions,
        platform.installation,
        image,
        server_url,
        settings.ingress_node_port,
        interval=settings.ingress_nodes_interval_seconds,
        is_leader=lambda: lease is None or lease.holds(),
    )


def _node_guard_sync(platform: Platform, api: DockerSwarmAPI) -> NodeGuardSync:
    """The leader keeps Berth's firewall on every node; its image is built on the engine Berth
    talks to and pushed to the platform registry the first time a pass needs it."""
    from berth.controllers.node_guard_sync import GuardSettings, LocalGuard
    from berth.images.node_guard_image import ensure_guard_image, push_guard_image
    from berth.swarm.guard_service import protected_addresses

    settings, registry = platform.settings, platform.registry
    assert registry is not None

    def image() -> str:
        registry.ensure_running()
        built = ensure_guard_image(registry.client, settings.cache_dir)
        return push_guard_image(
            registry.client, built, registry.address, registry.server.auth_config
        )

    guard = GuardSettings(
        server_addresses=tuple(settings.server_addresses),
        protected=tuple(
            protected_addresses(
                settings.registry_listen,
                settings.api_host,
                settings.swarm_default_addr_pool,
                settings.node_guard_protect,
            )
        ),
        join_from=tuple(settings.node_guard_join_from),
    )
    lease = platform.lease
    return NodeGuardSync(
        api,
        platform.installation,
        guard,
        image,
        interval=settings.node_guard_interval_seconds,
        is_leader=lambda: lease is None or lease.holds(),
        local=LocalGuard(registry.client),
    )


def _probe_instance(health: HealthMonitor, inst: WorkloadInstance) -> None:
    target = instance_target(inst)
    if target is not None:
        health.probe_soon(target)
