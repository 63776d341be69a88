"""A borrowed workload address in a real three-node VXLAN cluster: IPAM hands node n2's
pod an address from a block affine to n1 (strictAffinity off by default; n2's block is
full and the pool has no unclaimed block left), and the agents route it as Felix does: a
/32 via n2's VTEP on every other node, more specific than n1's block route (and than n1's
own blackhole for that block)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_agent_support import AgentLab, wait_for

from tabby.cni.constants import ROUTE_PROTO
from tabby.dataplane.vxlan import DEVICE
from tabby.ipam.allocator import IPAM
from tabby.ipam.store import IPAMError
from tabby.lab import netns as nsops
from tabby.lab.probe import ProbeServer, probe

pytestmark = pytest.mark.root

BLOCK_SIZE = 29  # eight addresses: easy to fill
POOL = "10.65.0.0/27"  # four blocks: one per node, and one more to fill


def tabby_routes(lab: AgentLab, node: str) -> dict[str, dict[str, Any]]:
    out = nsops.run(lab.nodes[node].netns,
                    ["ip", "-j", "route", "show", "proto", str(ROUTE_PROTO)]).stdout
    return {r["dst"]: r for r in json.loads(out)}


def tunnel_block(lab: AgentLab, node: str) -> ipaddress.IPv4Network:
    """The node's block: the one its VXLAN tunnel address came from at registration."""
    addr = lab.get("Node", node).spec.ipv4VXLANTunnelAddr
    return ipaddress.ip_network(f"{addr}/{BLOCK_SIZE}", strict=False)


def fill_block(lab: AgentLab, block: ipaddress.IPv4Network, node: str) -> None:
    """Allocate every free address of `block` (not to workloads: no routes for them)."""
    ds, _ = lab.client()
    try:
        ipam = IPAM(ds)
        for addr in block:
            try:
                ipam.assign_ip(addr, f"filler-{node}", {"node": node}, node=node)
            except IPAMError:
                pass  # in use already
    finally:
        ds.close()


def test_borrowed_address_routed_via_its_nodes_vtep(topology: Callable[..., Any],
                                                    tmp_path: Path) -> None:
    lab = AgentLab.make(topology(), tmp_path, nodes=3,
                        pool={"cidr": POOL, "blockSize": BLOCK_SIZE})
    for n in lab.nodes:
        lab.start_agent(n)
    lab.wait_ready()
    blocks = {n: tunnel_block(lab, n) for n in lab.nodes}
    a = lab.add_pod("n1", "a")
    c = lab.add_pod("n3", "c")
    assert ipaddress.ip_address(a.ip) in blocks["n1"]

    # n2 finds no room in its block and no block left to claim; n3's are full too, so the
    # only block n2 can borrow from is n1's.
    (spare,) = set(ipaddress.ip_network(POOL).subnets(new_prefix=BLOCK_SIZE)) - set(
        blocks.values())
    for block, node in ((spare, "n3"), (blocks["n2"], "n2"), (blocks["n3"], "n3")):
        fill_block(lab, block, node)
    b = lab.add_pod("n2", "b")
    assert ipaddress.ip_address(b.ip) in blocks["n1"], (b.ip, blocks)

    server = ProbeServer.start(b.netns, tcp=[8080], udp=[], topology=lab.topo)
    ProbeServer.start(c.netns, tcp=[8080], udp=[], topology=lab.topo)
    n2_tunnel = str(lab.get("Node", "n2").spec.ipv4VXLANTunnelAddr)
    for node in ("n1", "n3"):
        # The /32 via n2's VTEP, next to the block route n1 owns (a blackhole on n1).
        got = wait_for(f"{b.ip}/32 on {node}", lambda n=node: tabby_routes(lab, n).get(b.ip))
        assert (got.get("dev"), got.get("gateway")) == (DEVICE, n2_tunnel), got
    block_n1 = tabby_routes(lab, "n3")[str(blocks["n1"])]
    assert block_n1["dev"] == DEVICE and block_n1["gateway"] != n2_tunnel
    assert tabby_routes(lab, "n1")[str(blocks["n1"])]["type"] == "blackhole"
    assert b.ip not in {r["dst"] for r in tabby_routes(lab, "n2").values()
                        if r.get("dev") == DEVICE}  # n2: its own interface, not the tunnel

    wait_for("c (n3) -> b (n2, borrowed)", lambda: probe(c.netns, b.ip, "tcp", 8080))
    wait_for("a (n1, block owner) -> b", lambda: probe(a.netns, b.ip, "tcp", 8080))
    assert probe(c.netns, b.ip, "icmp") and probe(a.netns, b.ip, "icmp")
    assert probe(b.netns, c.ip, "tcp", 8080)  # and back

    # The endpoint goes: so does the /32, everywhere; the block route stays.
    server.stop()
    lab.delete("WorkloadEndpoint", b.endpoint, b.namespace)
    for node in ("n1", "n3"):
        wait_for(f"{b.ip}/32 gone on {node}", lambda n=node: b.ip not in tabby_routes(lab, n))
    assert str(blocks["n1"]) in tabby_routes(lab, "n3")
