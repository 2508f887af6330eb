"""Benchmark: what per-app metrics cost to collect, engine side and ingress side.

Engine side: one pass of the cgroup sampler (CPU and memory of every instance, read from its
cgroup files; each container's cgroup found once, by one engine call) over
  (a) ``--real`` real busybox containers on this machine's engine (default 100), and
  (b) ``--fake`` containers (default 1,000) in a cgroup tree laid out in a directory as the
      kernel lays it out (berth.metrics.fake_cgroups), v1 and v2,
plus the store write of a pass (``add_instance_samples``, SQLite). CPU is the process's own
(user + system) time per pass, so the kernel's work behind each cgroup file counts too. The
figure for 1,000 real instances is extrapolated linearly from (a): every container costs the
same three small reads and one sample, and (b) shows the pass is linear in the count.
Ingress side: the collector's read + parse + aggregate of nginx's metrics log, per line, and
one flush of 1,000 apps' buckets into the store; the cost at a given request rate follows.

Prints a table and writes bench/results/metrics_collect.json. Traffic: none (files only).
    python bench/metrics_collect.py [--real 100] [--fake 1000] [--passes 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from berth.metrics import cgroups  # noqa: E402
from berth.metrics import store as mstore  # noqa: E402
from berth.metrics.engine_collector import (  # noqa: E402
    CgroupSampler,
    Target,
    docker_pid_of,
    store_targets,
)
from berth.metrics.fake_cgroups import FakeCgroups  # noqa: E402
from berth.metrics.ingress_collector import IngressCollector  # noqa: E402
from berth.metrics.model import AppBucket  # noqa: E402
from berth.platform import open_store  # noqa: E402
from berth.settings import Settings  # noqa: E402
from berth.store.tables import App, Instance, Tenant  # noqa: E402

IMAGE = "berth/busybox:latest"
INTERVAL = 10.0  # settings.metrics_engine_interval_seconds, the default
BUDGET = 0.02  # of one core, at 1,000 instances (issue 9)
console = Console(width=None if sys.stdout.isatty() else 110)


def cpu_per_call(fn: Callable[[], object], passes: int) -> list[float]:
    out = []
    for _ in range(passes):
        start = time.process_time()
        fn()
        out.append(time.process_time() - start)
    return out


def targets(container_ids: list[str]) -> list[Target]:
    return [Target(f"i{n}", f"a{n // 2}", "t", cid, 0) for n, cid in enumerate(container_ids)]


def bench_real(n: int, passes: int) -> dict[str, Any]:
    import docker

    client = docker.from_env(version="auto", timeout=120)
    label = f"berth-bench-metrics-{secrets.token_hex(4)}"
    made: list[Any] = []
    try:
        for _ in range(n):
            made.append(client.containers.run(
                IMAGE, ["sleep", "600"], detach=True, labels={label: "1"},
                name=f"{label}-{len(made)}", mem_limit="32m",
            ))  # fmt: skip
        ids = [c.id for c in made]
        sampler = CgroupSampler(docker_pid_of(client.api))
        wanted = targets(ids)
        lookup = cpu_per_call(lambda: sampler.sample(wanted), 1)[0]  # finds every cgroup once
        assert sampler.lookups == n, sampler.lookups
        samples = sampler.sample(wanted)
        assert len(samples) == n, len(samples)
        per_pass = cpu_per_call(lambda: sampler.sample(wanted), passes)
        assert sampler.lookups == n  # no engine call after the first pass
        return {
            "containers": n,
            "first_pass_cpu_s": lookup,
            "pass_cpu_s": statistics.median(per_pass),
            "pass_cpu_s_max": max(per_pass),
            "version": cgroups.cgroup_version(),
        }
    finally:
        for container in made:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        client.close()


def bench_fake(n: int, passes: int, version: Literal[1, 2]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="berth-bench-cgroups-") as base:
        tree = FakeCgroups.create(Path(base), version)
        ids = [secrets.token_hex(32) for _ in range(n)]
        pids = {cid: 10_000 + i for i, cid in enumerate(ids)}
        for cid, pid in pids.items():
            tree.add(pid, cid)
        sampler = CgroupSampler(
            pids.get, partial(cgroups.files_of_pid, root=tree.root, proc=tree.proc)
        )
        wanted = targets(ids)
        first = cpu_per_call(lambda: sampler.sample(wanted), 1)[0]
        per_pass = cpu_per_call(lambda: sampler.sample(wanted), passes)
        return {"containers": n, "version": version, "first_pass_cpu_s": first,
                "pass_cpu_s": statistics.median(per_pass)}  # fmt: skip


def bench_store(n: int, passes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="berth-bench-metrics-store-") as home:
        settings = Settings(home=Path(home), database_url="")
        engine, sessions, _ = open_store(settings)
        try:
            with tempfile.TemporaryDirectory() as base:
                tree = FakeCgroups.create(Path(base), 2)
                ids = [secrets.token_hex(32) for _ in range(n)]
                pids = {cid: 10_000 + i for i, cid in enumerate(ids)}
                for cid, pid in pids.items():
                    tree.add(pid, cid)
                sampler = CgroupSampler(
                    pids.get, partial(cgroups.files_of_pid, root=tree.root, proc=tree.proc)
                )
                wanted = targets(ids)
                sampler.sample(wanted)

                def write() -> None:
                    samples = sampler.sample(wanted)
                    with sessions.begin() as session:
                        mstore.add_instance_samples(session, "bench", samples, 60)

                write()  # the bucket's rows exist from now on: later passes update them
                instance_write = cpu_per_call(write, passes)
            app_flush = flush_apps(sessions, 1000, passes)
            query = targets_query(sessions, n, passes)
        finally:
            engine.dispose()
    return {"instances": n, "instance_pass_with_write_cpu_s": statistics.median(instance_write),
            "apps": 1000, "app_flush_cpu_s": statistics.median(app_flush),
            "targets_query_cpu_s": statistics.median(query)}  # fmt: skip


def targets_query(sessions: Any, n: int, passes: int) -> list[float]:
    """The pass's first step: which instances, from the store (the reconciler's rows)."""
    tenant = secrets.token_hex(8)
    with sessions.begin() as session:
        for i in range(n):
            session.add(Instance(app_id=f"a{i // 2}", tenant_id=tenant, release_id="r",
                                 container_id=secrets.token_hex(32), state="running"))  # fmt: skip

    def query() -> None:
        with sessions() as session:
            assert len(store_targets(session)) >= n

    return cpu_per_call(query, passes)


def flush_apps(sessions: Any, apps: int, passes: int) -> list[float]:
    tenant = secrets.token_hex(8)
    ids = [secrets.token_hex(8) for _ in range(apps)]
    with sessions.begin() as session:
        session.add(Tenant(id=tenant, name=f"bench-{tenant}"))
        session.flush()
        for i, app_id in enumerate(ids):
            session.add(App(id=app_id, tenant_id=tenant, name=f"b{i}-{tenant}", memory_mb=64,
                            cpus_milli=100, port=80))  # fmt: skip
    start = int(time.time()) // 60 * 60

    def flush() -> None:
        pending = {}
        for app_id in ids:
            bucket = AppBucket(requests=50, body_bytes=50_000)
            bucket.by_class[1] = 50
            bucket.latency = {3: 40, 9: 10}
            pending[(app_id, start)] = bucket
        with sessions.begin() as session:
            mstore.add_app_buckets(session, "bench", pending)

    return cpu_per_call(flush, passes)


def bench_log(lines: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="berth-bench-metrics-log-") as base:
        path = Path(base) / "metrics.log"
        path.write_bytes(b"")
        collector = IngressCollector(path, None, "bench", bucket_seconds=60,  # type: ignore[arg-type]
                                     retention_seconds=86400)  # fmt: skip
        now = time.time()
        apps = [secrets.token_hex(8) for _ in range(1000)]
        body = "".join(
            f"{apps[i % 1000]}\t{now + i / 1000:.3f}\t{200 if i % 10 else 404}\t{1000 + i % 7}\t"
            f"0.{i % 250:03d}\n"
            for i in range(lines)
        ).encode()
        path.write_bytes(body)
        start = time.process_time()
        read = collector.read()
        cpu = time.process_time() - start
        assert read == lines
        counted = sum(b.requests for b in collector._pending.values())
        assert counted == lines, counted
    return {"lines": lines, "cpu_s": cpu, "cpu_us_per_line": cpu / lines * 1e6,
            "bytes_per_line": len(body) / lines}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=int, default=100)
    parser.add_argument("--fake", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/metrics_collect.json")
    args = parser.parse_args()

    real = bench_real(args.real, args.passes) if args.real else None
    fakes = [bench_fake(args.fake, args.passes, v) for v in (1, 2)]
    small = [bench_fake(args.fake // 10, args.passes, v) for v in (1, 2)]
    stored = bench_store(args.fake, max(3, args.passes // 4))
    log = bench_log(args.lines)

    per_container = real["pass_cpu_s"] / real["containers"] if real else None
    at_1000 = per_container * 1000 if per_container is not None else None
    # The store write's own cost per instance (the pass with a write, less the same pass
    # without), scaled to 1,000.
    write_per = (stored["instance_pass_with_write_cpu_s"] - fakes[1]["pass_cpu_s"]) / args.fake
    query_1000 = stored["targets_query_cpu_s"] * 1000 / args.fake
    engine_share = ((at_1000 or 0.0) + max(0.0, write_per) * 1000 + query_1000) / INTERVAL
    result = {
        "real": real,
        "fake": fakes,
        "fake_tenth": small,
        "store": stored,
        "log": log,
        "interval_s": INTERVAL,
        "engine_1000_pass_cpu_s_extrapolated": at_1000,
        "engine_1000_share_of_core": engine_share,
        "budget_share_of_core": BUDGET,
        "ingress_share_of_core_at_1000_rps": log["cpu_us_per_line"] * 1000 / 1e6
        + stored["app_flush_cpu_s"] / 10.0,
    }
    table = Table(title="Metrics collection cost (CPU time of this process)")
    for col in ("what", "count", "CPU per pass", "share of a core"):
        table.add_column(col)
    if real:
        table.add_row(
            f"cgroup pass, real containers (v{real['version']})",
            str(real["containers"]),
            f"{real['pass_cpu_s'] * 1e3:.2f} ms",
            f"{real['pass_cpu_s'] / INTERVAL:.3%}",
        )
        table.add_row(
            "  first pass (one engine call each)",
            str(real["containers"]),
            f"{real['first_pass_cpu_s'] * 1e3:.1f} ms",
            "once",
        )
        table.add_row(
            "cgroup pass, 1,000 real (extrapolated)",
            "1000",
            f"{at_1000 * 1e3:.2f} ms",
            f"{at_1000 / INTERVAL:.3%}",
        )  # type: ignore[operator]
    for f in small + fakes:
        table.add_row(
            f"cgroup pass, fake tree v{f['version']}",
            str(f["containers"]),
            f"{f['pass_cpu_s'] * 1e3:.2f} ms",
            f"{f['pass_cpu_s'] / INTERVAL:.3%}",
        )
    table.add_row(
        "pass + store write (SQLite)",
        str(stored["instances"]),
        f"{stored['instance_pass_with_write_cpu_s'] * 1e3:.1f} ms",
        f"{stored['instance_pass_with_write_cpu_s'] / INTERVAL:.3%}",
    )
    table.add_row(
        "targets from the store",
        str(stored["instances"]),
        f"{stored['targets_query_cpu_s'] * 1e3:.1f} ms",
        "",
    )
    table.add_row(
        "engine side at 1,000 (query + real pass + write)",
        "1000",
        "",
        f"{engine_share:.3%} (budget {BUDGET:.0%})",
    )
    table.add_row(
        "log read+parse+aggregate, per line",
        str(log["lines"]),
        f"{log['cpu_us_per_line']:.2f} us",
        "",
    )
    table.add_row(
        "flush of 1,000 apps' buckets",
        "1000",
        f"{stored['app_flush_cpu_s'] * 1e3:.1f} ms",
        "every 10 s",
    )
    table.add_row("ingress side at 1,000 req/s", "", "",
                  f"{result['ingress_share_of_core_at_1000_rps']:.3%}")  # fmt: skip
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
