"""``berth nodes ...``: the machines of the swarm (operators only).

``drain`` asks the reconciler for a start-first drain and follows its progress.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any
from urllib.parse import quote

import typer

from berth.cli.client import CliError, client
from berth.cli.output import JsonOpt, ago, console, emit, table

nodes_app = typer.Typer(help="The machines Berth runs on (operators).", no_args_is_help=True)


def _path(node: str) -> str:
    return f"/admin/nodes/{quote(node, safe='')}"


def _size(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f}G"
    return f"{n / (1 << 20):.0f}M"


def _cpus(nano: int) -> str:
    return f"{nano / 1e9:g}"


def _reserved(row: dict[str, Any]) -> str:
    if not row["reserved_memory_bytes"] and not row["reserved_nano_cpus"]:
        return "-"
    return f"{_size(row['reserved_memory_bytes'])} / {_cpus(row['reserved_nano_cpus'])} CPUs"


def _seen(row: dict[str, Any]) -> str:
    if row["state"] == "ready":
        return "now"
    return ago(row["last_seen"]) or "-"


def _labels(row: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(row["labels"].items()) if k != "zone")


def _role(row: dict[str, Any]) -> str:
    return f"{row['role']} (leader)" if row["leader"] else row["role"]


@nodes_app.command("list")
def nodes_list(as_json: JsonOpt = False) -> None:
    """Every node: role, availability, state, zone, labels, capacity, reserved, instances."""
    data = client().get("/admin/nodes")
    emit(
        data,
        as_json,
        lambda rows: table(
            None,
            [
                "NAME",
                "ID",
                "ADDRESS",
                "ROLE",
                "AVAILABILITY",
                "STATE",
                "ZONE",
                "LABELS",
                "MEMORY",
                "CPUS",
                "RESERVED",
                "INSTANCES",
                "LAST SEEN",
            ],
            [
                (
                    r["name"],
                    r["id"][:12],
                    r["address"],
                    _role(r),
                    r["availability"],
                    r["state"],
                    r["zone"] or "",
                    _labels(r),
                    _size(r["memory_bytes"]),
                    _cpus(r["nano_cpus"]),
                    _reserved(r),
                    r["instances"],
                    _seen(r),
                )
                for r in rows
            ],
        ),
    )


@nodes_app.command("info")
def nodes_info(node: str, as_json: JsonOpt = False) -> None:
    """One node, with Berth's instances on it."""
    data = client().get(_path(node))

    def human(r: dict[str, Any]) -> None:
        rows = [
            ("name", r["name"]),
            ("id", r["id"]),
            ("address", r["address"]),
            ("role", _role(r) + (f", {r['reachability']}" if r["reachability"] else "")),
            ("availability", r["availability"]),
            ("state", r["state"] + (f" ({r['message']})" if r["message"] else "")),
            ("zone", r["zone"] or "-"),
            ("labels", _labels(r) or "-"),
            ("capacity", f"{_size(r['memory_bytes'])}, {_cpus(r['nano_cpus'])} CPUs"),
            (
                "reserved",
                f"{_size(r['reserved_memory_bytes'])}, {_cpus(r['reserved_nano_cpus'])} CPUs",
            ),
            ("instances", f"{r['instances']} running ({r['tasks']} tasks in all)"),
            ("engine", r["engine_version"] or "-"),
            ("last seen", _seen(r)),
        ]
        table(None, ["", ""], rows)
        tasks = r.get("berth_tasks") or []
        if tasks:
            table(
                None,
                ["INSTANCE", "APP", "STATE", "MEMORY", "CPUS"],
                [
                    (
                        t["id"][:12],
                        t["app"],
                        t["state"],
                        _size(t["memory_bytes"]),
                        _cpus(t["nano_cpus"]),
                    )
                    for t in tasks
                ],
            )

    emit(data, as_json, human)


@nodes_app.command("label")
def nodes_label(
    node: str,
    pairs: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE labels to set.")] = None,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", help="A label key to remove (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set or remove node labels (`zone` spreads and constrains apps, `ingress=true` runs the
    ingress there)."""
    values: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{pair!r} is not KEY=VALUE")
        if key in values:
            raise CliError(f"label {key!r} is given twice")
        values[key] = value
    if not values and not remove:
        raise CliError("give KEY=VALUE labels to set, or --remove KEY")
    data = client().post(_path(node) + "/labels", json={"set": values, "remove": remove or []})

    def human(r: dict[str, Any]) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))
        console.print(f"{r['name']}: {shown or 'no labels'}", markup=False)

    emit(data, as_json, human)


def _availability(node: str, action: str, as_json: bool) -> None:
    data = client().post(_path(node) + f"/{action}")

    def human(d: dict[str, Any]) -> None:
        name = d["node"]["name"]
        now = d["node"]["availability"]
        if not d["changed"]:
            console.print(f"{name} is already {now}: nothing changed", markup=False)
        elif action == "cordon":
            console.print(
                f"Cordoned {name}: no new instances go there; those running stay", markup=False
            )
        else:
            console.print(f"Uncordoned {name}: it takes new instances again", markup=False)

    emit(data, as_json, human)


@nodes_app.command("cordon")
def nodes_cordon(node: str, as_json: JsonOpt = False) -> None:
    """Place no new instances on NODE (those running there keep running)."""
    _availability(node, "cordon", as_json)


@nodes_app.command("uncordon")
def nodes_uncordon(node: str, as_json: JsonOpt = False) -> None:
    """Let NODE take new instances again."""
    _availability(node, "uncordon", as_json)


@nodes_app.command("drain")
def nodes_drain(
    node: str,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for replacements before giving up.")
    ] = 300.0,
    wait: Annotated[bool, typer.Option(help="Follow the drain until it ends.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Move NODE's instances away start-first: replacements start elsewhere and pass their
    checks before the node's instances leave the ingress and stop. Exits non-zero on timeout."""
    api = client()
    data = api.post(_path(node) + "/drain", json={"timeout_seconds": timeout})
    last = ""
    while wait and data["status"] in ("draining", "evicting"):
        if not as_json and data["message"] != last:
            last = data["message"]
            console.print(f"{data['node']}: {data['status']}: {last}", markup=False)
        time.sleep(1.0)
        data = api.get(_path(node) + "/drain")

    def human(d: dict[str, Any]) -> None:
        if d["status"] == "drained":
            console.print(f"Drained {d['node']}: no instance runs there any more", markup=False)
        elif d["status"] == "timed_out":
            console.print(f"{d['node']}: {d['message']}", markup=False)
        else:
            console.print(f"{d['node']}: {d['status']}: {d['message']}", markup=False)

    emit(data, as_json, human)
    if data["status"] == "timed_out":
        raise CliError(f"drain of {data['node']} timed out; the node stays cordoned")


@nodes_app.command("remove")
def nodes_remove(
    node: str,
    force: Annotated[
        bool, typer.Option("--force", help="Remove a live node that was not drained.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove NODE from the swarm. A node that is down can always be removed; a live one must
    be drained first (or --force)."""
    if (
        force
        and not yes
        and sys.stdin.isatty()
        and not typer.confirm(f"Remove {node} from the swarm although it may be running instances?")
    ):
        raise CliError("not removed")
    params = {"force": "true"} if force else {}
    data = client().delete(_path(node), params=params)
    emit(data, as_json, lambda d: console.print(d["message"], markup=False))


@nodes_app.command("join-command")
def nodes_join_command(
    manager: Annotated[bool, typer.Option("--manager", help="Join as a manager.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print the one command a new machine (Docker Engine only) runs to join the swarm."""
    data = client().get("/admin/cluster/join-command", params={"manager": str(manager).lower()})
    # Only the line on stdout, so that `$(berth nodes join-command)` is the command itself.
    emit(data, as_json, lambda d: print(d["command"]))
