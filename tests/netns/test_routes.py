"""The route dataplane in real namespaces, fed hand-made calc messages: VXLAN between
nodes (device, VTEPs, block routes) with real traffic, CrossSubnet, removal order,
stale-route clean-up after a restart, the grace period, deferred interfaces, IPIP."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tabby.calc import messages as m
from tabby.cni.constants import ROUTE_PROTO
from tabby.dataplane.routes import RouteDataplane
from tabby.dataplane.vxlan import DEVICE
from tabby.lab import netns
from tabby.lab.probe import ProbeServer, probe, probe_matrix
from tabby.lab.topology import Node, Topology, Workload

pytestmark = pytest.mark.root

POOL = "10.65.0.0/16"


def mac_of(i: int) -> str:
    return f"66:00:00:00:00:{i:02x}"


def tunnel_of(i: int) -> str:
    return f"10.65.{i}.0"


def block_of(i: int) -> str:
    return f"10.65.{i}.0/26"


def ip_json(ns: str, *args: str) -> Any:
    return json.loads(netns.run(ns, ["ip", "-j", *args]).stdout or "[]")


def tabby_routes(ns: str) -> dict[str, dict[str, Any]]:
    out = {}
    for r in ip_json(ns, "route", "show", "proto", str(ROUTE_PROTO)):
        out[r["dst"] if "/" in r["dst"] else r["dst"] + "/32"] = r
    return out


def drop_topology_route(topo: Topology, wl: Workload) -> None:
    """The topology wires workloads with a plain route; the driver should own it."""
    netns.run(topo.netns_of(wl.node), ["ip", "route", "del", f"{wl.ip}/32", "dev", wl.host_if])


class Cluster:
    """Nodes i = 1..n with block 10.65.i.0/26, tunnel 10.65.i.0, one workload .1 each."""

    def __init__(self, topo: Topology, n: int, mode: str = "Always") -> None:
        self.topo = topo
        self.mode = mode
        self.nodes: dict[int, Node] = {i: topo.add_node(f"n{i}") for i in range(1, n + 1)}
        self.wls: dict[int, Workload] = {}
        for i, node in self.nodes.items():
            wl = topo.add_workload(node, f"w{i}", f"10.65.{i}.1")
            drop_topology_route(topo, wl)
            self.wls[i] = wl
        self.dps = {i: self.driver(i) for i in self.nodes}

    def driver(self, i: int, **kw: Any) -> RouteDataplane:
        node = self.nodes[i]
        dp = RouteDataplane(f"n{i}", underlay_if=node.underlay_if, underlay_ip=node.ip,
                            underlay_mtu=1500, netns=node.netns, **kw)
        return dp

    def messages(self, i: int) -> list[Any]:
        me = self.nodes[i]
        msgs: list[Any] = [m.IPPoolUpdate(POOL, vxlan_mode=self.mode)]
        for j, node in self.nodes.items():
            msgs.append(m.VTEPUpdate(f"n{j}", tunnel_of(j), mac_of(j), node.ip))
        msgs.append(m.RouteUpdate(block_of(i), "local-block"))
        msgs.append(m.RouteUpdate(f"{self.wls[i].ip}/32", "local-workload",
                                  ifname=self.wls[i].host_if))
        for j, node in self.nodes.items():
            if j == i:
                continue
            same = node.subnet == me.subnet
            if self.mode == "CrossSubnet" and same:
                msgs.append(m.RouteUpdate(block_of(j), "remote-block", dst_node=f"n{j}",
                                          dst_node_ip=node.ip, next_hop=node.ip,
                                          same_subnet=True))
            else:
                msgs.append(m.RouteUpdate(block_of(j), "remote-block", dst_node=f"n{j}",
                                          dst_node_ip=node.ip, next_hop=tunnel_of(j),
                                          encap="vxlan", same_subnet=same))
        return msgs

    def program(self) -> None:
        for i, dp in self.dps.items():
            for msg in self.messages(i):
                dp.on_update(msg)
            dp.on_update(m.InSync())
            res = dp.apply()
            assert res.problems == {}, res.problems

    def close(self) -> None:
        for dp in self.dps.values():
            dp.close()


@pytest.fixture
def cluster(topology: Callable[..., Topology]) -> Any:
    made: list[Cluster] = []

    def make(n: int = 2, mode: str = "Always", subnets: int = 1) -> Cluster:
        c = Cluster(topology(subnets=subnets), n, mode)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def vxlan_tx(ns: str) -> int:
    (link,) = ip_json(ns, "-s", "link", "show", DEVICE)
    return int(link["stats64"]["tx"]["packets"])


def test_vxlan_two_nodes_traffic_and_removal(cluster: Callable[..., Cluster]) -> None:
    c = cluster(2)
    c.program()
    n1 = c.nodes[1]
    # The device, as Calico makes it.
    (dev,) = ip_json(n1.netns, "-d", "addr", "show", DEVICE)
    info = dev["linkinfo"]["info_data"]
    assert info["id"] == 4096 and info["port"] == 4789 and info["local"] == n1.ip
    assert info["learning"] is False and info["link"] == n1.underlay_if
    assert dev["mtu"] == 1450 and dev["address"] == mac_of(1)
    v4 = [(a["local"], a["prefixlen"]) for a in dev["addr_info"] if a["family"] == "inet"]
    assert v4 == [(tunnel_of(1), 32)]
    # VTEP of n2: neighbour and FDB; its block via its tunnel IP, onlink.
    neigh = ip_json(n1.netns, "neigh", "show", "dev", DEVICE)
    assert [(x["dst"], x["lladdr"], x["state"]) for x in neigh] == [
        (tunnel_of(2), mac_of(2), ["PERMANENT"])]
    fdb = json.loads(netns.run(n1.netns, ["bridge", "-j", "fdb", "show", "dev", DEVICE]).stdout)
    assert [(x["mac"], x.get("dst")) for x in fdb if x.get("dst")] == [(mac_of(2), c.nodes[2].ip)]
    routes = tabby_routes(n1.netns)
    assert routes[block_of(2)]["gateway"] == tunnel_of(2)
    assert routes[block_of(2)]["dev"] == DEVICE and "onlink" in routes[block_of(2)]["flags"]
    assert routes[block_of(1)]["type"] == "blackhole"
    assert routes[f"{c.wls[1].ip}/32"]["dev"] == c.wls[1].host_if
    assert routes[f"{c.wls[1].ip}/32"]["scope"] == "link"
    assert netns.get_sysctl(n1.netns, "net.ipv4.ip_forward") == "1"

    # Real traffic crosses: TCP, UDP, ICMP. Nothing else routes 10.65/16 between nodes.
    before = vxlan_tx(n1.netns)
    with ProbeServer.start(c.wls[2], tcp=[8080], udp=[8080], topology=c.topo):
        for proto in ("tcp", "udp", "icmp"):
            assert probe(c.wls[1], c.wls[2].ip, proto, 8080), proto
    assert vxlan_tx(n1.netns) > before
    # A second apply with nothing new writes nothing.
    assert c.dps[1].apply().changes == []

    # Remove n2: route first, then its VTEP; the device stays (the pool still wants it).
    c.dps[1].on_update(m.RouteRemove(block_of(2)))
    c.dps[1].on_update(m.VTEPRemove("n2"))
    res = c.dps[1].apply()
    assert res.changes == [f"route del {block_of(2)} via {tunnel_of(2)} dev {DEVICE} onlink",
                           f"neigh del {tunnel_of(2)}", f"fdb del {mac_of(2)}"]
    assert block_of(2) not in tabby_routes(n1.netns)
    assert ip_json(n1.netns, "neigh", "show", "dev", DEVICE) == []
    assert not probe(c.wls[1], c.wls[2].ip, "icmp", timeout=0.5)
    # No VXLAN pool any more: the device goes, and the local block's blackhole with it.
    c.dps[1].on_update(m.IPPoolRemove(POOL))
    c.dps[1].apply()
    assert ip_json(n1.netns, "link", "show") and not [
        x for x in ip_json(n1.netns, "link", "show") if x["ifname"] == DEVICE]
    assert list(tabby_routes(n1.netns)) == [f"{c.wls[1].ip}/32"]


def test_cross_subnet_picks_per_peer(cluster: Callable[..., Cluster]) -> None:
    # n1, n3 on subnet 0; n2 on subnet 1 (behind the router).
    c = cluster(3, mode="CrossSubnet", subnets=2)
    assert c.nodes[1].subnet == c.nodes[3].subnet != c.nodes[2].subnet
    c.program()
    routes = tabby_routes(c.nodes[1].netns)
    assert routes[block_of(3)]["gateway"] == c.nodes[3].ip  # same subnet: direct
    assert routes[block_of(3)].get("dev") == c.nodes[1].underlay_if
    assert routes[block_of(2)]["gateway"] == tunnel_of(2)  # across the router: VXLAN
    assert routes[block_of(2)]["dev"] == DEVICE
    pairs = [(c.wls[a], c.wls[b].ip) for a in c.wls for b in c.wls if a != b]
    got = probe_matrix(pairs, "icmp")
    assert all(got.values()), got


def test_restart_removes_stale_routes_only_after_in_sync(cluster: Callable[..., Cluster]) -> None:
    c = cluster(2)
    c.program()
    n1 = c.nodes[1].netns
    # Leftovers of an earlier run (a block route of a node that has gone) and a route
    # that is not Tabby's.
    netns.run(n1, ["ip", "route", "add", "10.65.9.0/26", "via", "10.65.9.0", "dev", DEVICE,
                   "onlink", "proto", str(ROUTE_PROTO)])
    netns.run(n1, ["ip", "route", "add", "192.0.2.0/24", "via", c.nodes[2].ip])
    c.dps[1].close()
    fresh = c.driver(1)
    c.dps[1] = fresh
    for msg in c.messages(1):
        fresh.on_update(msg)
    assert fresh.apply().mode == "waiting"  # before InSync: not a single write
    assert "10.65.9.0/26" in tabby_routes(n1)
    fresh.on_update(m.InSync())
    res = fresh.apply()
    assert res.mode == "full" and res.changes == [
        f"route del 10.65.9.0/26 via 10.65.9.0 dev {DEVICE} onlink"]
    routes = netns.run(n1, ["ip", "route"]).stdout
    assert "10.65.9.0/26" not in routes and "192.0.2.0/24" in routes
    assert probe(c.wls[1], c.wls[2].ip, "icmp")


def test_workload_route_grace_and_deferred_interface(cluster: Callable[..., Cluster]) -> None:
    c = cluster(1)
    now = [1000.0]
    dp = c.driver(1, clock=lambda: now[0], grace=10.0)
    c.dps[1].close()
    c.dps[1] = dp
    for msg in c.messages(1):
        dp.on_update(msg)
    # An endpoint whose interface does not exist yet: deferred, not an error.
    dp.on_update(m.RouteUpdate("10.65.1.7/32", "local-workload", ifname="cali0000000007"))
    dp.on_update(m.InSync())
    res = dp.apply()
    assert res.deferred == ["10.65.1.7/32"]
    assert "waiting for interface" in res.problems["route 10.65.1.7/32"]
    wake = dp.wake_at()
    assert wake is not None and wake <= now[0] + 1.0
    ns = c.nodes[1].netns
    netns.run(ns, ["ip", "link", "add", "cali0000000007", "type", "veth", "peer", "name", "x7"])
    netns.run(ns, ["ip", "link", "set", "cali0000000007", "up"])
    res = dp.apply()
    assert res.deferred == [] and "10.65.1.7/32" in tabby_routes(ns)
    assert netns.get_sysctl(ns, "net.ipv4.conf.cali0000000007.proxy_arp") == "1"

    # The CNI plugin's route for a workload whose endpoint is not written yet survives
    # the grace period; a route for a workload that is gone is removed after it.
    netns.run(ns, ["ip", "link", "add", "cali0000000008", "type", "veth", "peer", "name", "x8"])
    netns.run(ns, ["ip", "link", "set", "cali0000000008", "up"])
    netns.run(ns, ["ip", "route", "add", "10.65.1.8/32", "dev", "cali0000000008", "scope",
                   "link", "proto", str(ROUTE_PROTO)])
    dp.apply(full=True)
    assert "10.65.1.8/32" in tabby_routes(ns)
    now[0] += 5
    dp.apply()
    assert "10.65.1.8/32" in tabby_routes(ns)
    now[0] += 6
    dp.apply()
    assert "10.65.1.8/32" not in tabby_routes(ns)
    # ... unless its endpoint arrives in time.
    dp.on_update(m.RouteRemove("10.65.1.7/32"))
    dp.apply()
    assert "10.65.1.7/32" in tabby_routes(ns)  # grace period runs
    dp.on_update(m.RouteUpdate("10.65.1.7/32", "local-workload", ifname="cali0000000007"))
    now[0] += 20
    dp.apply()
    assert "10.65.1.7/32" in tabby_routes(ns)


def test_ipv6_forwarding_once_an_ipv6_pool_exists(cluster: Callable[..., Cluster]) -> None:
    c = cluster(1)
    ns = c.nodes[1].netns
    netns.run(ns, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])
    c.program()  # an IPv4 pool only: IPv6 forwarding (and RA handling) left as it was
    assert netns.get_sysctl(ns, "net.ipv6.conf.all.forwarding") == "0"
    c.dps[1].on_update(m.IPPoolUpdate("fd65::/112"))
    c.dps[1].apply()
    assert netns.get_sysctl(ns, "net.ipv6.conf.all.forwarding") == "1"


def test_ipip_is_a_problem_not_a_traceback(cluster: Callable[..., Cluster]) -> None:
    c = cluster(1)
    dp = c.dps[1]
    dp.on_update(m.IPPoolUpdate("10.70.0.0/16", ipip_mode="Always"))
    dp.on_update(m.RouteUpdate("10.70.5.0/26", "remote-block", dst_node="n5",
                               dst_node_ip="172.31.0.99", next_hop="172.31.0.99", encap="ipip"))
    dp.on_update(m.InSync())
    res = dp.apply()
    assert "ipip" in res.problems["route 10.70.5.0/26"].lower()
    assert "10.70.5.0/26" not in tabby_routes(c.nodes[1].netns)


def test_foreign_route_is_left_alone(cluster: Callable[..., Cluster]) -> None:
    c = cluster(2)
    ns = c.nodes[1].netns
    netns.run(ns, ["ip", "route", "add", block_of(2), "via", c.nodes[2].ip, "proto", "bird"])
    for msg in c.messages(1):
        c.dps[1].on_update(msg)
    c.dps[1].on_update(m.InSync())
    res = c.dps[1].apply()
    assert "another route" in res.problems[f"route {block_of(2)}"]
    out = netns.run(ns, ["ip", "route", "show", block_of(2)]).stdout
    assert "proto bird" in out


def test_ipip_route_on_our_destination_is_a_handover(cluster: Callable[..., Cluster]) -> None:
    """A proto-81 route (the IPIP driver's) where we want a plain one: the pool left
    IP-in-IP and the IPIP driver has not removed its route yet. Retried at the next apply
    (deferred), not parked as a conflict until the periodic refresh."""
    c = cluster(2, mode="CrossSubnet")
    ns, peer = c.nodes[1].netns, c.nodes[2].ip
    netns.run(ns, ["ip", "route", "add", block_of(2), "via", peer, "proto", "81"])
    now = [1000.0]
    dp = c.driver(1, yield_protos=(81,), clock=lambda: now[0])
    for msg in c.messages(1):
        dp.on_update(msg)
    dp.on_update(m.InSync())
    res = dp.apply()
    assert "proto 81" in res.problems[f"route {block_of(2)}"]
    assert block_of(2) in res.deferred and block_of(2) not in tabby_routes(ns)
    wake = dp.wake_at()
    assert wake is not None and wake <= now[0] + 1.0
    netns.run(ns, ["ip", "route", "del", block_of(2), "proto", "81"])  # the IPIP driver's turn
    now[0] = wake
    res = dp.apply()
    assert res.problems == {} and res.deferred == []
    assert tabby_routes(ns)[block_of(2)]["gateway"] == peer
    # Without yield_protos (someone else's protocol), the same route is a lasting conflict.
    netns.run(ns, ["ip", "route", "replace", block_of(2), "via", peer, "proto", "81"])
    other = c.driver(1)
    for msg in c.messages(1):
        other.on_update(msg)
    other.on_update(m.InSync())
    assert "another route (proto 81)" in other.apply().problems[f"route {block_of(2)}"]
    other.close()
    dp.close()
