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
