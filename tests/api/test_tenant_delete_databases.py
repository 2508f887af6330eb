"""An operator deleting a tenant closes its managed databases and keeps them for the
retention days (as the tenant's own `db delete`); a server that cannot close one stops the
delete before anything else goes, and the delete can be repeated."""

from __future__ import annotations

import pytest

from tests.api.conftest import Env
from tests.api.test_databases_api import (
    DAY,
    Servers,
    add_server,
    call_server_down,
    create_db,
)
from tests.api.test_databases_api import fake as fake  # the fixture

pytestmark = pytest.mark.store


def _delete_tenant(env: Env, name: str) -> object:
    return env.call("DELETE", f"/admin/tenants/{name}", env.admin, params={"confirm": name})


def test_deleting_a_tenant_closes_and_keeps_its_databases(env: Env, fake: Servers) -> None:
    add_server(env, "pg-del")
    owner = env.signup("gone")
    app = env.create_app(owner.session, env.unique("gone-app"))["name"]
    db = create_db(env, owner.session, "gonedb")
    env.ok("POST", "/databases/gonedb/attachments", owner.session, json={"app": app}, status=201)
    (provider,) = fake.by_url.values()
    (server_name,) = provider.databases
    assert provider.databases[server_name].write_allowed

    # The server refuses: nothing of the tenant goes yet.
    provider.failing.add("set_write_allowed")
    call_server_down(
        env, "DELETE", f"/admin/tenants/{owner.tenant}", env.admin, params={"confirm": owner.tenant}
    )
    assert env.ok("GET", f"/apps/{app}", owner.session)["name"] == app
    assert env.ok("GET", "/databases/gonedb", owner.session)["state"] == "active"

    # Repeated once the server answers: closed, kept, dropped only after the retention.
    provider.failing.clear()
    resp = _delete_tenant(env, owner.tenant)
    assert resp.status_code == 204, resp.text
    assert server_name in provider.databases
    assert not provider.databases[server_name].write_allowed
    fake.now += 8 * DAY
    env.ok("POST", "/admin/databases/purge", env.admin)
    assert server_name not in provider.databases
    assert db["name"] == "gonedb"
