"""The ingress nodes' service spec and the URL its agents are given (pure)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from berth.controllers.ingress_nodes_sync import agent_server_url
from berth.errors import BerthError
from berth.swarm.ingress_service import (
    CAPABILITIES,
    CONSTRAINT,
    LABEL_SPEC,
    ingress_spec,
    plan_service,
    secret_name,
)


def _spec(url: str = "http://10.0.0.254:8700", secret: str = "s1") -> dict:
    return ingress_spec("reg:5000/berth/ingress@sha256:ab", url, 80, (secret, "n1"), "inst1")


def test_the_spec_places_by_label_and_runs_hardened() -> None:
    spec = _spec()
    task = spec["TaskTemplate"]
    container = task["ContainerSpec"]
    assert spec["Mode"] == {"Global": {}}
    assert task["Placement"]["Constraints"] == [CONSTRAINT] == ["node.labels.ingress==true"]
    assert task["Networks"] == [{"Target": "host"}]
    assert container["ReadOnly"] is True and container["Init"] is True
    assert container["CapabilityDrop"] == ["ALL"]
    assert set(CAPABILITIES) == {
        "CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETGID", "CAP_SETUID"
    }  # fmt: skip
    assert task["Resources"]["Limits"]["Pids"] > 0
    assert task["Resources"]["Limits"]["MemoryBytes"] > 0
    # The token only as a secret file, never in the arguments or the environment.
    assert container["Secrets"][0]["File"]["Mode"] == 0o400
    assert "--token-file" in container["Args"]
    # Two nginx cannot share a node's port: one node at a time, stop-first.
    assert spec["UpdateConfig"]["Order"] == "stop-first"
    assert spec["UpdateConfig"]["Parallelism"] == 1


def test_a_changed_url_or_secret_is_an_update_and_the_same_spec_is_kept() -> None:
    spec = _spec()
    current = {"ID": "svc", "Version": {"Index": 7}, "Spec": spec}
    assert plan_service([], spec).kind == "create"
    assert plan_service([current], spec).kind == "keep"
    assert plan_service([current], _spec(url="http://10.0.0.253:8700")).kind == "update"
    newer = _spec(secret="s2")
    assert newer["Labels"][LABEL_SPEC] != spec["Labels"][LABEL_SPEC]
    action = plan_service([current], newer)
    assert (action.kind, action.service_id, action.version) == ("update", "svc", 7)


def test_the_secret_is_named_by_the_tokens_hash() -> None:
    assert secret_name("ab" * 32) == "berth-ingress-token-" + "ab" * 8


def test_the_agents_url() -> None:
    assert agent_server_url("https://api.example/", "127.0.0.1", 8700, "") == "https://api.example"
    assert agent_server_url("", "10.0.0.254", 8700, "") == "http://10.0.0.254:8700"
    assert agent_server_url("", "0.0.0.0", 8700, "10.0.0.9") == "http://10.0.0.9:8700"
    assert agent_server_url("", "api.internal", 8700, "") == "http://api.internal:8700"
    for host, source in (("127.0.0.1", ""), ("0.0.0.0", "")):
        with pytest.raises(BerthError) as refused:
            agent_server_url("", host, 8700, source)
        assert refused.value.code == "ingress_unreachable_api"


def test_the_images_modules_alone_run_the_agent(tmp_path: Path) -> None:
    """The ingress image holds python3, nginx and these modules only: they must be enough."""
    from berth.images.deb_image import read_modules
    from berth.images.ingress_image import AGENT_MODULES

    code = tmp_path / "berth"
    for relative, body in read_modules(AGENT_MODULES).items():
        (code / relative).parent.mkdir(parents=True, exist_ok=True)
        (code / relative).write_bytes(body)
    result = subprocess.run(
        [sys.executable, "-I", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); sys.argv = ['agent', '--help']; "
         "import runpy; runpy.run_module('berth.ingress.agent', run_name='__main__')",
         str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--token-file" in result.stdout
