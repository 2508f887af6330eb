"""Three drained managers: killing the Raft leader elects another; the service recovers.

A cluster of its own (3 managers, 2 workers), removed with the module; traffic goes only to
the nodes' addresses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import docker
import pytest

from berth.cluster.nodes import ManagerClient
from berth.errors import Conflict
from tests.cluster.conftest import TIMINGS
from tests.cluster.nodes import Cluster
from tests.cluster.services import (
    assert_each_task_answers,
    containers_running_everywhere,
    create_web_service,
    running_tasks,
    wait_running,
)
from tests.harness import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.docker]


@pytest.fixture(scope="module")
def three_managers(real_platform: None, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    cluster = Cluster()
    request.addfinalizer(cluster.cleanup)
    started = time.monotonic()
    cluster.form(workers=2, managers=3)
    TIMINGS.append(
        f"cluster {cluster.run_id}: 3 drained managers + 2 workers Ready in "
        f"{time.monotonic() - started:.1f}s"
    )
    yield cluster


def test_killing_the_leader_elects_another_and_the_service_recovers(
    three_managers: Cluster,
) -> None:
    ha = three_managers
    service = create_web_service(ha, replicas=2)
    placed = {t["ID"] for t in wait_running(ha, service, 2)}
    old = ha.leader()

    started = time.monotonic()
    ha.kill_node(old)
    new = wait_until(
        lambda: (leader := ha.leader()) != old and leader, 60, f"a manager other than {old} leads"
    )
    elected_after = time.monotonic() - started
    ha.wait_states({old: "down", "w1": "ready", "w2": "ready"}, timeout=60)
    # A worker whose agent is slow to find the new leader can be marked Down meanwhile, and
    # its task rescheduled (seen here at a 2 s heartbeat): the count comes back either way.
    wait_until(
        lambda: (
            containers_running_everywhere(ha, service) == 2 and len(running_tasks(ha, service)) == 2
        ),
        60,
        "the engines run exactly the 2 desired tasks",
    )
    tasks = running_tasks(ha, service)
    assert_each_task_answers(ha, tasks)
    moved = len(placed - {t["ID"] for t in tasks})
    print(f"leader {old} killed: {new} elected after {elected_after:.1f}s; {moved} task(s) moved")

    ha.restart_node(old)
    ha.wait_states(dict.fromkeys(ha.nodes, "ready"), timeout=60)
    assert len(running_tasks(ha, service)) == 2


def test_a_dead_manager_is_demoted_then_removed_and_a_live_one_only_with_force(
    three_managers: Cluster,
) -> None:
    """On this module's own swarm (Raft membership changes never touch the shared one)."""
    ha = three_managers
    ha.wait_states(dict.fromkeys(ha.nodes, "ready"), timeout=60)
    leader = ha.leader()
    victim, live = [m for m in ha.managers if m != leader][:2]
    api = docker.APIClient(base_url=ha.node(leader).base_url, version="1.41", timeout=60)
    manager = ManagerClient(api, "test-managers")
    try:
        ha.kill_node(victim)
        ha.wait_states({victim: "down"}, timeout=60)
        done = manager.remove(ha.node(victim).name)
        assert (done.was_down, done.demoted) == (True, True)
        ha.set_availability(live, "active")  # a live node that takes work
        with pytest.raises(Conflict):
            manager.remove(ha.node(live).name)  # live and not drained: refused
        forced = manager.remove(ha.node(live).name, force=True)
        assert (forced.was_down, forced.demoted, forced.forced) == (False, True, True)
        names = [r.name for r in manager.list() if r.role == "manager"]
        assert names == [ha.node(leader).name]
    finally:
        api.close()
