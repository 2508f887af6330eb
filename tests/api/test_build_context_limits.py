"""Hostile build contexts through the real API: refused with a clear 4xx before anything is
built, never a 500 (a name that fits PATH_MAX alone but not below the build directory once
answered 500), and the build directory is cleaned up."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from berth.builds.context import MAX_DEPTH
from tests.api.conftest import Env, assert_error

pytestmark = pytest.mark.store

TAR_HEADERS = {"Content-Type": "application/x-tar"}


def context_with(name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member, data in (("Dockerfile", b"FROM berth/busybox:latest\n"), (name, b"x")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def long_name(size: int) -> str:
    name = "/".join(["n" * 200] * 30)[:size]
    return name[:-1] + "z"  # never ends with a slash


def builds_left(env: Env) -> list[str]:
    builds = env.settings.builds_dir
    return sorted(os.listdir(builds)) if builds.exists() else []


@pytest.mark.parametrize(
    ("name", "said"),
    [
        (long_name(4094), "bytes"),
        (long_name(4000), "bytes"),
        ("/".join(["d"] * (MAX_DEPTH + 1)), f"at most {MAX_DEPTH}"),
        ("/".join(["d"] * 2000), f"at most {MAX_DEPTH}"),
    ],
    ids=["4094-bytes", "4000-bytes", "depth-65", "depth-2000"],
)
def test_too_long_or_too_deep_member_names_are_422(env: Env, name: str, said: str) -> None:
    user = env.signup("ctx")
    app = env.unique("ctx")
    env.create_app(user.session, app)
    before = builds_left(env)
    resp = env.call(
        "POST", f"/apps/{app}/builds", user.session, content=context_with(name), headers=TAR_HEADERS
    )
    err = assert_error(resp, 422, "invalid_context")
    assert said in err["message"], err
    assert builds_left(env) == before
    assert env.ok("GET", f"/apps/{app}/releases", user.session) == []
