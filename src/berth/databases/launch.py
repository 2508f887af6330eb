"""A database server Berth runs itself (``berth admin db-servers launch``): the decisions, pure.

Launched servers are the provider's own, like a distro server on the Berth machine: a container
of the offline image (berth.images.db_server_images) on the host's network, listening on the
address the operator names (tenants' containers reach it through the host, where the egress
filter lets in only the tenants with a database there), its data on a named volume that
outlives the container (a restart, an upgrade to a newer image: the same volume), hardened as
tenants' containers are (read-only root, every capability dropped, no-new-privileges, as
nobody, memory and pids limits), restarted by Docker unless stopped. Its admin credentials are
made here and kept only in the store (the admin URL), as for a registered server.

Redis, PostgreSQL and MariaDB are launched.
PostgreSQL's cluster is made once by ``initdb`` in a container of the same image, with the
admin's password from a file on the volume (removed as soon as initdb ends) and SCRAM for every
connection; its ``pg_hba.conf`` lets any address try a password (as a shared server must: the
egress filter decides who reaches it) and trusts nobody. MariaDB's data directory is made once by
``mariadb-install-db`` the same way (root only through the container's own socket); Berth's
admin exists through an init file of its password's hash, and only from the address the server
listens on (the Berth machine itself).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from berth.databases.password_hashes import mysql_native_password_hash, redis_password_hash
from berth.errors import InvalidInput

LAUNCHABLE = ("redis", "postgres", "mariadb")
ADMIN_USER = "berthadmin"
DEFAULT_PORTS = {"redis": 6379, "postgres": 5432, "mariadb": 3306}
MIN_MEMORY_MB, MAX_MEMORY_MB, DEFAULT_MEMORY_MB = 64, 65536, 512
PIDS_LIMIT = 256
LABEL_SERVER = "berth.db-server"  # the server's id, on its container and its volume
LABEL_INSTALLATION = "berth.installation"
DATA_DIR = "/data"
ACL_FILE = f"{DATA_DIR}/users.acl"
PG_DATA = f"{DATA_DIR}/pg"
PG_PASSWORD_FILE = f"{DATA_DIR}/.admin-password"
PG_BIN = "/usr/lib/postgresql/15/bin"
MARIADB_DATA = f"{DATA_DIR}/db"
MARIADB_INIT = f"{DATA_DIR}/init.sql"
_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")


@dataclass(frozen=True)
class LaunchSpec:
    name: str  # the server's name in Berth (db-servers list)
    engine: str
    listen: str  # an IPv4 address of this machine
    port: int
    memory_mb: int

    @property
    def container(self) -> str:
        return f"berth-dbs-{self.name}"

    @property
    def volume(self) -> str:
        return f"berth-dbs-{self.name}-data"


def launch_spec(
    name: str, engine: str, listen: str, port: int | None, memory_mb: int | None
) -> LaunchSpec:
    """Checked input of a launch (every refusal a 422 with its code)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            "a launched server's name is 1-40 lowercase letters, digits and '-', starting "
            "with a letter",
            code="invalid_name",
        )
    if engine not in LAUNCHABLE:
        raise InvalidInput(
            f"Berth launches {', '.join(LAUNCHABLE)} servers (register others with "
            "`db-servers add`)",
            code="engine_not_launchable",
        )
    try:
        address = ipaddress.IPv4Address(listen)
    except (ValueError, TypeError):
        raise InvalidInput(
            "--listen is an IPv4 address of this machine", code="invalid_listen"
        ) from None
    if address.is_unspecified or address.is_multicast or address.is_link_local:
        raise InvalidInput(
            f"{address} is not an address to listen on: name one address of this machine "
            "that tenants' instances reach (never every address)",
            code="invalid_listen",
        )
    chosen_port = DEFAULT_PORTS[engine] if port is None else port
    if isinstance(chosen_port, bool) or not isinstance(chosen_port, int):
        raise InvalidInput("the port is a number", code="invalid_port")
    if not 1024 <= chosen_port <= 65535:
        raise InvalidInput("the port is 1024-65535", code="invalid_port")
    memory = DEFAULT_MEMORY_MB if memory_mb is None else memory_mb
    if isinstance(memory, bool) or not isinstance(memory, int):
        raise InvalidInput("the memory is a number of MB", code="invalid_memory")
    if not MIN_MEMORY_MB <= memory <= MAX_MEMORY_MB:
        raise InvalidInput(
            f"the memory is {MIN_MEMORY_MB}-{MAX_MEMORY_MB} MB", code="invalid_memory"
        )
    return LaunchSpec(name, engine, str(address), chosen_port, memory)


def redis_arguments(spec: LaunchSpec, maxmemory_mb: int | None = None) -> list[str]:
    """redis-server's arguments: its address, its data and users on the volume, persistence
    (append-only file), protected mode, and ``maxmemory`` below the container's limit so Redis
    refuses writes before the kernel kills it (a quarter below it unless ``maxmemory_mb``)."""
    maxmemory = max(16, spec.memory_mb * 3 // 4) if maxmemory_mb is None else maxmemory_mb
    return [
        "--bind", spec.listen,
        "--port", str(spec.port),
        "--protected-mode", "yes",
        "--dir", DATA_DIR,
        "--aclfile", ACL_FILE,
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--daemonize", "no",
        "--maxmemory", f"{maxmemory}mb",
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip


def redis_acl_file(admin_password: str) -> str:
    """The users file of a new server: no default user, Berth's admin (its hash only)."""
    return (
        "user default off\n"
        f"user {ADMIN_USER} on #{redis_password_hash(admin_password)} ~* &* +@all\n"
    )


def postgres_arguments(spec: LaunchSpec) -> list[str]:
    """postgres's settings: its address and port only, the socket in the container's /tmp,
    shared buffers a quarter of the memory, no JIT (LLVM is not in the image)."""
    return [
        "-D", PG_DATA,
        "-c", f"listen_addresses={spec.listen}",
        "-c", f"port={spec.port}",
        "-c", "unix_socket_directories=/tmp",
        "-c", f"shared_buffers={max(16, spec.memory_mb // 4)}MB",
        "-c", "max_connections=200",
        "-c", "jit=off",
        "-c", "password_encryption=scram-sha-256",
    ]  # fmt: skip


def postgres_initdb_script() -> str:
    """The one-shot initdb (a fixed text: nothing of the operator's input is in it)."""
    return (
        f"{PG_BIN}/initdb -D {PG_DATA} -U {ADMIN_USER} --pwfile={PG_PASSWORD_FILE}"
        " --auth=scram-sha-256 -E UTF8 --no-instructions; rc=$?;"
        f" rm -f {PG_PASSWORD_FILE}; exit $rc"
    )


PG_HBA = (
    "# Berth: every connection by password (SCRAM), from anywhere the network lets through.\n"
    "local all all scram-sha-256\n"
    "host all all 0.0.0.0/0 scram-sha-256\n"
    "host all all ::/0 scram-sha-256\n"
)


def mariadb_install_arguments() -> list[str]:
    return [
        "--no-defaults", f"--datadir={MARIADB_DATA}", "--auth-root-authentication-method=socket",
        "--skip-test-db", "--skip-name-resolve", "--tmpdir=/tmp",
    ]  # fmt: skip


def mariadb_arguments(spec: LaunchSpec) -> list[str]:
    return [
        "--no-defaults", f"--datadir={MARIADB_DATA}", "--skip-networking=0",
        f"--bind-address={spec.listen}", f"--port={spec.port}",
        "--socket=/tmp/mysqld.sock", "--pid-file=/tmp/mysqld.pid", "--tmpdir=/tmp",
        f"--init-file={MARIADB_INIT}", "--skip-log-bin", "--skip-name-resolve",
        f"--innodb-buffer-pool-size={max(32, spec.memory_mb // 2)}M", "--max-connections=200",
    ]  # fmt: skip


def mariadb_init_sql(spec: LaunchSpec, password: str) -> str:
    """Read at every start: Berth's admin, from the listen address only, by its hash. The
    address is a validated IPv4 address, the hash hex: nothing else reaches the text."""
    return mariadb_admin_sql(spec.listen, password)


def mariadb_admin_sql(admin_host: str, password: str) -> str:
    """Berth's admin from ``admin_host`` only (an IPv4 address), by its password's hash."""
    host = str(ipaddress.IPv4Address(admin_host))
    digest = mysql_native_password_hash(password)
    if re.fullmatch(r"\*[0-9A-F]{40}", digest) is None:
        raise ValueError("not a mysql_native_password hash")
    return (
        f"CREATE USER IF NOT EXISTS '{ADMIN_USER}'@'{host}' IDENTIFIED BY PASSWORD '{digest}';\n"
        f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'{host}' WITH GRANT OPTION;\n"
    )


def server_arguments(spec: LaunchSpec) -> list[str]:
    if spec.engine == "redis":
        return redis_arguments(spec)
    if spec.engine == "mariadb":
        return mariadb_arguments(spec)
    return postgres_arguments(spec)


def admin_url(spec: LaunchSpec, password: str) -> str:
    if spec.engine == "postgres":
        return f"postgresql://{ADMIN_USER}:{password}@{spec.listen}:{spec.port}/postgres"
    if spec.engine == "mariadb":
        return f"mysql://{ADMIN_USER}:{password}@{spec.listen}:{spec.port}/"
    return f"redis://{ADMIN_USER}:{password}@{spec.listen}:{spec.port}/0"


def container_options(
    spec: LaunchSpec, image: str, installation: str, server_id: str
) -> dict[str, Any]:
    """docker-py ``containers.create`` keywords (the server's name is its label)."""
    labels = {LABEL_SERVER: server_id, LABEL_INSTALLATION: installation}
    return {
        "image": image,
        "command": server_arguments(spec),
        "name": spec.container,
        "network_mode": "host",
        "user": "65534:65534",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "mem_limit": f"{spec.memory_mb}m",
        "memswap_limit": f"{spec.memory_mb}m",
        "pids_limit": PIDS_LIMIT,
        "tmpfs": {"/tmp": "size=16m"},  # noqa: S108 (the container's own tmpfs)
        "volumes": {spec.volume: {"bind": DATA_DIR, "mode": "rw"}},
        "restart_policy": {"Name": "unless-stopped"},
        "labels": labels,
        "log_config": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
    }
