"""Mesh off, one route reflector (Calico's documented setup): routes still converge."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.bgp.testing import BgpLab
from tabby.lab.probe import probe_matrix

pytestmark = pytest.mark.root


@pytest.fixture
def lab(topology: Callable[..., Any], tmp_path: Path) -> Iterator[BgpLab]:
    bgp = BgpLab(topology(), tmp_path / "bgp")
    yield bgp
    bgp.close()


def test_route_reflector_converges(lab: BgpLab) -> None:
    topo = lab.topo
    lab.apply({"kind": "BGPConfiguration", "metadata": {"name": "default"},
               "spec": {"nodeToNodeMeshEnabled": False}})
    lab.add_pool("10.65.0.0/16")
    lab.add_node(topo.add_node("rr"), labels={"route-reflector": "true"},
                 routeReflectorClusterID="244.0.0.1")
    clients = ("c1", "c2", "c3")
    for name in clients:
        lab.add_node(topo.add_node(name))
    lab.apply({"kind": "BGPPeer", "metadata": {"name": "peer-with-route-reflectors"},
               "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}})
    ips = {}
    for name in ("rr", *clients):
        ips[name] = lab.assign_ip(name)
        topo.add_workload(name, f"w{name}", ips[name])
        lab.start(name)

    rr = lab.wait_established("rr", 3)
    assert sorted((p.address, p.peer_type) for p in rr.peers) == sorted(
        (topo.nodes[c].ip, "route reflector client") for c in clients)
    for name in clients:
        st = lab.wait_established(name, 1)
        # a client has exactly one session: to the reflector, no mesh
        assert [(p.address, p.peer_type) for p in st.peers] == [
            (topo.nodes["rr"].ip, "route reflector")]
    blocks = {name: next(c for c, v in lab.routes(name).items() if v == "blackhole")
              for name in ("rr", *clients)}
    for name in clients:
        for other in ("rr", *clients):
            if other != name:
                # reflected routes keep the originating node as next hop
                lab.wait_route(name, blocks[other], topo.nodes[other].ip)
    names = ["rr", *clients]
    grid = probe_matrix([(topo.workloads[f"w{a}"].netns, ips[b]) for a in names for b in names
                         if a != b], "icmp", None)
    assert all(grid.values()), {k: v for k, v in grid.items() if not v}
