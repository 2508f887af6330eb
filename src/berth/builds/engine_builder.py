"""Berth's own image builder: each Dockerfile step in a hardened container, committed by hand.

Docker's legacy builder cannot drop capabilities, set no-new-privileges or a pids limit on a
``RUN`` step, and its cache is shared by everyone on the engine. So this builder does what the
legacy builder does inside, through the Engine API: for each instruction it creates a container
from the previous step's image, runs a command in it (``RUN``) or puts files into it
(``COPY``/``ADD``/``WORKDIR``), commits it with an explicit image config, and removes it.
Instructions that only change the config (``ENV``, ``CMD``, ...) are applied at the next commit.

Every ``RUN`` container: the tenant's build memory (no swap), CPUs and the pids limit, all
capabilities dropped but :data:`KEPT_CAPABILITIES`, no-new-privileges, an init, no mounts, a
size-capped json-file log, and the tenant's own build network ``berth-b-<tenant>``. One deadline
covers the whole build; the layers a build writes are summed and capped (polled while a step
runs). Whatever happens, a step's container is removed (``finally``), also when the reader goes
away mid-build.

The cache is per tenant: a step's key is a sha256 over the tenant, the installation, the parent
image, the config, the substituted instruction, the build args and (for copies) the files. It
is stored as an image label and only an image labelled for the same tenant is reused.

Images are never pulled: every ``FROM``/``COPY --from`` goes through
:mod:`berth.builds.image_policy`, and containers are created from the resolved image id.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import posixpath
import queue
import tarfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import replace
from typing import IO, Any

import docker
import docker.errors
import requests
import urllib3
from docker.types import LogConfig

from berth.builds import copy_files, image_policy, step_output
from berth.builds import dockerfile as df
from berth.builds.image_config import (
    LABEL_BUILD_CACHE,
    LABEL_BUILD_STEP,
    ImageConfig,
    Stage,
)
from berth.builds.image_stores import DockerImageStore
from berth.builds.protocol import BuildEvent, BuildLimits, BuildRequest
from berth.errors import BerthError, EngineError
from berth.runtime.protocol import (
    KEPT_CAPABILITIES,
    LABEL_INSTALLATION,
    LABEL_MANAGED,
    LABEL_TENANT,
)
from berth.runtime.subnets import (
    DEFAULT_NETWORK_POOL,
    DEFAULT_NETWORK_PREFIX,
    create_bridge_network,
    parse_pool,
)

log = logging.getLogger(__name__)

BUILD_NETWORK_PREFIX = "berth-b-"
LABEL_PURPOSE = "berth.purpose"
BUILD_LABELS = (image_policy.LABEL_BUILD_TENANT, image_policy.LABEL_BUILD_INSTALLATION)
NETWORK_OPTIONS = {"com.docker.network.bridge.enable_icc": "true"}
STEP_LOG = {"max-size": "10m", "max-file": "1"}
LOG_TAIL_LINES = 20
POLL_SECONDS = 2.0
NOOP_ENTRYPOINT = ["/.berth-build-noop"]  # containers that are never started need a command
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
MiB = 1024 * 1024


def build_network_name(tenant_id: str) -> str:
    return f"{BUILD_NETWORK_PREFIX}{tenant_id}"


class BuildStopped(Exception):
    """The build cannot go on; the message is what the user reads."""


# --- one build -------------------------------------------------------------------------------


class EngineBuilder:
    """An :class:`berth.builds.protocol.ImageBuilder` on the Docker Engine."""

    def __init__(
        self,
        client: docker.DockerClient,
        installation: str,
        network_ready: Callable[[str], None] | None = None,
        network_pool: str = DEFAULT_NETWORK_POOL,
        network_prefix: int = DEFAULT_NETWORK_PREFIX,
    ) -> None:
        self._client = client
        self.installation = installation
        # The egress filter's hook: returns once the network's rules are in place, raises if
        # they cannot be. Called before the first step runs on the build network.
        self.network_ready: Callable[[str], None] = network_ready or (lambda _network: None)
        self.networks = BuildNetworks(
            client.api, parse_pool(network_pool, network_prefix), network_prefix
        )

    def build(self, request: BuildRequest) -> Iterator[BuildEvent]:
        api = self._client.api
        return _Build(api, self.installation, request, self.network_ready, self.networks).events()


class BuildNetworks:
    """Each building tenant's network exists only while one of its builds runs: the last build
    to finish removes it, so idle tenants hold no subnet (and no bridge) for builds."""

    def __init__(self, api: Any, pool: ipaddress.IPv4Network, prefix: int) -> None:
        self.api = api
        self.pool, self.prefix = pool, prefix
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}

    def create(self, name: str, labels: Mapping[str, str]) -> None:
        create_bridge_network(self.api, name, labels, NETWORK_OPTIONS, self.pool, self.prefix)

    def enter(self, tenant_id: str) -> None:
        with self._lock:
            self._users[tenant_id] = self._users.get(tenant_id, 0) + 1

    def leave(self, tenant_id: str, name: str) -> None:
        # Under the lock, so that a build of the same tenant entering now waits for the removal
        # and then creates the network anew, instead of using one that is going away.
        with self._lock:
            left = self._users.get(tenant_id, 1) - 1
            if left > 0:
                self._users[tenant_id] = left
                return
            self._users.pop(tenant_id, None)
            try:
                self.api.remove_network(name)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:  # in use by a leftover: the sweep retries
                log.info("build network %s stays for now: %s", name, _explain(exc))
            except Exception as exc:
                log.warning("could not remove build network %s: %s", name, exc)


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _is_transport(exc: BaseException) -> bool:
    return isinstance(
        exc, (requests.exceptions.RequestException, urllib3.exceptions.HTTPError)
    ) and not isinstance(exc, docker.errors.APIError)


class _Build:
    def __init__(
        self,
        api: Any,
        installation: str,
        request: BuildRequest,
        network_ready: Callable[[str], None],
        networks: BuildNetworks,
    ) -> None:
        self.api = api
        self.network_ready = network_ready
        self.installation = installation
        self.request = request
        self.limits: BuildLimits = request.limits
        self.deadline = time.monotonic() + self.limits.timeout_seconds
        self.store = DockerImageStore(api)
        self.network = build_network_name(request.tenant_id)
        self.networks = networks
        self.network_entered = False  # counted among the network's users
        self.network_ensured = False  # exists and is filtered
        self.written = 0  # bytes of layers this build wrote
        self.log_bytes = 0
        self.truncated = False
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self.stages: list[Stage] = []
        self.containers: list[str] = []
        self.step_number = 0
        self.step_total = 0
        self.step_text = ""

    # -- the event stream ------------------------------------------------------------------

    def events(self) -> Generator[BuildEvent, None, None]:
        try:
            image_id = yield from self._lines_as_events(self._run_all())
        except BuildStopped as stop:
            yield self._error(str(stop))
            return
        except df.DockerfileError as exc:
            yield self._error(str(exc))
            return
        except BerthError as exc:
            yield self._error(exc.message)
            return
        except docker.errors.APIError as exc:
            # The engine answered, so this is the build's failure, not the engine's.
            log.warning("build of %s: engine refused a step: %s", self.request.tag, exc)
            yield self._error(f"the engine refused step {self.step_number}: {_explain(exc)}")
            return
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise EngineError(
                f"the container engine is unreachable during the build: {exc}"
            ) from exc
        except docker.errors.DockerException as exc:
            yield self._error(f"the build failed: {exc}")
            return
        finally:
            self._remove_containers()
            if self.network_entered:
                self.networks.leave(self.request.tenant_id, self.network)
        yield BuildEvent("done", f"built {self.request.tag} ({image_id})", image_id)

    def _lines_as_events(
        self, steps: Generator[str, None, str]
    ) -> Generator[BuildEvent, None, str]:
        while True:
            try:
                line = next(steps)
            except StopIteration as done:
                return str(done.value)
            yield BuildEvent("log", line)

    def _error(self, message: str) -> BuildEvent:
        text = message.strip() or "the build failed"
        if self.tail:
            text += "\n\nLast build output:\n" + "\n".join(self.tail)
        return BuildEvent("error", text)

    def _say(self, line: str) -> str:
        """A log line of Berth's own (not the step's output: never truncated)."""
        self.tail.append(line)
        return line

    def _output(self, line: str) -> Iterator[str]:
        """A line the step printed, within the build's log budget."""
        self.tail.append(line)
        if self.truncated:
            return
        self.log_bytes += len(line.encode()) + 1
        if self.log_bytes > self.limits.log_max_bytes:
            self.truncated = True
            yield f"... output truncated (more than {self.limits.log_max_bytes} bytes)"
            return
        yield line

    def _stopped(self, why: str) -> BuildStopped:
        return BuildStopped(
            f"build stopped: step {self.step_number} ({self.step_text[:120]}) {why}"
        )

    # -- the plan ---------------------------------------------------------------------------

    def _run_all(self) -> Generator[str, None, str]:
        path = self.request.context_dir / df.DOCKERFILE_NAME
        if not path.is_file() or path.is_symlink():
            raise BuildStopped("no Dockerfile in the build context")
        try:
            text = path.read_bytes()[: df.MAX_DOCKERFILE_BYTES + 1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BuildStopped("the Dockerfile is not UTF-8 text") from exc
        instructions = df.parse_dockerfile(text)
        self.step_total = len(instructions)
        meta_args: dict[str, str] = {}
        for number, instruction in enumerate(instructions, start=1):
            self.step_number, self.step_text = number, instruction.text
            self._check_deadline()
            yield self._say(f"Step {number}/{self.step_total} : {instruction.text}")
            if not self.stages and instruction.keyword == "ARG":
                name, default = df.arg_declaration(instruction)
                if default is not None:
                    meta_args[name] = df.substitute(default, meta_args)
                continue
            if instruction.keyword == "FROM":
                yield from self._from(instruction, meta_args)
                continue
            yield from self._step(self.stages[-1], instruction, meta_args)
        image_id = yield from self._finish(self.stages[-1])
        return image_id

    def _check_deadline(self) -> None:
        if time.monotonic() >= self.deadline:
            raise self._stopped(
                f"was not started: the build reached the build time limit of "
                f"{self.limits.timeout_seconds:g} s"
            )

    def _from(self, instruction: df.Instruction, meta_args: Mapping[str, str]) -> Iterator[str]:
        reference, name = df.from_parts(instruction, meta_args)
        resolved = self._resolve(reference)
        if resolved.ref.kind == "stage":
            source = self._stage_named(resolved.ref.name)
            config = source.config.copy()
        else:
            config = ImageConfig.of_image(resolved.config)
        if name is not None and any(s.name == name for s in self.stages):
            raise df.DockerfileError(instruction.line, f"stage name {name!r} is used twice")
        self.stages.append(Stage(name, resolved.image_id, config, {}))
        yield self._say(f" ---> {_short(resolved.image_id)}")

    def _resolve(self, reference: str) -> image_policy.ResolvedImage:
        stages = {s.name: s.image_id for s in self.stages if s.name}
        if reference.isdigit() and int(reference) < len(self.stages):
            stages[reference] = self.stages[int(reference)].image_id
        return image_policy.resolve(
            reference,
            self.store,
            self.request.tenant_id,
            self.installation,
            registry=self.request.registry,
            stages=stages,
            builds=True,
        )

    def _stage_named(self, name: str) -> Stage:
        if name.isdigit():
            return self.stages[int(name)]
        return next(s for s in self.stages if s.name == name)

    def _step(
        self, stage: Stage, instruction: df.Instruction, meta_args: Mapping[str, str]
    ) -> Iterator[str]:
        keyword, env = instruction.keyword, stage.substitution_env()
        config = stage.config
        if keyword == "RUN":
            yield from self._run(stage, instruction)
        elif keyword in ("COPY", "ADD"):
            yield from self._copy(stage, instruction)
        elif keyword == "WORKDIR":
            value = df.single_word(instruction, env)
            config.workdir = posixpath.normpath(posixpath.join(config.workdir or "/", value))
            yield from self._make_workdir(stage, config.workdir)
        elif keyword == "ENV":
            for name, value in df.key_values(instruction, env):
                df.check_env_name(name, instruction.line)
                config.set_env(name, value)
        elif keyword == "ARG":
            name, default = df.arg_declaration(instruction)
            if default is not None:
                stage.args[name] = df.substitute(default, env)
            elif name in meta_args:
                stage.args[name] = meta_args[name]
        elif keyword == "LABEL":
            for name, value in df.key_values(instruction, env):
                if name.startswith("berth."):
                    raise df.DockerfileError(
                        instruction.line, "labels starting with 'berth.' are reserved"
                    )
                config.labels[name] = value
        elif keyword in ("CMD", "ENTRYPOINT"):
            argv = df.command_of(instruction, config.shell)
            if keyword == "CMD":
                config.cmd = argv or None
            else:
                config.entrypoint = argv or None
                config.cmd = None  # as Docker: a new ENTRYPOINT resets an inherited CMD
        elif keyword == "EXPOSE":
            for port in df.exposed_ports(instruction, env):
                config.exposed[port] = {}
        elif keyword == "USER":
            config.user = df.single_word(instruction, env)
        elif keyword == "STOPSIGNAL":
            config.stop_signal = df.single_word(instruction, env)
        elif keyword == "SHELL":
            config.shell = df.shell_of(instruction)
        elif keyword == "HEALTHCHECK":
            yield self._say(" ---> HEALTHCHECK ignored: Berth checks an app's health itself")
        elif keyword == "VOLUME":
            yield self._say(" ---> VOLUME ignored: Berth apps have no volumes")
        elif keyword == "MAINTAINER":
            config.labels["maintainer"] = instruction.args

    # -- cache ------------------------------------------------------------------------------

    def _key(self, stage: Stage, what: Mapping[str, Any]) -> str:
        material = {
            "tenant": self.request.tenant_id,
            "installation": self.installation,
            "parent": stage.image_id,
            "config": stage.config.key_material(),
            "args": sorted(stage.args.items()),
            **what,
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    def _cached(self, key: str) -> str | None:
        candidates = self.api.images(all=True, filters={"label": [f"{LABEL_BUILD_CACHE}={key}"]})
        for image in candidates:
            labels = image.get("Labels") or {}
            if (
                labels.get(LABEL_BUILD_CACHE) == key
                and labels.get(image_policy.LABEL_BUILD_TENANT) == self.request.tenant_id
                and labels.get(image_policy.LABEL_BUILD_INSTALLATION) == self.installation
            ):
                return str(image["Id"])
        return None

    def _use_cache(self, stage: Stage, key: str) -> Generator[str, None, bool]:
        cached = self._cached(key)
        if cached is None:
            return False
        stage.image_id = cached
        yield self._say(" ---> Using cache")
        yield self._say(f" ---> {_short(cached)}")
        return True

    def _commit(self, stage: Stage, container_id: str, key: str, extra: Mapping[str, str]) -> str:
        labels = {
            image_policy.LABEL_BUILD_TENANT: self.request.tenant_id,
            image_policy.LABEL_BUILD_INSTALLATION: self.installation,
            **extra,
            LABEL_BUILD_CACHE: key,
        }
        answer = self.api.commit(container_id, conf=stage.config.commit_conf(labels))
        stage.image_id = str(answer["Id"])
        return stage.image_id

    # -- containers -------------------------------------------------------------------------

    def _container_labels(self) -> dict[str, str]:
        # Not berth.managed: the app runtime lists managed containers of this installation as
        # instances, and would remove a running build step as an orphan.
        return {
            LABEL_BUILD_STEP: self.installation,
            LABEL_TENANT: self.request.tenant_id,
        }

    def _host_config(self, network: str) -> Any:
        memory = self.limits.memory_mb * MiB
        return self.api.create_host_config(
            mem_limit=memory,
            memswap_limit=memory,
            nano_cpus=int(self.limits.cpus * 1e9),
            pids_limit=self.limits.pids,
            cap_drop=["ALL"],
            cap_add=list(KEPT_CAPABILITIES),
            security_opt=["no-new-privileges:true"],
            privileged=False,
            init=True,
            network_mode=network,
            log_config=LogConfig(type=LogConfig.types.JSON, config=STEP_LOG),
            restart_policy={"Name": "no"},
        )

    def _create(
        self,
        image_id: str,
        entrypoint: list[str],
        env: list[str],
        network: str = "none",
        **extra: Any,
    ) -> str:
        """A step container; only RUN containers are started, and only they get the network."""
        config = self.stages[-1].config if self.stages else ImageConfig()
        answer = self.api.create_container(
            image=image_id,
            entrypoint=entrypoint,
            environment=env,
            working_dir=config.workdir or None,
            user=config.user or None,
            labels=self._container_labels(),
            host_config=self._host_config(network),
            name=f"berth-build-{uuid.uuid4().hex[:16]}",
            **extra,
        )
        container_id = str(answer["Id"])
        self.containers.append(container_id)
        return container_id

    def _remove(self, container_id: str) -> None:
        try:
            self.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:  # the sweep at the next start removes what is left
            log.warning("could not remove build container %s: %s", container_id[:12], exc)
            return
        if container_id in self.containers:
            self.containers.remove(container_id)

    def _remove_containers(self) -> None:
        for container_id in list(self.containers):
            self._remove(container_id)

    def _ensure_network(self) -> None:
        labels = {
            LABEL_MANAGED: "true",
            LABEL_INSTALLATION: self.installation,
            LABEL_TENANT: self.request.tenant_id,
            LABEL_PURPOSE: "build",
        }
        if self.network_ensured:
            return
        if not self.network_entered:
            self.networks.enter(self.request.tenant_id)
            self.network_entered = True
        if self._owned_network():
            self._network_secured()
            self.network_ensured = True
            return
        try:
            self.networks.create(self.network, labels)
        except docker.errors.APIError:
            if not self._owned_network():  # lost a race with another build of the tenant
                raise
        if not self._owned_network():
            raise BuildStopped("the build network could not be set up")
        self._network_secured()
        self.network_ensured = True

    def _network_secured(self) -> None:
        try:
            self.network_ready(self.network)
        except Exception as exc:
            log.error("build network %s is not egress-filtered: %s", self.network, exc)
            raise BuildStopped(
                "the build network could not be secured; the build did not start (try again)"
            ) from exc

    def _owned_network(self) -> bool:
        found = [n for n in self.api.networks(names=[self.network]) if n["Name"] == self.network]
        if not found:
            return False
        labels = found[0].get("Labels") or {}
        if (
            labels.get(LABEL_INSTALLATION) != self.installation
            or labels.get(LABEL_TENANT) != self.request.tenant_id
        ):
            raise BuildStopped("the build network is not Berth's; ask the provider")
        return True

    # -- RUN --------------------------------------------------------------------------------

    def _run(self, stage: Stage, instruction: df.Instruction) -> Generator[str, None, None]:
        argv = df.command_of(instruction, stage.config.shell)
        if not argv:
            raise df.DockerfileError(instruction.line, "RUN needs a command")
        key = self._key(stage, {"run": argv})
        used = yield from self._use_cache(stage, key)
        if used:
            return
        command = _with_args(argv, stage, instruction.exec_form is not None)
        # The network is made (and filtered) for the first step that runs: a build whose steps
        # all come from the cache, or that only copies, needs none.
        self._ensure_network()
        env = list(stage.config.env)
        container_id = self._create(stage.image_id, command, env, network=self.network)
        try:
            yield self._say(f" ---> Running in {container_id[:12]}")
            yield from self._watch(container_id, argv)
            self._commit(stage, container_id, key, {})
        finally:
            self._remove(container_id)
        yield self._say(f" ---> {_short(stage.image_id)}")

    def _watch(self, container_id: str, argv: list[str]) -> Generator[str, None, None]:
        # Attached before the start, so not a byte is missed: following the log of a container
        # that exits at once sometimes returns nothing.
        stream = self.api.attach(container_id, stdout=True, stderr=True, stream=True, logs=True)
        self.api.start(container_id)
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=256)
        threading.Thread(
            target=step_output.pump, args=(stream, chunks), name="berth-build-output", daemon=True
        ).start()
        lines = step_output.LineSplitter()
        watcher = _Limits(self, container_id)
        reason: str | None = None
        ended = False
        next_check = time.monotonic() + POLL_SECONDS / 2
        while True:
            try:
                chunk = chunks.get(timeout=0.25)
            except queue.Empty:
                chunk = b""
            if chunk is None:
                ended = True
                break
            for line in lines.feed(chunk):
                yield from self._output(line)
            now = time.monotonic()
            if now >= self.deadline:
                reason = f"was stopped at the build time limit of {self.limits.timeout_seconds:g} s"
            elif now >= next_check:
                reason = watcher.check()
                next_check = now + POLL_SECONDS
            if reason is not None:
                self._kill(container_id)
                break
        rest = iter(()) if ended else step_output.drain(chunks, reason is not None)
        for line in lines.rest(rest):
            yield from self._output(line)
        state = self._wait(container_id)
        if reason is None:
            reason = watcher.after_exit(state)
        if reason is not None:
            raise self._stopped(reason)
        if int(state.get("ExitCode") or 0) != 0:
            raise BuildStopped(
                f"The command '{' '.join(argv)[:300]}' returned a non-zero code: "
                f"{state.get('ExitCode')}"
            )

    def _kill(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.APIError):  # it may have exited by itself
            self.api.kill(container_id)

    def _wait(self, container_id: str) -> dict[str, Any]:
        try:
            self.api.wait(container_id, timeout=30)
        except requests.exceptions.ReadTimeout:
            self._kill(container_id)
            self.api.wait(container_id, timeout=30)
        attrs = self.api.inspect_container(container_id)
        return dict(attrs.get("State") or {})

    def size_rw(self, container_id: str) -> int:
        # docker-py's inspect_container cannot ask for sizes; the API can.
        url = self.api._url("/containers/{0}/json", container_id)
        attrs = self.api._result(self.api._get(url, params={"size": 1}), True)
        return int(attrs.get("SizeRw") or 0)

    def _count_written(self, container_id: str) -> None:
        self.written += self.size_rw(container_id)
        if self.written > self.limits.disk_mb * MiB:
            raise self._stopped(f"wrote more than {self.limits.disk_mb} MiB (the build disk limit)")

    # -- COPY / ADD / WORKDIR ---------------------------------------------------------------

    def _copy(self, stage: Stage, instruction: df.Instruction) -> Generator[str, None, None]:
        env = stage.substitution_env()
        sources, dest = df.copy_parts(instruction, env)
        owner = self._ownership(instruction)
        source_from = instruction.flags.get("from")
        if source_from is not None:
            yield from self._copy_from(
                stage, instruction, df.substitute(source_from, env), sources, dest, owner
            )
            return
        if instruction.keyword == "ADD":
            yield self._say(" ---> ADD copies files as they are (archives are not unpacked)")
        found = copy_files.context_sources(self.request.context_dir, sources, instruction.line)
        placed = copy_files.destinations(found, dest, stage.config.workdir, instruction.line)
        key = self._key(
            stage,
            {
                "copy": [dest, [t for _, t in placed]],
                "owner": [instruction.flags.get("chown"), owner.mode],
                "files": copy_files.digest(placed),
            },
        )
        used = yield from self._use_cache(stage, key)
        if used:
            return
        size = copy_files.total_size(placed)
        if self.written + size > self.limits.disk_mb * MiB:
            raise self._stopped(
                f"would write more than {self.limits.disk_mb} MiB (the build disk limit)"
            )
        container_id = self._create(stage.image_id, NOOP_ENTRYPOINT, list(stage.config.env))
        try:
            owner = self._owner_in(container_id, instruction, owner)
            for source, target in placed:
                if not source.is_dir and not dest.endswith("/"):
                    found_stat = self._stat(container_id, target)
                    if found_stat is not None and found_stat[1]:
                        target = posixpath.join(found_stat[0], source.path.name)
                directory = target if source.is_dir else posixpath.dirname(target)
                base = self._existing_base(container_id, directory, instruction.line)
                with copy_files.spooled() as tar:
                    copy_files.write_tar(
                        tar,
                        base,
                        copy_files.missing_dirs(base, directory),
                        [(source, target)],
                        owner,
                    )
                    self._put(container_id, base, tar)
            self._count_written(container_id)
            self._commit(stage, container_id, key, {})
        finally:
            self._remove(container_id)
        yield self._say(f" ---> {_short(stage.image_id)}")

    def _ownership(self, instruction: df.Instruction) -> copy_files.Ownership:
        """The --chmod mode; the --chown ids come from the image (:meth:`_owner_in`)."""
        mode = None
        if "chmod" in instruction.flags:
            mode = df.chmod_mode(instruction.flags["chmod"], instruction.line)
        return copy_files.Ownership(0, 0, mode)

    def _owner_in(
        self, container_id: str, instruction: df.Instruction, owner: copy_files.Ownership
    ) -> copy_files.Ownership:
        spec = instruction.flags.get("chown")
        if spec is None:
            return owner
        user, _, group = spec.partition(":")
        users = groups = None
        if not user.isdigit():
            users = df.passwd_entries(self._small_file(container_id, "/etc/passwd"))
        if group and not group.isdigit():
            groups = df.group_entries(self._small_file(container_id, "/etc/group"))
        uid, gid = df.chown_ids(spec, instruction.line, users, groups)
        return replace(owner, uid=uid, gid=gid)

    def _small_file(self, container_id: str, path: str, limit: int = 1024 * 1024) -> str:
        """A small text file of the image ("" when missing or not a regular file)."""
        if self._stat(container_id, path) is None:
            return ""
        stream, _ = self.api.get_archive(container_id, path)
        with copy_files.spooled() as raw:
            copy_files.spool_capped(
                stream, raw, limit, lambda: BuildStopped(f"{path} is too large")
            )
            with tarfile.open(fileobj=raw, mode="r|") as archive:
                for member in archive:
                    if member.isreg() and member.size <= limit:
                        data = archive.extractfile(member)
                        return data.read().decode("utf-8", "replace") if data else ""
        return ""

    def _make_workdir(self, stage: Stage, directory: str) -> Generator[str, None, None]:
        key = self._key(stage, {"mkdir": directory})
        used = yield from self._use_cache(stage, key)
        if used:
            return
        container_id = self._create(stage.image_id, NOOP_ENTRYPOINT, list(stage.config.env))
        try:
            # The engine itself makes a container's missing working directory (as root, 0755),
            # which is what WORKDIR does; the commit keeps it.
            self._commit(stage, container_id, key, {})
        finally:
            self._remove(container_id)
        yield self._say(f" ---> {_short(stage.image_id)}")

    def _put(self, container_id: str, base: str, tar: IO[bytes]) -> None:
        tar.seek(0)
        self.api.put_archive(container_id, base, tar.read())

    def _stat(self, container_id: str, path: str) -> tuple[str, bool] | None:
        """(resolved path, is a directory) of ``path`` in the container, None when missing."""
        for _ in range(16):  # symlinks to symlinks
            # docker-py has no call for HEAD /archive; the APIClient is a requests.Session.
            answer = self.api.head(
                self.api._url("/containers/{0}/archive", container_id), params={"path": path}
            )
            if answer.status_code == 404:
                return None
            if answer.status_code != 200:
                raise BuildStopped(f"cannot look at {path[:120]!r} in the image")
            header = answer.headers.get("X-Docker-Container-Path-Stat", "")
            info = json.loads(base64.b64decode(header) or b"{}")
            mode = int(info.get("mode") or 0)
            target = str(info.get("linkTarget") or "")
            if mode & _GO_SYMLINK and target:
                path = (
                    target
                    if target.startswith("/")
                    else posixpath.join(posixpath.dirname(path), target)
                )
                continue
            return path, bool(mode & _GO_DIR)
        raise BuildStopped(f"too many symlinks at {path[:120]!r} in the image")

    def _existing_base(self, container_id: str, directory: str, line: int) -> str:
        """The deepest existing directory on the way to ``directory``, as named there.

        Not resolved: the entries of the tar are named relative to it, and the engine follows
        symlinks in the path given to ``put_archive`` itself (inside the container).
        """
        current = posixpath.normpath(directory or "/")
        while True:
            found = self._stat(container_id, current)
            if found is not None:
                if not found[1]:
                    raise df.DockerfileError(line, f"{current!r} is not a directory in the image")
                return current
            if current == "/":
                return "/"
            current = posixpath.dirname(current)

    # -- COPY --from ------------------------------------------------------------------------

    def _copy_from(
        self,
        stage: Stage,
        instruction: df.Instruction,
        reference: str,
        sources: list[str],
        dest: str,
        owner: copy_files.Ownership,
    ) -> Generator[str, None, None]:
        resolved = self._resolve(reference)
        absolute = (
            dest if dest.startswith("/") else posixpath.join(stage.config.workdir or "/", dest)
        )
        target_dir = posixpath.normpath(absolute)
        key = self._key(
            stage,
            {
                "copy_from": resolved.image_id,
                "sources": sources,
                "dest": dest,
                "owner": [instruction.flags.get("chown"), owner.mode],
            },
        )
        used = yield from self._use_cache(stage, key)
        if used:
            return
        budget = self.limits.disk_mb * MiB - self.written
        source_id = self._create(resolved.image_id, NOOP_ENTRYPOINT, [])
        container_id = self._create(stage.image_id, NOOP_ENTRYPOINT, list(stage.config.env))
        try:
            owner = self._owner_in(container_id, instruction, owner)
            for source in sources:
                path = posixpath.normpath("/" + source)
                found = self._stat(source_id, path)
                if found is None:
                    raise df.DockerfileError(
                        instruction.line,
                        f"COPY failed: {source[:80]!r} is not in {reference[:80]!r}",
                    )
                is_dir = found[1]
                if is_dir or dest.endswith("/") or len(sources) > 1:
                    into = target_dir
                    name = None if is_dir else posixpath.basename(path)
                else:
                    into, name = posixpath.dirname(target_dir), posixpath.basename(target_dir)
                base = self._existing_base(container_id, into, instruction.line)
                stream, _ = self.api.get_archive(source_id, found[0])
                with copy_files.spooled() as raw, copy_files.spooled() as tar:
                    copy_files.spool_capped(stream, raw, budget, self._stopped_disk)
                    copy_files.rewrite_archive(
                        raw, tar, base, into, is_dir, name, owner, instruction.line
                    )
                    self._put(container_id, base, tar)
            self._count_written(container_id)
            self._commit(stage, container_id, key, {})
        finally:
            self._remove(container_id)
            self._remove(source_id)
        yield self._say(f" ---> {_short(stage.image_id)}")

    def _stopped_disk(self) -> BuildStopped:
        return self._stopped(
            f"would write more than {self.limits.disk_mb} MiB (the build disk limit)"
        )

    # -- the end ----------------------------------------------------------------------------

    def _finish(self, stage: Stage) -> Generator[str, None, str]:
        """Commit the final config with the build's labels, and tag it."""
        labels = dict(self.request.labels)
        key = self._key(stage, {"final": sorted(labels.items())})
        cached = self._cached(key)
        if cached is not None:
            stage.image_id = cached
        else:
            container_id = self._create(stage.image_id, NOOP_ENTRYPOINT, list(stage.config.env))
            try:
                self._commit(stage, container_id, key, labels)
            finally:
                self._remove(container_id)
        repository, _, tag = self.request.tag.rpartition(":")
        self.api.tag(stage.image_id, repository, tag, force=True)
        yield self._say(f"Successfully built {_short(stage.image_id)}")
        yield self._say(f"Successfully tagged {self.request.tag}")
        return stage.image_id


# --- helpers ---------------------------------------------------------------------------------


def _explain(exc: docker.errors.APIError) -> str:
    return str(getattr(exc, "explanation", None) or exc)[:500]


def _with_args(argv: list[str], stage: Stage, exec_form: bool) -> list[str]:
    """The RUN command with the build args in its environment but not in the image's.

    The engine merges a container's environment into the committed image, so the args are set
    by the shell (``export``) instead. An exec-form RUN does not see them.
    """
    args = {k: v for k, v in stage.args.items() if k not in stage.config.env_map()}
    if exec_form or not args or len(argv) < 1:
        return argv
    exports = " ".join(f"{name}={_shell_quote(value)}" for name, value in sorted(args.items()))
    return [*argv[:-1], f"export {exports}; {argv[-1]}"]


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


class _Limits:
    """Watches one RUN step: the disk it writes and the processes it starts."""

    def __init__(self, build: _Build, container_id: str) -> None:
        self.build = build
        self.container_id = container_id
        self.pids_max_events = 0

    def check(self) -> str | None:
        self._read_pids()
        limit = self.build.limits.disk_mb * MiB
        if self.build.written + self.build.size_rw(self.container_id) > limit:
            disk = self.build.limits.disk_mb
            return f"was killed for writing more than {disk} MiB (the build disk limit)"
        return None

    def after_exit(self, state: Mapping[str, Any]) -> str | None:
        memory = self.build.limits.memory_mb
        if state.get("OOMKilled"):
            return f"was killed for using more than {memory} MiB of memory (the build memory limit)"
        if self.pids_max_events > 0 or (
            int(state.get("ExitCode") or 0) != 0 and step_output.mentions_fork(self.build.tail)
        ):
            return f"hit the process limit of {self.build.limits.pids} (the build pids limit)"
        return self.check_disk_only()

    def check_disk_only(self) -> str | None:
        limit = self.build.limits.disk_mb * MiB
        if self.build.written + self.build.size_rw(self.container_id) > limit:
            return f"wrote more than {self.build.limits.disk_mb} MiB (the build disk limit)"
        return None

    def _read_pids(self) -> None:
        events = step_output.pids_max_events(self.container_id)
        if events is not None:
            self.pids_max_events = max(self.pids_max_events, events)
