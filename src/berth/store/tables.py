"""SQLAlchemy tables. Every tenant-owned row carries ``tenant_id``; repositories filter by it."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id() -> str:
    """Lowercase hex ids: safe in container labels, file names and nginx upstream names."""
    return secrets.token_hex(8)


def now() -> float:
    return time.time()


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Installation-wide facts, like the installation id that labels every container."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Tenant(Base):
    """Owner of every resource. A user's personal tenant, or a team with members and roles."""

    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    kind: Mapped[str] = mapped_column(String(16), default="personal")
    plan_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    suspended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    below_zero_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    low_balance_warned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class User(Base):
    """A person who signs in. ``is_operator`` marks platform operators (not a tenant role)."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_operator: Mapped[bool] = mapped_column(default=False)
    personal_tenant_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("tenant_id", "user_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Invitation(Base):
    __tablename__ = "invitations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(254))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float] = mapped_column(Float)
    accepted_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class WebSession(Base):
    """A panel/CLI login session: hashed at rest, expires, revoked at logout."""

    __tablename__ = "web_sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ip: Mapped[str] = mapped_column(String(64), default="")


class PlanRow(Base):
    """An operator-defined plan; prices in minor units; a NULL limit means unlimited."""

    __tablename__ = "plans"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    price_per_gb_hour_minor: Mapped[int] = mapped_column(Integer)
    price_per_cpu_hour_minor: Mapped[int] = mapped_column(Integer)
    included_gb_hours: Mapped[int] = mapped_column(Integer, default=0)
    included_cpu_hours: Mapped[int] = mapped_column(Integer, default=0)
    max_apps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_instances: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_memory_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_domains: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Builds and instances: NULL means the installation's setting (berth.settings).
    max_concurrent_builds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    build_memory_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    build_cpus_milli: Mapped[int | None] = mapped_column(Integer, nullable=True)
    build_disk_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    instance_disk_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Outbound internet from the tenant's containers and build steps (internal ranges never).
    egress_internet: Mapped[bool] = mapped_column(default=True)
    # Managed databases' storage per GiB-month; NULL: the installation's setting.
    storage_price_per_gib_month_minor: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Request bodies at the ingress (MiB); NULL: the installation's setting.
    max_request_body_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class RunIntervalRow(Base):
    """When an instance ran, from the engine's own start and stop times (metering's input)."""

    __tablename__ = "run_intervals"
    __table_args__ = (UniqueConstraint("container_id", "started_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    container_id: Mapped[str] = mapped_column(String(128), index=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    app_id: Mapped[str] = mapped_column(String(32))
    memory_mb: Mapped[int] = mapped_column(Integer)
    cpus_milli: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    stopped_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)


class UsageRow(Base):
    """Instance-ms per tenant, app, size and closed hour; the key makes it exactly once."""

    __tablename__ = "usage_records"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    app_id: Mapped[str] = mapped_column(String(32))
    size: Mapped[str] = mapped_column(String(32))
    hour_start: Mapped[int] = mapped_column(BigInteger, index=True)
    instance_ms: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class LedgerTx(Base):
    """One balanced ledger transaction; ``key`` is its idempotency key."""

    __tablename__ = "ledger_transactions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    currency: Mapped[str] = mapped_column(String(3))
    memo: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[float] = mapped_column(Float, default=now)
    period_hour: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class LedgerEntryRow(Base):
    __tablename__ = "ledger_entries"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tx_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"), index=True)
    account: Mapped[str] = mapped_column(String(100), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)


class InvoiceRow(Base):
    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("tenant_id", "period"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    period: Mapped[str] = mapped_column(String(7))
    currency: Mapped[str] = mapped_column(String(3))
    total_minor: Mapped[int] = mapped_column(BigInteger)
    lines_json: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[float] = mapped_column(Float, default=now)


class Notification(Base):
    __tablename__ = "notifications"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class WebhookDelivery(Base):
    """An outgoing signed webhook and its delivery log (attempts, status, last error)."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    event: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    url: Mapped[str] = mapped_column(String(500))
    payload_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=now)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float, default=now)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditEvent(Base):
    """Who did what, when and from where."""

    __tablename__ = "audit_events"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    at: Mapped[float] = mapped_column(Float, default=now, index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    user_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    actor: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(500))
    ip: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[int] = mapped_column(Integer)


class ApiToken(Base):
    """Bearer tokens, stored as SHA-256 hashes: the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(String(64), default="admin")
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class App(Base):
    """Desired state of an app. ``target_*`` is what should run, ``serving_*`` what last passed."""

    __tablename__ = "apps"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    memory_mb: Mapped[int] = mapped_column(Integer)
    cpus_milli: Mapped[int] = mapped_column(Integer)
    port: Mapped[int] = mapped_column(Integer)
    health_path: Mapped[str | None] = mapped_column(String(255), nullable=True)
    scale: Mapped[int] = mapped_column(Integer, default=1)
    config_json: Mapped[str] = mapped_column(Text, default="{}")
    generation: Mapped[int] = mapped_column(Integer, default=0)
    next_version: Mapped[int] = mapped_column(Integer, default=1)
    target_release_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    target_generation: Mapped[int] = mapped_column(Integer, default=0)
    serving_release_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    serving_generation: Mapped[int] = mapped_column(Integer, default=0)
    deployment_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Set by a delete: the controllers remove the instances, then the row goes.
    deleting_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Placement rules over node labels, a JSON list like ["zone==b"] (berth.domain.placement).
    constraints_json: Mapped[str] = mapped_column(Text, default="[]")
    # Traffic controls at the ingress, one validated value (berth.domain.traffic.to_json).
    traffic_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now, onupdate=now)


class Release(Base):
    """Immutable once written: image, config, command and resources of one version."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app_id", "version"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    image_ref: Mapped[str] = mapped_column(String(255))
    image_id: Mapped[str] = mapped_column(String(128))
    config_json: Mapped[str] = mapped_column(Text, default="{}")
    command_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    memory_mb: Mapped[int] = mapped_column(Integer)
    cpus_milli: Mapped[int] = mapped_column(Integer)
    port: Mapped[int] = mapped_column(Integer)
    health_path: Mapped[str | None] = mapped_column(String(255), nullable=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    # The image in the platform registry, pinned by digest ("ADDR/t-x/app@sha256:..."): what
    # every node pulls. None on one machine, where the engine has the image itself.
    pinned_image: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Deployment(Base):
    """One rollout of a revision; ``status`` says succeeded only once instances are healthy."""

    __tablename__ = "deployments"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    release_id: Mapped[str] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="in_progress")
    message: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[float] = mapped_column(Float, default=now)
    deadline: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The placement constraints its revision runs under (a JSON list), fixed when it starts:
    # the revision it replaces keeps its own, so Swarm never moves those tasks in place.
    constraints_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class Instance(Base):
    """Observed status of one container, written by the controller (never by the API)."""

    __tablename__ = "instances"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    app_id: Mapped[str] = mapped_column(String(32), index=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    release_id: Mapped[str] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    node: Mapped[str] = mapped_column(String(64), default="local")
    container_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(32), default="pending")
    healthy: Mapped[bool] = mapped_column(default=False)
    host_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Where the ingress reaches it (with host_port): every Berth server routes from these rows.
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    last_log: Mapped[str] = mapped_column(Text, default="")
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now, onupdate=now)


class Domain(Base):
    """A custom domain: globally unique, so one domain routes to one app only."""

    __tablename__ = "domains"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    hostname: Mapped[str] = mapped_column(String(253), unique=True)
    # A custom domain routes only once its control is proven (DNS TXT) or an operator approved.
    verification_token: Mapped[str] = mapped_column(String(64), default="")
    verified_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    verified_by: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Lease(Base):
    """Who runs the controllers: one holder at a time, until ``expires_at``. ``token`` grows
    with every new holder (a fencing token): a write made under an older token is refused."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128), default="")
    token: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[float] = mapped_column(Float, default=0.0)
    renewed_at: Mapped[float] = mapped_column(Float, default=0.0)


class NodeDrain(Base):
    """A drain the operator asked for: the node's instances move away start-first."""

    __tablename__ = "node_drains"
    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_name: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(32), default="draining")  # drained|timed_out
    message: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[float] = mapped_column(Float, default=now)
    deadline: Mapped[float] = mapped_column(Float, default=0.0)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class DbServer(Base):
    """A shared database server tenants' databases are placed on. ``admin_url`` carries Berth's
    admin credentials: it stays in the store and is never answered, printed or logged."""

    __tablename__ = "db_servers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    engine: Mapped[str] = mapped_column(String(16), index=True)
    admin_url: Mapped[str] = mapped_column(Text)
    # The address tenants' instances use (may differ from the one in admin_url).
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[int] = mapped_column(Integer)  # databases it may hold (deleted ones count)
    state: Mapped[str] = mapped_column(String(16), default="active")  # active | draining
    created_at: Mapped[float] = mapped_column(Float, default=now)


class ManagedDatabase(Base):
    """A tenant's database on a shared server. Its server-side names derive from the ids
    (berth.databases.names); ``name`` is the tenant's label only. ``password`` is what Berth
    keeps to hand to the tenant (servers store only hashes); empty once deleted."""

    __tablename__ = "databases"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    engine: Mapped[str] = mapped_column(String(16))
    server_id: Mapped[str] = mapped_column(ForeignKey("db_servers.id"), index=True)
    plan: Mapped[str] = mapped_column(String(16), default="shared")
    size_mb: Mapped[int] = mapped_column(Integer)
    connection_limit: Mapped[int] = mapped_column(Integer)
    password: Mapped[str] = mapped_column(Text, default="")
    write_allowed: Mapped[bool] = mapped_column(default=True)
    state: Mapped[str] = mapped_column(String(16), default="active")  # active|deleting|deleted
    created_at: Mapped[float] = mapped_column(Float, default=now)
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # A deleted database stays on its server, closed, until then; the purge pass drops it.
    purge_after: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    # The size quota (berth.services.databases_usage): False while ``write_allowed`` is stored
    # but not yet applied on the server (retried every pass); the last pass's failure, if any.
    write_applied: Mapped[bool] = mapped_column(default=True)
    usage_error: Mapped[str] = mapped_column(Text, default="")
    # When the usage pass last measured it: a pass measures the longest unmeasured first.
    measured_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Rotation (berth.databases.rotation): the login the URL names (empty: the first), the
    # credential the last rotation set aside until its apps serve the new URL or
    # ``retire_after`` (empty: none pending), and when the previous one was revoked.
    login: Mapped[str] = mapped_column(String(64), default="", server_default="")
    retiring: Mapped[str] = mapped_column(Text, default="", server_default="")
    retire_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    rotated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    retired_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class DatabaseAttachment(Base):
    """A database's URL in an app's config under ``var`` (and, for Redis, its key prefix
    under ``prefix_var``): rotating the password re-releases every attached app."""

    __tablename__ = "database_attachments"
    __table_args__ = (UniqueConstraint("database_id", "app_id"), UniqueConstraint("app_id", "var"))
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    database_id: Mapped[str] = mapped_column(
        ForeignKey("databases.id", ondelete="CASCADE"), index=True
    )
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    var: Mapped[str] = mapped_column(String(128))
    prefix_var: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float, default=now)


class DatabaseBackup(Base):
    """One backup of a managed database: ``verified`` only once its file was restored into a
    scratch database and the content found equal to the source's (``fingerprint``, JSON);
    ``failed`` says why in ``reason``. ``path`` is Berth's own (derived from ids, never input);
    a ``final`` backup (taken by a delete) is kept until ``keep_until``."""

    __tablename__ = "database_backups"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    database_id: Mapped[str] = mapped_column(
        ForeignKey("databases.id", ondelete="CASCADE"), index=True
    )
    engine: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))  # manual|scheduled|final
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|running|...
    reason: Mapped[str] = mapped_column(Text, default="")
    path: Mapped[str] = mapped_column(Text, default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    fingerprint: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    keep_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class DatabaseMeasurement(Base):
    """What the usage pass measured of one managed database: the size quota's and the hourly
    storage bill's input (berth.billing.storage)."""

    __tablename__ = "database_measurements"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    database_id: Mapped[str] = mapped_column(
        ForeignKey("databases.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    measured_at: Mapped[float] = mapped_column(Float, index=True)
    bytes_used: Mapped[int] = mapped_column(BigInteger)
    connections: Mapped[int] = mapped_column(Integer)


class StorageHourRow(Base):
    """The storage one database was billed for in one closed UTC hour; ``key`` (the ledger
    charge's too) makes it once. Kept after the database is purged, as usage records are."""

    __tablename__ = "database_storage_hours"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    database_id: Mapped[str] = mapped_column(String(32), index=True)
    database_name: Mapped[str] = mapped_column(String(64))
    hour_start: Mapped[int] = mapped_column(BigInteger, index=True)
    bytes_billed: Mapped[int] = mapped_column(BigInteger)
    price_per_gib_month_minor: Mapped[int] = mapped_column(Integer)  # the price it was billed at
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    # The invoice it is on: its hour's month, or the next open one when that month's invoice
    # was issued before the hour was billed (its last hour, as a rule).
    invoice_period: Mapped[str] = mapped_column(String(7), index=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class AppMetricRow(Base):
    """One app's traffic through one server's nginx in one time bucket (berth.metrics). Each
    server writes only its own rows; readers sum over servers."""

    __tablename__ = "app_metric_buckets"
    __table_args__ = (UniqueConstraint("server_id", "app_id", "bucket_start"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    server_id: Mapped[str] = mapped_column(String(200))
    app_id: Mapped[str] = mapped_column(String(32), index=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    bucket_start: Mapped[int] = mapped_column(BigInteger, index=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    status_1xx: Mapped[int] = mapped_column(BigInteger, default=0)
    status_2xx: Mapped[int] = mapped_column(BigInteger, default=0)
    status_3xx: Mapped[int] = mapped_column(BigInteger, default=0)
    status_4xx: Mapped[int] = mapped_column(BigInteger, default=0)
    status_5xx: Mapped[int] = mapped_column(BigInteger, default=0)
    body_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    latency: Mapped[str] = mapped_column(Text, default="")  # berth.metrics.histogram.encode


class InstanceMetricRow(Base):
    """One instance's cgroup readings in one time bucket, from the server whose engine runs it."""

    __tablename__ = "instance_metric_buckets"
    __table_args__ = (UniqueConstraint("server_id", "instance_id", "bucket_start"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    server_id: Mapped[str] = mapped_column(String(200))
    instance_id: Mapped[str] = mapped_column(String(32), index=True)
    app_id: Mapped[str] = mapped_column(String(32), index=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    container_id: Mapped[str] = mapped_column(String(128))
    bucket_start: Mapped[int] = mapped_column(BigInteger, index=True)
    cpu_usec_delta: Mapped[int] = mapped_column(BigInteger, default=0)  # used in the bucket
    memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # the last reading
    memory_max_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    sampled_at: Mapped[float] = mapped_column(Float)


class AcmeChallenge(Base):
    """An HTTP-01 answer while the CA validates it (berth.certs): every server's nginx sends
    ``/.well-known/acme-challenge/TOKEN`` to a Berth API, which answers from this table, so the
    CA may reach any ingress."""

    __tablename__ = "acme_challenges"
    token: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_authorization: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[float] = mapped_column(Float, default=now)


class CertificateRow(Base):
    """One name's certificate (berth.certs.store_certs): its status as JSON (CertStatus), and
    once issued or uploaded its chain and key, which every Berth server writes to its own
    disk for its nginx. ``version`` names the issued pair (a digest of the chain)."""

    __tablename__ = "certificates"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    status_json: Mapped[str] = mapped_column(Text, default="")
    chain_pem: Mapped[str] = mapped_column(Text, default="")
    key_pem: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[str] = mapped_column(String(32), default="")
    updated_at: Mapped[float] = mapped_column(Float, default=now)
