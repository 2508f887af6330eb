"""ProxySyncer: bursts coalesce into few reloads, failures are reported, never fatal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from berth.errors import ProxyConfigError
from berth.proxy.model import ProxyConfig
from berth.proxy.sync import ProxySyncer


class FakeManager:
    """Records applied configs; can be told to reject them or to never go live."""

    def __init__(self) -> None:
        self.applied: list[ProxyConfig] = []
        self.reject: Exception | None = None
        self.live_generation: int | None = None
        self.goes_live = True
        self.lock = threading.Lock()

    def apply(self, cfg: ProxyConfig) -> bool:
        if self.reject is not None:
            raise self.reject
        with self.lock:
            self.applied.append(cfg)
        if self.goes_live:
            self.live_generation = cfg.generation
        return True

    def wait_for_generation(self, generation: int, timeout: float = 10.0) -> bool:
        return self.live_generation == generation

    @property
    def apply_count(self) -> int:
        with self.lock:
            return len(self.applied)


class Store:
    """A counter standing in for the routing state; every read is a new generation."""

    def __init__(self) -> None:
        self.generation = 0
        self.builds = 0

    def build(self) -> ProxyConfig:
        self.builds += 1
        return ProxyConfig("127.0.0.1", 8080, (), self.generation)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def manager() -> FakeManager:
    return FakeManager()


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def syncer(manager: FakeManager, store: Store) -> Iterator[ProxySyncer]:
    s = ProxySyncer(manager, store.build, coalesce_seconds=0.1, retry_initial_seconds=0.05)
    s.start()
    yield s
    s.stop()


def test_a_burst_of_requests_causes_at_most_a_few_applies(
    syncer: ProxySyncer, manager: FakeManager, store: Store
) -> None:
    for i in range(100):
        store.generation = i + 1
        syncer.request_sync()
    assert wait_until(lambda: syncer.last_generation == 100)
    time.sleep(0.3)  # nothing else trickles in afterwards
    assert 1 <= manager.apply_count <= 3
    assert manager.applied[-1].generation == 100  # the latest state, not a stale one


def test_a_burst_from_many_threads_coalesces(
    syncer: ProxySyncer, manager: FakeManager, store: Store
) -> None:
    store.generation = 7

    def burst() -> None:
        for _ in range(10):
            syncer.request_sync()

    threads = [threading.Thread(target=burst) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wait_until(lambda: syncer.last_generation == 7)
    time.sleep(0.3)
    assert 1 <= manager.apply_count <= 3


def test_no_request_no_apply(syncer: ProxySyncer, manager: FakeManager) -> None:
    time.sleep(0.3)
    assert manager.apply_count == 0


def test_separate_changes_each_get_applied(
    syncer: ProxySyncer, manager: FakeManager, store: Store
) -> None:
    for generation in (1, 2):
        store.generation = generation
        syncer.request_sync()
        assert wait_until(lambda g=generation: syncer.last_generation == g)  # type: ignore[misc]
    assert [c.generation for c in manager.applied] == [1, 2]


def test_rejected_config_is_reported_and_the_thread_survives(
    syncer: ProxySyncer, manager: FakeManager, store: Store
) -> None:
    manager.reject = ProxyConfigError("nginx rejected the configuration: boom")
    store.generation = 1
    syncer.request_sync()
    assert wait_until(lambda: syncer.last_error is not None)
    assert isinstance(syncer.last_config_error, ProxyConfigError)
    assert "boom" in str(syncer.last_error)

    manager.reject = None
    store.generation = 2
    syncer.request_sync()
    assert wait_until(lambda: syncer.last_generation == 2)
    assert syncer.last_error is None


def test_failed_sync_is_retried_without_a_new_request(
    syncer: ProxySyncer, manager: FakeManager, store: Store
) -> None:
    manager.reject = ProxyConfigError("nginx is not there yet")
    store.generation = 3
    syncer.request_sync()
    assert wait_until(lambda: syncer.last_error is not None)
    manager.reject = None  # the cause went away; nobody asks again
    assert wait_until(lambda: syncer.last_generation == 3)
    assert syncer.last_error is None


def test_build_config_failure_is_reported_not_raised(manager: FakeManager) -> None:
    def broken() -> ProxyConfig:
        raise RuntimeError("store unavailable")

    s = ProxySyncer(manager, broken, coalesce_seconds=0.01, retry_initial_seconds=10)
    s.start()
    try:
        s.request_sync()
        assert wait_until(lambda: s.last_error is not None)
        assert isinstance(s.last_error, RuntimeError)
        assert s.last_config_error is None
        assert s._thread is not None and s._thread.is_alive()
    finally:
        s.stop()


def test_sync_now_applies_and_returns_the_live_generation(
    syncer: ProxySyncer, manager: FakeManager, store: Store
) -> None:
    store.generation = 5
    assert syncer.sync_now(timeout=1) == 5
    assert manager.live_generation == 5


def test_sync_now_works_without_the_thread(manager: FakeManager, store: Store) -> None:
    store.generation = 9
    assert ProxySyncer(manager, store.build).sync_now(timeout=1) == 9


def test_sync_now_raises_when_nginx_rejects(
    syncer: ProxySyncer, manager: FakeManager, store: Store
) -> None:
    manager.reject = ProxyConfigError("bad")
    with pytest.raises(ProxyConfigError):
        syncer.sync_now(timeout=1)
    assert syncer.last_error is manager.reject


def test_sync_now_raises_when_the_change_never_goes_live(
    syncer: ProxySyncer, manager: FakeManager, store: Store
) -> None:
    manager.goes_live = False
    store.generation = 4
    with pytest.raises(TimeoutError):
        syncer.sync_now(timeout=0.1)


def test_sync_now_absorbs_pending_requests(manager: FakeManager, store: Store) -> None:
    s = ProxySyncer(manager, store.build, coalesce_seconds=0.2)
    s.start()
    try:
        store.generation = 1
        s.request_sync()
        time.sleep(0.05)  # the thread is now gathering the burst
        s.sync_now(timeout=1)
        time.sleep(0.4)
        assert manager.apply_count == 1
    finally:
        s.stop()


def test_stop_is_prompt_even_mid_coalesce(manager: FakeManager, store: Store) -> None:
    s = ProxySyncer(manager, store.build, coalesce_seconds=30)
    s.start()
    s.request_sync()
    time.sleep(0.05)
    started = time.monotonic()
    s.stop()
    assert time.monotonic() - started < 1
    assert manager.apply_count == 0
