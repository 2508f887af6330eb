"""The image builder interface: the Docker builder and the fake one (unit tests) implement it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from berth.builds.builder import BuildEvent


class ImageBuilder(Protocol):
    def build(
        self, context_dir: Path, tag: str, labels: dict[str, str]
    ) -> Iterator[BuildEvent]: ...


class DockerImageBuilder:
    """Builds with the Docker Engine's (legacy) builder, layer cache on."""

    def __init__(self, client: object) -> None:
        self._client = client

    def build(self, context_dir: Path, tag: str, labels: dict[str, str]) -> Iterator[BuildEvent]:
        from berth.builds.builder import build_image

        return build_image(self._client, context_dir, tag, labels)  # type: ignore[arg-type]
