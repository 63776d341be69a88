"""The allocator against both real backends (sqlite file, real etcd)."""

from __future__ import annotations

import ipaddress

import pytest
from test_ipam_helpers import ds_fixture, ipam_fixture, put_node, put_pool  # noqa: F401

from tabby.datastore import Datastore
from tabby.ipam.allocator import IPAM, IPAMError
from tabby.ipam.block import Block
from tabby.ipam.store import AFFINITIES, BLOCKS, CONFIRMED, PENDING, PENDING_DELETION

ip = ipaddress.ip_address
net = ipaddress.ip_network


def blocks(ipam: IPAM) -> dict[str, Block]:
    return {str(b.cidr): b for b, _ in ipam.store.list_blocks()}


def affinities(ipam: IPAM, node: str | None = None) -> dict[str, str]:
    return {f"{a.node}:{a.cidr}": a.state for a in ipam.store.list_affinities(node)}


def test_assign_claims_affine_block_and_fills_it(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/24")
    r = ipam.auto_assign("h1", "node-a", attrs={"namespace": "ns", "pod": "p1", "node": "node-a"})
    assert len(r.v4) == 1 and r.v6 == [] and r.retries == 0
    first = r.v4[0]
    assert first.network.prefixlen == 26  # the block's prefix travels with the address
    ((cidr, block),) = blocks(ipam).items()
    assert first.ip in block.cidr and block.affinity == "host:node-a"
    assert affinities(ipam) == {f"node-a:{cidr}": CONFIRMED}
    # Later assignments come from the same affine block, in order.
    r2 = ipam.auto_assign("h2", "node-a", num_v4=3)
    assert [i.ip for i in r2.v4] == [first.ip + 1, first.ip + 2, first.ip + 3]
    assert len(blocks(ipam)) == 1
    assert ipam.lookup(first.ip)["attrs"] == {"namespace": "ns", "pod": "p1", "node": "node-a"}


def test_new_block_when_full_and_nodes_get_their_own_blocks(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/24", blockSize=28)  # 16 blocks of 16
    got = ipam.auto_assign("h1", "node-a", num_v4=20)
    assert len({i.ip for i in got.v4}) == 20
    owned = {c for c, b in blocks(ipam).items() if b.host == "node-a"}
    assert len(owned) == 2 and all(blocks(ipam)[c].in_use for c in owned)
    b = ipam.auto_assign("hb", "node-b")
    (mine,) = [c for c, blk in blocks(ipam).items() if blk.host == "node-b"]
    assert b.v4[0].ip in net(mine) and mine not in owned


def test_borrowing_when_pool_has_no_free_block(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/26", blockSize=28)  # 4 blocks of 16
    for n in "abcd":
        ipam.auto_assign(f"h-{n}", f"node-{n}")
    assert sorted(b.host for b in blocks(ipam).values()) == ["node-a", "node-b", "node-c", "node-d"]
    r = ipam.auto_assign("h-e", "node-e", num_v4=2)
    lenders = {blocks(ipam)[str(ipaddress.ip_network((i.ip, 28), strict=False))].host for i in r.v4}
    assert lenders and "node-e" not in lenders
    assert affinities(ipam, "node-e") == {}


def test_strict_affinity_refuses_to_borrow(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/27", blockSize=28)  # 2 blocks
    ipam.set_config(strict_affinity=True)
    ipam.auto_assign("h-a", "node-a")
    ipam.auto_assign("h-b", "node-b")
    with pytest.raises(IPAMError, match=r"10\.65\.0\.0/27 \(p1\) exhausted.*strictAffinity"):
        ipam.auto_assign("h-c", "node-c")
    assert ipam.ips_by_handle("h-c") == []
    ipam.set_config(strict_affinity=False)
    assert len(ipam.auto_assign("h-c", "node-c").v4) == 1


def test_max_blocks_per_host(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/24", blockSize=28)
    with pytest.raises(IPAMError, match="requires strictAffinity=true"):
        ipam.set_config(max_blocks_per_host=2)
    cfg = ipam.set_config(strict_affinity=True, max_blocks_per_host=2)
    assert (cfg.strictAffinity, cfg.maxBlocksPerHost) == (True, 2)
    assert ipam.get_config().maxBlocksPerHost == 2
    ipam.auto_assign("h1", "node-a", num_v4=32)  # exactly two blocks
    with pytest.raises(IPAMError, match=r"node 'node-a' has 2 IPv4 block\(s\), the limit"):
        ipam.auto_assign("h2", "node-a")
    # All-or-nothing: a request that would cross the limit takes nothing.
    ipam.release_ips([ipam.ips_by_handle("h1")[0]])
    with pytest.raises(IPAMError):
        ipam.auto_assign("h3", "node-a", num_v4=2)
    assert ipam.ips_by_handle("h3") == []
    assert len(ipam.auto_assign("h4", "node-a").v4) == 1


def test_default_block_limit_is_20(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/22", blockSize=30)  # 256 blocks of 4
    ipam.auto_assign("h1", "node-a", num_v4=80)  # 20 blocks
    with pytest.raises(IPAMError, match=r"maxBlocksPerHost 20"):
        ipam.auto_assign("h2", "node-a")


def test_release_by_handle_and_by_ip(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/24")
    a = ipam.auto_assign("h-a", "node-a", num_v4=2)
    b = ipam.auto_assign("h-b", "node-a", num_v4=2)
    a_ips, b_ips = [i.ip for i in a.v4], [i.ip for i in b.v4]
    assert ipam.ips_by_handle("h-a") == a_ips
    assert sorted(ipam.release_by_handle("h-a")) == a_ips
    assert ipam.ips_by_handle("h-a") == [] and ipam.store.get_handle("h-a") is None
    assert ipam.release_by_handle("h-a") == []  # idempotent (CNI DEL twice)
    # By address: a free address is reported back, an allocated one released.
    assert ipam.release_ips([b_ips[0], a_ips[0]]) == [a_ips[0]]
    assert ipam.ips_by_handle("h-b") == [b_ips[1]]
    assert ipam.store.get_handle("h-b")[0] == {str(b.v4[0].network): 1}
    # With a handle filter, an address held by another handle is left alone.
    assert ipam.release_ips([str(b_ips[1])], handle="someone-else") == [b_ips[1]]
    assert ipam.release_ips([f"{b_ips[1]}/32"]) == []
    assert ipam.store.get_handle("h-b") is None
    (block,) = blocks(ipam).values()
    assert block.empty and block.host == "node-a"  # affine: kept while empty


def test_empty_non_affine_blocks_are_deleted(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/27", blockSize=28)
    ipam.auto_assign("h-a", "node-a")
    ipam.auto_assign("h-b", "node-b")
    borrowed = ipam.auto_assign("h-c", "node-c").v4[0].ip
    assert ipam.release_host_affinities("node-a") != []
    assert len(blocks(ipam)) == 2  # not empty yet: stays, without affinity
    ipam.release_by_handle("h-a")
    ipam.release_ips([borrowed])
    (left,) = blocks(ipam).values()  # node-a's block, now empty and unaffine, is gone
    assert left.host == "node-b" and left.in_use == 1
    assert affinities(ipam, "node-a") == {}


def test_release_affinity_keeps_non_empty_block_borrowable(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/28", blockSize=28)  # one block
    a = ipam.auto_assign("h-a", "node-a").v4[0]
    with pytest.raises(IPAMError, match="still has 1 address"):
        ipam.release_affinity("node-a", a.network, require_empty=True)
    assert affinities(ipam) == {f"node-a:{a.network}": CONFIRMED}
    assert ipam.release_affinity("node-a", a.network)
    (block,) = blocks(ipam).values()
    assert block.affinity is None and block.in_use == 1
    assert not ipam.release_affinity("node-a", a.network)
    # The block is now free for anyone to borrow from (no node can claim it: it exists).
    ipam.auto_assign("h-b", "node-b")
    ipam.release_by_handle("h-a")
    ipam.release_by_handle("h-b")
    assert blocks(ipam) == {}


def test_ipv6_and_dual_stack(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "v4", "10.65.0.0/24")
    put_pool(ds, "v6", "fd00:65::/120")
    r = ipam.auto_assign("h1", "node-a", num_v4=1, num_v6=2)
    assert len(r.v4) == 1 and len(r.v6) == 2
    assert all(i.network.prefixlen == 122 and i.ip in net("fd00:65::/120") for i in r.v6)
    assert set(blocks(ipam)) == {str(r.v4[0].network), str(r.v6[0].network)}
    assert sorted(ipam.release_by_handle("h1"), key=str) == sorted(r.ips, key=str)
    only6 = ipam.auto_assign("h2", "node-a", num_v4=0, num_v6=1)
    assert only6.v4 == [] and only6.v6[0].ip.version == 6


def test_dual_stack_is_all_or_nothing(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "v4", "10.65.0.0/24")
    with pytest.raises(IPAMError, match="no enabled IPv6 IP pool"):
        ipam.auto_assign("h1", "node-a", num_v4=1, num_v6=1)
    assert ipam.ips_by_handle("h1") == []
    assert all(b.empty for b in blocks(ipam).values())


def test_disabled_pool_is_not_used(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "off", "10.1.0.0/24", disabled=True)
    with pytest.raises(IPAMError, match="no enabled IPv4 IP pool"):
        ipam.auto_assign("h1", "node-a")
    put_pool(ds, "on", "10.2.0.0/24")
    assert ipam.auto_assign("h1", "node-a").v4[0].ip in net("10.2.0.0/24")
    with pytest.raises(IPAMError, match=r"requested IP pool 10\.1\.0\.0/24 \(off\) is disabled"):
        ipam.auto_assign("h2", "node-a", pools=["off"])
    with pytest.raises(IPAMError, match="not in any enabled IP pool"):
        ipam.assign_ip("10.1.0.5", "h3", node="node-a")


def test_node_selector_and_requested_pools(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "rack1", "10.1.0.0/24", nodeSelector="rack == 'r1'")
    put_pool(ds, "rack2", "10.2.0.0/24", nodeSelector="rack == 'r2'")
    put_node(ds, "node-a", {"rack": "r2"})
    # Labels read from the Node resource, or passed in.
    assert ipam.auto_assign("h1", "node-a").v4[0].ip in net("10.2.0.0/24")
    assert ipam.auto_assign("h2", "node-x", node_labels={"rack": "r1"}).v4[0].ip in net(
        "10.1.0.0/24"
    )
    with pytest.raises(IPAMError, match="no enabled IPv4 IP pool can be used on node 'node-y'"):
        ipam.auto_assign("h3", "node-y")
    # An explicit request overrides the nodeSelector (as Calico's CNI ipv4_pools does).
    assert ipam.auto_assign("h4", "node-a", pools=["rack1"]).v4[0].ip in net("10.1.0.0/24")
    with pytest.raises(IPAMError, match="requested IP pool 'nope' does not exist"):
        ipam.auto_assign("h5", "node-a", pools=["nope"])
    with pytest.raises(IPAMError, match=r"none of the requested IP pools \(rack1\) is an IPv6"):
        ipam.auto_assign("h5", "node-a", num_v4=0, num_v6=1, pools=["rack1"])
    put_pool(ds, "any", "10.3.0.0/24")
    assert ipam.auto_assign("h6", "node-a", pools=["10.3.0.0/24"]).v4[0].ip in net("10.3.0.0/24")


def test_allowed_uses(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "tunnels", "10.9.0.0/24", allowedUses=["Tunnel"])
    with pytest.raises(IPAMError, match="no enabled IPv4 IP pool"):
        ipam.auto_assign("h1", "node-a")
    got = ipam.auto_assign("vxlan-tunnel-addr-node-a", "node-a", use="Tunnel")
    assert got.v4[0].ip in net("10.9.0.0/24")
    with pytest.raises(IPAMError, match=r"10\.9\.0\.0/24 \(tunnels\) does not allow use Workload"):
        ipam.auto_assign("h2", "node-a", pools=["tunnels"])


def test_exhausted_pool_names_the_pools(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "tiny", "10.65.0.0/30", blockSize=30)
    put_pool(ds, "tiny2", "10.66.0.0/30", blockSize=30)
    ipam.auto_assign("h1", "node-a", num_v4=8)
    with pytest.raises(IPAMError) as err:
        ipam.auto_assign("h2", "node-b")
    assert "10.65.0.0/30 (tiny)" in str(err.value) and "10.66.0.0/30 (tiny2)" in str(err.value)
    assert "exhausted" in str(err.value)


def test_assign_specific_ip(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/24")
    assert ipam.assign_ip("10.65.0.70", "h1", {"pod": "x"}, node="node-a") == ip("10.65.0.70")
    assert blocks(ipam)["10.65.0.64/26"].host == "node-a"  # its block was claimed
    with pytest.raises(IPAMError, match="already assigned"):
        ipam.assign_ip("10.65.0.70", "h2", node="node-a")
    with pytest.raises(IPAMError, match="invalid IP address 'bogus'"):
        ipam.assign_ip("bogus", "h2", node="node-a")
    # Auto-assignment on node-a now skips the taken address.
    got = ipam.auto_assign("h3", "node-a", num_v4=10)
    assert ip("10.65.0.70") not in [i.ip for i in got.v4]


def test_crash_after_pending_affinity_is_repaired(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/24")
    # A claim interrupted after step 1: pending affinity, no block.
    ipam.store.create_affinity("node-a", net("10.65.0.128/26"), PENDING)
    r = ipam.auto_assign("h1", "node-a")
    assert r.v4[0].ip in net("10.65.0.128/26")  # the claim was finished and used
    assert affinities(ipam) == {"node-a:10.65.0.128/26": CONFIRMED}
    assert len(blocks(ipam)) == 1


def test_crash_after_block_created_is_repaired(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/24")
    ipam.store.create_affinity("node-a", net("10.65.0.64/26"), PENDING)
    ipam.store.create_block(Block.new("10.65.0.64/26", "host:node-a"))
    assert ipam.auto_assign("h1", "node-a").v4[0].ip == ip("10.65.0.64")
    assert affinities(ipam) == {"node-a:10.65.0.64/26": CONFIRMED}


def test_pending_affinity_for_another_nodes_block_is_dropped(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/24")
    ipam.store.create_block(Block.new("10.65.0.0/26", "host:node-b"))
    ipam.store.create_affinity("node-a", net("10.65.0.0/26"), PENDING)
    r = ipam.auto_assign("h1", "node-a")
    assert r.v4[0].ip not in net("10.65.0.0/26")
    assert "node-a:10.65.0.0/26" not in affinities(ipam)


def test_repair_settles_leftovers(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/24")
    store = ipam.store
    store.create_affinity("node-a", net("10.65.0.0/26"), PENDING)  # no block: dropped
    store.create_affinity("node-b", net("10.65.0.64/26"), PENDING)  # block ours: confirmed
    store.create_block(Block.new("10.65.0.64/26", "host:node-b"))
    store.create_block(Block.new("10.65.0.128/26", "host:node-c"))  # record recreated
    store.create_affinity("node-d", net("10.65.0.192/26"), PENDING_DELETION)  # finished
    store.create_block(Block.new("10.65.0.192/26", "host:node-d"))
    planned = ipam.repair(dry_run=True)
    assert len(planned) == 4 and store.list_affinities("node-a")  # dry run: no change
    assert ipam.repair() == planned
    assert affinities(ipam) == {
        "node-b:10.65.0.64/26": CONFIRMED,
        "node-c:10.65.0.128/26": CONFIRMED,
    }
    assert set(blocks(ipam)) == {"10.65.0.64/26", "10.65.0.128/26"}  # empty node-d block gone
    assert ipam.repair() == []


def test_handle_and_node_names_with_slashes(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/24")
    r = ipam.auto_assign("ns/pod%1", "node/x")
    assert ipam.ips_by_handle("ns/pod%1") == r.ips
    assert affinities(ipam, "node/x") == {f"node/x:{r.v4[0].network}": CONFIRMED}
    kvs, _ = ds.list(AFFINITIES)
    assert all(k.key.count("/") == AFFINITIES.count("/") + 1 for k in kvs)
    assert ipam.release_by_handle("ns/pod%1") == r.ips


def test_bad_arguments(ds: Datastore, ipam: IPAM) -> None:
    with pytest.raises(IPAMError, match="handle: must be a non-empty string"):
        ipam.auto_assign("", "node-a")
    with pytest.raises(IPAMError, match="invalid use 'Pods'"):
        ipam.auto_assign("h", "node-a", use="Pods")
    with pytest.raises(IPAMError, match="number of addresses must be >= 0"):
        ipam.auto_assign("h", "node-a", num_v4=-1)
    with pytest.raises(IPAMError, match="autoAllocateBlocks=false requires strictAffinity"):
        ipam.set_config(auto_allocate_blocks=False)


def test_usage_and_allocations(ds: Datastore, ipam: IPAM) -> None:
    put_pool(ds, "p1", "10.65.0.0/24")
    put_pool(ds, "p6", "fd00::/120")
    ipam.auto_assign("h1", "node-a", num_v4=3, num_v6=1, attrs={"pod": "p"})
    u = ipam.usage()
    p1, p6 = u["pools"]
    assert (p1["name"], p1["size"], p1["inUse"], p1["free"]) == ("p1", 256, 3, 253)
    assert p1["blocks"] == [
        {"cidr": p1["blocks"][0]["cidr"], "node": "node-a", "size": 64, "inUse": 3, "free": 61}
    ]
    assert (p6["size"], p6["inUse"]) == (256, 1)
    allocs = ipam.allocations()
    assert len(allocs) == 4 and {a["handle"] for a in allocs} == {"h1"}
    assert all(a["attrs"] == {"pod": "p"} and a["blockNode"] == "node-a" for a in allocs)
    kvs, _ = ds.list(BLOCKS)
    assert len(kvs) == 2


def test_reads_resources_written_by_the_resource_client(ds: Datastore, ipam: IPAM) -> None:
    from tabby.datastore.client import ResourceClient
    from tabby.resources import parse_documents

    client = ResourceClient(ds)
    for res in parse_documents(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: edge}\n"
        "spec: {cidr: 10.44.0.0/24, blockSize: 28, nodeSelector: zone == 'edge'}\n---\n"
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: six}\n"
        "spec: {cidr: 'fd00:44::/120'}\n---\n"
        "apiVersion: projectcalico.org/v3\nkind: Node\n"
        "metadata: {name: node-e, labels: {zone: edge}}\nspec: {}\n",
        "test",
    ):
        client.create(res)
    r = ipam.auto_assign("h1", "node-e", num_v4=1, num_v6=1)
    assert r.v4[0].network.prefixlen == 28 and r.v4[0].ip in net("10.44.0.0/24")
    assert r.v6[0].network.prefixlen == 122
    with pytest.raises(IPAMError, match="no enabled IPv4 IP pool can be used on node 'node-f'"):
        ipam.auto_assign("h2", "node-f")
