"""Failures under constant client load through Berth's ingress, on the Swarm backend.

One real Berth server (its engine: the shared cluster's manager) for the module; each test
runs its own app of 2 or 3 replicas spread over the three workers, and two clients GET it
through Berth's nginx the whole time. Every test asserts zero failed requests; a request that
was in flight on a link when the test cut it is lost with the link and counted apart
(tests.cluster.traffic.tally). Figures (how fast the lost node's upstreams left the ingress,
how fast the replicas were back) are printed and appended to the tier's timings.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.berth_app import (
    containers_running,
    deployments,
    routed,
    short_of,
    web_image,
)
from tests.cluster.berth_swarm import berth_on_swarm
from tests.cluster.conftest import TIMINGS
from tests.cluster.nodes import Cluster
from tests.cluster.traffic import Traffic, tally
from tests.harness import BerthServer, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# A rollout that does not become healthy fails after this (the broken release's test waits for
# it); long enough for the five server restarts of the kill -9 test to stay within it.
DEPLOY_TIMEOUT = 15.0


class Berth:
    """The module's server, the app image every node has, and the cluster under them."""

    def __init__(self, cluster: Cluster, server: BerthServer, image: str) -> None:
        self.cluster, self.server, self.image = cluster, server, image

    def app(self, prefix: str, scale: int = 2) -> str:
        """A new app at ``scale`` healthy instances (on as many nodes) of the image."""
        s, name = self.server, f"{prefix}-{uuid.uuid4().hex[:6]}"
        s.create_app(name, "--memory", "32M", "--cpus", "0.25", "--health-path", "/healthz")
        s.cli_ok("scale", name, str(scale))
        out = s.cli_json("deploy", name, "--image", self.image, timeout=120)
        assert out["deployment"]["status"] == "succeeded", out
        rows = s.wait_converged(name, scale, timeout=60)
        assert len({r["node"] for r in rows}) == scale, rows  # spread: one per node
        return name

    def traffic(self, app: str) -> Traffic:
        return Traffic(self.server.ingress_port, self.server.host_of(app), clients=2)

    def healthy(self, app: str) -> list[dict[str, Any]]:
        return [r for r in self.server.ps(app) if r["state"] == "running" and r["healthy"]]

    def address(self, short: str) -> str:
        return self.cluster.node(short).address

    def delete(self, app: str) -> None:
        """Answered at once; the instances go meanwhile (the next test does not wait)."""
        with contextlib.suppress(Exception):
            self.server.cli("apps", "delete", app, "--yes", "--no-wait", timeout=90)


@pytest.fixture(scope="module")
def berth(cluster: Cluster) -> Iterator[Berth]:
    cluster.make_whole()
    with web_image() as image:
        cluster.load_images([image])
        with berth_on_swarm(cluster, deploy_timeout=DEPLOY_TIMEOUT) as server:
            yield Berth(cluster, server, image)


@pytest.fixture
def whole(berth: Berth, swarm: Cluster) -> Berth:
    """The module's server over a cluster made whole before and after the test."""
    return berth


@pytest.fixture(scope="module")
def steady_app(berth: Berth) -> Iterator[str]:
    """One app of 2 replicas for the tests that do not break nodes (releases, server kills):
    deploying an app per test would cost the tier's time. Each test starts from it converged."""
    app = berth.app("steady")
    yield app
    berth.delete(app)


@pytest.fixture
def steady(berth: Berth, steady_app: str) -> Iterator[tuple[Berth, str]]:
    # Not the ``swarm`` fixture: it would remove the services of the app's new revisions.
    berth.cluster.make_whole()
    berth.server.wait_converged(steady_app, 2, timeout=60)
    yield berth, steady_app
    berth.cluster.make_whole()


def _figure(line: str) -> None:
    print(line)
    TIMINGS.append(line)


def test_a_killed_worker_costs_no_request(whole: Berth) -> None:
    b, s = whole, whole.server
    app = b.app("lost")
    try:
        victim = s.ps(app)[0]
        short = short_of(b.cluster, victim["node"])
        lost = {u for u in routed(s, app) if u.startswith(b.address(short) + ":")}
        assert len(lost) == 1, routed(s, app)
        with b.traffic(app) as load:
            load.wait_for(20)
            b.cluster.kill_node(short)
            # After the command: a request sent during it counts as in flight on the cut link.
            killed = time.monotonic()
            wait_until(lambda: not (routed(s, app) & lost), 30, "the lost upstream is unrouted")
            unrouted = time.monotonic() - killed
            wait_until(
                lambda: (
                    len(rows := b.healthy(app)) == 2
                    and victim["node"] not in {r["node"] for r in rows}
                    and len(routed(s, app)) == 2
                ),
                60,
                "two healthy routed instances on the other nodes",
            )
            serving = time.monotonic() - killed
            rows = s.wait_converged(app, 2, timeout=30)
            load.wait_for(20)
        result = tally(load.outcomes, cuts=[killed])
        _figure(
            f"node {short} killed: its upstream gone from nginx in {unrouted:.2f}s, "
            f"2 healthy routed replicas again in {serving:.1f}s; {result.as_dict()}"
        )
        assert result.failed == [], result.as_dict()
        assert victim["node"] not in {r["node"] for r in rows}
        assert len(containers_running(b.cluster, s, app)) == 2
    finally:
        b.delete(app)


def test_a_partitioned_worker_heals_without_duplicates(whole: Berth) -> None:
    b, s = whole, whole.server
    app = b.app("split")
    try:
        victim = s.ps(app)[0]
        short = short_of(b.cluster, victim["node"])
        lost = {u for u in routed(s, app) if u.startswith(b.address(short) + ":")}
        with b.traffic(app) as load:
            load.wait_for(20)
            b.cluster.partition(short)
            cut = time.monotonic()
            wait_until(lambda: not (routed(s, app) & lost), 30, "the cut upstream is unrouted")
            unrouted = time.monotonic() - cut
            b.cluster.wait_states({short: "down"}, timeout=30)
            wait_until(
                lambda: len(b.healthy(app)) == 2 and len(routed(s, app)) == 2,
                60,
                "two healthy routed instances on the connected nodes",
            )
            replaced = time.monotonic() - cut
            # The cut node still runs its task (nothing fences it): 3 run until the link heals.
            assert len(containers_running(b.cluster, s, app)) == 3
            b.cluster.heal(short)
            healed = time.monotonic()
            b.cluster.wait_states({short: "ready"}, timeout=60)
            wait_until(
                lambda: len(containers_running(b.cluster, s, app)) == 2,
                60,
                "the engines run exactly the 2 desired instances",
            )
            stopped = time.monotonic() - healed
            rows = s.wait_converged(app, 2, timeout=30)
            settled = time.monotonic()
            load.wait_for(40)
        result = tally(load.outcomes, cuts=[cut])
        _figure(
            f"node {short} partitioned: its upstream gone from nginx in {unrouted:.2f}s, "
            f"replaced and routed in {replaced:.1f}s; after healing its task stopped in "
            f"{stopped:.1f}s; {result.as_dict()}"
        )
        assert result.failed == [], result.as_dict()
        assert len(result.in_flight_on_cut) <= b_clients(load), result.as_dict()
        # No duplicate serves: after the heal only the two instances Berth shows answer.
        running = containers_running(b.cluster, s, app)
        hostnames = {c.attrs["Config"]["Hostname"] for c in running}
        answered = {o.body.split()[-1] for o in load.since(settled) if o.ok}
        assert answered and answered <= hostnames, (answered, hostnames)
        assert len(rows) == 2 and len(routed(s, app)) == 2
        assert s.count_instances(app) == 2
    finally:
        b.delete(app)


def b_clients(load: Traffic) -> int:
    """At most one request per client can be in flight when a link is cut."""
    return load.clients


def test_a_rolling_release_costs_no_request(steady: tuple[Berth, str]) -> None:
    b, app = steady
    s = b.server
    greeting = f"hola-{uuid.uuid4().hex[:6]}"
    with b.traffic(app) as load:
        load.wait_for(20)
        started = time.monotonic()
        out = s.cli_json("config", "set", app, f"GREETING={greeting}", timeout=120)
        took = time.monotonic() - started
        assert out["deployment"]["status"] == "succeeded", out
        rows = s.wait_converged(app, 2, timeout=60)
        wait_until(
            lambda: all(o.body.startswith(greeting) for o in load.since(time.monotonic() - 1)),
            30,
            "only the new release answers",
        )
        load.wait_for(20)
    result = tally(load.outcomes)
    _figure(f"rolling release of 2 replicas: {took:.1f}s; {result.as_dict()}")
    assert result.failed == [], result.as_dict()
    assert {r["release_version"] for r in rows} == {out["release"]}
    assert len({r["node"] for r in rows}) == 2
    assert len(containers_running(b.cluster, s, app)) == 2


def test_a_release_failing_its_check_is_rolled_back(steady: tuple[Berth, str]) -> None:
    b, app = steady
    s = b.server
    before = s.cli_json("apps", "info", app)
    old = {r["container_id"] for r in s.ps(app)}
    greeting = (s.app_body(app) or "").split()[0]
    with b.traffic(app) as load:
        load.wait_for(20)
        started = time.monotonic()
        change = s.api_json("PATCH", f"/apps/{app}/config", json={"set": {"MODE": "broken"}})
        dep_id = change["deployment"]["id"]
        dep = wait_until(
            lambda: (
                (d := s.api_json("GET", f"/apps/{app}/deployments/{dep_id}"))["status"]
                != "in_progress"
                and d
            ),
            DEPLOY_TIMEOUT + 40,
            "the broken deployment ends",
        )
        took = time.monotonic() - started
        wait_until(
            lambda: len(containers_running(b.cluster, s, app)) == 2,
            60,
            "the broken instances are gone",
        )
        rows = s.wait_converged(app, 2, timeout=30)
        load.wait_for(20)
    result = tally(load.outcomes)
    _figure(f"broken release rolled back after {took:.1f}s ({dep['message']}); {result.as_dict()}")
    assert dep["status"] == "failed", dep
    assert "health" in dep["message"], dep
    after = s.cli_json("apps", "info", app)
    assert after["serving_release"] == before["serving_release"]
    assert {r["container_id"] for r in rows} == old  # the old ones served throughout
    assert result.failed == [], result.as_dict()
    assert greeting and all(o.body.startswith(greeting + " ") for o in load.outcomes if o.ok)
    # The app's config is the broken one now: the next release must not carry it.
    s.api_json("PATCH", f"/apps/{app}/config", json={"unset": ["MODE"]})


def test_server_killed_mid_rollout_five_times_converges(steady: tuple[Berth, str]) -> None:
    b, app = steady
    s = b.server
    try:
        ids: list[str] = []
        mid_rollout = 0
        with b.traffic(app) as load:
            load.wait_for(20)
            for round_ in range(1, 6):
                change = s.api_json(
                    "PATCH", f"/apps/{app}/config", json={"set": {"GREETING": f"round{round_}"}}
                )
                ids.append(change["deployment"]["id"])
                # Mid-rollout: the new revision's service exists, its instances not all healthy.
                wait_until(
                    lambda: len(_services_of(b, app)) >= 2 or _finished(s, app, ids[-1]),
                    30,
                    "the new revision's service exists",
                )
                if not _finished(s, app, ids[-1]):
                    mid_rollout += 1
                assert s.stop(signal.SIGKILL) == -signal.SIGKILL
                load.wait_for(10)  # the data plane serves without the control plane
                s.start()
            final = wait_until(
                lambda: (
                    (d := s.api_json("GET", f"/apps/{app}/deployments/{ids[-1]}"))["status"]
                    != "in_progress"
                    and d
                ),
                DEPLOY_TIMEOUT + 30,
                "the last deployment ends",
            )
            rows = s.wait_converged(app, 2, timeout=60)
            wait_until(
                lambda: all(o.body.startswith("round5") for o in load.since(time.monotonic() - 1)),
                30,
                "only the final release answers",
            )
            load.wait_for(20)
        result = tally(load.outcomes)
        _figure(
            f"server SIGKILLed 5 times mid-rollout ({mid_rollout} while the deployment was in "
            f"progress): converged; {result.as_dict()}"
        )
        assert final["status"] == "succeeded", final
        assert mid_rollout >= 3
        assert result.failed == [], result.as_dict()
        info = s.cli_json("apps", "info", app)
        assert {r["release_version"] for r in rows} == {info["serving_release"]}
        assert len(containers_running(b.cluster, s, app)) == 2
        assert len(_services_of(b, app)) == 1
        recorded = [d for d in deployments(s, app) if d["id"] in ids]
        assert [d["id"] for d in recorded] == ids  # one row each, none lost or doubled
        for d in recorded:
            assert d["status"] in ("succeeded", "superseded", "failed"), recorded
            assert d["finished_at"] is not None, recorded
        assert recorded[-1]["status"] == "succeeded"
    finally:
        if not s.running:
            s.start()


def _services_of(b: Berth, app: str) -> list[Any]:
    labels = [f"berth.installation={b.server.installation}", f"berth.app-name={app}"]
    return list(b.cluster.manager_client().services.list(filters={"label": labels}))


def _finished(s: BerthServer, app: str, dep_id: str) -> bool:
    return bool(s.api_json("GET", f"/apps/{app}/deployments/{dep_id}")["status"] != "in_progress")
