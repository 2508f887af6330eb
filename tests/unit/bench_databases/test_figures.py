"""The pure parts of the databases benchmark (bench/db/figures.py)."""

from __future__ import annotations

import pytest
from bench.db.figures import (
    GIB,
    descendants,
    human,
    is_redo,
    kb_field,
    ms_range,
    per_item,
    scaled,
    stat_ppid,
    summary,
    table,
)

STATUS = "Name:\tpostgres\nVmPeak:\t  220000 kB\nVmRSS:\t    8192 kB\nThreads:\t1\n"


def test_kb_fields_are_bytes_and_absent_ones_zero() -> None:
    assert kb_field(STATUS, "VmRSS") == 8192 * 1024
    assert kb_field(STATUS, "VmPeak") == 220000 * 1024
    assert kb_field("Name:\tkthreadd\n", "VmRSS") == 0
    assert kb_field("Pss_Anon:  10 kB\nPss:  4 kB\n", "Pss") == 4096


def test_ppid_is_read_past_a_command_name_with_spaces_and_parentheses() -> None:
    assert stat_ppid("4242 (postgres: a (b) c) S 4100 4242 4242 0 -1") == 4100
    assert stat_ppid("1 (init) S 0 1 1") == 0


def test_descendants_are_the_whole_subtree_and_nothing_else() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 12, 20: 1, 21: 20}
    assert descendants(parents, 10) == {10, 11, 12, 13}
    assert descendants(parents, 21) == {21}
    assert descendants({}, 7) == {7}


def test_redo_logs_are_told_apart() -> None:
    assert is_redo("pg_wal/000000010000000000000001")
    assert is_redo("ib_logfile0")
    assert not is_redo("base/16384/1259")
    assert not is_redo("ibdata1")
    assert not is_redo("bd1234/db.opt")


def test_summary_median_and_range() -> None:
    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert summary([1.0, 2.0])["median"] == 1.5
    with pytest.raises(ValueError):
        summary([])
    assert ms_range(summary([0.1, 0.12, 0.3])) == "120 ms (100-300)"


def test_per_item_growth() -> None:
    assert per_item(100, 1100, 10) == 100.0
    assert per_item(100, 90, 10) == -1.0  # a server may give memory back: reported, not hidden
    with pytest.raises(ValueError):
        per_item(0, 1, 0)


def test_scaling_says_it_is_an_extrapolation() -> None:
    out = scaled(GIB / 10, 10, 1000)
    assert out["total_bytes"] == 100 * GIB
    assert out["note"] == (
        "measured 10, scaled linearly to 1,000: 100.00 GiB (an extrapolation, not a measurement)"
    )


def test_human_sizes() -> None:
    assert human(3 * GIB / 2) == "1.50 GiB"
    assert human(5 * 1024 * 1024) == "5.0 MiB"
    assert human(2048) == "2 KiB"


def test_table_aligns_columns() -> None:
    out = table([["a", "1"], ["bbb", "22"]], ["name", "n"])
    assert out.splitlines() == ["name | n ", "-----+---", "a    | 1 ", "bbb  | 22"]
