"""The few Docker Swarm operations Berth uses, over a manager's Engine API.

Objects go in and come out in Docker's own API shape (plain dicts: a ServiceSpec, a Task, a
Node), so the fake (berth.swarm.fake) and the real manager are held to one contract
(tests/cluster/test_swarm_api_contract.py) and nothing is lost in translation. An engine that
cannot be reached, or a swarm without a leader, raises EngineUnavailable (503); an answer with an
error raises RuntimeFailure (502).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, cast, runtime_checkable

import docker
import docker.auth
import docker.errors
import requests

from berth.errors import EngineUnavailable, RuntimeFailure
from berth.runtime.docker_driver import _explain, _unreachable

Obj = dict[str, Any]

# Answers that mean "no manager can decide now" (an election, a lost quorum), not "refused":
# the caller retries later, as with an engine that is down.
_NO_LEADER = (
    "does not have a leader",
    "not a swarm manager",
    "rpc error: code = Unavailable",
    "rpc error: code = DeadlineExceeded",
    "context deadline exceeded",
)


@runtime_checkable
class SwarmAPI(Protocol):
    """A Swarm manager, reduced to what Berth drives. Lists return fresh dicts to read only."""

    def info(self) -> Obj:
        """The ``Swarm`` part of the engine's info: NodeID, LocalNodeState, ControlAvailable."""
        ...

    def nodes(self) -> list[Obj]: ...

    def update_node(self, node_id: str, version: int, spec: Mapping[str, Any]) -> None:
        """Replace a node's Spec (Availability, Labels, Role) at its Version.Index."""
        ...

    def services(self, labels: Mapping[str, str] | None = None) -> list[Obj]:
        """Services whose labels include every one of ``labels``."""
        ...

    def create_service(self, spec: Mapping[str, Any]) -> str:
        """Create a service from a ServiceSpec; returns its id."""
        ...

    def update_service(self, service_id: str, version: int, spec: Mapping[str, Any]) -> None:
        """Replace a service's spec at its Version.Index (stale versions are refused)."""
        ...

    def remove_service(self, service_id: str) -> None:
        """Remove a service; a missing one is not an error."""
        ...

    def tasks(
        self, service_id: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Obj]:
        """Tasks in every state, of one service and/or of services carrying ``labels``."""
        ...

    def networks(self, labels: Mapping[str, str] | None = None) -> list[Obj]:
        """Swarm-scoped networks whose labels include every one of ``labels``."""
        ...

    def ensure_overlay(self, name: str, labels: Mapping[str, str]) -> str:
        """The id of the overlay called ``name``, created (not attachable) if missing.

        An existing network of that name without every one of ``labels`` is refused: it belongs
        to someone else."""
        ...

    def remove_network(self, network_id: str) -> None:
        """Remove a network; a missing one is not an error."""
        ...

    def task_logs(self, task_id: str, tail: int = 100) -> str:
        """What a task printed (stdout and stderr), read by the manager from the task's node."""
        ...

    def follow_task_logs(
        self, task_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Iterator[str]:
        """Lines a task prints, until it stops or ``stop`` is set."""
        ...


class DockerSwarmAPI:
    """SwarmAPI over docker-py's low-level APIClient on a manager's socket.

    Specs are posted as raw JSON: docker-py's typed helpers predate fields Berth needs
    (``Resources.Limits.Pids``, ``CapabilityAdd``/``CapabilityDrop`` of API 1.41).
    ``registry_auth(image)`` gives the credentials a service's image needs (Berth's platform
    registry: berth.registry.wiring), sent as ``X-Registry-Auth`` on create and update so
    that Swarm hands them to the nodes that pull; None sends none.
    """

    def __init__(
        self,
        base_url: str = "",
        timeout: int = 30,
        registry_auth: Callable[[str], Mapping[str, str] | None] | None = None,
    ) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._registry_auth = registry_auth
        self._client: Any = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- swarm and nodes ----------------------------------------------------------------------

    def info(self) -> Obj:
        with _swarm_errors("read the swarm's state"):
            return cast(Obj, self._api().info().get("Swarm") or {})

    def nodes(self) -> list[Obj]:
        with _swarm_errors("list the swarm's nodes"):
            return cast(list[Obj], self._api().nodes())

    def update_node(self, node_id: str, version: int, spec: Mapping[str, Any]) -> None:
        with _swarm_errors(f"update node {node_id}"):
            self._api().update_node(node_id, version, dict(spec))

    # -- services -----------------------------------------------------------------------------

    def services(self, labels: Mapping[str, str] | None = None) -> list[Obj]:
        with _swarm_errors("list services"):
            return cast(list[Obj], self._api().services(filters=_label_filters(labels)))

    def create_service(self, spec: Mapping[str, Any]) -> str:
        name = spec.get("Name", "")
        with _swarm_errors(f"create service {name}"):
            api = self._api()
            response = api._post_json(
                api._url("/services/create"), data=dict(spec), headers=self._auth_headers(spec)
            )
            return str(api._result(response, True)["ID"])

    def update_service(self, service_id: str, version: int, spec: Mapping[str, Any]) -> None:
        with _swarm_errors(f"update service {service_id}"):
            api = self._api()
            response = api._post(
                api._url("/services/{0}/update", service_id),
                params={"version": int(version)},
                data=json.dumps(dict(spec)),
                headers={"Content-Type": "application/json", **self._auth_headers(spec)},
            )
            api._raise_for_status(response)

    def remove_service(self, service_id: str) -> None:
        try:
            with _swarm_errors(f"remove service {service_id}"):
                self._api().remove_service(service_id)
        except RuntimeFailure as failure:
            if not isinstance(failure.__cause__, docker.errors.NotFound):
                raise

    def tasks(
        self, service_id: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Obj]:
        filters = _label_filters(labels)
        if service_id is not None:
            filters["service"] = [service_id]
        try:
            with _swarm_errors("list tasks"):
                return cast(list[Obj], self._api().tasks(filters=filters))
        except RuntimeFailure as failure:
            # A service that is gone has no tasks (the manager answers 404 for its filter).
            if service_id is not None and isinstance(failure.__cause__, docker.errors.NotFound):
                return []
            raise

    # -- secrets (the platform's own: the ingress nodes' token) --------------------------------

    def secrets(self, labels: Mapping[str, str] | None = None) -> list[Obj]:
        with _swarm_errors("list secrets"):
            return cast(list[Obj], self._api().secrets(filters=_label_filters(labels)))

    def create_secret(self, name: str, data: bytes, labels: Mapping[str, str]) -> str:
        with _swarm_errors(f"create secret {name}"):
            created = self._api().create_secret(name, data, labels=dict(labels))
            return str(created["ID"])

    def remove_secret(self, secret_id: str) -> None:
        try:
            with _swarm_errors(f"remove secret {secret_id}"):
                self._api().remove_secret(secret_id)
        except RuntimeFailure as failure:
            if not isinstance(failure.__cause__, docker.errors.NotFound):
                raise

    # -- networks -----------------------------------------------------------------------------

    def networks(self, labels: Mapping[str, str] | None = None) -> list[Obj]:
        filters = {**_label_filters(labels), "scope": ["swarm"]}
        with _swarm_errors("list networks"):
            return cast(list[Obj], self._api().networks(filters=filters))

    def ensure_overlay(self, name: str, labels: Mapping[str, str]) -> str:
        existing = self._network_named(name, labels)
        if existing is not None:
            return existing
        try:
            with _swarm_errors(f"create overlay network {name}"):
                created = self._api().create_network(
                    name,
                    driver="overlay",
                    labels=dict(labels),
                    attachable=False,
                    check_duplicate=True,
                    scope="swarm",
                )
                return str(created["Id"])
        except RuntimeFailure:
            # Lost a race with another creator of the same network: fine if it is ours now.
            existing = self._network_named(name, labels)
            if existing is None:
                raise
            return existing

    def remove_network(self, network_id: str) -> None:
        try:
            with _swarm_errors(f"remove network {network_id}"):
                self._api().remove_network(network_id)
        except RuntimeFailure as failure:
            if not isinstance(failure.__cause__, docker.errors.NotFound):
                raise

    # -- logs ---------------------------------------------------------------------------------

    def task_logs(self, task_id: str, tail: int = 100) -> str:
        with _swarm_errors(f"read the logs of task {task_id}"):
            chunks = self._task_log_stream(task_id, tail, follow=False)
            return b"".join(chunks).decode("utf-8", errors="replace")

    def follow_task_logs(
        self, task_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Iterator[str]:
        with _swarm_errors(f"follow the logs of task {task_id}"):
            chunks = self._task_log_stream(task_id, tail, follow=True)
        if stop is not None:
            threading.Thread(
                target=_close_when_set, args=(stop, chunks), daemon=True, name="berth-task-logs"
            ).start()
        return _lines(chunks, task_id)

    # -- helpers ------------------------------------------------------------------------------

    def _auth_headers(self, spec: Mapping[str, Any]) -> dict[str, str]:
        if self._registry_auth is None:
            return {}
        image = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")
        auth = self._registry_auth(str(image)) if image else None
        return (
            {"X-Registry-Auth": docker.auth.encode_header(dict(auth)).decode("ascii")}
            if auth
            else {}
        )

    def _api(self) -> Any:
        with self._lock:
            if self._client is None:
                if self._base_url:
                    self._client = docker.APIClient(
                        base_url=self._base_url, version="auto", timeout=self._timeout
                    )
                else:
                    self._client = docker.from_env(version="auto", timeout=self._timeout).api
            return self._client

    def _network_named(self, name: str, labels: Mapping[str, str]) -> str | None:
        with _swarm_errors(f"look up network {name}"):
            candidates = self._api().networks(names=[name])
        network = next((n for n in candidates if n.get("Name") == name), None)
        if network is None:
            return None
        # Not the Driver: right after creation a manager lists a new overlay with Driver "" until
        # its allocator has run. A local (bridge) network of that name is not ours either.
        if not _has_labels(network.get("Labels"), labels) or network.get("Scope") != "swarm":
            raise RuntimeFailure(
                f"network {name!r} exists and is not this installation's overlay; "
                "refusing to use it"
            )
        return str(network["Id"])

    def _task_log_stream(self, task_id: str, tail: int, follow: bool) -> Any:
        # docker-py has no call for /tasks/{id}/logs (API >= 1.29); its own helpers demultiplex
        # the stream of a non-TTY container the same way as for /services/{id}/logs.
        api = self._api()
        params = {"stdout": 1, "stderr": 1, "follow": int(follow), "tail": max(0, int(tail))}
        response = api._get(api._url("/tasks/{0}/logs", task_id), params=params, stream=True)
        return api._get_result_tty(True, response, False)


def _label_filters(labels: Mapping[str, str] | None) -> dict[str, list[str]]:
    if not labels:
        return {}
    return {"label": [f"{key}={value}" for key, value in labels.items()]}


def _has_labels(actual: Mapping[str, str] | None, wanted: Mapping[str, str]) -> bool:
    actual = actual or {}
    return all(actual.get(key) == value for key, value in wanted.items())


@contextmanager
def _swarm_errors(action: str) -> Iterator[None]:
    """docker-py and transport errors as RuntimeFailure / EngineUnavailable (cause attached)."""
    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        text = _explain(exc)
        if _unreachable(exc):
            raise EngineUnavailable(
                f"the swarm manager cannot be reached (cannot {action}): {text}"
            ) from exc
        if any(marker in text for marker in _NO_LEADER):
            raise EngineUnavailable(
                f"the swarm cannot decide now (cannot {action}): {text}"
            ) from exc
        raise RuntimeFailure(f"swarm: cannot {action}: {text}") from exc


def _close_when_set(stop: threading.Event, stream: Any) -> None:
    stop.wait()
    with contextlib.suppress(Exception):
        stream.close()


def _lines(chunks: Iterable[bytes], task_id: str) -> Iterator[str]:
    pending = ""
    try:
        with _swarm_errors(f"follow the logs of task {task_id}"):
            for chunk in chunks:
                pending += chunk.decode("utf-8", errors="replace")
                *complete, pending = pending.split("\n")
                yield from complete
        if pending:
            yield pending
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
