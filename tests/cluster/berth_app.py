"""A small web app for the failure tests, and what a Berth server on the cluster does with it.

The app is busybox httpd (a few MB, loaded on every node in well under a second, unlike the
117 MB python image): ``/`` answers ``$GREETING <container hostname>``, ``/healthz`` answers ok.
With ``MODE=broken`` it serves nothing, so both its health check and every request answer
404: a release that fails its check and that a router must never send a request to (nginx
does not retry a 404, so a request sent there is a failed request a user sees).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors

from berth.errors import ProxyConfigError
from berth.proxy.nginx import NginxManager
from tests.cluster.nodes import Cluster
from tests.harness import BerthServer, docker_client

SCRIPT = (
    "mkdir -p /tmp/www && "
    'if [ "$MODE" != broken ]; then echo ok > /tmp/www/healthz && '
    'echo "${GREETING:-hello} $(hostname)" > /tmp/www/index.html; fi; '
    'exec httpd -f -p "${PORT:-8080}" -h /tmp/www'
)
DOCKERFILE = f"""FROM berth/busybox:latest
ENV PORT=8080
EXPOSE 8080
CMD ["sh", "-c", {json.dumps(SCRIPT)}]
"""


@contextlib.contextmanager
def web_image(prefix: str = "f1-web") -> Iterator[str]:
    """The app's image under a unique ``berth/...`` name on this machine's engine, removed at
    the end (a base-image reference every tenant may deploy)."""
    ref = f"berth/{prefix}-{uuid.uuid4().hex[:8]}:latest"
    with contextlib.closing(docker_client()) as client:
        client.images.build(fileobj=io.BytesIO(DOCKERFILE.encode()), tag=ref, rm=True)
        try:
            yield ref
        finally:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.images.remove(ref, force=True)


def routed(server: BerthServer, app: str) -> set[str]:
    """The ``address:port`` upstreams of ``app`` in the server's nginx right now: in its
    nginx.conf, or (instances set at run time, berth.proxy.dynamic) in its dictionary."""
    try:
        text = (server.home / "nginx" / "nginx.conf").read_text()
    except OSError:
        return set()
    match = re.search(rf"# app {re.escape(app)} \(([a-z0-9]+)\): instances set at run time", text)
    if match is None:
        return upstreams_in(text, app)
    manager = NginxManager(server.home / "nginx", dynamic_upstreams=True)
    try:
        return set(manager.live_peers().get(match.group(1), ()))
    except ProxyConfigError:
        return set()


def upstreams_in(conf: str, app: str) -> set[str]:
    """The servers of the upstream block that follows ``# app APP (id)`` (pure)."""
    match = re.search(rf"# app {re.escape(app)} \([^)]*\)\n\s*upstream [^{{]+\{{([^}}]*)\}}", conf)
    if match is None:
        return set()
    return set(re.findall(r"server (\S+:\d+) ", match.group(1)))


def containers_running(cluster: Cluster, server: BerthServer, app: str) -> list[Any]:
    """The app's containers that run on any node whose engine is up (a partitioned node's
    too: its socket is reached without the network)."""
    assert server.installation is not None
    labels = [f"berth.installation={server.installation}", f"berth.app-name={app}"]
    found = []
    for short, node in cluster.nodes.items():
        if short in cluster.managers or not node.engine_alive():
            continue
        found += cluster.client(short).containers.list(filters={"label": labels})
    return found


def short_of(cluster: Cluster, node_name: str) -> str:
    """A node's short name from the hostname Berth's ``ps`` shows."""
    for short, node in cluster.nodes.items():
        if node.name == node_name:
            return short
    raise AssertionError(f"{node_name!r} is not a node of {cluster.run_id}")


def deployments(server: BerthServer, app: str) -> list[dict[str, Any]]:
    """Every deployment the store recorded for ``app`` (read-only), oldest first."""
    import sqlite3

    db = Path(server.home / "berth.db")
    uri = f"file:{db}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT d.id, d.kind, d.status, d.message, d.started_at, d.finished_at "
            "FROM deployments d JOIN apps a ON a.id = d.app_id WHERE a.name = ? "
            "ORDER BY d.started_at",
            (app,),
        ).fetchall()
    return [dict(r) for r in rows]
