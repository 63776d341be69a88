"""Routes and VTEPs from pools, nodes, IPAM blocks and local workloads."""

from __future__ import annotations

from typing import Any

from tabby.calc import messages as m
from tabby.calc import samples as s
from tabby.calc.fold import DataplaneModel, fresh_state
from tabby.calc.graph import CalcGraph

ME = "n1"
MAC1, MAC2, MAC3 = "66:00:00:00:00:01", "66:00:00:00:00:02", "66:00:00:00:00:03"

NODES = [
    s.node("n1", "192.168.0.1/24", vxlan_ip="10.0.0.129", vxlan_mac=MAC1),
    s.node("n2", "192.168.0.2/24", vxlan_ip="10.0.1.129", vxlan_mac=MAC2),  # same subnet
    s.node("n3", "192.168.9.3/24", vxlan_ip="10.0.2.129", vxlan_mac=MAC3),  # other subnet
]
BLOCKS = [s.block("10.0.0.0/26", "n1"), s.block("10.0.1.0/26", "n2"),
          s.block("10.0.2.0/26", "n3"), s.block("10.0.3.0/26", None)]


def run(*items: tuple[str, Any]) -> tuple[DataplaneModel, CalcGraph]:
    model = DataplaneModel()  # strict: a VXLAN route before its VTEP raises
    graph = CalcGraph(ME, model.apply)
    for k, v in items:
        graph.on_update(k, v)
    graph.on_in_sync()
    return model, graph


def routes(model: DataplaneModel, kind: str = "remote-block") -> dict[str, tuple[Any, ...]]:
    return {d: (r.kind, r.dst_node, r.next_hop, r.encap, r.same_subnet)
            for d, r in model.routes.items() if r.kind == kind}


def test_vxlan_always_routes_remote_blocks_via_vteps() -> None:
    model, _ = run(s.pool("p", "10.0.0.0/16", vxlan="Always", nat=True), *NODES, *BLOCKS)
    assert routes(model) == {
        "10.0.1.0/26": ("remote-block", "n2", "10.0.1.129", "vxlan", False),
        "10.0.2.0/26": ("remote-block", "n3", "10.0.2.129", "vxlan", False),
    }
    assert model.routes["10.0.1.0/26"].dst_node_ip == "192.168.0.2"
    assert model.routes["10.0.1.0/26"].nat_outgoing
    assert model.vteps == {
        "n2": m.VTEPUpdate("n2", "10.0.1.129", MAC2, "192.168.0.2"),
        "n3": m.VTEPUpdate("n3", "10.0.2.129", MAC3, "192.168.9.3"),
    }


def test_vxlan_cross_subnet_encapsulates_only_across_subnets() -> None:
    model, _ = run(s.pool("p", "10.0.0.0/16", vxlan="CrossSubnet"), *NODES, *BLOCKS)
    assert routes(model) == {
        "10.0.1.0/26": ("remote-block", "n2", "192.168.0.2", "none", True),
        "10.0.2.0/26": ("remote-block", "n3", "10.0.2.129", "vxlan", False),
    }


def test_ipip_always_and_cross_subnet() -> None:
    model, _ = run(s.pool("p", "10.0.0.0/16", ipip="Always"), *NODES, *BLOCKS)
    assert routes(model) == {
        "10.0.1.0/26": ("remote-block", "n2", "192.168.0.2", "ipip", False),
        "10.0.2.0/26": ("remote-block", "n3", "192.168.9.3", "ipip", False),
    }
    assert model.vteps == {}  # no VXLAN pool: no VTEPs
    model, _ = run(s.pool("p", "10.0.0.0/16", ipip="CrossSubnet"), *NODES, *BLOCKS)
    assert routes(model)["10.0.1.0/26"] == ("remote-block", "n2", "192.168.0.2", "none", True)
    assert routes(model)["10.0.2.0/26"][3] == "ipip"


def test_never_gives_plain_routes_for_the_route_dataplane_or_bird() -> None:
    model, _ = run(s.pool("p", "10.0.0.0/16"), *NODES, *BLOCKS)
    assert routes(model) == {
        "10.0.1.0/26": ("remote-block", "n2", "192.168.0.2", "none", True),
        "10.0.2.0/26": ("remote-block", "n3", "192.168.9.3", "none", False),
    }
    assert model.vteps == {}


def test_local_blocks_and_host_routes() -> None:
    model, graph = run(s.pool("p", "10.0.0.0/16", vxlan="Always", nat=True), *NODES, *BLOCKS)
    assert model.routes["10.0.0.0/26"] == m.RouteUpdate(
        "10.0.0.0/26", "local-block", dst_node="n1", nat_outgoing=True)
    assert routes(model, "local-host") == {
        "192.168.0.1/32": ("local-host", "n1", None, "none", False)}
    assert set(routes(model, "remote-host")) == {"192.168.0.2/32", "192.168.9.3/32"}
    graph.on_update(*s.node("n3", "192.168.9.4/24", vxlan_ip="10.0.2.129", vxlan_mac=MAC3))
    assert set(routes(model, "remote-host")) == {"192.168.0.2/32", "192.168.9.4/32"}
    graph.on_update("/tabby/v3/nodes/n1", None)
    assert routes(model, "local-host") == {}


def test_blocks_outside_any_pool_or_of_unknown_nodes_get_no_route() -> None:
    model, _ = run(s.pool("p", "10.0.0.0/24", vxlan="Always"), *NODES, *BLOCKS,
                   s.block("10.0.0.64/26", "ghost"))
    assert routes(model) == {}
    assert set(routes(model, "local-block")) == {"10.0.0.0/26"}


def test_local_workload_routes() -> None:
    model, graph = run(s.workload("ns", "a", ME, ["10.0.0.5", "fd00::5"], iface="calia"),
                       s.workload("ns", "b", "n2", ["10.0.1.5"]))
    assert {d: (r.kind, r.ifname) for d, r in model.routes.items()
            if r.kind == "local-workload"} == {
        "10.0.0.5/32": ("local-workload", "calia"), "fd00::5/128": ("local-workload", "calia")}
    graph.on_update(*s.workload("ns", "a", ME, ["10.0.0.6"], iface="calia"))
    assert set(routes(model, "local-workload")) == {"10.0.0.6/32"}
    graph.on_update(*s.workload("ns", "a", "n2", ["10.0.0.6"], iface="calia"))  # moved away
    assert model.routes == {}


def test_pool_removal_removes_its_routes_and_vteps() -> None:
    model, graph = run(s.pool("p", "10.0.0.0/16", vxlan="Always"), *NODES, *BLOCKS)
    graph.on_update("/tabby/v3/ippools/p", None)
    assert routes(model) == {} and routes(model, "local-block") == {}
    assert model.vteps == {} and model.pools == {}
    graph.on_update(*s.pool("p", "10.0.0.0/16", ipip="Always"))
    assert {r.encap for r in model.routes.values() if r.kind == "remote-block"} == {"ipip"}


def test_node_removal_and_changes() -> None:
    model, graph = run(s.pool("p", "10.0.0.0/16", vxlan="CrossSubnet"), *NODES, *BLOCKS)
    graph.on_update("/tabby/v3/nodes/n3", None)
    assert set(routes(model)) == {"10.0.1.0/26"} and set(model.vteps) == {"n2"}
    # n2 moves to another subnet: now encapsulated.
    graph.on_update(*s.node("n2", "192.168.7.2/24", vxlan_ip="10.0.1.129", vxlan_mac=MAC2))
    assert routes(model)["10.0.1.0/26"][3] == "vxlan"
    # Our own node moves to n2's subnet: direct again.
    graph.on_update(*s.node("n1", "192.168.7.1/24", vxlan_ip="10.0.0.129", vxlan_mac=MAC1))
    assert routes(model)["10.0.1.0/26"][3:] == ("none", True)
    # A node without a VXLAN MAC has no VTEP, so no VXLAN route through it.
    graph.on_update(*s.node("n2", "192.168.8.2/24", vxlan_ip="10.0.1.129"))
    assert routes(model) == {} and model.vteps == {}


def test_underlay_from_addresses_when_no_bgp_address() -> None:
    model, _ = run(s.pool("p", "10.0.0.0/16", vxlan="Always"), NODES[0],
                   s.node("n2", vxlan_ip="10.0.1.129", vxlan_mac=MAC2,
                          addresses=["fd00::2", "172.16.0.2"]),
                   BLOCKS[1])
    assert model.vteps["n2"].underlay_ip == "172.16.0.2"


def test_block_affinity_changes() -> None:
    model, graph = run(s.pool("p", "10.0.0.0/16", vxlan="Always"), *NODES, *BLOCKS)
    graph.on_update(*s.block("10.0.1.0/26", "n1"))  # now ours
    assert model.routes["10.0.1.0/26"].kind == "local-block"
    graph.on_update(*s.block("10.0.3.0/26", "n3"))  # claimed by n3
    assert routes(model)["10.0.3.0/26"][1] == "n3"
    graph.on_update(s.block("10.0.2.0/26", None)[0], None)
    assert set(routes(model)) == {"10.0.3.0/26"}
    items = [s.pool("p", "10.0.0.0/16", vxlan="Always"), *NODES, s.block("10.0.1.0/26", "n1"),
             s.block("10.0.3.0/26", "n3"), BLOCKS[0]]
    assert model.state() == fresh_state(ME, items)
