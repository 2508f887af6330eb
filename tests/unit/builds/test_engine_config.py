"""The pure parts of the engine builder: the commit config and build args in RUN."""

from __future__ import annotations

from berth.builds.engine_builder import _with_args
from berth.builds.image_config import LABEL_BUILD_STEP, ImageConfig, Stage
from berth.builds.step_output import mentions_fork


def test_commit_conf_never_leaves_cmd_or_entrypoint_to_the_engine() -> None:
    conf = ImageConfig(env=["PATH=/bin"]).commit_conf({"berth.build.tenant": "t"})
    # None would let the engine copy the RUN container's command into the image.
    assert conf["Cmd"] == [] and conf["Entrypoint"] == []
    assert conf["Labels"]["berth.build.tenant"] == "t"
    # The build container's own labels are blanked, so they never mark the image's containers.
    assert conf["Labels"]["berth.managed"] == "" and conf["Labels"][LABEL_BUILD_STEP] == ""


def test_config_of_an_image_drops_berth_container_labels() -> None:
    config = ImageConfig.of_image(
        {
            "Env": ["A=1"],
            "Cmd": ["sh"],
            "Labels": {"berth.managed": "", "berth.build.cache": "k", "keep": "v"},
            "ExposedPorts": {"80/tcp": {}},
        }
    )
    assert config.labels == {"keep": "v"}
    assert config.cmd == ["sh"] and config.entrypoint is None
    assert config.exposed == {"80/tcp": {}}
    config.set_env("A", "2")
    assert config.env == ["A=2"]


def test_build_args_are_exported_by_the_shell_not_the_environment() -> None:
    stage = Stage(None, "sha256:x", ImageConfig(env=["KEPT=1"]), {"V": "it's", "KEPT": "arg"})
    argv = _with_args(["/bin/sh", "-c", "echo $V"], stage, exec_form=False)
    assert argv == ["/bin/sh", "-c", "export V='it'\\''s'; echo $V"]
    assert _with_args(["echo", "x"], stage, exec_form=True) == ["echo", "x"]
    no_args = Stage(None, "sha256:x", ImageConfig(), {})
    assert _with_args(["/bin/sh", "-c", "true"], no_args, exec_form=False)[-1] == "true"


def test_fork_failures_are_recognised_but_not_the_word_fork() -> None:
    assert mentions_fork(["sh: can't fork: Resource temporarily unavailable"])
    assert not mentions_fork(["running tests/test_fork.py", "1 failed"])
