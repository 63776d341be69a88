"""Routes and VTEPs from pools, nodes, IPAM blocks and local workloads."""

from __future__ import annotations

import random
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


# -- borrowed addresses: a workload's address from a block affine to another node ------------

VXLAN = s.pool("p", "10.0.0.0/16", vxlan="Always")


def wl(name: str, node: str, *ips: str) -> tuple[str, Any]:
    return s.workload("ns", name, node, list(ips))


def borrowed(model: DataplaneModel) -> dict[str, tuple[Any, ...]]:
    return routes(model, "remote-workload")


def test_borrowed_address_vxlan_routes_via_the_workloads_vtep() -> None:
    model, _ = run(VXLAN, *NODES, *BLOCKS,
                   wl("own", "n2", "10.0.1.5"),  # in its node's block: the block route does
                   wl("b", "n3", "10.0.1.7"),  # from n2's block
                   wl("mine", "n2", "10.0.0.9"),  # from our own block
                   wl("unaffine", "n3", "10.0.3.5"),  # block with no affinity
                   wl("noblock", "n2", "10.0.9.5"),  # in the pool, in no block
                   wl("outside", "n2", "10.9.0.5"),  # in no pool: never routed
                   wl("v6", "n3", "fd00::7"))
    assert borrowed(model) == {
        "10.0.1.7/32": ("remote-workload", "n3", "10.0.2.129", "vxlan", False),
        "10.0.0.9/32": ("remote-workload", "n2", "10.0.1.129", "vxlan", False),
        "10.0.3.5/32": ("remote-workload", "n3", "10.0.2.129", "vxlan", False),
        "10.0.9.5/32": ("remote-workload", "n2", "10.0.1.129", "vxlan", False),
    }
    assert model.routes["10.0.1.7/32"].dst_node_ip == "192.168.9.3"
    # The block routes stay: the /32 is only more specific.
    assert set(routes(model)) == {"10.0.1.0/26", "10.0.2.0/26"}
    assert model.routes["10.0.0.0/26"].kind == "local-block"


def test_borrowed_address_ipip_cross_subnet_and_never() -> None:
    items = [*NODES, *BLOCKS, wl("b", "n3", "10.0.1.7"), wl("c", "n2", "10.0.2.8")]
    model, _ = run(s.pool("p", "10.0.0.0/16", ipip="Always"), *items)
    assert borrowed(model) == {
        "10.0.1.7/32": ("remote-workload", "n3", "192.168.9.3", "ipip", False),
        "10.0.2.8/32": ("remote-workload", "n2", "192.168.0.2", "ipip", False),
    }
    model, _ = run(s.pool("p", "10.0.0.0/16", ipip="CrossSubnet"), *items)
    assert borrowed(model) == {
        "10.0.1.7/32": ("remote-workload", "n3", "192.168.9.3", "ipip", False),
        "10.0.2.8/32": ("remote-workload", "n2", "192.168.0.2", "none", True),
    }
    model, _ = run(s.pool("p", "10.0.0.0/16", vxlan="CrossSubnet"), *items)
    assert borrowed(model) == {
        "10.0.1.7/32": ("remote-workload", "n3", "10.0.2.129", "vxlan", False),
        "10.0.2.8/32": ("remote-workload", "n2", "192.168.0.2", "none", True),
    }
    model, _ = run(s.pool("p", "10.0.0.0/16", nat=True), *items)  # Never: BIRD's, or ours
    assert borrowed(model) == {
        "10.0.1.7/32": ("remote-workload", "n3", "192.168.9.3", "none", False),
        "10.0.2.8/32": ("remote-workload", "n2", "192.168.0.2", "none", True),
    }
    assert model.routes["10.0.1.7/32"].nat_outgoing and model.vteps == {}


def test_no_borrowed_route_for_a_workload_on_this_node() -> None:
    model, graph = run(VXLAN, *NODES, *BLOCKS,
                       s.workload("ns", "w", ME, ["10.0.1.7"], iface="caliw"))
    assert borrowed(model) == {}
    assert model.routes["10.0.1.7/32"] == m.RouteUpdate(
        "10.0.1.7/32", "local-workload", dst_node=ME, ifname="caliw")
    # It moves to n3: now a borrowed /32 via n3 instead of the local route...
    graph.on_update(*wl("w", "n3", "10.0.1.7"))
    assert borrowed(model) == {
        "10.0.1.7/32": ("remote-workload", "n3", "10.0.2.129", "vxlan", False)}
    # ...and back here: local again, the /32 via n3 gone.
    graph.on_update(*s.workload("ns", "w", ME, ["10.0.1.7"], iface="caliw"))
    assert borrowed(model) == {} and model.routes["10.0.1.7/32"].kind == "local-workload"


def test_block_affinity_change_makes_an_address_borrowed_or_not() -> None:
    model, graph = run(VXLAN, *NODES, *BLOCKS, wl("b", "n3", "10.0.1.7"),
                       wl("own", "n2", "10.0.1.5"))
    assert set(borrowed(model)) == {"10.0.1.7/32"}
    graph.on_update(*s.block("10.0.1.0/26", "n3"))  # n2 released it, n3 claimed it
    assert borrowed(model) == {
        "10.0.1.5/32": ("remote-workload", "n2", "10.0.1.129", "vxlan", False)}
    assert routes(model)["10.0.1.0/26"][1] == "n3"
    graph.on_update(*s.block("10.0.1.0/26", ME))  # now ours: both borrowed from us
    assert set(borrowed(model)) == {"10.0.1.5/32", "10.0.1.7/32"}
    assert model.routes["10.0.1.0/26"].kind == "local-block"
    graph.on_update(s.block("10.0.1.0/26", None)[0], None)  # block gone: still borrowed
    assert set(borrowed(model)) == {"10.0.1.5/32", "10.0.1.7/32"}
    # A block appears around an address that had none: affine to its node, not borrowed.
    graph.on_update(*s.block("10.0.1.0/26", "n2"))
    assert set(borrowed(model)) == {"10.0.1.7/32"}
    items = [VXLAN, *NODES, *BLOCKS, wl("b", "n3", "10.0.1.7"), wl("own", "n2", "10.0.1.5")]
    assert model.state() == fresh_state(ME, items)


def test_borrowed_route_goes_with_the_workload_or_its_address() -> None:
    model, graph = run(VXLAN, *NODES, *BLOCKS, wl("b", "n3", "10.0.1.7", "10.0.1.8"))
    assert set(borrowed(model)) == {"10.0.1.7/32", "10.0.1.8/32"}
    graph.on_update(*wl("b", "n3", "10.0.1.8", "10.0.2.9"))  # one address changed
    assert set(borrowed(model)) == {"10.0.1.8/32"}
    graph.on_update(*wl("b", "n2", "10.0.1.8", "10.0.2.9"))  # moved to n2
    assert borrowed(model) == {
        "10.0.2.9/32": ("remote-workload", "n2", "10.0.1.129", "vxlan", False)}
    graph.on_update(wl("b", "n2")[0], None)
    assert borrowed(model) == {}
    assert model.state() == fresh_state(ME, [VXLAN, *NODES, *BLOCKS])


def test_borrowed_route_waits_for_the_nodes_vtep() -> None:
    n3_no_mac = s.node("n3", "192.168.9.3/24", vxlan_ip="10.0.2.129")
    model, graph = run(VXLAN, NODES[0], NODES[1], n3_no_mac, *BLOCKS,
                       wl("b", "n3", "10.0.1.7"))
    assert borrowed(model) == {} and set(model.vteps) == {"n2"}
    graph.on_update(*NODES[2])  # the MAC arrives: VTEP first (the model is strict), then /32
    assert borrowed(model) == {
        "10.0.1.7/32": ("remote-workload", "n3", "10.0.2.129", "vxlan", False)}
    graph.on_update("/tabby/v3/nodes/n3", None)
    assert borrowed(model) == {} and set(model.vteps) == {"n2"}
    # Our own subnet changes what CrossSubnet means for every borrowed address.
    model, graph = run(s.pool("p", "10.0.0.0/16", vxlan="CrossSubnet"), *NODES, *BLOCKS,
                       wl("b", "n3", "10.0.1.7"))
    assert borrowed(model)["10.0.1.7/32"][3] == "vxlan"
    graph.on_update(*s.node("n1", "192.168.9.1/24", vxlan_ip="10.0.0.129", vxlan_mac=MAC1))
    assert borrowed(model)["10.0.1.7/32"][2:] == ("192.168.9.3", "none", True)
    graph.on_update("/tabby/v3/ippools/p", None)
    assert model.routes == {
        d: r for d, r in model.routes.items() if r.kind in ("local-host", "remote-host")}


def test_borrowed_route_never_hides_a_local_or_block_route() -> None:
    # A /32 block (blockSize 32) and a stale endpoint elsewhere with the same address.
    pool = s.pool("p", "10.0.0.0/16", vxlan="Always", block_size=32)
    model, graph = run(pool, *NODES, s.block("10.0.1.7/32", "n2"), wl("b", "n3", "10.0.1.7"),
                       s.workload("ns", "l", ME, ["10.0.4.4"], iface="calil"))
    assert model.routes["10.0.1.7/32"].kind == "remote-block"
    graph.on_update(s.block("10.0.1.7/32", None)[0], None)  # the block goes: the /32 shows
    assert borrowed(model) == {
        "10.0.1.7/32": ("remote-workload", "n3", "10.0.2.129", "vxlan", False)}
    graph.on_update(*wl("x", "n2", "10.0.4.4"))  # a remote claim on our local address
    assert model.routes["10.0.4.4/32"].kind == "local-workload"
    graph.on_update(s.workload("ns", "l", ME, [])[0], None)  # local one gone: remote shows
    assert model.routes["10.0.4.4/32"].dst_node == "n2"
    # Two remote endpoints with one address (a pod replaced): the newer one's node; when
    # it goes, the other's again.
    graph.on_update(*wl("b2", "n2", "10.0.1.7"))
    assert model.routes["10.0.1.7/32"].dst_node == "n2"
    graph.on_update(wl("b2", "n2")[0], None)
    assert model.routes["10.0.1.7/32"].dst_node == "n3"
    graph.on_update(wl("b", "n3")[0], None)
    assert "10.0.1.7/32" not in model.routes


def test_borrowed_routes_incremental_equals_fresh() -> None:
    """Random updates of workloads, blocks, nodes and the pool: after each one the
    dataplane state equals that of a new graph fed the same resources."""
    rng = random.Random(7)
    nodes = ["n1", "n2", "n3"]
    cidrs = ["10.0.0.0/26", "10.0.1.0/26", "10.0.2.0/26", "10.0.3.0/26", "10.0.4.0/27"]
    # Each workload has addresses of its own (one address, one endpoint: no claim order).
    addrs = {f"w{i}": [f"10.0.{i % 5}.{10 + i}", f"10.0.{(i + 2) % 6}.{40 + i}"]
             for i in range(12)}
    items: dict[str, Any] = {}

    def put(kv: tuple[str, Any]) -> None:
        items[kv[0]] = kv[1]
        graph.on_update(*kv)

    def drop(key: str) -> None:
        items.pop(key, None)
        graph.on_update(key, None)

    model, graph = run()
    for kv in (VXLAN, *NODES, *BLOCKS):
        put(kv)
    for step in range(400):
        op = rng.random()
        if op < 0.5:
            name = rng.choice(list(addrs))
            key, value = wl(name, rng.choice(nodes), *rng.sample(addrs[name], rng.randint(1, 2)))
            if rng.random() < 0.15:
                drop(key)
            else:
                put((key, value))
        elif op < 0.75:
            cidr = rng.choice(cidrs)
            kv = s.block(cidr, rng.choice([*nodes, None]))
            drop(kv[0]) if rng.random() < 0.2 else put(kv)
        elif op < 0.92:
            i = rng.randrange(3)
            name, subnet = nodes[i], rng.choice(["192.168.0", "192.168.9"])
            mac = rng.choice([None, [MAC1, MAC2, MAC3][i]])
            kv = s.node(name, f"{subnet}.{i + 1}/24", vxlan_ip=f"10.0.{i}.129", vxlan_mac=mac)
            drop(kv[0]) if rng.random() < 0.1 else put(kv)
        else:
            mode = rng.choice(["Always", "CrossSubnet", "Never"])
            put(rng.choice([s.pool("p", "10.0.0.0/16", vxlan=mode),
                            s.pool("p", "10.0.0.0/16", ipip=mode)]))
        assert model.state() == fresh_state(ME, items.items()), f"step {step}"


def test_dataplanes_take_the_borrowed_route_as_a_block_route() -> None:
    """The route dataplane programs a borrowed /32 as it would the block (VXLAN; Never
    only without BGP, else it is BIRD's); the IPIP dataplane puts it in its LPM map."""
    from tabby.dataplane.ipip.model import IpipState, lpm_entries
    from tabby.dataplane.routes import KernelRoute, RouteDataplane

    def kernel(pool: tuple[str, Any], bgp: bool) -> KernelRoute | None:
        model, _ = run(pool, *NODES, *BLOCKS, wl("b", "n3", "10.0.1.7"))
        dp = RouteDataplane(ME, underlay_if="eth0", underlay_ip="192.168.0.1",
                            program_unencapsulated=not bgp)
        for msg in (*model.pools.values(), *model.vteps.values(), *model.routes.values()):
            dp.on_update(msg)
        return dp._route_for(model.routes["10.0.1.7/32"], vxlan_up=True)[0]

    assert kernel(VXLAN, bgp=True) == KernelRoute(
        "10.0.1.7/32", gateway="10.0.2.129", ifname="vxlan.tabby", onlink=True)
    assert kernel(s.pool("p", "10.0.0.0/16"), bgp=True) is None  # BIRD announces it
    assert kernel(s.pool("p", "10.0.0.0/16"), bgp=False) == KernelRoute(
        "10.0.1.7/32", gateway="192.168.9.3")
    model, _ = run(s.pool("p", "10.0.0.0/16", ipip="Always"), *NODES, *BLOCKS,
                   wl("b", "n3", "10.0.1.7"))
    ipip = IpipState("192.168.0.1")
    for msg in (*model.pools.values(), *model.routes.values()):
        ipip.update(msg)
    lpm = lpm_entries(ipip.desired_routes(), "192.168.0.1")
    assert lpm["10.0.1.7/32"] == ("192.168.9.3", "192.168.0.1")
    assert lpm["10.0.1.0/26"] == ("192.168.0.2", "192.168.0.1")
