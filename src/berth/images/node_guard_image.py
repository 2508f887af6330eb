"""The ``berth/node-guard`` image: the node guard (berth.netpolicy.node_guard) with iptables,
made offline (berth.images.deb_image) and pushed to the platform registry for the nodes.

Besides ``berth/python:3`` it holds the distro's iptables and the libraries its nft binary
links. Debian 12's dockerd programs the nf_tables backend (``iptables --version``:
``nf_tables``), so the image's ``iptables`` is ``xtables-nft-multi``: the same backend as the
node's own rules; a node whose dockerd used the legacy backend has no ``DOCKER-USER`` in
nf_tables, and the guard refuses to start there (its task says so).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from berth.images import deb_image
from berth.images.bootstrap import BootstrapError
from berth.images.deb_image import CODE_DIR, BuiltImage, DebImageRecipe

__all__ = ["CODE_DIR", "RECIPE", "content_version", "dockerfile", "guard_modules"]

REPOSITORY = "berth/node-guard"
# iptables and what its nft binary links (Debian 12): apt-cache depends --recurse, minus libc.
IPTABLES_PACKAGES = (
    "iptables",
    "libip4tc2",
    "libip6tc2",
    "libxtables12",
    "libnftnl11",
    "libmnl0",
    "libnetfilter-conntrack3",
    "libnfnetlink0",
)
# The guard's python: berth.netpolicy.node_guard and what it imports, nothing else.
GUARD_MODULES = (
    "__init__.py",
    "errors.py",
    "netpolicy/__init__.py",
    "netpolicy/plan.py",
    "netpolicy/iptables.py",
    "netpolicy/node_guard.py",
    "netpolicy/node_guard_apply.py",
)
NFT_MULTI = "xtables-nft-multi"
# The names the guard calls, all the nft backend (Debian's alternatives would pick it too).
NFT_NAMES = ("iptables", "iptables-restore", "iptables-save")


def _name_the_nft_binary(root: Path) -> None:
    sbin = root / "usr" / "sbin"
    if not (sbin / NFT_MULTI).is_file():
        raise BootstrapError(f"the iptables package has no /usr/sbin/{NFT_MULTI}")
    for name in NFT_NAMES:
        link = sbin / name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(NFT_MULTI)


RECIPE = DebImageRecipe(
    repository=REPOSITORY,
    packages=IPTABLES_PACKAGES,
    modules=GUARD_MODULES,
    entrypoint=("python3", "-m", "berth.netpolicy.node_guard"),
    cmd=("status",),
    dropped=(*deb_image.DROPPED, "etc/ethertypes"),
    fixup=_name_the_nft_binary,
)


def dockerfile(version: str) -> str:
    return deb_image.dockerfile(RECIPE, version)


def content_version(debs: Iterable[Path], modules: Mapping[str, bytes]) -> str:
    return deb_image.content_version(RECIPE, debs, modules)


def guard_modules(package_dir: Path | None = None) -> dict[str, bytes]:
    """The guard's modules of this installed berth package, by path below ``berth/``."""
    return deb_image.read_modules(GUARD_MODULES, package_dir)


def ensure_guard_image(client: Any, cache_dir: Path) -> BuiltImage:
    """``berth/node-guard:<version>`` on the engine of ``client``, built if missing."""
    return deb_image.ensure_image(client, cache_dir, RECIPE)


def push_guard_image(
    client: Any, image: BuiltImage, address: str, auth_config: Mapping[str, str] | None
) -> str:
    return deb_image.push_image(client, image, address, auth_config)


def describe_build(image: BuiltImage) -> str:
    return json.dumps({"tag": image.tag, "id": image.image_id[:19], "built": image.built})
