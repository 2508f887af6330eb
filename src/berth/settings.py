"""Berth's settings, read from the environment (prefix ``BERTH_``) with embedded defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from berth.cluster.labels import apply_change
from berth.errors import BerthError


class Settings(BaseSettings):
    """Every knob a provider may turn. Defaults give a usable single-machine platform."""

    model_config = SettingsConfigDict(env_prefix="BERTH_", extra="ignore")

    home: Path = Field(default=Path("/var/lib/berth"), description="State directory")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite in home")
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8700, ge=1, le=65535)
    ingress_port: int = Field(default=80, ge=1, le=65535)
    ingress_listen: str = "0.0.0.0"
    base_domain: str = "berth.localhost"
    docker_url: str = ""  # empty: docker-py's from_env()
    nginx_binary: str = "/usr/sbin/nginx"
    max_scale: int = Field(default=20, ge=1, le=1000)
    max_build_context_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    max_build_files: int = Field(default=20_000, ge=1)
    deploy_timeout_seconds: float = Field(default=120.0, gt=0)
    reconcile_interval_seconds: float = Field(default=2.0, gt=0)
    # Rollouts start the new revision this many instances at a time (0: all at once), pausing
    # this long after each batch is ready; the old revision keeps its count until the end.
    rollout_parallelism: int = Field(default=0, ge=0, le=1000)
    rollout_delay_seconds: float = Field(default=0.0, ge=0, le=3600)
    health_interval_seconds: float = Field(default=1.0, gt=0)
    proxy_coalesce_seconds: float = Field(default=0.2, ge=0)
    # Apps' instances set in nginx at run time, without a reload (berth.proxy.dynamic), when
    # the distro's Lua module for nginx is installed; off: written into its config.
    proxy_dynamic_upstreams: bool = True
    # The largest request body an app accepts at the ingress (MiB), for plans that set none
    # (a plan's max_request_body_mb); nginx answers 413 above it, the app never sees it.
    request_body_max_mb: int = Field(default=64, ge=1, le=10240)
    pids_limit: int = Field(default=256, ge=16)
    currency: str = "EUR"
    low_balance_threshold_minor: int = Field(default=500, ge=0)
    arrears_grace_seconds: float = Field(default=72 * 3600, ge=0)
    payment_webhook_secret: str = ""  # empty: the payment webhook is off
    billing_webhook_url: str = ""  # where outgoing billing events go; empty: not sent
    billing_webhook_secret: str = ""
    billing_interval_seconds: float = Field(default=60.0, gt=0)
    # How long an hour waits for a node that is neither ready nor down (unknown, disconnected)
    # to report; then it closes without it (berth.billing.watermark; shown by billing status).
    billing_node_wait_seconds: float = Field(default=3600.0, ge=0)
    webhook_interval_seconds: float = Field(default=5.0, gt=0)
    memory_min_mb: int = 16
    memory_max_mb: int = 16384
    cpus_min: float = 0.05
    cpus_max: float = 16.0

    # -- builds (berth.builds): every step runs under these unless the tenant's plan sets its own
    build_timeout_seconds: float = Field(default=900.0, gt=0, description="Wall time per build")
    build_memory_mb: int = Field(default=1024, ge=64)
    build_cpus: float = Field(default=1.0, gt=0)
    build_pids_limit: int = Field(default=512, ge=16)
    build_disk_mb: int = Field(default=4096, ge=16, description="Layers a build may write")
    build_log_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_concurrent_builds: int = Field(default=2, ge=1, description="Across the platform")
    max_concurrent_builds_per_tenant: int = Field(default=1, ge=1)
    max_queued_builds_per_tenant: int = Field(default=5, ge=0)
    registry: str = ""  # a registry (host[:port]) images may come from; empty: none

    # -- the platform registry (berth.registry): where builds go for the nodes to pull ------
    # Loopback on one machine: no tenant container can reach it (see berth.registry). On a
    # swarm, an address the nodes reach (with --insecure-registry ADDR on each node's engine);
    # there it takes Berth's credentials, and the egress filter should block it for tenants.
    registry_listen: str = "127.0.0.1:5000"
    registry_binary: str = "/usr/bin/docker-registry"
    # htpasswd credentials Berth generates: "auto" turns them on unless it listens on loopback.
    registry_auth: Literal["auto", "on", "off"] = "auto"
    # TLS (PEM paths), so that engines need no --insecure-registry and the credentials never
    # cross the network in clear: each engine trusts /etc/docker/certs.d/ADDR/ca.crt.
    registry_tls_cert: str = ""
    registry_tls_key: str = ""
    registry_tls_ca: str = ""  # what Berth verifies it with; empty: the certificate itself
    # Image GC (the leader, swarm backend): registry manifests and this engine's images that no
    # release keeps go; anything pushed or built within the grace stays (not released yet).
    registry_gc_interval_seconds: float = Field(default=3600.0, gt=0)
    registry_gc_grace_seconds: float = Field(default=3600.0, ge=0)

    # -- request edges (berth.api) ----------------------------------------------------------
    max_json_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_webhook_body_bytes: int = Field(default=64 * 1024, ge=1024)
    signup_limit_per_address: int = Field(default=5, ge=1, description="Per signup window")
    signup_window_seconds: float = Field(default=3600.0, gt=0)
    token_default_days: int = Field(default=90, ge=1, description="API tokens expire by default")
    audit_retention_days: int = Field(default=90, ge=1)
    # A deleted managed database stays on its server, closed, this long before it is dropped.
    database_retention_days: float = Field(default=7.0, ge=0, le=3650)
    # Managed databases' backup files (0600, one directory per tenant); empty: home/db-backups.
    database_backup_dir: str = ""
    # A dump, a restore or a verification longer than this fails (and is reported failed).
    database_backup_timeout_seconds: float = Field(default=3600.0, gt=0)
    # The usage pass (berth.services.databases_usage): how often every database is measured,
    # how long one server may take to answer a pass, how long measurements are kept.
    database_usage_interval_seconds: float = Field(default=300.0, gt=0)
    database_usage_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    database_measurement_retention_days: float = Field(default=35.0, ge=1, le=3650)
    # db rotate (berth.services.databases_rotation): the old credential stays valid until every
    # attached app serves the new URL, or this long at most (a stuck deploy); how often the
    # pending revocations are looked at.
    database_rotation_grace_seconds: float = Field(default=3600.0, gt=0, le=30 * 86400)
    database_rotation_check_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Storage of managed databases, per GiB-month in minor units, for plans that set none.
    database_storage_price_per_gib_month_minor: int = Field(default=10, ge=0)
    reserved_app_names: list[str] = Field(
        default_factory=lambda: [
            "www",
            "api",
            "admin",
            "berth",
            "default",
            "localhost",
            "nginx",
            "mail",
            "status",
            "app",
            "apps",
            "dashboard",
            "panel",
            "registry",
            "ingress",
            "metrics",
            "smtp",
            "ftp",
            "ns1",
            "ns2",
            "root",
            "support",
            "billing",
            "login",
            "auth",
            "static",
        ]
    )

    # -- egress (berth.netpolicy) -----------------------------------------------------------
    egress_filter: bool = True  # off only for development machines without iptables
    egress_blocked_ranges: list[str] = Field(default_factory=list)  # operator's internal CIDRs

    # Subnets of Berth's bridge networks (a network per tenant, and one per building tenant).
    network_pool: str = "10.224.0.0/12"
    network_prefix: int = Field(default=24, ge=8, le=29)

    # -- apps (berth.services) --------------------------------------------------------------
    release_history: int = Field(default=50, ge=2, description="Releases kept per app")
    max_config_bytes: int = Field(default=64 * 1024, ge=1024, description="Total config size")
    max_concurrent_deletes_per_tenant: int = Field(default=5, ge=1)
    instance_disk_mb: int = Field(default=256, ge=1, description="Size of each tmpfs")
    host_memory_reserve_mb: int = Field(default=1024, ge=0, description="Kept free for the host")
    dns_resolver: str = ""  # "host:port" checked for domain TXT proofs; empty: system resolver

    # -- many machines (berth.cluster): `berth cluster init` records "swarm" in the store
    backend: Literal["local", "swarm"] = "local"
    swarm_advertise_addr: str = ""  # empty: the engine picks (one address) or init asks
    swarm_default_addr_pool: str = "10.240.0.0/16"  # overlays' subnets, a /24 each
    # 2 s marks a dead node Down in ~5 s; 1 s is unsafe (a new Raft leader marks live nodes Down)
    swarm_dispatcher_heartbeat_seconds: float = Field(default=2.0, ge=2.0)
    # The node guard (berth.controllers.node_guard_sync): Berth's firewall on every node, a
    # global service. Published ports answer only ingress addresses: nodes labelled
    # ingress=true and the machines running `berth server` (server_addresses; empty: this
    # server's address toward the manager; several servers: list them all).
    node_guard: bool = True
    server_addresses: list[str] = Field(default_factory=list)
    node_guard_protect: list[str] = Field(default_factory=list)  # more CIDRs tenants never reach
    # Who may reach the managers' port 2377 (to join; the join token and mTLS guard it).
    node_guard_join_from: list[str] = Field(default_factory=lambda: ["0.0.0.0/0"])
    node_guard_interval_seconds: float = Field(default=3.0, gt=0)
    cache_dir: Path = Path("/var/cache/berth")  # the .debs of the images Berth makes for nodes
    # Ingress nodes (berth.controllers.ingress_nodes_sync): every node labelled ingress=true
    # runs an nginx with the routes every server serves, on this port of its addresses. The
    # agents there fetch their config from ingress_server_url (empty: this server's API at
    # api_host, or at its address toward the manager when api_host is 0.0.0.0).
    ingress_nodes: bool = True
    ingress_node_port: int = Field(default=80, ge=1, le=65535)
    ingress_server_url: str = Field(default="", max_length=512, pattern=r"^(https?://[^\s]+)?$")
    ingress_nodes_interval_seconds: float = Field(default=3.0, gt=0)

    # -- HTTPS (berth.services.certificates): served on this port for every hostname with a
    # certificate (none yet: no HTTPS listener); 0 turns HTTPS off. Certificates come from an
    # ACME CA at acme_directory_url (empty: none, uploads only; Let's Encrypt in production:
    # https://acme-v02.api.letsencrypt.org/directory), by HTTP-01 through the ingress.
    https_port: int = Field(default=443, ge=0, le=65535)
    acme_directory_url: str = Field(default="", max_length=512, pattern=r"^(https?://[^\s]+)?$")
    acme_email: str = Field(default="", max_length=254)  # the account's contact, optional
    # A CA bundle the ACME client trusts instead of the system's (a private CA, pebble).
    acme_ca_bundle: str = ""
    acme_interval_seconds: float = Field(default=60.0, gt=0)
    # At most this many orders an hour for the whole installation (Let's Encrypt allows 300
    # new orders per account per 3 hours); a burst of new domains waits its turn.
    acme_orders_per_hour: int = Field(default=50, ge=1, le=10000)

    # -- per-app metrics (berth.metrics): every server counts its own nginx's traffic and its
    # engine's containers, in buckets of this many seconds, kept this long
    metrics_enabled: bool = True
    metrics_bucket_seconds: int = Field(default=60, ge=10, le=3600)
    metrics_retention_hours: float = Field(default=24.0, gt=0, le=24 * 90)
    metrics_flush_seconds: float = Field(default=10.0, gt=0, le=600)
    metrics_engine_interval_seconds: float = Field(default=10.0, gt=0, le=600)
    metrics_log_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)

    # -- several servers on one store (berth.controllers.lease): the lease's holder leads ---
    server_id: str = ""  # this server in the lease row; empty: hostname:pid:random
    lease_ttl_seconds: float = Field(default=10.0, gt=0, description="A leader's term")
    lease_renew_seconds: float = Field(default=3.0, gt=0)
    # This machine's labels on the local backend (JSON, like {"zone": "a"}): an app's placement
    # constraints must hold on them, else its instances wait as pending (as on Swarm).
    node_labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("node_labels")
    @classmethod
    def _check_node_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        try:
            return apply_change({}, labels, []) if labels else {}
        except BerthError as bad:
            raise ValueError(bad.message) from None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'berth.db'}"

    @property
    def resolved_backup_dir(self) -> Path:
        if self.database_backup_dir:
            return Path(self.database_backup_dir)
        return self.home / "db-backups"

    @property
    def nginx_dir(self) -> Path:
        return self.home / "nginx"

    @property
    def builds_dir(self) -> Path:
        return self.home / "builds"

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
