"""remove_tree: iterative removal that works at any depth and path length, never follows a
symlink, and stops rather than delete outside the tree when a directory is moved meanwhile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from berth import fsutil
from berth.fsutil import TreeMovedError, remove_contents, remove_tree


def make_deep_tree(top: Path, depth: int) -> None:
    """``depth`` nested directories below ``top`` (its full path far beyond PATH_MAX), with a
    file and a symlink to /etc on the way, made with dir fds since no path reaches the bottom."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            name = "d" * 100
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            if level % 250 == 0:
                os.close(os.open("file", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
                os.symlink("/etc", "etc-link", dir_fd=fd)
    finally:
        os.close(fd)


def test_remove_tree_removes_a_tree_two_thousand_deep(tmp_path: Path) -> None:
    top = tmp_path / "deep"
    make_deep_tree(top, 2000)
    (tmp_path / "keep.txt").write_text("kept")
    remove_tree(top)
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]
    assert os.path.isfile("/etc/hostname") or os.path.isdir("/etc")


def test_remove_tree_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    top = tmp_path / "tree"
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "link").symlink_to(outside)
    (top / "link-file").symlink_to(outside / "precious")
    remove_tree(top)
    assert not top.exists()
    assert (outside / "precious").read_text() == "keep"
    link = tmp_path / "just-a-link"
    link.symlink_to(outside)
    remove_tree(link)
    assert not link.is_symlink() and outside.is_dir()


def test_remove_tree_tolerates_missing_paths_and_keeps_open_fds_flat(tmp_path: Path) -> None:
    remove_tree(tmp_path / "never-existed")
    fds_before = len(os.listdir("/proc/self/fd"))
    make_deep_tree(tmp_path / "deep", 300)
    remove_contents(tmp_path / "deep")
    assert os.listdir(tmp_path / "deep") == []
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_remove_tree_of_a_file_removes_just_the_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    remove_tree(target)
    assert os.listdir(tmp_path) == []


def test_a_directory_moved_out_during_removal_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone moves the tree's middle elsewhere while we are below it: climbing back up
    through '..' would land in the new place, so removal must stop there, not delete in it."""
    top, elsewhere = tmp_path / "tree", tmp_path / "elsewhere"
    (top / "middle" / "deep").mkdir(parents=True)
    (top / "middle" / "deep" / "file").write_text("x")
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    original = fsutil._scan
    moved = False

    def scan_and_move(fd: int) -> list[str]:
        nonlocal moved
        if not moved and "file" in os.listdir(fd):
            (top / "middle").rename(elsewhere / "middle")
            moved = True
        return original(fd)

    monkeypatch.setattr(fsutil, "_scan", scan_and_move)
    with pytest.raises(TreeMovedError):
        remove_tree(top)
    assert (elsewhere / "precious").read_text() == "keep"
    assert moved
