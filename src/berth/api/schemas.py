"""Request and response bodies: separate Create/Update/Public shapes, as the API documents them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AppCreate(Strict):
    name: str = Field(max_length=100)
    memory: str | int = Field(default="256M", description="like 256M or 1G")
    cpus: float = Field(default=0.5)
    port: int = Field(default=8080)
    health_path: str | None = Field(default="/", description="HTTP path, or null for a TCP check")


class AppPublic(BaseModel):
    id: str
    name: str
    memory_mb: int
    cpus: float
    port: int
    health_path: str | None
    scale: int
    urls: list[str]
    domains: list[str]
    serving_release: int | None
    target_release: int | None
    deployment: DeploymentPublic | None
    instances: InstanceCounts
    created_at: float
    state: Literal["active", "deleting"] = Field(
        "active", description="deleting: its instances are stopping, then the app is gone"
    )


class InstanceCounts(BaseModel):
    desired: int
    running: int
    healthy: int


class ReleasePublic(BaseModel):
    id: str
    version: int
    image: str
    image_id: str
    config_keys: list[str]
    description: str
    memory_mb: int
    cpus: float
    port: int
    created_at: float
    serving: bool


class DeploymentPublic(BaseModel):
    id: str
    release_version: int | None
    kind: str
    status: str
    message: str
    started_at: float
    finished_at: float | None


class DeployImage(Strict):
    image: str = Field(max_length=255)


class ScaleRequest(Strict):
    replicas: int


class RollbackRequest(Strict):
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)


class ConfigChange(Strict):
    set: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list)


class ConfigPublic(BaseModel):
    config: dict[str, str]
    release: ReleasePublic | None
    deployment: DeploymentPublic | None


class DeployResult(BaseModel):
    release: ReleasePublic
    deployment: DeploymentPublic


class InstancePublic(BaseModel):
    id: str
    container_id: str | None
    release_version: int | None
    state: str
    healthy: bool
    host_port: int | None
    restarts: int
    exit_code: int | None
    reason: str
    last_log: str
    node: str
    started_at: float | None


class DomainCreate(Strict):
    hostname: str = Field(max_length=300)


class DomainChallenge(BaseModel):
    """The DNS record that proves control of a domain."""

    type: Literal["TXT"]
    name: str
    value: str


class DomainPublic(BaseModel):
    """A custom domain. It routes only once ``status`` is "verified"."""

    hostname: str
    created_at: float
    status: Literal["verified", "pending"]
    verified_at: float | None
    verified_by: Literal["dns", "operator"] | None
    challenge: DomainChallenge | None = Field(
        description="While pending: publish this record, then verify the domain"
    )


class StatusPublic(BaseModel):
    """What a tenant may know of the platform; the fields left ``None`` are operators' only
    (they name the installation, or other tenants in the raw text of an error)."""

    server: str
    version: str
    engine: str = Field(description="ok or unavailable")
    ingress_port: int
    base_domain: str
    tenant: str
    engine_version: str | None = Field(default=None, description="operators only")
    engine_error: str | None = Field(default=None, description="operators only")
    nginx: str | None = Field(default=None, description="operators only")
    nginx_pid: int | None = Field(default=None, description="operators only")
    installation: str | None = Field(default=None, description="operators only")
    reconciler: str | None = Field(default=None, description="operators only")


AppPublic.model_rebuild()
