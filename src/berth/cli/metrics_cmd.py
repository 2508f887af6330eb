"""``berth metrics APP [--since 1h]``: an app's traffic and its instances' CPU and memory, as
sparklines and tables in the terminal (``--json`` for the API's answer as is)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape

from berth.cli.client import client
from berth.cli.output import JsonOpt, console, emit, table

_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    """One block character per value, scaled to the largest; a gap (space) where none."""
    known = [v for v in values if v is not None]
    top = max(known, default=0.0)
    if top <= 0:
        return "".join(" " if v is None else _BLOCKS[0] for v in values)
    return "".join(
        " " if v is None else _BLOCKS[min(len(_BLOCKS) - 1, int(v / top * (len(_BLOCKS) - 1)))]
        for v in values
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _show(data: dict[str, Any]) -> None:
    points = data["points"]
    totals = data["totals"]
    rps = [p["requests_per_second"] for p in points]
    p95 = [p["p95_ms"] for p in points]
    console.print(
        f"[bold]{escape(data['app'])}[/] over {len(points)} steps of {data['step_seconds']} s",
        highlight=False,
    )
    console.print(f"requests/s  {sparkline(rps)}  max {max(rps, default=0):g}", highlight=False)
    console.print(
        f"p95         {sparkline(p95)}  max {_ms(max((v for v in p95 if v), default=None))}",
        highlight=False,
    )
    status = totals["status"]
    table(
        "Traffic",
        ["requests", "req/s", "2xx", "3xx", "4xx", "5xx", "bytes", "p50", "p95", "p99"],
        [[
            totals["requests"], f"{totals['requests_per_second']:g}",
            status["2xx"], status["3xx"], status["4xx"], status["5xx"],
            _bytes(totals["body_bytes"]),
            _ms(totals["p50_ms"]), _ms(totals["p95_ms"]), _ms(totals["p99_ms"]),
        ]],
    )  # fmt: skip
    if data["instances"]:
        table(
            "Instances",
            ["instance", "CPU (cores)", "CPU", "memory", "memory", "restarts"],
            [
                [
                    i["instance_id"],
                    f"{i['cpu_cores']:g}",
                    sparkline([p["cpu_cores"] for p in i["points"]]),
                    _bytes(i["memory_bytes"]),
                    sparkline([p["memory_bytes"] for p in i["points"]]),
                    i["restarts"],
                ]
                for i in data["instances"]
            ],
        )


def metrics(
    name: str,
    since: Annotated[str, typer.Option(help="How far back: 90s, 30m, 1h, 2d.")] = "1h",
    step: Annotated[str, typer.Option(help="Point spacing (default: about 60 points).")] = "",
    as_json: JsonOpt = False,
) -> None:
    """An app's requests/s, status classes, bytes and latency, and its instances' CPU,
    memory and restarts."""
    params = {"since": since, **({"step": step} if step else {})}
    data = client().get(f"/apps/{quote(name, safe='')}/metrics", params=params)
    emit(data, as_json, _show)
