"""What a server killed mid-build leaves behind: build containers and build directories.

Swept once at start, before any build of this server can run. Only containers labelled as build
steps of this installation are touched.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import docker.errors

from berth.builds.image_config import LABEL_BUILD_STEP
from berth.fsutil import remove_tree

log = logging.getLogger(__name__)


def sweep_leftovers(api: Any, installation: str, builds_dir: Path) -> tuple[int, int]:
    """Remove this installation's build containers and every entry of ``builds_dir``.

    Returns (containers removed, directories removed). Engine errors are logged, not raised:
    a server must start even while the engine is down.
    """
    containers = 0
    try:
        found = api.containers(all=True, filters={"label": [f"{LABEL_BUILD_STEP}={installation}"]})
        for summary in found:
            labels = summary.get("Labels") or {}
            if labels.get(LABEL_BUILD_STEP) != installation:
                continue
            try:
                api.remove_container(summary["Id"], force=True)
                containers += 1
            except docker.errors.NotFound:
                pass
    except docker.errors.DockerException as exc:
        log.warning("could not sweep leftover build containers: %s", exc)
    except OSError as exc:
        log.warning("could not sweep leftover build containers: %s", exc)
    directories = 0
    if builds_dir.is_dir() and not builds_dir.is_symlink():
        for entry in sorted(builds_dir.iterdir()):
            try:
                remove_tree(entry)
                directories += 1
            except OSError as exc:
                log.warning("could not remove leftover build directory %s: %s", entry, exc)
    if containers or directories:
        log.info(
            "swept %d leftover build container(s) and %d build directory(ies)",
            containers,
            directories,
        )
    return containers, directories
