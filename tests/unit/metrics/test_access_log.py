"""The metrics log: its lines, and a tail that follows appends, rotation and truncation."""

from __future__ import annotations

import os
from pathlib import Path

from berth.metrics.access_log import LogTail, Request, parse_line


def line(app: str = "a1", status: int = 200, sent: int = 5, took: str = "0.004") -> bytes:
    return f"{app}\t1764612000.123\t{status}\t{sent}\t{took}\n".encode()


def test_parses_a_line_exactly() -> None:
    assert parse_line(line("abc9", 404, 153, "1.250")) == Request(
        "abc9", 1764612000.123, 404, 153, 1_250_000
    )


def test_refuses_what_is_not_an_apps_line() -> None:
    for bad in (
        b"-\t1.0\t404\t0\t0.000\n",  # the default server: no app
        b"\t1.0\t200\t0\t0.000\n",
        b"a1\t1.0\t200\t0\n",  # cut short
        b"a1\t1.0\t2x0\t0\t0.000\n",
        b"a1\t1.0\t200\t0\t-0.1\n",
        b"a-1\t1.0\t200\t0\t0.001\n",  # not an app id
        "\u00e9\t1.0\t200\t0\t0.001\n".encode(),
    ):
        assert parse_line(bad) is None, bad


def test_reads_only_new_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.log"
    path.write_bytes(line() * 3)
    tail = LogTail(path)  # starts at the end: a restart does not count again
    assert tail.read_lines() == []
    with path.open("ab") as f:
        f.write(line("b1") + line("c1")[:5])
    assert [parse_line(x).app_id for x in tail.read_lines()] == ["b1"]  # type: ignore[union-attr]
    with path.open("ab") as f:
        f.write(line("c1")[5:])
    assert [parse_line(x).app_id for x in tail.read_lines()] == ["c1"]  # type: ignore[union-attr]
    tail.close()


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "metrics.log"
    tail = LogTail(path)
    assert tail.read_lines() == []
    path.write_bytes(line() * 2)
    assert len(tail.read_lines()) == 2
    tail.close()


def test_rotation_reads_the_old_file_out_then_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "metrics.log"
    path.write_bytes(b"")
    tail = LogTail(path)
    old = path.open("ab")  # nginx's open file descriptor
    old.write(line("a1"))
    old.flush()
    assert len(tail.read_lines()) == 1
    os.replace(path, tmp_path / "metrics.log.1")
    old.write(line("a1") * 2)  # still written to the old inode until nginx reopens
    old.flush()
    assert len(tail.read_lines()) == 2  # no file at the path: the open one is still live
    new = path.open("ab")
    new.write(line("b1"))
    new.flush()
    old.write(line("a1"))  # a worker's late flush into the old file
    old.flush()
    got = [parse_line(x).app_id for x in tail.read_lines()]  # type: ignore[union-attr]
    assert sorted(got) == ["a1", "b1"]
    assert tail.draining
    for _ in range(3):
        tail.read_lines()
    assert not tail.draining
    old.close()
    new.close()
    tail.close()


def test_truncation_starts_over_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "metrics.log"
    path.write_bytes(b"")
    tail = LogTail(path)
    with path.open("ab") as f:
        f.write(line() * 4)
    assert len(tail.read_lines()) == 4
    with path.open("r+b") as f:
        f.truncate(0)
    with path.open("ab") as f:
        f.write(line("z1"))
    assert [parse_line(x).app_id for x in tail.read_lines()] == ["z1"]  # type: ignore[union-attr]
    tail.close()


def test_an_old_file_still_written_is_read_as_long_as_it_grows(tmp_path: Path) -> None:
    # A worker that could not open the new file (permissions) goes on writing the old one.
    path = tmp_path / "metrics.log"
    path.write_bytes(b"")
    tail = LogTail(path)
    old = path.open("ab")
    os.replace(path, tmp_path / "metrics.log.1")
    path.write_bytes(b"")
    counted = 0
    for _ in range(10):
        old.write(line())
        old.flush()
        counted += len(tail.read_lines())
    assert counted == 10 and tail.draining
    for _ in range(3):
        tail.read_lines()
    assert not tail.draining
    old.close()
    tail.close()
