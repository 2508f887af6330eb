"""``berth certs ...``: the HTTPS certificates of your apps' hostnames, and your own uploads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from berth.cli.client import CliError, client
from berth.cli.output import JsonOpt, console, emit, table

certs_app = typer.Typer(help="HTTPS certificates of your apps' hostnames.", no_args_is_help=True)

MAX_PEM_BYTES = 64 * 1024


def cert_state(cert: dict[str, Any] | None) -> str:
    """One cell: ``issued (acme, until 2027-03-01)``, ``failed: reason (retry ...)``, ..."""
    if not cert:
        return "-"
    state = str(cert.get("state", "?"))
    if state == "issued":
        until = str(cert.get("not_after") or "")[:10]
        return f"issued ({cert.get('source')}, until {until})"
    reason = cert.get("reason") or ""
    if state == "failed":
        retry = str(cert.get("next_retry") or "")[:16].replace("T", " ")
        return f"failed: {reason}" + (f" (next try {retry} UTC)" if retry else "")
    return f"{state}: {reason}" if reason else state


def _read_pem(path: Path, what: str) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_PEM_BYTES:
            raise CliError(f"{what} {path} is {size} bytes; a PEM file is at most 64 KB here")
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the {what} {path}: {exc}") from None


@certs_app.command("list")
def certs_list(as_json: JsonOpt = False) -> None:
    """Every hostname of your apps and its certificate (issued, pending, failed with the CA's
    reason and the next try, or off)."""
    data = client().get("/certs")
    emit(
        data,
        as_json,
        lambda rows: table(
            None, ["HOSTNAME", "CERTIFICATE"], [(c["domain"], cert_state(c)) for c in rows]
        ),
    )


@certs_app.command("add")
def certs_add(
    domain: str,
    cert: Annotated[Path, typer.Option("--cert", help="PEM file: the certificate, then its chain")],
    key: Annotated[Path, typer.Option("--key", help="PEM file: its private key")],
    as_json: JsonOpt = False,
) -> None:
    """Serve your own certificate for DOMAIN (one of your apps' hostnames) instead of an ACME
    one. It is checked first: the key matches, it covers DOMAIN, it is valid now."""
    body = {"domain": domain, "cert": _read_pem(cert, "certificate"), "key": _read_pem(key, "key")}
    data = client().post("/certs", json=body)
    emit(data, as_json, lambda c: console.print(f"{c['domain']}: {cert_state(c)}", markup=False))


@certs_app.command("remove")
def certs_remove(domain: str, as_json: JsonOpt = False) -> None:
    """Stop serving your uploaded certificate for DOMAIN (it goes back to ACME)."""
    client().delete(f"/certs/{quote(domain, safe='')}")
    emit(
        {"removed": domain},
        as_json,
        lambda _: console.print(f"Removed the certificate of {domain}"),
    )
