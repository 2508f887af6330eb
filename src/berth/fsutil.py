"""Filesystem helpers that stay safe on hostile trees (deep, long, full of symlinks).

:func:`remove_tree` exists because ``shutil.rmtree`` recurses once per directory level (a
tenant's 2,000-deep build context raised RecursionError and stayed on disk) and because a tree
can hold paths longer than PATH_MAX, which no path-based call can reach.

The walk holds one directory file descriptor at a time and works with names relative to it
(``openat``/``unlinkat`` through ``dir_fd``), so neither depth nor path length matters and
open descriptors stay constant. Going back up uses ``..`` of the current directory, checked
against the device and inode recorded on the way down: if someone moved a directory while we
were inside it, we stop instead of deleting in a place we never meant to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# openat of a symlink with O_NOFOLLOW fails with ELOOP; of a non-directory with ENOTDIR.
_NOT_A_DIRECTORY = frozenset({errno.ELOOP, errno.ENOTDIR})

_Identity = tuple[int, int]  # (st_dev, st_ino)


class TreeMovedError(OSError):
    """A directory changed place while it was being removed; removal stopped."""


@dataclass
class _Level:
    """An open directory on the way down: its name in the parent, the parent's identity and
    the subdirectories still to remove. The top level has no name and no parent."""

    name: str
    parent: _Identity | None
    subdirs: list[str] = field(default_factory=list)


def _identity(fd: int) -> _Identity:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _scan(fd: int) -> list[str]:
    """Unlink every non-directory in ``fd`` (symlinks included, never followed); the subdirs."""
    subdirs: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if is_dir:
                subdirs.append(entry.name)
            else:
                _unlink_quietly(entry.name, fd)
    return subdirs


def _open_child(name: str, dir_fd: int) -> int | None:
    """A descriptor of the subdirectory ``name``, or None after removing what is not one."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in _NOT_A_DIRECTORY:
            raise
    # It was replaced by a file or a symlink since the scan: remove it as such.
    _unlink_quietly(name, dir_fd)
    return None


def _empty_directory(top: int) -> None:
    """Remove everything inside the open directory ``top``, at any depth. Closes ``top``."""
    fd = top
    levels = [_Level("", None)]
    try:
        while True:
            level = levels[-1]
            if not level.subdirs:
                # Scan again before leaving: something may have appeared meanwhile.
                level.subdirs = _scan(fd)
            if not level.subdirs:
                if level.parent is None:
                    return
                parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                if _identity(fd) != level.parent:
                    raise TreeMovedError(
                        errno.ESTALE,
                        f"directory {level.name!r} was moved while it was being removed",
                    )
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(level.name, dir_fd=fd)
                levels.pop()
                continue
            name = level.subdirs.pop()
            child = _open_child(name, fd)
            if child is None:
                continue
            parent_identity = _identity(fd)
            os.close(fd)
            fd = child
            levels.append(_Level(name, parent_identity, _scan(fd)))
    finally:
        os.close(fd)


def remove_contents(path: str | Path) -> None:
    """Remove everything inside the directory ``path`` but keep ``path`` itself.

    A missing ``path`` is fine; ``path`` must not be a symlink (nothing is followed).
    """
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    _empty_directory(fd)


def remove_tree(path: str | Path) -> None:
    """Remove ``path`` and everything below it, without recursion and without following links.

    Works at any depth and for paths inside the tree longer than PATH_MAX. ``path`` itself may
    be a file or a symlink (the link is removed, never its target). Entries that disappear
    while we work are fine; a missing ``path`` is not an error. Raises OSError for anything
    else (for example a permission error), and TreeMovedError if a directory is moved
    elsewhere during the removal.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    _empty_directory(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)
