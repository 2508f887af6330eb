"""Shared fixtures: real Berth servers for the end-to-end and platform tests.

``berth`` is one server per test module (tests in a module share it and use their own apps);
``fresh_berth`` is one server per test, for tests that stop, kill or restart it. Both need the
real Docker Engine, the base images and nginx: when they are missing the tests fail, loudly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import BerthServer, check_requirements, cleanup_on_sigterm, wait_until

__all__ = ["wait_until"]


def pytest_sessionstart(session: pytest.Session) -> None:
    cleanup_on_sigterm()


@pytest.fixture(scope="session")
def real_platform() -> None:
    """Docker Engine, berth/busybox + berth/python and nginx are here (else every user fails)."""
    try:
        check_requirements()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


def _server_options(request: pytest.FixtureRequest) -> dict[str, object]:
    """Options from a module's ``BERTH_SERVER_OPTIONS`` dict (e.g. a small build size cap)."""
    return dict(getattr(request.module, "BERTH_SERVER_OPTIONS", {}))


@pytest.fixture(scope="module")
def berth(real_platform: None, request: pytest.FixtureRequest) -> Iterator[BerthServer]:
    server = BerthServer(**_server_options(request))  # type: ignore[arg-type]
    request.addfinalizer(server.cleanup)
    server.start()
    yield server


@pytest.fixture
def fresh_berth(real_platform: None, request: pytest.FixtureRequest) -> Iterator[BerthServer]:
    server = BerthServer(**_server_options(request))  # type: ignore[arg-type]
    request.addfinalizer(server.cleanup)
    server.start()
    yield server
