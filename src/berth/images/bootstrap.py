"""Offline base images: build ``berth/busybox`` and ``berth/python`` without any registry.

Offline installations cannot pull an image, so Berth makes its two base images from what the
distro already provides:

- ``berth/busybox``: the statically linked ``/bin/busybox`` from the ``busybox-static`` package
  plus applet symlinks, a passwd file and a few directories. About 2 MB, made in a second.
- ``berth/python``: a minimal Debian root filesystem from ``debootstrap`` with ``python3``,
  fetched from the same mirror that apt on this machine uses (read from apt's own sources, so no
  internet host is written here). The trimmed root filesystem is cached as a tarball, so only
  the first run pays for debootstrap.

Both are imported with ``docker import`` semantics (``/images/create?fromSrc=-``) and tagged.
Commands run with argument lists only; nothing goes through a shell.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
from docker.utils import parse_repository_tag

from berth.errors import BerthError

Progress = Callable[[str], None]

BUSYBOX_TAG = "berth/busybox:latest"
PYTHON_TAG = "berth/python:3"
BUSYBOX_BINARY = Path("/bin/busybox")
DEFAULT_CACHE_DIR = Path("/var/cache/berth")
PYTHON_ROOTFS_CACHE_NAME = "python-rootfs.tar"
DEBIAN_SUITE = "bookworm"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_SOURCES_LIST = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")

# The applets linked into /bin. busybox answers to whatever name it is called by.
_APPLET_NAMES = """
    sh ash httpd wget nc sleep cat echo ls env ps kill true false mkdir rm rmdir printf grep sed
    awk id hostname date cp mv ln touch chmod head tail wc sort uniq tr cut test [ expr seq yes
    uname whoami pwd basename dirname find xargs tee timeout top free df du stat readlink
    realpath which vi tar gzip gunzip zcat md5sum sha256sum base64 nslookup ping ip ifconfig
    netstat nohup usleep watch less more diff od hexdump dd sync mount umount su
    start-stop-daemon pidof killall nproc uptime printenv clear
"""
BUSYBOX_APPLETS: tuple[str, ...] = tuple(_APPLET_NAMES.split())
# Applets this busybox build might lack are skipped instead of producing dangling links.
REQUIRED_APPLETS: frozenset[str] = frozenset({"sh", "httpd", "wget", "nc", "sleep", "echo"})

ETC_USERS = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
ETC_GROUPS = "root:x:0:\nnogroup:x:65534:\n"

# Paths removed from the debootstrapped tree: package lists, caches, docs, manuals.
PYTHON_TRIM_PATHS: tuple[str, ...] = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/linda",
    "dev",
    "tmp",
)


class BootstrapError(BerthError):
    """A base image could not be made; the message says what to fix."""

    status = 500
    code = "bootstrap_failed"


@dataclass(frozen=True)
class BootstrapResult:
    """What one bootstrap step did. ``action`` is "created" or "exists" (skipped)."""

    tag: str
    action: Literal["created", "exists"]
    image_id: str
    size_bytes: int
    seconds: float


def _ignore_progress(_line: str) -> None:
    return None


# --- shared image helpers -------------------------------------------------------------------


def existing_image_id(client: docker.DockerClient, tag: str) -> str | None:
    """The id of the local image ``tag``, or None when there is none."""
    try:
        attrs: dict[str, Any] = client.api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as exc:
        raise BootstrapError(f"cannot inspect image {tag}: {exc}") from exc
    return str(attrs["Id"])


def _image_size(client: docker.DockerClient, tag: str) -> int:
    attrs: dict[str, Any] = client.api.inspect_image(tag)
    return int(attrs.get("Size", 0))


def _skipped(
    client: docker.DockerClient, tag: str, image_id: str, started: float
) -> BootstrapResult:
    return BootstrapResult(
        tag=tag,
        action="exists",
        image_id=image_id,
        size_bytes=_image_size(client, tag),
        seconds=time.monotonic() - started,
    )


def import_rootfs(
    client: docker.DockerClient, tarball: Path, tag: str, changes: Sequence[str]
) -> str:
    """Import ``tarball`` as image ``tag`` (like ``docker import``) and return the image id."""
    if not tarball.is_file():
        # docker-py would treat a missing path as a URL for the daemon to fetch.
        raise BootstrapError(f"root filesystem tarball {tarball} does not exist")
    repository, image_tag = parse_repository_tag(tag)
    try:
        answer = client.api.import_image_from_file(
            str(tarball), repository=repository, tag=image_tag or "latest", changes=list(changes)
        )
    except docker.errors.DockerException as exc:
        raise BootstrapError(f"docker import of {tag} failed: {exc}") from exc
    _raise_on_stream_error(str(answer), tag)
    image_id = existing_image_id(client, tag)
    if image_id is None:
        raise BootstrapError(f"docker import reported success but {tag} does not exist")
    return image_id


def _raise_on_stream_error(answer: str, tag: str) -> None:
    for line in answer.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("error"):
            raise BootstrapError(f"docker import of {tag} failed: {message['error']}")


def _tar_as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


# --- busybox ----------------------------------------------------------------------------------


def available_busybox_applets(binary: Path = BUSYBOX_BINARY) -> frozenset[str]:
    """The applets ``binary`` implements (``busybox --list``)."""
    try:
        listed = subprocess.run(
            [str(binary), "--list"], check=True, capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BootstrapError(f"cannot run {binary} --list: {exc}") from exc
    return frozenset(listed.split())


def make_busybox_rootfs(root: Path, binary: Path = BUSYBOX_BINARY) -> None:
    """Lay out a busybox root filesystem in the empty directory ``root``."""
    if not binary.is_file():
        raise BootstrapError(
            f"{binary} not found; install the static busybox: apt-get install busybox-static"
        )
    applets = available_busybox_applets(binary)
    missing = REQUIRED_APPLETS - applets
    if missing:
        raise BootstrapError(f"{binary} lacks applets {sorted(missing)}; use busybox-static")
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copyfile(binary, bin_dir / "busybox")
    (bin_dir / "busybox").chmod(0o755)
    for applet in BUSYBOX_APPLETS:
        if applet in applets:
            (bin_dir / applet).symlink_to("busybox")
    for directory, mode in (("tmp", 0o1777), ("www", 0o755), ("etc", 0o755), ("root", 0o700)):
        (root / directory).mkdir(exist_ok=True)
        (root / directory).chmod(mode)
    (root / "etc" / "passwd").write_text(ETC_USERS)
    (root / "etc" / "group").write_text(ETC_GROUPS)


def write_tarball(root: Path, tarball: Path) -> None:
    """Tar the tree ``root`` (owned by root:root in the archive) into ``tarball``."""
    with tarfile.open(tarball, "w", format=tarfile.PAX_FORMAT) as archive:
        for child in sorted(root.iterdir()):
            archive.add(child, arcname=child.name, filter=_tar_as_root)


def bootstrap_busybox(
    client: docker.DockerClient,
    tag: str = BUSYBOX_TAG,
    force: bool = False,
    progress: Progress | None = None,
) -> BootstrapResult:
    """Import a busybox image as ``tag`` unless it exists (or ``force``)."""
    say = progress or _ignore_progress
    started = time.monotonic()
    current = existing_image_id(client, tag)
    if current is not None and not force:
        say(f"{tag} already exists ({current[:19]}); skipping")
        return _skipped(client, tag, current, started)
    say(f"making {tag} from {BUSYBOX_BINARY}")
    with tempfile.TemporaryDirectory(prefix="berth-busybox-") as scratch:
        root = Path(scratch) / "rootfs"
        root.mkdir()
        make_busybox_rootfs(root)
        tarball = Path(scratch) / "rootfs.tar"
        write_tarball(root, tarball)
        image_id = import_rootfs(
            client,
            tarball,
            tag,
            changes=[f"ENV PATH={DEFAULT_PATH}", 'CMD ["/bin/sh"]', "LABEL berth.base=busybox"],
        )
    say(f"{tag} created ({image_id[:19]})")
    return BootstrapResult(
        tag=tag,
        action="created",
        image_id=image_id,
        size_bytes=_image_size(client, tag),
        seconds=time.monotonic() - started,
    )


# --- apt mirror discovery ---------------------------------------------------------------------


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` source: where packages come from, and the key that signs them (if named)."""

    uri: str
    suites: tuple[str, ...]
    signed_by: str | None = None


def _deb822_paragraphs(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    last_key: str | None = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, last_key = {}, None
            continue
        if raw[0] in " \t" and last_key is not None:
            fields[last_key] += "\n" + raw.strip()
            continue
        key, sep, value = raw.partition(":")
        if sep:
            last_key = key.strip().lower()
            fields[last_key] = value.strip()


def parse_deb822_sources(text: str) -> list[AptSource]:
    """The ``deb`` entries of a deb822 ``.sources`` file."""
    sources: list[AptSource] = []
    for fields in _deb822_paragraphs(text):
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").strip().lower() == "no":
            continue
        signed_by = fields.get("signed-by")
        key_path = signed_by if signed_by and signed_by.startswith("/") else None
        suites = tuple(fields.get("suites", "").split())
        sources.extend(AptSource(uri, suites, key_path) for uri in fields.get("uris", "").split())
    return sources


def parse_one_line_sources(text: str) -> list[AptSource]:
    """The ``deb`` lines of a one-line-style ``sources.list``."""
    sources: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[len("deb ") :].strip()
        signed_by: str | None = None
        if rest.startswith("["):
            options, _, rest = rest[1:].partition("]")
            for option in options.split():
                key, _, value = option.partition("=")
                if key == "signed-by" and value.startswith("/"):
                    signed_by = value
        words = rest.split()
        if len(words) >= 2:
            sources.append(AptSource(words[0], (words[1],), signed_by))
    return sources


def configured_apt_sources(
    sources_list: Path = APT_SOURCES_LIST, sources_dir: Path = APT_SOURCES_DIR
) -> list[AptSource]:
    """Every ``deb`` source apt on this machine is configured with, in apt's reading order."""
    found: list[AptSource] = []
    if sources_list.is_file():
        found += parse_one_line_sources(sources_list.read_text(errors="replace"))
    if sources_dir.is_dir():
        for path in sorted(sources_dir.iterdir()):
            if path.suffix == ".list":
                found += parse_one_line_sources(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                found += parse_deb822_sources(path.read_text(errors="replace"))
    return found


def find_debian_mirror(
    suite: str = DEBIAN_SUITE,
    sources_list: Path = APT_SOURCES_LIST,
    sources_dir: Path = APT_SOURCES_DIR,
) -> AptSource:
    """The apt source serving the main ``suite`` (not -updates or -security)."""
    usable = ("http://", "https://", "file:/")
    for source in configured_apt_sources(sources_list, sources_dir):
        if suite in source.suites and source.uri.startswith(usable):
            return source
    raise BootstrapError(
        f"no apt source for the Debian suite {suite!r} found in {sources_list} or "
        f"{sources_dir}/*.sources; configure apt with a Debian mirror first"
    )


# --- python (debootstrap) ---------------------------------------------------------------------


def _mount_points_below(root: Path) -> list[Path]:
    """Mount points inside ``root`` (deepest first), from /proc/self/mountinfo."""
    prefix = str(root.resolve()) + "/"
    points: list[Path] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return points
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        # mountinfo escapes spaces and friends as octal (\040).
        point = fields[4].encode().decode("unicode_escape")
        if point.startswith(prefix):
            points.append(Path(point))
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def remove_tree_safely(root: Path) -> None:
    """Delete ``root`` after unmounting anything a failed debootstrap left mounted inside it.

    Deleting through a leftover bind mount of /dev or /proc would damage the host, so a tree
    that still has mounts is left alone and reported.
    """
    if not root.exists():
        return
    for point in _mount_points_below(root):
        subprocess.run(["umount", "--lazy", str(point)], check=False, capture_output=True)
    remaining = _mount_points_below(root)
    if remaining:
        raise BootstrapError(
            f"{root} still has mounts ({', '.join(map(str, remaining))}); unmount and delete it"
        )
    shutil.rmtree(root, ignore_errors=True)


def debootstrap_command(target: Path, source: AptSource, suite: str = DEBIAN_SUITE) -> list[str]:
    """The debootstrap argument list for a minimal ``suite`` with python3 in ``target``."""
    command = ["debootstrap", "--variant=minbase", "--include=python3"]
    if source.signed_by and Path(source.signed_by).is_file():
        command.append(f"--keyring={source.signed_by}")
    return [*command, suite, str(target), source.uri]


def run_streaming(command: Sequence[str], say: Progress, prefix: str) -> None:
    """Run ``command``, passing each output line to ``say``; raise BootstrapError on failure."""
    tail: list[str] = []
    try:
        process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise BootstrapError(f"cannot run {command[0]}: {exc}") from exc
    assert process.stdout is not None
    with process:
        for line in process.stdout:
            line = line.rstrip()
            if line:
                say(f"{prefix}{line}")
                tail = [*tail[-19:], line]
    if process.returncode != 0:
        shown = "\n".join(tail)
        raise BootstrapError(f"{command[0]} exited with {process.returncode}:\n{shown}")


def trim_rootfs(root: Path, paths: Iterable[str] = PYTHON_TRIM_PATHS) -> None:
    """Empty the listed directories of ``root`` (they stay, as empty directories)."""
    for relative in paths:
        directory = root / relative
        if directory.is_symlink() or not directory.is_dir():
            continue
        for child in directory.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    (root / "tmp").chmod(0o1777)


def tar_directory(root: Path, tarball: Path) -> None:
    """Tar ``root`` with numeric owners, keeping hard links, modes and devices as they are."""
    command = ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise BootstrapError(f"tar of {root} failed: {result.stderr.strip()}")


def build_python_rootfs(cache_dir: Path, say: Progress, suite: str = DEBIAN_SUITE) -> Path:
    """debootstrap a minimal Debian with python3, trim it and cache it as a tarball."""
    if os.geteuid() != 0:
        raise BootstrapError("debootstrap needs root; run this as root")
    if shutil.which("debootstrap") is None:
        raise BootstrapError("debootstrap not found; install it: apt-get install debootstrap")
    source = find_debian_mirror(suite)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BootstrapError(f"cannot create the cache directory {cache_dir}: {exc}") from exc
    cached = cache_dir / PYTHON_ROOTFS_CACHE_NAME
    work = Path(tempfile.mkdtemp(prefix="python-rootfs.", dir=cache_dir))
    try:
        target = work / "rootfs"
        say(f"debootstrap {suite} with python3 from {source.uri} (takes about a minute)")
        run_streaming(debootstrap_command(target, source, suite), say, "debootstrap: ")
        say("trimming apt lists, docs and manuals")
        trim_rootfs(target)
        partial = work / "rootfs.tar"
        say(f"writing {cached}")
        tar_directory(target, partial)
        os.replace(partial, cached)
    finally:
        remove_tree_safely(work)
    return cached


def python_rootfs(cache_dir: Path, say: Progress) -> Path:
    """The cached python root filesystem tarball, made first if missing."""
    cached = cache_dir / PYTHON_ROOTFS_CACHE_NAME
    if cached.is_file() and cached.stat().st_size > 0:
        say(f"using cached root filesystem {cached}")
        return cached
    return build_python_rootfs(cache_dir, say)


def bootstrap_python(
    client: docker.DockerClient,
    tag: str = PYTHON_TAG,
    force: bool = False,
    progress: Progress | None = None,
    cache_dir: Path = DEFAULT_CACHE_DIR,
) -> BootstrapResult:
    """Import a Debian + python3 image as ``tag`` unless it exists (or ``force``).

    ``force`` re-imports the image; the cached root filesystem under ``cache_dir`` is reused.
    Delete ``cache_dir/python-rootfs.tar`` to debootstrap afresh.
    """
    say = progress or _ignore_progress
    started = time.monotonic()
    current = existing_image_id(client, tag)
    if current is not None and not force:
        say(f"{tag} already exists ({current[:19]}); skipping")
        tag_latest(client, tag, current, say)
        return _skipped(client, tag, current, started)
    tarball = python_rootfs(cache_dir, say)
    say(f"importing {tag}")
    image_id = import_rootfs(
        client,
        tarball,
        tag,
        changes=[
            f"ENV PATH={DEFAULT_PATH}",
            "ENV LANG=C.UTF-8",
            'CMD ["python3"]',
            "LABEL berth.base=python",
        ],
    )
    say(f"{tag} created ({image_id[:19]})")
    tag_latest(client, tag, image_id, say)
    return BootstrapResult(
        tag=tag,
        action="created",
        image_id=image_id,
        size_bytes=_image_size(client, tag),
        seconds=time.monotonic() - started,
    )


def tag_latest(client: docker.DockerClient, tag: str, image_id: str, say: Progress) -> None:
    """Give a versioned base image (``berth/python:3``) its ``latest`` tag too, idempotently.

    ``FROM berth/python`` means ``berth/python:latest``, and Berth never pulls: without this
    tag that line would name a missing image.
    """
    repository, version = parse_repository_tag(tag)
    if not repository.startswith("berth/") or version in (None, "latest"):
        return
    latest = f"{repository}:latest"
    if existing_image_id(client, latest) == image_id:
        return
    try:
        client.api.tag(image_id, repository, "latest", force=True)
    except docker.errors.APIError as exc:
        raise BootstrapError(f"cannot tag {latest}: {exc}") from exc
    say(f"tagged {latest} ({image_id[:19]})")


def bootstrap_all(
    client: docker.DockerClient,
    progress: Progress | None = None,
    force: bool = False,
    cache_dir: Path = DEFAULT_CACHE_DIR,
) -> list[BootstrapResult]:
    """Make both base images (busybox first: it is quick) and say what was done for each."""
    return [
        bootstrap_busybox(client, force=force, progress=progress),
        bootstrap_python(client, force=force, progress=progress, cache_dir=cache_dir),
    ]
