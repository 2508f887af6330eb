"""Keep the ingress nodes' service (berth.swarm.ingress_service) in place: the leader's job on
the swarm backend, every few seconds and at start.

One pass: the image ready (built offline on the engine Berth talks to, pushed to the platform
registry, pinned by digest; once per process), the token's secret there (a new token when the
store's hash matches no secret: see berth.ingress.tokens), the service created or updated to
the spec, and the secrets of older tokens removed once no task uses them. Which nodes run it
is Swarm's placement (``node.labels.ingress==true``): a label change needs no pass.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from berth.controllers.platform_image import PlatformImage
from berth.errors import BerthError
from berth.ingress import tokens
from berth.periodic import LoopOwner, PeriodicLoop
from berth.swarm.ingress_service import (
    LABEL_INSTALLATION,
    LABEL_SERVICE,
    IngressAction,
    ingress_spec,
    plan_service,
    secret_name,
)

log = logging.getLogger(__name__)
IMAGE_WHAT = "the ingress nodes' image"


class IngressSwarm(Protocol):
    """What the pass needs of the manager (berth.swarm.api.DockerSwarmAPI has it)."""

    def services(self, labels: dict[str, str] | None = None) -> list[dict[str, Any]]: ...
    def create_service(self, spec: dict[str, Any]) -> str: ...
    def update_service(self, service_id: str, version: int, spec: dict[str, Any]) -> None: ...
    def secrets(self, labels: dict[str, str] | None = None) -> list[dict[str, Any]]: ...
    def create_secret(self, name: str, data: bytes, labels: dict[str, str]) -> str: ...
    def remove_secret(self, secret_id: str) -> None: ...


@dataclass(frozen=True)
class IngressOutcome:
    action: IngressAction
    image: str
    server_url: str
    secret: str


def agent_server_url(configured: str, api_host: str, api_port: int, source_address: str) -> str:
    """The URL the agents reach a Berth server's API at (pure). Raises BerthError when this
    server's API listens on loopback only and no URL is configured: no node could reach it."""
    if configured:
        return configured.rstrip("/")
    host = api_host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{api_port}"  # a name the operator gave the API
    if address.is_loopback:
        raise BerthError(
            f"ingress nodes cannot reach this server's API on {host}: set BERTH_API_HOST to an "
            "address the nodes reach (or 0.0.0.0), or BERTH_INGRESS_SERVER_URL",
            code="ingress_unreachable_api",
        )
    if address.is_unspecified:
        if not source_address:
            raise BerthError(
                "no address of this server toward the swarm: set BERTH_INGRESS_SERVER_URL",
                code="ingress_unreachable_api",
            )
        host = source_address
    return f"http://{host}:{api_port}"


class IngressNodesSync(LoopOwner):
    def __init__(
        self,
        api: IngressSwarm,
        sessions: sessionmaker[Session],
        installation: str,
        image: Callable[[], str],
        server_url: Callable[[], str],
        port: int,
        *,
        interval: float = 3.0,
        is_leader: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.sessions = sessions
        self.installation = installation
        self._server_url = server_url
        self.port = port
        self._is_leader = is_leader
        self._image = PlatformImage(image, IMAGE_WHAT, clock=clock)
        self._lock = threading.Lock()
        self.last: IngressOutcome | None = None
        self._loop = PeriodicLoop("berth-ingress-nodes", self.pass_once, interval)

    def pass_once(self) -> IngressOutcome | None:
        if not self._is_leader():
            return None
        with self._lock:
            return self.sync()

    def sync(self) -> IngressOutcome:
        url = self._server_url()
        reference = self._image.get()
        secret = self._ensure_secret()
        spec = ingress_spec(reference, url, self.port, secret, self.installation)
        action = plan_service(self.api.services(labels={LABEL_SERVICE: "true"}), spec)
        if action.kind == "create":
            self.api.create_service(spec)
            log.info("ingress nodes: service created (agents ask %s)", url)
        elif action.kind == "update":
            self.api.update_service(action.service_id, action.version, spec)
            log.info("ingress nodes: service updated")
        self._remove_old_secrets(keep=secret[0])
        self.last = IngressOutcome(action, reference, url, secret[1])
        return self.last

    def _ensure_secret(self) -> tuple[str, str]:
        """(id, name) of the current token's secret; a new token if the store's matches none."""
        mine = {LABEL_SERVICE: "true", LABEL_INSTALLATION: self.installation}
        existing = {
            str((s.get("Spec") or {}).get("Name") or ""): str(s.get("ID") or "")
            for s in self.api.secrets(labels=mine)
        }
        with self.sessions() as session:
            digest = tokens.stored_hash(session)
            if digest and secret_name(digest) in existing:
                name = secret_name(digest)
                return existing[name], name
            token = tokens.new_token()
            digest = tokens.token_sha256(token)
            name = secret_name(digest)
            secret_id = self.api.create_secret(name, token.encode(), mine)
            tokens.store_hash(session, digest)
            session.commit()
        log.info("ingress nodes: a new token (secret %s)", name)
        return secret_id, name

    def _remove_old_secrets(self, keep: str) -> None:
        mine = {LABEL_SERVICE: "true", LABEL_INSTALLATION: self.installation}
        for secret in self.api.secrets(labels=mine):
            secret_id = str(secret.get("ID") or "")
            if secret_id and secret_id != keep:
                # Still mounted by a task the update has not replaced yet: next pass.
                with contextlib.suppress(BerthError):
                    self.api.remove_secret(secret_id)
