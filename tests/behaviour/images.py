"""The behaviour suite's image: examples/python-app built once per run on this machine's engine
under a unique ``berth/...`` name (a base-image reference every tenant may deploy), removed at
the end. The Swarm driver loads it into every node."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import docker.errors

from tests.harness import PYTHON_APP, docker_client


@contextlib.contextmanager
def behaviour_image() -> Iterator[str]:
    ref = f"berth/behaviour-{uuid.uuid4().hex[:8]}:latest"
    with contextlib.closing(docker_client()) as client:
        client.images.build(path=str(PYTHON_APP), tag=ref, rm=True, forcerm=True)
        try:
            yield ref
        finally:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.images.remove(ref, force=True)
