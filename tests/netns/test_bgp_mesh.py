"""BGP node-to-node mesh through real BIRD in node namespaces, configured from the datastore.

Each node runs `python -m tabby.bgp.run` (the BgpController fed by a datastore watch) inside
its namespace. No static routes are installed: workloads reach each other only over the
routes BIRD learned.
"""

from __future__ import annotations

import json

import pytest

from tabby.bgp.testing import BgpLab, borrow_ip, wait_for
from tabby.lab.probe import probe_matrix

pytestmark = pytest.mark.root
NODES = ("n1", "n2", "n3")


def test_mesh_routes_workload_traffic(bgp_lab: BgpLab) -> None:
    topo = bgp_lab.topo
    bgp_lab.add_pool("10.65.0.0/16")
    for name in NODES:
        bgp_lab.add_node(topo.add_node(name))
    ips = {}
    for i, name in enumerate(NODES, start=1):
        ips[name] = bgp_lab.assign_ip(name)  # claims a real /26 block for the node
        topo.add_workload(name, f"w{i}", ips[name])
    # n3 borrows an address from n1's block: n3 must announce it as a /32
    borrowed = borrow_ip(bgp_lab, "n3", ips["n1"])
    topo.add_workload("n3", "wb", borrowed)
    for name in NODES:
        bgp_lab.start(name)

    statuses = {name: bgp_lab.wait_established(name, 2) for name in NODES}
    for name, st in statuses.items():
        assert {p.peer_type for p in st.peers} == {"node-to-node mesh"}
        assert st.router_id == topo.nodes[name].ip
    blocks = {name: next(c for c, v in bgp_lab.routes(name).items() if v == "blackhole")
              for name in NODES}
    for name in NODES:
        for other in NODES:
            if other != name:
                bgp_lab.wait_route(name, blocks[other], topo.nodes[other].ip)
        bgp_lab.wait_route(name if name != "n3" else "n2", f"{borrowed}/32", topo.nodes["n3"].ip)
        routes = bgp_lab.routes(name)
        # our own block is a blackhole; nothing else of ours is routed by BIRD
        assert routes[blocks[name]] == "blackhole"
    # Besides BIRD's, a node has only its underlay routes and its own workloads' /32s.
    for name in NODES:
        node = topo.nodes[name]
        for route in json.loads(topo.run(name, ["ip", "-4", "-j", "route"]).stdout):
            if route.get("protocol") == "bird":
                continue
            assert (route["dst"] in ("default", node.cidr)
                    or route.get("dev", "").startswith("cali")), route
    workloads = ["w1", "w2", "w3", "wb"]
    wl_ip = {"w1": ips["n1"], "w2": ips["n2"], "w3": ips["n3"], "wb": borrowed}
    grid = probe_matrix([(topo.workloads[a].netns, wl_ip[b]) for a in workloads
                         for b in workloads if a != b], "icmp", None)
    assert all(grid.values()), {k: v for k, v in grid.items() if not v}


def test_invalid_peer_is_reported_and_sessions_stay(bgp_lab: BgpLab) -> None:
    topo = bgp_lab.topo
    bgp_lab.add_pool("10.65.0.0/16")
    for name in ("n1", "n2"):
        bgp_lab.add_node(topo.add_node(name))
        bgp_lab.start(name)
    before = bgp_lab.wait_established("n1", 1).peers[0]
    # stored without validation, as a buggy writer could
    bgp_lab.put_raw("/tabby/v3/bgppeers/broken", {
        "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
        "metadata": {"name": "broken"}, "spec": {"peerIP": "10.1.1.300", "asNumber": 65000}})
    bgp_lab.apply({"kind": "BGPPeer", "metadata": {"name": "nobody"},
                   "spec": {"peerSelector": "role == 'missing'"}})

    def issues() -> list[dict[str, str]] | None:
        st = bgp_lab.status("n1")
        found = [i for i in st.issues if i["source"] in ('BGPPeer "broken"', 'BGPPeer "nobody"')]
        return found if len(found) == 2 else None

    found = wait_for(issues, 10, 0.05, "issues in status")
    assert found[0]["message"].startswith("ignored: spec.peerIP: invalid peerIP")
    assert "selects no node" in found[1]["message"]
    st = bgp_lab.status("n1")
    assert st.running and not st.controller.get("last_error")
    after = st.peer(before.name)
    assert after is not None and after.established and after.since == before.since
    conf = (bgp_lab.run_dir("n1") / "bird.conf").read_text()
    assert "10.1.1.300" in conf.split("log stderr")[0]  # only in the issue comments


def test_dual_stack_mesh(bgp_lab: BgpLab) -> None:
    """IPv4 and IPv6 sessions side by side (separate channels): v6 blocks reach the kernel."""
    topo = bgp_lab.topo
    bgp_lab.add_pool("10.65.0.0/16")
    bgp_lab.add_pool("fd10:65::/48", name="pool6")
    v6 = {}
    for i, name in enumerate(("n1", "n2"), start=1):
        node = topo.add_node(name)
        v6[name] = f"fd00:31::{i}"
        topo.run(name, ["ip", "-6", "addr", "add", f"{v6[name]}/64", "dev", node.underlay_if,
                        "nodad"])
        bgp_lab.add_node(node, ipv6Address=f"{v6[name]}/64")
        bgp_lab.assign_ip(name, version=6)
        bgp_lab.assign_ip(name)
        bgp_lab.start(name)
    st = bgp_lab.wait_established("n1", 2)
    assert sorted(p.name for p in st.peers) == ["Mesh_172_31_0_11", "Mesh_fd00_31__2"]
    [block6] = [b for b in bgp_lab.blocks_of("n2") if ":" in b]
    wait_for(lambda: bgp_lab.routes("n1", version=6).get(block6) == v6["n2"], 10, 0.05,
             f"{block6} via {v6['n2']} on n1")
    [block4] = [b for b in bgp_lab.blocks_of("n2") if ":" not in b]
    bgp_lab.wait_route("n1", block4, topo.nodes["n2"].ip)
