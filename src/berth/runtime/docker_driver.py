"""The Docker Engine driver.

Every container it creates is hardened (no capabilities beyond KEPT_CAPABILITIES, no new
privileges, memory/CPU/pids limits, a read-only root filesystem with size-limited tmpfs at
WRITABLE_PATHS, no host mounts, a tenant bridge network, the app port published on loopback only)
and labelled for this installation. An engine that cannot be reached raises EngineUnavailable;
one that answers with an error raises RuntimeFailure. It never lists, starts, stops or removes a
container, nor removes a network, that lacks those labels. It never pulls images.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import re
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

import docker
import docker.errors
import requests
from docker.types import LogConfig

from berth.runtime.protocol import (
    KEPT_CAPABILITIES,
    WRITABLE_PATHS,
    ContainerInfo,
    ContainerSpec,
    ContainerState,
    EngineUnavailable,
    RuntimeFailure,
    container_labels,
    is_owned,
    owner_labels,
)
from berth.runtime.subnets import (
    DEFAULT_NETWORK_POOL,
    DEFAULT_NETWORK_PREFIX,
    create_bridge_network,
    parse_pool,
)

LOOPBACK = "127.0.0.1"
SWARM_TASK_LABEL = "com.docker.swarm.task.id"
LOG_OPTIONS = {"max-size": "10m", "max-file": "3"}
NETWORK_OPTIONS = {"com.docker.network.bridge.enable_icc": "true"}
_STOPPED_STATES = frozenset({"exited", "dead"})
_RFC3339 = re.compile(
    r"^(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?(?P<zone>Z|[+-]\d\d:\d\d)$"
)
_ENGINE_ERRORS: tuple[type[Exception], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
)


class DockerRuntime:
    """A Docker Engine on one node, scoped to one Berth installation."""

    def __init__(
        self,
        installation: str,
        docker_url: str = "",
        node: str = "local",
        network_pool: str = DEFAULT_NETWORK_POOL,
        network_prefix: int = DEFAULT_NETWORK_PREFIX,
    ) -> None:
        if not installation:
            raise ValueError("installation id must not be empty")
        self.installation = installation
        self.node = node
        self._network_pool = parse_pool(network_pool, network_prefix)
        self._network_prefix = network_prefix
        self._docker_url = docker_url
        self._client: Any = None
        # The client connects lazily, so Berth starts (and reports ping() False) while the engine
        # is down instead of failing at construction.
        self._client_lock = threading.Lock()

    # -- engine -------------------------------------------------------------------------------

    def ping(self) -> bool:
        try:
            with _engine_errors("ping the engine"):
                return bool(self._api().ping())
        except RuntimeFailure:
            return False

    def version(self) -> str:
        with _engine_errors("read the engine version"):
            return str(self._api().version()["Version"])

    def memory_bytes(self) -> int:
        with _engine_errors("read the engine's memory"):
            return int(self._api().info()["MemTotal"])

    # -- networks -----------------------------------------------------------------------------

    def ensure_network(self, name: str, labels: Mapping[str, str]) -> None:
        if self._owned_network(name, "use") is not None:
            return
        try:
            with _engine_errors(f"create network {name}"):
                create_bridge_network(
                    self._api(),
                    name,
                    {**labels, **owner_labels(self.installation)},
                    NETWORK_OPTIONS,
                    self._network_pool,
                    self._network_prefix,
                )
        except RuntimeFailure:
            # Lost a race with another creator of the same network: fine if it is ours now.
            if self._owned_network(name, "use") is None:
                raise

    def remove_network(self, name: str) -> None:
        network = self._owned_network(name, "remove")
        if network is None:
            return
        try:
            with _engine_errors(f"remove network {name}"):
                self._api().remove_network(network["Id"])
        except RuntimeFailure as failure:
            if not isinstance(failure.__cause__, docker.errors.NotFound):
                raise

    def list_networks(self) -> list[str]:
        with _engine_errors("list networks"):
            networks = self._api().networks(
                filters={"label": _owner_filters(self.installation), "driver": "bridge"}
            )
        # Bridges of this engine only: a Swarm's overlays of the same installation are not ours.
        return sorted(n["Name"] for n in networks if is_owned(n.get("Labels"), self.installation))

    # -- containers ---------------------------------------------------------------------------

    def run(self, spec: ContainerSpec) -> ContainerInfo:
        labels = container_labels(spec, self.installation, self.node)
        container_id = self._create(spec, labels)
        try:
            with _engine_errors(f"start container {spec.name}"):
                self._api().start(container_id)
        except RuntimeFailure:
            self._discard(container_id)
            raise
        return self._info_of(container_id)

    def start(self, container_id: str) -> ContainerInfo:
        attrs = self._owned_container(container_id, "start")
        with _engine_errors(f"start container {container_id}"):
            self._api().start(attrs["Id"])
        return self._info_of(attrs["Id"])

    def remove(self, container_id: str, stop_timeout: float = 10.0) -> float | None:
        attrs = self._inspect_raw(container_id)
        if attrs is None:
            return None
        if not is_owned(_labels_of(attrs), self.installation):
            raise _foreign(container_id, "remove")
        stopped_at: float | None = None
        try:
            with _engine_errors(f"stop container {container_id}"):
                self._api().stop(attrs["Id"], timeout=max(0, math.ceil(stop_timeout)))
            # The engine's own stop time ends the last run interval (billing), not ours.
            stopped = self._inspect_raw(attrs["Id"])
            if stopped is not None:
                stopped_at = _container_info(stopped).finished_at
            with _engine_errors(f"remove container {container_id}"):
                self._api().remove_container(attrs["Id"], force=True)
        except RuntimeFailure as failure:
            if not _already_gone(failure.__cause__):
                raise
        return stopped_at

    def list(self, labels: Mapping[str, str] | None = None) -> list[ContainerInfo]:
        filters = [f"{key}={value}" for key, value in (labels or {}).items()]
        with _engine_errors("list containers"):
            summaries = self._api().containers(
                all=True, filters={"label": [*filters, *_owner_filters(self.installation)]}
            )
        # A Swarm task's container carries Berth's labels too (its service set them): it is the
        # swarm backend's, never this engine's to restart or remove.
        mine = (s for s in summaries if SWARM_TASK_LABEL not in (s.get("Labels") or {}))
        infos = (self.inspect(summary["Id"]) for summary in mine)
        return [info for info in infos if info is not None]

    def inspect(self, container_id: str) -> ContainerInfo | None:
        attrs = self._inspect_raw(container_id)
        labels = _labels_of(attrs) if attrs is not None else {}
        if attrs is None or not is_owned(labels, self.installation) or SWARM_TASK_LABEL in labels:
            return None
        return _container_info(attrs)

    def logs(self, container_id: str, tail: int = 100) -> str:
        attrs = self._owned_container(container_id, "read the logs of")
        with _engine_errors(f"read the logs of container {container_id}"):
            output = self._api().logs(attrs["Id"], stdout=True, stderr=True, tail=tail)
        return bytes(output).decode("utf-8", errors="replace")

    def follow_logs(
        self, container_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Generator[str, None, None]:
        """Lines (without their line break) printed by the container, until it stops.

        Ownership and the stream are checked here, not on the first ``next()``; closing the
        iterator closes the connection to the engine.
        """
        attrs = self._owned_container(container_id, "follow the logs of")
        with _engine_errors(f"follow the logs of container {container_id}"):
            stream = self._api().logs(
                attrs["Id"], stdout=True, stderr=True, stream=True, follow=True, tail=tail
            )
        if stop is not None:
            threading.Thread(
                target=_close_when_set, args=(stop, stream), name="berth-logs-stop", daemon=True
            ).start()
        return _decoded_lines(stream, container_id)

    # -- images -------------------------------------------------------------------------------

    def image_id(self, ref: str) -> str | None:
        if not ref:
            return None
        try:
            with _engine_errors(f"inspect image {ref}"):
                return str(self._api().inspect_image(ref)["Id"])
        except RuntimeFailure as failure:
            if isinstance(failure.__cause__, docker.errors.NotFound):
                return None
            raise

    # -- helpers ------------------------------------------------------------------------------

    def _docker(self) -> Any:
        """The docker-py DockerClient, connected on first use."""
        with self._client_lock:
            if self._client is None:
                with _engine_errors("connect to the engine"):
                    self._client = _connect(self._docker_url)
            return self._client

    def _api(self) -> Any:
        """The low-level docker-py APIClient."""
        return self._docker().api

    def _create(self, spec: ContainerSpec, labels: Mapping[str, str]) -> str:
        try:
            with _engine_errors(f"create container {spec.name}"):
                container = self._docker().containers.create(
                    spec.image, **_create_options(spec, labels)
                )
        except RuntimeFailure as failure:
            if isinstance(failure.__cause__, docker.errors.ImageNotFound):
                raise RuntimeFailure(
                    f"image {spec.image!r} is not present on node {self.node!r}; "
                    "Berth never pulls images, build or load it first"
                ) from failure.__cause__
            raise
        return str(container.id)

    def _discard(self, container_id: str) -> None:
        """Remove a container that was created but failed to start, so its name is free again."""
        try:
            with _engine_errors(f"remove container {container_id}"):
                self._api().remove_container(container_id, force=True)
        except RuntimeFailure:
            pass  # the start failure is what the caller needs to see

    def _inspect_raw(self, container_id: str) -> dict[str, Any] | None:
        try:
            with _engine_errors(f"inspect container {container_id}"):
                return cast(dict[str, Any], self._api().inspect_container(container_id))
        except RuntimeFailure as failure:
            if isinstance(failure.__cause__, docker.errors.NotFound):
                return None
            raise

    def _owned_container(self, container_id: str, action: str) -> dict[str, Any]:
        attrs = self._inspect_raw(container_id)
        if attrs is None:
            raise RuntimeFailure(f"cannot {action} container {container_id}: no such container")
        if not is_owned(_labels_of(attrs), self.installation):
            raise _foreign(container_id, action)
        return attrs

    def _info_of(self, container_id: str) -> ContainerInfo:
        return _container_info(self._owned_container(container_id, "inspect"))

    def _owned_network(self, name: str, action: str) -> dict[str, Any] | None:
        """The network called exactly ``name`` if it is ours, None if missing; raises if foreign."""
        with _engine_errors(f"look up network {name}"):
            candidates = self._api().networks(names=[name])
        network = next((n for n in candidates if n.get("Name") == name), None)
        if network is not None and not is_owned(network.get("Labels"), self.installation):
            raise RuntimeFailure(
                f"network {name!r} is not managed by Berth installation {self.installation!r}; "
                f"refusing to {action} it"
            )
        return cast(dict[str, Any] | None, network)


def _owner_filters(installation: str) -> list[str]:
    return [f"{key}={value}" for key, value in owner_labels(installation).items()]


def _connect(docker_url: str) -> Any:
    if docker_url:
        return docker.DockerClient(base_url=docker_url, version="auto")
    return docker.from_env(version="auto")


@contextmanager
def _engine_errors(action: str) -> Iterator[None]:
    """Turn any docker-py or transport error into RuntimeFailure; the cause stays attached."""
    try:
        yield
    except _ENGINE_ERRORS as exc:
        if _unreachable(exc):
            raise EngineUnavailable(
                f"the container engine cannot be reached (cannot {action}): {_explain(exc)}"
            ) from exc
        raise RuntimeFailure(f"docker: cannot {action}: {_explain(exc)}") from exc


_UNREACHABLE: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,  # refused, reset (OSError subclasses)
    FileNotFoundError,  # the engine's socket does not exist
)


def _unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the engine is not there, rather than that it
    refused the operation. docker-py wraps a failed first connection in a DockerException."""
    if isinstance(exc, docker.errors.APIError):
        return False  # the engine answered (with an error status): it is there
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _UNREACHABLE):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    # docker-py's from_env()/DockerClient() keep only the text of the transport error.
    text = str(exc)
    return isinstance(exc, docker.errors.DockerException) and (
        "Error while fetching server API version" in text
        or "Connection aborted" in text
        or "No such file or directory" in text
    )


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


def _already_gone(cause: BaseException | None) -> bool:
    """True for errors meaning the container is (being) removed by someone else."""
    if isinstance(cause, docker.errors.NotFound):
        return True
    return isinstance(cause, docker.errors.APIError) and "already in progress" in _explain(cause)


def _foreign(container_id: str, action: str) -> RuntimeFailure:
    return RuntimeFailure(
        f"container {container_id} is not managed by this Berth installation; "
        f"refusing to {action} it"
    )


def _create_options(spec: ContainerSpec, labels: Mapping[str, str]) -> dict[str, Any]:
    """docker-py ``containers.create`` keyword arguments: the hardening lives here."""
    return {
        "command": list(spec.command) if spec.command is not None else None,
        "name": spec.name,
        "labels": dict(labels),
        # PORT wins over spec.env: the app must listen where the port is published.
        "environment": {**spec.env, "PORT": str(spec.port)},
        "network": spec.network,
        "ports": {f"{spec.port}/tcp": (LOOPBACK, None)},
        "mem_limit": spec.memory_bytes,
        "memswap_limit": spec.memory_bytes,
        "nano_cpus": spec.nano_cpus,
        "pids_limit": spec.pids_limit,
        "cap_drop": ["ALL"],
        "cap_add": list(KEPT_CAPABILITIES),
        "security_opt": ["no-new-privileges:true"],
        "privileged": False,
        # overlay2 on ext4 cannot cap the writable layer, so there is none: the app writes only
        # to tmpfs, capped per mount (and charged to its memory cgroup by the kernel).
        "read_only": True,
        "tmpfs": {path: _tmpfs_options(spec.disk_bytes) for path in WRITABLE_PATHS},
        # Berth restarts crashed containers itself, with backoff and honest status.
        "restart_policy": {"Name": "no"},
        "log_config": LogConfig(type=LogConfig.types.JSON, config=LOG_OPTIONS),
        # tini as PID 1: signals reach the app (a stop is quick, not a 10 s SIGKILL wait) and
        # zombies are reaped, whatever the image's entrypoint does.
        "init": True,
    }


def _tmpfs_options(size_bytes: int) -> str:
    # mode=1777 as on a normal /tmp: an image whose USER is not root must still write there.
    return f"rw,nosuid,nodev,size={max(size_bytes, 4096)},mode=1777"


def _labels_of(attrs: Mapping[str, Any]) -> dict[str, str]:
    return dict((attrs.get("Config") or {}).get("Labels") or {})


def _container_info(attrs: Mapping[str, Any]) -> ContainerInfo:
    state = attrs.get("State") or {}
    status = cast(ContainerState, state.get("Status") or "dead")
    stopped = status in _STOPPED_STATES
    started_at = _unix_time(state.get("StartedAt"))
    finished_at = _unix_time(state.get("FinishedAt")) if stopped else None
    if started_at is not None and finished_at is not None:
        # Docker stamps StartedAt after the process is running, so a process that exits at once
        # can report FinishedAt a millisecond *before* StartedAt. Keep durations non-negative.
        finished_at = max(finished_at, started_at)
    return ContainerInfo(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name", "")).lstrip("/"),
        labels=_labels_of(attrs),
        state=status,
        exit_code=int(state.get("ExitCode", 0)) if stopped else None,
        started_at=started_at,
        finished_at=finished_at,
        host_port=_loopback_port(attrs),
        oom_killed=bool(state.get("OOMKilled")),
        pid=int(state.get("Pid") or 0),
        image=str(attrs.get("Image", "")),
        address=_network_address(attrs) if status == "running" else None,
    )


def _close_when_set(stop: threading.Event, stream: Any) -> None:
    """Close a log stream from another thread: the blocked read then ends the generator."""
    stop.wait()
    with contextlib.suppress(Exception):
        stream.close()


def _network_address(attrs: Mapping[str, Any]) -> str | None:
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    for settings in networks.values():
        if (settings or {}).get("IPAddress"):
            return str(settings["IPAddress"])
    return None


def _loopback_port(attrs: Mapping[str, Any]) -> int | None:
    """The host port published on loopback; None while the container is not running."""
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for bindings in ports.values():
        for binding in bindings or []:
            if binding.get("HostIp") == LOOPBACK and binding.get("HostPort"):
                return int(binding["HostPort"])
    return None


def _unix_time(text: str | None) -> float | None:
    """Docker's RFC 3339 timestamp (nanoseconds) as unix seconds; its zero time means None."""
    if not text or text.startswith("0001-01-01"):
        return None
    match = _RFC3339.match(text)
    if match is None:
        return None
    zone = "+00:00" if match["zone"] == "Z" else match["zone"]
    seconds = datetime.fromisoformat(match["base"] + zone).timestamp()
    fraction = match["fraction"] or ""
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def _decoded_lines(stream: Iterable[bytes], container_id: str) -> Generator[str, None, None]:
    """Split a stream of byte chunks (cut anywhere, even inside a character) into text lines."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    try:
        with _engine_errors(f"follow the logs of container {container_id}"):
            for chunk in stream:
                pending += decoder.decode(chunk)
                *lines, pending = pending.split("\n")
                yield from lines
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
