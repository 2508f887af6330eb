"""Dedicated database servers as containers on this machine's engine (the local backend).

Each is hardened like a tenant's container and more: every capability dropped (memcached needs
none), no new privileges, a read-only root with no writable mount at all, a non-root user, a
memory limit with no swap, a pids limit, and only the tenant's own bridge network, with the
alias the tenant's URL names, and no published port. Its labels carry this installation's id
and ``berth.database-server`` but not ``berth.managed``: the app reconciler lists
``berth.managed`` containers as app instances and would remove one it has no app for.

Docker restarts it when it exits (``unless-stopped``): a cache comes back empty, which is what
a cache that lost its process is anyway, and no controller of Berth's has to watch it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests

from berth.databases.dedicated import (
    LABEL_DATABASE,
    LABEL_DATABASE_SERVER,
    DedicatedSpec,
    RunningServer,
    is_server_name,
)
from berth.databases.errors import DatabaseExists, DatabaseServerError, DatabaseServerUnavailable
from berth.errors import BerthError
from berth.runtime.protocol import LABEL_INSTALLATION, LABEL_TENANT, Runtime

STOP_TIMEOUT_SECONDS = 5
API_TIMEOUT_SECONDS = 60
_LOG_CONFIG = {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}}


def spec_labels(spec: DedicatedSpec, installation: str) -> dict[str, str]:
    return {
        **spec.labels,
        LABEL_INSTALLATION: installation,
        LABEL_DATABASE_SERVER: spec.engine,
        LABEL_DATABASE: spec.database_id,
        LABEL_TENANT: spec.tenant_id,
    }


def host_config(api: Any, spec: DedicatedSpec) -> Any:
    """The container's limits and hardening (docker-py ``create_host_config``)."""
    return api.create_host_config(
        network_mode=spec.network,
        mem_limit=spec.memory_bytes,
        memswap_limit=spec.memory_bytes,
        nano_cpus=spec.nano_cpus,
        pids_limit=spec.pids_limit,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        privileged=False,
        read_only=True,
        init=True,
        restart_policy={"Name": "unless-stopped"},
        log_config=_LOG_CONFIG,
    )


class LocalDedicatedRunner:
    """``DedicatedRunner`` on one Docker Engine. ``runtime`` makes the tenant's network the way
    the local backend does (same subnet pool, same labels); ``network_ready`` is the egress
    filter's hook, run before anything starts on a network."""

    def __init__(
        self,
        runtime: Runtime,
        docker_url: str = "",
        network_ready: Callable[[str], None] = lambda network: None,
    ) -> None:
        self.runtime, self.installation = runtime, runtime.installation
        self._docker_url, self._network_ready = docker_url, network_ready
        self._client: Any = None

    def _api(self) -> Any:
        if self._client is None:
            with _engine_errors("connect to the Docker Engine"):
                self._client = (
                    docker.DockerClient(base_url=self._docker_url, timeout=API_TIMEOUT_SECONDS)
                    if self._docker_url
                    else docker.from_env(timeout=API_TIMEOUT_SECONDS)
                )
        return self._client.api

    @property
    def client(self) -> Any:
        """The docker-py client (the image builder uses the same engine)."""
        self._api()
        return self._client

    def run(self, spec: DedicatedSpec) -> RunningServer:
        api = self._api()
        try:
            self.runtime.ensure_network(spec.network, {LABEL_TENANT: spec.tenant_id})
            self._network_ready(spec.network)
        except BerthError as exc:
            raise DatabaseServerError(
                f"the network {spec.network} is not ready: {exc.message}"
            ) from exc
        if self._inspect(spec.name) is not None:
            raise DatabaseExists(f"a container named {spec.name} exists already")
        networking = api.create_networking_config(
            {spec.network: api.create_endpoint_config(aliases=[spec.alias])}
        )
        with _engine_errors(f"create {spec.name}"):
            created = api.create_container(
                spec.image,
                command=list(spec.command),
                name=spec.name,
                user=spec.user,
                labels=spec_labels(spec, self.installation),
                host_config=host_config(api, spec),
                networking_config=networking,
                detach=True,
            )
        try:
            with _engine_errors(f"start {spec.name}"):
                api.start(created["Id"])
        except BerthError:
            self.remove(spec.name)
            raise
        found = self.find(spec.name)
        if found is None:
            self.remove(spec.name)
            raise DatabaseServerError(f"{spec.name} stopped as soon as it started")
        return found

    def find(self, name: str) -> RunningServer | None:
        attrs = self._inspect(name)
        if attrs is None or not (attrs.get("State") or {}).get("Running"):
            return None
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        address = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), "")
        if not address:
            return None
        limit = int((attrs.get("HostConfig") or {}).get("Memory") or 0)
        return RunningServer(name=name, address=address, memory_limit=limit)

    def remove(self, name: str) -> None:
        attrs = self._inspect(name)
        if attrs is None:
            return
        try:
            with _engine_errors(f"remove {name}"):
                self._api().remove_container(attrs["Id"], force=True, v=True)
        except DatabaseServerError as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound):
                raise

    def names(self) -> list[str]:
        with _engine_errors("list dedicated database servers"):
            found = self._api().containers(
                all=True,
                filters={
                    "label": [f"{LABEL_INSTALLATION}={self.installation}", LABEL_DATABASE_SERVER]
                },
            )
        return sorted(
            n.lstrip("/") for c in found for n in c.get("Names") or [] if is_server_name(n[1:])
        )

    def created_at(self, name: str) -> float | None:
        if not is_server_name(name):
            raise ValueError(f"{name!r} is not a dedicated server's name")
        with _engine_errors(f"look up {name}"):
            found = self._api().containers(
                all=True,
                filters={
                    "name": f"^/{name}$",
                    "label": [f"{LABEL_INSTALLATION}={self.installation}", LABEL_DATABASE_SERVER],
                },
            )
        return float(found[0]["Created"]) if found else None

    def held_networks(self) -> set[str]:
        """The tenant networks this installation's dedicated servers are on (the local
        backend's ``held_networks``: it must not remove them as idle)."""
        with _engine_errors("list dedicated database servers"):
            found = self._api().containers(
                all=True,
                filters={
                    "label": [f"{LABEL_INSTALLATION}={self.installation}", LABEL_DATABASE_SERVER]
                },
            )
        return {
            name for c in found for name in ((c.get("NetworkSettings") or {}).get("Networks") or {})
        }

    def _inspect(self, name: str) -> dict[str, Any] | None:
        """The container of that name if it is this installation's dedicated server; one of
        that name that is not is refused (never touched)."""
        if not is_server_name(name):
            raise ValueError(f"{name!r} is not a dedicated server's name")
        try:
            with _engine_errors(f"inspect {name}"):
                attrs: dict[str, Any] = self._api().inspect_container(name)
        except DatabaseServerError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_INSTALLATION) != self.installation or not labels.get(
            LABEL_DATABASE_SERVER
        ):
            raise DatabaseServerError(f"container {name} is not this Berth installation's")
        return attrs


@contextmanager
def _engine_errors(action: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.NotFound as exc:
        raise DatabaseServerError(f"cannot {action}: not found") from exc
    except docker.errors.APIError as exc:
        raise DatabaseServerError(f"cannot {action}: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DatabaseServerUnavailable(f"cannot {action}: {exc}") from exc
