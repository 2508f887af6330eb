"""Subnets of Berth's bridge networks: the first free /24 of the pool, never one in use."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.errors import InvalidInput
from berth.runtime.subnets import next_free, parse_pool, parse_routes

POOL = ipaddress.IPv4Network("10.224.0.0/12")


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def test_an_empty_pool_gives_its_first_subnet() -> None:
    assert next_free(POOL, 24, []) == net("10.224.0.0/24")


def test_subnets_in_use_are_skipped() -> None:
    taken = [net("10.224.0.0/24"), net("10.224.1.0/24"), net("10.224.3.0/24")]
    assert next_free(POOL, 24, taken) == net("10.224.2.0/24")


def test_a_wide_route_inside_the_pool_is_skipped_whole() -> None:
    # A host route (a LAN, a VPN) covering part of the pool is never shadowed.
    assert next_free(POOL, 24, [net("10.224.0.0/16")]) == net("10.225.0.0/24")


def test_ranges_outside_the_pool_do_not_matter() -> None:
    assert next_free(POOL, 24, [net("172.17.0.0/16")]) == net("10.224.0.0/24")


def test_a_route_covering_the_whole_pool_leaves_nothing() -> None:
    assert next_free(POOL, 24, [net("0.0.0.0/1")]) is None


def test_a_full_pool_gives_none() -> None:
    assert next_free(net("10.224.0.0/23"), 24, [net("10.224.0.0/24"), net("10.224.1.0/24")]) is None


def test_a_small_busy_range_blocks_only_its_own_subnet() -> None:
    assert next_free(POOL, 24, [net("10.224.0.128/25")]) == net("10.224.1.0/24")


@given(st.sets(st.integers(min_value=0, max_value=255), max_size=60))
def test_the_choice_never_overlaps_anything_taken(indexes: set[int]) -> None:
    pool = net("10.230.0.0/16")
    taken = [ipaddress.IPv4Network((int(pool.network_address) + i * 256, 24)) for i in indexes]
    chosen = next_free(pool, 24, taken)
    if len(indexes) == 256:
        assert chosen is None
        return
    assert chosen is not None and chosen.subnet_of(pool)
    assert not any(chosen.overlaps(t) for t in taken)
    # The first free one: every subnet before it is taken.
    first = (int(chosen.network_address) - int(pool.network_address)) // 256
    assert set(range(first)) <= indexes


def test_proc_routes_are_parsed_without_the_default_route() -> None:
    text = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
        "garbage line\n"
    )
    assert parse_routes(text) == [net("192.168.2.0/24"), net("172.17.0.0/16")]


@pytest.mark.parametrize("pool", ["", "10.224.0.0/33", "10.224.0.1/12", "fe80::/10", "x"])
def test_a_bad_pool_setting_is_a_clear_error(pool: str) -> None:
    with pytest.raises(InvalidInput, match="BERTH_NETWORK_POOL"):
        parse_pool(pool, 24)


def test_the_prefix_must_fit_the_pool() -> None:
    with pytest.raises(InvalidInput, match="BERTH_NETWORK_PREFIX"):
        parse_pool("10.224.0.0/24", 16)
