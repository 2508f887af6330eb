"""Which images a tenant may build FROM, COPY --from, or deploy: the one policy for all three.

Allowed:

- the platform's base images, ``berth/<name>[:tag]`` (no tag means ``latest``);
- the tenant's own builds, ``berth-app/<app>[:tag]``, whose image labels say they were built
  for this tenant by this installation;
- earlier stages of the same Dockerfile (builds only);
- ``host[:port]/path[:tag|@digest]`` when the provider configured that registry host.

Never an image id, ``sha256:...`` or a hex prefix of one (the engine resolves those to
whatever image matches: another tenant's among them), and nothing else. The reference is
resolved to an image id by inspecting the exact ``name:tag``; nothing is ever pulled. Another
tenant's image and a missing image give the same answer, word for word.

:func:`classify` is pure; :func:`resolve` does the inspection through an :class:`ImageStore`
(the engine's, in :mod:`berth.builds.image_stores`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from berth.errors import InvalidInput, NotFound

BASE_REPOSITORY = "berth"
APP_REPOSITORY = "berth-app"
LABEL_BUILD_TENANT = "berth.build.tenant"
LABEL_BUILD_INSTALLATION = "berth.build.installation"
MAX_REFERENCE = 255

ERR_NOT_ALLOWED = "image_not_allowed"
ERR_NOT_FOUND = "image_not_found"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?"
_LOCAL = re.compile(
    rf"^(?P<repo>(?P<ns>berth|berth-app)/(?P<name>{_COMPONENT}))(?::(?P<tag>{_TAG}))?$"
)
_REMOTE = re.compile(
    rf"^(?P<host>{_HOST})/(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_HEXISH = re.compile(r"^(?:sha256:)?[0-9a-fA-F]{1,64}$")

ImageKind = Literal["stage", "base", "own", "registry"]


@dataclass(frozen=True)
class ImageRef:
    """An allowed reference: what kind it is and the exact name to inspect."""

    kind: ImageKind
    name: str  # "berth/python:latest", a stage name, or the registry reference as written


@dataclass(frozen=True)
class ResolvedImage:
    ref: ImageRef
    image_id: str  # what containers are created from
    config: Mapping[str, Any]  # the image's Config (Env, Cmd, ...); empty for a stage


class ImageStore(Protocol):
    """What :func:`resolve` needs from the engine."""

    def inspect_image(self, name: str) -> Mapping[str, Any] | None:
        """The engine's inspect answer for exactly ``name``, or None when there is none."""
        ...

    def base_images(self) -> list[str]:
        """The ``berth/<name>:<tag>`` images present, for the 'missing image' message."""
        ...


def what_is_allowed(registry: str, builds: bool) -> str:
    parts = [
        "a base image of this platform (berth/<name>, e.g. berth/python or berth/busybox:latest)",
        "an image built for one of your apps (berth-app/<app>:<tag>)",
    ]
    if builds:
        parts.append("an earlier stage of the same Dockerfile")
    if registry:
        parts.append(f"an image from the registry {registry} ({registry}/<path>:<tag>)")
    return "; ".join(parts)


def refused(reference: str, registry: str, builds: bool, why: str = "") -> InvalidInput:
    shown = reference[:80]
    reason = f" ({why})" if why else ""
    return InvalidInput(
        f"image {shown!r} is not allowed{reason}. Use {what_is_allowed(registry, builds)}",
        code=ERR_NOT_ALLOWED,
    )


def missing(reference: str, base_images: Sequence[str]) -> NotFound:
    """A well-formed reference to an image that is not here (or not the tenant's): a 404."""
    bases = ", ".join(sorted(base_images)) or "none"
    return NotFound(
        f"image {reference[:80]!r} is not on this machine (Berth never pulls images). "
        f"Base images here: {bases}",
        code=ERR_NOT_FOUND,
    )


def classify(
    reference: str, registry: str = "", stages: Collection[str] = (), builds: bool = False
) -> ImageRef:
    """The allowed form of ``reference``, or InvalidInput (code ``image_not_allowed``)."""
    if not reference or len(reference) > MAX_REFERENCE or any(c.isspace() for c in reference):
        raise refused(reference, registry, builds, "empty or malformed")
    if reference.lower() in stages:
        return ImageRef("stage", reference.lower())
    if _HEXISH.match(reference) or reference.lower().startswith("sha256:"):
        raise refused(reference, registry, builds, "image ids are not accepted: name the image")
    local = _LOCAL.match(reference)
    if local is not None:
        kind: ImageKind = "base" if local["ns"] == BASE_REPOSITORY else "own"
        return ImageRef(kind, f"{local['repo']}:{local['tag'] or 'latest'}")
    remote = _REMOTE.match(reference)
    if remote is not None and not _is_host(remote["host"]):
        remote = None  # "team/app" is a Docker Hub name, not a registry host
    if remote is not None and registry and remote["host"].lower() == registry.lower():
        if remote["tag"] is None and remote["digest"] is None:
            return ImageRef("registry", f"{reference}:latest")
        return ImageRef("registry", reference)
    if remote is not None and not registry:
        raise refused(reference, registry, builds, "no registry is configured")
    if remote is not None:
        raise refused(reference, registry, builds, f"only the registry {registry} is allowed")
    raise refused(reference, registry, builds)


def _is_host(first: str) -> bool:
    """Docker's rule: the first component names a registry host only with a dot, a port, or
    as localhost."""
    return "." in first or ":" in first or first == "localhost"


def may_use(ref: ImageRef, attrs: Mapping[str, Any], tenant_id: str, installation: str) -> bool:
    """Whether an inspected image may be used by ``tenant_id`` (its own builds only)."""
    if ref.kind != "own":
        return True
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    return bool(
        tenant_id
        and labels.get(LABEL_BUILD_TENANT) == tenant_id
        and labels.get(LABEL_BUILD_INSTALLATION) == installation
    )


def resolve(
    reference: str,
    store: ImageStore,
    tenant_id: str,
    installation: str,
    registry: str = "",
    stages: Mapping[str, str] | None = None,
    builds: bool = False,
) -> ResolvedImage:
    """``reference`` as an image id the tenant may use, or InvalidInput (not allowed/missing).

    ``stages`` maps earlier stage names to their image ids (builds only).
    """
    ref = classify(reference, registry, tuple(stages or ()), builds)
    if ref.kind == "stage":
        assert stages is not None
        return ResolvedImage(ref, stages[ref.name], {})
    attrs = store.inspect_image(ref.name)
    if attrs is None or not may_use(ref, attrs, tenant_id, installation):
        raise missing(reference, store.base_images())
    return ResolvedImage(ref, str(attrs["Id"]), dict(attrs.get("Config") or {}))


def deploy_resolver(
    store: ImageStore, tenant_id: str, installation: str, registry: str
) -> Callable[[str], str | None]:
    """The ``resolve`` callable for ``services.apps.deploy_image``: the policy, then the id.

    Raises InvalidInput (image_not_allowed) or NotFound (image_not_found) instead of None, so
    the answer says what is allowed and which base images exist.
    """

    def resolve_for_deploy(reference: str) -> str | None:
        return resolve(reference, store, tenant_id, installation, registry).image_id

    return resolve_for_deploy
