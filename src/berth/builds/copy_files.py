"""COPY/ADD from the build context: which files, where they go, as a tar for the engine.

The engine's ``put_archive`` extracts a tar into a directory that must exist, so a copy is
planned as: the deepest existing directory of the destination (the *base*), then entries named
relative to it, the missing directories first. Everything here works on the local context; the
engine calls live in :mod:`berth.builds.engine_builder`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from berth.builds.dockerfile import DockerfileError

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    """One context path to copy: a file, a directory (its contents are copied) or a symlink."""

    path: Path
    relative: str  # "/"-joined, relative to the context root
    is_dir: bool


@dataclass(frozen=True)
class Ownership:
    uid: int = 0
    gid: int = 0
    mode: int | None = None  # --chmod for files and directories that are copied


def _inside(root: Path, path: Path) -> bool:
    resolved = os.path.realpath(path)
    base = os.path.realpath(root)
    return resolved == base or resolved.startswith(base + os.sep)


def _normal(source: str, line: int) -> str:
    cleaned = posixpath.normpath("/" + source).lstrip("/")
    if source.strip("/") and (".." in source.split("/") and cleaned.startswith("..")):
        raise DockerfileError(line, f"COPY source {source[:80]!r} leaves the build context")
    return "" if cleaned == "." else cleaned


def context_sources(context: Path, sources: Sequence[str], line: int) -> list[Source]:
    """The context paths the COPY sources name (globs expanded), or DockerfileError."""
    found: list[Source] = []
    for source in sources:
        relative = _normal(source, line)
        if any(ch in _GLOB_CHARS for ch in relative):
            matches = _glob(context, relative)
            if not matches:
                raise DockerfileError(line, f"COPY failed: no file matches {source[:80]!r}")
            found.extend(_source(context, m, line) for m in matches)
        else:
            found.append(_source(context, relative, line))
    return found


def _glob(context: Path, pattern: str) -> list[str]:
    """Context paths matching ``pattern`` component by component (no ``**``)."""
    current = [""]
    for part in pattern.split("/"):
        following: list[str] = []
        for prefix in current:
            directory = context / prefix if prefix else context
            if not directory.is_dir() or directory.is_symlink():
                continue
            for child in sorted(os.listdir(directory)):
                if fnmatch.fnmatchcase(child, part):
                    following.append(f"{prefix}/{child}" if prefix else child)
        current = following
    return current


def _source(context: Path, relative: str, line: int) -> Source:
    path = context / relative if relative else context
    if not os.path.lexists(path):
        raise DockerfileError(line, f"COPY failed: {relative!r} is not in the build context")
    if not _inside(context, path):
        raise DockerfileError(line, f"COPY source {relative[:80]!r} leaves the build context")
    # A named source that is a symlink is followed (it stays inside, checked above).
    return Source(path, relative, path.is_dir())


def walk(source: Source) -> Iterator[tuple[Path, str]]:
    """(path, name below the source) for everything under a directory source, sorted."""
    stack = [(source.path, "")]
    while stack:
        directory, prefix = stack.pop()
        children = sorted(os.listdir(directory), reverse=True)
        for name in children:
            child = directory / name
            relative = f"{prefix}/{name}" if prefix else name
            yield child, relative
            if child.is_dir() and not child.is_symlink():
                stack.append((child, relative))


def _entries(source: Source, target: str) -> Iterator[tuple[Path, str]]:
    """(local path, destination path) for one source."""
    if not source.is_dir:
        yield source.path, target
        return
    for path, relative in sorted(walk(source), key=lambda item: item[1]):
        yield path, f"{target}/{relative}" if target else relative


def destinations(
    sources: Sequence[Source], dest: str, workdir: str, line: int
) -> list[tuple[Source, str]]:
    """Where each source goes (an absolute path: the file itself, or the directory to fill)."""
    absolute = dest if dest.startswith("/") else posixpath.join(workdir or "/", dest)
    as_dir = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
    target = posixpath.normpath(absolute)
    if len(sources) > 1 and not dest.endswith("/"):
        raise DockerfileError(line, "COPY of several sources needs a destination ending in /")
    placed: list[tuple[Source, str]] = []
    for source in sources:
        if source.is_dir:
            placed.append((source, target))
        elif as_dir:
            placed.append((source, posixpath.join(target, source.path.name)))
        else:
            placed.append((source, target))
    return placed


def digest(placed: Sequence[tuple[Source, str]]) -> str:
    """sha256 over the copied files' names, types, modes and contents (the cache key part)."""
    hashing = hashlib.sha256()
    for source, target in placed:
        for path, name in _entries(source, target):
            st = path.lstat() if path != source.path else path.stat()
            hashing.update(f"{name}\0{stat.S_IFMT(st.st_mode)}\0{st.st_mode & 0o7777}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                hashing.update(os.readlink(path).encode(errors="surrogateescape"))
            elif stat.S_ISREG(st.st_mode):
                with path.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        hashing.update(chunk)
            hashing.update(b"\0")
    return hashing.hexdigest()


def total_size(placed: Sequence[tuple[Source, str]]) -> int:
    size = 0
    for source, target in placed:
        for path, _name in _entries(source, target):
            st = path.stat() if path == source.path else path.lstat()
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
    return size


def relative_to(base: str, path: str) -> str:
    """``path`` below the directory ``base`` (both absolute), "/"-joined, "" for base itself."""
    rel = posixpath.relpath(path, base)
    return "" if rel == "." else rel


def missing_dirs(base: str, directory: str) -> list[str]:
    """The directories from just below ``base`` down to ``directory``, relative to ``base``."""
    rel = relative_to(base, directory)
    if not rel:
        return []
    parts = rel.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def write_tar(
    out: IO[bytes],
    base: str,
    new_dirs: Sequence[str],
    placed: Sequence[tuple[Source, str]],
    owner: Ownership,
) -> None:
    """The tar to extract at ``base``: ``new_dirs`` (relative), then every placed source."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in new_dirs:
            archive.addfile(_dir_info(name, owner))
        for source, target in placed:
            for path, destination in _entries(source, target):
                name = relative_to(base, destination)
                if not name:
                    continue  # the base directory itself already exists
                follow = path == source.path
                _add(archive, path, name, owner, follow)


def _dir_info(name: str, owner: Ownership, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = owner.mode if owner.mode is not None else mode
    info.uid, info.gid = owner.uid, owner.gid
    info.mtime = int(time.time())
    return info


def _add(archive: tarfile.TarFile, path: Path, name: str, owner: Ownership, follow: bool) -> None:
    st = path.stat() if follow else path.lstat()
    info = tarfile.TarInfo(name)
    info.uid, info.gid = owner.uid, owner.gid
    info.mtime = int(st.st_mtime)
    mode = st.st_mode & 0o777
    if stat.S_ISDIR(st.st_mode):
        info = _dir_info(name, owner, mode)
        info.mtime = int(st.st_mtime)
        archive.addfile(info)
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
        archive.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
        info.mode = owner.mode if owner.mode is not None else mode
        with path.open("rb") as content:
            archive.addfile(info, content)


def spooled() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)


def spool_capped(stream: Any, out: IO[bytes], budget: int, too_big: Any) -> None:
    size = 0
    for chunk in stream:
        size += len(chunk)
        if size > max(budget, 0) + 1024 * 1024:
            raise too_big()
        out.write(chunk)
    out.seek(0)


def rewrite_archive(
    raw: IO[bytes],
    out: IO[bytes],
    base: str,
    into: str,
    is_dir: bool,
    name: str | None,
    owner: Ownership,
    line: int,
) -> None:
    """An archive from ``get_archive`` re-rooted for ``put_archive`` at ``base``.

    A directory's contents land in ``into``; a file lands in ``into`` as ``name``.
    """
    prefix = relative_to(base, into)
    chown = owner.uid != 0 or owner.gid != 0
    with (
        tarfile.open(fileobj=raw, mode="r|") as source,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as target,
    ):
        for new_dir in missing_dirs(base, into):
            info = tarfile.TarInfo(new_dir)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            info.uid, info.gid = owner.uid, owner.gid
            target.addfile(info)
        for member in source:
            parts = [p for p in member.name.split("/") if p not in ("", ".")]
            if ".." in parts or not parts:
                raise DockerfileError(line, "COPY --from found an unsafe path in the image")
            rest = parts[1:] if is_dir else [name or parts[-1]]
            if not rest:
                continue  # the copied directory itself: its contents are what is copied
            member.name = "/".join([p for p in [prefix, *rest] if p])
            if member.islnk():
                link = [p for p in member.linkname.split("/") if p not in ("", ".")]
                member.linkname = "/".join([p for p in [prefix, *link[1:]] if p])
            if chown:
                member.uid, member.gid = owner.uid, owner.gid
            if owner.mode is not None and not member.issym():
                member.mode = owner.mode
            data = source.extractfile(member) if member.isreg() else None
            target.addfile(member, data)
    out.seek(0)
