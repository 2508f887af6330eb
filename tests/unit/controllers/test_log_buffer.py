"""The bounded buffer between engine log streams and one slow reader."""

from __future__ import annotations

import threading

from berth.runtime.logbuffer import LineBuffer, dropped_marker


def test_lines_pass_through_in_order_and_wake_once_per_batch() -> None:
    wakes: list[int] = []
    buffer = LineBuffer(1, lambda: wakes.append(1), max_bytes=1000)
    buffer.put("a\n")
    buffer.put("b\n")

    assert wakes == [1]  # one wake until the reader takes
    assert buffer.take() == (["a\n", "b\n"], False)
    buffer.put("c\n")
    assert wakes == [1, 1]
    assert buffer.take() == (["c\n"], False)


def test_a_full_buffer_drops_and_says_how_many() -> None:
    buffer = LineBuffer(1, lambda: None, max_bytes=10)
    for n in range(100):
        buffer.put(f"{n:03d}\n")  # 4 bytes each: two fit

    assert buffer.take() == (["000\n", "001\n", dropped_marker(98)], False)
    buffer.put("new\n")
    assert buffer.take() == (["new\n"], False)  # the count starts over


def test_the_buffer_never_holds_more_than_its_bound() -> None:
    buffer = LineBuffer(4, lambda: None, max_bytes=64 * 1024)
    line = "x" * 99 + "\n"

    def produce() -> None:
        for _ in range(10_000):
            buffer.put(line)
        buffer.producer_done()

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    lines, done = buffer.take()
    assert done
    kept = [x for x in lines if x == line]
    assert sum(map(len, kept)) <= 64 * 1024
    assert lines[-1] == dropped_marker(40_000 - len(kept))


def test_the_end_of_every_producer_wakes_the_reader() -> None:
    wakes: list[int] = []
    buffer = LineBuffer(2, lambda: wakes.append(1))
    buffer.producer_done()
    assert buffer.take() == ([], False)
    buffer.producer_done()
    assert buffer.take() == ([], True)
    assert len(wakes) == 2
