"""Several real Docker nodes on one machine, joined in a Swarm, for the multi-node tests.

A node is a network namespace with its own dockerd (and the containerd it starts), its own
hostname (a UTS namespace), data root, exec root, socket and bridge range, running inside a
pids + freezer cgroup of its own so that it can be killed whole. The nodes' veths meet on a
bridge in a "switch" namespace of the harness's own, because a bridge in the host namespace
would go through the host's FORWARD chain, which the host's dockerd sets to DROP; one more veth
joins the host to the switch so that tests reach the nodes' addresses. See README.md.

Every name the harness makes (namespaces, links, cgroups, directories) starts with the run id,
``bt`` and five hex digits; ``/run/berth-test-nodes/<run>/owner`` names the process that owns
the run, so ``sweep_leftovers()`` can remove what a run that died left behind without touching
a run that is still alive.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from tests.harness import cleanup_on_sigterm, wait_until

STATE_ROOT = Path("/run/berth-test-nodes")  # sockets, exec roots, pid files, logs, owner files
DATA_ROOT = Path("/var/lib/berth-test-nodes")  # data roots: images and containers, on disk
NETNS_DIR = Path("/run/netns")  # where `ip netns add` binds namespaces (/var/run -> /run)
CGROUP_ROOT = Path("/sys/fs/cgroup")
SHIM_SOCKET_DIR = Path("/run/containerd/s")
RUN_ID = re.compile(r"^(bt[0-9a-f]{5})(?:-|$)")

# 10.213.0.0/16 is the harness's: each run takes a free /24 of it for the nodes and the host.
NODE_NETWORKS = ipaddress.IPv4Network("10.213.0.0/16")
HOST_HOST = 254  # the host's end of its veth into the switch
# Both live only inside the nodes' namespaces; chosen apart from the host's ranges anyway.
BRIDGE_RANGE = "10.214.{index}.1/24"  # each engine's docker0
SWARM_ADDRESS_POOL = "10.215.0.0/16"  # overlay networks of the swarm
SWARM_PORT = 2377
# 2 s marks a dead node Down after ~5 s; 1 s is unsafe (healthy workers marked Down after a
# Raft leader change, see ENVIRONMENT.md), and even at 2 s a worker slow to find the new leader
# was once marked Down (README.md).
DISPATCHER_HEARTBEAT_NS = 2_000_000_000
ENGINE_START_TIMEOUT = 60.0

# Joins the cgroups and sets the hostname, then becomes dockerd: the arguments are $1.. ($0 is
# a label), so nothing is ever parsed by the shell.
_ENTER_NODE = 'echo $$ > "$1" && echo $$ > "$2" && hostname "$3" && shift 3 && exec "$@"'


class HarnessError(RuntimeError):
    """A step of the harness failed; the message says which and why."""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (an argument list, never a shell); raise with its stderr on failure."""
    result = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise HarnessError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def check_requirements() -> list[str]:
    """What this machine lacks for the harness (empty when nothing): said, never skipped."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the cluster harness needs root (namespaces, veths, cgroups)")
    for controller in ("pids", "freezer"):
        if not (CGROUP_ROOT / controller / "cgroup.procs").is_file():
            problems.append(f"no cgroup v1 {controller} hierarchy at {CGROUP_ROOT / controller}")
    for tool in ("ip", "nsenter", "unshare", "dockerd", "umount"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed (scripts/ensure-system.sh installs it)")
    return problems


# ---------------------------------------------------------------- addresses


def host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address in or a route to (default route aside)."""
    found: list[ipaddress.IPv4Network] = []
    for link in json.loads(run("ip", "-j", "-4", "addr").stdout):
        for info in link.get("addr_info", []):
            found.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", False))
    for route in json.loads(run("ip", "-j", "-4", "route", "show", "table", "all").stdout):
        dst = route.get("dst", "default")
        if dst != "default":
            found.append(ipaddress.IPv4Network(dst, strict=False))
    return found


def pick_free_subnet(used: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A /24 of the harness's range that overlaps nothing in ``used`` (pure)."""
    taken = list(used)
    candidates = list(NODE_NETWORKS.subnets(new_prefix=24))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(other) for other in taken):
            return net
    raise HarnessError(f"every /24 of {NODE_NETWORKS} is in use on this host")


# ---------------------------------------------------------------- cgroups (v1)


def cgroup_dirs(name: str) -> list[Path]:
    """The node's cgroup directory in every v1 hierarchy where it exists."""
    if not CGROUP_ROOT.is_dir():
        return []
    return [d / name for d in sorted(CGROUP_ROOT.iterdir()) if (d / name).is_dir()]


def cgroup_pids(directory: Path) -> set[int]:
    """Every pid in the cgroup and the cgroups below it (containers sit below the node's)."""
    pids: set[int] = set()
    for sub, _, _ in os.walk(directory):
        with contextlib.suppress(OSError):
            text = (Path(sub) / "cgroup.procs").read_text()
            pids.update(int(p) for p in text.split())
    return {pid for pid in pids if not _is_zombie(pid)}


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def make_node_cgroups(name: str) -> tuple[Path, Path]:
    """The node's pids and freezer cgroups (their cgroup.procs files), created."""
    procs = []
    for controller in ("pids", "freezer"):
        directory = CGROUP_ROOT / controller / name
        directory.mkdir(exist_ok=True)
        procs.append(directory / "cgroup.procs")
    return procs[0], procs[1]


def kill_cgroup(name: str, timeout: float = 20.0) -> None:
    """Freeze the node's cgroup (nothing forks meanwhile), SIGKILL every pid, thaw, wait.

    The kill signal is delivered when the tasks thaw; a frozen cgroup cannot spawn a task that
    would escape the list.
    """
    freezer = CGROUP_ROOT / "freezer" / name
    pids_dir = CGROUP_ROOT / "pids" / name
    if not freezer.is_dir() and not pids_dir.is_dir():
        return
    try:
        if freezer.is_dir():
            (freezer / "freezer.state").write_text("FROZEN")
            wait_until(
                lambda: (freezer / "freezer.state").read_text().strip() == "FROZEN",
                timeout,
                f"cgroup {name} is frozen",
            )
        for directory in (freezer, pids_dir):
            for pid in cgroup_pids(directory) if directory.is_dir() else set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    finally:
        # Never leave a node frozen, whatever failed above; thawing the node's cgroup does not
        # thaw a container frozen by `docker pause`, and SIGKILL waits for the thaw: thaw all.
        for sub, _, _ in os.walk(freezer):
            with contextlib.suppress(OSError):
                (Path(sub) / "freezer.state").write_text("THAWED")
    wait_until(
        lambda: not any(cgroup_pids(d) for d in (freezer, pids_dir) if d.is_dir()),
        timeout,
        f"every process of cgroup {name} is gone",
    )


def remove_cgroups(name: str) -> None:
    """rmdir the node's cgroups in every hierarchy, the containers' below them first."""
    for top in cgroup_dirs(name):
        for sub, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(sub)


# ---------------------------------------------------------------- shims' sockets


def shim_sockets(exec_root: Path) -> set[Path]:
    """The sockets of the shims an engine's containerd started (alive or stale).

    containerd 1.6 names a shim's socket sha256(<containerd socket>/<namespace>/<id>) in
    /run/containerd/s/, shared by every containerd on the machine; the task directories under
    the exec root say which ids (and namespaces) were this engine's.
    """
    state = exec_root / "containerd" / "daemon" / "io.containerd.runtime.v2.task"
    address = exec_root / "containerd" / "containerd.sock"
    sockets: set[Path] = set()
    if not state.is_dir():
        return sockets
    for namespace in state.iterdir():
        for task in namespace.iterdir() if namespace.is_dir() else ():
            digest = hashlib.sha256(f"{address}/{namespace.name}/{task.name}".encode())
            sockets.add(SHIM_SOCKET_DIR / digest.hexdigest())
            with contextlib.suppress(OSError):
                written = (task / "address").read_text().strip().removeprefix("unix://")
                if written.startswith(f"{SHIM_SOCKET_DIR}/"):
                    sockets.add(Path(written))
    return sockets


def remove_stale_shim_sockets(exec_root: Path) -> None:
    """Remove the engine's shim sockets; call only once its shims are dead."""
    for sock in shim_sockets(exec_root):
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()


# ---------------------------------------------------------------- one node


@dataclass
class Node:
    """One namespaced engine: where its parts live and how to reach it."""

    name: str  # the namespace, the hostname (so `docker node ls` name), the cgroups
    short: str  # its veth's name in the switch
    index: int
    address: str
    run_dir: Path
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    _clients: list[docker.DockerClient] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def exec_root(self) -> Path:
        return self.state_dir / "exec"

    @property
    def socket(self) -> Path:
        return self.state_dir / "docker.sock"

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "dockerd.log"

    def client(self, timeout: int = 60) -> docker.DockerClient:
        """A docker-py client of this node's engine (closed by the cluster's cleanup)."""
        client = docker.DockerClient(base_url=self.base_url, version="1.41", timeout=timeout)
        self._clients.append(client)
        return client

    def engine_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def dockerd_args(self) -> list[str]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "daemon.json"
        # Never the host's /etc/docker/daemon.json; and a trust key of the node's own, else every
        # engine shares /etc/docker/key.json and reports the host engine's ID in `docker info`.
        config.write_text(json.dumps({"deprecated-key-path": str(self.state_dir / "key.json")}))
        return [
            "dockerd",
            f"--config-file={config}",
            f"--data-root={self.data_dir}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.state_dir / 'docker.pid'}",
            f"--host={self.base_url}",
            f"--bip={BRIDGE_RANGE.format(index=self.index)}",
            f"--cgroup-parent=/{self.name}",
            "--no-new-privileges",
            # iptables here are the node namespace's own (host-mode ports), never the host's.
            "--iptables=true",
            "--storage-driver=overlay2",
            "--log-level=warn",
        ]

    def start_engine(self) -> None:
        """Start dockerd in the node's namespaces and cgroups; wait until it answers."""
        pids_procs, freezer_procs = make_node_cgroups(self.name)
        if cgroup_pids(pids_procs.parent):
            raise HarnessError(f"{self.name} still has processes: kill or stop it first")
        remove_stale_shim_sockets(self.exec_root)
        # A killed engine's children may linger as zombies until init reaps them, and dockerd
        # takes a pid file naming a zombie for a live containerd (then times out waiting).
        for stale in (self.state_dir / "docker.pid", self.exec_root / "containerd/containerd.pid"):
            stale.unlink(missing_ok=True)
        command = [
            "nsenter",
            f"--net={NETNS_DIR / self.name}",
            # Own hostname; own mount namespace, so the engine's mounts die with the node.
            "unshare",
            "--uts",
            "--mount",
            "--propagation=private",
            "--",
            "sh",
            "-c",
            _ENTER_NODE,
            "berth-node",
            str(pids_procs),
            str(freezer_procs),
            self.name,
            *self.dockerd_args(),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.wait_engine()

    def wait_engine(self) -> None:
        client = docker.DockerClient(base_url=self.base_url, version="1.41", timeout=5)
        try:
            deadline = time.monotonic() + ENGINE_START_TIMEOUT
            while True:
                if not self.engine_alive():
                    raise HarnessError(f"dockerd of {self.name} exited:\n{self.log_tail()}")
                with contextlib.suppress(docker.errors.DockerException, OSError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise HarnessError(f"dockerd of {self.name} did not answer:\n{self.log_tail()}")
                time.sleep(0.2)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the engine, its containerd, shims and containers; remove stale sockets."""
        kill_cgroup(self.name)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        remove_stale_shim_sockets(self.exec_root)

    def stop_engine(self, timeout: float = 20.0) -> None:
        """SIGTERM the engine (it stops its containers); kill the node if it takes too long."""
        if self.engine_alive():
            assert self.proc is not None
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()

    def close_clients(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()


# ---------------------------------------------------------------- run ownership and cleanup


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_owner(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")


def run_alive(run_id: str) -> bool:
    """Whether the process that owns the run is still the same live process."""
    try:
        pid_text, started = (STATE_ROOT / run_id / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    return _start_time(int(pid_text)) == started


def _names_with_prefix(directory: Path) -> set[str]:
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if RUN_ID.match(p.name)}


def _host_links() -> set[str]:
    links = json.loads(run("ip", "-j", "link").stdout)
    return {link["ifname"] for link in links if RUN_ID.match(link["ifname"])}


def _all_cgroup_names() -> set[str]:
    names: set[str] = set()
    if CGROUP_ROOT.is_dir():
        for hierarchy in CGROUP_ROOT.iterdir():
            names |= _names_with_prefix(hierarchy)
    return names


def leftovers(run_id: str | None = None) -> list[str]:
    """What of the harness exists now (of one run, or of every run): empty when all is gone."""

    def ours(name: str) -> bool:
        return _of_run(name, run_id)

    found = [f"netns {n}" for n in _names_with_prefix(NETNS_DIR) if ours(n)]
    found += [f"link {n}" for n in _host_links() if ours(n)]
    found += [f"cgroup {n}" for n in _all_cgroup_names() if ours(n)]
    found += [f"dir {STATE_ROOT / n}" for n in _names_with_prefix(STATE_ROOT) if ours(n)]
    found += [f"dir {DATA_ROOT / n}" for n in _names_with_prefix(DATA_ROOT) if ours(n)]
    found += [f"process {pid}" for pid in _processes_of_run(run_id)]
    return sorted(found)


def _processes_of_run(run_id: str | None) -> list[int]:
    """Live processes of a run outside its cgroups' view: a command line naming the run's
    directories, or a seat in one of its network namespaces (a backstop to the cgroups)."""
    needle = str(STATE_ROOT / (run_id or "bt")).encode()
    namespaces = set()
    for name in _names_with_prefix(NETNS_DIR):
        if _of_run(name, run_id):
            with contextlib.suppress(OSError):
                namespaces.add(f"net:[{(NETNS_DIR / name).stat().st_ino}]")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            ours = needle in (proc / "cmdline").read_bytes()
            ours = ours or os.readlink(proc / "ns" / "net") in namespaces
            if ours and not _is_zombie(int(proc.name)):
                pids.append(int(proc.name))
    return pids


def _of_run(name: str, run_id: str | None) -> bool:
    """Whether a name is the harness's (of this run, or of any run when run_id is None)."""
    match = RUN_ID.match(name)
    return match is not None and (run_id is None or match.group(1) == run_id)


def _unmount_under(roots: Sequence[Path]) -> None:
    """Lazily unmount whatever is mounted below the run's directories, deepest first."""
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")
            if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        run("umount", "-l", point, check=False)


def remove_run(run_id: str) -> None:
    """Remove everything of one run: idempotent, and it works when the owner is long dead."""
    run_dir, data_dir = STATE_ROOT / run_id, DATA_ROOT / run_id
    # Each step goes on when one before it failed: what stays is reported by leftovers().
    for name in sorted(_all_cgroup_names() | _names_with_prefix(NETNS_DIR)):
        if _of_run(name, run_id):
            with contextlib.suppress(AssertionError, OSError):
                kill_cgroup(name)
    for pid in _processes_of_run(run_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not _processes_of_run(run_id), 20, f"the processes of {run_id} die")
    for node_dir in run_dir.iterdir() if run_dir.is_dir() else ():
        remove_stale_shim_sockets(node_dir / "exec")
    _unmount_under([run_dir, data_dir])
    for name in sorted(_names_with_prefix(NETNS_DIR)):
        if _of_run(name, run_id):
            run("ip", "netns", "delete", name, check=False)
    for link in sorted(_host_links()):
        if _of_run(link, run_id):
            run("ip", "link", "delete", "dev", link, check=False)
    for name in sorted(_all_cgroup_names()):
        if _of_run(name, run_id):
            with contextlib.suppress(OSError):
                remove_cgroups(name)
    for directory in (run_dir, data_dir):
        shutil.rmtree(directory, ignore_errors=True)


def sweep_leftovers() -> list[str]:
    """Remove what earlier runs that died left behind; return the run ids swept."""
    found = _all_cgroup_names() | _names_with_prefix(NETNS_DIR) | _host_links()
    found |= _names_with_prefix(STATE_ROOT) | _names_with_prefix(DATA_ROOT)
    runs = {m.group(1) for m in map(RUN_ID.match, found) if m}
    dead = sorted(r for r in runs if not run_alive(r))
    for run_id in dead:
        remove_run(run_id)
    return dead


# ---------------------------------------------------------------- the cluster


class Cluster:
    """A switch, nodes on it, their engines, and (once asked) a swarm of them.

    Nodes are named by a short name (``m1``, ``w1``); their real names carry the run id.
    """

    def __init__(self) -> None:
        self.run_id = "bt" + secrets.token_hex(3)[:5]
        while (STATE_ROOT / self.run_id).exists() or (DATA_ROOT / self.run_id).exists():
            self.run_id = "bt" + secrets.token_hex(3)[:5]
        self.run_dir = STATE_ROOT / self.run_id
        self.data_dir = DATA_ROOT / self.run_id
        self.nodes: dict[str, Node] = {}
        self.managers: list[str] = []  # in the order they joined; the first inits the swarm
        self.subnet: ipaddress.IPv4Network | None = None
        self._lock = threading.Lock()
        self._image_tars: dict[str, Path] = {}
        self._next_index = 0
        self._closed = False
        write_owner(self.run_dir)
        _live_clusters.append(self)
        cleanup_on_sigterm()

    # -- names and addresses

    @property
    def switch(self) -> str:
        return f"{self.run_id}-sw"

    @property
    def host_link(self) -> str:
        return f"{self.run_id}-h"

    @property
    def host_address(self) -> str:
        assert self.subnet is not None
        return str(self.subnet[HOST_HOST])

    def node(self, short: str) -> Node:
        return self.nodes[short]

    def client(self, short: str) -> docker.DockerClient:
        return self.nodes[short].client()

    @property
    def manager(self) -> str:
        """A manager that can answer now: its engine runs and its cable is in."""
        if not self.managers:
            raise HarnessError("no swarm yet: call swarm_init first")
        for short in self.managers:
            if self.nodes[short].engine_alive() and not self.partitioned(short):
                return short
        raise HarnessError(f"no manager of {self.managers} is up and connected")

    def manager_client(self) -> docker.DockerClient:
        return self.client(self.manager)

    # -- building

    def create_switch(self) -> None:
        """The switch namespace with its bridge, and the host's veth into it."""
        self.subnet = pick_free_subnet(host_networks())
        sw = self.switch
        run("ip", "netns", "add", sw)
        run("ip", "-n", sw, "link", "set", "dev", "lo", "up")
        run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", sw, "link", "set", "dev", "br0", "up")
        run(
            "ip", "link", "add", "name", self.host_link, "type", "veth",
            "peer", "name", "host", "netns", sw,
        )  # fmt: skip
        run("ip", "-n", sw, "link", "set", "dev", "host", "master", "br0", "up")
        run("ip", "addr", "add", f"{self.host_address}/24", "dev", self.host_link)
        run("ip", "link", "set", "dev", self.host_link, "up")

    def add_node(self, short: str) -> Node:
        """A new node on the switch with its engine running (not in the swarm yet)."""
        if self.subnet is None:
            self.create_switch()
        assert self.subnet is not None
        with self._lock:
            # Short names become interface names ({run}-{short} fits IFNAMSIZ) and must not
            # be the switch's own links or names.
            if (
                not re.fullmatch(r"[a-z][a-z0-9]{0,5}", short)
                or short in self.nodes
                or short in ("host", "br0", "sw", "h")
            ):
                raise HarnessError(f"bad or taken node name {short!r}")
            # Indexes are never reused, so a re-added node never gets a removed one's address.
            self._next_index += 1
            node = Node(
                name=f"{self.run_id}-{short}",
                short=short,
                index=self._next_index,
                address=str(self.subnet[10 + self._next_index]),
                run_dir=self.run_dir,
                data_dir=self.data_dir / short,
            )
            self.nodes[short] = node
            self._wire(node)
        node.start_engine()
        return node

    def _wire(self, node: Node) -> None:
        ns, sw = node.name, self.switch
        run("ip", "netns", "add", ns)
        run(
            "ip", "link", "add", "name", "eth0", "netns", ns, "type", "veth",
            "peer", "name", node.short, "netns", sw,
        )  # fmt: skip
        run("ip", "-n", sw, "link", "set", "dev", node.short, "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", f"{node.address}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "dev", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "dev", "lo", "up")

    def add_nodes(self, shorts: Sequence[str]) -> list[Node]:
        """Several nodes, their engines started in parallel."""
        if self.subnet is None:
            self.create_switch()
        with ThreadPoolExecutor(max_workers=len(shorts) or 1) as pool:
            # Wiring is quick; the engines' start is what runs in parallel.
            return list(pool.map(self.add_node, shorts))

    def load_images(self, refs: Sequence[str], shorts: Sequence[str] | None = None) -> None:
        """Copy images from the host's engine onto nodes (docker save | docker load)."""
        targets = [self.nodes[s] for s in (shorts or list(self.nodes))]
        tars = [self._saved(ref) for ref in refs]

        def load(node: Node) -> None:
            client = node.client(timeout=300)
            for tar in tars:
                with tar.open("rb") as data:
                    client.images.load(data)

        with ThreadPoolExecutor(max_workers=len(targets) or 1) as pool:
            list(pool.map(load, targets))

    def _saved(self, ref: str) -> Path:
        with self._lock:
            if ref not in self._image_tars:
                host = docker.from_env(version="auto", timeout=300)
                try:
                    path = self.run_dir / f"image-{len(self._image_tars)}.tar"
                    with path.open("wb") as out:
                        # Named by the reference asked for: with named=True the tarball takes
                        # the image's first tag, another run's name for the same image id.
                        for chunk in host.images.get(ref).save(named=ref):
                            out.write(chunk)
                finally:
                    host.close()
                self._image_tars[ref] = path
            return self._image_tars[ref]

    # -- swarm

    def swarm_init(self, short: str) -> None:
        """Make the node the swarm's first manager (the host's engine never joins)."""
        node = self.nodes[short]
        node.client().swarm.init(
            advertise_addr=node.address,
            listen_addr=f"{node.address}:{SWARM_PORT}",
            default_addr_pool=[SWARM_ADDRESS_POOL],
            subnet_size=24,
            dispatcher_heartbeat_period=DISPATCHER_HEARTBEAT_NS,
        )
        self.managers = [short]

    def join(self, short: str, manager: bool = False) -> None:
        boss = self.nodes[self.manager]
        swarm = self.manager_client().swarm
        swarm.reload()
        token = swarm.attrs["JoinTokens"]["Manager" if manager else "Worker"]
        node = self.nodes[short]
        node.client().swarm.join(
            remote_addrs=[f"{boss.address}:{SWARM_PORT}"],
            join_token=token,
            listen_addr=f"{node.address}:{SWARM_PORT}",
            advertise_addr=node.address,
        )
        if manager:
            self.managers.append(short)

    def swarm_node(self, short: str) -> Any:
        """The manager's view of a node (docker-py Node), found by hostname."""
        name = self.nodes[short].name
        for entry in self.manager_client().nodes.list():
            if entry.attrs["Description"]["Hostname"] == name:
                return entry
        raise HarnessError(f"{name} is not in the swarm")

    def set_availability(self, short: str, availability: str) -> None:
        entry = self.swarm_node(short)
        spec = dict(entry.attrs["Spec"], Availability=availability)
        entry.update(spec)

    def set_labels(self, short: str, labels: dict[str, str]) -> None:
        """Replace the node's labels (for placement constraints and spread preferences)."""
        entry = self.swarm_node(short)
        entry.update(dict(entry.attrs["Spec"], Labels=dict(labels)))

    def node_states(self) -> dict[str, str]:
        """Short name -> the manager's Status.State of it ('ready', 'down', ...)."""
        by_name = {n.name: s for s, n in self.nodes.items()}
        states = {}
        for entry in self.manager_client().nodes.list():
            short = by_name.get(entry.attrs["Description"]["Hostname"])
            if short is not None:
                states[short] = entry.attrs["Status"]["State"]
        return states

    def short_of_node_id(self) -> dict[str, str]:
        """Swarm node id -> short name (to read where tasks run)."""
        by_name = {n.name: s for s, n in self.nodes.items()}
        return {
            e.id: by_name[e.attrs["Description"]["Hostname"]]
            for e in self.manager_client().nodes.list()
            if e.attrs["Description"]["Hostname"] in by_name
        }

    def wait_states(self, wanted: dict[str, str], timeout: float = 30.0) -> float:
        """Wait until the manager reports these node states; return the seconds it took."""
        started = time.monotonic()
        seen: list[dict[str, str]] = [{}]

        def reached() -> bool:
            seen[0] = self.node_states()
            return all(seen[0].get(s) == st for s, st in wanted.items())

        try:
            wait_until(reached, timeout, f"the swarm reports {wanted}")
        except AssertionError as exc:
            alive = {s: n.engine_alive() for s, n in self.nodes.items()}
            raise AssertionError(f"{exc}; it reports {seen[0]}; engines alive: {alive}") from None
        return time.monotonic() - started

    def form(
        self,
        workers: int = 3,
        managers: int = 1,
        images: Sequence[str] = ("berth/busybox:latest",),
    ) -> None:
        """Drained managers ``m1``..``mK`` and workers ``w1``..``wN``, all Ready, images loaded."""
        bosses = [f"m{i}" for i in range(1, managers + 1)]
        hands = [f"w{i}" for i in range(1, workers + 1)]
        self.add_nodes([*bosses, *hands])
        self.load_images(images)
        self.swarm_init(bosses[0])
        for short in bosses[1:]:  # one at a time: each join changes the Raft membership
            self.join(short, manager=True)
        for short in bosses:
            self.set_availability(short, "drain")
        with ThreadPoolExecutor(max_workers=workers or 1) as pool:
            list(pool.map(self.join, hands))
        self.wait_states(dict.fromkeys([*bosses, *hands], "ready"))

    def leader(self) -> str:
        """The short name of the manager the swarm reports as its Raft leader."""
        by_name = {n.name: s for s, n in self.nodes.items()}
        for entry in self.manager_client().nodes.list(filters={"role": "manager"}):
            if entry.attrs.get("ManagerStatus", {}).get("Leader"):
                return by_name[entry.attrs["Description"]["Hostname"]]
        raise HarnessError("the swarm has no leader now")

    # -- faults

    def kill_node(self, short: str) -> None:
        """Kill the node whole: engine, containerd, shims and containers, at once."""
        self.nodes[short].kill()

    def restart_node(self, short: str) -> None:
        """Stop the node's engine if it runs (gracefully), then start it again."""
        node = self.nodes[short]
        node.stop_engine()
        node.start_engine()

    def partition(self, short: str) -> None:
        """Pull the node's cable: its veth in the switch goes down (the node keeps running)."""
        run("ip", "-n", self.switch, "link", "set", "dev", self.nodes[short].short, "down")

    def heal(self, short: str) -> None:
        run("ip", "-n", self.switch, "link", "set", "dev", self.nodes[short].short, "up")

    def partitioned(self, short: str) -> bool:
        out = run(
            "ip", "-j", "-n", self.switch, "link", "show", "dev", self.nodes[short].short
        ).stdout
        return "UP" not in json.loads(out)[0].get("flags", [])

    def make_whole(self, timeout: float = 60.0) -> None:
        """Heal every partition, restart every dead engine, wait until all are Ready again."""
        for short, node in self.nodes.items():
            if self.partitioned(short):
                self.heal(short)
            if not node.engine_alive():
                self.restart_node(short)
        if self.managers:
            self.wait_states(dict.fromkeys(self.nodes, "ready"), timeout)

    def remove_node(self, short: str) -> None:
        """Take a node out for good: it leaves the swarm, its engine and namespace go."""
        node = self.nodes[short]
        if self.managers and short not in self.managers:
            with contextlib.suppress(docker.errors.APIError):
                node.client().swarm.leave(force=True)
            with contextlib.suppress(docker.errors.APIError, HarnessError):
                self.swarm_node(short).remove(force=True)
        node.stop_engine()
        node.close_clients()
        _unmount_under([node.state_dir, node.data_dir])
        run("ip", "netns", "delete", node.name, check=False)
        remove_cgroups(node.name)
        shutil.rmtree(node.state_dir, ignore_errors=True)
        shutil.rmtree(node.data_dir, ignore_errors=True)
        del self.nodes[short]

    # -- cleanup

    def cleanup(self) -> None:
        """Remove everything of this run; safe to call more than once."""
        for node in self.nodes.values():
            node.close_clients()
        remove_run(self.run_id)
        for node in self.nodes.values():
            if node.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(timeout=5)
        self._closed = True
        if self in _live_clusters:
            _live_clusters.remove(self)
        left = leftovers(self.run_id)
        if left:
            raise HarnessError(f"cleanup of {self.run_id} left: {left}")


_live_clusters: list[Cluster] = []


@contextlib.contextmanager
def running_cluster(workers: int = 3, managers: int = 1) -> Iterator[Cluster]:
    """A formed cluster that is always removed afterwards."""
    cluster = Cluster()
    try:
        cluster.form(workers, managers)
        yield cluster
    finally:
        cluster.cleanup()


@atexit.register
def _cleanup_all() -> None:
    for cluster in list(_live_clusters):
        with contextlib.suppress(Exception):
            cluster.cleanup()
