"""The control-plane scale pass (bench/control_plane_scale.py) at a small size: what it leaves is
right, not how fast. The real reconciler, store (SQLite) and nginx renderer over SwarmWorkloads
on the fake Swarm: a new server adopts every task; a pass with nothing changed writes nothing
(no SQL write, no Swarm write, the same config); a lost node's instances leave the ingress and
the store in one pass, their replacements are routed, their run intervals closed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bench.control_plane_scale import (
    INSTALLATION,
    Phases,
    World,
    check_converged,
    fake_swarm,
    lose_a_node,
    new_server,
    seed_store,
)
from sqlalchemy import delete, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from berth.runtime.protocol import owner_labels
from berth.settings import Settings
from berth.store.db import make_engine, migrate
from berth.store.tables import Instance, RunIntervalRow

NODES, APPS, REPLICAS, TENANTS = 12, 20, 3, 5


@dataclass
class Scale:
    world: World
    engine: Engine
    writes: list[str]  # SQL writes sent since the list was last cleared


@pytest.fixture
def scale(tmp_path: Path) -> Iterator[Scale]:
    settings = Settings(home=tmp_path, database_url="")
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        seed_store(sessionmaker(bind=engine), APPS, TENANTS, REPLICAS)
        fake = fake_swarm(NODES)
        phases = Phases()
        creator = new_server(settings, engine, fake, tmp_path, phases)
        creator.reconciler.run_once()  # creates the services, records no instance yet
        with engine.begin() as conn:
            conn.execute(delete(Instance))
        world = new_server(settings, engine, fake, tmp_path, phases)
        writes: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
                writes.append(statement)

        event.listen(engine, "before_cursor_execute", record)
        yield Scale(world, engine, writes)
    finally:
        engine.dispose()


def settle(world: World, passes: int = 3) -> None:
    for _ in range(passes):
        world.reconciler.run_once()
        world.health.observe()


def running_tasks(world: World) -> dict[str, tuple[str, int]]:
    """Task id -> (node address, host port) of every task Swarm runs on a live node."""
    nodes = {n["ID"]: n for n in world.fake.nodes()}
    out = {}
    for task in world.fake.tasks(labels=owner_labels(INSTALLATION)):
        node = nodes.get(task.get("NodeID", ""))
        ports = (task["Status"].get("PortStatus") or {}).get("Ports") or []
        live = node is not None and node["Status"]["State"] == "ready"
        if live and task["DesiredState"] == "running" and ports:
            out[task["ID"]] = (node["Status"]["Addr"], ports[0]["PublishedPort"])
    return out


def instance_rows(world: World) -> dict[str, Instance]:
    with world.sessions() as s:
        return {r.container_id or "": r for r in s.scalars(select(Instance))}


def open_intervals(world: World) -> set[str]:
    with world.sessions() as s:
        return set(
            s.scalars(
                select(RunIntervalRow.container_id).where(RunIntervalRow.stopped_at.is_(None))
            )
        )


def test_a_new_server_adopts_every_task_and_routes_it(scale: Scale) -> None:
    world = scale.world
    settle(world)
    assert check_converged(world, APPS, REPLICAS)["routed"] == APPS * REPLICAS
    tasks = running_tasks(world)
    rows = instance_rows(world)
    assert set(rows) == set(tasks) == world.reconciler.routed
    for task_id, (address, port) in tasks.items():
        row = rows[task_id]
        assert (row.state, row.address, row.host_port) == ("running", address, port)
        assert row.healthy and row.reason == ""
        assert f"server {address}:{port}" in world.nginx.text
    assert open_intervals(world) == set(tasks)
    # Every app's replicas are spread over the three zones.
    zones = {n["Status"]["Addr"]: n["Spec"]["Labels"].get("zone") for n in world.fake.nodes()}
    by_app: dict[str, set[str | None]] = {}
    for task_id, (address, _) in tasks.items():
        by_app.setdefault(rows[task_id].app_id, set()).add(zones[address])
    assert all(z == {"a", "b", "c"} for z in by_app.values())


def test_a_pass_with_nothing_changed_writes_nothing(scale: Scale) -> None:
    world = scale.world
    settle(world)
    swarm_writes, text, before = world.fake.writes, world.nginx.text, instance_rows(world)
    scale.writes.clear()
    world.reconciler.run_once()
    assert scale.writes == []
    assert world.fake.writes == swarm_writes
    assert world.nginx.text == text
    after = instance_rows(world)
    assert {k: r.updated_at for k, r in after.items()} == {
        k: r.updated_at for k, r in before.items()
    }


def test_a_lost_node_leaves_the_ingress_and_the_store_in_one_pass(scale: Scale) -> None:
    world = scale.world
    settle(world)
    before = running_tasks(world)
    _, lost_count = lose_a_node(world)
    assert lost_count > 0
    now = running_tasks(world)
    lost = set(before) - set(now)
    replacements = set(now) - set(before)
    assert len(lost) == len(replacements) == lost_count
    scale.writes.clear()
    world.reconciler.run_once()
    # Only what changed was written: the lost rows went, the replacements' rows came, the
    # lost intervals were closed and the new ones opened (a handful of statements, not one
    # per instance).
    assert 0 < len(scale.writes) < APPS * REPLICAS
    assert world.reconciler.routed == set(now)
    for address, port in (before[t] for t in lost):
        assert f"server {address}:{port}" not in world.nginx.text
    for address, port in (now[t] for t in replacements):
        assert f"server {address}:{port}" in world.nginx.text
    rows = instance_rows(world)
    assert set(rows) == set(now)
    assert all(rows[t].state == "running" for t in replacements)
    assert open_intervals(world) == set(now)
    with world.sessions() as s:
        closed = s.scalar(
            select(func.count())
            .select_from(RunIntervalRow)
            .where(
                RunIntervalRow.container_id.in_(lost),
                RunIntervalRow.stopped_at.is_not(None),
            )
        )
    assert closed == lost_count
    settle(world, passes=1)
    assert check_converged(world, APPS, REPLICAS)["instance_rows"] == APPS * REPLICAS
