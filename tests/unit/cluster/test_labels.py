"""Node label rules (pure): Berth's zone and ingress, reserved keys refused."""

from __future__ import annotations

import pytest

from berth.cluster.labels import apply_change, check_key, check_value, parse_pairs
from berth.errors import Conflict, InvalidInput


@pytest.mark.parametrize("key", ["zone", "ingress", "disk", "rack.row-1", "a", "gpu_model"])
def test_good_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "Zone",
        "-x",
        "x-",
        "a..b",
        "a b",
        "x" * 64,
        "node.role",
        "node.labels.zone",
        "com.docker.foo",
        "io.docker.x",
        "org.dockerproject.y",
        "engine.labels.z",
        "berth.managed",
        "berth.anything",
        "zone=a",
        "z\n",
    ],
)
def test_bad_or_reserved_keys_are_422(key: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_key(key)
    assert err.value.status == 422


@pytest.mark.parametrize(
    ("key", "value"),
    [("zone", "a"), ("zone", "eu-west-1"), ("ingress", "true"), ("ingress", "false"),
     ("disk", "ssd"), ("owner", "ops@example.com"), ("path", "a/b:c")],
)  # fmt: skip
def test_good_values(key: str, value: str) -> None:
    assert check_value(key, value) == value


@pytest.mark.parametrize(
    ("key", "value"),
    [("zone", "A"), ("zone", "a b"), ("zone", ""), ("zone", "a" * 33), ("ingress", "yes"),
     ("ingress", ""), ("disk", "a==b"), ("disk", "a!=b"), ("disk", "x,y"), ("disk", ""),
     ("disk", "with space"), ("disk", "x" * 129), ("disk", "tab\t"), ("disk", "$(id)")],
)  # fmt: skip
def test_bad_values_are_422(key: str, value: str) -> None:
    with pytest.raises(InvalidInput):
        check_value(key, value)


def test_pairs_parse_and_refuse_doubles_and_missing_equals() -> None:
    assert parse_pairs(["zone=a", "disk=ssd"]) == {"zone": "a", "disk": "ssd"}
    with pytest.raises(InvalidInput):
        parse_pairs(["zone"])
    with pytest.raises(InvalidInput):
        parse_pairs(["zone=a", "zone=b"])


def test_apply_change_sets_removes_and_refuses_bad_parts_whole() -> None:
    assert apply_change({"zone": "a", "disk": "hdd"}, {"disk": "ssd"}, ["zone"]) == {"disk": "ssd"}
    with pytest.raises(Conflict) as missing:
        apply_change({"zone": "a"}, {}, ["rack"])
    assert missing.value.code == "no_such_label"
    with pytest.raises(InvalidInput):
        apply_change({}, {}, [])
    with pytest.raises(InvalidInput):
        apply_change({}, {"zone": "a"}, ["zone"])
    with pytest.raises(InvalidInput):
        apply_change({}, {"ok": "1", "node.x": "y"}, [])
    with pytest.raises(InvalidInput):
        apply_change({f"k{i}": "v" for i in range(64)}, {"one": "more"}, [])
