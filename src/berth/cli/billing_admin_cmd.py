"""``berth admin billing``: where metering stands, for operators."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer

from berth.cli.client import client
from berth.cli.output import JsonOpt, ago, console, emit, table

billing_admin_app = typer.Typer(
    help="Billing's state: hours metered, nodes' reports awaited.", no_args_is_help=True
)


def _at(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _show(d: dict[str, Any]) -> None:
    console.print(f"Metered until:     {_at(d['metered_until'])}", highlight=False)
    if d["reported_through"] is None:
        console.print("Reported through:  - (no reconciler pass yet: nothing is billed)")
    else:
        console.print(f"Reported through:  {_at(d['reported_through'])}", highlight=False)
    console.print(f"Closable until:    {_at(d['closable_until'])}", highlight=False)
    if d["hours_waiting"]:
        console.print(f"Hours waiting for nodes' reports: {d['hours_waiting']}", highlight=False)
    rows = [(h["node"], h["state"], ago(h["since"]), "waited for") for h in d["held_by"]]
    wait = int(d["node_wait_seconds"])
    rows += [
        (h["node"], h["state"], ago(h["since"]), f"not waited for (silent > {wait}s)")
        for h in d["not_waited_for"]
    ]
    if rows:
        table("Nodes holding billing back", ["NODE", "STATE", "LAST SEEN", "BILLING"], rows)
    else:
        console.print("No node holds billing back.")


@billing_admin_app.command("status")
def billing_status(as_json: JsonOpt = False) -> None:
    """Hours metered, up to when every node's reports are in, and which nodes hold that back."""
    emit(client().get("/admin/billing/status"), as_json, _show)
