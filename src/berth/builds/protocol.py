"""The image builder interface: what a build is asked to do, and the events it tells back.

:class:`berth.builds.engine_builder.EngineBuilder` implements it on the Docker Engine; the API
tests use a fake one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

BuildEventKind = Literal["log", "error", "done"]


@dataclass(frozen=True)
class BuildEvent:
    """One step of a build's story: a log line, the final error, or the built image."""

    kind: BuildEventKind
    text: str
    image_id: str | None = None


@dataclass(frozen=True)
class BuildLimits:
    """What one build may use. Every RUN step runs under these; the deadline is per build."""

    memory_mb: int = 1024
    cpus: float = 1.0
    pids: int = 512
    disk_mb: int = 4096  # the layers the build writes, summed
    timeout_seconds: float = 900.0
    log_max_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class BuildRequest:
    """Build ``context_dir`` (with its root Dockerfile) as ``tag`` for ``tenant_id``."""

    context_dir: Path
    tag: str
    labels: Mapping[str, str]
    tenant_id: str
    limits: BuildLimits = field(default_factory=BuildLimits)
    registry: str = ""  # the registry host images may come from; empty: none


class ImageBuilder(Protocol):
    def build(self, request: BuildRequest) -> Iterator[BuildEvent]:
        """Events as the build runs; the last is "done" (with the image id) or "error".

        Raises berth.errors.EngineError, while iterating, only when the engine cannot be
        reached. Closing the iterator early stops the build and removes its containers.
        """
        ...
