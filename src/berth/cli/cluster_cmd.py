"""``berth cluster ...``: move this installation from one machine to a Docker Swarm."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from berth.cli.client import client
from berth.cli.output import JsonOpt, console, emit

cluster_app = typer.Typer(help="Run Berth on many machines (Docker Swarm).", no_args_is_help=True)


@cluster_app.command("init")
def cluster_init(
    advertise_addr: Annotated[
        str | None,
        typer.Option(help="This machine's address (or interface) the other nodes reach."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make the engine Berth talks to a Swarm manager and move the apps onto the swarm.

    Safe to run twice: on a manager it changes nothing."""
    body = {"advertise_addr": advertise_addr} if advertise_addr else {}
    data = client().post("/admin/cluster/init", json=body)

    def human(d: dict[str, Any]) -> None:
        if d["changed"]:
            console.print(f"Swarm created: this machine is its manager at {d['address']}")
        else:
            console.print(f"Already a Swarm manager at {d['address']}: nothing changed")
        if d["backend_changed"]:
            console.print("The installation now runs on the swarm backend: apps move over.")
        console.print(
            "Next: on each new machine (Docker Engine only), run the line that "
            f"`{d['next_step']}` prints (`--manager` for a manager)."
        )

    emit(data, as_json, human)


@cluster_app.command("status")
def cluster_status(as_json: JsonOpt = False) -> None:
    """Which backend the installation runs on."""
    data = client().get("/admin/cluster")
    emit(
        data,
        as_json,
        lambda d: console.print(
            f"backend: {d['backend']}"
            + (f" (manager node {d['manager_node_id'][:12]})" if d["manager_node_id"] else "")
        ),
    )
