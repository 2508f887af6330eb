"""The ``berth/node-guard`` image: the node guard (berth.netpolicy.node_guard) with iptables,
made offline on the engine Berth talks to and pushed to the platform registry for the nodes.

Workers have no registry of their own and reach no internet; they pull from Berth's registry
like any build. The image is ``FROM berth/python:3`` (the base image ``berth images
bootstrap`` makes) plus, in one layer:

- the distro's iptables and its libraries, ``apt-get download``-ed on the Berth host (the host's
  apt mirror; cached under the cache directory) and unpacked with ``dpkg-deb -x``. Debian 12's
  dockerd programs the nf_tables backend (``iptables --version``: ``nf_tables``), so the
  image's ``iptables`` is ``xtables-nft-multi``: the same backend as the node's own rules;
  a node whose dockerd used the legacy backend has no ``DOCKER-USER`` in nf_tables, and the
  guard refuses to start there (its task says so).
- the guard's modules, copied from this installed berth package (never fetched).

No step of the build runs anything (``COPY`` only, network off). The tag is a hash of what
goes in, so an unchanged Berth reuses the image and the registry already holds it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

import berth
from berth.errors import BerthError
from berth.images.bootstrap import PYTHON_TAG, BootstrapError, existing_image_id
from berth.registry.push import pinned_reference, read_push_stream

REPOSITORY = "berth/node-guard"
# iptables and what its nft binary links (Debian 12): apt-cache depends --recurse, minus libc.
IPTABLES_PACKAGES = (
    "iptables",
    "libip4tc2",
    "libip6tc2",
    "libxtables12",
    "libnftnl11",
    "libmnl0",
    "libnetfilter-conntrack3",
    "libnfnetlink0",
)
# The guard's python: berth.netpolicy.node_guard and what it imports, nothing else.
GUARD_MODULES = (
    "__init__.py",
    "errors.py",
    "netpolicy/__init__.py",
    "netpolicy/plan.py",
    "netpolicy/iptables.py",
    "netpolicy/node_guard.py",
    "netpolicy/node_guard_apply.py",
)
CODE_DIR = "/opt/berth"
NFT_MULTI = "xtables-nft-multi"
# The names the guard calls, all the nft backend (Debian's alternatives would pick it too).
NFT_NAMES = ("iptables", "iptables-restore", "iptables-save")
_DROPPED = ("usr/share/doc", "usr/share/man", "usr/share/lintian", "etc/ethertypes")


@dataclass(frozen=True)
class GuardImage:
    tag: str  # berth/node-guard:<content hash>, on the engine Berth talks to
    image_id: str
    built: bool  # False: it was there already


def dockerfile(version: str) -> str:
    return "\n".join(
        [
            f"FROM {PYTHON_TAG}",
            "COPY rootfs/ /",
            f"ENV PYTHONPATH={CODE_DIR} PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
            f"LABEL berth.node-guard.version={version}",
            'ENTRYPOINT ["python3", "-m", "berth.netpolicy.node_guard"]',
            'CMD ["status"]',
            "",
        ]
    )


def content_version(debs: Iterable[Path], modules: Mapping[str, bytes]) -> str:
    """A hash of every file that goes into the image (and of the Dockerfile's shape)."""
    digest = hashlib.sha256(dockerfile("").encode())
    for deb in sorted(debs, key=lambda p: p.name):
        digest.update(deb.name.encode() + b"\0" + hashlib.sha256(deb.read_bytes()).digest())
    for name, body in sorted(modules.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
    return digest.hexdigest()[:16]


def guard_modules(package_dir: Path | None = None) -> dict[str, bytes]:
    """The guard's modules of this installed berth package, by path below ``berth/``."""
    root = package_dir or Path(berth.__file__).resolve().parent
    out = {}
    for relative in GUARD_MODULES:
        path = root / relative
        if not path.is_file():
            raise BootstrapError(f"the berth package lacks {path}: reinstall it")
        out[relative] = path.read_bytes()
    return out


def iptables_debs(cache_dir: Path, packages: Sequence[str] = IPTABLES_PACKAGES) -> list[Path]:
    """The packages' .debs from this machine's apt (downloaded once into the cache)."""
    directory = cache_dir / "node-guard-debs"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BootstrapError(f"cannot create {directory}: {exc}") from exc
    found = _debs_by_package(directory)
    missing = [p for p in packages if p not in found]
    if missing:
        if shutil.which("apt-get") is None:
            raise BootstrapError("apt-get not found: the guard image needs the distro's iptables")
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
        still = [p for p in packages if p not in found]
        if still:
            raise BootstrapError(f"apt-get download did not fetch {', '.join(still)}")
    return [found[p] for p in packages]


def _debs_by_package(directory: Path) -> dict[str, Path]:
    return {deb.name.split("_", 1)[0]: deb for deb in sorted(directory.glob("*.deb"))}


def make_rootfs(root: Path, debs: Sequence[Path], modules: Mapping[str, bytes]) -> None:
    """Unpack ``debs`` into ``root`` (no maintainer scripts run), name the nft binary as
    iptables, and put the guard's modules under CODE_DIR."""
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
    for relative in _DROPPED:
        target = root / relative
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    sbin = root / "usr" / "sbin"
    if not (sbin / NFT_MULTI).is_file():
        raise BootstrapError(f"the iptables package has no /usr/sbin/{NFT_MULTI}")
    for name in NFT_NAMES:
        link = sbin / name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(NFT_MULTI)
    code = root / CODE_DIR.lstrip("/") / "berth"
    for relative, body in modules.items():
        path = code / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)


def build_context(root: Path, version: str) -> bytes:
    """The build context (a tar): the Dockerfile and ``rootfs/``, owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        text = dockerfile(version).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(text)
        archive.addfile(info, io.BytesIO(text))
        archive.add(root, arcname="rootfs", filter=_as_root)
    return buffer.getvalue()


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def ensure_guard_image(client: Any, cache_dir: Path) -> GuardImage:
    """``berth/node-guard:<version>`` on the engine of ``client`` (docker-py DockerClient),
    built if missing. Raises BootstrapError with what to do."""
    if existing_image_id(client, PYTHON_TAG) is None:
        raise BootstrapError(
            f"{PYTHON_TAG} is missing on the engine Berth talks to: run `berth images bootstrap`"
        )
    debs = iptables_debs(cache_dir)
    modules = guard_modules()
    version = content_version(debs, modules)
    tag = f"{REPOSITORY}:{version}"
    current = existing_image_id(client, tag)
    if current is not None:
        return GuardImage(tag, current, built=False)
    with tempfile.TemporaryDirectory(prefix="berth-node-guard-") as scratch:
        root = Path(scratch) / "rootfs"
        root.mkdir()
        make_rootfs(root, debs, modules)
        context = build_context(root, version)
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
    return GuardImage(tag, image_id, built=True)


def push_guard_image(
    client: Any, image: GuardImage, address: str, auth_config: Mapping[str, str] | None
) -> str:
    """Push the image to the platform registry at ``address``; its pinned reference
    (``ADDR/berth/node-guard@sha256:...``). Raises BerthError (the registry's reason)."""
    target = f"{address}/{REPOSITORY}"
    version = image.tag.rpartition(":")[2]
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
    return pinned_reference(address, REPOSITORY, outcome.digest)


def describe_build(image: GuardImage) -> str:
    return json.dumps({"tag": image.tag, "id": image.image_id[:19], "built": image.built})
