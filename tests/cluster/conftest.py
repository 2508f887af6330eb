"""The multi-node tier: one cluster (a drained manager and three workers) for all its tests.

Forming a cluster per test would cost the run's time budget, so tests share this one; the
``swarm`` fixture makes it whole again before and after each test (heals partitions, restarts
killed engines, removes the test's services). Figures (how long forming took, how long each
module took) are printed in the terminal summary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import docker.errors
import pytest

from tests.cluster.nodes import Cluster, check_requirements, sweep_leftovers

TIMINGS: list[str] = []


# Package scope: every test of tests/cluster shares it, and its engines stop once the tier is
# done instead of idling through the rest of the run.
@pytest.fixture(scope="package")
def cluster(real_platform: None, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    problems = check_requirements()
    if problems:
        pytest.fail("the cluster tier needs:\n  " + "\n  ".join(problems), pytrace=False)
    swept = sweep_leftovers()
    if swept:
        TIMINGS.append(f"swept leftovers of dead runs {', '.join(swept)}")
    shared = Cluster()
    request.addfinalizer(shared.cleanup)
    started = time.monotonic()
    shared.form(workers=3)
    TIMINGS.append(
        f"cluster {shared.run_id} ({shared.subnet}): 1 drained manager + 3 workers Ready, "
        f"busybox loaded, in {time.monotonic() - started:.1f}s"
    )
    yield shared


@pytest.fixture
def swarm(cluster: Cluster) -> Iterator[Cluster]:
    """The shared cluster, whole; the services a test creates are removed after it."""
    cluster.make_whole()
    before = {s.id for s in cluster.manager_client().services.list()}
    yield cluster
    cluster.make_whole()
    for service in cluster.manager_client().services.list():
        if service.id not in before:
            try:
                service.remove()
            except docker.errors.NotFound:
                pass


@pytest.fixture(scope="module", autouse=True)
def module_timing(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    TIMINGS.append(f"{request.module.__name__}: {time.monotonic() - started:.1f}s")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("cluster harness timings")
        for line in TIMINGS:
            terminalreporter.write_line(line)
