"""Request and response bodies: separate Create/Update/Public shapes, as the API documents them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The constraints below are documented, not enforced by the model: the services check them and
# answer with a precise code (invalid_name, invalid_memory, invalid_scale, ...).
APP_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?$"
MEMORY_PATTERN = r"^[0-9]{1,7}[mMgG]?[bB]?$"  # berth.api.openapi_limits writes the exact range
HEALTH_PATH_PATTERN = r"^(/[A-Za-z0-9._~/%?=&-]{0,254})?$"
EMAIL_PATTERN = r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*$"
CONFIG_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# What deploy --image may name here: a base image or one of the tenant's builds (with a
# registry configured, its references too).
IMAGE_PATTERN = (
    r"^(berth|berth-app)/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"
)
NO_NUL = r"^[^\x00]*$"


class AppCreate(Strict):
    name: str = Field(
        max_length=100,
        description="one DNS label of at most 30 characters; some names are reserved",
        json_schema_extra={"pattern": APP_NAME_PATTERN, "maxLength": 30},
    )
    memory: str | int = Field(
        default="256M",
        description="like 256M or 1G, or a number of MB",
        json_schema_extra={
            "anyOf": [
                {"type": "string", "pattern": MEMORY_PATTERN},
                {"type": "integer", "minimum": 1},
            ]
        },
    )
    cpus: float = Field(default=0.5, json_schema_extra={"exclusiveMinimum": 0})
    port: int = Field(default=8080, json_schema_extra={"minimum": 1, "maximum": 65535})
    health_path: str | None = Field(
        default="/",
        description="HTTP path, or null (or empty) for a TCP check",
        json_schema_extra={
            "anyOf": [{"type": "string", "pattern": HEALTH_PATH_PATTERN}, {"type": "null"}]
        },
    )


CONSTRAINT_PATTERN = (
    r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?(==|!=)[A-Za-z0-9]([A-Za-z0-9._:/-]{0,126}[A-Za-z0-9])?$"
)


TRAFFIC_USER_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class RedirectIn(Strict):
    source: str = Field(
        max_length=253, description="one of the app's hostnames (platform or custom domain)"
    )
    target: str = Field(max_length=253, description="another of the app's hostnames")
    code: Literal[301, 308] = 301


class BasicAuthUserIn(Strict):
    user: str = Field(
        max_length=64,
        description="1-64 of letters, digits, '.', '_' and '-'",
        json_schema_extra={"pattern": TRAFFIC_USER_PATTERN},
    )
    password: str = Field(
        min_length=1, max_length=128, description="stored as a bcrypt hash only, never shown"
    )


class RateLimitIn(Strict):
    per_second: int = Field(
        description="requests per second per client address",
        json_schema_extra={"minimum": 1, "maximum": 10000},
    )
    burst: int = Field(
        default=0,
        description="requests above the rate let through at once",
        json_schema_extra={"minimum": 0, "maximum": 10000},
    )


class TrafficUpdate(Strict):
    """Each part given replaces that part; absent (or null, except rate_limit) keeps it."""

    redirects: list[RedirectIn] | None = Field(
        default=None,
        description="redirects between the app's own hostnames (like www to apex), at most 20; "
        "[] removes them. A loop (a -> b -> a) is refused.",
    )
    basic_auth: list[BasicAuthUserIn] | None = Field(
        default=None,
        description="the users HTTP basic auth lets in, at most 20; [] turns it off",
    )
    maintenance: bool | None = Field(
        default=None, description="on: every request gets the 503 maintenance page"
    )
    maintenance_message: str | None = Field(
        default=None,
        max_length=1000,
        description="one line of plain text on the maintenance page (HTML-escaped)",
    )
    allow: list[str] | None = Field(
        default=None,
        description="IPv4/IPv6 CIDRs let in, at most 100; when any, every other address gets "
        "403; [] allows all",
    )
    deny: list[str] | None = Field(
        default=None,
        description="CIDRs refused with 403 (before allow), at most 100; [] removes them",
    )
    rate_limit: RateLimitIn | None = Field(
        default=None,
        description="a request rate limit per client address (beyond it: 429); null removes "
        "it, absent keeps it",
    )
    https_redirect: bool | None = Field(
        default=None,
        description="on (the default): plain HTTP to a hostname with a certificate is "
        "redirected to HTTPS (308); off: both are served",
    )


class RedirectPublic(BaseModel):
    source: str
    target: str
    code: int


class RateLimitPublic(BaseModel):
    per_second: int
    burst: int


class TrafficPublic(BaseModel):
    redirects: list[RedirectPublic] = Field(default_factory=list)
    basic_auth_users: list[str] = Field(
        default_factory=list, description="the user names (passwords are never shown)"
    )
    maintenance: bool = False
    maintenance_message: str = ""
    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    rate_limit: RateLimitPublic | None = None
    https_redirect: bool = True


class AppUpdate(Strict):
    constraints: list[str] | None = Field(
        default=None,
        description=(
            "placement constraints over node labels, like zone==b or disk!=hdd; [] removes "
            "them all, null (or absent) keeps them. A change is a new revision rolled out "
            "start-first. Keys follow the rules of node labels (zone values are lowercase)."
        ),
        json_schema_extra={
            "anyOf": [
                {
                    "type": "array",
                    "maxItems": 10,
                    "items": {"type": "string", "maxLength": 128, "pattern": CONSTRAINT_PATTERN},
                },
                {"type": "null"},
            ]
        },
    )
    traffic: TrafficUpdate | None = Field(
        default=None,
        description="traffic controls at the ingress; only the parts given change (see "
        "TrafficUpdate). The whole result is validated: one bad part changes nothing.",
    )


class AppUpdated(BaseModel):
    app: AppPublic
    deployment: DeploymentPublic | None = Field(
        description="the rollout the change started; null when nothing runs yet or no change"
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, for programs: like not_found or too_large")
    message: str = Field(description="for people: what was wrong and what to do")


class ErrorBody(BaseModel):
    """Every error the API answers, whatever its status."""

    error: ErrorDetail


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorBody, "description": description}


# Declared for every operation: any of them may be refused for these reasons.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    400: _error("malformed request"),
    401: _error("no, an invalid or an expired credential"),
    403: _error("the role, the token's scope or a quota does not allow it"),
    404: _error("not found (or not yours)"),
    409: _error("conflicts with the current state; retry or change the request"),
    413: _error("the body is larger than this route's limit"),
    422: _error("the request's contents are not valid"),
    429: _error("too many requests; the Retry-After header says when to come back"),
    502: _error("the container engine refused or failed the operation"),
    503: _error("the container engine cannot be reached; try again later"),
}


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
    constraints: list[str] = Field(
        default_factory=list, description="placement constraints over node labels"
    )
    traffic: TrafficPublic = Field(
        default_factory=lambda: TrafficPublic(), description="traffic controls at the ingress"
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
    image: str = Field(max_length=255, json_schema_extra={"pattern": IMAGE_PATTERN})


class ScaleRequest(Strict):
    replicas: int = Field(
        description="0 up to the installation's max_scale (at most 1000)",
        json_schema_extra={"minimum": 0, "maximum": 1000},
    )


class RollbackRequest(Strict):
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)


class ConfigChange(Strict):
    set: dict[str, str] = Field(
        default_factory=dict,
        description="at most 200 keys, 32 KiB a value and 64 KiB in all; PORT is set by Berth",
        json_schema_extra={
            "maxProperties": 200,
            "propertyNames": {"pattern": CONFIG_KEY_PATTERN, "not": {"const": "PORT"}},
            "additionalProperties": {"type": "string", "maxLength": 32768, "pattern": NO_NUL},
        },
    )
    unset: list[str] = Field(
        default_factory=list,
        description="keys that are set",
        json_schema_extra={
            "maxItems": 200,
            "items": {"type": "string", "pattern": CONFIG_KEY_PATTERN},
        },
    )


class ConfigPublic(BaseModel):
    config: dict[str, str]
    release: ReleasePublic | None
    deployment: DeploymentPublic | None
    values_hidden: bool = False  # a read-only caller sees the keys only


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


class CertPublic(BaseModel):
    """A hostname's HTTPS certificate."""

    domain: str
    state: str = Field(description="issued, pending, failed, or off (no CA can issue it)")
    source: str = Field(description="acme, upload or wildcard")
    not_after: str | None = None
    reason: str | None = Field(default=None, description="why not issued (the CA's words)")
    next_retry: str | None = None


class DomainPublic(BaseModel):
    """A custom domain. It routes only once ``status`` is "verified"."""

    hostname: str
    created_at: float
    status: Literal["verified", "pending"]
    verified_at: float | None
    # "legacy": added before proof of control existed, and kept routing by the migration.
    verified_by: Literal["dns", "operator", "legacy"] | None
    challenge: DomainChallenge | None = Field(
        description="While pending: publish this record, then verify the domain"
    )
    certificate: CertPublic | None = Field(
        default=None, description="its HTTPS certificate (None: HTTPS is off on this server)"
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
    role: str | None = Field(
        default=None, description="operators only: leader (runs the controllers) or follower"
    )
    lease_holder: str | None = Field(default=None, description="operators only")
    lease_token: int | None = Field(default=None, description="operators only")
    nginx_upstreams: str | None = Field(
        default=None,
        description="operators only: instances set at run time (no reload) or in the config",
    )
    acme: str | None = Field(
        default=None, description="operators only: the ACME pass (off, ok, or its last error)"
    )


AppPublic.model_rebuild()
