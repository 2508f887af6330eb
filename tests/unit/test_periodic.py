"""The one background-loop mechanism: passes on wake, survives errors, stops."""

from __future__ import annotations

import threading

from berth.periodic import PeriodicLoop
from tests.harness import wait_until


def test_wake_runs_a_pass_and_errors_do_not_end_the_loop() -> None:
    passes: list[int] = []
    fail = threading.Event()
    fail.set()

    def body() -> None:
        passes.append(1)
        if fail.is_set():
            fail.clear()
            raise RuntimeError("the engine hiccupped")

    loop = PeriodicLoop("test-loop", body, interval=3600)
    loop.start()
    try:
        wait_until(lambda: loop.last_error == "RuntimeError: the engine hiccupped", 10, "an error")
        loop.wake()
        wait_until(lambda: len(passes) >= 2 and loop.last_error == "", 10, "a clean pass")
    finally:
        loop.stop(timeout=10)
    assert not any(t.name == "test-loop" for t in threading.enumerate())


def test_a_stopped_loop_starts_again_and_a_running_one_is_left_alone() -> None:
    """A server that leads, follows and leads again restarts its controllers' loops."""
    import threading as _threading

    from berth.periodic import PeriodicLoop as _Loop

    passes = _threading.Semaphore(0)
    loop = _Loop("restartable", passes.release, 0.01)
    loop.start()
    assert passes.acquire(timeout=5)
    loop.start()  # running: no second thread
    assert sum(t.name == "restartable" for t in _threading.enumerate()) == 1
    loop.stop()
    while passes.acquire(timeout=0.05):
        pass  # drain what ran before the stop
    loop.start()
    assert passes.acquire(timeout=5)  # it runs again
    loop.stop()
