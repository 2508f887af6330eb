"""Dedicated database servers as containers on this machine's engine (the local backend).

Each is hardened like a tenant's container and more: every capability dropped (none of the
servers needs one: they run as nobody on unprivileged ports and own their data directory), no
new privileges, a read-only root (writable only: the server's data volume and a small tmpfs for
its socket and temporary files; Memcached has neither), a non-root user, a memory limit with no
swap, a pids limit, and only the tenant's own bridge network, with the alias the tenant's URL
names, and no published port. Its labels carry this installation's id and
``berth.database-server`` but not ``berth.managed``: the app reconciler lists ``berth.managed``
containers as app instances and would remove one it has no app for. Its volume carries the same
labels and goes with it.

Docker restarts it when it exits (``unless-stopped``): a cache comes back empty, which is what
a cache that lost its process is anyway; a database comes back with its volume. No controller
of Berth's has to watch it.
"""

from __future__ import annotations

import io
import ipaddress
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests

from berth.databases.dedicated import (
    LABEL_DATABASE,
    LABEL_DATABASE_SERVER,
    DedicatedSpec,
    InitStep,
    RunningServer,
    is_server_name,
    server_of_volume,
    volume_name,
)
from berth.databases.errors import DatabaseExists, DatabaseServerError, DatabaseServerUnavailable
from berth.errors import BerthError
from berth.runtime.protocol import LABEL_INSTALLATION, LABEL_TENANT, Runtime

STOP_TIMEOUT_SECONDS = 5
API_TIMEOUT_SECONDS = 60
INIT_TIMEOUT_SECONDS = 180  # initdb of a new cluster takes 2-5 s; a loaded machine, more
INIT_SUFFIX = "-init"
NOBODY = 65534
_LOG_CONFIG = {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}}


def spec_labels(spec: DedicatedSpec, installation: str) -> dict[str, str]:
    return {
        **spec.labels,
        LABEL_INSTALLATION: installation,
        LABEL_DATABASE_SERVER: spec.engine,
        LABEL_DATABASE: spec.database_id,
        LABEL_TENANT: spec.tenant_id,
    }


def host_config(api: Any, spec: DedicatedSpec, *, network: str = "") -> Any:
    """The container's limits and hardening (docker-py ``create_host_config``); ``network``
    other than the spec's (the init step's ``none``) and no restart for a one-shot step."""
    one_shot = bool(network)
    extra: dict[str, Any] = {}
    if spec.volume:
        extra["binds"] = {spec.volume: {"bind": spec.data_dir, "mode": "rw"}}
    if spec.tmpfs:
        extra["tmpfs"] = dict(spec.tmpfs)
    return api.create_host_config(
        network_mode=network or spec.network,
        mem_limit=spec.memory_bytes,
        memswap_limit=spec.memory_bytes,
        nano_cpus=spec.nano_cpus,
        pids_limit=spec.pids_limit,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        privileged=False,
        read_only=True,
        init=True,
        restart_policy={"Name": "no"} if one_shot else {"Name": "unless-stopped"},
        log_config=_LOG_CONFIG,
        **extra,
    )


def archive(files: Mapping[str, str]) -> bytes:
    """A tar of ``files`` (name: text), each owned by nobody, mode 0600."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            body = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(body), 0o600, NOBODY, NOBODY
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


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

    def network_gateway(self, network: str, tenant_id: str) -> str:
        self._ready_network(network, tenant_id)
        with _engine_errors(f"inspect network {network}"):
            attrs = self._api().inspect_network(network)
        for config in (attrs.get("IPAM") or {}).get("Config") or []:
            gateway = str(config.get("Gateway") or "")
            if gateway and ":" not in gateway:
                return gateway
            try:
                # No gateway named at creation: Docker's is the subnet's first address.
                return str(ipaddress.IPv4Network(str(config.get("Subnet") or ""))[1])
            except ValueError:
                continue
        raise DatabaseServerError(f"the network {network} has no IPv4 gateway")

    def _ready_network(self, network: str, tenant_id: str) -> None:
        try:
            self.runtime.ensure_network(network, {LABEL_TENANT: tenant_id})
            self._network_ready(network)
        except BerthError as exc:
            raise DatabaseServerError(f"the network {network} is not ready: {exc.message}") from exc

    def run(self, spec: DedicatedSpec) -> RunningServer:
        api = self._api()
        self._ready_network(spec.network, spec.tenant_id)
        if self._inspect(spec.name) is not None:
            raise DatabaseExists(f"a container named {spec.name} exists already")
        if spec.volume and self._volume(spec.volume) is not None:
            raise DatabaseExists(f"a volume named {spec.volume} exists already")
        try:
            return self._run(api, spec)
        except BaseException:
            self.remove(spec.name)
            raise

    def _run(self, api: Any, spec: DedicatedSpec) -> RunningServer:
        labels = spec_labels(spec, self.installation)
        if spec.volume:
            with _engine_errors(f"create the volume {spec.volume}"):
                api.create_volume(name=spec.volume, labels=labels)
        if spec.init is not None:
            self._init(api, spec, spec.init, labels)
        networking = api.create_networking_config(
            {spec.network: api.create_endpoint_config(aliases=[spec.alias])}
        )
        extra = {"stop_signal": spec.stop_signal} if spec.stop_signal else {}
        with _engine_errors(f"create {spec.name}"):
            created = api.create_container(
                spec.image,
                command=list(spec.command),
                name=spec.name,
                user=spec.user,
                labels=labels,
                host_config=host_config(api, spec),
                networking_config=networking,
                detach=True,
                **extra,
            )
        for directory, files in spec.files.items():
            with _engine_errors(f"write the server's files into {spec.volume}"):
                if not api.put_archive(created["Id"], directory, archive(files)):
                    raise DatabaseServerError(f"the files of {spec.name} could not be written")
        with _engine_errors(f"start {spec.name}"):
            api.start(created["Id"])
        found = self.find(spec.name)
        if found is None:
            raise DatabaseServerError(
                f"{spec.name} stopped as soon as it started: {self.tail(spec.name)}"
            )
        return found

    def _init(self, api: Any, spec: DedicatedSpec, step: InitStep, labels: dict[str, str]) -> None:
        """The one-shot step on the new volume, in a container of the same image with no
        network; removed when it ends, whatever happened."""
        name = spec.name + INIT_SUFFIX
        with _engine_errors(f"create {name}"):
            created = api.create_container(
                spec.image,
                entrypoint=list(step.entrypoint),
                command=list(step.command),
                name=name,
                user=spec.user,
                labels=labels,
                host_config=host_config(api, spec, network="none"),
                detach=True,
            )
        try:
            with _engine_errors(f"run {name}"):
                if step.files and not api.put_archive(
                    created["Id"], spec.data_dir, archive(step.files)
                ):
                    raise DatabaseServerError(f"the files of {name} could not be written")
                api.start(created["Id"])
                outcome = api.wait(created["Id"], timeout=INIT_TIMEOUT_SECONDS)
            if outcome.get("StatusCode") != 0:
                with _engine_errors(f"read the log of {name}"):
                    tail = api.logs(created["Id"], tail=30).decode(errors="replace").strip()
                raise DatabaseServerError(
                    f"{step.entrypoint[-1][:60]} failed ({outcome.get('StatusCode')}): "
                    f"{tail[-3000:]}"
                )
        finally:
            self._remove_container(name)

    def tail(self, name: str) -> str:
        """The last lines the server logged (for an operator's error; never a tenant's)."""
        try:
            with _engine_errors(f"read the log of {name}"):
                text = self._api().logs(name, tail=5).decode(errors="replace")
        except DatabaseServerError:
            return "(no log)"
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())[-600:]

    def exited(self, name: str) -> bool:
        """Whether the server's container is there and has stopped (not starting, not
        restarting): it will not answer."""
        attrs = self._inspect(name)
        if attrs is None:
            return True
        state = attrs.get("State") or {}
        return not state.get("Running") and not state.get("Restarting")

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
        """The server's container, its init step's (left by a crash) and its volume."""
        attrs = self._inspect(name)
        if attrs is not None:
            self._remove_container(attrs["Id"])
        self._remove_container(name + INIT_SUFFIX, owned=True)
        volume = self._volume(volume_name(name))
        if volume is not None:
            try:
                with _engine_errors(f"remove the volume of {name}"):
                    self._api().remove_volume(volume["Name"], force=True)
            except DatabaseServerError as exc:
                if not isinstance(exc.__cause__, docker.errors.NotFound):
                    raise

    def _remove_container(self, ref: str, *, owned: bool = False) -> None:
        """``owned``: remove it only if it carries this installation's labels."""
        api = self._api()
        try:
            with _engine_errors(f"remove {ref}"):
                if owned:
                    labels = (api.inspect_container(ref).get("Config") or {}).get("Labels") or {}
                    if labels.get(LABEL_INSTALLATION) != self.installation:
                        return
                api.remove_container(ref, force=True, v=True)
        except DatabaseServerError as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound):
                raise

    def _ours(self) -> dict[str, list[str]]:
        return {"label": [f"{LABEL_INSTALLATION}={self.installation}", LABEL_DATABASE_SERVER]}

    def _volumes(self) -> list[dict[str, Any]]:
        with _engine_errors("list dedicated database volumes"):
            found = self._api().volumes(filters=self._ours())
        return list((found or {}).get("Volumes") or [])

    def names(self) -> list[str]:
        with _engine_errors("list dedicated database servers"):
            found = self._api().containers(all=True, filters=self._ours())
        names = {
            n.lstrip("/").removesuffix(INIT_SUFFIX) for c in found for n in c.get("Names") or []
        }
        names |= {server_of_volume(v.get("Name") or "") or "" for v in self._volumes()}
        return sorted(n for n in names if is_server_name(n))

    def created_at(self, name: str) -> float | None:
        if not is_server_name(name):
            raise ValueError(f"{name!r} is not a dedicated server's name")
        with _engine_errors(f"look up {name}"):
            found = self._api().containers(all=True, filters={"name": f"^/{name}$", **self._ours()})
        if found:
            return float(found[0]["Created"])
        volume = self._volume(volume_name(name))
        if volume is None:
            return None
        try:
            return datetime.fromisoformat(
                str(volume["CreatedAt"]).replace("Z", "+00:00")
            ).timestamp()
        except (KeyError, ValueError):
            return 0.0  # no date: old enough to be a leftover

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

    def _volume(self, volume: str) -> dict[str, Any] | None:
        """The volume of that name if it is this installation's; one that is not is refused."""
        try:
            with _engine_errors(f"inspect the volume {volume}"):
                attrs: dict[str, Any] = self._api().inspect_volume(volume)
        except DatabaseServerError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return None
            raise
        labels = attrs.get("Labels") or {}
        if labels.get(LABEL_INSTALLATION) != self.installation or not labels.get(
            LABEL_DATABASE_SERVER
        ):
            raise DatabaseServerError(f"volume {volume} is not this Berth installation's")
        return attrs

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
