"""The ``berth/ingress`` image: the distro's nginx and the ingress agent
(berth.ingress.agent), made offline (berth.images.deb_image) and pushed to the platform
registry for the ingress nodes.

``berth/python:3`` already holds every library Debian 12's nginx links (libssl3, libpcre2,
zlib, libcrypt) and the ``www-data`` user its workers run as, so the one package is ``nginx``
(its binary and modules; the config it is sent includes nothing of /etc/nginx).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from berth.images import deb_image
from berth.images.deb_image import BuiltImage, DebImageRecipe

REPOSITORY = "berth/ingress"
AGENT_MODULES = ("__init__.py", "procfs.py", "ingress/__init__.py", "ingress/agent.py")
RECIPE = DebImageRecipe(
    repository=REPOSITORY,
    packages=("nginx",),
    modules=AGENT_MODULES,
    entrypoint=("python3", "-m", "berth.ingress.agent"),
    cmd=("--help",),
)


def ensure_ingress_image(client: Any, cache_dir: Path) -> BuiltImage:
    return deb_image.ensure_image(client, cache_dir, RECIPE)


def push_ingress_image(
    client: Any, image: BuiltImage, address: str, auth_config: Mapping[str, str] | None
) -> str:
    return deb_image.push_image(client, image, address, auth_config)
