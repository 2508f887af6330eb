"""The Runtime contract: every test runs against the Docker driver and the fake alike."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from berth.runtime.fake import NO_SPACE, READ_ONLY_FS
from berth.runtime.protocol import (
    LABEL_APP,
    LABEL_INSTALLATION,
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_TENANT,
    EngineUnavailable,
    RuntimeFailure,
)
from tests.contract.conftest import Harness, unique


def test_run_gives_a_running_container_with_a_host_port_and_labels(harness: Harness) -> None:
    runtime = harness.runtime
    spec = harness.spec(app="shop")

    info = runtime.run(spec)

    assert info.state == "running"
    assert info.name == spec.name
    assert info.host_port is not None and info.host_port > 0
    assert info.pid > 0
    assert info.exit_code is None
    assert info.started_at is not None
    assert info.image == runtime.image_id(harness.image)
    assert info.labels[LABEL_APP] == "shop"
    assert info.labels[LABEL_TENANT] == "t1"
    assert info.labels[LABEL_MANAGED] == "true"
    assert info.labels[LABEL_INSTALLATION] == runtime.installation
    assert info.labels[LABEL_NODE] == "node-a"
    assert runtime.inspect(info.id) == info
    assert [c.id for c in runtime.list()] == [info.id]


def test_each_container_gets_its_own_host_port(harness: Harness) -> None:
    first = harness.runtime.run(harness.spec())
    second = harness.runtime.run(harness.spec())

    assert first.host_port != second.host_port


def test_list_filters_by_labels(harness: Harness) -> None:
    runtime = harness.runtime
    shop = runtime.run(harness.spec(app="shop"))
    blog = runtime.run(harness.spec(app="blog"))

    assert {c.id for c in runtime.list()} == {shop.id, blog.id}
    assert [c.id for c in runtime.list({LABEL_APP: "blog"})] == [blog.id]
    assert runtime.list({LABEL_APP: "wiki"}) == []


def test_another_installations_containers_are_invisible_and_untouched(harness: Harness) -> None:
    runtime = harness.runtime
    mine = runtime.run(harness.spec())
    other = harness.other_installation()
    other_network = unique("berth-test-net")
    other.ensure_network(other_network, {})
    foreign = other.run(harness.spec(network=other_network))

    assert [c.id for c in runtime.list()] == [mine.id]
    assert [c.id for c in other.list()] == [foreign.id]
    assert runtime.inspect(foreign.id) is None
    with pytest.raises(RuntimeFailure):
        runtime.remove(foreign.id, stop_timeout=0)
    with pytest.raises(RuntimeFailure):
        runtime.start(foreign.id)
    with pytest.raises(RuntimeFailure):
        runtime.logs(foreign.id)
    still = other.inspect(foreign.id)
    assert still is not None and still.state == "running"
    assert still.host_port == foreign.host_port


def test_a_spec_labelled_for_another_installation_is_refused(harness: Harness) -> None:
    spec = harness.spec(labels={LABEL_INSTALLATION: "someone-else"})

    with pytest.raises(ValueError):
        harness.runtime.run(spec)
    assert harness.runtime.list() == []


def test_remove_stops_and_deletes_and_is_idempotent(harness: Harness) -> None:
    runtime = harness.runtime
    info = runtime.run(harness.spec())

    runtime.remove(info.id, stop_timeout=5)
    runtime.remove(info.id, stop_timeout=5)
    runtime.remove(uuid.uuid4().hex, stop_timeout=5)

    assert runtime.inspect(info.id) is None
    assert runtime.list() == []


def test_the_name_of_a_removed_container_can_be_reused(harness: Harness) -> None:
    spec = harness.spec()
    first = harness.runtime.run(spec)
    with pytest.raises(RuntimeFailure):
        harness.runtime.run(spec)

    harness.runtime.remove(first.id, stop_timeout=5)
    second = harness.runtime.run(spec)

    assert second.state == "running" and second.id != first.id


def test_an_exited_container_reports_its_exit_code(harness: Harness) -> None:
    info = harness.run_exited(["bye"], exit_code=3)

    exited = harness.runtime.inspect(info.id)

    assert exited is not None
    assert exited.state == "exited"
    assert exited.exit_code == 3
    assert exited.host_port is None
    assert exited.pid == 0
    assert exited.started_at is not None and exited.finished_at is not None
    assert exited.finished_at >= exited.started_at
    assert [c.state for c in harness.runtime.list()] == ["exited"]


def test_start_brings_an_exited_container_back_on_a_new_host_port(harness: Harness) -> None:
    runtime = harness.runtime
    info = harness.run_exited(["once"], exit_code=3)

    restarted = runtime.start(info.id)

    assert restarted.id == info.id
    assert restarted.state == "running"
    assert restarted.exit_code is None
    assert restarted.finished_at is None
    # The published port is released when the process exits; a restart publishes a fresh one.
    # Callers must re-read host_port after start() (the router follows it).
    assert restarted.host_port is not None and restarted.host_port != info.host_port
    assert runtime.inspect(info.id) == restarted


def test_start_of_a_running_container_changes_nothing(harness: Harness) -> None:
    info = harness.runtime.run(harness.spec())

    again = harness.runtime.start(info.id)

    assert again.state == "running"
    assert again.host_port == info.host_port
    assert again.pid == info.pid


def test_start_of_a_missing_container_fails(harness: Harness) -> None:
    with pytest.raises(RuntimeFailure):
        harness.runtime.start(uuid.uuid4().hex)


def test_logs_return_what_the_process_printed(harness: Harness) -> None:
    info = harness.run_printing(["first line", "second line", "third ünïcode line"])

    assert harness.runtime.logs(info.id) == "first line\nsecond line\nthird ünïcode line\n"
    assert harness.runtime.logs(info.id, tail=1) == "third ünïcode line\n"


def test_logs_of_an_exited_container_stay_readable(harness: Harness) -> None:
    info = harness.run_exited(["about to fail"], exit_code=1)

    assert harness.runtime.logs(info.id) == "about to fail\n"


def test_follow_logs_yields_the_lines_until_the_container_stops(harness: Harness) -> None:
    info = harness.run_exited(["one", "two", "three"], exit_code=0)

    assert list(harness.runtime.follow_logs(info.id)) == ["one", "two", "three"]
    assert list(harness.runtime.follow_logs(info.id, tail=2)) == ["two", "three"]


def test_following_a_running_container_shows_lines_printed_so_far(harness: Harness) -> None:
    info = harness.run_printing(["ready"])

    lines = harness.runtime.follow_logs(info.id)
    try:
        assert next(lines) == "ready"
    finally:
        lines.close()


def test_networks_are_idempotent_and_listed(harness: Harness) -> None:
    runtime = harness.runtime
    name = unique("berth-test-net")

    runtime.ensure_network(name, {LABEL_TENANT: "t2"})
    runtime.ensure_network(name, {LABEL_TENANT: "t2"})

    assert sorted(runtime.list_networks()) == sorted([harness.network, name])
    runtime.remove_network(name)
    runtime.remove_network(name)
    assert runtime.list_networks() == [harness.network]


def test_another_installations_networks_are_invisible_and_untouched(harness: Harness) -> None:
    other = harness.other_installation()
    foreign = unique("berth-test-net")
    other.ensure_network(foreign, {})

    assert foreign not in harness.runtime.list_networks()
    with pytest.raises(RuntimeFailure):
        harness.runtime.remove_network(foreign)
    with pytest.raises(RuntimeFailure):
        harness.runtime.ensure_network(foreign, {})
    assert other.list_networks() == [foreign]


def test_run_on_a_missing_network_fails(harness: Harness) -> None:
    with pytest.raises(RuntimeFailure):
        harness.runtime.run(harness.spec(network=unique("berth-test-absent")))

    assert harness.runtime.list() == []


def test_an_unknown_image_is_not_pulled_and_fails_clearly(harness: Harness) -> None:
    absent = f"berth-test/absent:{uuid.uuid4().hex[:12]}"

    assert harness.runtime.image_id(absent) is None
    with pytest.raises(RuntimeFailure, match="not present"):
        harness.runtime.run(harness.spec(image=absent))
    assert harness.runtime.list() == []
    assert harness.runtime.image_id(absent) is None


def test_image_id_of_a_present_image(harness: Harness) -> None:
    image_id = harness.runtime.image_id(harness.image)

    assert image_id is not None and image_id.startswith("sha256:")


@pytest.mark.parametrize("network", ["host", "", "none", "container:abc"])
def test_a_spec_sharing_the_host_network_is_refused(harness: Harness, network: str) -> None:
    spec = dataclasses.replace(harness.spec(), network=network)

    with pytest.raises(ValueError):
        harness.runtime.run(spec)
    assert harness.runtime.list() == []


def test_the_engine_answers(harness: Harness) -> None:
    assert harness.runtime.ping() is True
    assert harness.runtime.version()


def test_run_by_image_id(harness: Harness) -> None:
    """Releases pin the image id (immutable), so a runtime must run an image by its id."""
    image_id = harness.runtime.image_id(harness.image)
    assert image_id is not None

    info = harness.runtime.run(harness.spec(image=image_id))

    assert info.state == "running"
    assert info.image == image_id


def test_a_running_container_has_an_address_and_an_exited_one_has_none(
    harness: Harness,
) -> None:
    """The agent checks TCP health on the container's own address (not the loopback proxy)."""
    info = harness.runtime.run(harness.spec())
    assert info.address
    harness.runtime.remove(info.id)
    exited = harness.run_exited(["bye"], 0)
    now = harness.runtime.inspect(exited.id)
    assert now is not None and now.state == "exited" and now.address is None


def test_setting_stop_ends_following_a_quiet_container(harness: Harness) -> None:
    """A follower of a container that prints nothing must end when asked (a client left)."""
    import threading

    info = harness.runtime.run(harness.spec())
    stop = threading.Event()
    seen: list[str] = []
    follower = threading.Thread(
        target=lambda: seen.extend(harness.runtime.follow_logs(info.id, tail=0, stop=stop)),
        daemon=True,
    )
    follower.start()
    follower.join(timeout=1.0)
    assert follower.is_alive()  # still following: nothing was printed, nothing ended it
    stop.set()
    follower.join(timeout=20)
    assert not follower.is_alive()
    assert harness.runtime.inspect(info.id).state == "running"  # type: ignore[union-attr]


def test_the_root_filesystem_is_read_only(harness: Harness) -> None:
    assert harness.write("/big-file", 300 * 1024 * 1024, disk_bytes=8 << 20) == READ_ONLY_FS
    assert harness.write("/etc/passwd", 1, disk_bytes=8 << 20) == READ_ONLY_FS


@pytest.mark.parametrize("path", ["/tmp/x", "/var/tmp/x", "/run/x"])
def test_writable_paths_hold_their_size_and_no_more(harness: Harness, path: str) -> None:
    assert harness.write(path, 4 << 20, disk_bytes=8 << 20) == "ok"
    assert harness.write(path, 12 << 20, disk_bytes=8 << 20) == NO_SPACE


def test_an_engine_that_cannot_be_reached_is_unavailable(harness: Harness) -> None:
    down = harness.unreachable()

    assert down.ping() is False
    for call in (down.version, down.list, lambda: down.logs("x"), lambda: down.image_id("x")):
        with pytest.raises(EngineUnavailable):
            call()
    assert EngineUnavailable("x").status == 503 and RuntimeFailure("x").status == 502


def test_remove_reports_when_the_process_stopped(harness: Harness) -> None:
    info = harness.runtime.run(harness.spec())

    stopped_at = harness.runtime.remove(info.id, stop_timeout=5)

    assert stopped_at is not None and info.started_at is not None
    assert stopped_at >= info.started_at
    assert harness.runtime.inspect(info.id) is None
    assert harness.runtime.remove(info.id) is None  # already gone: nothing to report


def test_the_engine_reports_the_nodes_memory(harness: Harness) -> None:
    """Admission control's capacity: at least the memory of one small instance."""
    assert harness.runtime.memory_bytes() >= 64 * 1024 * 1024
