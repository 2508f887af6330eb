"""``python -m berth.images``: make Berth's offline images (busybox, python, and memcached for
tenants' dedicated Memcached, from the distro's .debs on top of python).

Exits 0 when every image exists afterwards, 1 with a message on stderr otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import docker
import docker.errors

from berth.errors import BerthError
from berth.images.bootstrap import (
    BUSYBOX_TAG,
    DEFAULT_CACHE_DIR,
    PYTHON_TAG,
    BootstrapResult,
    bootstrap_busybox,
    bootstrap_python,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m berth.images",
        description="Make Berth's base images without a registry.",
    )
    parser.add_argument(
        "--only",
        choices=("busybox", "python", "memcached"),
        help="make just this image (default: all three)",
    )
    parser.add_argument("--force", action="store_true", help="re-import even if the tag exists")
    parser.add_argument("--busybox-tag", default=BUSYBOX_TAG)
    parser.add_argument("--python-tag", default=PYTHON_TAG)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("BERTH_CACHE_DIR", str(DEFAULT_CACHE_DIR))),
        help="where the python root filesystem tarball is cached (env BERTH_CACHE_DIR)",
    )
    return parser.parse_args(argv)


def say(line: str) -> None:
    print(f"berth.images: {line}", flush=True)


def describe(result: BootstrapResult) -> str:
    size_mb = result.size_bytes / 1e6
    return (
        f"{result.tag}: {result.action} {result.image_id[:19]} "
        f"({size_mb:.1f} MB, {result.seconds:.1f}s)"
    )


def run(args: argparse.Namespace) -> list[BootstrapResult]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise BerthError(f"cannot reach the Docker Engine: {exc}") from exc
    results: list[BootstrapResult] = []
    if args.only in (None, "busybox"):
        results.append(bootstrap_busybox(client, args.busybox_tag, args.force, say))
    if args.only in (None, "python"):
        results.append(
            bootstrap_python(client, args.python_tag, args.force, say, cache_dir=args.cache_dir)
        )
    if args.only in (None, "memcached"):
        results.append(bootstrap_memcached(client, args.cache_dir))
    return results


def bootstrap_memcached(client: docker.DockerClient, cache_dir: Path) -> BootstrapResult:
    """``berth/memcached:<hash>`` (idempotent: the tag is a hash of what goes in, so an
    unchanged one is found, not built). It needs berth/python:3, made just before."""
    from berth.images.memcached_image import ensure_memcached_image

    started = time.monotonic()
    image = ensure_memcached_image(client, cache_dir)
    size = int(client.api.inspect_image(image.image_id).get("Size") or 0)
    action: Literal["created", "exists"] = "created" if image.built else "exists"
    return BootstrapResult(image.tag, action, image.image_id, size, time.monotonic() - started)


def fail(message: str) -> int:
    print(f"berth.images: error: {message}", file=sys.stderr, flush=True)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except BerthError as exc:
        return fail(exc.message)
    except (docker.errors.DockerException, OSError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("berth.images: interrupted", file=sys.stderr, flush=True)
        return 130
    for result in results:
        say(describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
