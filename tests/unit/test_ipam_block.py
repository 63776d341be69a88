"""Block arithmetic and bookkeeping, without a datastore."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tabby.ipam.block import (
    AddressInUse,
    Block,
    block_at,
    block_containing,
    cidr_to_key,
    escape_segment,
    fnv1a32,
    key_to_cidr,
    num_blocks,
    seeded_index,
    unescape_segment,
    walk_blocks,
)

ip = ipaddress.ip_address
net = ipaddress.ip_network


def test_keys_round_trip() -> None:
    assert cidr_to_key("10.0.0.0/26") == "10.0.0.0-26"
    assert key_to_cidr("10.0.0.0-26") == net("10.0.0.0/26")
    assert key_to_cidr(cidr_to_key("fd00:1::/122")) == net("fd00:1::/122")
    for name in ["node-1", "a/b", "100%", "%2F", "k8s-pod-network.abc"]:
        assert "/" not in escape_segment(name)
        assert unescape_segment(escape_segment(name)) == name


def test_pool_blocks() -> None:
    pool = net("10.65.0.0/24")
    assert num_blocks(pool, 26) == 4
    assert [str(block_at(pool, 26, i)) for i in range(4)] == [
        "10.65.0.0/26",
        "10.65.0.64/26",
        "10.65.0.128/26",
        "10.65.0.192/26",
    ]
    assert block_containing(ip("10.65.0.77"), 26) == net("10.65.0.64/26")
    v6 = net("fd00::/120")
    assert num_blocks(v6, 122) == 4
    assert block_at(v6, 122, 3) == net("fd00::c0/122")
    assert block_containing(ip("fd00::c5"), 122) == net("fd00::c0/122")


def test_fnv1a32_known_values() -> None:
    # Reference values of 32-bit FNV-1a.
    assert fnv1a32("") == 0x811C9DC5
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


def test_walk_is_seeded_by_node_and_covers_every_block() -> None:
    pool = net("10.0.0.0/20")
    walk_a = list(walk_blocks(pool, 26, "node-a"))
    assert walk_a == list(walk_blocks(pool, 26, "node-a"))  # deterministic per node
    assert sorted(walk_a) == [block_at(pool, 26, i) for i in range(64)]
    # Consecutive after the start (wrapping), like Calico's walk.
    start = int(walk_a[0].network_address)
    assert [int(b.network_address) for b in walk_a[:2]] in (
        [start, start + 64],
        [start, int(pool.network_address)],
    )
    starts = {next(walk_blocks(pool, 26, f"node-{i}")) for i in range(40)}
    assert len(starts) > 15  # different nodes start at different places


def test_seeded_index_huge_v6_pool() -> None:
    n = num_blocks(net("fd00::/48"), 122)
    assert n == 2**74
    idx = seeded_index("node-a", n)
    assert 0 <= idx < n and idx == seeded_index("node-a", n)
    first = next(walk_blocks(net("fd00::/48"), 122, "node-a"))
    assert first.prefixlen == 122 and first.subnet_of(net("fd00::/48"))


def test_new_block_assigns_in_order_and_reuses_released_last() -> None:
    b = Block.new("10.0.0.0/29", "host:n1")
    assert (b.size, b.free, b.in_use, b.host) == (8, 8, 0, "n1")
    got = b.auto_assign(3, "h1", {"pod": "p1"}, now=1.0)
    assert got == [ip("10.0.0.0"), ip("10.0.0.1"), ip("10.0.0.2")]
    assert b.sequence_number == 1
    released, per_handle = b.release([ip("10.0.0.1")])
    assert released == [ip("10.0.0.1")] and per_handle == {"h1": 1}
    # The released ordinal goes to the tail of the free list.
    assert b.auto_assign(5, "h2", now=2.0) == [ip(f"10.0.0.{i}") for i in (3, 4, 5, 6, 7)]
    assert b.auto_assign(5, "h3") == [ip("10.0.0.1")]
    assert b.free == 0 and b.auto_assign(1, "h4") == []


def test_attributes_shared_per_handle_and_compacted() -> None:
    b = Block.new("10.0.0.0/28")
    b.auto_assign(2, "h1", {"pod": "a"}, now=1.0)
    b.auto_assign(1, "h2", {"pod": "b"}, now=2.0)
    b.auto_assign(1, "h1", {"pod": "a"}, now=3.0)
    assert len(b.attributes) == 2
    assert b.ips_by_handle("h1") == [ip("10.0.0.0"), ip("10.0.0.1"), ip("10.0.0.3")]
    assert b.allocation(ip("10.0.0.2")) == {
        "handle": "h2",
        "attrs": {"pod": "b"},
        "allocatedAt": 2.0,
    }
    assert b.release_by_handle("h1") == [ip("10.0.0.0"), ip("10.0.0.1"), ip("10.0.0.3")]
    assert b.attributes == [{"handle": "h2", "attrs": {"pod": "b"}, "allocatedAt": 2.0}]
    assert b.allocations[2] == 0 and b.handle_of(ip("10.0.0.2")) == "h2"


def test_release_only_for_handle_and_free_is_noop() -> None:
    b = Block.new("10.0.0.0/30")
    b.auto_assign(2, "h1")
    seq = b.sequence_number
    assert b.release([ip("10.0.0.0")], handle="other") == ([], {})
    assert b.release([ip("10.0.0.3")]) == ([], {})
    assert b.sequence_number == seq and b.in_use == 2


def test_assign_specific_address() -> None:
    b = Block.new("fd00::/126")
    b.assign(ip("fd00::2"), "h1")
    assert b.unallocated == [0, 1, 3]
    with pytest.raises(AddressInUse, match="fd00::2 is already assigned"):
        b.assign(ip("fd00::2"), "h2")
    with pytest.raises(ValueError, match="not in block"):
        b.assign(ip("fd00::9"), "h2")


def test_json_round_trip() -> None:
    b = Block.new("10.1.0.0/26", "host:n1")
    b.auto_assign(3, "h1", {"namespace": "ns", "pod": "p"})
    b.release([ip("10.1.0.1")])
    again = Block.from_json(b.to_json())
    assert again == b
    assert again.to_dict()["affinity"] == "host:n1"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["assign", "release"]),
            st.integers(0, 15),
            st.sampled_from(["h1", "h2", "h3"]),
        ),
        max_size=60,
    )
)
def test_block_invariants(ops: list[tuple[str, int, str]]) -> None:
    """Whatever the sequence, free list and allocations partition the ordinals, and no
    address is handed out twice while allocated."""
    b = Block.new("10.9.0.0/28")
    held: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
    for op, n, handle in ops:
        if op == "assign":
            for a in b.auto_assign(n % 5 + 1, handle):
                assert a not in held
                held[a] = handle
        else:
            target = b.ip(n)
            released, _ = b.release([target])
            assert released == ([target] if target in held else [])
            held.pop(target, None)
        free = set(b.unallocated)
        used = {i for i, a in enumerate(b.allocations) if a is not None}
        assert len(free) == len(b.unallocated) and not free & used
        assert free | used == set(range(16))
        assert {b.ip(i): b.attributes[b.allocations[i]]["handle"] for i in used} == held  # type: ignore[index]
        assert all(i is None or i < len(b.attributes) for i in b.allocations)
