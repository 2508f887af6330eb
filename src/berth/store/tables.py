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
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class ApiToken(Base):
    """Bearer tokens, stored as SHA-256 hashes: the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
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
    created_at: Mapped[float] = mapped_column(Float, default=now)
