"""Build contexts: unpack an untrusted tenant upload safely, and pack a directory for upload.

A build context arrives as a tar archive, optionally gzip-compressed. Everything about it is
hostile until checked, so :func:`extract_context` works in three phases:

1. **Read with limits.** The upload is spooled while counting bytes, and gzip is inflated into
   a second spool while counting again, so neither a large upload nor a gzip bomb gets past
   ``max_bytes``.
2. **Validate every member before writing anything.** Names must be relative, UTF-8, free of
   ``..``, NUL, backslashes and control characters. Only regular files, directories, symlinks
   and hard links are accepted. Symlinks are resolved against the archive's own tree (the way
   the kernel would resolve them, through other symlinks) and must stay inside it; hard links
   must name an earlier regular file; no member may sit below a symlink or a file; no path may
   appear twice (except a directory repeated).
3. **Extract by hand.** Directories, files (``O_EXCL | O_NOFOLLOW``, no setuid/setgid/sticky
   bits, owned by the current user), then hard links, then symlinks last, so nothing is ever
   written through a link. On any failure the destination is removed.

``tarfile.extractall`` and its filters are not used: the checks above are stricter than
``data_filter`` and do not depend on the Python patch level.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import io
import logging
import os
import re
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Literal

from berth.errors import InvalidInput, PayloadTooLarge
from berth.fsutil import remove_contents, remove_tree

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
SPOOL_IN_MEMORY = 8 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
MAX_NAME_BYTES = 255  # one path component (NAME_MAX)
MAX_PATH_BYTES = 4096  # a whole path (PATH_MAX)
MAX_SYMLINK_HOPS = 40  # as the kernel's MAXSYMLINKS
MAX_DEPTH = 64  # components in a member path: real projects need far fewer
PATH_MARGIN = 32  # bytes kept free below PATH_MAX for whatever a later step appends
DOCKERFILE = "Dockerfile"
DEFAULT_EXCLUDES: tuple[str, ...] = (".git", "__pycache__", ".venv")

ERR_CONTEXT = "invalid_context"
ERR_NO_DOCKERFILE = "no_dockerfile"

MemberKind = Literal["file", "dir", "symlink", "hardlink"]
_REGULAR = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ContextSummary:
    """What an extracted build context held."""

    files: int
    directories: int
    symlinks: int
    hardlinks: int
    total_bytes: int  # sum of the regular files' sizes
    upload_bytes: int  # size of the upload as received
    compressed: bool


@dataclass(frozen=True)
class _Member:
    """One validated archive member. ``path`` is normalized: components joined by "/"."""

    path: str
    info: tarfile.TarInfo
    kind: MemberKind
    target: str = ""  # symlink target as written, or the normalized hard link target


@dataclass
class _Plan:
    members: list[_Member] = field(default_factory=list)
    total_bytes: int = 0


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, code=ERR_CONTEXT)


# --- phase 1: read with limits ---------------------------------------------------------------


def _too_large(max_bytes: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"build context {what} exceeds the limit of {max_bytes} bytes")


def _spool_upload(data: bytes | BinaryIO, max_bytes: int) -> tuple[IO[bytes], int, bool]:
    """The upload as a seekable file at offset 0, its size, and whether we own (must close) it.

    Refuses more than ``max_bytes``. A seekable file positioned at its start (an upload the API
    already saved to disk) is used as it is; anything else is copied into a spool.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > max_bytes:
            raise _too_large(max_bytes, "upload")
        return io.BytesIO(bytes(data)), len(data), True
    if _seekable_at_start(data):
        size = data.seek(0, os.SEEK_END)
        data.seek(0)
        if size > max_bytes:
            raise _too_large(max_bytes, "upload")
        return data, size, False
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
    try:
        size = _copy_limited(data, spool, max_bytes, "upload")
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool, size, True


def _seekable_at_start(data: BinaryIO) -> bool:
    try:
        return data.seekable() and data.tell() == 0
    except (OSError, ValueError):
        return False


def _copy_limited(
    source: IO[bytes] | gzip.GzipFile, sink: IO[bytes], max_bytes: int, what: str
) -> int:
    size = 0
    while chunk := source.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes, what)
        sink.write(chunk)
    return size


def _is_gzip(upload: IO[bytes]) -> bool:
    magic = upload.read(2)
    upload.seek(0)
    return magic == GZIP_MAGIC


def _inflate(upload: IO[bytes], max_bytes: int) -> IO[bytes]:
    """The gzip ``upload`` decompressed into a spool, stopping at ``max_bytes`` (gzip bombs)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
    try:
        with gzip.GzipFile(fileobj=upload, mode="rb") as inflating:
            _copy_limited(inflating, spool, max_bytes, "uncompressed size")
    except (OSError, EOFError, zlib.error) as exc:
        spool.close()
        raise _invalid(f"build context is not a valid gzip stream: {exc}") from exc
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


# --- phase 2: validate -----------------------------------------------------------------------


def normalize_member_name(name: str) -> str:
    """The safe relative form of an archive member name, or InvalidInput.

    Returns "" for the archive root ("." or "./"). ``.`` components and repeated slashes are
    dropped; anything absolute, with ``..``, NUL, backslashes, control characters or bytes that
    are not UTF-8 is refused.
    """
    if not name:
        raise _invalid("an archive member has an empty name")
    if "\x00" in name:
        raise _invalid(f"member name {name!r} contains a NUL byte")
    if "\\" in name:
        raise _invalid(f"member name {name!r} contains a backslash")
    if _CONTROL.search(name):
        raise _invalid(f"member name {name!r} contains a control character")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _invalid(f"member name {name!r} is not valid UTF-8") from exc
    if name.startswith("/"):
        raise _invalid(f"member {name!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _invalid(f"member {name!r} contains a '..' component")
    if len(encoded) >= MAX_PATH_BYTES or any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        raise _invalid(f"member name {name[:80]!r}... is too long")
    if len(parts) > MAX_DEPTH:
        raise _invalid(
            f"member {name[:80]!r}... is {len(parts)} directories deep; at most {MAX_DEPTH} "
            "are allowed"
        )
    return "/".join(parts)


def _member_kind(info: tarfile.TarInfo) -> MemberKind:
    if info.type in _REGULAR and not info.issparse():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        raise _invalid(f"member {info.name!r} is a device file")
    if info.isfifo():
        raise _invalid(f"member {info.name!r} is a FIFO")
    if info.issparse():
        raise _invalid(f"member {info.name!r} is a sparse file")
    raise _invalid(f"member {info.name!r} has an unsupported type {info.type!r}")


def _check_symlink_target(info: tarfile.TarInfo) -> str:
    target = info.linkname
    if not target:
        raise _invalid(f"symlink {info.name!r} has an empty target")
    if "\x00" in target or "\\" in target:
        raise _invalid(f"symlink {info.name!r} has a target with NUL or backslash")
    if target.startswith("/"):
        raise _invalid(f"symlink {info.name!r} points to an absolute path {target!r}")
    if len(target.encode("utf-8", "surrogateescape")) >= MAX_PATH_BYTES:
        raise _invalid(f"symlink {info.name!r} has a target that is too long")
    return target


def _read_members(archive: tarfile.TarFile, max_files: int) -> Iterator[tarfile.TarInfo]:
    count = 0
    while True:
        try:
            info = archive.next()
        except tarfile.TarError as exc:
            raise _invalid(f"build context is not a valid tar archive: {exc}") from exc
        if info is None:
            return
        count += 1
        if count > max_files:
            raise _invalid(f"build context has more than {max_files} entries")
        yield info


def _classify(info: tarfile.TarInfo) -> _Member:
    path = normalize_member_name(info.name)
    kind = _member_kind(info)
    if path == "" and kind != "dir":
        raise _invalid(f"member {info.name!r} would replace the context root")
    if kind == "symlink":
        return _Member(path, info, kind, _check_symlink_target(info))
    if kind == "hardlink":
        return _Member(path, info, kind, normalize_member_name(info.linkname))
    return _Member(path, info, kind)


def _check_hardlink(member: _Member, tree: _Tree) -> None:
    source = tree.lookup(member.target)
    if source is None or source.kind != "file":
        raise _invalid(
            f"hard link {member.info.name!r} must point to an earlier regular file in the "
            f"archive, not {member.info.linkname!r}"
        )


class _Tree:
    """The archive's paths as a tree of numbered nodes, built member by member.

    Every check that used to walk a member's ancestors by joining strings (quadratic in depth,
    which made a 3 KiB upload cost a minute of CPU) works on node numbers instead: inserting a
    member costs one dict lookup per component, and symlink resolution is memoized per link,
    so validation is linear in the size of the archive's names.

    A node exists for every member and for every implicit ancestor directory of one; node 0 is
    the root. Implicit directories count against ``max_nodes`` like members: each one becomes
    a real directory on disk.
    """

    def __init__(self, max_nodes: int) -> None:
        self._max_nodes = max_nodes
        self._children: dict[tuple[int, str], int] = {}
        self.parent: list[int] = [0]
        self.member: list[_Member | None] = [None]
        self.has_children: list[bool] = [False]

    def child(self, node: int, name: str) -> int | None:
        return self._children.get((node, name))

    def _new_child(self, node: int, name: str) -> int:
        number = len(self.parent)
        if number > self._max_nodes:
            raise _invalid(
                f"build context has more than {self._max_nodes} entries "
                "(counting the directories its paths imply)"
            )
        self._children[(node, name)] = number
        self.parent.append(node)
        self.member.append(None)
        self.has_children.append(False)
        self.has_children[node] = True
        return number

    def add(self, member: _Member) -> int:
        """Insert ``member``; InvalidInput if it lies below a non-directory, replaces one, or
        is a non-directory above earlier members, or repeats a path (directories may repeat)."""
        node = 0
        parts = member.path.split("/") if member.path else []
        for part in parts[:-1]:
            found = self.child(node, part)
            if found is None:
                found = self._new_child(node, part)
            else:
                _check_is_directory(member, self.member[found])
            node = found
        if not parts:
            return 0  # the root itself, as "." or "./": a directory (checked in _classify)
        found = self.child(node, parts[-1])
        if found is None:
            found = self._new_child(node, parts[-1])
            self.member[found] = member
            return found
        earlier = self.member[found]
        if earlier is not None and not (earlier.kind == "dir" and member.kind == "dir"):
            raise _invalid(f"member {member.info.name!r} appears more than once in the archive")
        if member.kind != "dir" and self.has_children[found]:
            raise _invalid(
                f"member {member.info.name!r} is a {member.kind}, but earlier members lie below it"
            )
        if earlier is None:
            self.member[found] = member
        return found

    def lookup(self, path: str) -> _Member | None:
        node: int | None = 0
        for part in path.split("/") if path else []:
            node = self.child(node, part) if node is not None else None
        return self.member[node] if node is not None else None

    def ancestry(self, node: int) -> list[int]:
        """The nodes from the root down to ``node`` included (at most MAX_DEPTH + 1 long)."""
        chain = [node]
        while chain[-1] != 0:
            chain.append(self.parent[chain[-1]])
        chain.reverse()
        return chain


def _check_is_directory(member: _Member, ancestor: _Member | None) -> None:
    """No member may live below a symlink, a file or a hard link (writes would go through)."""
    if ancestor is not None and ancestor.kind != "dir":
        raise _invalid(
            f"member {member.info.name!r} lies below {ancestor.info.name!r}, "
            f"which is a {ancestor.kind}, not a directory"
        )


@dataclass(frozen=True)
class _Resolved:
    """Where a symlink leads: the real nodes from the root, then ``virtual`` more components
    that are not in the archive (so no link can hide below them), after ``hops`` links."""

    nodes: tuple[int, ...]
    virtual: int
    hops: int


_OUTSIDE = "outside"
_IN_PROGRESS = "in progress"


class _SymlinkResolver:
    """Resolve the archive's symlinks through each other as the kernel would, each link once.

    The answer for a link does not depend on how it was reached (it is resolved from its own
    directory), so it is memoized; the hops it took are kept with it and added up, so the
    kernel's limit of MAX_SYMLINK_HOPS still holds for a whole resolution. Work is linear in
    the total length of the targets.
    """

    def __init__(self, tree: _Tree) -> None:
        self._tree = tree
        self._memo: dict[int, _Resolved | str] = {}

    def resolve(self, link: int) -> _Resolved | None:
        """Where the symlink at node ``link`` leads, or None when it leaves the tree."""
        known = self._memo.get(link)
        if isinstance(known, _Resolved):
            return known
        if known == _OUTSIDE:
            return None
        if known == _IN_PROGRESS:
            raise _invalid(f"symlink loop through {self._name(link)!r}")
        self._memo[link] = _IN_PROGRESS
        member = self._tree.member[link]
        assert member is not None and member.kind == "symlink"
        start = self._tree.ancestry(self._tree.parent[link])
        result = self._walk(start, member.target.split("/"), 0, member.path)
        self._memo[link] = result if result is not None else _OUTSIDE
        return result

    def _name(self, node: int) -> str:
        member = self._tree.member[node]
        return member.path if member is not None else "?"

    def _walk(self, start: list[int], parts: list[str], hops: int, path: str) -> _Resolved | None:
        nodes, virtual = start, 0
        for part in parts:
            if part in ("", "."):
                continue
            if part == "..":
                if virtual:
                    virtual -= 1
                elif len(nodes) > 1:
                    nodes.pop()
                else:
                    return None
                continue
            if virtual:
                virtual += 1
                continue
            found = self._tree.child(nodes[-1], part)
            if found is None:
                virtual = 1
                continue
            member = self._tree.member[found]
            if member is None or member.kind != "symlink":
                nodes.append(found)
                continue
            inner = self.resolve(found)
            if inner is None:
                return None
            hops += inner.hops + 1  # the link itself, then the links inside its target
            if hops > MAX_SYMLINK_HOPS:
                raise _invalid(f"symlink loop or too many links while resolving {path!r}")
            nodes, virtual = list(inner.nodes), inner.virtual
        return _Resolved(tuple(nodes), virtual, hops)


def resolve_in_tree(path: str, symlinks: dict[str, str]) -> list[str] | None:
    """Resolve ``path`` (relative to the root) through ``symlinks`` as the kernel would.

    ``symlinks`` maps member paths to their (relative) targets. Returns the resolved
    components, or None when resolution climbs above the root. Raises on a symlink loop.

    This is the plain reference (it rebuilds strings at every step, so it is quadratic);
    extraction uses :class:`_SymlinkResolver`, which gives the same inside or outside answer in
    linear time, and the tests compare the two.
    """
    pending = [part for part in path.split("/") if part]
    pending.reverse()
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        target = symlinks.get("/".join([*resolved, part]))
        if target is None:
            resolved.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS or target.startswith("/"):
            raise _invalid(f"symlink loop or absolute target while resolving {path!r}")
        pending.extend(reversed(target.split("/")))
    return resolved


def _check_symlinks_stay_inside(tree: _Tree, links: Sequence[int]) -> None:
    resolver = _SymlinkResolver(tree)
    for link in links:
        if resolver.resolve(link) is None:
            member = tree.member[link]
            assert member is not None
            raise _invalid(
                f"symlink {member.path!r} points outside the build context ({member.target!r})"
            )


def _check_dockerfile(tree: _Tree) -> None:
    dockerfile = tree.lookup(DOCKERFILE)
    if dockerfile is None or dockerfile.kind not in ("file", "hardlink"):
        raise InvalidInput(
            "build context has no Dockerfile at its root; add a file named 'Dockerfile' "
            "next to your code (symlinks and directories named Dockerfile do not count)",
            code=ERR_NO_DOCKERFILE,
        )


def path_budget(dest: Path) -> int:
    """How many bytes a member path may have so that ``dest/path`` stays below PATH_MAX.

    Counted from the absolute form of ``dest`` (the longest way it may be spelled), plus the
    slash, the NUL and a margin for the few bytes a later step may add.
    """
    return MAX_PATH_BYTES - len(os.fsencode(os.path.abspath(dest))) - 1 - 1 - PATH_MARGIN


def _check_path_fits(member: _Member, budget: int) -> None:
    size = len(member.path.encode("utf-8"))
    if size > budget:
        raise _invalid(
            f"member name {member.path[:60]!r}... is {size} bytes long; paths in a build "
            f"context may have at most {max(budget, 0)} bytes here"
        )


def _plan_extraction(
    archive: tarfile.TarFile, max_bytes: int, max_files: int, budget: int = MAX_PATH_BYTES
) -> _Plan:
    """Validate every member of ``archive``; the members to write, in order, or InvalidInput.

    ``budget`` is the longest member path that still fits below the destination.
    """
    plan = _Plan()
    tree = _Tree(max_files)
    links: list[int] = []
    for info in _read_members(archive, max_files):
        member = _classify(info)
        _check_path_fits(member, budget)
        if member.kind == "hardlink":
            _check_hardlink(member, tree)
        if member.kind == "file":
            plan.total_bytes += info.size
            if plan.total_bytes > max_bytes:
                raise _too_large(max_bytes, "uncompressed size")
        node = tree.add(member)
        if member.kind == "symlink":
            links.append(node)
        if member.path:
            plan.members.append(member)
    _check_symlinks_stay_inside(tree, links)
    _check_dockerfile(tree)
    return plan


def _check_complete(plan: _Plan, tar_size: int) -> None:
    """Refuse a truncated archive: every file's data must lie within the stream."""
    for member in plan.members:
        if member.kind == "file" and member.info.offset_data + member.info.size > tar_size:
            raise _invalid(f"build context archive is truncated (in {member.info.name!r})")


# --- phase 3: extract ------------------------------------------------------------------------


def _file_mode(info: tarfile.TarInfo) -> int:
    # No setuid/setgid/sticky, no group/other write; the owner may always read and write.
    return (info.mode & 0o755) | 0o600


class _Directories:
    """The directories made so far below ``dest``, so each is created and checked only once.

    Nothing but this extraction writes into ``dest`` and symlinks come last, so a directory
    checked once stays a real directory until the end.
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self._made: set[str] = {""}

    def ensure(self, relative: str) -> Path:
        """``dest/relative``, creating directories and refusing what is not a real one."""
        if relative in self._made:
            return self.dest / relative if relative else self.dest
        parts = relative.split("/")
        known = len(parts)
        while known > 0 and "/".join(parts[:known]) not in self._made:
            known -= 1
        current = self.dest.joinpath(*parts[:known])
        for index in range(known, len(parts)):
            current = current / parts[index]
            with contextlib.suppress(FileExistsError):
                os.mkdir(current, 0o755)
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                raise _invalid(f"{relative!r} is not a directory inside the build context")
            self._made.add("/".join(parts[: index + 1]))
        return current


def _write_file(archive: tarfile.TarFile, member: _Member, dirs: _Directories) -> None:
    parent, _, name = member.path.rpartition("/")
    target = dirs.ensure(parent) / name
    source = archive.extractfile(member.info)
    if source is None:
        raise _invalid(f"cannot read {member.info.name!r} from the archive")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "wb") as sink, source:
        written = _copy_exact(source, sink, member.info.size)
        os.fchmod(sink.fileno(), _file_mode(member.info))
    if written != member.info.size:
        raise _invalid(f"build context archive is truncated (in {member.info.name!r})")
    _set_mtime(target, member.info.mtime)


def _copy_exact(source: IO[bytes], sink: IO[bytes], size: int) -> int:
    written = 0
    while written < size:
        chunk = source.read(min(CHUNK, size - written))
        if not chunk:
            break
        sink.write(chunk)
        written += len(chunk)
    return written


def _set_mtime(path: Path, mtime: float) -> None:
    # An absurd timestamp is not worth failing a build over.
    with contextlib.suppress(OverflowError, ValueError, OSError):
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def _extract_member(archive: tarfile.TarFile, member: _Member, dirs: _Directories) -> None:
    if member.kind == "dir":
        dirs.ensure(member.path)
    elif member.kind == "file":
        _write_file(archive, member, dirs)
    elif member.kind == "hardlink":
        parent, _, name = member.path.rpartition("/")
        link = dirs.ensure(parent) / name
        os.link(dirs.dest / member.target, link, follow_symlinks=False)
    elif member.kind == "symlink":
        parent, _, name = member.path.rpartition("/")
        (dirs.ensure(parent) / name).symlink_to(member.target)


def _extraction_order(plan: _Plan) -> list[_Member]:
    # Symlinks last: until then, nothing in dest is a link that a write could follow.
    rank: dict[MemberKind, int] = {"dir": 0, "file": 1, "hardlink": 2, "symlink": 3}
    return sorted(plan.members, key=lambda m: rank[m.kind])


def _prepare_dest(dest: Path) -> bool:
    """Make sure ``dest`` is an empty directory; True when this call created it."""
    if dest.is_symlink():
        raise ValueError(f"destination {dest} is a symlink")
    if dest.exists():
        if not dest.is_dir() or any(dest.iterdir()):
            raise ValueError(f"destination {dest} must be an empty directory")
        return False
    dest.mkdir(parents=True, mode=0o755)
    return True


def _clear_dest(dest: Path, created: bool) -> None:
    # Best effort while another error is already on its way up; remove_tree copes with any
    # depth and never follows the links the archive made.
    try:
        if created:
            remove_tree(dest)
        else:
            remove_contents(dest)
    except OSError:
        log.warning("could not remove the partly extracted build context %s", dest, exc_info=True)


def _summarize(plan: _Plan, upload_bytes: int, compressed: bool) -> ContextSummary:
    kinds = [m.kind for m in plan.members]
    return ContextSummary(
        files=kinds.count("file"),
        directories=kinds.count("dir"),
        symlinks=kinds.count("symlink"),
        hardlinks=kinds.count("hardlink"),
        total_bytes=plan.total_bytes,
        upload_bytes=upload_bytes,
        compressed=compressed,
    )


def _open_tar(stream: IO[bytes]) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r:", errorlevel=2)
    except tarfile.TarError as exc:
        raise _invalid(f"build context is not a tar archive: {exc}") from exc


def _stream_size(stream: IO[bytes]) -> int:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    return size


@contextlib.contextmanager
def _tar_stream(data: bytes | BinaryIO, max_bytes: int) -> Iterator[tuple[IO[bytes], int, bool]]:
    """The uncompressed tar stream of the upload, its upload size, and whether it was gzip."""
    upload, upload_bytes, owned = _spool_upload(data, max_bytes)
    with contextlib.ExitStack() as cleanup:
        if owned:
            cleanup.enter_context(upload)
        compressed = _is_gzip(upload)
        stream = cleanup.enter_context(_inflate(upload, max_bytes)) if compressed else upload
        yield stream, upload_bytes, compressed


def _write_plan(archive: tarfile.TarFile, plan: _Plan, dest: Path) -> None:
    """Extract the validated ``plan`` into ``dest``; on failure leave ``dest`` as it was."""
    created = _prepare_dest(dest)
    dirs = _Directories(dest)
    try:
        for member in _extraction_order(plan):
            _extract_member(archive, member, dirs)
    except BaseException:
        _clear_dest(dest, created)
        raise


def extract_context(
    data: bytes | BinaryIO, dest: Path, max_bytes: int, max_files: int
) -> ContextSummary:
    """Validate the tar (or tar.gz) build context ``data`` and extract it into ``dest``.

    ``dest`` must be missing or empty. Raises PayloadTooLarge when the upload or its
    uncompressed form exceeds ``max_bytes``, InvalidInput (code "invalid_context") for a bad or
    hostile archive, InvalidInput (code "no_dockerfile") without a root Dockerfile. Nothing is
    written before the whole archive has been validated, and on any failure ``dest`` is
    emptied (and removed if this call created it).
    """
    with (
        _tar_stream(data, max_bytes) as (stream, upload_bytes, compressed),
        _open_tar(stream) as archive,
    ):
        plan = _plan_extraction(archive, max_bytes, max_files, path_budget(dest))
        _check_complete(plan, _stream_size(stream))
        _write_plan(archive, plan, dest)
    return _summarize(plan, upload_bytes, compressed)


# --- pack_directory --------------------------------------------------------------------------


def read_dockerignore(src: Path) -> list[str]:
    """The patterns of ``src/.dockerignore`` (blank lines and comments dropped)."""
    path = src / ".dockerignore"
    if not path.is_file() or path.is_symlink():
        return []
    patterns: list[str] = []
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def is_excluded(relative: str, patterns: Sequence[str]) -> bool:
    """Whether ``relative`` (a "/"-joined path) is excluded; the last matching pattern wins.

    A pattern without "/" matches a name at any depth (``*.pyc``, ``node_modules``); one with
    "/" matches the path from the root (``docs/*.md``, ``/build``). ``!pattern`` re-includes.
    """
    excluded = False
    name = relative.rpartition("/")[2]
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw[1:] if negated else raw
        pattern = pattern.strip("/")
        if pattern.startswith("**/"):
            pattern = pattern[3:]
        if not pattern:
            continue
        if "/" in pattern:
            matched = fnmatch.fnmatchcase(relative, pattern)
        else:
            matched = fnmatch.fnmatchcase(name, pattern)
        if matched:
            excluded = not negated
    return excluded


def _symlink_stays_inside(path: Path, relative: str, src: Path) -> bool:
    target = os.readlink(path)
    if os.path.isabs(target):
        return False
    lexical = os.path.normpath(os.path.join(os.path.dirname(relative), target))
    if lexical == ".." or lexical.startswith("../"):
        return False
    resolved = os.path.realpath(path)
    root = os.path.realpath(src)
    return resolved == root or resolved.startswith(root + os.sep)


def _tar_entry(path: Path, relative: str, st: os.stat_result) -> tarfile.TarInfo | None:
    info = tarfile.TarInfo(relative)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif stat.S_ISREG(st.st_mode):
        info.type, info.mode, info.size = tarfile.REGTYPE, st.st_mode & 0o755, st.st_size
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, os.readlink(path)
    else:
        return None
    return info


def _walk(src: Path, directory: Path, patterns: Sequence[str]) -> Iterator[tuple[Path, str]]:
    """(path, relative name) of everything to pack, sorted, without following symlinks."""
    for child in sorted(directory.iterdir(), key=lambda p: p.name):
        relative = child.relative_to(src).as_posix()
        if relative != DOCKERFILE and is_excluded(relative, patterns):
            continue
        yield child, relative
        if child.is_dir() and not child.is_symlink():
            yield from _walk(src, child, patterns)


def pack_directory(src: Path, exclude: Sequence[str] = DEFAULT_EXCLUDES) -> bytes:
    """``src`` as a gzip-compressed tar, ready for :func:`extract_context`.

    Skips ``exclude`` and the patterns of ``src/.dockerignore`` (the root Dockerfile is always
    kept), special files, and symlinks that are absolute or lead out of ``src``; symlinks are
    stored as links, never followed. Owners are stored as 0 and the gzip header carries no
    timestamp, so the same tree packs to the same bytes.
    """
    if not src.is_dir():
        raise InvalidInput(f"{src} is not a directory", code=ERR_CONTEXT)
    patterns = [*exclude, *read_dockerignore(src)]
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for path, relative in _walk(src, src, patterns):
            _add_to_archive(archive, path, relative, src)
    return buffer.getvalue()


def _add_to_archive(archive: tarfile.TarFile, path: Path, relative: str, src: Path) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) and not _symlink_stays_inside(path, relative, src):
        log.warning("skipping symlink %s: it points outside %s", relative, src)
        return
    info = _tar_entry(path, relative, st)
    if info is None:
        log.warning("skipping %s: not a regular file, directory or symlink", relative)
        return
    if info.type == tarfile.REGTYPE:
        with path.open("rb") as content:
            archive.addfile(info, content)
    else:
        archive.addfile(info)
