"""The ``berth/memcached`` image: the distro's memcached, made offline (berth.images.deb_image).

``FROM berth/python:3`` plus memcached and the two libraries it links that the base lacks
(``ldd /usr/bin/memcached`` in a throwaway container of the base: libevent-2.1.so.7 and
libsasl2.so.2; libssl3/libcrypto3 and libc are there). libsasl2-2's own dependency,
libsasl2-modules-db, is left out: its plugins are only loaded when SASL is on (``-S``), and
Berth never turns it on. The init script, systemd unit, headers and the perl helper scripts of
the package are dropped: nothing in the image runs them (the image has no perl).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from berth.images import deb_image
from berth.images.bootstrap import BootstrapError
from berth.images.deb_image import BuiltImage, DebImageRecipe

REPOSITORY: Final = "berth/memcached"
MEMCACHED_PACKAGES: Final = ("memcached", "libevent-2.1-7", "libsasl2-2")
BINARY: Final = "/usr/bin/memcached"


def _fixup(root: Path) -> None:
    if not (root / BINARY.lstrip("/")).is_file():
        raise BootstrapError(f"the memcached package has no {BINARY}")
    # A directory the drops emptied (``lib/`` once ``lib/systemd`` is gone) would replace the
    # base's merged-/usr symlink of that name on COPY, and with it the dynamic loader's path.
    for directory in sorted((d for d in root.rglob("*") if d.is_dir()), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
    if (root / "lib").exists() or (root / "bin").exists():
        raise BootstrapError("the memcached packages install below /lib or /bin, not /usr")


RECIPE: Final = DebImageRecipe(
    repository=REPOSITORY,
    packages=MEMCACHED_PACKAGES,
    modules=(),
    entrypoint=(BINARY,),
    dropped=(
        *deb_image.DROPPED,
        "etc/init.d",
        "etc/default",
        "lib/systemd",
        "usr/lib/tmpfiles.d",
        "usr/include",
        "usr/share/memcached",
    ),
    fixup=_fixup,
)


def ensure_memcached_image(client: Any, cache_dir: Path) -> BuiltImage:
    """``berth/memcached:<version>`` on the engine of ``client``, built if missing (the .debs
    are downloaded once into ``cache_dir``)."""
    return deb_image.ensure_image(client, cache_dir, RECIPE)


def describe_build(image: BuiltImage) -> str:
    return json.dumps({"tag": image.tag, "id": image.image_id[:19], "built": image.built})
