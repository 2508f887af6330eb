"""Two Berth servers on one PostgreSQL: one leads (runs the controllers), both serve.

Each server has its own home, API port and nginx, and the same ``BERTH_DATABASE_URL`` (a
throwaway database of the distro's PostgreSQL, made the way `make test-postgres` makes its own,
dropped afterwards). Both run apps on the host's engine (the local backend): they share one
installation, so whichever leads adopts what runs.

- the follower's nginx serves the apps too (routes from the store's instance rows), and the
  same certificates (from the store): one uploaded through the follower is served by both;
- SIGTERM to the leader: the other takes over (a clean stop releases the lease) and heals;
- SIGSTOP the leader past its lease: the other takes over with the next token; SIGCONT the old
  one: the pass it had in flight is fenced (a PostgreSQL trigger records every committed write
  to the controllers' tables with the writer's ``application_name``: none of the old leader's
  after it stopped), and it becomes a follower.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from tests.certs import selfsigned
from tests.certs.tls_client import tls_request
from tests.harness import (
    BUSYBOX_APP,
    REPO_ROOT,
    BerthServer,
    docker_client,
    free_port,
    wait_until,
)

pytestmark = [pytest.mark.docker, pytest.mark.nginx, pytest.mark.slow]

PAGE_TEXT = "hello from berth"
TAKEOVER_SECONDS = 15  # a ttl of 10 s, and the follower's poll of 1 s
AUDITED = ("apps", "deployments", "instances", "run_intervals", "meta")
AUDIT_SQL = """
CREATE TABLE l1_audit (
    id bigserial PRIMARY KEY,
    writer text NOT NULL,
    tbl text NOT NULL,
    op text NOT NULL,
    at double precision NOT NULL
);
CREATE FUNCTION l1_audit_write() RETURNS trigger AS $$
BEGIN
    INSERT INTO l1_audit (writer, tbl, op, at) VALUES (
        current_setting('application_name'), TG_TABLE_NAME, TG_OP,
        extract(epoch FROM clock_timestamp()));
    RETURN NULL;
END $$ LANGUAGE plpgsql;
"""


@pytest.fixture
def database() -> Iterator[str]:
    """A database and role of their own, from the scripts of the PostgreSQL tier (which
    starts the distro's cluster when it is installed but down, as ensure-system.sh does)."""
    if shutil.which("pg_lsclusters") and shutil.which("pg_ctlcluster"):
        clusters = subprocess.run(
            ["pg_lsclusters", "-h"], capture_output=True, text=True, check=False, timeout=30
        )
        if clusters.returncode == 0 and "online" not in clusters.stdout:
            subprocess.run(["pg_ctlcluster", "15", "main", "start"], check=False, timeout=120)
    made = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "postgres-test-db.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if made.returncode != 0:
        pytest.fail(
            "these tests need the distro's PostgreSQL running "
            f"(scripts/ensure-system.sh --with-postgres): {made.stderr.strip()}",
            pytrace=False,
        )
    url = made.stdout.strip()
    try:
        yield url
    finally:
        subprocess.run(
            ["bash", str(REPO_ROOT / "scripts" / "postgres-drop-db.sh"), url],
            check=False,
            timeout=120,
        )


@dataclass
class Pair:
    a: BerthServer
    b: BerthServer
    db: sa.Engine

    def status(self, server: BerthServer) -> dict[str, Any]:
        data: dict[str, Any] = server.api_json("GET", "/status")
        return data

    def lease(self) -> tuple[str, int]:
        with self.db.connect() as conn:
            row = conn.execute(
                sa.text("SELECT holder, token FROM leases WHERE name = 'controllers'")
            ).one()
        return str(row[0]), int(row[1])


def _server(url: str, name: str, base_domain: str | None = None) -> BerthServer:
    env = {
        # The application name tells the database's audit which server wrote what.
        "BERTH_DATABASE_URL": f"{url}?application_name=berth-{name}",
        "BERTH_SERVER_ID": f"server-{name}-{uuid.uuid4().hex[:6]}",
        "BERTH_HTTPS_PORT": str(free_port()),
    }
    if base_domain:
        env["BERTH_BASE_DOMAIN"] = base_domain
    server = BerthServer(extra_env=env)
    if base_domain:
        server.base_domain = base_domain  # every ingress node serves the same hostnames
    return server


@pytest.fixture
def pair(real_platform: None, database: str) -> Iterator[Pair]:
    a = _server(database, "a")
    b = _server(database, "b", a.base_domain)
    db = sa.create_engine(database)
    try:
        a.start()
        wait_until(lambda: a.api_json("GET", "/status")["role"] == "leader", 20, "a leads")
        b.start()
        yield Pair(a, b, db)
    finally:
        for server in (a, b):  # both gone before anything is removed: none recreates it
            with contextlib.suppress(Exception):
                if server.proc is not None and server.proc.poll() is None:
                    os.kill(server.proc.pid, signal.SIGCONT)
                    server.proc.kill()
                    server.proc.wait(10)
        a.cleanup()
        b.cleanup()
        db.dispose()


def _deploy(pair: Pair, app: str, scale: int) -> list[dict[str, Any]]:
    pair.a.create_app(app)
    pair.a.cli_ok("scale", app, str(scale))
    pair.a.deploy_dir(app, BUSYBOX_APP)
    return pair.a.wait_converged(app, scale)


def _serves(server: BerthServer, app: str) -> bool:
    return PAGE_TEXT in (server.app_body(app) or "")


def _kill_instance(container_id: str) -> None:
    with contextlib.closing(docker_client()) as client:
        pid = client.api.inspect_container(container_id)["State"]["Pid"]
    assert pid > 0
    os.kill(pid, signal.SIGKILL)


def _kill_and_wait_healed(
    leader: BerthServer, app: str, victim: dict[str, Any], scale: int
) -> None:
    """SIGKILL an instance's process: the leader restarts it in place."""
    _kill_instance(victim["container_id"])

    def healed() -> bool:
        now = leader.ps(app)
        same = [r for r in now if r["container_id"] == victim["container_id"]]
        running = [r for r in now if r["state"] == "running" and r["healthy"]]
        restarted = bool(same and same[0]["state"] == "running" and same[0]["restarts"] >= 1)
        return restarted and len(running) == scale

    wait_until(healed, 60, "the leader restarts the killed instance")


def test_the_follower_serves_and_takes_over_from_a_stopped_leader(pair: Pair) -> None:
    a, b = pair.a, pair.b
    app = "twin"
    status_b = pair.status(b)
    assert status_b["role"] == "follower"
    assert status_b["reconciler"] == "not running"
    holder_a, token_a = pair.lease()
    assert status_b["lease_holder"] == holder_a == a.settings["BERTH_SERVER_ID"]
    assert status_b["lease_token"] == token_a
    rows = _deploy(pair, app, 2)
    # The follower's nginx routes from the rows the leader wrote: both ingress nodes serve.
    wait_until(lambda: _serves(b, app), 20, "the follower's nginx serves the app")
    assert _serves(a, app)

    a.stop(signal.SIGTERM)
    assert not a.running
    # A clean stop gives the lease up: the follower leads with the next token.
    wait_until(lambda: pair.status(b)["role"] == "leader", TAKEOVER_SECONDS, "b leads")
    holder_b, token_b = pair.lease()
    assert (holder_b, token_b) == (b.settings["BERTH_SERVER_ID"], token_a + 1)
    status_b = pair.status(b)
    assert (status_b["lease_holder"], status_b["lease_token"]) == (holder_b, token_b)
    # The new leader adopted what runs (nothing replaced) and keeps healing it.
    adopted = b.wait_converged(app, 2)
    assert {r["container_id"] for r in adopted} == {r["container_id"] for r in rows}
    _kill_and_wait_healed(b, app, adopted[0], 2)
    wait_until(lambda: _serves(b, app), 20, "the app answers through the new leader's nginx")


def test_a_leader_paused_past_its_lease_is_fenced_and_follows(pair: Pair) -> None:
    a, b = pair.a, pair.b
    app = "paused"
    with pair.db.begin() as conn:
        conn.execute(sa.text(AUDIT_SQL))
        for table in AUDITED:
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER l1_audit_{table} AFTER INSERT OR UPDATE OR DELETE ON "
                    f"{table} FOR EACH ROW EXECUTE FUNCTION l1_audit_write()"
                )
            )
    before = {r["container_id"] for r in _deploy(pair, app, 2)}
    wait_until(lambda: _serves(b, app), 20, "the follower's nginx serves the app")
    _, token_a = pair.lease()
    assert a.proc is not None and b.proc is not None

    # Hold a's reconciler inside a pass: its read of the instance rows waits for this lock.
    locker = pair.db.connect()
    try:
        tx = locker.begin()
        locker.execute(sa.text("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE"))

        def a_waits() -> bool:
            # Another connection: within a transaction the activity view is a frozen snapshot.
            with pair.db.connect() as conn:
                waiting = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                        "'berth-a' AND wait_event_type = 'Lock' "
                        "AND query ILIKE 'SELECT instances.%'"
                    )
                ).scalar_one()
            return bool(waiting)

        wait_until(a_waits, 20, "a's reconciler pass waits on the instance rows")
        os.kill(a.proc.pid, signal.SIGSTOP)
        stopped_at = float(
            locker.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
        )
        tx.commit()  # a's pass reads the rows now, and stays stopped with what it saw
    finally:
        locker.close()

    # While a is stopped, the follower's API takes a change: one instance more. a's pass has
    # read the old scale: were it not fenced, its apply would remove the new instance again.
    b.cli_ok("scale", app, "3")
    wait_until(lambda: pair.status(b)["role"] == "leader", 25, "b takes over the expired lease")
    holder_b, token_b = pair.lease()
    assert token_b == token_a + 1 and holder_b == b.settings["BERTH_SERVER_ID"]
    kept = {r["container_id"] for r in b.wait_converged(app, 3)}
    assert before < kept

    os.kill(a.proc.pid, signal.SIGCONT)
    # a's pass resumes with what it saw before the pause: its commit is refused.
    wait_until(lambda: "StaleLeader" in a.log_path.read_text(errors="replace"), 20, "a is fenced")
    wait_until(lambda: pair.status(a)["role"] == "follower", 20, "a follows")
    status_a = pair.status(a)
    assert (status_a["lease_holder"], status_a["lease_token"]) == (holder_b, token_b)
    assert status_a["reconciler"] == "not running"
    log_text = a.log_path.read_text(errors="replace")
    assert "fenced" in log_text and "follower now" in log_text

    with pair.db.connect() as conn:
        stale = conn.execute(
            sa.text("SELECT tbl, op FROM l1_audit WHERE writer = 'berth-a' AND at > :t"),
            {"t": stopped_at},
        ).all()
        by_b = conn.execute(
            sa.text("SELECT count(*) FROM l1_audit WHERE writer = 'berth-b' AND at > :t"),
            {"t": stopped_at},
        ).scalar_one()
        rows = conn.execute(
            sa.text(
                "SELECT i.container_id FROM instances i JOIN apps p ON p.id = i.app_id "
                "WHERE p.name = :app"
            ),
            {"app": app},
        ).all()
    assert stale == []  # nothing the stale leader decided was committed
    assert by_b > 0  # the new leader did write (the audit sees writes)
    assert {r[0][:12] for r in rows} == {k[:12] for k in kept}  # ps shows short ids
    # Nothing the stale pass planned was done: the same three instances run, one leader.
    assert {r["container_id"] for r in b.wait_converged(app, 3)} == kept
    assert {c.id[:12] for c in b.containers(app)} == {k[:12] for k in kept}
    assert pair.lease() == (holder_b, token_b)
    wait_until(lambda: _serves(a, app), 20, "the old leader's nginx, now a follower's, serves")
    assert _serves(b, app)

    # The old leader can lead again: a new term runs new controllers (a stopped loop does not
    # start again), which adopt what runs and heal it.
    b.stop(signal.SIGTERM)
    wait_until(lambda: pair.status(a)["role"] == "leader", TAKEOVER_SECONDS, "a leads again")
    assert pair.lease() == (a.settings["BERTH_SERVER_ID"], token_b + 1)
    rows = a.wait_converged(app, 3)
    assert {r["container_id"] for r in rows} == kept
    _kill_and_wait_healed(a, app, rows[0], 3)
    assert _serves(a, app)


def test_a_certificate_uploaded_through_the_follower_is_served_by_both(
    pair: Pair, tmp_path: Any
) -> None:
    _deploy(pair, "tlsboth", 1)
    host = pair.a.host_of("tlsboth")
    made = selfsigned.issue((host,))
    (tmp_path / "cert.pem").write_text(made.chain_pem)
    (tmp_path / "key.pem").write_text(made.key_pem)
    pair.b.cli_ok(
        "certs", "add", host, "--cert", str(tmp_path / "cert.pem"), "--key",
        str(tmp_path / "key.pem"),
    )  # fmt: skip

    def serves(server: BerthServer) -> bool:
        port = int(server.settings["BERTH_HTTPS_PORT"])
        try:
            answer = tls_request(port, host, ca_pem=made.ca_pem)
        except (OSError, ssl.SSLError):
            return False
        return answer.fingerprint == made.fingerprint and PAGE_TEXT in answer.body.decode()

    for server in (pair.a, pair.b):
        wait_until(lambda s=server: serves(s), 30, "both servers serve the uploaded certificate")
    listed = {c["domain"]: c for c in pair.a.cli_json("certs", "list")}
    assert listed[host]["source"] == "upload"  # the leader sees the follower's upload

    pair.a.cli_ok("certs", "remove", host)
    for server in (pair.a, pair.b):
        wait_until(lambda s=server: not serves(s), 30, "neither serves it after its removal")
