"""Bad input is refused with a 4xx and the error shape, and changes nothing: names, domains,
resources, scale, unknown apps, hostile build contexts, and a Dockerfile that fails to build."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bad_inputs import BAD_DOMAINS, BAD_NAMES
from tests.harness import BUSYBOX_APP, BerthServer, write_app

pytestmark = [pytest.mark.docker, pytest.mark.nginx]

MAX_CONTEXT = 64 * 1024
BERTH_SERVER_OPTIONS = {"max_build_context_bytes": MAX_CONTEXT, "max_scale": 5}

KEEP = "keep"  # deployed, serving, with a custom domain: must never change below
OTHER = "other"  # owns OTHER_DOMAIN
KEEP_DOMAIN = "keep.example.com"
OTHER_DOMAIN = "taken.example.com"
PAGE_TEXT = "hello from berth (busybox httpd)"


# -- helpers ----------------------------------------------------------------------------------


def assert_error(resp: httpx.Response, status: int | tuple[int, ...]) -> dict[str, str]:
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["code"], str) and err["code"], body
    assert isinstance(err["message"], str) and err["message"], body
    return dict(err)


def snapshot(berth: BerthServer) -> dict[str, Any]:
    """What a user can list: apps (their settings), releases, domains and config."""
    apps = berth.api_json("GET", "/apps")
    state: dict[str, Any] = {}
    for app in apps:
        name = app["name"]
        state[name] = {
            "app": {
                k: app[k]
                for k in (
                    "id",
                    "memory_mb",
                    "cpus",
                    "port",
                    "health_path",
                    "scale",
                    "domains",
                    "serving_release",
                    "target_release",
                )
            },
            "releases": [
                (r["version"], r["id"], r["image_id"], r["config_keys"], r["serving"])
                for r in berth.api_json("GET", f"/apps/{name}/releases")
            ],
            "domains": [d["hostname"] for d in berth.api_json("GET", f"/apps/{name}/domains")],
            "config": berth.api_json("GET", f"/apps/{name}/config")["config"],
        }
    return state


@pytest.fixture(scope="module")
def world(berth: BerthServer) -> dict[str, Any]:
    berth.create_app(KEEP)
    result = berth.deploy_dir(KEEP, BUSYBOX_APP)
    assert result["deployment"]["status"] == "succeeded"
    berth.cli_ok("domains", "add", KEEP, KEEP_DOMAIN)
    berth.create_app(OTHER)
    berth.cli_ok("domains", "add", OTHER, OTHER_DOMAIN)
    # Verified (by the operator): only a verified domain keeps others from claiming it.
    for hostname in (KEEP_DOMAIN, OTHER_DOMAIN):
        berth.cli_ok("admin", "approve-domain", hostname)
    berth.wait_converged(KEEP, 1)
    return snapshot(berth)


@pytest.fixture
def unchanged(berth: BerthServer, world: dict[str, Any]) -> Iterator[None]:
    """The test must leave every app, release, domain and config as it found them."""
    before = snapshot(berth)
    assert before == world
    yield
    assert snapshot(berth) == before
    assert PAGE_TEXT in (berth.app_body(KEEP) or ""), "the deployed app still serves"


# -- names, domains, resources, scale -----------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_app_name_is_refused(berth: BerthServer, unchanged: None, name: str) -> None:
    err = assert_error(berth.api.post("/apps", json={"name": name}), 422)
    assert err["code"] in ("invalid_name", "invalid")


def test_invalid_app_name_through_the_cli(berth: BerthServer, unchanged: None) -> None:
    for name in ("a;b", "a}b", "a b", "Web", "a" * 31):
        result = berth.cli("apps", "create", name)
        assert result.returncode == 1, result
        assert "app name" in result.stderr
        assert "Traceback" not in result.stderr


def test_taken_app_name_is_a_conflict(berth: BerthServer, unchanged: None) -> None:
    err = assert_error(berth.api.post("/apps", json={"name": KEEP}), 409)
    assert err["code"] == "app_exists"


@pytest.mark.parametrize("domain", BAD_DOMAINS, ids=repr)
def test_invalid_domain_is_refused(berth: BerthServer, unchanged: None, domain: str) -> None:
    assert_error(berth.api.post(f"/apps/{KEEP}/domains", json={"hostname": domain}), 422)


def test_reserved_and_taken_domains(berth: BerthServer, unchanged: None) -> None:
    for reserved in (berth.base_domain, f"x.{berth.base_domain}", f"{OTHER}.{berth.base_domain}"):
        err = assert_error(
            berth.api.post(f"/apps/{KEEP}/domains", json={"hostname": reserved}), 422
        )
        assert err["code"] == "domain_reserved"
    err = assert_error(
        berth.api.post(f"/apps/{KEEP}/domains", json={"hostname": OTHER_DOMAIN}), 409
    )
    assert err["code"] == "domain_taken"
    # Adding a domain the app already has is refused as well, and the CLI says so.
    assert_error(berth.api.post(f"/apps/{KEEP}/domains", json={"hostname": KEEP_DOMAIN}), 409)
    result = berth.cli("domains", "add", KEEP, OTHER_DOMAIN)
    assert result.returncode == 1
    assert "already" in result.stderr
    # The other app's domain still routes to it (no instances: 503 page), not to KEEP.
    resp = berth.ingress_get(OTHER_DOMAIN)
    assert PAGE_TEXT not in resp.text
    assert PAGE_TEXT in berth.ingress_get(KEEP_DOMAIN).text


@pytest.mark.parametrize(
    "body",
    [
        {"memory": "8M"},
        {"memory": "0"},
        {"memory": "100000M"},
        {"memory": "64G"},
        {"memory": "lots"},
        {"memory": "-5M"},
        {"memory": -5},
        {"cpus": 0},
        {"cpus": 0.01},
        {"cpus": -1},
        {"cpus": 64},
        {"cpus": "many"},
        {"port": 0},
        {"port": 70000},
        {"health_path": "no-slash"},
        {"health_path": "/a b"},
        {"health_path": "/x\n"},
    ],
    ids=repr,
)
def test_out_of_range_resources_are_refused(
    berth: BerthServer, unchanged: None, body: dict[str, Any]
) -> None:
    assert_error(berth.api.post("/apps", json={"name": "res", **body}), 422)


@pytest.mark.parametrize("replicas", [-1, 6, 1000, 2**40])
def test_scale_out_of_range_is_refused(berth: BerthServer, unchanged: None, replicas: int) -> None:
    err = assert_error(berth.api.post(f"/apps/{KEEP}/scale", json={"replicas": replicas}), 422)
    assert err["code"] in ("invalid_scale", "invalid")


def test_scale_above_the_cap_through_the_cli(berth: BerthServer, unchanged: None) -> None:
    result = berth.cli("scale", KEEP, str(berth.max_scale + 1))
    assert result.returncode == 1
    assert f"between 0 and {berth.max_scale}" in result.stderr
    assert len(berth.containers(KEEP)) == 1


def test_bad_config_is_refused(berth: BerthServer, unchanged: None) -> None:
    for values in ({"1A": "x"}, {"A-B": "x"}, {"PORT": "1"}, {"A": "x\x00y"}):
        assert_error(berth.api.patch(f"/apps/{KEEP}/config", json={"set": values}), 422)
    # Well formed, but no such key is set: a conflict with the app's config, not bad input.
    assert_error(berth.api.patch(f"/apps/{KEEP}/config", json={"unset": ["NOPE"]}), 409)


def test_unknown_app_is_404_on_every_route(berth: BerthServer, unchanged: None) -> None:
    tar = _tar({"Dockerfile": b"FROM berth/busybox:latest\n"})
    routes: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "", {}),
        ("DELETE", "", {}),
        ("GET", "/releases", {}),
        ("POST", "/releases", {"json": {"image": "berth/busybox:latest"}}),
        ("POST", "/rollback", {"json": {}}),
        ("POST", "/scale", {"json": {"replicas": 1}}),
        ("GET", "/config", {}),
        ("PATCH", "/config", {"json": {"set": {"A": "b"}}}),
        ("POST", "/restart", {}),
        ("GET", "/deployments/0123456789abcdef", {}),
        ("GET", "/instances", {}),
        ("GET", "/logs", {}),
        ("GET", "/domains", {}),
        ("POST", "/domains", {"json": {"hostname": "new.example.com"}}),
        ("DELETE", f"/domains/{KEEP_DOMAIN}", {}),
        ("POST", "/builds", {"content": tar, "headers": {"Content-Type": "application/x-tar"}}),
    ]
    for name in ("nope", "does-not-exist"):
        for method, suffix, kwargs in routes:
            resp = berth.api.request(method, f"/apps/{name}{suffix}", **kwargs)
            err = assert_error(resp, 404)
            assert err["code"] == "app_not_found", (method, suffix, err)
    for args in (("ps", "nope"), ("apps", "info", "nope"), ("releases", "nope")):
        result = berth.cli(*args)
        assert result.returncode == 1
        assert "not found" in result.stderr


# -- build contexts -------------------------------------------------------------------------------


def _tar(files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
        for info in extra or []:
            archive.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    return buf.getvalue()


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mode = 0o777
    return info


def _file(name: str, size: int = 5) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info


DOCKERFILE = b"FROM berth/busybox:latest\nCOPY . /www/\n"


def _upload(
    berth: BerthServer, data: bytes, content_type: str = "application/x-tar"
) -> httpx.Response:
    return berth.api.post(
        f"/apps/{KEEP}/builds", content=data, headers={"Content-Type": content_type}
    )


def _outside_paths(berth: BerthServer) -> set[Path]:
    """Every path under the test's root that is not inside the server's builds dir."""
    builds = berth.home / "builds"
    skip = (builds, berth.home / "nginx")  # nginx writes its logs as it serves
    return {
        p
        for p in berth.root.rglob("*")
        if not any(p == s or s in p.parents for s in skip) and p.name != "berth.db-journal"
    }


def _hostile_archives(berth: BerthServer, victim: Path) -> dict[str, bytes]:
    root = str(berth.root)
    home = str(berth.home)
    return {
        "dotdot": _tar({"Dockerfile": DOCKERFILE}, [_file("../../../ESCAPED-dotdot")]),
        "dotdot-deep": _tar({"Dockerfile": DOCKERFILE}, [_file("a/../../../../../ESCAPED-deep")]),
        "absolute": _tar({"Dockerfile": DOCKERFILE}, [_file(f"{root}/ESCAPED-absolute")]),
        "absolute-home": _tar({"Dockerfile": DOCKERFILE}, [_file(f"{home}/ESCAPED-home")]),
        "symlink-out-then-write": _tar(
            {"Dockerfile": DOCKERFILE},
            [_link("out", "../../..", tarfile.SYMTYPE), _file("out/ESCAPED-symlink")],
        ),
        "symlink-absolute": _tar(
            {"Dockerfile": DOCKERFILE},
            [_link("out", root, tarfile.SYMTYPE), _file("out/ESCAPED-symlink-abs")],
        ),
        "symlink-out-alone": _tar(
            {"Dockerfile": DOCKERFILE},
            [_link("passwd", "../../../../../../etc/passwd", tarfile.SYMTYPE)],
        ),
        "symlink-chain-out": _tar(
            {"Dockerfile": DOCKERFILE},
            [_link("a", ".", tarfile.SYMTYPE), _link("b", "a/a/a/../../../..", tarfile.SYMTYPE)],
        ),
        "hardlink-absolute": _tar(
            {"Dockerfile": DOCKERFILE}, [_link("hl", str(victim), tarfile.LNKTYPE)]
        ),
        "hardlink-dotdot": _tar(
            {"Dockerfile": DOCKERFILE}, [_link("hl", "../../../victim", tarfile.LNKTYPE)]
        ),
        "hardlink-then-write": _tar(
            {"Dockerfile": DOCKERFILE},
            [_link("hl", str(victim), tarfile.LNKTYPE), _file("hl", 7)],
        ),
        "device": _tar({"Dockerfile": DOCKERFILE}, [_link("dev", "", tarfile.CHRTYPE)]),
        "no-dockerfile": _tar({"index.html": b"hi"}),
    }


def test_hostile_build_contexts_are_refused_and_write_nothing_outside(
    berth: BerthServer, unchanged: None
) -> None:
    victim = berth.root / "victim"
    victim.write_text("original\n")
    # Relative escapes from $HOME/builds/<workdir>/context land in $HOME or the root: watch both.
    before = _outside_paths(berth)
    for label, data in _hostile_archives(berth, victim).items():
        resp = _upload(berth, data)
        err = assert_error(resp, (400, 422))
        assert err["code"] in ("invalid_context", "no_dockerfile"), (label, err)
        assert victim.read_text() == "original\n", label
        assert _outside_paths(berth) == before, label
        assert not list((berth.home / "builds").iterdir()), f"{label}: builds dir not cleaned"
    assert not [p for p in Path("/").glob("ESCAPED-*")]
    assert not [p for p in Path("/tmp").glob("ESCAPED-*")]
    assert not [p for p in berth.root.rglob("ESCAPED-*")]


def test_not_a_tar_is_refused(berth: BerthServer, unchanged: None) -> None:
    for data, content_type in (
        (b"this is not a tar archive\n" * 40, "application/x-tar"),
        (b"\x1f\x8b\x08\x00garbage-gzip" * 10, "application/gzip"),
        (os.urandom(4096), "application/octet-stream"),
    ):
        err = assert_error(_upload(berth, data, content_type), (400, 422))
        assert err["code"] == "invalid_context"
    assert_error(_upload(berth, b""), (400, 422))
    assert not list((berth.home / "builds").iterdir())


def test_too_large_build_context_is_413(
    berth: BerthServer, unchanged: None, tmp_path: Path
) -> None:
    big = _tar({"Dockerfile": DOCKERFILE, "blob": os.urandom(MAX_CONTEXT * 2)})
    err = assert_error(_upload(berth, big), 413)
    assert err["code"] == "too_large"
    # The same through the CLI: a directory too large to upload.
    app_dir = write_app(tmp_path / "big", DOCKERFILE.decode())
    (app_dir / "blob").write_bytes(os.urandom(MAX_CONTEXT * 2))
    result = berth.cli("deploy", KEEP, str(app_dir))
    assert result.returncode == 1
    assert str(MAX_CONTEXT) in result.stderr or "too large" in result.stderr.lower()
    assert not list((berth.home / "builds").iterdir())


def test_gzip_bomb_is_413(berth: BerthServer, unchanged: None) -> None:
    import gzip

    bomb = gzip.compress(_tar({"Dockerfile": DOCKERFILE, "zeros": b"\0" * (MAX_CONTEXT * 16)}))
    assert len(bomb) < MAX_CONTEXT
    err = assert_error(_upload(berth, bomb, "application/gzip"), 413)
    assert err["code"] == "too_large"


def test_failing_dockerfile_prints_the_log_and_creates_no_release(
    berth: BerthServer, unchanged: None, tmp_path: Path
) -> None:
    app_dir = write_app(
        tmp_path / "broken",
        "FROM berth/busybox:latest\nRUN echo building-step-output && false\n",
    )
    result = berth.cli("deploy", KEEP, str(app_dir))
    assert result.returncode == 1
    assert "build failed" in result.stderr
    assert "building-step-output" in result.stderr  # the build log is shown
    assert "RUN echo building-step-output && false" in result.stderr
    assert "non-zero code" in result.stderr or "returned a non-zero" in result.stderr
    assert not list((berth.home / "builds").iterdir())


def test_unknown_image_is_refused(berth: BerthServer, unchanged: None) -> None:
    for image in ("berth-test/does-not-exist:1", "", "a b", "x" * 300):
        assert_error(berth.api.post(f"/apps/{KEEP}/releases", json={"image": image}), 422)
    result = berth.cli("deploy", KEEP, "--image", "berth-test/does-not-exist:1")
    assert result.returncode == 1
    assert "is not allowed" in result.stderr
    # An allowed name that is not here names what is.
    result = berth.cli("deploy", KEEP, "--image", "berth/does-not-exist:1")
    assert result.returncode == 1
    assert "not on this machine" in result.stderr
    assert "berth/busybox:latest" in result.stderr


# -- platform status ------------------------------------------------------------------------------


def test_status_shows_engine_nginx_ingress_and_domain(berth: BerthServer) -> None:
    status = berth.cli_json("status")
    assert status["engine"] == "ok"
    assert status["nginx"] == "running"
    assert status["ingress_port"] == berth.ingress_port
    assert status["base_domain"] == berth.base_domain
    assert status["installation"] == berth.installation
    assert status["server"] == "ok"
    pid = int((berth.home / "nginx" / "nginx.pid").read_text())
    assert status["nginx_pid"] == pid
    human = berth.cli_ok("status").stdout
    assert berth.base_domain in human
    assert str(berth.ingress_port) in human
