"""Build context safety: hostile archives are refused before anything is written.

Modelled on dokku's tests/unit/archive-security.bats. Every attack asserts the right error AND
that nothing changed outside ``dest`` (the whole tmp dir is listed before and after).
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from berth.builds import context as context_module
from berth.builds.context import (
    MAX_DEPTH,
    ContextSummary,
    extract_context,
    normalize_member_name,
    pack_directory,
    path_budget,
    resolve_in_tree,
)
from berth.errors import InvalidInput, PayloadTooLarge

MiB = 1024 * 1024
LIMIT = 10 * MiB
MAX_FILES = 100
DOCKERFILE = b"FROM berth/busybox:latest\nCOPY . /www\n"


# --- archive builders ------------------------------------------------------------------------


@dataclass
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    size: int | None = None  # declared size, when it should differ from len(data)
    uid: int = 0


def f(name: str, data: bytes = b"x", mode: int = 0o644, uid: int = 0) -> Entry:
    return Entry(name, data=data, mode=mode, uid=uid)


def d(name: str) -> Entry:
    return Entry(name, type=tarfile.DIRTYPE, mode=0o755)


def sym(name: str, target: str) -> Entry:
    return Entry(name, type=tarfile.SYMTYPE, linkname=target, mode=0o777)


def hard(name: str, target: str) -> Entry:
    return Entry(name, type=tarfile.LNKTYPE, linkname=target)


def dockerfile() -> Entry:
    return f("Dockerfile", DOCKERFILE)


def make_tar(entries: list[Entry], gz: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.type
            info.mode = entry.mode
            info.linkname = entry.linkname
            info.uid = entry.uid
            info.mtime = 1_700_000_000
            if entry.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(entry.data)
                archive.addfile(info, io.BytesIO(entry.data))
            else:
                archive.addfile(info)
    raw = buffer.getvalue()
    return gzip.compress(raw) if gz else raw


def listing(root: Path) -> set[str]:
    """Every path below ``root`` (not following symlinks)."""
    found: set[str] = set()
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return found


@dataclass
class Workspace:
    root: Path  # the test's tmp dir: everything here is watched
    dest: Path  # root/parent/dest, not created yet

    def snapshot(self) -> set[str]:
        return listing(self.root)


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    (tmp_path / "parent").mkdir()
    (tmp_path / "parent" / "sibling.txt").write_text("untouched")
    yield Workspace(tmp_path, tmp_path / "parent" / "dest")


def assert_rejected(
    ws: Workspace,
    payload: bytes | io.BytesIO,
    error: type[Exception] = InvalidInput,
    code: str = "invalid_context",
    max_bytes: int = LIMIT,
    max_files: int = MAX_FILES,
) -> Exception:
    before = ws.snapshot()
    with pytest.raises(error) as caught:
        extract_context(payload, ws.dest, max_bytes=max_bytes, max_files=max_files)
    assert getattr(caught.value, "code", None) == code
    assert ws.snapshot() == before, "something was written on a rejected upload"
    assert not ws.dest.exists()
    assert (ws.root / "parent" / "sibling.txt").read_text() == "untouched"
    return caught.value


# --- attacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../evil", "../../evil", "a/../../evil", "./../evil", "a/b/../../../evil", ".."]
)
def test_dotdot_names_are_rejected(ws: Workspace, name: str) -> None:
    assert_rejected(ws, make_tar([dockerfile(), f(name, b"pwned")]))


def test_dotdot_is_rejected_even_when_it_stays_inside(ws: Workspace) -> None:
    # a/../b would land inside, but '..' in a name is refused outright.
    assert_rejected(ws, make_tar([dockerfile(), d("a"), f("a/../b")]))


def test_absolute_paths_are_rejected(ws: Workspace, tmp_path: Path) -> None:
    outside = tmp_path / f"abs-{uuid.uuid4().hex}"
    assert_rejected(ws, make_tar([dockerfile(), f(str(outside), b"pwned")]))
    assert not outside.exists()
    assert_rejected(ws, make_tar([dockerfile(), f("//etc/berth-pwned")]))
    assert not Path("/etc/berth-pwned").exists()


def test_symlink_to_etc_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), sym("etc", "/etc")]))


def test_symlink_to_parent_of_parent_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), sym("up", "../..")]))
    assert_rejected(ws, make_tar([dockerfile(), d("a"), sym("a/up", "../../x")]))


def test_file_written_through_a_symlink_is_rejected(ws: Workspace) -> None:
    attack = make_tar([dockerfile(), sym("link", ".."), f("link/evil.txt", b"pwned")])
    assert_rejected(ws, attack)
    assert not (ws.root / "parent" / "evil.txt").exists()


def test_file_below_an_inside_symlink_is_rejected_too(ws: Workspace) -> None:
    # Even a harmless-looking link must never be written through.
    assert_rejected(ws, make_tar([dockerfile(), d("real"), sym("l", "real"), f("l/x")]))


def test_file_through_symlink_to_etc_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), sym("etc", "/etc"), f("etc/berth-pwned")]))
    assert not Path("/etc/berth-pwned").exists()


def test_symlink_chain_that_climbs_out_is_rejected(ws: Workspace) -> None:
    # d/c -> ".." is the root (fine), but "d/c/../.." climbs above it, which a purely
    # lexical check ("d/c/../.." -> ".") would miss.
    assert_rejected(ws, make_tar([dockerfile(), d("d"), sym("d/c", ".."), sym("a", "d/c/../..")]))


def test_symlink_loop_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), sym("a", "b/x"), sym("b", "a/y")]))


def test_duplicate_file_then_symlink_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), f("x"), sym("x", "../../x")]))


def test_duplicate_symlink_then_file_is_rejected(ws: Workspace) -> None:
    # Extracting naively would open "x" and write through the link to ../target.
    assert_rejected(ws, make_tar([dockerfile(), sym("x", "Dockerfile"), f("x", b"pwned")]))
    assert ws.snapshot() == {"parent", "parent/sibling.txt"}


def test_duplicate_dockerfile_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), f("Dockerfile", b"FROM evil")]))


def test_hardlink_to_etc_passwd_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), hard("passwd", "/etc/passwd")]))


def test_hardlink_to_outside_is_rejected(ws: Workspace) -> None:
    (ws.root / "outside.txt").write_text("secret")
    assert_rejected(ws, make_tar([dockerfile(), hard("stolen", "../../outside.txt")]))


def test_hardlink_to_a_later_or_missing_member_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), hard("early", "later"), f("later")]))
    assert_rejected(ws, make_tar([dockerfile(), hard("ghost", "nowhere")]))


def test_hardlink_to_a_symlink_or_directory_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), sym("s", "Dockerfile"), hard("h", "s")]))
    assert_rejected(ws, make_tar([dockerfile(), d("dir"), hard("h", "dir")]))


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_device_files_are_rejected(ws: Workspace, kind: bytes) -> None:
    assert_rejected(ws, make_tar([dockerfile(), Entry("dev-null", type=kind)]))


def test_fifo_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), Entry("pipe", type=tarfile.FIFOTYPE)]))


@pytest.mark.parametrize("name", ["..\\..\\evil", "a\\b", "bad\nname", "tab\there", "del\x7f"])
def test_backslashes_and_control_characters_are_rejected(ws: Workspace, name: str) -> None:
    assert_rejected(ws, make_tar([dockerfile(), f(name)]))


def test_nul_in_a_pax_name_is_rejected(ws: Workspace) -> None:
    # A long name travels in a pax header, where a NUL survives (ustar names stop at NUL).
    error = assert_rejected(ws, make_tar([dockerfile(), f("x" * 120 + "\x00evil")]))
    assert "NUL" in str(error)


def test_nul_and_friends_are_refused_by_name_normalization() -> None:
    for bad in ["a\x00b", "/abs", "a/../b", "..", "", "a\\b", "\udcff"]:
        with pytest.raises(InvalidInput):
            normalize_member_name(bad)
    assert normalize_member_name("./a//b/./c/") == "a/b/c"
    assert normalize_member_name("./") == ""


@pytest.mark.parametrize(
    "payload",
    [b"", b"this is not a tar archive at all" * 40, os.urandom(4096), gzip.compress(b"nope" * 300)],
    ids=["empty", "text", "random", "gzip-of-text"],
)
def test_not_a_tar_is_rejected(ws: Workspace, payload: bytes) -> None:
    assert_rejected(ws, payload)


def test_bzip2_tar_is_not_accepted(ws: Workspace) -> None:
    import bz2

    assert_rejected(ws, bz2.compress(make_tar([dockerfile()])))


def test_truncated_tar_is_rejected(ws: Workspace) -> None:
    whole = make_tar([dockerfile(), f("big.bin", os.urandom(64 * 1024))])
    assert_rejected(ws, whole[: 512 * 3 + 10_000])


def test_truncated_gzip_is_rejected(ws: Workspace) -> None:
    whole = make_tar([dockerfile(), f("big.bin", os.urandom(64 * 1024))], gz=True)
    assert_rejected(ws, whole[: len(whole) // 2])


def test_gzip_bomb_is_stopped_at_max_bytes(ws: Workspace) -> None:
    bomb = make_tar([dockerfile(), f("zeros", bytes(50 * MiB))], gz=True)
    assert len(bomb) < 200 * 1024  # tiny upload...
    assert_rejected(ws, bomb, PayloadTooLarge, "too_large", max_bytes=5 * MiB)  # ...huge inside


def test_upload_bigger_than_max_bytes_is_too_large(ws: Workspace) -> None:
    upload = make_tar([dockerfile(), f("rand", os.urandom(2 * MiB))])
    assert_rejected(ws, upload, PayloadTooLarge, "too_large", max_bytes=MiB)
    assert_rejected(ws, io.BytesIO(upload), PayloadTooLarge, "too_large", max_bytes=MiB)


def test_declared_file_sizes_count_against_max_bytes(ws: Workspace) -> None:
    upload = make_tar([dockerfile(), f("a", bytes(600 * 1024)), f("b", bytes(600 * 1024))], gz=True)
    assert_rejected(ws, upload, PayloadTooLarge, "too_large", max_bytes=1024 * 1024 + 100 * 1024)


def test_too_many_files_is_rejected(ws: Workspace) -> None:
    entries = [dockerfile()] + [f(f"file-{i}") for i in range(20)]
    error = assert_rejected(ws, make_tar(entries), max_files=10)
    assert "more than 10" in str(error)


def test_missing_dockerfile_is_rejected_with_its_own_code(ws: Workspace) -> None:
    error = assert_rejected(ws, make_tar([f("app.py")]), code="no_dockerfile")
    assert "Dockerfile" in str(error)


@pytest.mark.parametrize(
    "entries",
    [
        [f("sub/Dockerfile")],
        [f("dockerfile")],
        [d("Dockerfile"), f("Dockerfile/x")],
        [f("real"), sym("Dockerfile", "real")],
    ],
    ids=["nested", "lowercase", "directory", "symlink"],
)
def test_dockerfile_must_be_a_root_file(ws: Workspace, entries: list[Entry]) -> None:
    assert_rejected(ws, make_tar(entries), code="no_dockerfile")


def test_member_replacing_the_root_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), f("./")]))
    assert_rejected(ws, make_tar([dockerfile(), sym(".", "..")]))


def test_file_below_a_file_is_rejected(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), f("Dockerfile/x")]))


def test_nonempty_dest_is_refused(ws: Workspace) -> None:
    ws.dest.mkdir()
    (ws.dest / "old").write_text("keep")
    with pytest.raises(ValueError):
        extract_context(make_tar([dockerfile()]), ws.dest, LIMIT, MAX_FILES)
    assert (ws.dest / "old").read_text() == "keep"


# --- happy paths -----------------------------------------------------------------------------


def nested_context() -> list[Entry]:
    return [
        d("./"),
        dockerfile(),
        d("app"),
        d("app/static/css"),
        f("app/main.py", b"print('hi')\n"),
        f("app/static/css/site.css", b"body{}\n"),
        f("deep/implicit/parents/file.txt", b"made without dir entries"),
        f("run.sh", b"#!/bin/sh\necho run\n", mode=0o4755),
        f("owned", b"x", uid=4242),
        sym("current", "app"),
        sym("app/static/up", "../main.py"),
        sym("dangling", "not-there"),
        hard("app/main-copy.py", "app/main.py"),
    ]


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("as_stream", [False, True], ids=["bytes", "stream"])
def test_nested_context_extracts(ws: Workspace, gz: bool, as_stream: bool) -> None:
    upload = make_tar(nested_context(), gz=gz)
    payload: bytes | io.BytesIO = io.BytesIO(upload) if as_stream else upload
    outside_before = ws.snapshot() - {p for p in ws.snapshot() if p.startswith("parent/dest")}

    summary = extract_context(payload, ws.dest, LIMIT, MAX_FILES)

    assert summary == ContextSummary(
        files=6,
        directories=2,
        symlinks=3,
        hardlinks=1,
        total_bytes=sum(len(e.data) for e in nested_context() if e.type == tarfile.REGTYPE),
        upload_bytes=len(upload),
        compressed=gz,
    )
    assert (ws.dest / "Dockerfile").read_bytes() == DOCKERFILE
    assert (ws.dest / "app/static/css/site.css").read_bytes() == b"body{}\n"
    assert (ws.dest / "deep/implicit/parents/file.txt").is_file()
    assert os.readlink(ws.dest / "current") == "app"
    assert (ws.dest / "app/static/up").read_bytes() == b"print('hi')\n"
    assert os.readlink(ws.dest / "dangling") == "not-there"
    assert os.path.samefile(ws.dest / "app/main.py", ws.dest / "app/main-copy.py")
    after = ws.snapshot()
    assert {p for p in after if not p.startswith("parent/dest")} == outside_before


def test_setuid_bits_are_stripped_and_files_belong_to_us(ws: Workspace) -> None:
    extract_context(make_tar(nested_context()), ws.dest, LIMIT, MAX_FILES)
    run = (ws.dest / "run.sh").stat()
    assert stat.S_IMODE(run.st_mode) == 0o755
    assert not run.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
    for path in ws.dest.rglob("*"):
        st_ = path.lstat()
        assert st_.st_uid == os.getuid()
        assert not st_.st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert (ws.dest / "owned").stat().st_uid == os.getuid()


def test_repeated_directories_are_fine(ws: Workspace) -> None:
    extract_context(make_tar([d("a"), d("a/"), d("./a"), dockerfile()]), ws.dest, LIMIT, 10)
    assert (ws.dest / "a").is_dir()


def test_dest_existing_and_empty_is_used(ws: Workspace) -> None:
    ws.dest.mkdir()
    extract_context(make_tar([dockerfile()]), ws.dest, LIMIT, MAX_FILES)
    assert (ws.dest / "Dockerfile").is_file()


def test_resolve_in_tree_follows_links_like_the_kernel() -> None:
    links = {"d/c": "..", "a": "d/c/../.."}
    assert resolve_in_tree("d/c", links) == []
    assert resolve_in_tree("d/c/x", links) == ["x"]
    assert resolve_in_tree("a", links) is None
    assert resolve_in_tree("x/../..", {}) is None
    assert resolve_in_tree("x/./y/../z", {}) == ["x", "z"]


# --- properties ------------------------------------------------------------------------------

NAME_ALPHABET = st.sampled_from(["a", "b", ".", "..", "/", "\\", "\x00", "\n", "é", "-", " "])
names = st.lists(NAME_ALPHABET, min_size=1, max_size=12).map("".join)


def fresh_dest(root: Path) -> Path:
    return root / "cases" / uuid.uuid4().hex / "dest"


def outside_cases(paths: set[str]) -> set[str]:
    return {p for p in paths if not p.startswith("cases")}


def assert_all_inside(dest: Path) -> None:
    real_dest = os.path.realpath(dest)
    for path in listing(dest):
        resolved = os.path.realpath(dest / path)
        assert resolved == real_dest or resolved.startswith(real_dest + os.sep), path


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(member_names=st.lists(names, min_size=1, max_size=5))
def test_random_names_extract_inside_or_are_rejected(
    tmp_path: Path, member_names: list[str]
) -> None:
    entries = [dockerfile()] + [f(name, b"data") for name in member_names]
    try:
        upload = make_tar(entries)
    except (ValueError, UnicodeError):
        assume(False)  # tarfile itself cannot write this name
    dest = fresh_dest(tmp_path)
    before = listing(tmp_path)
    try:
        extract_context(upload, dest, LIMIT, MAX_FILES)
    except InvalidInput:
        event("rejected")
        assert listing(tmp_path) == before
        return
    event("extracted")
    assert_all_inside(dest)
    assert outside_cases(listing(tmp_path)) == outside_cases(before)


link_targets = st.lists(st.sampled_from(["a", "b", "c", ".", ".."]), min_size=1, max_size=6).map(
    "/".join
)
tree_paths = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map("/".join)
members: st.SearchStrategy[Entry] = st.one_of(
    st.builds(lambda p: f(p, b"payload"), tree_paths),
    st.builds(d, tree_paths),
    st.builds(sym, tree_paths, link_targets),
    st.builds(hard, tree_paths, tree_paths),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=st.lists(members, min_size=1, max_size=8))
def test_random_trees_of_links_never_reach_outside(tmp_path: Path, entries: list[Entry]) -> None:
    dest = fresh_dest(tmp_path)
    try:
        extract_context(make_tar([dockerfile(), *entries]), dest, LIMIT, MAX_FILES)
    except InvalidInput as exc:
        assert exc.code == "invalid_context"
        assert not dest.exists()
        event("rejected")
        return
    event("extracted")
    assert_all_inside(dest)
    assert outside_cases(listing(tmp_path)) == set()


# --- pack_directory --------------------------------------------------------------------------


def write_tree(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    write_tree(
        src,
        {
            "Dockerfile": "FROM berth/python:3\nCOPY . /app\n",
            "app.py": "print('hi')\n",
            "pkg/mod.py": "x = 1\n",
            "pkg/__pycache__/mod.cpython-311.pyc": "junk",
            ".git/HEAD": "ref: refs/heads/main\n",
            ".venv/bin/python": "junk",
            "debug.log": "noise",
            "pkg/trace.log": "noise",
            "secret/key.pem": "-----BEGIN",
            "docs/guide.md": "# guide",
            "docs/keep.md": "# keep",
            ".dockerignore": "# comment\n*.log\nsecret/\ndocs/*.md\n!docs/keep.md\n",
        },
    )
    (src / "pkg" / "link-inside").symlink_to("mod.py")
    (src / "link-out").symlink_to("../outside.txt")
    (src / "link-abs").symlink_to("/etc/passwd")
    os.mkfifo(src / "pipe")
    (tmp_path / "outside.txt").write_text("secret outside")
    return src


def test_pack_directory_round_trips(project: Path, tmp_path: Path) -> None:
    packed = pack_directory(project)
    dest = tmp_path / "unpacked"
    summary = extract_context(packed, dest, LIMIT, MAX_FILES)
    assert summary.compressed
    assert listing(dest) == {
        "Dockerfile",
        ".dockerignore",
        "app.py",
        "pkg",
        "pkg/mod.py",
        "pkg/link-inside",
        "docs",
        "docs/keep.md",
    }
    assert (dest / "app.py").read_text() == "print('hi')\n"
    assert os.readlink(dest / "pkg" / "link-inside") == "mod.py"


def test_pack_directory_is_deterministic(project: Path) -> None:
    assert pack_directory(project) == pack_directory(project)


def test_pack_directory_custom_excludes(project: Path, tmp_path: Path) -> None:
    packed = pack_directory(project, exclude=("pkg",))
    dest = tmp_path / "unpacked"
    extract_context(packed, dest, LIMIT, MAX_FILES)
    names = listing(dest)
    assert "pkg" not in names and ".git/HEAD" in names and ".venv/bin/python" in names


def test_pack_directory_always_keeps_the_dockerfile(project: Path, tmp_path: Path) -> None:
    (project / ".dockerignore").write_text("*\n")
    dest = tmp_path / "unpacked"
    extract_context(pack_directory(project), dest, LIMIT, MAX_FILES)
    assert listing(dest) == {"Dockerfile"}


def test_pack_directory_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        pack_directory(tmp_path / "missing")


def test_pack_then_extract_the_examples(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    for name in ("python-app", "busybox-app"):
        dest = tmp_path / name
        summary = extract_context(pack_directory(examples / name), dest, LIMIT, MAX_FILES)
        assert (dest / "Dockerfile").is_file() and summary.files >= 2


class PipeLike(io.RawIOBase):
    """A readable stream that cannot seek, like a socket or a pipe."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        chunk = self._inner.read(min(len(buffer), 4096))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_saved_upload_file_is_read_in_place_and_left_open(ws: Workspace) -> None:
    upload = ws.root / "upload.tar.gz"
    upload.write_bytes(make_tar(nested_context(), gz=True))
    with upload.open("rb") as handle:
        summary = extract_context(handle, ws.dest, LIMIT, MAX_FILES)
        assert not handle.closed
    assert summary.compressed and summary.upload_bytes == upload.stat().st_size
    assert (ws.dest / "Dockerfile").is_file()


def test_saved_upload_file_too_large(ws: Workspace) -> None:
    upload = ws.root / "upload.tar"
    upload.write_bytes(make_tar([dockerfile(), f("rand", os.urandom(2 * MiB))]))
    before = ws.snapshot()
    with upload.open("rb") as handle, pytest.raises(PayloadTooLarge):
        extract_context(handle, ws.dest, MiB, MAX_FILES)
    assert ws.snapshot() == before


def test_unseekable_stream_is_spooled(ws: Workspace) -> None:
    stream = io.BufferedReader(PipeLike(make_tar(nested_context(), gz=True)))
    assert not stream.seekable()
    assert extract_context(stream, ws.dest, LIMIT, MAX_FILES).files == 6


def test_unseekable_gzip_bomb_is_stopped(ws: Workspace) -> None:
    bomb = make_tar([dockerfile(), f("zeros", bytes(50 * MiB))], gz=True)
    stream = io.BufferedReader(PipeLike(bomb))
    assert_rejected(ws, stream, PayloadTooLarge, "too_large", max_bytes=5 * MiB)  # type: ignore[arg-type]


def test_failure_while_writing_removes_dest(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import berth.builds.context as context_module

    real_write = context_module._write_file
    calls = 0

    def flaky_write(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")
        real_write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(context_module, "_write_file", flaky_write)
    before = ws.snapshot()
    with pytest.raises(OSError):
        extract_context(make_tar(nested_context()), ws.dest, LIMIT, MAX_FILES)
    assert ws.snapshot() == before
    assert not ws.dest.exists()


def test_failure_while_writing_empties_a_dest_we_did_not_create(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import berth.builds.context as context_module

    def broken_write(*args: object) -> None:
        raise OSError(28, "No space left on device")

    ws.dest.mkdir()
    monkeypatch.setattr(context_module, "_write_file", broken_write)
    with pytest.raises(OSError):
        extract_context(make_tar(nested_context()), ws.dest, LIMIT, MAX_FILES)
    assert ws.dest.is_dir() and list(ws.dest.iterdir()) == []


# --- cost, depth and length (validation is linear; cleanup works at any depth) ---------------


def chain(depth: int, name: str = "d") -> str:
    return "/".join(f"{name}{i}" for i in range(depth))


@dataclass
class Counted:
    """How often the tree was asked for a child: one lookup per path component is linear."""

    lookups: int = 0


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counted:
    counter = Counted()
    original = context_module._Tree.child

    def child(self: context_module._Tree, node: int, name: str) -> int | None:
        counter.lookups += 1
        return original(self, node, name)

    monkeypatch.setattr(context_module._Tree, "child", child)
    return counter


def components(entries: list[Entry]) -> int:
    return sum(len(e.name.split("/")) + len(e.linkname.split("/")) for e in entries)


def test_depth_limit_is_a_clear_error(ws: Workspace) -> None:
    error = assert_rejected(ws, make_tar([dockerfile(), f(chain(MAX_DEPTH + 1))]))
    assert f"at most {MAX_DEPTH}" in str(error)


def test_depth_at_the_limit_extracts(ws: Workspace) -> None:
    extract_context(make_tar([dockerfile(), f(chain(MAX_DEPTH))]), ws.dest, LIMIT, MAX_FILES)
    assert (ws.dest / chain(MAX_DEPTH)).is_file()


def test_two_hundred_very_deep_members_are_refused_at_once(ws: Workspace, counted: Counted) -> None:
    # The upload that once cost a minute of CPU: 200 members, each about 2,000 levels deep.
    entries = [dockerfile()] + [f("a/" * 1990 + f"f{i}") for i in range(200)]
    started = time.perf_counter()
    assert_rejected(ws, make_tar(entries, gz=True), max_files=1000)
    print(f"200 members 1,990 deep refused in {time.perf_counter() - started:.3f}s")
    assert counted.lookups == 1  # the Dockerfile; the deep name is refused before tree work


def test_two_hundred_deep_members_at_the_limit_validate_linearly(
    ws: Workspace, counted: Counted
) -> None:
    entries = [dockerfile()] + [f(chain(MAX_DEPTH - 1, f"n{i}-") + "/file") for i in range(200)]
    started = time.perf_counter()
    extract_context(make_tar(entries, gz=True), ws.dest, LIMIT, 200 * MAX_DEPTH + 10)
    print(f"200 members {MAX_DEPTH} deep extracted in {time.perf_counter() - started:.3f}s")
    assert counted.lookups <= 2 * components(entries)


def test_twenty_thousand_members_sixty_deep_validate_linearly(
    ws: Workspace, counted: Counted
) -> None:
    spine = [f"level-{i}" for i in range(59)]
    entries = [dockerfile()]
    for i in range(20_000):
        entries.append(f("/".join([*spine[: 1 + i % 59], f"file-{i}"]), b""))
    upload = make_tar(entries, gz=True)
    started = time.perf_counter()
    summary = extract_context(upload, ws.dest, 200 * MiB, 20_100)
    print(f"20,000 members up to 60 deep extracted in {time.perf_counter() - started:.3f}s")
    assert summary.files == 20_001
    assert counted.lookups <= 2 * components(entries)


def test_implied_directories_count_as_entries(ws: Workspace) -> None:
    error = assert_rejected(ws, make_tar([dockerfile(), f(chain(30))]), max_files=20)
    assert "directories its paths imply" in str(error)


def test_many_links_through_a_long_chain_are_resolved_once_each(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # s1 -> d/../s0, s2 -> d/../s1, ... then 3,000 links all to the end of that chain: each
    # link's target is walked once, not once for every link that passes through it.
    entries = [dockerfile(), d("d"), f("s0")]
    entries += [sym(f"s{i}", f"d/../s{i - 1}") for i in range(1, 31)]
    entries += [sym(f"many/l{i}", "../s30") for i in range(3000)]
    walks = Counted()
    original = context_module._SymlinkResolver._walk

    def walk(self: context_module._SymlinkResolver, *args: object) -> object:
        walks.lookups += 1
        return original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(context_module._SymlinkResolver, "_walk", walk)
    extract_context(make_tar(entries, gz=True), ws.dest, LIMIT, 5000)
    assert walks.lookups == 30 + 3000
    assert (ws.dest / "many" / "l7").read_bytes() == b"x"


def test_too_many_hops_through_memoized_links_is_still_refused(ws: Workspace) -> None:
    entries = [dockerfile(), d("d"), f("s0")]
    entries += [sym(f"s{i}", f"d/../s{i - 1}") for i in range(1, 45)]
    error = assert_rejected(ws, make_tar(entries), max_files=100)
    assert "too many links" in str(error) or "loop" in str(error)


def test_member_name_is_measured_with_the_destination(ws: Workspace) -> None:
    budget = path_budget(ws.dest)
    # A name that fits PATH_MAX on its own but not below dest (the old answer was a 500).
    long_name = "/".join(["x" * 200] * 20)[: 4094 - 1] + "y"
    assert budget < len(long_name) < 4096
    error = assert_rejected(ws, make_tar([dockerfile(), f(long_name)]))
    assert f"at most {budget} bytes" in str(error)
    fits = "/".join(["x" * 200] * 20)[: budget - 1] + "y"
    extract_context(make_tar([dockerfile(), f(fits.strip("/"))]), ws.dest, LIMIT, MAX_FILES)
    assert (ws.dest / fits.strip("/")).is_file()


def test_symlink_target_of_path_max_is_refused(ws: Workspace) -> None:
    assert_rejected(ws, make_tar([dockerfile(), sym("link", "a/" * 2047 + "bb")]))


members_for_links: st.SearchStrategy[Entry] = st.one_of(
    st.builds(d, tree_paths), st.builds(sym, tree_paths, link_targets)
)


@settings(max_examples=400, deadline=None)
@given(entries=st.lists(members_for_links, min_size=1, max_size=10))
def test_memoized_resolution_agrees_with_the_reference(entries: list[Entry]) -> None:
    """The linear resolver refuses exactly the trees the plain reference resolver refuses."""
    tree = context_module._Tree(1000)
    links: list[int] = []
    for entry in entries:
        info = tarfile.TarInfo(entry.name)
        info.type, info.linkname = entry.type, entry.linkname
        try:
            member = context_module._classify(info)
            node = tree.add(member)
        except InvalidInput:
            assume(False)
        if member.kind == "symlink":
            links.append(node)
    symlinks = {}
    for node in links:
        member = tree.member[node]
        assert member is not None
        symlinks.setdefault(member.path, member.target)
    try:
        for path, target in symlinks.items():
            parent = path.rpartition("/")[0]
            if resolve_in_tree(f"{parent}/{target}" if parent else target, symlinks) is None:
                raise InvalidInput("outside")
        expected = "accepted"
    except InvalidInput:
        expected = "refused"
    try:
        context_module._check_symlinks_stay_inside(tree, links)
        found = "accepted"
    except InvalidInput:
        found = "refused"
    event(expected)
    assert found == expected


def test_failed_extraction_of_a_deep_tree_is_cleaned_up(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [dockerfile(), f(chain(MAX_DEPTH) + "", b"deep"), f("last", b"x")]
    original = context_module._write_file

    def failing(archive: tarfile.TarFile, member: object, dirs: object) -> None:
        if getattr(member, "path", "") == "last":
            raise OSError("disk full")
        original(archive, member, dirs)  # type: ignore[arg-type]

    monkeypatch.setattr(context_module, "_write_file", failing)
    with pytest.raises(OSError, match="disk full"):
        extract_context(make_tar(entries), ws.dest, LIMIT, MAX_FILES)
    assert not ws.dest.exists()
