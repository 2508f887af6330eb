"""The image config a build carries from step to step, and how it becomes a commit's config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from berth.builds import dockerfile as df
from berth.runtime.protocol import LABEL_INSTALLATION, LABEL_MANAGED, LABEL_TENANT

LABEL_BUILD_STEP = "berth.build.step"  # on build containers: the installation id (for sweeps)
LABEL_BUILD_CACHE = "berth.build.cache"
# Commit merges the container's labels into the image. These must not reach the image: a
# container started from it would look like a Berth-managed container, or a build step.
SCRUBBED = {LABEL_MANAGED: "", LABEL_INSTALLATION: "", LABEL_BUILD_STEP: "", LABEL_TENANT: ""}


@dataclass
class ImageConfig:
    env: list[str] = field(default_factory=list)
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    workdir: str = ""
    user: str = ""
    exposed: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    shell: tuple[str, ...] = df.DEFAULT_SHELL

    @classmethod
    def of_image(cls, config: Mapping[str, Any]) -> ImageConfig:
        return cls(
            env=list(config.get("Env") or []),
            cmd=list(config["Cmd"]) if config.get("Cmd") else None,
            entrypoint=list(config["Entrypoint"]) if config.get("Entrypoint") else None,
            workdir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
            exposed={k: {} for k in config.get("ExposedPorts") or {}},
            labels={
                k: v
                for k, v in (config.get("Labels") or {}).items()
                if k not in SCRUBBED and k != LABEL_BUILD_CACHE
            },
            stop_signal=str(config.get("StopSignal") or ""),
            shell=tuple(config.get("Shell") or df.DEFAULT_SHELL),
        )

    def copy(self) -> ImageConfig:
        return replace(
            self,
            env=list(self.env),
            cmd=list(self.cmd) if self.cmd is not None else None,
            entrypoint=list(self.entrypoint) if self.entrypoint is not None else None,
            exposed=dict(self.exposed),
            labels=dict(self.labels),
        )

    def env_map(self) -> dict[str, str]:
        pairs = (item.partition("=") for item in self.env)
        return {name: value for name, _, value in pairs}

    def set_env(self, name: str, value: str) -> None:
        self.env = [item for item in self.env if item.partition("=")[0] != name]
        self.env.append(f"{name}={value}")

    def commit_conf(self, labels: Mapping[str, str]) -> dict[str, Any]:
        # Empty lists, not None: the engine fills a missing Cmd/Entrypoint from the container
        # (a RUN step's command would become the image's CMD).
        conf: dict[str, Any] = {
            "Env": list(self.env),
            "Cmd": list(self.cmd or []),
            "Entrypoint": list(self.entrypoint or []),
            "WorkingDir": self.workdir,
            "User": self.user,
            "ExposedPorts": dict(self.exposed),
            "Labels": {**self.labels, **labels, **SCRUBBED},
        }
        if self.stop_signal:
            conf["StopSignal"] = self.stop_signal
        if self.shell != df.DEFAULT_SHELL:
            conf["Shell"] = list(self.shell)
        return conf

    def key_material(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "cmd": self.cmd,
            "entrypoint": self.entrypoint,
            "workdir": self.workdir,
            "user": self.user,
            "exposed": sorted(self.exposed),
            "labels": sorted(self.labels.items()),
            "stop_signal": self.stop_signal,
            "shell": list(self.shell),
        }


@dataclass
class Stage:
    name: str | None
    image_id: str
    config: ImageConfig
    args: dict[str, str] = field(default_factory=dict)

    def substitution_env(self) -> dict[str, str]:
        return {**self.args, **self.config.env_map()}
