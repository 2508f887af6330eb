"""Benchmark: the control plane at scale, one reconcile pass over 1,000 nodes and 30,000 instances.

A Swarm of 1,000 workers in zones a/b/c (plus 3 drained managers) is FakeSwarmAPI, the
in-memory manager that passes the same contract tests as a real one
(tests/cluster/test_swarm_api_contract.py). The store is real (SQLite in a temporary
directory) with 1,000 tenants and 10,000 apps of 3 replicas, each with its release and a
verified custom domain. The real Reconciler runs over SwarmWorkloads(fake), with a health source
that passes every task that runs on a live node (what a checker reaching its port would find)
and the real nginx renderer (the config is rendered and compared; nginx's own ``nginx -t`` and
reload at 10,000 domains are bench/ingress_scale.py's).

Measured, each pass with its wall time, its phases and its peak Python memory (tracemalloc):

- **create**: a server creates the 10,000 services (an empty swarm);
- **adopt**: a new server (fresh backend, no instance rows in the store) adopts 30,000 tasks;
- **steady**: nothing changed (median of ``--steady`` passes);
- **node lost**: one worker goes down (``set_node_state``): Swarm replaces its tasks elsewhere,
  Berth unroutes the lost ones and routes the replacements.

Phases: observe (the backend's listing), store read (desired state), store mirror (instance
rows and run intervals), plan (rollout and process groups), routes (route plan and render),
apply (the backend's writes), commit. Baseline in the same run: the same listing, routing and
render done purely in memory (no store, no backend memory): the floor of a pass.

The timed run and the memory run are separate (tracemalloc slows Python several times): the
scenario runs twice from scratch. Prints a table and writes bench/results/control_plane_scale.json.

    python bench/control_plane_scale.py [--nodes 1000] [--apps 10000] [--replicas 3]
        [--tenants 1000] [--steady 5] [--profile] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import hashlib
import io
import json
import os
import platform
import pstats
import resource
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from sqlalchemy import delete, insert  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

import berth.controllers.reconciler as reconciler_module  # noqa: E402
from berth.agent.health import HealthState  # noqa: E402
from berth.controllers.reconciler import Reconciler  # noqa: E402
from berth.domain.routing import RoutedApp, plan_routes  # noqa: E402
from berth.proxy.model import ProxyConfig  # noqa: E402
from berth.proxy.nginx import NginxManager  # noqa: E402
from berth.proxy.render import render_nginx_conf  # noqa: E402
from berth.runtime.protocol import owner_labels  # noqa: E402
from berth.settings import Settings  # noqa: E402
from berth.store.db import make_engine, migrate  # noqa: E402
from berth.store.tables import (  # noqa: E402
    App,
    Domain,
    Instance,
    Meta,
    PlanRow,
    Release,
    Tenant,
)
from berth.swarm.fake import FakeSwarmAPI  # noqa: E402
from berth.workloads.protocol import WorkloadInstance  # noqa: E402
from berth.workloads.swarm import SwarmWorkloads  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "control_plane_scale.json"
INSTALLATION = "bench0scale0"
ZONES = ("a", "b", "c")
TARGET_SECONDS = 1.0
PHASES = (
    "observe",
    "store read",
    "store mirror",
    "plan",
    "routes",
    "  of which render",
    "apply",
    "commit",
)


# -- the world ------------------------------------------------------------------------------


def _id(kind: str, i: int) -> str:
    """Ids shaped like the store's (16 hex digits), the same in every run."""
    return hashlib.sha256(f"{kind}-{i}".encode()).hexdigest()[:16]


def seed_store(sessions: sessionmaker[Session], apps: int, tenants: int, replicas: int) -> None:
    """Tenants on one plan, apps serving their release (no deployment in progress), one
    verified custom domain each. Bulk inserts: the seed is not what is measured."""
    now = time.time()
    plan_id = _id("plan", 0)
    tenant_rows = [
        {"id": _id("tenant", t), "name": f"tenant-{t}", "kind": "personal", "plan_id": plan_id}
        for t in range(tenants)
    ]
    app_rows, release_rows, domain_rows = [], [], []
    for i in range(apps):
        app_id, release_id, tenant_id = _id("app", i), _id("release", i), _id("tenant", i % tenants)
        app_rows.append(
            {
                "id": app_id,
                "tenant_id": tenant_id,
                "name": f"app-{i}",
                "memory_mb": 128,
                "cpus_milli": 250,
                "port": 8080,
                "health_path": "/healthz",
                "scale": replicas,
                "next_version": 2,
                "target_release_id": release_id,
                "serving_release_id": release_id,
            }
        )
        digest = hashlib.sha256(f"image-{i}".encode()).hexdigest()
        release_rows.append(
            {
                "id": release_id,
                "app_id": app_id,
                "tenant_id": tenant_id,
                "version": 1,
                "image_ref": f"berth-app/app-{i}:v1",
                "image_id": f"sha256:{digest}",
                "config_json": json.dumps({"GREETING": f"hello {i}"}),
                "memory_mb": 128,
                "cpus_milli": 250,
                "port": 8080,
                "health_path": "/healthz",
                "pinned_image": f"10.0.0.1:5000/t-{tenant_id}/app-{i}@sha256:{digest}",
            }
        )
        domain_rows.append(
            {
                "id": _id("domain", i),
                "app_id": app_id,
                "tenant_id": tenant_id,
                "hostname": f"www.shop-{i}.example.org",
                "verified_at": now,
                "verified_by": "dns",
            }
        )
    with sessions() as s:
        s.execute(
            insert(PlanRow),
            [
                {
                    "id": plan_id,
                    "name": "bench",
                    "currency": "EUR",
                    "price_per_gb_hour_minor": 3,
                    "price_per_cpu_hour_minor": 2,
                }
            ],
        )
        s.execute(insert(Tenant), tenant_rows)
        s.execute(insert(App), app_rows)
        s.execute(insert(Release), release_rows)
        s.execute(insert(Domain), domain_rows)
        s.add(Meta(key="installation_id", value=INSTALLATION))
        s.commit()


def fake_swarm(nodes: int) -> FakeSwarmAPI:
    fake = FakeSwarmAPI()
    for m in range(3):
        fake.add_node(f"manager-{m + 1}", role="manager", availability="drain")
    for n in range(nodes):
        fake.add_node(f"node-{n + 1:04d}", labels={"zone": ZONES[n % len(ZONES)]})
    return fake


@dataclass
class LiveTaskHealth:
    """Every task that runs on a live node passes its check; the rest fail (a lost node's
    ports refuse). ``observe()`` is the health agent's round, run between passes."""

    fake: FakeSwarmAPI
    first_round: threading.Event = field(default_factory=threading.Event)
    states: dict[str, HealthState] = field(default_factory=dict)

    def observe(self) -> None:
        now = time.time()
        ready = {n["ID"] for n in self.fake.nodes() if n["Status"]["State"] == "ready"}
        states = {}
        for task in self.fake.tasks(labels=owner_labels(INSTALLATION)):
            passing = (
                task["Status"]["State"] == "running"
                and task["DesiredState"] == "running"
                and task.get("NodeID") in ready
            )
            if passing:
                states[task["ID"]] = self.states.get(task["ID"]) or HealthState(
                    healthy=True, last_checked=now
                )
        self.states = states
        self.first_round.set()

    def is_healthy(self, instance_id: str) -> bool:
        state = self.states.get(instance_id)
        return bool(state and state.healthy)

    def state_of(self, instance_id: str) -> HealthState | None:
        return self.states.get(instance_id)


class RenderingNginx(NginxManager):
    """The real renderer, no nginx process: ``apply`` renders and compares with the last
    config. Reloading 10,000 domains is measured in bench/ingress_scale.py."""

    def __init__(self, conf_dir: Path, phases: Phases) -> None:
        # Instances written into the text (no Lua dictionary without an nginx): the
        # simulation reads what is routed from the config it rendered.
        super().__init__(
            conf_dir, listen_host="127.0.0.1", listen_port=8080, dynamic_upstreams=False
        )
        self.phases = phases
        self.text = ""
        self.renders = 0

    def apply(self, cfg: ProxyConfig) -> bool:
        with self.phases.timing("  of which render"):
            text = self._render(cfg)
        self.renders += 1
        changed, self.text = text != self.text, text
        return changed

    def is_running(self) -> bool:
        return True

    def wait_for_generation(self, generation: int, timeout: float = 10.0) -> bool:
        return True


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Phases:
    """Seconds spent per phase in the current pass (nested phases are not subtracted)."""

    spent: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # this process's CPU time per phase

    @contextlib.contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.spent[phase] = self.spent.get(phase, 0.0) + time.perf_counter() - started
            self.cpu[phase] = self.cpu.get(phase, 0.0) + time.process_time() - cpu_started

    def clear(self) -> None:
        self.spent.clear()
        self.cpu.clear()

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.timing(phase):
                return fn(*args, **kwargs)

        return timed


def instrument(reconciler: Reconciler, phases: Phases) -> list[str]:
    """Time the reconciler's steps where they are; returns the steps it could not find (the
    loop's code may have moved on: those phases then show as part of "other")."""
    missing = []
    for phase, owner, name in (
        ("observe", reconciler.workloads, "instances"),
        ("apply", reconciler.workloads, "apply"),
        ("store mirror", reconciler, "_record_observed"),
        ("plan", reconciler, "_groups"),
        ("routes", reconciler, "_sync_routes"),
    ):
        fn = getattr(owner, name, None)
        if fn is None:
            missing.append(name)
            continue
        setattr(owner, name, phases.wrap(phase, fn))
    return missing


@contextlib.contextmanager
def module_phases(phases: Phases) -> Iterator[list[str]]:
    """Time the module-level steps the reconciler calls (imported into its module)."""
    saved: dict[str, Any] = {}
    missing = []
    for phase, name in (
        ("store read", "load_apps"),
        ("store mirror", "record_intervals"),
        ("plan", "plan_rollout"),
    ):
        fn = getattr(reconciler_module, name, None)
        if fn is None:
            missing.append(name)
            continue
        saved[name] = fn
        setattr(reconciler_module, name, phases.wrap(phase, fn))
    try:
        yield missing
    finally:
        for name, fn in saved.items():
            setattr(reconciler_module, name, fn)


def timed_sessions(engine: Any, phases: Phases) -> sessionmaker[Session]:
    class TimedSession(Session):
        def commit(self) -> None:
            with phases.timing("commit"):
                super().commit()

    return sessionmaker(bind=engine, expire_on_commit=False, class_=TimedSession)


# -- one scenario ---------------------------------------------------------------------------


@dataclass
class PassResult:
    seconds: float
    phases: dict[str, float]
    peak_bytes: int | None = None
    # This process's CPU time in the pass and its phases: on a shared machine, wall time also
    # counts the time other processes held the CPU.
    cpu_seconds: float = 0.0
    cpu_phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        known = sum(v for k, v in self.phases.items() if not k.startswith(" "))
        return {
            "seconds": round(self.seconds, 4),
            "cpu_seconds": round(self.cpu_seconds, 4),
            "phases_seconds": {k: round(v, 4) for k, v in self.phases.items()},
            "other_seconds": round(max(0.0, self.seconds - known), 4),
            "phases_cpu_seconds": {k: round(v, 4) for k, v in self.cpu_phases.items()},
            "other_cpu_seconds": round(
                max(
                    0.0,
                    self.cpu_seconds
                    - sum(v for k, v in self.cpu_phases.items() if not k.startswith(" ")),
                ),
                4,
            ),
            "peak_python_bytes": self.peak_bytes,
        }


@dataclass
class World:
    fake: FakeSwarmAPI
    health: LiveTaskHealth
    reconciler: Reconciler
    nginx: RenderingNginx
    phases: Phases
    settings: Settings
    sessions: sessionmaker[Session]


def new_server(
    settings: Settings, engine: Any, fake: FakeSwarmAPI, work: Path, phases: Phases
) -> World:
    """A Berth server's controllers over the swarm: a fresh backend, health source and ingress."""
    sessions = timed_sessions(engine, phases)
    health = LiveTaskHealth(fake)
    health.observe()
    nginx = RenderingNginx(work / f"nginx-{time.monotonic_ns()}", phases)
    workloads = SwarmWorkloads(fake, INSTALLATION)
    reconciler = Reconciler(settings, sessions, workloads, nginx, health)  # type: ignore[arg-type]
    missing = instrument(reconciler, phases)
    if missing:
        print(f"note: not timed separately (moved?): {', '.join(missing)}")
    return World(fake, health, reconciler, nginx, phases, settings, sessions)


def measured_pass(world: World, trace: bool, profile: cProfile.Profile | None) -> PassResult:
    world.phases.clear()
    gc.collect()
    if trace:
        tracemalloc.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    try:
        world.reconciler.run_once()
    finally:
        if profile is not None:
            profile.disable()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        peak = None
        if trace:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    return PassResult(elapsed, dict(world.phases.spent), peak, cpu, dict(world.phases.cpu))


def lose_a_node(world: World) -> tuple[str, int]:
    """A zone-a worker with tasks on it goes down; the health agent sees its ports refuse."""
    counts: dict[str, int] = {}
    for task in world.fake.tasks(labels=owner_labels(INSTALLATION)):
        if task["DesiredState"] == "running" and task.get("NodeID"):
            counts[task["NodeID"]] = counts.get(task["NodeID"], 0) + 1
    node_id = max(counts, key=lambda n: (counts[n], n))
    world.fake.set_node_state(node_id, "down")
    world.health.observe()
    return node_id, counts[node_id]


def check_converged(world: World, apps: int, replicas: int) -> dict[str, int]:
    """What the pass left: every app routed to its replicas, one instance row each."""
    instances = world.reconciler.workloads.instances()
    running = [i for i in instances if i.state == "running"]
    with world.sessions() as s:
        rows = s.query(Instance).filter(Instance.state == "running").count()
    routed = len(world.reconciler.routed)
    want = apps * replicas
    if len(running) != want or routed != want or rows != want:
        raise SystemExit(
            f"not converged: {len(running)} running, {routed} routed, {rows} rows; want {want}"
        )
    return {"running": len(running), "routed": routed, "instance_rows": rows}


def scenario(args: argparse.Namespace, trace: bool, profile: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="berth-scale-bench-") as tmp:
        work = Path(tmp)
        settings = Settings(home=work, database_url="")
        engine = make_engine(settings.resolved_database_url)
        try:
            migrate(engine)
            t0 = time.perf_counter()
            seed_store(
                sessionmaker(bind=engine, expire_on_commit=False),
                args.apps,
                args.tenants,
                args.replicas,
            )
            fake = fake_swarm(args.nodes)
            setup = time.perf_counter() - t0
            phases = Phases()
            with module_phases(phases):
                out = run_passes(args, settings, engine, fake, work, phases, trace, profile)
            out["setup_seconds"] = round(setup, 2)
            return out
        finally:
            engine.dispose()


def run_passes(
    args: argparse.Namespace,
    settings: Settings,
    engine: Any,
    fake: FakeSwarmAPI,
    work: Path,
    phases: Phases,
    trace: bool,
    profile: bool,
) -> dict[str, Any]:
    profiles: dict[str, cProfile.Profile] = {}

    def prof(name: str) -> cProfile.Profile | None:
        if not profile:
            return None
        return profiles.setdefault(name, cProfile.Profile())

    # A first server creates every service, then is gone before it recorded any instance.
    creator = new_server(settings, engine, fake, work, phases)
    create = measured_pass(creator, False, None)  # not traced: it is not a target, and slow
    creator.reconciler.workloads.close()
    with engine.begin() as conn:  # the instance rows are the next server's to write
        conn.execute(delete(Instance))

    world = new_server(settings, engine, fake, work, phases)
    adopt = measured_pass(world, trace, prof("adopt"))
    world.health.observe()
    settle = [measured_pass(world, trace, None) for _ in range(2)]  # routed ones are recorded
    converged = check_converged(world, args.apps, args.replicas)
    steady = [
        measured_pass(world, trace, prof("steady")) for _ in range(1 if trace else args.steady)
    ]
    renders_before = world.nginx.renders
    text_before = world.nginx.text
    node_id, lost = lose_a_node(world)
    loss = measured_pass(world, trace, prof("node lost"))
    rerouted = text_before != world.nginx.text
    after_loss = check_converged(world, args.apps, args.replicas)
    return {
        "create": create.as_dict(),
        "adopt": adopt.as_dict(),
        "settle": [p.as_dict() for p in settle],
        "converged": converged,
        "steady": [p.as_dict() for p in steady],
        "steady_median_seconds": round(statistics.median(p.seconds for p in steady), 4),
        "steady_median_cpu_seconds": round(statistics.median(p.cpu_seconds for p in steady), 4),
        "node_lost": {
            **loss.as_dict(),
            "node": node_id,
            "instances_on_it": lost,
            "config_changed": rerouted,
            "renders": world.nginx.renders - renders_before,
            "after": after_loss,
        },
        "config_bytes": len(world.nginx.text.encode()),
        "profiles": {name: top_of(p) for name, p in profiles.items()},
        "floor": floor_pass(args, fake, work) if not trace else None,
    }


def top_of(profile: cProfile.Profile, lines: int = 25) -> str:
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(lines)
    return text.getvalue()


# -- the floor: the same pass done purely in memory -----------------------------------------


def floor_pass(args: argparse.Namespace, fake: FakeSwarmAPI, work: Path) -> dict[str, Any]:
    """Listing, routing and rendering the same swarm with no store, no backend memory, no
    mirror: what any control plane of this shape must at least do each pass."""
    nginx = NginxManager(work / "floor", listen_host="127.0.0.1", listen_port=8080)
    base_domain = Settings.model_fields["base_domain"].default
    apps = [
        RoutedApp(
            _id("app", i),
            f"app-{i}",
            _id("tenant", i % args.tenants),
            (f"app-{i}.{base_domain}", f"www.shop-{i}.example.org"),
            frozenset({f"{_id('release', i)}:0"}),
        )
        for i in range(args.apps)
    ]
    samples, cpu = [], []
    for _ in range(3):
        started, cpu_started = time.perf_counter(), time.process_time()
        tasks = fake.tasks(labels=owner_labels(INSTALLATION))
        nodes = {n["ID"]: n["Status"]["Addr"] for n in fake.nodes()}
        services = {s["ID"]: s["Spec"]["Labels"] for s in fake.services()}
        instances = []
        for t in tasks:
            if t["DesiredState"] != "running":
                continue
            labels = services[t["ServiceID"]]
            ports = (t["Status"].get("PortStatus") or {}).get("Ports") or []
            instances.append(
                WorkloadInstance(
                    id=t["ID"],
                    group=labels["berth.group"],
                    tenant_id=labels["berth.tenant"],
                    app_id=labels["berth.app"],
                    revision=labels["berth.revision"],
                    state="running",
                    address=nodes.get(t.get("NodeID", "")),
                    port=ports[0]["PublishedPort"] if ports else None,
                )
            )
        routes, _ = plan_routes(apps, instances, lambda _id: True)
        render_nginx_conf(nginx.config(routes, 1), nginx.paths)
        samples.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return {
        "seconds": round(statistics.median(samples), 4),
        "cpu_seconds": round(statistics.median(cpu), 4),
        "samples": [round(x, 4) for x in samples],
    }


# -- output ---------------------------------------------------------------------------------


def _mib(peak: int | None) -> str:
    return f"{peak / 2**20:>13.1f} MiB" if peak is not None else f"{'-':>17}"


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f} s"


def print_table(args: argparse.Namespace, timed: dict[str, Any], traced: dict[str, Any]) -> None:
    steady_med = min(
        timed["steady"], key=lambda p: abs(p["seconds"] - timed["steady_median_seconds"])
    )
    columns = {
        "create": (timed["create"], traced["create"]),
        "adopt": (timed["adopt"], traced["adopt"]),
        "steady (median)": (steady_med, traced["steady"][0]),
        "node lost": (timed["node_lost"], traced["node_lost"]),
    }
    print(
        f"Control plane at {args.nodes:,} nodes, {args.apps:,} apps x {args.replicas} = "
        f"{args.apps * args.replicas:,} instances, {args.tenants:,} tenants "
        f"(target: steady and node-lost passes <= {TARGET_SECONDS:.1f} s)"
    )
    print(f"{'':22}" + "".join(f"{name:>17}" for name in columns))
    print(f"{'pass':22}" + "".join(f"{_fmt(t['seconds']):>17}" for t, _ in columns.values()))
    print(
        f"{'  CPU time of the pass':22}"
        + "".join(f"{_fmt(t['cpu_seconds']):>17}" for t, _ in columns.values())
    )
    print("  CPU time per phase (share of the pass's CPU time):")
    for phase in (*PHASES, "other"):
        cells = []
        for t, _ in columns.values():
            if phase == "other":
                value = t["other_cpu_seconds"]
            else:
                value = t["phases_cpu_seconds"].get(phase, 0.0)
            share = value / t["cpu_seconds"] if t["cpu_seconds"] else 0.0
            cells.append(f"{value:.3f} ({share:4.0%})")
        print(f"{'  ' + phase:22}" + "".join(f"{c:>17}" for c in cells))
    print(
        f"{'peak Python memory':22}"
        + "".join(_mib(tr["peak_python_bytes"]) for _, tr in columns.values())
    )
    print(
        f"{'pass under tracemalloc':22}"
        + "".join(f"{_fmt(tr['seconds']):>17}" for _, tr in columns.values())
    )
    loss = timed["node_lost"]
    print(
        f"node lost: {loss['instances_on_it']} instances on it, replaced and rerouted in one "
        f"pass (config changed: {loss['config_changed']}); steady passes: "
        + ", ".join(_fmt(p["seconds"]) for p in timed["steady"])
    )
    floor = timed["floor"]
    print(
        f"floor (list, route, render in memory, no store): {_fmt(floor['seconds'])} "
        f"(CPU {_fmt(floor['cpu_seconds'])})"
    )


LOAD_BEFORE = [round(v, 2) for v in os.getloadavg()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1_000)
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--steady", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    timed = scenario(args, trace=False, profile=args.profile)
    traced = timed if args.no_memory else scenario(args, trace=True, profile=False)
    if args.profile:
        for name, text in timed["profiles"].items():
            print(f"--- cProfile: {name} ---\n{text}")
    print_table(args, timed, traced)
    steady, loss = timed["steady_median_seconds"], timed["node_lost"]["seconds"]
    result = {
        "nodes": args.nodes,
        "apps": args.apps,
        "replicas": args.replicas,
        "instances": args.apps * args.replicas,
        "tenants": args.tenants,
        "target_seconds": TARGET_SECONDS,
        "meets_target": steady <= TARGET_SECONDS and loss <= TARGET_SECONDS,
        "meets_target_in_cpu_time": (
            timed["steady_median_cpu_seconds"] <= TARGET_SECONDS
            and timed["node_lost"]["cpu_seconds"] <= TARGET_SECONDS
        ),
        "load_average_before": LOAD_BEFORE,
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
        "timed": {k: v for k, v in timed.items() if k != "profiles"},
        "traced": {k: v for k, v in traced.items() if k != "profiles"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
