"""`tabby node run` with IP-in-IP pools (the BPF implementation), as real processes in node
namespaces: a node with no workloads reaches workloads of other nodes (every Node is an
allowed sender, not only nodes that own blocks), and a pool switching Always ->
CrossSubnet -> Never -> Always converges at each step - traffic flows, each destination
has exactly one route of the right driver (IPIP proto 81 / routes proto 80), and nothing of
IP-in-IP (programs, maps, routes) is left while no pool wants it; a restart without an IPIP
dataplane removes the previous run's routes and filters, and nothing else."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_agent_support import AgentLab, converge, wait_for

from tabby.bgp import birdctl
from tabby.bgp.status import collect_status
from tabby.cni.constants import ROUTE_PROTO
from tabby.dataplane.ipip import IPIP_ROUTE_PROTO, read_counters
from tabby.dataplane.ipip.libbpf import BpfError, map_fd_by_id
from tabby.lab import netns as nsops
from tabby.lab.probe import ProbeServer, probe

pytestmark = pytest.mark.root
IPIP_POOL = {"vxlanMode": "Never", "ipipMode": "Always"}


def routes_to(lab: AgentLab, node: str, ip: str) -> list[dict[str, Any]]:
    """Every route on `node` that covers `ip`, except the default route."""
    out = nsops.run(lab.nodes[node].netns, ["ip", "-j", "route", "show", "match", ip]).stdout
    return [r for r in json.loads(out) if r["dst"] != "default"]


def block_route(lab: AgentLab, node: str, ip: str) -> list[tuple[str, str | None, str]]:
    """(protocol, gateway, dev) of the routes on `node` for the block holding `ip`."""
    return [(str(r.get("protocol")), r.get("gateway"), r["dev"]) for r in routes_to(lab, node, ip)
            if r["dst"].endswith("/26")]


def our_filters(lab: AgentLab, node: str) -> list[str]:
    n = lab.nodes[node]
    out = []
    for direction in ("ingress", "egress"):
        text = nsops.run(n.netns, ["tc", "filter", "show", "dev", n.underlay_if,
                                   direction]).stdout
        out += [line for line in text.splitlines() if "tabby-ipip" in line]
    return out


def ipip_status(lab: AgentLab, node: str) -> dict[str, Any]:
    return lab.status(node)["dataplanes"]["ipip"]


def map_exists(map_id: int) -> bool:
    try:
        os.close(map_fd_by_id(map_id))
    except BpfError:
        return False
    return True


def test_node_without_workloads_reaches_workloads_over_ipip(
        topology: Callable[..., Any], tmp_path: Path, bpf_object: Path) -> None:
    lab = AgentLab.make(topology(), tmp_path, nodes=3, pool=IPIP_POOL)
    for n in lab.nodes:
        lab.start_agent(n, "--ipip", "bpf")
    lab.wait_ready()
    # Only n1 has a workload (and so a block); n2 and n3 own nothing.
    pod = lab.add_pod("n1", "web")
    ProbeServer.start(pod.netns, tcp=[8080], udp=[8080], topology=lab.topo)
    converge(lab)
    n1 = lab.nodes["n1"]
    assert ipip_status(lab, "n1")["implementation"] == "bpf"
    node = lab.get("Node", "n1")
    assert node.metadata.annotations["tabby.dev/ipip-implementation"] == "bpf"
    for other in ("n2", "n3"):
        # Their route to n1's block is IP-in-IP...
        assert block_route(lab, other, pod.ip) == [(str(IPIP_ROUTE_PROTO), n1.ip,
                                                    lab.nodes[other].underlay_if)]
        # ...and n1 accepts their tunnelled packets although they own no block.
        before = read_counters(n1.netns, n1.underlay_if)
        assert wait_for(f"{other} -> {pod.name}",
                        lambda o=other: probe(lab.nodes[o].netns, pod.ip, "tcp", 8080))
        assert probe(lab.nodes[other].netns, pod.ip, "udp", 8080)
        after = read_counters(n1.netns, n1.underlay_if)
        assert after["decap_packets"] > before["decap_packets"]
        assert after["drop_unknown_source"] == before["drop_unknown_source"]
    assert ipip_status(lab, "n1")["stats"]["nodes"] == 2  # n2 and n3 may send


def test_pool_mode_changes_converge(topology: Callable[..., Any], tmp_path: Path,
                                    bpf_object: Path) -> None:
    lab = AgentLab.make(topology(), tmp_path, nodes=2, pool=IPIP_POOL)
    for n in lab.nodes:
        lab.start_agent(n, "--ipip", "bpf")  # --no-bgp: the agent routes Never pools too
    lab.wait_ready()
    a, b = lab.add_pod("n1", "a"), lab.add_pod("n2", "b")
    for p in (a, b):
        ProbeServer.start(p.netns, tcp=[8080], udp=[], topology=lab.topo)
    n1, n2 = lab.nodes["n1"], lab.nodes["n2"]
    maps: list[int] = []

    def set_mode(mode: str) -> None:
        lab.apply({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                   "metadata": {"name": "default-ipv4-ippool"},
                   "spec": {"cidr": "10.65.0.0/16", "vxlanMode": "Never", "ipipMode": mode}})
        converge(lab)

    def check(mode: str) -> None:
        encap = mode == "Always"  # both nodes are on one subnet: CrossSubnet is direct
        for node, peer, other in (("n1", b, n2), ("n2", a, n1)):
            want_proto = IPIP_ROUTE_PROTO if encap else ROUTE_PROTO
            dev = lab.nodes[node].underlay_if
            # Exactly one route for the peer's block, from the driver the mode says.
            assert block_route(lab, node, peer.ip) == [(str(want_proto), other.ip, dev)], mode
            st = lab.status(node)["dataplanes"]
            assert st["routes"]["problems"] == {} and st["ipip"]["problems"] == {}, mode
            ipip = st["ipip"]["stats"]
            assert ipip["active"] is (mode != "Never"), mode
            filters = our_filters(lab, node)
            assert len(filters) == (2 if mode != "Never" else 0), (mode, filters)
            if mode != "Never":
                maps.extend(ipip["map_ids"].values())
        assert wait_for(f"{mode}: a -> b", lambda: probe(a.netns, b.ip, "tcp", 8080))
        assert wait_for(f"{mode}: b -> a", lambda: probe(b.netns, a.ip, "tcp", 8080))

    converge(lab)
    check("Always")
    for mode in ("CrossSubnet", "Never"):
        set_mode(mode)
        check(mode)
    # Never: no maps of ours are left anywhere (programs detached, our handles closed).
    assert wait_for("IP-in-IP maps freed", lambda: not any(map_exists(m) for m in maps))
    proto81 = [nsops.run(n.netns, ["ip", "route", "show", "proto", str(IPIP_ROUTE_PROTO)]).stdout
               for n in (n1, n2)]
    assert proto81 == ["", ""]
    set_mode("Always")
    check("Always")
    # And straight from Always to Never, the other handover direction without a stop.
    set_mode("Never")
    check("Never")


@pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD 2 not installed (bird2)")
def test_bird_leaves_ipip_routes_to_the_agent(topology: Callable[..., Any], tmp_path: Path,
                                              bpf_object: Path) -> None:
    """With BGP on, BIRD learns the other node's block but does not install it: the agent's
    BPF path owns IP-in-IP routes (no tunl0 here, so BIRD's `via tunl0` could not work)."""
    lab = AgentLab.make(topology(), tmp_path, nodes=2, pool=IPIP_POOL)
    socks = {}
    for n in lab.nodes:
        run_dir = tmp_path / f"bird-{n}"
        socks[n] = run_dir / "bird.ctl"
        lab.start_agent(n, "--ipip", "bpf", "--bgp", "--run-dir", str(run_dir))
    lab.wait_ready()
    a, b = lab.add_pod("n1", "a"), lab.add_pod("n2", "b")
    ProbeServer.start(b.netns, tcp=[8080], udp=[], topology=lab.topo)
    converge(lab)

    def bird_knows_b() -> bool:
        st = collect_status(socks["n1"])
        if not (st.peers and all(p.established for p in st.peers)):
            return False
        replies = birdctl.command(socks["n1"], f"show route for {b.ip}")
        return "10.65." in birdctl.text(replies) and "unreachable" not in birdctl.text(replies)

    wait_for("n1's BIRD learned n2's block", bird_knows_b)
    n1, n2 = lab.nodes["n1"], lab.nodes["n2"]
    # One route for n2's block on n1: the agent's IP-in-IP route, not BIRD's (proto bird).
    assert block_route(lab, "n1", b.ip) == [(str(IPIP_ROUTE_PROTO), n2.ip, n1.underlay_if)]
    assert wait_for("a -> b", lambda: probe(a.netns, b.ip, "tcp", 8080))
    conf = (tmp_path / "bird-n1" / "bird.conf").read_text()
    assert "IPIP Always, the agent programs it (bpf)" in conf and "tunl0" not in conf
    log = (tmp_path / "bird-n1" / "bird.log").read_text()
    assert "Invalid" not in log, log
    # SIGTERM: the agent detaches from BIRD, which keeps routing; the next agent adopts it.
    pid = (tmp_path / "bird-n1" / "bird.pid").read_text().strip()
    lab.stop_agent("n1")
    assert collect_status(socks["n1"]).running
    lab.start_agent("n1", "--ipip", "bpf", "--bgp", "--run-dir", str(tmp_path / "bird-n1"))
    lab.wait_ready(["n1"])
    status_file = tmp_path / "bird-n1" / "bgp-status.json"
    # (The old agent's last status said bird_starts 1; the new one adopted, started none.)
    wait_for("the new agent's BGP status", lambda: json.loads(status_file.read_text())
             .get("bird_starts") == 0)
    assert str(json.loads(status_file.read_text())["bird_pid"]) == pid


def foreign_state(lab: AgentLab, node: str) -> dict[str, list[str]]:
    """What is on `node` besides the IP-in-IP state: every route that is not ours (all
    tables) and every tc filter and qdisc that is not a tabby-ipip one."""
    n = lab.nodes[node]
    routes = nsops.run(n.netns, ["ip", "route", "show", "table", "all"]).stdout.splitlines()
    tc = [nsops.run(n.netns, ["tc", "filter", "show", "dev", n.underlay_if, d]).stdout
          for d in ("ingress", "egress")]
    qdiscs = nsops.run(n.netns, ["tc", "qdisc", "show", "dev", n.underlay_if]).stdout
    ours = f"proto {IPIP_ROUTE_PROTO} "
    return {"routes": sorted(r for r in routes if ours not in r + " " or "table" in r),
            "filters": sorted(line for text in tc for line in text.splitlines()
                              if "tabby-ipip" not in line and "pref 1963 " not in line),
            "qdiscs": sorted(qdiscs.splitlines())}


def test_restart_without_ipip_removes_the_previous_runs_state(
        topology: Callable[..., Any], tmp_path: Path, bpf_object: Path) -> None:
    """A run with BPF IP-in-IP, SIGTERM, then a run without an IPIP dataplane: once ready,
    no proto-81 route (main table) and no tabby-ipip filter is left on the node, and nothing
    else is gone. First with `--ipip off` on an Always pool (the block stays unrouted: a
    problem, not a stale route), then with the pool switched to Never while the agent was
    down (the block's plain route replaces the IP-in-IP one and traffic flows)."""
    lab = AgentLab.make(topology(), tmp_path, nodes=2, pool=IPIP_POOL)
    for n in lab.nodes:
        lab.start_agent(n, "--ipip", "bpf")
    lab.wait_ready()
    a, b = lab.add_pod("n1", "a"), lab.add_pod("n2", "b")
    ProbeServer.start(b.netns, tcp=[8080], udp=[], topology=lab.topo)
    n1, n2 = lab.nodes["n1"], lab.nodes["n2"]

    def run_with_ipip() -> None:
        lab.start_agent("n1", "--ipip", "bpf")
        converge(lab)
        before = read_counters(n1.netns, n1.underlay_if)["encap_packets"]
        assert wait_for("a -> b over IP-in-IP", lambda: probe(a.netns, b.ip, "tcp", 8080))
        assert read_counters(n1.netns, n1.underlay_if)["encap_packets"] > before
        assert block_route(lab, "n1", b.ip) == [(str(IPIP_ROUTE_PROTO), n2.ip, n1.underlay_if)]
        assert len(our_filters(lab, "n1")) == 2
        lab.stop_agent("n1")
        # SIGTERM leaves the dataplane as programmed.
        assert block_route(lab, "n1", b.ip) == [(str(IPIP_ROUTE_PROTO), n2.ip, n1.underlay_if)]
        assert len(our_filters(lab, "n1")) == 2

    def proto81() -> str:
        return nsops.run(n1.netns, ["ip", "route", "show", "proto", str(IPIP_ROUTE_PROTO)]).stdout

    converge(lab)
    lab.stop_agent("n1")
    run_with_ipip()
    # Someone else's state that looks a little like ours: a proto-81 route outside the main
    # table, a route with another protocol, tc filters of another kind around our priority.
    for argv in (
        ["ip", "route", "add", "198.51.100.0/24", "via", n2.ip, "dev", n1.underlay_if,
         "proto", str(IPIP_ROUTE_PROTO), "table", "100"],
        ["ip", "route", "add", "198.51.101.0/24", "via", n2.ip, "dev", n1.underlay_if,
         "proto", "99"],
        ["tc", "filter", "add", "dev", n1.underlay_if, "ingress", "pref", "2000", "protocol",
         "ip", "u32", "match", "u32", "0", "0", "classid", "1:1"],
        ["tc", "filter", "add", "dev", n1.underlay_if, "egress", "pref", "2000", "protocol",
         "ip", "u32", "match", "u32", "0", "0", "classid", "1:1"],
    ):
        nsops.run(n1.netns, argv)
    others = foreign_state(lab, "n1")
    assert any("198.51.100.0/24" in r for r in others["routes"])
    assert len(others["filters"]) >= 2 and any("clsact" in q for q in others["qdiscs"])

    lab.start_agent("n1", "--ipip", "off")
    lab.wait_ready(["n1"])
    assert proto81() == "" and our_filters(lab, "n1") == []
    assert foreign_state(lab, "n1") == others  # nothing else removed (or added)
    problems = lab.status("n1")["dataplanes"]["routes"]["problems"]
    assert any("IPIP" in why or "IP-in-IP" in why for why in problems.values()), problems
    lab.stop_agent("n1")

    # Again with IP-in-IP, then the pool goes Never while n1 is down: the restarted agent
    # (still without an IPIP dataplane) hands the block over to a plain route.
    run_with_ipip()
    lab.apply({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
               "metadata": {"name": "default-ipv4-ippool"},
               "spec": {"cidr": "10.65.0.0/16", "vxlanMode": "Never", "ipipMode": "Never"}})
    converge(lab)  # n2 only
    lab.start_agent("n1", "--ipip", "off")
    converge(lab)
    assert proto81() == "" and our_filters(lab, "n1") == []
    assert block_route(lab, "n1", b.ip) == [(str(ROUTE_PROTO), n2.ip, n1.underlay_if)]
    assert lab.status("n1")["dataplanes"]["routes"]["problems"] == {}
    assert wait_for("a -> b without IP-in-IP", lambda: probe(a.netns, b.ip, "tcp", 8080))
    after = foreign_state(lab, "n1")
    for r in others["routes"]:
        if "198.51.10" in r:
            assert r in after["routes"]
    assert after["filters"] == others["filters"] and after["qdiscs"] == others["qdiscs"]
