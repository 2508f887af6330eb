"""``berth db ...`` (a tenant's managed databases) and ``berth admin db-servers ...`` (the
operator's shared database servers). Everything goes through the API."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.markup import escape

from berth.cli.client import ApiClient, CliError, client
from berth.cli.output import JsonOpt, console, emit, table

db_app = typer.Typer(
    help="Managed databases (PostgreSQL, MariaDB, Redis) on the platform's shared servers.",
    no_args_is_help=True,
)
db_servers_app = typer.Typer(
    help="Shared database servers tenants' databases go on (operators).", no_args_is_help=True
)


def _db(name: str) -> str:
    return f"/databases/{quote(name, safe='')}"


def _server(name: str) -> str:
    return f"/admin/db-servers/{quote(name, safe='')}"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else "-"


def _state(d: dict[str, Any]) -> str:
    if d["state"] == "deleted" and d["engine"] == "memcached":
        return "deleted (nothing kept)"
    if d["state"] == "deleted":
        return f"deleted, dropped after {_when(d['purge_after'])}"
    if d["state"] == "active" and not d["write_allowed"]:
        return "active (writes refused: over its size)"
    return str(d["state"])


def parse_size(text: str, option: str = "--size") -> int:
    """'512M', '2G' or a number of MB, as MB (the server checks the range)."""
    value = text.strip().upper().removesuffix("B")
    scale = 1024 if value.endswith("G") else 1
    digits = value.removesuffix("G").removesuffix("M")
    if not digits.isdigit() or not digits.isascii() or len(digits) > 9:
        raise CliError(f"{option} is like 512M or 2G, not {text!r}")
    return int(digits) * scale


def _size(mb: int) -> str:
    return f"{mb // 1024}G" if mb % 1024 == 0 else f"{mb}M"


def _used(d: dict[str, Any]) -> str:
    limit = _size(d["size_mb"])
    used = d.get("bytes_used")
    if used is None:
        return f"not measured yet / {limit}"
    percent = f" ({100 * used / d['size_limit_bytes']:.0f}%)" if d.get("size_limit_bytes") else ""
    return f"{used / (1024 * 1024):.1f}M / {limit}{percent}"


def _old_credential(d: dict[str, Any]) -> str:
    if d["old_credential"] == "pending_revocation":
        return (
            "pending revocation (once every attached app serves the new URL; at the latest "
            f"{_when(d.get('old_credential_revoke_by'))})"
        )
    return f"revoked at {_when(d.get('old_credential_revoked_at'))}"


def _writes(d: dict[str, Any]) -> str:
    text = "refused (over its size quota)" if d.get("writes_refused") else "allowed"
    if d.get("usage_error"):  # says what is pending, or what could not be measured, and why
        return f"{text} - {d['usage_error']}"
    return f"{text}, not yet applied on the server" if d.get("quota_pending") else text


def _connections(d: dict[str, Any]) -> str:
    open_now = d.get("connections")
    limit = d["connection_limit"]
    return f"{open_now} open / {limit}" if open_now is not None else f"limit {limit}"


def _print_releases(items: list[dict[str, Any]]) -> None:
    for item in items:
        release, dep = item.get("release"), item.get("deployment") or {}
        if item.get("error"):
            console.print(
                f"  {escape(item['app'])}: [red]not re-released[/]: {escape(item['error'])}"
            )
        elif release:
            console.print(
                f"  {escape(item['app'])}: v{release['version']} rolling out "
                f"({escape(dep.get('status', ''))})"
            )
        else:
            console.print(f"  {escape(item['app'])}: config set (no release yet)")


# -- tenants --------------------------------------------------------------------------------


@db_app.command("create")
def db_create(
    name: str,
    engine: Annotated[str, typer.Option(help="postgres, mariadb, redis or memcached.")],
    plan: Annotated[
        str | None,
        typer.Option(
            help="shared (default) or dedicated (a server of its own on your network; "
            "memcached's only plan)."
        ),
    ] = None,
    size: Annotated[
        str | None,
        typer.Option(
            help="Storage quota, like 512M or 2G (default 1G); memcached's and a dedicated "
            "redis's memory (default 64M)."
        ),
    ] = None,
    connections: Annotated[
        int | None, typer.Option(help="Concurrent connections allowed (default 20).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a database on the least loaded shared server of the engine; a memcached one is
    a container of its own on your network."""
    body: dict[str, Any] = {"name": name, "engine": engine}
    if plan is not None:
        body["plan"] = plan
    if size is not None:
        body["size_mb"] = parse_size(size)
    if connections is not None:
        body["connections"] = connections
    data = client().post("/databases", json=body)
    emit(
        data,
        as_json,
        lambda d: console.print(
            f"Created {escape(d['engine'])} database [bold]{escape(d['name'])}[/] "
            f"({_size(d['size_mb'])}, {d['connection_limit']} connections). "
            f"`berth db attach APP {escape(d['name'])}` gives an app its URL."
        ),
    )


@db_app.command("list")
def db_list(as_json: JsonOpt = False) -> None:
    """Your databases, deleted ones (until they are dropped) included."""
    data = client().get("/databases")
    emit(
        data,
        as_json,
        lambda rows: table(
            None,
            ["NAME", "ENGINE", "STATE", "SIZE", "CONNECTIONS", "ATTACHED TO"],
            [
                (
                    d["name"],
                    d["engine"],
                    _state(d),
                    _size(d["size_mb"]),
                    d["connection_limit"],
                    ", ".join(a["app"] for a in d["attached"]) or "-",
                )
                for d in rows
            ],
        ),
    )


@db_app.command("info")
def db_info(name: str, as_json: JsonOpt = False) -> None:
    """One database: engine, state, limits, where it is, which apps have its URL."""
    data = client().get(_db(name))

    def human(d: dict[str, Any]) -> None:
        rows = [
            ("name", d["name"]),
            ("engine", d["engine"]),
            ("plan", d["plan"]),
            ("state", _state(d)),
            ("size used / limit", _used(d)),
            ("writes", _writes(d)),
            ("last measured", _when(d.get("measured_at"))),
            ("connections", _connections(d)),
            ("address", f"{d['host']}:{d['port']}"),
            ("created", _when(d["created_at"])),
            *([("rotated", _when(d["rotated_at"]))] if d.get("rotated_at") else []),
            *([("old credential", _old_credential(d))] if d.get("old_credential") else []),
            (
                "attached to",
                ", ".join(f"{a['app']} ({a['var']})" for a in d["attached"]) or "-",
            ),
        ]
        if d["state"] == "deleted":
            rows.append(("deleted", _when(d["deleted_at"])))
            rows.append(("dropped after", _when(d["purge_after"])))
        table(None, ["", ""], rows)

    emit(data, as_json, human)


@db_app.command("credentials")
def db_credentials(name: str, as_json: JsonOpt = False) -> None:
    """The database's user, password and URL (for roles that may deploy)."""
    data = client().get(f"{_db(name)}/credentials")

    def human(c: dict[str, Any]) -> None:
        rows = [
            ("host", f"{c['host']}:{c['port']}"),
            ("database", c["database"]),
            ("user", c["username"]),
            ("password", c["password"]),
            *([("key prefix", c["key_prefix"])] if c["key_prefix"] else []),
            ("url", c["url"]),
            *([("note", c["note"])] if c.get("note") else []),
        ]
        table(None, ["", ""], rows)

    emit(data, as_json, human)


@db_app.command("rotate")
def db_rotate(name: str, as_json: JsonOpt = False) -> None:
    """A new password; every attached app gets the new URL in a new release (start-first)."""
    data = client().post(f"{_db(name)}/rotate")

    def human(d: dict[str, Any]) -> None:
        console.print(f"New password for [bold]{escape(name)}[/] (`berth db credentials {name}`)")
        console.print(
            "The old one keeps working until every attached app serves the new URL "
            f"(`berth db info {name}` says when it is revoked)"
        )
        _print_releases(d["releases"])

    emit(data, as_json, human)


@db_app.command("delete")
def db_delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a database: closed at once (no access), its data kept until it is dropped."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"Delete database {name}?"):
        raise CliError("not deleted")
    data = _slow_client().delete(_db(name))  # a final backup is taken first

    def human(d: dict[str, Any]) -> None:
        if d["engine"] == "memcached":
            # A cache keeps nothing: its container is gone, and the name is free again.
            console.print(f"Deleted memcached database [bold]{escape(name)}[/] (nothing kept)")
            return
        if d.get("plan") == "dedicated":
            # Its own server went with it; the final backup is what is kept.
            console.print(
                f"Deleted database [bold]{escape(name)}[/]: its server and its volume are gone; "
                f"a verified final backup (`berth db backups {escape(name)}`) is kept until "
                f"{_when(d['purge_after'])} (`berth db restore {escape(name)} BACKUP --into "
                "NEW` brings it back)"
            )
            return
        console.print(
            f"Deleted database [bold]{escape(name)}[/]: closed now, its data and a verified "
            f"final backup (`berth db backups {escape(name)}`) are kept until "
            f"{_when(d['purge_after'])} and dropped then"
        )

    emit(data, as_json, human)


@db_app.command("attach")
def db_attach(
    app: str,
    db: str,
    as_: Annotated[
        str | None,
        typer.Option("--as", help="Config key for the URL (DATABASE_URL / REDIS_URL)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Put the database's URL in the app's config: a new release, deployed start-first."""
    body: dict[str, Any] = {"app": app}
    if as_ is not None:
        body["as"] = as_
    data = client().post(f"{_db(db)}/attachments", json=body)

    def human(d: dict[str, Any]) -> None:
        console.print(f"Attached [bold]{escape(db)}[/] to [bold]{escape(app)}[/]")
        _print_releases([d])

    emit(data, as_json, human)


@db_app.command("detach")
def db_detach(app: str, db: str, as_json: JsonOpt = False) -> None:
    """Take the database's URL out of the app's config (a new release)."""
    data = client().delete(f"{_db(db)}/attachments/{quote(app, safe='')}")

    def human(d: dict[str, Any]) -> None:
        console.print(f"Detached [bold]{escape(db)}[/] from [bold]{escape(app)}[/]")
        _print_releases([d])

    emit(data, as_json, human)


# -- operators ------------------------------------------------------------------------------


def _server_rows(s: dict[str, Any]) -> tuple[Any, ...]:
    return (
        s["name"],
        s["engine"],
        f"{s['host']}:{s['port']}",
        s["state"],
        f"{s['databases']}/{s['capacity']}",
        s["deleted_databases"],
        f"{s['load'] * 100:.0f}%",
    )


SERVER_COLUMNS = ["NAME", "ENGINE", "ADDRESS", "STATE", "DATABASES", "DELETED", "LOAD"]


@db_servers_app.command("add")
def servers_add(
    name: str,
    engine: Annotated[str, typer.Option(help="postgres, mariadb or redis.")],
    url: Annotated[
        str,
        typer.Option(
            help="Admin URL, like postgresql://admin:PASSWORD@10.0.0.5:5432/postgres; '-' reads "
            "it from standard input (keeps it out of the shell history). Kept on the Berth "
            "server only."
        ),
    ],
    host: Annotated[
        str | None, typer.Option(help="Address tenants' apps use (default: the URL's).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port tenants' apps use.")] = None,
    capacity: Annotated[int, typer.Option(help="Databases it may hold.")] = 500,
    as_json: JsonOpt = False,
) -> None:
    """Register a shared server: Berth checks it is safe for tenants and prepares it first."""
    if url == "-":
        url = sys.stdin.readline().strip()
    body: dict[str, Any] = {"name": name, "engine": engine, "url": url, "capacity": capacity}
    if host is not None:
        body["host"] = host
    if port is not None:
        body["port"] = port
    data = client().post("/admin/db-servers", json=body)
    emit(
        data,
        as_json,
        lambda s: console.print(
            f"Added {escape(s['engine'])} server [bold]{escape(s['name'])}[/] at "
            f"{escape(s['host'])}:{s['port']} (capacity {s['capacity']})"
        ),
    )


@db_servers_app.command("launch")
def servers_launch(
    name: str,
    engine: Annotated[str, typer.Option(help="redis, postgres or mariadb.")],
    listen: Annotated[
        str,
        typer.Option(
            help="An IPv4 address of this machine that tenants' instances reach (never all "
            "addresses: the server listens there only)."
        ),
    ],
    port: Annotated[int | None, typer.Option(help="Default: the engine's (6379).")] = None,
    memory: Annotated[
        str | None, typer.Option(help="The container's memory limit, like 512M or 2G.")
    ] = None,
    capacity: Annotated[int, typer.Option(help="Databases it may hold.")] = 500,
    as_json: JsonOpt = False,
) -> None:
    """Berth runs the server itself: a container of an image made offline from the distro's
    packages, its data on a volume that outlives restarts and upgrades; then it is registered
    like `db-servers add` (and its admin password stays on the Berth server)."""
    body: dict[str, Any] = {"name": name, "engine": engine, "listen": listen, "capacity": capacity}
    if port is not None:
        body["port"] = port
    if memory is not None:
        body["memory_mb"] = parse_size(memory, option="--memory")
    data = _slow_client().post("/admin/db-servers/launch", json=body)
    emit(
        data,
        as_json,
        lambda s: console.print(
            f"Launched {escape(s['engine'])} server [bold]{escape(s['name'])}[/] at "
            f"{escape(s['host'])}:{s['port']} (container berth-dbs-{escape(s['name'])}, data on "
            f"volume berth-dbs-{escape(s['name'])}-data)"
        ),
    )


@db_servers_app.command("list")
def servers_list(as_json: JsonOpt = False) -> None:
    """Every shared server: engine, state, databases held of its capacity."""
    data = client().get("/admin/db-servers")
    emit(data, as_json, lambda rows: table(None, SERVER_COLUMNS, [_server_rows(s) for s in rows]))


@db_servers_app.command("info")
def servers_info(name: str, as_json: JsonOpt = False) -> None:
    """One server, with what its databases hold and their open connections (asked now)."""
    data = client().get(_server(name))

    def human(s: dict[str, Any]) -> None:
        rows = list(zip(SERVER_COLUMNS, _server_rows(s), strict=True))
        if s["reachable"]:
            rows.append(("USAGE", f"{s['bytes_used'] / (1 << 20):.1f}M"))
            rows.append(("CONNECTIONS", s["connections"]))
        else:
            rows.append(("REACHABLE", f"no: {s['message']}"))
        table(None, ["", ""], rows)

    emit(data, as_json, human)


@db_servers_app.command("drain")
def servers_drain(name: str, as_json: JsonOpt = False) -> None:
    """No new databases go there; the ones it holds keep working."""
    data = client().post(f"{_server(name)}/drain")
    emit(data, as_json, lambda s: console.print(f"Draining [bold]{escape(s['name'])}[/]"))


@db_servers_app.command("activate")
def servers_activate(name: str, as_json: JsonOpt = False) -> None:
    """Take new databases again (undo a drain)."""
    data = client().post(f"{_server(name)}/activate")
    emit(data, as_json, lambda s: console.print(f"[bold]{escape(s['name'])}[/] is active"))


@db_servers_app.command("remove")
def servers_remove(name: str, as_json: JsonOpt = False) -> None:
    """Forget a server that holds no database (deleted ones kept for retention count)."""
    client().delete(_server(name))
    emit({"removed": name}, as_json, lambda _: console.print(f"Removed [bold]{escape(name)}[/]"))


@db_servers_app.command("purge")
def servers_purge(as_json: JsonOpt = False) -> None:
    """Drop now the deleted databases whose retention has ended."""
    data = client().post("/admin/databases/purge")

    def human(d: dict[str, Any]) -> None:
        console.print(f"Dropped {d['purged']} databases past their retention")
        for why in d["failed"]:
            console.print(f"  kept for the next pass: {escape(why)}")

    emit(data, as_json, human)


# -- backups --------------------------------------------------------------------------------


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _backup_state(b: dict[str, Any]) -> str:
    # Plain text: table cells are never markup (the reason is the server's words).
    if b["state"] == "failed":
        return f"FAILED: {b['reason']}"
    return str(b["state"])


def _backup_rows(rows: list[dict[str, Any]]) -> None:
    table(
        None,
        ["ID", "WHEN", "KIND", "SIZE", "STATE"],
        [
            (
                b["id"],
                _when(b["created_at"]),
                b["kind"] + (f" (kept until {_when(b['keep_until'])})" if b["keep_until"] else ""),
                _bytes(b["size_bytes"]) if b["state"] == "verified" else "-",
                _backup_state(b),
            )
            for b in rows
        ],
    )


def _slow_client() -> ApiClient:
    """A backup, a restore or a download takes as long as the database is big."""
    api = client()
    api.http.timeout = httpx.Timeout(None)
    return api


@db_app.command("backup")
def db_backup(name: str, as_json: JsonOpt = False) -> None:
    """Back up a database now. Answers once the backup was restored into a scratch database and
    found equal to the source (verified); a failed backup exits non-zero with its reason."""
    data = _slow_client().post(f"{_db(name)}/backups")

    def human(b: dict[str, Any]) -> None:
        tables = ", ".join(f"{escape(t)} {v[0]}" for t, v in sorted(b["tables"].items())[:8])
        console.print(
            f"Backup [bold]{b['id']}[/] of [bold]{escape(name)}[/]: verified, "
            f"{_bytes(b['size_bytes'])}, sha256 {b['sha256']}"
        )
        if tables:
            console.print(f"  restored and compared: {tables}")

    emit(data, as_json, human)


@db_app.command("backups")
def db_backups(name: str, as_json: JsonOpt = False) -> None:
    """A database's backups, newest first: id, when, size, state (failed ones with why)."""
    data = client().get(f"{_db(name)}/backups")
    emit(data, as_json, _backup_rows)
    if any(b["state"] == "failed" for b in data[:1]):
        raise CliError(f"the latest backup of {name} failed: {data[0]['reason']}")


@db_app.command("restore")
def db_restore(
    name: str,
    backup: str,
    into: Annotated[
        str | None, typer.Option("--into", help="Restore into a new database of this name.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore a verified backup into the database itself (its content replaced, its open
    sessions ended) or, with --into, into a new database."""
    if (
        into is None
        and not yes
        and sys.stdin.isatty()
        and not typer.confirm(f"Replace the content of {name} with backup {backup}?")
    ):
        raise CliError("not restored")
    body: dict[str, Any] = {"backup": backup, "into": into}
    data = _slow_client().post(f"{_db(name)}/restore", json=body)
    emit(
        data,
        as_json,
        lambda d: console.print(
            f"Restored backup {escape(backup)} into "
            f"{'the new database ' if d['new'] else ''}[bold]{escape(d['database']['name'])}[/]"
        ),
    )


@db_app.command("download")
def db_download(
    name: str,
    backup: str,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="File to write (default NAME-ID.dump).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the file.")] = False,
) -> None:
    """Download a verified backup's file; its sha256 is checked against the server's."""
    import hashlib
    import os
    import tempfile
    from pathlib import Path

    from berth.cli.client import _raise_for_error as raise_for_error

    target = Path(output or f"{name}-{backup}.dump")
    if target.exists() and not force:
        raise CliError(f"{target} exists: choose another --output, or --force")
    api = _slow_client()
    digest = hashlib.sha256()
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as out:
            url = f"{api.base}{_db(name)}/backups/{quote(backup, safe='')}/file"
            with api.http.stream("GET", url) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise_for_error(resp)
                expected = resp.headers.get("x-backup-sha256", "")
                for chunk in resp.iter_bytes():
                    out.write(chunk)
                    digest.update(chunk)
        if expected and digest.hexdigest() != expected:
            raise CliError("the download is damaged (its sha256 differs from the server's)")
        os.chmod(temp, 0o600)
        os.replace(temp, target)
    except httpx.HTTPError as exc:
        raise CliError(f"the download failed: {exc}") from None
    finally:
        Path(temp).unlink(missing_ok=True)
    console.print(f"Wrote {escape(str(target))} (sha256 {digest.hexdigest()})")
