"""Push a built image to the platform registry and pin it by digest.

A release records ``ADDR/t-<tenant id>/<app>@sha256:...``: the manifest's digest, which names
exactly those bytes. Swarm pins a service to it anyway, and every node pulls the same image,
only the layers it lacks.

The image is named by its id only (``sha256:<64 hex>``), never by a name the engine would
resolve (a name could be another tenant's image). Its registry tag is derived from that id, so
pushing one image twice pushes nothing new and never moves a tag to other bytes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import docker.errors
import requests.exceptions

from berth.domain.names import validate_app_name
from berth.errors import EngineUnavailable, InvalidInput, RuntimeFailure

REPOSITORY_PREFIX = "t-"
DEFAULT_READ_ONLY_WAIT = 120.0
_READ_ONLY_RETRY = 1.0
_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TENANT_ID = re.compile(r"^[0-9a-f]{1,32}$")
# t-<tenant id>/<app name>: two registry path components, both within the registry's grammar.
_REPOSITORY = re.compile(r"^t-[0-9a-f]{1,32}/[a-z0-9](?:[a-z0-9-]{0,28}[a-z0-9])?$")


@dataclass(frozen=True)
class PushedImage:
    reference: str  # ADDR/repo@sha256:...
    repository: str
    digest: str
    tag: str
    layers_pushed: int  # "Pushed" lines: layers the registry lacked
    layers_existing: int  # "Layer already exists" lines
    seconds: float


def repository_for(tenant_id: str, app_name: str) -> str:
    """The registry repository of one tenant's app: ``t-<tenant id>/<app name>``."""
    if not isinstance(tenant_id, str) or not _TENANT_ID.match(tenant_id):
        raise InvalidInput(f"tenant id {tenant_id!r} is not 1-32 lowercase hex digits")
    return f"{REPOSITORY_PREFIX}{tenant_id}/{validate_app_name(app_name)}"


def validate_repository(repository: str) -> str:
    if not isinstance(repository, str) or not _REPOSITORY.match(repository):
        raise InvalidInput(
            f"registry repository {repository!r} is not t-<tenant id>/<app name>",
            code="invalid_repository",
        )
    return repository


def tag_for(image_id: str) -> str:
    return "id-" + image_id.removeprefix("sha256:")


def pinned_reference(address: str, repository: str, digest: str) -> str:
    if not _DIGEST.match(digest):
        raise RuntimeFailure(f"the registry answered a malformed digest {digest!r}")
    return f"{address}/{repository}@{digest}"


def push(
    client: Any,
    address: str,
    image_id: str,
    repository: str,
    auth_config: Mapping[str, str] | None = None,
) -> str:
    """Tag ``image_id`` into ``address/repository`` and push it; the pinned reference.
    ``auth_config`` is RegistryServer.auth_config (None when it has no authentication)."""
    return push_image(client, address, image_id, repository, auth_config=auth_config).reference


def push_image(
    client: Any,
    address: str,
    image_id: str,
    repository: str,
    read_only_wait: float = DEFAULT_READ_ONLY_WAIT,
    auth_config: Mapping[str, str] | None = None,
) -> PushedImage:
    """``client`` is a docker-py DockerClient. Raises InvalidInput on a bad id or repository,
    RuntimeFailure when the engine or the registry refuses, EngineUnavailable when the engine
    cannot be reached. While the registry is read-only (a garbage collection runs), the push is
    tried again for up to ``read_only_wait`` seconds, then RegistryReadOnly."""
    if not isinstance(image_id, str) or not _IMAGE_ID.match(image_id):
        raise InvalidInput(f"image id {image_id!r} is not sha256:<64 hex digits>")
    validate_repository(repository)
    target, tag = f"{address}/{repository}", tag_for(image_id)
    started = time.monotonic()
    deadline = started + read_only_wait
    while True:
        try:
            with _engine_errors(f"push {image_id[:19]} to {target}"):
                client.api.tag(image_id, target, tag=tag)
                stream = client.api.push(
                    target,
                    tag=tag,
                    stream=True,
                    decode=True,
                    auth_config=dict(auth_config) if auth_config else None,
                )
                outcome = read_push_stream(stream)
            break
        except RegistryReadOnly:
            if time.monotonic() >= deadline:
                raise
            time.sleep(_READ_ONLY_RETRY)
    return PushedImage(
        reference=pinned_reference(address, repository, outcome.digest),
        repository=repository,
        digest=outcome.digest,
        tag=tag,
        layers_pushed=outcome.pushed,
        layers_existing=outcome.existing,
        seconds=time.monotonic() - started,
    )


class RegistryReadOnly(RuntimeFailure):
    """The registry refuses writes for now: a garbage collection runs."""

    status = 503
    code = "registry_read_only"


@dataclass(frozen=True)
class PushOutcome:
    digest: str
    pushed: int
    existing: int


def read_push_stream(lines: Any) -> PushOutcome:
    """Fold the engine's push progress into its outcome. Pure over the decoded lines: an
    ``error`` line raises RuntimeFailure; the digest comes from the final ``aux`` line."""
    digest = ""
    status: dict[str, str] = {}
    for line in lines:
        if not isinstance(line, Mapping):
            continue
        if line.get("error") or line.get("errorDetail"):
            detail = line.get("errorDetail") or {}
            message = line.get("error") or (detail.get("message") if detail else "") or "failed"
            if "HTTP 405" in str(message):
                # What the registry answers every write while it serves read-only.
                raise RegistryReadOnly(
                    "the platform registry is read-only while it collects garbage: "
                    "try again in a moment"
                )
            raise RuntimeFailure(f"the registry refused the push: {message}")
        aux = line.get("aux")
        if isinstance(aux, Mapping) and isinstance(aux.get("Digest"), str):
            digest = aux["Digest"]
        layer, text = line.get("id"), line.get("status")
        # A layer ends "Pushed", "Layer already exists", or "Mounted from <repo>" (the registry
        # linked a blob it holds for another repository: nothing uploaded).
        if isinstance(layer, str) and isinstance(text, str) and _layer_done(text):
            status[layer] = text
    if not digest:
        raise RuntimeFailure("the push ended without the registry's digest")
    pushed = sum(1 for s in status.values() if s == "Pushed")
    return PushOutcome(digest, pushed, len(status) - pushed)


def _layer_done(text: str) -> bool:
    return text in ("Pushed", "Layer already exists") or text.startswith("Mounted from")


_UNREACHABLE: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    FileNotFoundError,
)


@contextmanager
def _engine_errors(action: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise RuntimeFailure(f"cannot {action}: no such image", code="image_not_found") from exc
    except docker.errors.APIError as exc:
        raise RuntimeFailure(f"cannot {action}: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        if isinstance(exc, _UNREACHABLE) or isinstance(exc.__cause__, _UNREACHABLE):
            raise EngineUnavailable(f"the container engine cannot be reached: {exc}") from exc
        raise RuntimeFailure(f"cannot {action}: {exc}") from exc
