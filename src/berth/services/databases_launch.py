"""Launch a database server as a container of Berth's own, and register it (berth.databases.launch
says what it is). The container and its volume come first, the store's row last: a launch cut
short leaves no row, and its container and volume are removed before the error is answered."""

from __future__ import annotations

import io
import logging
import re
import tarfile
import time
from collections.abc import Callable
from typing import Any

import docker.errors
from sqlalchemy import select
from sqlalchemy.orm import Session

from berth.databases.errors import DatabaseServerUnavailable
from berth.databases.launch import (
    ACL_FILE,
    DATA_DIR,
    LABEL_INSTALLATION,
    LABEL_SERVER,
    MARIADB_INIT,
    PG_DATA,
    PG_HBA,
    PG_PASSWORD_FILE,
    LaunchSpec,
    admin_url,
    container_options,
    launch_spec,
    mariadb_init_sql,
    mariadb_install_arguments,
    postgres_initdb_script,
    redis_acl_file,
)
from berth.databases.names import new_password
from berth.errors import BerthError, Conflict
from berth.images.bootstrap import BootstrapError
from berth.images.db_server_images import ensure_db_server_image
from berth.services import databases_servers as servers
from berth.services.databases_access import ProviderFactory
from berth.settings import Settings
from berth.store.tables import DbServer

log = logging.getLogger(__name__)
READY_SECONDS = 30.0
LAUNCH_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")  # the names a launch may have had


class LaunchFailed(BerthError):
    status = 503
    code = "launch_failed"


def launch_server(
    session: Session,
    factory: ProviderFactory,
    client: Any,
    settings: Settings,
    installation: str,
    *,
    name: str,
    engine: str,
    listen: str,
    port: int | None = None,
    memory_mb: int | None = None,
    capacity: int = servers.DEFAULT_CAPACITY,
    ready: Callable[[str], bool] | None = None,
) -> DbServer:
    """Run the server (image made offline if missing), wait until it answers, then register it
    through the same checks as `db-servers add`. ``client``: docker-py DockerClient."""
    spec = launch_spec(name, engine, listen, port, memory_mb)
    servers.validate_server_name(spec.name)
    if session.scalar(select(DbServer.id).where(DbServer.name == spec.name)) is not None:
        raise Conflict(f"a database server named {spec.name!r} exists", code="db_server_exists")
    _refuse_leftovers(client, spec)
    try:
        image = ensure_db_server_image(client, settings.cache_dir, spec.engine)
    except BootstrapError as exc:
        raise LaunchFailed(f"the {spec.engine} image cannot be made: {exc.message}") from None
    password = new_password()
    url = admin_url(spec, password)
    try:
        _run(client, spec, image.tag, installation, password)
        _wait_ready(client, spec, url, ready or _answers)
        return servers.add_server(session, factory, spec.name, spec.engine, url, capacity=capacity)
    except BaseException:
        remove_launched(client, spec.name, keep_data=False)
        raise


def _refuse_leftovers(client: Any, spec: LaunchSpec) -> None:
    for kind, get in (("container", client.containers.get), ("volume", client.volumes.get)):
        target = spec.container if kind == "container" else spec.volume
        try:
            get(target)
        except docker.errors.NotFound:
            continue
        except docker.errors.DockerException as exc:
            raise LaunchFailed(f"the engine cannot be asked about {target}: {exc}") from None
        raise Conflict(
            f"a {kind} named {target} exists (from a server launched before and removed: its "
            f"data is kept until you `docker volume rm {spec.volume}`); choose another name",
            code="launch_leftover",
        )


def _run(client: Any, spec: LaunchSpec, image: str, installation: str, password: str) -> None:
    labels = {LABEL_SERVER: spec.name, LABEL_INSTALLATION: installation}
    try:
        client.volumes.create(name=spec.volume, labels=labels)
        container = client.containers.create(
            **container_options(spec, image, installation, spec.name)
        )
        if spec.engine == "postgres":
            _initdb(client, spec, image, labels, password)
            files = {PG_DATA: {"pg_hba.conf": PG_HBA}}
        elif spec.engine == "mariadb":
            _once(client, spec, image, labels, ["/usr/bin/mariadb-install-db"],
                  mariadb_install_arguments())  # fmt: skip
            files = {DATA_DIR: {MARIADB_INIT.rsplit("/", 1)[1]: mariadb_init_sql(spec, password)}}
        else:
            # The users file before the first start (Redis refuses a missing aclfile).
            files = {DATA_DIR: {ACL_FILE.rsplit("/", 1)[1]: redis_acl_file(password)}}
        for directory, content in files.items():
            # Into the volume, owned by nobody (the server), readable by nobody else.
            if not container.put_archive(directory, _archive(content)):
                raise LaunchFailed(f"the server's files could not be written into {spec.volume}")
        container.start()
    except docker.errors.DockerException as exc:
        raise LaunchFailed(f"the server's container did not start: {exc}") from None


def _archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, text in files.items():
            body = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(body), 0o600, 65534, 65534
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def _initdb(
    client: Any, spec: LaunchSpec, image: str, labels: dict[str, str], password: str
) -> None:
    """The cluster, once; the password file initdb reads is removed when it ends."""
    files = {PG_PASSWORD_FILE.rsplit("/", 1)[1]: password}
    _once(client, spec, image, labels, ["/bin/sh", "-c", postgres_initdb_script()], [], files)


def _once(
    client: Any,
    spec: LaunchSpec,
    image: str,
    labels: dict[str, str],
    entrypoint: list[str],
    command: list[str],
    files: dict[str, str] | None = None,
) -> None:
    """A one-shot step on the volume (initdb, install-db) in a container of the same image: no
    network, as nobody, read-only root, every capability dropped; it must end with 0."""
    init = client.containers.create(
        image,
        entrypoint=entrypoint,
        command=command,
        name=f"{spec.container}-initdb",
        user="65534:65534",
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        tmpfs={"/tmp": "size=16m"},  # noqa: S108 (the container's own)
        volumes={spec.volume: {"bind": DATA_DIR, "mode": "rw"}},
        labels=labels,
    )
    try:
        if files and not init.put_archive(DATA_DIR, _archive(files)):
            raise LaunchFailed("the first start's files could not be written")
        init.start()
        outcome = init.wait(timeout=180)
        if outcome.get("StatusCode") != 0:
            tail = init.logs(tail=5).decode(errors="replace").strip()
            raise LaunchFailed(f"{entrypoint[-1][:40]} failed: {tail[-600:]}")
    finally:
        init.remove(force=True)


def _answers(url: str) -> bool:
    if url.startswith("mysql://"):
        from urllib.parse import unquote, urlsplit

        import pymysql

        u = urlsplit(url)
        try:
            pymysql.connect(
                host=u.hostname, port=u.port or 3306, user=unquote(u.username or ""),
                password=unquote(u.password or ""), connect_timeout=2,
            ).close()  # fmt: skip
        except pymysql.MySQLError:
            return False
        return True
    if url.startswith("postgresql://"):
        import psycopg

        try:
            psycopg.connect(url, connect_timeout=2).close()
        except psycopg.Error:
            return False
        return True
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def _wait_ready(client: Any, spec: LaunchSpec, url: str, ready: Callable[[str], bool]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if ready(url):
            return
        try:
            state = client.containers.get(spec.container).attrs["State"]
        except docker.errors.DockerException:
            state = {}
        if state.get("Status") in ("exited", "dead"):
            logs = _tail(client, spec.container)
            raise LaunchFailed(f"the server exited at start: {logs}")
        time.sleep(0.2)
    raise DatabaseServerUnavailable(
        f"the launched server did not answer at {spec.listen}:{spec.port} within "
        f"{READY_SECONDS:.0f} s (is the address this machine's, and the port free?)"
    )


def _tail(client: Any, name: str) -> str:
    try:
        text = client.containers.get(name).logs(tail=5).decode(errors="replace")
    except docker.errors.DockerException:
        return "(no log)"
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[-600:]


def remove_launched(client: Any, name: str, *, keep_data: bool = True) -> bool:
    """The launched server's container goes (its volume too unless ``keep_data``); False when
    Berth launched no server of that name."""
    found = False
    try:
        for container in client.containers.list(
            all=True, filters={"label": f"{LABEL_SERVER}={name}"}
        ):
            found = True
            container.remove(force=True)
        if not keep_data:
            for volume in client.volumes.list(filters={"label": f"{LABEL_SERVER}={name}"}):
                volume.remove(force=True)
    except docker.errors.DockerException as exc:
        log.error("launched server %s: cannot remove its container: %s", name, exc)
        raise LaunchFailed(f"the launched server's container cannot be removed: {exc}") from None
    return found
