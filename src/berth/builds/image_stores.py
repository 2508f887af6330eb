"""The :class:`berth.builds.image_policy.ImageStore` implementations: the I/O of the policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from berth.builds.image_policy import BASE_REPOSITORY


class DockerImageStore:
    """An :class:`ImageStore` over docker-py's low-level APIClient."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def inspect_image(self, name: str) -> Mapping[str, Any] | None:
        import docker.errors

        try:
            attrs: Mapping[str, Any] = self._api.inspect_image(name)
        except docker.errors.NotFound:
            return None
        # The engine would answer a short name with any image that has it as an id prefix;
        # only an image that really carries the tag counts.
        if name not in (attrs.get("RepoTags") or []) and "@" not in name:
            return None
        return attrs

    def base_images(self) -> list[str]:
        images = self._api.images(name=f"{BASE_REPOSITORY}/*")
        tags = {tag for image in images for tag in image.get("RepoTags") or []}
        return sorted(t for t in tags if t.startswith(f"{BASE_REPOSITORY}/"))


class RuntimeImageStore:
    """An :class:`ImageStore` over a runtime that knows image ids only (the fake runtime):
    without labels, no ``berth-app/`` image counts as the tenant's own."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime

    def inspect_image(self, name: str) -> Mapping[str, Any] | None:
        image_id = self._runtime.image_id(name)
        return {"Id": image_id, "Config": {}} if image_id else None

    def base_images(self) -> list[str]:
        return []
