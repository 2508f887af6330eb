"""Tenant isolation across nodes, the whole matrix, on the shared cluster with a real Berth
server on Swarm (its API, ingress and platform registry on the host's address on the switch).

Two tenants: A with an app of 3 replicas (one container on each worker, a row each), B with an
app of 2. From A's container on each worker (python in the task's own container, exec'd through
its node's engine), probes in parallel with a 2 s timeout to: B's containers on B's overlay,
every B task's published port at every node's address (Swarm binds it on all of them,
moby/moby#32299), B's containers on the same node at their docker_gwbridge address, the host's
Berth API, ingress and registry, and each node's 2377 and 7946; and, as controls (the probes
can see reachability, the guard is not a wall), A's other containers on A's overlay and a
listener on the switch at an address that is nobody's (the rest of the world).

First with the server's node guard off: the holes are there (published ports of B at every
node, the host's ports, the Swarm ports answer A's container). Then the first worker is
labelled ``ingress=true`` (`berth nodes label`) and the server restarted with its guard on:
Berth itself installs it (the global service on the workers, a plain container on the drained
manager it talks to; nothing applied by the test) and every hole is closed, while A's
containers still reach each other on A's overlay and the outside, A's app answers through the
ingress (the host, where `berth server` runs, reaches published ports), the ingress node
reaches the other nodes' published ports while its own containers do not, a node that is not
an ingress reaches none, the host (not a node, outside the join networks) cannot reach the
managers' port, and every node stays Ready. The guard (service, rules, images) is removed
afterwards, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from berth.netpolicy.node_guard_apply import NodeGuardFirewall
from tests.behaviour.images import behaviour_image
from tests.cluster.conftest import TIMINGS
from tests.cluster.guarded import guard_service, guarded_server, remove_guard, wait_guarded
from tests.cluster.nodes import Cluster
from tests.harness import BerthServer, free_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

APP_PORT = 8080
PROBE_TIMEOUT = 2.0
OPEN, REFUSED = "OPEN", "refused"  # refused: a packet reached a host (nothing listened)
CONTROLS = ("A", "outside")  # A1@w2.., outside: must answer, guarded or not
ISOLATED_ALREADY = ("-ovl", "-gw")  # B's overlay, B's gwbridge address: never reached
OUTSIDE_HOST = 250  # an address on the switch that is nobody's: "the internet"
# Runs in a tenant's container (python image) or in a node's namespace: connects to every
# (host, port) at once, prints one outcome each.
PROBE = r"""
import errno, json, socket, sys
from concurrent.futures import ThreadPoolExecutor
KINDS = {errno.EHOSTUNREACH: "no-route", errno.ENETUNREACH: "net-unreach"}
def probe(target):
    try:
        socket.create_connection(tuple(target), timeout=float(sys.argv[2])).close()
        return "OPEN"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return KINDS.get(exc.errno, "errno-%s" % exc.errno)
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(max(len(targets), 1)) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""
LISTEN = r"""
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    server.accept()[0].close()
"""


@dataclass(frozen=True)
class Task:
    short: str  # the worker it runs on
    container: Any  # docker-py Container on that worker's engine
    overlay_address: str
    gwbridge_address: str  # its way out of the node, on docker_gwbridge
    published_port: int


@dataclass(frozen=True)
class Target:
    label: str
    host: str
    port: int


@dataclass
class Tenants:
    server: BerthServer
    a_app: str
    b_app: str
    registry_port: int


def workers(cluster: Cluster) -> list[str]:
    return [s for s in cluster.nodes if s not in cluster.managers]


def _signup(server: BerthServer) -> str:
    resp = httpx.post(
        f"{server.api_url}/api/v1/auth/signup",
        json={"email": f"{uuid.uuid4().hex[:10]}@example.com", "password": "a long password!"},
        trust_env=False,
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    token: str = resp.json()["token"]
    return token


def _tenant_cli(server: BerthServer, token: str, *args: str) -> Any:
    result = subprocess.run(
        [sys.executable, "-m", "berth.cli.main", *args, "--json"],
        capture_output=True,
        text=True,
        env={**server.cli_env(), "BERTH_TOKEN": token},
        cwd=server.root,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"berth {' '.join(args)}: {result.stdout}{result.stderr}"
    return json.loads(result.stdout)


def _deploy(server: BerthServer, token: str, image: str, app: str, replicas: int) -> None:
    _tenant_cli(server, token, "apps", "create", app, "--memory", "64M", "--cpus", "0.2",
                "--port", str(APP_PORT), "--health-path", "/healthz")  # fmt: skip
    _tenant_cli(server, token, "scale", app, str(replicas))
    out = _tenant_cli(server, token, "deploy", app, "--image", image)
    assert out["deployment"]["status"] == "succeeded", out


@pytest.fixture(scope="module")
def tenants(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    cluster.make_whole()
    with behaviour_image() as image:
        cluster.load_images([image])
        # The platform's ports (API, ingress, registry) on the host's address on the switch,
        # where the nodes (and so, unguarded, tenants) reach them. The guard starts off.
        with guarded_server(
            cluster,
            tmp_path_factory.mktemp("isolation"),
            extra_env={"BERTH_NODE_GUARD": "false", "BERTH_SIGNUP_LIMIT_PER_ADDRESS": "100"},
            host=cluster.host_address,
        ) as (server, registry_port):
            run = uuid.uuid4().hex[:6]
            a_app, b_app = f"iso-a-{run}", f"iso-b-{run}"
            _deploy(server, _signup(server), image, a_app, 3)
            _deploy(server, _signup(server), image, b_app, 2)
            yield Tenants(server, a_app, b_app, registry_port)


def _tasks(cluster: Cluster, server: BerthServer, app: str) -> list[Task]:
    """The app's running task containers, read from each worker's own engine."""
    found = []
    for short in workers(cluster):
        labels = [f"berth.installation={server.installation}", f"berth.app-name={app}"]
        client = cluster.client(short)
        gateways = client.networks.get("docker_gwbridge").attrs.get("Containers") or {}
        for container in client.containers.list(filters={"label": labels}):
            settings = container.attrs["NetworkSettings"]
            overlays = [
                net["IPAddress"]
                for name, net in settings["Networks"].items()
                if name.startswith("berth-o-") and net.get("IPAddress")
            ]
            bindings = (settings.get("Ports") or {}).get(f"{APP_PORT}/tcp") or []
            gateway = (gateways.get(container.id) or {}).get("IPv4Address", "").split("/")[0]
            if overlays and bindings and gateway:
                found.append(
                    Task(short, container, overlays[0], gateway, int(bindings[0]["HostPort"]))
                )
    return found


def _wait_tasks(cluster: Cluster, server: BerthServer, app: str, n: int) -> list[Task]:
    tasks: list[Task] = wait_until(
        lambda: (found := _tasks(cluster, server, app)) and len(found) == n and found,
        90,
        f"{n} running containers of {app} on the workers",
    )
    return tasks


def _targets(cluster: Cluster, tenants: Tenants, a: list[Task], b: list[Task]) -> list[Target]:
    """Every column of the matrix (the control columns are filled in per row)."""
    host = cluster.host_address
    server = tenants.server
    out = [Target(f"B{i}-ovl", t.overlay_address, APP_PORT) for i, t in enumerate(b, 1)]
    for i, task in enumerate(b, 1):
        for short in workers(cluster):
            out.append(Target(f"B{i}@{short}", cluster.node(short).address, task.published_port))
    out += [
        Target("api", host, server.api_port),
        Target("ingress", host, server.ingress_port),
        Target("registry", host, tenants.registry_port),
    ]
    for short in cluster.nodes:
        for port in (2377, 7946):
            out.append(Target(f"{short}:{port}", cluster.node(short).address, port))
    return out


def _probe_from(task: Task, targets: Sequence[Target]) -> list[str]:
    pairs = [[t.host, t.port] for t in targets]
    result = task.container.exec_run(
        ["python3", "-c", PROBE, json.dumps(pairs), str(PROBE_TIMEOUT)]
    )
    assert result.exit_code == 0, result.output.decode(errors="replace")
    outcomes: list[str] = json.loads(result.output.decode().strip().splitlines()[-1])
    return outcomes


def _matrix(a: list[Task], b: list[Task], columns: list[Target]) -> dict[str, dict[str, str]]:
    """Row per A container (its worker): column label -> outcome. Rows probe in parallel.

    Per row: A's other containers on A's overlay (controls), and B's containers on the same
    node at their docker_gwbridge address (the one network all tasks of a node share)."""

    def row(numbered: tuple[int, Task]) -> tuple[str, dict[str, str]]:
        i, task = numbered
        controls = [
            Target(f"A{j}@{o.short}", o.overlay_address, APP_PORT)
            for j, o in enumerate(a, 1)
            if o is not task
        ]
        neighbours = [
            Target(f"B{i}-gw", t.gwbridge_address, APP_PORT)
            for i, t in enumerate(b, 1)
            if t.short == task.short
        ]
        targets = [*controls, *neighbours, *columns]
        return f"A{i}@{task.short}", dict(
            zip([t.label for t in targets], _probe_from(task, targets), strict=True)
        )

    with ThreadPoolExecutor(len(a)) as pool:
        return dict(pool.map(row, enumerate(a, 1)))


def _render(title: str, matrix: dict[str, dict[str, str]]) -> list[str]:
    labels = list(dict.fromkeys(label for row in matrix.values() for label in row))
    labels.sort(key=lambda label: (not label.startswith("A"), label != "outside"))
    width = max(len(label) for label in labels)
    lines = [title, " " * (width + 2) + "  ".join(f"{r:>10}" for r in matrix)]
    for label in labels:
        cells = [matrix[r].get(label, "-") for r in matrix]
        lines.append(f"{label:>{width}}  " + "  ".join(f"{c:>10}" for c in cells))
    return lines


def _guard_on(cluster: Cluster, server: BerthServer) -> None:
    """Berth's own guard, as a provider gets it: the first worker labelled an ingress node
    (so that its row shows a container on an ingress node does not pass for the ingress: it
    leaves the node masqueraded to the node's address), the server restarted with its guard
    on (the default outside these tests), and every node's guard running. Idempotent."""
    ingress = cluster.node(workers(cluster)[0]).name
    server.cli_json("nodes", "label", ingress, "ingress=true")
    if server.settings.get("BERTH_NODE_GUARD") != "true":
        server.settings["BERTH_NODE_GUARD"] = "true"
        server.restart()
    wait_guarded(cluster, server)
    # The ingress label has reached every guard (the published ports answer it).
    address = cluster.node(workers(cluster)[0]).address
    wait_until(
        lambda: all(
            any(address in line for line in NodeGuardFirewall(cluster.node(s).name).rules(
                "BERTH-NG-PUBLISHED") or [])
            for s in workers(cluster)
        ),
        60,
        "the ingress label in every guard",
    )  # fmt: skip


def _from_namespace(netns: str, targets: Sequence[tuple[str, int]]) -> list[str]:
    """The probe run by this machine's python inside a node's namespace (a node's own
    process: a machine of the cluster that is not an ingress)."""
    result = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", PROBE,
         json.dumps([list(t) for t in targets]), str(PROBE_TIMEOUT)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outcomes: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return outcomes


@contextlib.contextmanager
def _outside(cluster: Cluster) -> Iterator[Target]:
    """A listener at an address of the switch that is no node's, ingress's or protected (the
    rest of the world for a tenant): the guard must not cut a container's way out."""
    assert cluster.subnet is not None
    address, port = str(cluster.subnet[OUTSIDE_HOST]), free_port()
    in_switch = ["nsenter", f"--net=/run/netns/{cluster.switch}"]
    subprocess.run(["ip", "-n", cluster.switch, "addr", "add", f"{address}/24", "dev", "br0"],
                   check=True, capture_output=True)  # fmt: skip
    listener = subprocess.Popen(
        [*in_switch, sys.executable, "-c", LISTEN, address, str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        yield Target("outside", address, port)
    finally:
        listener.kill()
        listener.wait(10)
        subprocess.run(["ip", "-n", cluster.switch, "addr", "del", f"{address}/24", "dev", "br0"],
                       check=False, capture_output=True)  # fmt: skip


def _reachable_from_host(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), PROBE_TIMEOUT):
        return True
    return False


def test_no_tenant_reaches_another_tenant_or_the_platform_from_any_node(
    swarm: Cluster, tenants: Tenants
) -> None:
    server = tenants.server
    a = _wait_tasks(swarm, server, tenants.a_app, 3)
    b = _wait_tasks(swarm, server, tenants.b_app, 2)
    assert len({t.short for t in a}) >= 2, [t.short for t in a]  # rows on several workers
    wait_until(lambda: server.app_body(tenants.a_app) is not None, 30, "A answers")
    assert _reachable_from_host(swarm.host_address, tenants.registry_port), "no registry"
    with _outside(swarm) as outside:
        columns = [outside, *_targets(swarm, tenants, a, b)]
        # Unguarded: the holes the guard exists for are real (and the probes can see them).
        before = _matrix(a, b, columns)
        TIMINGS.extend(_render("isolation matrix WITHOUT the node guard (from A's containers):",
                               before))  # fmt: skip
        _check_unguarded(swarm, b, before)
        _guard_on(swarm, server)
        after = _matrix(a, b, columns)
        TIMINGS.extend(_render("isolation matrix WITH the node guard Berth installed:", after))
        _check_guarded(swarm, tenants, a, b, after)


def _check_unguarded(swarm: Cluster, b: list[Task], before: dict[str, dict[str, str]]) -> None:
    # Where something listens: B's tasks at their own node's address, the host's ports, the
    # managers' API and every node's gossip. Elsewhere (B's port at a node where no B task
    # runs, a worker's 2377) nothing listens, but the packets got there: refused.
    listening = ["api", "ingress", "registry"]
    listening += [f"B{i}@{t.short}" for i, t in enumerate(b, 1)]
    listening += [f"{s}:2377" for s in swarm.managers] + [f"{s}:7946" for s in swarm.nodes]
    for row, outcomes in before.items():
        for column, outcome in outcomes.items():
            if column.startswith(CONTROLS) or column in listening:
                assert outcome == OPEN, f"unguarded {row} -> {column}: {outcome}"
            elif column.endswith(ISOLATED_ALREADY):  # Docker's own isolation
                assert outcome not in (OPEN, REFUSED), f"{row} -> {column}: {outcome}"
            else:
                assert outcome in (OPEN, REFUSED), f"unguarded {row} -> {column}: {outcome}"


def _check_guarded(
    swarm: Cluster, tenants: Tenants, a: list[Task], b: list[Task], after: dict[str, dict[str, str]]
) -> None:
    server = tenants.server
    for row, outcomes in after.items():
        for column, outcome in outcomes.items():
            if column.startswith(CONTROLS):
                assert outcome == OPEN, f"control {row} -> {column}: {outcome}"
            else:
                assert outcome not in (OPEN, REFUSED), f"guarded {row} -> {column}: {outcome}"
    # The ingress still reaches every published port: A answers through nginx, and each
    # of A's tasks answers the host directly.
    assert server.app_body(tenants.a_app) is not None
    for task in a:
        assert _reachable_from_host(swarm.node(task.short).address, task.published_port)
    # A machine of the cluster that is not an ingress (the manager) reaches no published
    # port; the host, not a node, reaches no Swarm port.
    manager = swarm.node(swarm.managers[0])
    published = [(swarm.node(t.short).address, t.published_port) for t in [*a, *b]]
    stranger = _from_namespace(manager.name, published)
    TIMINGS.append(f"published ports from the manager's namespace (not ingress): {stranger}")
    assert all(o not in (OPEN, REFUSED) for o in stranger), stranger
    assert not _reachable_from_host(manager.address, 2377)
    # An ingress node (its own process, as nginx on it would be) reaches the other nodes'
    # published ports.
    ingress_node = swarm.node(workers(swarm)[0])
    elsewhere = [(swarm.node(t.short).address, t.published_port) for t in a + b]
    elsewhere = [(address, port) for address, port in elsewhere if address != ingress_node.address]
    from_ingress = _from_namespace(ingress_node.name, elsewhere)
    TIMINGS.append(f"published ports from the ingress node {ingress_node.short}: {from_ingress}")
    assert from_ingress and set(from_ingress) == {OPEN}, from_ingress
    # Swarm itself is unharmed: gossip and VXLAN between nodes pass.
    assert set(swarm.node_states().values()) == {"ready"}


def _filter_rules(netns: str) -> list[str]:
    """The node's whole filter table as `iptables -S` lines (no counters)."""
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "iptables", "-w", "10", "-S"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    return out.splitlines()


def _guard_rules(netns: str) -> list[str]:
    return [line for line in _filter_rules(netns) if "BERTH-NG" in line]


def test_the_guard_applies_twice_as_once_survives_an_engine_restart_and_leaves_no_trace(
    swarm: Cluster, tenants: Tenants
) -> None:
    server = tenants.server
    _guard_on(swarm, server)
    short = workers(swarm)[0]
    node = swarm.node(short)
    once = _filter_rules(node.name)
    ours = _guard_rules(node.name)
    assert ours and NodeGuardFirewall(node.name).installed()
    # Applied again by a new guard task (a forced rolling update, the same facts): the same
    # table, not one rule more.
    service = guard_service(swarm)
    assert service is not None
    tasks_before = {t["ID"] for t in swarm.manager_client().api.tasks(
        filters={"service": service["ID"]})}  # fmt: skip
    spec = dict(service["Spec"])
    template = dict(spec["TaskTemplate"], ForceUpdate=int(
        spec["TaskTemplate"].get("ForceUpdate", 0)) + 1)  # fmt: skip
    swarm.manager_client().api.update_service(
        service["ID"], service["Version"]["Index"], task_template=template, name=spec["Name"],
        labels=spec["Labels"], mode=spec["Mode"], update_config=spec.get("UpdateConfig"),
    )  # fmt: skip
    wait_until(
        lambda: any(
            t["ID"] not in tasks_before and t["NodeID"] == _node_id(swarm, short)
            and t["Status"]["State"] == "running"
            for t in swarm.manager_client().api.tasks(filters={"service": service["ID"]})
        ),
        90,
        "a new guard task running on the first worker",
    )  # fmt: skip
    assert _filter_rules(node.name) == once
    # The node's engine restarts: its guard task comes back and applies the same rules.
    swarm.restart_node(short)
    swarm.wait_states(dict.fromkeys(swarm.nodes, "ready"), timeout=60)
    wait_guarded(swarm, server)
    assert _guard_rules(node.name) == ours
    # Removal (the server stopped first, or it would put its guard back): only ours go.
    server.stop()
    before_removal = _filter_rules(node.name)
    remove_guard(swarm)
    assert _filter_rules(node.name) == [x for x in before_removal if "BERTH-NG" not in x]
    assert _reachable_from_host(swarm.node(swarm.managers[0]).address, 2377)  # manager's too


def _node_id(swarm: Cluster, short: str) -> str:
    node_id: str = swarm.swarm_node(short).id
    return node_id
