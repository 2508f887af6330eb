"""Images of the database servers Berth launches itself (``berth admin db-servers launch``),
made offline from the distro's packages (berth.images.deb_image) like the node guard's.

Redis: the distro's redis-server and the libraries it links that ``berth/python:3`` lacks
(found with ldd against the base image's packages: libatomic1, libjemalloc2, liblzf1). Its data
lives in ``/data``, a volume owned by nobody, which the server runs as.

PostgreSQL 15: the distro's server and the libraries its binaries link that the base lacks,
without LLVM (JIT off); ``initdb`` runs once, in a container of the same image, before the
first start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from berth.images import deb_image
from berth.images.deb_image import BuiltImage, DebImageRecipe

REDIS = DebImageRecipe(
    repository="berth/db-redis",
    packages=("redis-server", "redis-tools", "libatomic1", "libjemalloc2", "liblzf1"),
    modules=("__init__.py",),
    entrypoint=("/usr/bin/redis-server",),
    # The distro's config and service files: the server is configured by its arguments.
    dropped=(*deb_image.DROPPED, "etc/redis", "etc/init.d", "lib/systemd", "usr/lib/systemd"),
    data_dirs=("/data",),
)
POSTGRES = DebImageRecipe(
    repository="berth/db-postgres",
    # The server and what its binaries link that the base lacks (ldd of postgres and initdb);
    # not LLVM: JIT is off, so its 90 MB stay out.
    packages=(
        "postgresql-15",
        "libicu72",
        "libldap-2.5-0",
        "libsasl2-2",
        "libsasl2-modules-db",
        "libxml2",
        "libpq5",
    ),
    modules=("__init__.py",),
    entrypoint=("/usr/lib/postgresql/15/bin/postgres",),
    dropped=(
        *deb_image.DROPPED,
        "etc/init.d",
        "lib/systemd",
        "usr/lib/systemd",
        "usr/lib/postgresql/15/lib/bitcode",
        "usr/lib/postgresql/15/lib/llvmjit.so",
        "usr/lib/postgresql/15/lib/llvmjit_types.bc",
        "etc/postgresql-common",
    ),
    data_dirs=("/data",),
)
MARIADB = DebImageRecipe(
    repository="berth/db-mariadb",
    # mariadbd, mariadb-install-db (a shell script) and the my_print_defaults it calls, and the
    # libraries mariadbd links that the base lacks.
    packages=("mariadb-server-core", "mariadb-client-core", "libaio1", "libnuma1", "liburing2"),
    modules=("__init__.py",),
    entrypoint=("/usr/sbin/mariadbd",),
    dropped=(*deb_image.DROPPED, "etc/init.d", "lib/systemd", "usr/lib/systemd"),
    data_dirs=("/data",),
)
RECIPES = {"redis": REDIS, "postgres": POSTGRES, "mariadb": MARIADB}


def ensure_db_server_image(client: Any, cache_dir: Path, engine: str) -> BuiltImage:
    return deb_image.ensure_image(client, cache_dir, RECIPES[engine])
