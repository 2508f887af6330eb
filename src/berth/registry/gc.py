"""Garbage collection of images: in the platform registry, and on each node's engine.

What to keep is given: the pinned references (``ADDR/t-<tenant>/<app>@sha256:...``) and image
ids of every release an app can still roll back to. Everything else of this installation goes.

Registry: the plan (pure, :func:`plan_registry_gc`) picks the manifests to delete from what the
registry's HTTP API reports (catalog, tags, each tag's manifest digest). A manifest pushed less
than ``grace_seconds`` ago is kept whatever the keep set says: a build is pushed before its
release is written. The actuator deletes those manifests by digest over the API (which drops
their tags too), then runs ``docker-registry garbage-collect`` with the registry read-only (pulls
keep working; see RegistryServer.garbage_collect), and reports the bytes its storage lost.

Nodes: the plan (pure, :func:`plan_node_images`) picks this installation's images on one engine
(built by it: its build label; or pulled from its registry: the ``ADDR/t-`` prefix, and the
platform's own images pulled from there, ``ADDR/berth/``: an upgraded node guard or ingress
leaves its old one unused) that no release keeps, no container uses and that are older than the
grace. Base images (``berth/*`` tags) are never touched. The engine refuses to remove an
image that a container or a child image still needs (409); such an image is reported as
skipped and tried again next time.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import docker.errors
import httpx
import requests.exceptions

from berth.builds.image_policy import LABEL_BUILD_INSTALLATION
from berth.errors import BerthError, EngineUnavailable, RuntimeFailure
from berth.registry.push import REPOSITORY_PREFIX, validate_repository
from berth.registry.server import RegistryError, RegistryServer

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 3600.0
# Every manifest type a pushed image can have; the digest a HEAD answers depends on it.
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PAGE = 100
# How long a refused connection is retried: the registry's restart into or out of read-only
# mode (for a collection) takes well under a second here.
RESTART_GRACE_SECONDS = 5.0


# -- the registry: pure planning -------------------------------------------------------------


@dataclass(frozen=True, order=True)
class HeldManifest:
    """One manifest of one repository, as the registry holds it."""

    repository: str
    digest: str
    tags: tuple[str, ...] = ()
    pushed_at: float | None = None  # when a tag last pointed at it (unix s); None: unknown


@dataclass(frozen=True)
class RegistryGcPlan:
    delete: tuple[HeldManifest, ...]
    kept: tuple[HeldManifest, ...]  # named by a release
    young: tuple[HeldManifest, ...]  # unkept, but pushed within the grace


def kept_manifests(references: Iterable[str], address: str) -> frozenset[tuple[str, str]]:
    """The (repository, digest) pairs of the pinned references into this registry. References
    elsewhere (local images, other registries, unpinned tags) name nothing here."""
    prefix = f"{address}/"
    kept = set()
    for ref in references:
        if not isinstance(ref, str) or not ref.startswith(prefix) or "@" not in ref:
            continue
        repository, _, digest = ref[len(prefix) :].partition("@")
        if _DIGEST.match(digest):
            kept.add((repository, digest))
    return frozenset(kept)


def plan_registry_gc(
    held: Iterable[HeldManifest],
    keep: frozenset[tuple[str, str]],
    now: float,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> RegistryGcPlan:
    delete, kept, young = [], [], []
    for manifest in sorted(set(held)):
        if (manifest.repository, manifest.digest) in keep:
            kept.append(manifest)
        elif manifest.pushed_at is not None and now - manifest.pushed_at < grace_seconds:
            young.append(manifest)
        else:
            delete.append(manifest)
    return RegistryGcPlan(tuple(delete), tuple(kept), tuple(young))


# -- the registry: its HTTP API --------------------------------------------------------------


class RegistryApi:
    """The few calls of the registry's v2 HTTP API that GC needs."""

    def __init__(
        self,
        base_url: str,
        auth: tuple[str, str] | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 10.0,
        restart_grace: float = RESTART_GRACE_SECONDS,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.restart_grace = restart_grace
        self._client = httpx.Client(timeout=timeout, trust_env=False, auth=auth, verify=verify)

    def close(self) -> None:
        self._client.close()

    def repositories(self) -> list[str]:
        found: list[str] = []
        last = ""
        while True:
            params = {"n": str(_PAGE), **({"last": last} if last else {})}
            page = self._get_json("/v2/_catalog", params).get("repositories") or []
            found.extend(r for r in page if isinstance(r, str))
            if len(page) < _PAGE:
                return found
            last = page[-1]

    def tags(self, repository: str) -> list[str]:
        answer = self._get_json(f"/v2/{_path(repository)}/tags/list", {}, missing_ok=True)
        return [t for t in answer.get("tags") or [] if isinstance(t, str)]

    def digest_of(self, repository: str, reference: str) -> str | None:
        url = f"{self.base_url}/v2/{_path(repository)}/manifests/{quote(reference, safe=':')}"
        response = self._call("HEAD", url, headers={"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        self._check(response, url)
        digest = response.headers.get("Docker-Content-Digest", "")
        return digest if _DIGEST.match(digest) else None

    def manifest_exists(self, repository: str, digest: str) -> bool:
        return self.digest_of(repository, digest) is not None

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """True when deleted, False when it was already gone."""
        url = f"{self.base_url}/v2/{_path(repository)}/manifests/{digest}"
        response = self._call("DELETE", url)
        if response.status_code == 404:
            return False
        self._check(response, url)
        return True

    def _get_json(
        self, path: str, params: Mapping[str, str], missing_ok: bool = False
    ) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        response = self._call("GET", url, params=params)
        if missing_ok and response.status_code == 404:
            return {}
        self._check(response, url)
        try:
            answer = response.json()
        except ValueError:
            raise RegistryError(f"the registry answered {url} with something not JSON") from None
        return answer if isinstance(answer, dict) else {}

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        # The registry restarts to go read-only for a collection (it reads its config only at
        # start), so a refused connection, or one the stopping registry closed without an
        # answer, may be that second: wait it out, briefly, before calling the registry
        # unreachable. A refused connection is retried for any request (nothing was sent); a
        # connection closed without an answer only for reads (GET, HEAD), which are safe twice.
        deadline = time.monotonic() + self.restart_grace
        pause = 0.05
        retried: tuple[type[Exception], ...] = (
            (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)
            if method in ("GET", "HEAD")
            else (httpx.ConnectError,)
        )
        while True:
            try:
                return self._client.request(method, url, **kwargs)
            except retried as exc:
                if time.monotonic() + pause > deadline:
                    raise RegistryError(
                        f"the registry cannot be reached ({method} {url}): {exc}"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
            except httpx.HTTPError as exc:
                raise RegistryError(
                    f"the registry cannot be reached ({method} {url}): {exc}"
                ) from exc

    @staticmethod
    def _check(response: httpx.Response, url: str) -> None:
        if response.status_code >= 400:
            raise RegistryError(
                f"the registry answered {response.status_code} to {url}: {response.text[:300]}"
            )


def _path(repository: str) -> str:
    # Only validated names reach a URL: t-<hex>/<app name>.
    return validate_repository(repository)


def observe_registry(api: RegistryApi, storage_dir: Path | None = None) -> list[HeldManifest]:
    """Every tagged manifest of every Berth repository (``t-...``). ``storage_dir`` (the
    registry's own filesystem storage) gives each tag's last push time, for the grace."""
    by_key: dict[tuple[str, str], list[str]] = {}
    pushed: dict[tuple[str, str], float] = {}
    for repository in api.repositories():
        if not repository.startswith(REPOSITORY_PREFIX):
            continue
        try:
            validate_repository(repository)
        except BerthError:  # someone else's repository: never touched
            log.warning("registry GC: ignoring repository %r (not Berth's)", repository)
            continue
        for tag in api.tags(repository):
            digest = api.digest_of(repository, tag)
            if digest is None:
                continue
            key = (repository, digest)
            by_key.setdefault(key, []).append(tag)
            when = _tag_pushed_at(storage_dir, repository, tag) if storage_dir else None
            if when is not None:
                pushed[key] = max(pushed.get(key, when), when)
    return [
        HeldManifest(repo, digest, tuple(sorted(tags)), pushed.get((repo, digest)))
        for (repo, digest), tags in by_key.items()
    ]


def _tag_pushed_at(storage_dir: Path, repository: str, tag: str) -> float | None:
    # The registry rewrites this link at every push of the tag.
    link = (
        storage_dir
        / "docker/registry/v2/repositories"
        / repository
        / "_manifests/tags"
        / tag
        / "current/link"
    )
    try:
        return link.stat().st_mtime
    except OSError:
        return None


def storage_bytes(storage_dir: Path) -> int:
    """Bytes the registry's storage occupies on disk."""
    total = 0
    for root, _dirs, files in os.walk(storage_dir):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


@dataclass(frozen=True)
class RegistryGcReport:
    deleted: tuple[HeldManifest, ...]
    kept: tuple[HeldManifest, ...]
    young: tuple[HeldManifest, ...]
    bytes_before: int
    bytes_after: int

    @property
    def bytes_freed(self) -> int:
        return max(0, self.bytes_before - self.bytes_after)


def collect_registry(
    server: RegistryServer,
    keep: Iterable[str],
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    now: float | None = None,
) -> RegistryGcReport:
    """Delete every manifest no release keeps, then collect their blobs. Compute ``keep``
    right before calling: a release written after it could pin a manifest this deletes."""
    server.ensure_running()
    credentials = server.credentials
    api = RegistryApi(
        server.url,
        (credentials.username, credentials.password) if credentials else None,
        verify=server.verify,
    )
    try:
        held = observe_registry(api, server.storage_dir)
        plan = plan_registry_gc(
            held,
            kept_manifests(keep, server.address),
            time.time() if now is None else now,
            grace_seconds,
        )
        before = storage_bytes(server.storage_dir)
        deleted = tuple(m for m in plan.delete if api.delete_manifest(m.repository, m.digest))
    finally:
        api.close()
    if plan.delete:
        server.garbage_collect()
    after = storage_bytes(server.storage_dir)
    log.info(
        "registry GC: %d manifests deleted, %d kept, %d young; %d bytes freed",
        len(deleted),
        len(plan.kept),
        len(plan.young),
        before - after,
    )
    return RegistryGcReport(deleted, plan.kept, plan.young, before, after)


# -- nodes: pure planning --------------------------------------------------------------------

PLATFORM_PREFIX = "berth/"  # berth/node-guard, berth/ingress in the platform registry


@dataclass(frozen=True)
class EngineImage:
    """One image on one engine, as its image list reports it."""

    id: str
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    created: float = 0.0  # unix s
    size: int = 0


def is_installations_image(image: EngineImage, installation: str, registry_address: str) -> bool:
    # The platform's base images are never collected. Not told by their berth.base label:
    # every image built FROM a base inherits it.
    if any(t.startswith("berth/") for t in image.repo_tags):
        return False
    if image.labels.get(LABEL_BUILD_INSTALLATION) == installation:
        return True
    # Apps' images from this registry, and the platform's own (the node guard, the ingress
    # node) pulled from it: an older one stays only while a container uses it.
    ours = (f"{registry_address}/{REPOSITORY_PREFIX}", f"{registry_address}/{PLATFORM_PREFIX}")
    return any(ref.startswith(ours) for ref in (*image.repo_tags, *image.repo_digests))


def plan_node_images(
    images: Sequence[EngineImage],
    *,
    installation: str,
    registry_address: str,
    keep_references: Iterable[str],
    keep_image_ids: Iterable[str],
    used_image_ids: Iterable[str],
    now: float,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> list[EngineImage]:
    """The images of this installation on one engine that may go, oldest first."""
    refs, ids = set(keep_references), set(keep_image_ids) | set(used_image_ids)
    doomed = []
    for image in images:
        if not is_installations_image(image, installation, registry_address):
            continue
        if image.id in ids or refs.intersection((*image.repo_tags, *image.repo_digests)):
            continue
        if now - image.created < grace_seconds:
            continue
        doomed.append(image)
    return sorted(doomed, key=lambda i: (i.created, i.id))


# -- nodes: the actuator ---------------------------------------------------------------------


@dataclass(frozen=True)
class NodeGcReport:
    removed: tuple[str, ...]
    skipped: tuple[str, ...]  # the engine refused (in use, has children): tried next time
    bytes_freed: int  # the removed images' sizes (layers shared with kept images stay)


def observe_engine_images(client: Any) -> tuple[list[EngineImage], set[str]]:
    """(every tagged or pulled image, the ids of images any container uses, running or not)."""
    with _engine_errors("list images"):
        raw_images = client.api.images(all=False)
        containers = client.api.containers(all=True)
    images = [
        EngineImage(
            id=str(raw["Id"]),
            repo_tags=tuple(t for t in raw.get("RepoTags") or () if t != "<none>:<none>"),
            repo_digests=tuple(d for d in raw.get("RepoDigests") or () if d != "<none>@<none>"),
            labels=dict(raw.get("Labels") or {}),
            created=float(raw.get("Created") or 0),
            size=int(raw.get("Size") or 0),
        )
        for raw in raw_images
    ]
    used = {str(c["ImageID"]) for c in containers if c.get("ImageID")}
    return images, used


def collect_node_images(
    client: Any,
    *,
    installation: str,
    registry_address: str,
    keep_references: Iterable[str],
    keep_image_ids: Iterable[str],
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    now: float | None = None,
) -> NodeGcReport:
    """Remove this installation's unkept images from one engine (a docker-py DockerClient).
    Raises RuntimeFailure when the engine fails (EngineUnavailable when it is not there)."""
    images, used = observe_engine_images(client)
    doomed = plan_node_images(
        images,
        installation=installation,
        registry_address=registry_address,
        keep_references=keep_references,
        keep_image_ids=keep_image_ids,
        used_image_ids=used,
        now=time.time() if now is None else now,
        grace_seconds=grace_seconds,
    )
    removed, skipped, freed = [], [], 0
    for image in doomed:
        try:
            with _engine_errors(f"remove image {image.id[:19]}"):
                # Each name, then the id: removal by id is refused while several names remain.
                for name in (*image.repo_tags, *image.repo_digests, image.id):
                    _remove(client, name)
        except _Refused as exc:
            log.info("node GC: keeping %s for now: %s", image.id[:19], exc)
            skipped.append(image.id)
            continue
        removed.append(image.id)
        freed += image.size
    return NodeGcReport(tuple(removed), tuple(skipped), freed)


class _Refused(Exception):
    """The engine answered 409: a container or a child image still needs the image."""


def _remove(client: Any, name: str) -> None:
    try:
        client.api.remove_image(name, force=False, noprune=False)
    except docker.errors.ImageNotFound:
        return
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise _Refused(exc.explanation or str(exc)) from exc
        raise


@contextmanager
def _engine_errors(action: str) -> Iterator[None]:
    try:
        yield
    except _Refused:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            raise EngineUnavailable(f"the container engine cannot be reached: {exc}") from exc
        raise RuntimeFailure(f"node image GC: cannot {action}: {exc}") from exc
