"""Build benchmark: Berth's hardened, per-tenant step builder beside Docker's own builder.

Builds examples/python-app and examples/busybox-app, each from a cold cache and again with the
cache warm, with the limits a tenant gets by default (berth.settings: memory, CPU, pids, disk,
time). Beside each, the same context through Docker's legacy builder (``docker build``, the
one Berth used before: no limits, one cache for everyone), cold (``nocache``) and warm.

Prints a table and writes bench/results/builds.json. Nothing leaves the machine.
Usage: python bench/builds.py [--repeat 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness import BUSYBOX_APP, PYTHON_APP, check_requirements, docker_client  # noqa: E402

from berth.builds.engine_builder import EngineBuilder, build_network_name  # noqa: E402
from berth.builds.limits import tenant_build_policy  # noqa: E402
from berth.builds.protocol import BuildRequest  # noqa: E402
from berth.settings import Settings  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 110)
EXAMPLES = {"python-app": PYTHON_APP, "busybox-app": BUSYBOX_APP}
# A context with RUN steps (the examples only COPY): each RUN is a hardened container.
RUN_STEPS_DOCKERFILE = """FROM berth/python
RUN python3 -c "open('/opt/a', 'w').write('x' * 1000000)"
RUN mkdir -p /opt/b && cp /opt/a /opt/b/a && ls -l /opt/b
ENV GREETING=hello
RUN echo "$GREETING" > /opt/greeting
COPY app.py /app/app.py
CMD ["python3", "/app/app.py"]
"""


def run_steps_context(root: Path) -> Path:
    context = root / "run-steps"
    context.mkdir()
    (context / "Dockerfile").write_text(RUN_STEPS_DOCKERFILE)
    (context / "app.py").write_text("print('hello')\n")
    return context


class Workspace:
    """Unique tags, tenants and an installation id for this run; everything removed at the end."""

    def __init__(self) -> None:
        self.client = docker_client()
        self.run_id = uuid.uuid4().hex[:10]
        self.installation = f"bench{self.run_id}"
        self.tags: list[str] = []
        self.tenants: list[str] = []

    def tag(self, what: str) -> str:
        tag = f"berth-bench-{self.run_id}/{what}:{len(self.tags)}"
        self.tags.append(tag)
        return tag

    def tenant(self) -> str:
        tenant = uuid.uuid4().hex[:16]
        self.tenants.append(tenant)
        return tenant

    def cleanup(self) -> None:
        api = self.client.api
        for tag in reversed(self.tags):
            with contextlib.suppress(Exception):
                api.remove_image(tag, force=True)
        # The per-tenant cache: images committed for this run's tenants.
        for tenant in self.tenants:
            with contextlib.suppress(Exception):
                for image in api.images(
                    all=True, filters={"label": f"berth.build.tenant={tenant}"}
                ):
                    with contextlib.suppress(Exception):
                        api.remove_image(image["Id"], force=True)
            with contextlib.suppress(Exception):
                api.remove_network(build_network_name(tenant))
        with contextlib.suppress(Exception):
            api.prune_images(filters={"dangling": True})
        self.client.close()


@contextlib.contextmanager
def workspace() -> Iterator[Workspace]:
    ws = Workspace()
    try:
        yield ws
    finally:
        ws.cleanup()


def timed(build: Callable[[], None]) -> float:
    started = time.perf_counter()
    build()
    return time.perf_counter() - started


def berth_build(ws: Workspace, context: Path, tenant: str) -> None:
    settings = Settings()
    limits = tenant_build_policy(settings, None).limits
    builder = EngineBuilder(ws.client, ws.installation)
    request = BuildRequest(
        context_dir=context,
        tag=ws.tag("berth"),
        labels={"berth.build.tenant": tenant, "berth.build.installation": ws.installation},
        tenant_id=tenant,
        limits=limits,
    )
    last = None
    for event in builder.build(request):
        last = event
    if last is None or last.kind != "done":
        raise RuntimeError(f"Berth build failed: {last.text if last else 'no events'}")


def docker_build(ws: Workspace, context: Path, nocache: bool) -> None:
    stream = ws.client.api.build(
        path=str(context),
        tag=ws.tag("docker"),
        rm=True,
        forcerm=True,
        decode=True,
        pull=False,
        nocache=nocache,
    )
    for message in stream:
        if isinstance(message, dict) and message.get("error"):
            raise RuntimeError(f"docker build failed: {message['error']}")


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": [round(s, 3) for s in samples],
    }


def bench_example(ws: Workspace, context: Path, repeat: int) -> dict[str, Any]:
    berth_cold, berth_warm, docker_cold, docker_warm = [], [], [], []
    for _ in range(repeat):
        tenant = ws.tenant()  # a new tenant has nothing in its cache
        berth_cold.append(timed(lambda t=tenant: berth_build(ws, context, t)))
        berth_warm.append(timed(lambda t=tenant: berth_build(ws, context, t)))
        docker_cold.append(timed(lambda: docker_build(ws, context, nocache=True)))
        docker_warm.append(timed(lambda: docker_build(ws, context, nocache=False)))
    return {
        "berth_cold": summary(berth_cold),
        "berth_warm": summary(berth_warm),
        "docker_cold": summary(docker_cold),
        "docker_warm": summary(docker_warm),
    }


def fmt(s: dict[str, Any]) -> str:
    return f"{s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f})"


def print_report(results: dict[str, Any]) -> None:
    table = Table(title="Builds: Berth's hardened builder vs docker build (legacy), same run")
    for column in ("example", "cache", "Berth", "docker build", "ratio"):
        table.add_column(column)
    for name, r in results["examples"].items():
        for cache in ("cold", "warm"):
            berth, docker = r[f"berth_{cache}"], r[f"docker_{cache}"]
            ratio = berth["median"] / docker["median"] if docker["median"] else float("nan")
            table.add_row(name, cache, fmt(berth), fmt(docker), f"{ratio:.2f}x")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "builds.json")
    args = parser.parse_args(argv)
    check_requirements()
    settings = Settings()
    with workspace() as ws, tempfile.TemporaryDirectory() as tmp:
        contexts = {**EXAMPLES, "run-steps (3 RUN)": run_steps_context(Path(tmp))}
        examples = {name: bench_example(ws, path, args.repeat) for name, path in contexts.items()}
    results = {
        "environment": {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "python": platform.python_version(),
            "build_limits": {
                "memory_mb": settings.build_memory_mb,
                "cpus": settings.build_cpus,
                "pids": settings.build_pids_limit,
                "disk_mb": settings.build_disk_mb,
                "timeout_seconds": settings.build_timeout_seconds,
            },
        },
        "examples": examples,
    }
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
