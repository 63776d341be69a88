"""Mesh off, one route reflector (Calico's documented setup): routes still converge."""

from __future__ import annotations

import pytest

from tabby.bgp.testing import BgpLab
from tabby.lab.probe import probe_matrix

pytestmark = pytest.mark.root


def test_route_reflector_converges(bgp_lab: BgpLab) -> None:
    topo = bgp_lab.topo
    bgp_lab.apply({"kind": "BGPConfiguration", "metadata": {"name": "default"},
                   "spec": {"nodeToNodeMeshEnabled": False}})
    bgp_lab.add_pool("10.65.0.0/16")
    bgp_lab.add_node(topo.add_node("rr"), labels={"route-reflector": "true"},
                     routeReflectorClusterID="244.0.0.1")
    clients = ("c1", "c2", "c3")
    for name in clients:
        bgp_lab.add_node(topo.add_node(name))
    bgp_lab.apply({"kind": "BGPPeer", "metadata": {"name": "peer-with-route-reflectors"},
                   "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}})
    ips = {}
    for name in ("rr", *clients):
        ips[name] = bgp_lab.assign_ip(name)
        topo.add_workload(name, f"w{name}", ips[name])
        bgp_lab.start(name)

    rr = bgp_lab.wait_established("rr", 3)
    assert sorted((p.address, p.peer_type) for p in rr.peers) == sorted(
        (topo.nodes[c].ip, "route reflector client") for c in clients)
    for name in clients:
        st = bgp_lab.wait_established(name, 1)
        # a client has exactly one session: to the reflector, no mesh
        assert [(p.address, p.peer_type) for p in st.peers] == [
            (topo.nodes["rr"].ip, "route reflector")]
    blocks = {name: next(c for c, v in bgp_lab.routes(name).items() if v == "blackhole")
              for name in ("rr", *clients)}
    for name in clients:
        for other in ("rr", *clients):
            if other != name:
                # reflected routes keep the originating node as next hop
                bgp_lab.wait_route(name, blocks[other], topo.nodes[other].ip)
    names = ["rr", *clients]
    grid = probe_matrix([(topo.workloads[f"w{a}"].netns, ips[b]) for a in names for b in names
                         if a != b], "icmp", None)
    assert all(grid.values()), {k: v for k, v in grid.items() if not v}
