"""The guard image's contents, without an engine: the modules it copies are enough to run the
guard (nothing else of berth is importable there), and its tag follows its contents. The image
built, pushed and run on real nodes: tests/cluster/test_node_guard_service.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from berth.images.node_guard_image import (
    CODE_DIR,
    content_version,
    dockerfile,
    guard_modules,
)


def test_the_copied_modules_alone_run_the_guard(tmp_path: Path) -> None:
    code = tmp_path / "berth"
    for relative, body in guard_modules().items():
        (code / relative).parent.mkdir(parents=True, exist_ok=True)
        (code / relative).write_bytes(body)
    result = subprocess.run(
        [sys.executable, "-I", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import runpy; "
         "sys.argv = ['node_guard', 'print', '--ingress', '10.0.0.254', '--nodes', "
         "'10.0.0.0/24', '--published-ports', '32768-60999']; "
         "runpy.run_module('berth.netpolicy.node_guard', run_name='__main__')",
         str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "-A BERTH-NG-PUBLISHED -s 10.0.0.254/32 -j RETURN" in result.stdout


def test_the_tag_follows_the_contents(tmp_path: Path) -> None:
    deb = tmp_path / "iptables_1.8.9-2_amd64.deb"
    deb.write_bytes(b"one")
    modules = {"netpolicy/node_guard.py": b"x = 1\n"}
    first = content_version([deb], modules)
    assert content_version([deb], dict(modules)) == first
    assert content_version([deb], {"netpolicy/node_guard.py": b"x = 2\n"}) != first
    deb.write_bytes(b"two")
    assert content_version([deb], modules) != first


def test_the_dockerfile_runs_nothing_and_names_the_guard() -> None:
    text = dockerfile("abc")
    assert "RUN" not in text
    assert text.startswith("FROM berth/python:3\n")
    assert f"PYTHONPATH={CODE_DIR}" in text
    assert '"berth.netpolicy.node_guard"' in text
