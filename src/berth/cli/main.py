"""The ``berth`` command line. Everything but ``server`` and ``images`` goes through the API."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape

from berth.cli import (
    accounts_cmd,
    billing_admin_cmd,
    certs_cmd,
    cluster_cmd,
    db_cmd,
    metrics_cmd,
    nodes_cmd,
    server_cmd,
    traffic_opts,
)
from berth.cli.client import ApiClient, CliError, client
from berth.cli.output import JsonOpt, ago, console, emit, err_console, fail, print_json, table

app = typer.Typer(
    help="Berth: deploy, scale and route container apps on your own servers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
apps_app = typer.Typer(help="Create, list, inspect and delete apps.", no_args_is_help=True)
config_app = typer.Typer(
    help="App config (environment); each change is a new release.", no_args_is_help=True
)
domains_app = typer.Typer(help="Custom domains routed to an app.", no_args_is_help=True)
app.add_typer(apps_app, name="apps")
app.add_typer(config_app, name="config")
app.add_typer(domains_app, name="domains")
app.add_typer(server_cmd.server_app, name="server")
app.add_typer(server_cmd.images_app, name="images")
app.add_typer(accounts_cmd.tokens_app, name="tokens")
app.add_typer(accounts_cmd.teams_app, name="teams")
app.add_typer(accounts_cmd.billing_app, name="billing")
app.add_typer(accounts_cmd.admin_app, name="admin")
app.add_typer(cluster_cmd.cluster_app, name="cluster")
app.add_typer(nodes_cmd.nodes_app, name="nodes")
app.add_typer(db_cmd.db_app, name="db")
app.add_typer(certs_cmd.certs_app, name="certs")
app.command("metrics")(metrics_cmd.metrics)
accounts_cmd.admin_app.add_typer(db_cmd.db_servers_app, name="db-servers")
accounts_cmd.admin_app.add_typer(billing_admin_cmd.billing_admin_app, name="billing")
for _cmd in (
    accounts_cmd.signup,
    accounts_cmd.login,
    accounts_cmd.logout,
    accounts_cmd.whoami,
    accounts_cmd.switch,
    accounts_cmd.audit,
):
    app.command()(_cmd)


# -- apps ---------------------------------------------------------------------------------


@apps_app.command("create")
def apps_create(
    name: str,
    memory: Annotated[
        str, typer.Option(help="Memory limit per instance, like 256M or 1G.")
    ] = "256M",
    cpus: Annotated[float, typer.Option(help="CPU limit per instance.")] = 0.5,
    port: Annotated[int, typer.Option(help="Port the app listens on (also in $PORT).")] = 8080,
    health_path: Annotated[
        str, typer.Option(help="HTTP health check path; empty for a TCP check.")
    ] = "/",
    as_json: JsonOpt = False,
) -> None:
    """Create an app (no instances run until its first deploy)."""
    body = {
        "name": name,
        "memory": memory,
        "cpus": cpus,
        "port": port,
        "health_path": health_path or None,
    }
    data = client().post("/apps", json=body)
    emit(
        data, as_json, lambda d: console.print(f"Created app [bold]{d['name']}[/]: {d['urls'][0]}")
    )


@apps_app.command("list")
def apps_list(as_json: JsonOpt = False) -> None:
    """List your apps."""
    data = client().get("/apps")
    emit(
        data,
        as_json,
        lambda d: table(
            None,
            ["NAME", "RELEASE", "INSTANCES", "MEMORY", "CPUS", "URL"],
            [
                (
                    a["name"],
                    f"v{a['serving_release']}" if a["serving_release"] else "-",
                    f"{a['instances']['healthy']}/{a['scale']}",
                    f"{a['memory_mb']}M",
                    a["cpus"],
                    a["urls"][0],
                )
                for a in d
            ],
        ),
    )


@apps_app.command("info")
def apps_info(name: str, as_json: JsonOpt = False) -> None:
    """Show an app: release, instances, URLs, last deployment."""
    data = client().get(f"/apps/{name}")

    def human(a: dict[str, Any]) -> None:
        console.print(f"[bold]{a['name']}[/]")
        dep = a.get("deployment") or {}
        rows = [
            ("serving release", f"v{a['serving_release']}" if a["serving_release"] else "none"),
            ("instances", f"{a['instances']['healthy']} healthy / {a['scale']} desired"),
            ("resources", f"{a['memory_mb']}M, {a['cpus']} cpus, port {a['port']}"),
            ("health check", a["health_path"] or "TCP connect"),
            ("constraints", ", ".join(a.get("constraints") or []) or "none"),
            ("urls", "\n".join(a["urls"])),
            ("last deployment", f"{dep.get('status', '-')} {dep.get('message', '')}"),
            *traffic_opts.traffic_rows(a.get("traffic")),
        ]
        table(None, ["", ""], rows)

    emit(data, as_json, human)


@apps_app.command("update")
def apps_update(
    name: str,
    constraint: Annotated[
        list[str] | None,
        typer.Option(
            "--constraint",
            help="Run only on nodes whose labels match, like zone==b or disk!=hdd "
            "(repeat for several; they replace the app's constraints).",
        ),
    ] = None,
    no_constraints: Annotated[
        bool, typer.Option("--no-constraints", help="Remove every placement constraint.")
    ] = False,
    redirect: Annotated[
        list[str] | None,
        typer.Option(
            "--redirect",
            help="Redirect one of the app's hostnames to another: FROM=TO (301) or FROM=TO:308, "
            "like www.a.example=a.example (repeat; they replace the app's redirects).",
        ),
    ] = None,
    no_redirects: Annotated[
        bool, typer.Option("--no-redirects", help="Remove every redirect.")
    ] = False,
    basic_auth: Annotated[
        list[str] | None,
        typer.Option(
            "--basic-auth",
            help="Require HTTP basic auth for USER (repeat for several; they replace the app's "
            "users). The password is asked for, or read as one line of stdin.",
        ),
    ] = None,
    no_basic_auth: Annotated[
        bool, typer.Option("--no-basic-auth", help="Turn basic auth off.")
    ] = False,
    maintenance: Annotated[
        str | None, typer.Option("--maintenance", help="on: every request gets a 503 page; off.")
    ] = None,
    maintenance_message: Annotated[
        str | None,
        typer.Option(
            "--maintenance-message", help="One line of plain text on the maintenance page."
        ),
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            help="Let in only these client addresses (CIDR, IPv4 or IPv6; repeat; they replace "
            "the allow list). Others get 403.",
        ),
    ] = None,
    no_allow: Annotated[bool, typer.Option("--no-allow", help="Let every address in.")] = False,
    deny: Annotated[
        list[str] | None,
        typer.Option("--deny", help="Refuse these client addresses with 403 (CIDR; repeat)."),
    ] = None,
    no_deny: Annotated[bool, typer.Option("--no-deny", help="Empty the deny list.")] = False,
    rate_limit: Annotated[
        str | None,
        typer.Option("--rate-limit", help="Requests per second per client address, like 10/s."),
    ] = None,
    burst: Annotated[
        int | None, typer.Option("--burst", help="Requests above the rate let through at once.")
    ] = None,
    no_rate_limit: Annotated[
        bool, typer.Option("--no-rate-limit", help="Remove the rate limit.")
    ] = False,
    https_redirect: Annotated[
        str | None,
        typer.Option(
            "--https-redirect",
            help="on (the default): plain HTTP to a hostname with a certificate is redirected "
            "to HTTPS; off: both are served.",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the rollout finishes.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Change an app's placement constraints (a new revision rolled out start-first) and its
    traffic controls at the ingress (no rollout: live within a routing pass)."""
    if constraint and no_constraints:
        raise CliError("give either --constraint (one or more) or --no-constraints, not both")
    api = client()
    flags = traffic_opts.TrafficFlags(
        redirect, no_redirects, basic_auth, no_basic_auth, maintenance, maintenance_message,
        allow, no_allow, deny, no_deny, rate_limit, burst, no_rate_limit, https_redirect,
    )  # fmt: skip
    traffic = traffic_opts.traffic_body(
        flags, lambda: api.get(f"/apps/{name}").get("traffic", {}).get("rate_limit")
    )
    if not constraint and not no_constraints and traffic is None:
        raise CliError(
            "nothing to update: give --constraint LABEL==VALUE, --no-constraints or a traffic "
            "control (see --help)"
        )
    body: dict[str, Any] = {}
    if constraint or no_constraints:
        body["constraints"] = list(constraint or [])
    if traffic is not None:
        body["traffic"] = traffic
    result = api.patch(f"/apps/{name}", json=body)
    dep = result["deployment"]
    if dep is not None and wait:
        dep = result["deployment"] = _wait_for_deployment(api, name, dep["id"], quiet=as_json)
        result["app"] = api.get(f"/apps/{name}")

    def human(r: dict[str, Any]) -> None:
        if traffic is not None:
            table(None, ["", ""], traffic_opts.traffic_rows(r["app"].get("traffic")))
            if "constraints" not in body:
                return
        shown = ", ".join(r["app"]["constraints"]) or "none"
        console.print(f"Constraints of [bold]{escape(name)}[/]: {escape(shown)}")
        if dep is None:
            console.print("Nothing to roll out (unchanged, or no release yet)")
        elif dep["status"] == "succeeded":
            console.print(f"[green]Rolled out[/] v{dep['release_version']} under them")
        elif dep["status"] == "in_progress":
            console.print(
                f"Rolling out v{dep['release_version']} (deployment {dep['id']}); "
                f"see `berth ps {escape(name)}`"
            )

    emit(result, as_json, human)
    if dep is not None and dep["status"] in ("failed", "superseded"):
        raise CliError(f"the rollout under the new constraints {dep['status']}: {dep['message']}")


@apps_app.command("delete")
def apps_delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    wait: Annotated[
        bool, typer.Option(help="Wait (a minute at most) until its instances are gone.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Delete an app: its instances, routes, domains and releases go, then its name is free."""
    if (
        not yes
        and sys.stdin.isatty()
        and not typer.confirm(f"Delete app {name} and all its instances?")
    ):
        raise CliError("not deleted")
    api = client()
    answer = api.delete(f"/apps/{name}")  # 204 (no body): it had no instances and is gone
    stopping = int(answer.get("instances_stopping", 0)) if answer else 0
    gone = answer is None or (wait and _wait_until_deleted(api, name, as_json))
    result = {
        "deleted": name,
        "state": "deleted" if gone else "deleting",
        "instances_stopping": 0 if gone else stopping,
    }

    def human(_: Any) -> None:
        if gone:
            console.print(f"Deleted app [bold]{name}[/]")
        else:
            console.print(
                f"Deleting app [bold]{name}[/]: its instances are still stopping; "
                f"`berth apps info {name}` says 'not found' once it is gone"
            )

    emit(result, as_json, human)


DELETE_WAIT_SECONDS = 60.0


def _wait_until_deleted(api: ApiClient, name: str, quiet: bool) -> bool:
    """Poll until the app is gone (its name answers 404); False if it still is not in time."""
    deadline = time.monotonic() + DELETE_WAIT_SECONDS
    with err_console.status(f"Stopping the instances of {name}", spinner="dots") as status:
        while time.monotonic() < deadline:
            try:
                info = api.get(f"/apps/{name}")
            except CliError as exc:
                if exc.status == 404:
                    return True
                raise
            if not quiet:
                status.update(
                    f"Stopping the instances of {name}: {info['instances']['running']} running"
                )
            time.sleep(0.5)
    return False


# -- deploy and releases --------------------------------------------------------------------


@app.command()
def deploy(
    name: str,
    directory: Annotated[
        Path | None, typer.Argument(help="Directory with a Dockerfile to build and deploy.")
    ] = None,
    image: Annotated[str | None, typer.Option(help="Deploy an existing image instead.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the rollout finishes.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Build DIRECTORY (or take --image), release it and roll it out start-first."""
    api = client()
    if (directory is None) == (image is None):
        raise CliError("give either a DIRECTORY to build or --image REF")
    if image is not None:
        result = api.post(f"/apps/{name}/releases", json={"image": image})
        version, dep_id = result["release"]["version"], result["deployment"]["id"]
    else:
        assert directory is not None
        version, dep_id = _build(api, name, directory, quiet=as_json)
    _finish_rollout(api, name, version, dep_id, wait, as_json)


def _build(api: ApiClient, name: str, directory: Path, quiet: bool) -> tuple[int, str]:
    from berth.builds.context import pack_directory

    if not (directory / "Dockerfile").is_file():
        raise CliError(f"{directory} has no Dockerfile")
    data = pack_directory(directory)
    if not quiet:
        err_console.print(f"Uploading build context ({len(data) / 1024:.0f} KiB)")
    release: dict[str, Any] | None = None
    headers = {"Content-Type": "application/gzip"}
    with err_console.status("Building", spinner="dots") as status:
        for raw in api.stream_lines("POST", f"/apps/{name}/builds", content=data, headers=headers):
            if not raw.strip():
                continue
            event = json.loads(raw)
            if event["type"] == "log" and not quiet:
                err_console.print(event["line"], style="dim", highlight=False, markup=False)
            elif event["type"] == "status":
                status.update(escape(event["message"]))
                if not quiet and event["message"].startswith("queued"):
                    # The spinner line is not shown when stderr is not a terminal.
                    err_console.print(event["message"], highlight=False, markup=False)
            elif event["type"] == "error":
                raise CliError("build failed:\n" + event["error"]["message"])
            elif event["type"] == "release":
                release = event
    if release is None:
        raise CliError("the build ended without a release")
    return int(release["version"]), str(release["deployment_id"])


def _finish_rollout(
    api: ApiClient, name: str, version: int, dep_id: str, wait: bool, as_json: bool
) -> None:
    dep = api.get(f"/apps/{name}/deployments/{dep_id}")
    if wait:
        dep = _wait_for_deployment(api, name, dep_id, quiet=as_json)
    app_info = api.get(f"/apps/{name}")
    result = {"release": version, "deployment": dep, "urls": app_info["urls"]}
    if as_json:
        print_json(result)
    elif dep["status"] == "succeeded":
        console.print(f"[green]Deployed[/] {name} v{version}: {app_info['urls'][0]}")
    elif dep["status"] == "in_progress":
        console.print(f"Rolling out {name} v{version} (deployment {dep_id}); see `berth ps {name}`")
    if dep["status"] in ("failed", "superseded"):
        raise CliError(f"deployment of v{version} {dep['status']}: {dep['message']}")


WAIT_LIMIT_SECONDS = 900.0


def _wait_for_deployment(api: ApiClient, name: str, dep_id: str, quiet: bool) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    with err_console.status("Rolling out", spinner="dots") as status:
        while True:
            dep: dict[str, Any] = api.get(f"/apps/{name}/deployments/{dep_id}")
            if dep["status"] != "in_progress":
                return dep
            if time.monotonic() > deadline:
                raise CliError(
                    f"the rollout is still in progress after {WAIT_LIMIT_SECONDS:.0f}s "
                    f"(deployment {dep_id}); see `berth ps {name}`"
                )
            info = api.get(f"/apps/{name}")
            if not quiet:
                status.update(
                    f"Rolling out v{dep['release_version']}: "
                    f"{info['instances']['healthy']} healthy of {info['scale']} wanted"
                )
            time.sleep(0.5)


@app.command()
def releases(name: str, as_json: JsonOpt = False) -> None:
    """List an app's releases, newest first."""
    data = client().get(f"/apps/{name}/releases")
    emit(
        data,
        as_json,
        lambda d: table(
            None,
            ["VERSION", "", "DESCRIPTION", "IMAGE", "CONFIG", "CREATED"],
            [
                (
                    f"v{r['version']}",
                    "serving" if r["serving"] else "",
                    r["description"],
                    r["image"],
                    ",".join(r["config_keys"]),
                    ago(r["created_at"]),
                )
                for r in d
            ],
        ),
    )


@app.command()
def rollback(
    name: str,
    version: Annotated[
        int | None, typer.Argument(help="Release to roll back to (default: previous).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the rollout finishes.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Roll back to an earlier release (as a new release that copies it)."""
    api = client()
    result = api.post(f"/apps/{name}/rollback", json={"version": version})
    _finish_rollout(
        api, name, result["release"]["version"], result["deployment"]["id"], wait, as_json
    )


@app.command()
def scale(name: str, replicas: int, as_json: JsonOpt = False) -> None:
    """Set the number of instances."""
    data = client().post(f"/apps/{name}/scale", json={"replicas": replicas})
    emit(data, as_json, lambda d: console.print(f"Scaled {name} to {d['scale']} instances"))


@app.command()
def restart(
    name: str,
    wait: Annotated[bool, typer.Option(help="Wait until the rollout finishes.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Replace every instance, start-first (no downtime)."""
    api = client()
    dep = api.post(f"/apps/{name}/restart")
    _finish_rollout(api, name, dep["release_version"], dep["id"], wait, as_json)


@app.command()
def ps(name: str, as_json: JsonOpt = False) -> None:
    """Show an app's instances: state, health, restarts, last exit code, why pending."""
    data = client().get(f"/apps/{name}/instances")

    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            console.print(f"{name} has no instances")
            return
        table(
            None,
            ["ID", "REL", "STATE", "OK", "PORT", "RESTARTS", "EXIT", "UP", "REASON"],
            [
                (
                    r["id"][:8],
                    f"v{r['release_version']}" if r["release_version"] else "",
                    r["state"],
                    "yes" if r["healthy"] else "no",
                    r["host_port"],
                    r["restarts"],
                    r["exit_code"],
                    ago(r["started_at"]),
                    r["reason"],
                )
                for r in rows
            ],
        )
        for r in rows:
            if r["state"] == "pending" and r["reason"]:
                # In full on a line of its own: the table wraps long reasons.
                console.print(
                    f"{r['id'][:8]} is pending: {r['reason']}",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
        for r in rows:
            if r["last_log"]:
                console.print(f"[bold]last log lines of {r['id'][:8]}:[/]")
                console.print(r["last_log"], markup=False, highlight=False)

    emit(data, as_json, human)


@app.command()
def logs(
    name: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming new lines.")
    ] = False,
    tail: Annotated[int, typer.Option(help="Lines per instance to start with.")] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line: instance and text.")
    ] = False,
) -> None:
    """Print the logs of an app's instances, each line prefixed with its instance."""
    api = client()
    params = {"tail": tail, "follow": str(follow).lower()}
    for line in api.stream_lines("GET", f"/apps/{name}/logs", params=params):
        if as_json:
            instance, _, text = line.partition("] ")
            sys.stdout.write(json.dumps({"instance": instance.lstrip("["), "line": text}) + "\n")
            sys.stdout.flush()
        else:
            console.print(line, markup=False, highlight=False)


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Show the platform: server, engine, nginx, ingress port, base domain."""
    api = client()
    data = api.get("/status")
    data["api_url"] = api.base
    # Fields a tenant may not see come as null: the table leaves them out, --json keeps them.
    emit(
        data,
        as_json,
        lambda d: table(None, ["", ""], sorted((k, v) for k, v in d.items() if v is not None)),
    )


# -- config -----------------------------------------------------------------------------------


@config_app.command("show")
def config_show(name: str, as_json: JsonOpt = False) -> None:
    """Show an app's config."""
    data = client().get(f"/apps/{name}/config")
    if data.get("values_hidden") and not as_json:
        console.print("[dim]values hidden: your role or token may only read[/dim]")
        emit(data["config"], as_json, lambda d: table(None, ["KEY"], [(k,) for k in sorted(d)]))
        return
    emit(data["config"], as_json, lambda d: table(None, ["KEY", "VALUE"], sorted(d.items())))


@config_app.command("set")
def config_set(
    name: str,
    pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE pairs.")],
    wait: Annotated[bool, typer.Option(help="Wait until the rollout finishes.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Set config values; rolls out a new release."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{pair!r} is not KEY=VALUE")
        values[key] = value
    _change_config(name, {"set": values}, wait, as_json)


@config_app.command("unset")
def config_unset(
    name: str,
    keys: Annotated[list[str], typer.Argument(help="Keys to remove.")],
    wait: Annotated[bool, typer.Option(help="Wait until the rollout finishes.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Remove config keys; rolls out a new release."""
    _change_config(name, {"unset": keys}, wait, as_json)


def _change_config(name: str, body: dict[str, Any], wait: bool, as_json: bool) -> None:
    api = client()
    data = api.patch(f"/apps/{name}/config", json=body)
    if data["deployment"] is None:
        emit(data, as_json, lambda _: console.print("Config saved; it applies at the first deploy"))
        return
    _finish_rollout(api, name, data["release"]["version"], data["deployment"]["id"], wait, as_json)


# -- domains -------------------------------------------------------------------------------


def _print_challenge(domain: dict[str, Any], name: str) -> None:
    challenge = domain.get("challenge")
    if domain.get("status") == "verified" or not challenge:
        console.print(f"{domain['hostname']} is verified and routes to {name}", markup=False)
        return
    console.print(
        f"Added {domain['hostname']} to {name}: pending until you prove you control it.\n"
        "Publish this DNS record:\n"
        f'  {challenge["name"]}  TXT  "{challenge["value"]}"\n'
        f"then run: berth domains verify {name} {domain['hostname']}\n"
        "(or ask the operator to approve it)",
        markup=False,
        highlight=False,
    )


def _domain_path(name: str, hostname: str) -> str:
    return f"/apps/{quote(name, safe='')}/domains/{quote(hostname, safe='')}"


@domains_app.command("add")
def domains_add(name: str, hostname: str, as_json: JsonOpt = False) -> None:
    """Claim HOSTNAME for the app; it routes once verified (prints the DNS record to publish)."""
    data = client().post(f"/apps/{quote(name, safe='')}/domains", json={"hostname": hostname})
    emit(data, as_json, lambda d: _print_challenge(d, name))


@domains_app.command("verify")
def domains_verify(name: str, hostname: str, as_json: JsonOpt = False) -> None:
    """Check HOSTNAME's DNS TXT record; once it holds, HOSTNAME routes to the app."""
    data = client().post(_domain_path(name, hostname) + "/verify")
    emit(
        data,
        as_json,
        lambda d: console.print(
            f"{d['hostname']} is verified ({d['verified_by']}) and routes to {name}",
            markup=False,
        ),
    )


@domains_app.command("list")
def domains_list(name: str, as_json: JsonOpt = False) -> None:
    """List the app's custom domains: verified, or pending with the TXT record to publish,
    and each one's HTTPS certificate."""
    data = client().get(f"/apps/{quote(name, safe='')}/domains")

    def rows(domains: list[dict[str, Any]]) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        for x in domains:
            challenge = x.get("challenge") or {}
            record = f"{challenge['name']} TXT {challenge['value']}" if challenge else ""
            status = x["status"] if x["status"] == "pending" else f"verified ({x['verified_by']})"
            cert = certs_cmd.cert_state(x.get("certificate"))
            out.append((x["hostname"], status, cert, record, ago(x["created_at"])))
        return out

    emit(
        data,
        as_json,
        lambda d: table(None, ["DOMAIN", "STATUS", "CERTIFICATE", "PUBLISH", "ADDED"], rows(d)),
    )


@domains_app.command("remove")
def domains_remove(name: str, hostname: str, as_json: JsonOpt = False) -> None:
    """Stop routing HOSTNAME to the app."""
    client().delete(_domain_path(name, hostname))
    emit({"removed": hostname}, as_json, lambda _: console.print(f"Removed {hostname} from {name}"))


def main() -> None:
    try:
        app()
    except CliError as exc:
        fail(exc.message)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        fail("interrupted")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
