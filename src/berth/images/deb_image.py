"""Images Berth makes offline from the distro's packages and its own modules, for the nodes.

Workers have no registry of their own and reach no internet; they pull from Berth's registry
like any build. Each image (the node guard, the ingress node, ...) is ``FROM berth/python:3``
(the base image ``berth images bootstrap`` makes) plus, in one layer:

- the distro's packages the recipe names, ``apt-get download``-ed on the Berth host (the host's
  apt mirror; cached under the cache directory) and unpacked with ``dpkg-deb -x`` (no
  maintainer script runs);
- the recipe's modules, copied from this installed berth package (never fetched).

No step of the build runs anything (``COPY`` only, network off). The tag is a hash of what
goes in, so an unchanged Berth reuses the image and the registry already holds it.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors

import berth
from berth.errors import BerthError
from berth.images.bootstrap import PYTHON_TAG, BootstrapError, existing_image_id
from berth.registry.push import pinned_reference, read_push_stream

CODE_DIR = "/opt/berth"
# Documentation and lintian data: nothing runs them.
DROPPED = ("usr/share/doc", "usr/share/man", "usr/share/lintian")


@dataclass(frozen=True)
class DebImageRecipe:
    """What goes into one image. ``modules``: paths below ``berth/`` that the entrypoint
    imports (and nothing else of berth: the tests run them alone); ``fixup`` edits the unpacked
    tree (say, the names a binary is called by)."""

    repository: str  # berth/node-guard
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    dropped: tuple[str, ...] = DROPPED
    fixup: Callable[[Path], None] | None = field(default=None, compare=False)
    # Empty directories owned by nobody (65534): a new volume mounted there takes the image's
    # ownership, so a server running as nobody can write its data without a chown.
    data_dirs: tuple[str, ...] = ()

    @property
    def cache_name(self) -> str:
        return self.repository.replace("/", "-") + "-debs"


@dataclass(frozen=True)
class BuiltImage:
    tag: str  # <repository>:<content hash>, on the engine Berth talks to
    image_id: str
    built: bool  # False: it was there already


def dockerfile(recipe: DebImageRecipe, version: str) -> str:
    def exec_form(words: Sequence[str]) -> str:
        return "[" + ", ".join(f'"{w}"' for w in words) + "]"

    lines = [
        f"FROM {PYTHON_TAG}",
        "COPY rootfs/ /",
        *(f"COPY --chown=65534:65534 empty/ {d}/" for d in recipe.data_dirs),
        f"ENV PYTHONPATH={CODE_DIR} PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
        f"LABEL {recipe.repository.replace('/', '.')}.version={version}",
        f"ENTRYPOINT {exec_form(recipe.entrypoint)}",
    ]
    if recipe.cmd:
        lines.append(f"CMD {exec_form(recipe.cmd)}")
    return "\n".join([*lines, ""])


def content_version(
    recipe: DebImageRecipe, debs: Iterable[Path], modules: Mapping[str, bytes]
) -> str:
    """A hash of every file that goes into the image (and of the Dockerfile's shape)."""
    digest = hashlib.sha256(dockerfile(recipe, "").encode())
    # How the tree is made is part of what goes in: a changed fixup or unpacking is a new image.
    for step in (make_rootfs, _merge_usr, *((recipe.fixup,) if recipe.fixup else ())):
        digest.update(inspect.getsource(step).encode())
    for deb in sorted(debs, key=lambda p: p.name):
        digest.update(deb.name.encode() + b"\0" + hashlib.sha256(deb.read_bytes()).digest())
    for name, body in sorted(modules.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
    return digest.hexdigest()[:16]


def read_modules(relatives: Sequence[str], package_dir: Path | None = None) -> dict[str, bytes]:
    """Modules of this installed berth package, by path below ``berth/``."""
    root = package_dir or Path(berth.__file__).resolve().parent
    out = {}
    for relative in relatives:
        path = root / relative
        if not path.is_file():
            raise BootstrapError(f"the berth package lacks {path}: reinstall it")
        out[relative] = path.read_bytes()
    return out


def download_debs(cache_dir: Path, recipe: DebImageRecipe) -> list[Path]:
    """The recipe's .debs from this machine's apt (downloaded once into the cache)."""
    directory = cache_dir / recipe.cache_name
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BootstrapError(f"cannot create {directory}: {exc}") from exc
    found = _debs_by_package(directory)
    missing = [p for p in recipe.packages if p not in found]
    if missing:
        if shutil.which("apt-get") is None:
            raise BootstrapError(
                f"apt-get not found: {recipe.repository} needs the distro's {', '.join(missing)}"
            )
        result = subprocess.run(
            ["apt-get", "download", *missing],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise BootstrapError(
                f"apt-get download {' '.join(missing)} failed: "
                f"{(result.stderr or result.stdout).strip()[-800:]}"
            )
        found = _debs_by_package(directory)
        still = [p for p in recipe.packages if p not in found]
        if still:
            raise BootstrapError(f"apt-get download did not fetch {', '.join(still)}")
    return [found[p] for p in recipe.packages]


def _debs_by_package(directory: Path) -> dict[str, Path]:
    return {deb.name.split("_", 1)[0]: deb for deb in sorted(directory.glob("*.deb"))}


def make_rootfs(
    root: Path, recipe: DebImageRecipe, debs: Sequence[Path], modules: Mapping[str, bytes]
) -> None:
    """Unpack ``debs`` into ``root``, apply the recipe's fixup, and put the modules under
    CODE_DIR."""
    for deb in debs:
        result = subprocess.run(
            ["dpkg-deb", "-x", str(deb), str(root)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise BootstrapError(f"dpkg-deb -x {deb.name} failed: {result.stderr.strip()}")
    for relative in recipe.dropped:
        target = root / relative
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    _merge_usr(root)
    if recipe.fixup is not None:
        recipe.fixup(root)
    code = root / CODE_DIR.lstrip("/") / "berth"
    for relative, body in modules.items():
        path = code / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)


# In berth/python:3 (Debian 12, merged /usr) these are symlinks into /usr: a real directory of
# the same name in the layer would replace the link and hide every library below it (the
# loader among them: "exec ...: no such file or directory").
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def _merge_usr(root: Path) -> None:
    """Move what the packages put in /lib, /bin, ... to /usr/lib, /usr/bin, ... (where the
    base's symlinks point), so that the layer holds no such top-level directory."""
    for name in MERGED_USR:
        top = root / name
        if top.is_symlink() or not top.is_dir():
            continue
        shutil.copytree(top, root / "usr" / name, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(top)


def build_context(recipe: DebImageRecipe, root: Path, version: str) -> bytes:
    """The build context (a tar): the Dockerfile and ``rootfs/``, owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        text = dockerfile(recipe, version).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(text)
        archive.addfile(info, io.BytesIO(text))
        archive.add(root, arcname="rootfs", filter=_as_root)
        if recipe.data_dirs:
            empty = tarfile.TarInfo("empty")
            empty.type, empty.mode = tarfile.DIRTYPE, 0o700
            archive.addfile(empty)
    return buffer.getvalue()


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def ensure_image(client: Any, cache_dir: Path, recipe: DebImageRecipe) -> BuiltImage:
    """``<repository>:<version>`` on the engine of ``client`` (docker-py DockerClient), built
    if missing. Raises BootstrapError with what to do."""
    if existing_image_id(client, PYTHON_TAG) is None:
        raise BootstrapError(
            f"{PYTHON_TAG} is missing on the engine Berth talks to: run `berth images bootstrap`"
        )
    debs = download_debs(cache_dir, recipe)
    modules = read_modules(recipe.modules)
    version = content_version(recipe, debs, modules)
    tag = f"{recipe.repository}:{version}"
    current = existing_image_id(client, tag)
    if current is not None:
        return BuiltImage(tag, current, built=False)
    with tempfile.TemporaryDirectory(prefix=f"{recipe.cache_name}-") as scratch:
        root = Path(scratch) / "rootfs"
        root.mkdir()
        make_rootfs(root, recipe, debs, modules)
        context = build_context(recipe, root, version)
    try:
        stream = client.api.build(
            fileobj=io.BytesIO(context),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            decode=True,
        )
        for line in stream:
            if isinstance(line, dict) and (line.get("error") or line.get("errorDetail")):
                raise BootstrapError(f"building {tag} failed: {line.get('error') or line}")
    except docker.errors.DockerException as exc:
        raise BootstrapError(f"building {tag} failed: {exc}") from exc
    image_id = existing_image_id(client, tag)
    if image_id is None:
        raise BootstrapError(f"the build of {tag} reported success but the image is missing")
    return BuiltImage(tag, image_id, built=True)


def push_image(
    client: Any, image: BuiltImage, address: str, auth_config: Mapping[str, str] | None
) -> str:
    """Push the image to the platform registry at ``address``; its pinned reference
    (``ADDR/<repository>@sha256:...``). Raises BerthError (the registry's reason)."""
    repository, _, version = image.tag.rpartition(":")
    target = f"{address}/{repository}"
    try:
        client.api.tag(image.image_id, target, tag=version)
        stream = client.api.push(
            target,
            tag=version,
            stream=True,
            decode=True,
            auth_config=dict(auth_config) if auth_config else None,
        )
        outcome = read_push_stream(stream)
    except docker.errors.DockerException as exc:
        raise BerthError(f"cannot push {image.tag} to {address}: {exc}") from exc
    return pinned_reference(address, repository, outcome.digest)
