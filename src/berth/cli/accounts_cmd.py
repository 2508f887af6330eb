"""Account, team, token, billing, audit and operator commands."""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from berth.cli.client import ApiClient, CliConfig, CliError, client
from berth.cli.output import JsonOpt, ago, console, emit, table

tokens_app = typer.Typer(help="API tokens (shown once; hashed at rest).", no_args_is_help=True)
teams_app = typer.Typer(help="Teams, members and invitations.", no_args_is_help=True)
billing_app = typer.Typer(help="Balance, transactions, usage and invoices.", no_args_is_help=True)
admin_app = typer.Typer(help="Platform operators: plans, tenants, credit.", no_args_is_help=True)


def _password(prompt: str, confirm: bool) -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat the password: ") != first:
        raise CliError("the passwords differ")
    return first


CLI_TOKEN_SECONDS = 90 * 24 * 3600


def _save_session(api_url: str, data: dict[str, Any]) -> Path:
    """Trade the login session for an API token of this machine's CLI (sessions are for the
    panel), end the session, and save the token (0600)."""
    session = ApiClient(CliConfig(api_url, data["token"], None))
    body = {
        "name": f"cli on {socket.gethostname()}"[:64],
        "scope": "admin",
        "expires_in_seconds": CLI_TOKEN_SECONDS,
    }
    token = session.post("/tokens", json=body)["token"]
    with contextlib.suppress(CliError):
        session.post("/auth/logout")
    return CliConfig(api_url, token, None, minted=True).save()


def signup(
    email: str,
    api_url: Annotated[str | None, typer.Option(help="Berth API URL.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an account (password read from the terminal or standard input) and log in."""
    url = api_url or CliConfig.load().api_url
    password = _password("Password (10+ characters): ", confirm=True)
    data = ApiClient(CliConfig(url, None)).post(
        "/auth/signup", json={"email": email, "password": password}
    )
    _save_session(url, data)
    emit(
        {k: v for k, v in data.items() if k != "token"},
        as_json,
        lambda d: console.print(f"Signed up and logged in as {d['email']} (tenant {d['tenant']})"),
    )


def login(
    email: Annotated[str | None, typer.Argument(help="Your email; omit with --token-file.")] = None,
    api_url: Annotated[str | None, typer.Option(help="Berth API URL.")] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="Log in with an API token from a file.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Log in with email and password (a session), or save an API token."""
    url = api_url or CliConfig.load().api_url
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read {token_file}: {exc.strerror}") from None
        cfg = CliConfig(url, token)
        who = ApiClient(cfg).get("/auth/whoami")
        path = cfg.save()
        emit(
            who,
            as_json,
            lambda d: console.print(f"Logged in to {url} as {d['email']} (saved in {path})"),
        )
        return
    if email is None:
        raise CliError("give your EMAIL, or --token-file")
    password = _password("Password: ", confirm=False)
    data = ApiClient(CliConfig(url, None)).post(
        "/auth/login", json={"email": email, "password": password}
    )
    path = _save_session(url, data)
    emit(
        {k: v for k, v in data.items() if k != "token"},
        as_json,
        lambda d: console.print(
            f"Logged in as {d['email']} (tenant {d['tenant']}; saved in {path})"
        ),
    )


def logout(as_json: JsonOpt = False) -> None:
    """End the session and forget the saved credentials."""
    cfg = CliConfig.load()
    if cfg.token:
        api = ApiClient(cfg)
        with contextlib.suppress(CliError):
            if cfg.token.startswith("bsess_"):
                api.post("/auth/logout")
            elif cfg.minted:  # minted by `berth login`: revoke it, the saved secret dies
                token_id = api.get("/auth/whoami").get("token_id")
                if token_id:
                    api.delete(f"/tokens/{token_id}")
    CliConfig(cfg.api_url, None, None).save()
    emit({"logged_out": True}, as_json, lambda _: console.print("Logged out"))


def whoami(as_json: JsonOpt = False) -> None:
    """Who you are, which tenant you act in, and your teams."""
    data = client().get("/auth/whoami")

    def human(d: dict[str, Any]) -> None:
        op = " (platform operator)" if d["is_operator"] else ""
        console.print(
            f"{d['email']}{op} in tenant [bold]{d['tenant']}[/] as {d['role']} "
            f"({d['scope']} via {d['via']})"
        )
        table(
            None,
            ["TENANT", "KIND", "ROLE"],
            [(t["name"], t["kind"], t["role"]) for t in d["tenants"]],
        )

    emit(data, as_json, human)


def switch(
    tenant: Annotated[str | None, typer.Argument(help="Team to act in; omit for your own.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Choose the tenant later commands act in (a team you belong to)."""
    cfg = CliConfig.load()
    new = dataclasses.replace(cfg, tenant=tenant)
    who = ApiClient(new).get("/auth/whoami")
    new.save()
    emit(who, as_json, lambda d: console.print(f"Now acting in {d['tenant']} as {d['role']}"))


def audit(
    all_tenants: Annotated[bool, typer.Option("--all", help="Operators: every tenant.")] = False,
    limit: int = 50,
    as_json: JsonOpt = False,
) -> None:
    """Who did what, when, and from where."""
    data = client().get("/audit", params={"all": str(all_tenants).lower(), "limit": limit})
    emit(
        data,
        as_json,
        lambda d: table(
            None,
            ["WHEN", "TENANT", "ACTOR", "ACTION", "TARGET", "FROM", "STATUS"],
            [
                (
                    ago(e["at"]),
                    e["tenant"],
                    e["actor"],
                    e["action"],
                    e["target"],
                    e["ip"],
                    e["status"],
                )
                for e in d
            ],
        ),
    )


# -- tokens ----------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    name: str,
    scope: Annotated[str, typer.Option(help="read, deploy or admin")] = "deploy",
    expires_in: Annotated[str | None, typer.Option(help="Lifetime like 30d, 12h or 90m.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token; it is shown once."""
    body = {"name": name, "scope": scope, "expires_in_seconds": _duration(expires_in)}
    data = client().post("/tokens", json=body)
    emit(
        data,
        as_json,
        lambda d: console.print(f"Token {d['id']} ({d['scope']}), shown only now:\n{d['token']}"),
    )


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        return float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise CliError(f"{text!r} is not a duration like 30d, 12h or 90m") from None


@tokens_app.command("list")
def tokens_list(as_json: JsonOpt = False) -> None:
    """List tokens (never their secrets)."""
    data = client().get("/tokens")
    emit(
        data,
        as_json,
        lambda d: table(
            None,
            ["ID", "NAME", "SCOPE", "PREFIX", "CREATED", "EXPIRES", "REVOKED"],
            [
                (
                    t["id"],
                    t["name"],
                    t["scope"],
                    t["prefix"] + "…",
                    ago(t["created_at"]),
                    _when(t["expires_at"]),
                    _when(t["revoked_at"]),
                )
                for t in d
            ],
        ),
    )


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M") if ts else ""


@tokens_app.command("revoke")
def tokens_revoke(token_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a token at once."""
    client().delete(f"/tokens/{token_id}")
    emit({"revoked": token_id}, as_json, lambda _: console.print(f"Revoked token {token_id}"))


# -- teams -----------------------------------------------------------------------------------


@teams_app.command("create")
def teams_create(name: str, as_json: JsonOpt = False) -> None:
    """Create a team (you are its owner)."""
    data = client().post("/teams", json={"name": name})
    emit(
        data,
        as_json,
        lambda d: console.print(
            f"Created team {d['name']}; `berth switch {d['name']}` to act in it"
        ),
    )


@teams_app.command("list")
def teams_list(as_json: JsonOpt = False) -> None:
    """Your tenants and your role in each."""
    data = client().get("/teams")
    emit(
        data,
        as_json,
        lambda d: table(
            None, ["TENANT", "KIND", "ROLE"], [(t["name"], t["kind"], t["role"]) for t in d]
        ),
    )


@teams_app.command("members")
def teams_members(as_json: JsonOpt = False) -> None:
    """Members of the tenant you act in."""
    data = client().get("/members")
    emit(
        data,
        as_json,
        lambda d: table(None, ["EMAIL", "ROLE"], [(m["email"], m["role"]) for m in d]),
    )


@teams_app.command("invite")
def teams_invite(
    email: str,
    role: Annotated[str, typer.Option(help="owner, developer or viewer")] = "developer",
    as_json: JsonOpt = False,
) -> None:
    """Invite someone to the team you act in; give them the printed code."""
    data = client().post("/invitations", json={"email": email, "role": role})
    emit(
        data,
        as_json,
        lambda d: console.print(
            f"Invited {d['email']} as {d['role']}. Invitation code:\n{d['token']}"
        ),
    )


@teams_app.command("accept")
def teams_accept(code: str, as_json: JsonOpt = False) -> None:
    """Accept an invitation code."""
    data = client().post("/invitations/accept", json={"token": code})
    emit(data, as_json, lambda d: console.print(f"Joined {d['name']} as {d['role']}"))


@teams_app.command("set-role")
def teams_set_role(email: str, role: str, as_json: JsonOpt = False) -> None:
    """Change a member's role."""
    data = client().patch(f"/members/{email}", json={"role": role})
    emit(data, as_json, lambda d: console.print(f"{d['email']} is now {d['role']}"))


@teams_app.command("remove")
def teams_remove(email: str, as_json: JsonOpt = False) -> None:
    """Remove a member."""
    client().delete(f"/members/{email}")
    emit({"removed": email}, as_json, lambda _: console.print(f"Removed {email}"))


# -- billing ---------------------------------------------------------------------------------


@billing_app.command("balance")
def billing_balance(as_json: JsonOpt = False) -> None:
    """Your prepaid balance, plan and status."""
    data = client().get("/billing/balance")
    emit(
        data,
        as_json,
        lambda d: console.print(
            f"{d['tenant']}: {d['balance']} (plan {d['plan']})"
            + (" — SUSPENDED" if d["suspended"] else "")
        ),
    )


@billing_app.command("transactions")
def billing_transactions(limit: int = 50, as_json: JsonOpt = False) -> None:
    """Ledger entries on your balance, newest first."""
    data = client().get("/billing/transactions", params={"limit": limit})
    emit(
        data,
        as_json,
        lambda d: table(
            None,
            ["WHEN", "KIND", "AMOUNT", "MEMO"],
            [(_when(t["at"]), t["kind"], t["amount"], t["memo"]) for t in d],
        ),
    )


@billing_app.command("usage")
def billing_usage(
    start: Annotated[str | None, typer.Option("--from", help="First day, like 2026-11-01.")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Day after the last.")] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Usage records (instance-seconds per app, size and hour)."""
    params = {k: v for k, v in {"from": start, "to": end}.items() if v}
    api = client()
    if csv_out:
        params["format"] = "csv"
        for line in api.stream_lines("GET", "/billing/usage", params=params):
            sys.stdout.write(line + "\n")
        return
    data = api.get("/billing/usage", params=params)
    emit(
        data,
        as_json,
        lambda d: table(
            None,
            ["HOUR (UTC)", "APP", "SIZE", "INSTANCE-SECONDS"],
            [
                (_when(u["hour_start"]), u["app"], u["size"], u["instance_seconds"])
                if u.get("kind", "instance") != "storage"
                else (
                    _when(u["hour_start"]),
                    f"database {u['database']}",
                    "storage",
                    f"{u['bytes']} bytes",
                )
                for u in d
            ],
        ),
    )


@billing_app.command("invoice")
def billing_invoice(
    period: Annotated[str, typer.Argument(help="Month, like 2026-11.")],
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV (to download).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """A month's invoice (a draft until the month closes)."""
    api = client()
    if csv_out:
        for line in api.stream_lines(
            "GET", f"/billing/invoices/{period}", params={"format": "csv"}
        ):
            sys.stdout.write(line + "\n")
        return
    data = api.get(f"/billing/invoices/{period}")

    def human(d: dict[str, Any]) -> None:
        table(
            f"Invoice {d['period']} for {d['tenant']} ({d['status']})",
            ["APP", "SIZE", "INSTANCE-HOURS", "AMOUNT"],
            [
                (ln["app"], ln["size"], f"{ln['instance_hours']:.3f}", ln["amount"])
                if ln.get("kind", "instance") != "storage"
                else (
                    f"database {ln['database']}",
                    "storage",
                    f"{ln['gib_hours']:.3f} GiB-h",
                    ln["amount"],
                )
                for ln in d["lines"]
            ]
            + [("TOTAL", "", "", d["total"])],
        )

    emit(data, as_json, human)


@billing_app.command("notifications")
def billing_notifications(as_json: JsonOpt = False) -> None:
    """Low-balance warnings, suspensions and resumptions."""
    data = client().get("/billing/notifications")
    emit(
        data,
        as_json,
        lambda d: table(
            None,
            ["WHEN", "KIND", "MESSAGE"],
            [(_when(n["created_at"]), n["kind"], n["message"]) for n in d],
        ),
    )


# -- operators -------------------------------------------------------------------------------


@admin_app.command("credit")
def admin_credit(
    tenant: str,
    amount: Annotated[str, typer.Argument(help="Major units, like 25 or 12.50.")],
    key: Annotated[
        str | None, typer.Option(help="Idempotency key: repeating it credits once.")
    ] = None,
    memo: str = "operator credit",
    as_json: JsonOpt = False,
) -> None:
    """Top up a tenant's balance."""
    data = client().post(
        f"/admin/tenants/{tenant}/credit",
        json={"amount": amount, "idempotency_key": key, "memo": memo},
    )
    emit(
        data,
        as_json,
        lambda d: console.print(
            ("Credited" if d["created"] else "Already credited (same key)")
            + f" {tenant}; balance {d['balance']}"
        ),
    )


@admin_app.command("adjust")
def admin_adjust(
    tenant: str,
    amount: Annotated[str, typer.Argument(help="Signed major units: -5 debits, 2.50 credits.")],
    memo: Annotated[str, typer.Option(help="Why (required).")],
    key: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Correct a tenant's balance (credit or debit) with a reason."""
    body = {"amount": amount, "memo": memo, "idempotency_key": key}
    data = client().post(f"/admin/tenants/{tenant}/adjust", json=body)
    emit(data, as_json, lambda d: console.print(f"Adjusted {tenant}; balance {d['balance']}"))


@admin_app.command("tenants")
def admin_tenants(as_json: JsonOpt = False) -> None:
    """Every tenant with its plan, balance and status."""
    data = client().get("/admin/tenants")
    emit(
        data,
        as_json,
        lambda d: table(
            None,
            ["TENANT", "KIND", "PLAN", "BALANCE", "APPS", "STATUS"],
            [
                (
                    t["name"],
                    t["kind"],
                    t["plan"],
                    t["balance"],
                    t["apps"],
                    "suspended" if t["suspended"] else "active",
                )
                for t in d
            ],
        ),
    )


@admin_app.command("plan-create")
def admin_plan_create(
    name: str,
    price_per_gb_hour: Annotated[
        str, typer.Option(help="Per GB of memory per hour, major units.")
    ] = "0",
    price_per_cpu_hour: Annotated[str, typer.Option(help="Per CPU per hour, major units.")] = "0",
    included_gb_hours: int = 0,
    included_cpu_hours: int = 0,
    max_apps: int | None = None,
    max_instances: int | None = None,
    max_memory_mb: int | None = None,
    max_domains: int | None = None,
    instance_disk_mb: Annotated[
        int | None, typer.Option(help="Size of each instance's /tmp, /var/tmp and /run (MiB).")
    ] = None,
    max_concurrent_builds: int | None = None,
    build_memory_mb: int | None = None,
    build_cpus: Annotated[float | None, typer.Option(help="CPUs of each build step.")] = None,
    build_disk_mb: Annotated[int | None, typer.Option(help="Layers one build may write.")] = None,
    internet: Annotated[
        bool, typer.Option(help="Outbound internet for the tenant's apps and builds.")
    ] = True,
    storage_price: Annotated[
        str | None,
        typer.Option(help="Managed databases' storage per GiB-month, major units."),
    ] = None,
    max_request_body_mb: Annotated[
        int | None,
        typer.Option(help="Largest request body at the ingress, MiB (413 above; 1-10240)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Define a plan: prices, included resources and limits (unset limits: the settings)."""
    body = {
        "name": name,
        "price_per_gb_hour": price_per_gb_hour,
        "price_per_cpu_hour": price_per_cpu_hour,
        "included_gb_hours": included_gb_hours,
        "included_cpu_hours": included_cpu_hours,
        "max_apps": max_apps,
        "max_instances": max_instances,
        "max_memory_mb": max_memory_mb,
        "max_domains": max_domains,
        "instance_disk_mb": instance_disk_mb,
        "max_concurrent_builds": max_concurrent_builds,
        "build_memory_mb": build_memory_mb,
        "build_cpus_milli": round(build_cpus * 1000) if build_cpus is not None else None,
        "build_disk_mb": build_disk_mb,
        "egress_internet": internet,
        "max_request_body_mb": max_request_body_mb,
    }
    if storage_price is not None:
        body["storage_price_per_gib_month"] = storage_price
    data = client().post("/admin/plans", json=body)
    emit(data, as_json, lambda d: console.print(f"Created plan {d['name']}", markup=False))


def _or_setting(value: object) -> object:
    return "setting" if value is None else value


@admin_app.command("plans")
def admin_plans(as_json: JsonOpt = False) -> None:
    """List plans."""
    data = client().get("/admin/plans")
    emit(
        data,
        as_json,
        lambda d: table(
            None,
            [
                "PLAN",
                "GB-HOUR",
                "CPU-HOUR",
                "APPS",
                "INSTANCES",
                "MEMORY",
                "DOMAINS",
                "DISK",
                "BUILDS",
                "BUILD-MEM",
                "INTERNET",
                "STORAGE GIB-MONTH",
                "BODY",
            ],
            [
                (
                    p["name"],
                    p["price_per_gb_hour_minor"],
                    p["price_per_cpu_hour_minor"],
                    p["max_apps"],
                    p["max_instances"],
                    p["max_memory_mb"],
                    p["max_domains"],
                    p.get("instance_disk_mb"),
                    p.get("max_concurrent_builds"),
                    p.get("build_memory_mb"),
                    "yes" if p.get("egress_internet", True) else "no",
                    _or_setting(p.get("storage_price_per_gib_month_minor")),
                    _or_setting(p.get("max_request_body_mb")),
                )
                for p in d
            ],
        ),
    )


@admin_app.command("set-plan")
def admin_set_plan(tenant: str, plan: str, as_json: JsonOpt = False) -> None:
    """Put a tenant on a plan."""
    data = client().request("PUT", f"/admin/tenants/{tenant}/plan", json={"plan": plan})
    emit(
        data, as_json, lambda d: console.print(f"{d['name']} is on plan {d['plan']}", markup=False)
    )


@admin_app.command("approve-domain")
def admin_approve_domain(hostname: str, as_json: JsonOpt = False) -> None:
    """Let a tenant's pending domain route without a DNS proof (you vouch for the claim)."""
    data = client().post(f"/admin/domains/{quote(hostname, safe='')}/approve")
    emit(
        data,
        as_json,
        lambda d: console.print(f"{d['hostname']} is approved and routes", markup=False),
    )


@admin_app.command("delete-tenant")
def admin_delete_tenant(
    tenant: str,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a tenant's apps, domains, tokens and members (financial records stay)."""
    if not yes:
        raise CliError(f"this removes every app of {tenant}; add --yes to confirm")
    client().delete(f"/admin/tenants/{tenant}", params={"confirm": tenant})
    emit(
        {"deleted": tenant},
        as_json,
        lambda _: console.print(f"Deleted tenant {tenant}'s apps and access"),
    )
