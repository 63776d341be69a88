"""IP-in-IP through IpipDataplane, in real namespaces with real traffic: the BPF path, and
the kernel tunl0 path at the end (skipped, with the reason, where the ipip module is
missing).

Clusters are lab Topologies with raw Calico-style workloads; each node gets the messages
the calc graph would send (IPPoolUpdate, RouteUpdate per remote block, InSync) through the
public API. tcpdump runs in the underlay namespace, on the bridges, to see what is on the
wire.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tabby.calc.messages import InSync, IPPoolUpdate, RouteRemove, RouteUpdate
from tabby.dataplane.ipip import IPIP_ROUTE_PROTO, IpipDataplane, IpipError, kernel_support
from tabby.dataplane.ipip.bpf_path import attached_program_ids
from tabby.dataplane.ipip.libbpf import BpfError, map_fd_by_id
from tabby.lab.probe import ProbeServer, probe_matrix
from tabby.lab.topology import Node, Topology, Workload

pytestmark = pytest.mark.root
HAS_IPIP_MODULE = kernel_support.module_loaded() or kernel_support.module_available()
kernel_only = pytest.mark.skipif(
    not HAS_IPIP_MODULE, reason=f"kernel tunl0 path: {kernel_support.why_no_kernel()}"
)

POOL = "10.65.0.0/16"
MTU = 1500
WL_MTU = MTU - 20  # what the CNI plugin gives workloads on an IP-in-IP pool


# --- a cluster wired through the API ----------------------------------------------------


@dataclass
class Cluster:
    topo: Topology
    nodes: dict[str, Node]
    workloads: dict[str, Workload]
    blocks: dict[str, str]
    dps: dict[str, IpipDataplane] = field(default_factory=dict)

    def route_updates(self, node: Node, mode: str) -> list[RouteUpdate]:
        encap = "ipip" if mode != "Never" else "none"
        return [
            RouteUpdate(
                self.blocks[o.name], "remote-block", dst_node=o.name, dst_node_ip=o.ip,
                next_hop=o.ip, encap=encap, same_subnet=o.subnet == node.subnet,
            )
            for o in self.nodes.values()
            if o.name != node.name
        ]

    def start(self, name: str, mode: str = "Always", implementation: str = "bpf") -> IpipDataplane:
        node = self.nodes[name]
        dp = IpipDataplane(node.netns, node.underlay_if, node.ip, implementation)
        self.dps[name] = dp
        self.set_mode(name, mode)
        # The tunnel address Calico's IPAM would give the node (used by tunl0 only).
        dp.on_update(RouteUpdate(self.tunnel_ip(name) + "/32", "local-tunnel", encap="ipip"))
        dp.on_update(InSync())
        dp.apply()
        return dp

    def tunnel_ip(self, name: str) -> str:
        return self.blocks[name].split("/")[0]

    def set_mode(self, name: str, mode: str) -> None:
        dp, node = self.dps[name], self.nodes[name]
        dp.on_update(IPPoolUpdate(POOL, ipip_mode=mode))
        for msg in self.route_updates(node, mode):
            dp.on_update(msg)

    def close(self) -> None:
        for dp in self.dps.values():
            with contextlib.suppress(Exception):
                dp.remove()
            dp.close()


def make_cluster(
    make_topology: Callable[..., Topology],
    subnets: int,
    placement: dict[str, int],
    *,
    mode: str = "Always",
    start: bool = True,
    implementation: str = "bpf",
) -> Cluster:
    topo = make_topology(subnets=subnets, mtu=MTU)
    nodes, workloads, blocks = {}, {}, {}
    for i, (name, subnet) in enumerate(placement.items()):
        nodes[name] = topo.add_node(name, subnet=subnet)
        blocks[name] = f"10.65.{i}.0/26"
        wl = f"w{name[1:]}"
        workloads[wl] = topo.add_workload(nodes[name], wl, f"10.65.{i}.1", mtu=WL_MTU)
    cluster = Cluster(topo, nodes, workloads, blocks)
    if start:
        for name in nodes:
            cluster.start(name, mode, implementation)
    return cluster


@pytest.fixture
def clusters(topology: Callable[..., Topology], bpf_object: Path) -> Iterator[list[Cluster]]:
    made: list[Cluster] = []
    yield made
    for c in made:
        c.close()


# --- observing ------------------------------------------------------------------------


class Capture:
    """tcpdump on one interface of the underlay namespace, text output to a file."""

    def __init__(self, topo: Topology, iface: str, bpf_filter: str, *, verbose: bool = False):
        self.out = topo.state_dir / f"cap-{iface}-{time.monotonic_ns()}.txt"
        self.err = self.out.with_suffix(".err")
        argv = ["tcpdump", "-i", iface, "-nn", "-l", "-U"] + (["-v"] if verbose else [])
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = topo.spawn("ul", argv + bpf_filter.split(), stdout=out, stderr=err)
        deadline = time.monotonic() + 10
        while "listening on" not in self.err.read_text():
            assert self.proc.alive() and time.monotonic() < deadline, self.err.read_text()
            time.sleep(0.05)

    def stop(self) -> str:
        # Let the last packets reach tcpdump: wait until its output stops growing.
        size, deadline = -1, time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.out.stat().st_size
            if now == size:
                break
            size = now
        self.proc.terminate()
        return self.out.read_text()


_ENCAP = re.compile(r"IP (\d+\.\d+\.\d+\.\d+) > (\d+\.\d+\.\d+\.\d+): IP (\S+) > (\S+?):")
_FIRST = re.compile(r" IP (\d+\.\d+\.\d+\.\d+)(?:\.\d+)? > (\d+\.\d+\.\d+\.\d+)(?:\.\d+)?:")
_HEADER = re.compile(
    r"IP \(tos (0x[0-9a-f]+)(?:,[^,]+)?, ttl (\d+), id \d+, offset \d+, flags \[([^\]]*)\], "
    r"proto (\w+)"
)


def _host(text: str) -> str:
    return ".".join(text.split(".")[:4])


def encap_pairs(text: str) -> set[tuple[str, str, str, str]]:
    """(outer src, outer dst, inner src, inner dst) of every IP-in-IP packet seen."""
    return {(a, b, _host(c), _host(d)) for a, b, c, d in _ENCAP.findall(text)}


def workload_pairs(text: str) -> set[tuple[str, str]]:
    """(src, dst) of packets whose outermost header is workload to workload (no tunnel)."""
    out = set()
    for line in text.splitlines():
        m = _FIRST.search(line)
        if m and m.group(1).startswith("10.65.") and m.group(2).startswith("10.65."):
            out.add((m.group(1), m.group(2)))
    return out


def headers(text: str) -> list[tuple[str, str, str, str]]:
    """(tos, ttl, flags, proto) of every IPv4 header in `tcpdump -v` output, in order."""
    return _HEADER.findall(text)


def ping(topo: Topology, src: Workload, dst: Workload, count: int = 1) -> bool:
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "1", dst.ip]
    return topo.run(src, argv, check=False).returncode == 0


def our_filters(topo: Topology, node: Node) -> list[str]:
    out = []
    for direction in ("ingress", "egress"):
        text = topo.run(node, ["tc", "filter", "show", "dev", node.underlay_if, direction]).stdout
        out += [f"{direction}: {line}" for line in text.splitlines() if "tabby-ipip" in line]
    return out


def our_routes(topo: Topology, node: Node) -> list[str]:
    text = topo.run(node, ["ip", "route", "show", "proto", str(IPIP_ROUTE_PROTO)]).stdout
    return [line.strip() for line in text.splitlines() if line.strip()]


def map_exists(map_id: int) -> bool:
    try:
        os.close(map_fd_by_id(map_id))
    except BpfError:
        return False
    return True


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def all_pairs(c: Cluster) -> list[tuple[str, str]]:
    wls = list(c.workloads.values())
    return [(a.netns, b.ip) for a in wls for b in wls if a is not b]


# --- tests ------------------------------------------------------------------------------


def test_two_nodes_ipip_always(topology, clusters) -> None:
    c = make_cluster(topology, 1, {"n1": 0, "n2": 0})
    clusters.append(c)
    topo, n1, n2 = c.topo, c.nodes["n1"], c.nodes["n2"]
    w1, w2 = c.workloads["w1"], c.workloads["w2"]
    assert our_routes(topo, n1) == [
        f"{c.blocks['n2']} via {n2.ip} dev {n1.underlay_if} onlink mtu {MTU - 20}"
    ]
    st = c.dps["n1"].status()
    assert (st.implementation, st.active, st.encap_routes, st.nodes) == ("bpf", True, 1, 1)
    assert c.dps["n1"].debug_maps() == {
        "routes": {c.blocks["n2"]: (n2.ip, n1.ip)}, "nodes": [n2.ip],
    }

    cap = Capture(topo, f"{topo.sid}br0", "ip proto 4 or icmp or tcp")
    assert ping(topo, w1, w2, 2) and ping(topo, w2, w1, 2)
    with ProbeServer.start(w1, topology=topo), ProbeServer.start(w2, topology=topo):
        grid = probe_matrix(all_pairs(c), "tcp", 8080)
    assert all(grid.values()), grid
    text = cap.stop()
    seen = encap_pairs(text)
    assert (n1.ip, n2.ip, w1.ip, w2.ip) in seen and (n2.ip, n1.ip, w2.ip, w1.ip) in seen
    # Everything between the workloads was encapsulated, node to node.
    assert {(a, b) for a, b, _, _ in seen} == {(n1.ip, n2.ip), (n2.ip, n1.ip)}
    assert workload_pairs(text) == set()
    for name in ("n1", "n2"):
        cnt = c.dps[name].counters()
        assert cnt["encap_packets"] > 0 and cnt["decap_packets"] > 0
        assert cnt["encap_errors"] == cnt["decap_errors"] == cnt["drop_unknown_source"] == 0


def test_outer_header_like_tunl0(topology, clusters) -> None:
    """TTL and DF from the inner packet, DSCP 0, ECN copied with CE -> ECT(0) (RFC 6040)."""
    c = make_cluster(topology, 1, {"n1": 0, "n2": 0})
    clusters.append(c)
    topo, w1, w2 = c.topo, c.workloads["w1"], c.workloads["w2"]
    cap = Capture(topo, f"{topo.sid}br0", "ip proto 4 and src host " + c.nodes["n1"].ip,
                  verbose=True)
    for tos, extra in (("0xb9", []), ("0x3", []), ("0x0", ["-M", "dont", "-t", "9"])):
        argv = ["ping", "-c", "1", "-W", "1", "-Q", tos, *extra, w2.ip]
        assert topo.run(w1, argv, check=False).returncode == 0, tos
    text = cap.stop()
    hs = headers(text)
    assert len(hs) == 6 and [h[3] for h in hs] == ["IPIP", "ICMP"] * 3, text
    pairs = [hs[i][:3] + hs[i + 1][:3] for i in (0, 2, 4)]
    # (outer tos, ttl, flags, inner tos, ttl, flags)
    assert pairs[0] == ("0x1", "63", "DF", "0xb9", "63", "DF")  # DSCP dropped, ECT(1) kept
    assert pairs[1] == ("0x2", "63", "DF", "0x3", "63", "DF")  # CE -> ECT(0)
    assert pairs[2] == ("0x0", "8", "none", "0x0", "8", "none")  # TTL and no-DF copied


RAW_SENDER = textwrap.dedent(
    """
    import socket, struct, sys
    outer_dst, inner_src, inner_dst, outer_tos, inner_tos, count, bad = sys.argv[1:8]

    def csum(b):
        s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
        s = (s & 0xffff) + (s >> 16)
        return (~((s & 0xffff) + (s >> 16))) & 0xffff

    icmp = struct.pack("!BBHHH", 8, 0, 0, 4242, 1) + b"tabby-ipip-test!"
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, int(inner_tos, 0), 20 + len(icmp), 1, 0, 64, 1, 0,
                      socket.inet_aton(inner_src), socket.inet_aton(inner_dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    payload = hdr + icmp
    if bad == "1":
        payload = b"\\x60" + payload[1:]  # version 6 in an IPv4-sized header: not IPv4
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)  # the kernel adds the outer header
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, int(outer_tos, 0))
    for _ in range(int(count)):
        s.sendto(payload, (outer_dst, 0))
    """
)


def send_raw_ipip(topo: Topology, src_ns: str, outer_dst: str, inner_src: str, inner_dst: str,
                  *, outer_tos: str = "0", inner_tos: str = "0", count: int = 3,
                  bad_inner: bool = False) -> None:
    argv = [sys.executable, "-I", "-S", "-c", RAW_SENDER, outer_dst, inner_src, inner_dst,
            outer_tos, inner_tos, str(count), "1" if bad_inner else "0"]
    topo.run(src_ns, argv)


def test_decap_accepts_only_nodes_and_counts_drops(topology, clusters) -> None:
    c = make_cluster(topology, 1, {"n1": 0, "n2": 0})
    clusters.append(c)
    topo, n1, n2 = c.topo, c.nodes["n1"], c.nodes["n2"]
    w1, w2 = c.workloads["w1"], c.workloads["w2"]
    evil = topo.add_node("evil", subnet=0)  # on the underlay, but not a node we know
    dp2 = c.dps["n2"]

    def counters() -> dict[str, int]:
        return dp2.counters()

    before = counters()
    send_raw_ipip(topo, evil.netns, n2.ip, w1.ip, w2.ip, count=5)
    assert wait_for(lambda: counters()["drop_unknown_source"] == before["drop_unknown_source"] + 5)
    assert counters()["decap_packets"] == before["decap_packets"]

    # The same packets from a known node are decapsulated and reach the workload, whose
    # echo replies go back encapsulated.
    before = counters()
    send_raw_ipip(topo, n1.netns, n2.ip, w1.ip, w2.ip, count=5)
    assert wait_for(lambda: counters()["decap_packets"] >= before["decap_packets"] + 5)
    assert wait_for(lambda: counters()["encap_packets"] >= before["encap_packets"] + 5)
    assert counters()["drop_unknown_source"] == before["drop_unknown_source"]

    # RFC 6040: outer CE over an ECT inner packet marks the inner packet CE; over a
    # not-ECT one the packet is dropped. A non-IPv4 inner packet is dropped.
    cap = Capture(topo, f"{topo.sid}br0", f"ip proto 4 and src host {n2.ip}", verbose=True)
    before = counters()
    send_raw_ipip(topo, n1.netns, n2.ip, w1.ip, w2.ip, outer_tos="0x3", inner_tos="0x2", count=2)
    send_raw_ipip(topo, n1.netns, n2.ip, w1.ip, w2.ip, outer_tos="0x3", inner_tos="0x0", count=3)
    send_raw_ipip(topo, n1.netns, n2.ip, w1.ip, w2.ip, count=4, bad_inner=True)
    assert wait_for(lambda: counters()["drop_ecn"] == before["drop_ecn"] + 3)
    assert wait_for(lambda: counters()["drop_bad_inner"] == before["drop_bad_inner"] + 4)
    assert wait_for(lambda: counters()["decap_packets"] == before["decap_packets"] + 2)
    text = cap.stop()
    # w2 saw CE (0x3) on the two ECT(0) requests: its replies echo the request's TOS.
    replies = [h[0] for h in headers(text) if h[3] == "ICMP"]
    assert replies == ["0x3", "0x3"], text


def test_three_nodes_cross_subnet(topology, clusters) -> None:
    """n1 and n3 share a subnet, n2 is behind the router: only pairs with n2 tunnel."""
    c = make_cluster(topology, 2, {"n1": 0, "n2": 1, "n3": 0}, mode="CrossSubnet")
    clusters.append(c)
    topo, n1, n2, n3 = c.topo, c.nodes["n1"], c.nodes["n2"], c.nodes["n3"]
    # Same subnet: plain route, no LPM entry. Other subnet: via the router, encapsulated.
    routes1 = our_routes(topo, n1)
    assert f"{c.blocks['n3']} via {n3.ip} dev {n1.underlay_if}" in [r.strip() for r in routes1]
    assert any(r.startswith(f"{c.blocks['n2']} via {n1.gateway} ") and "mtu 1480" in r
               for r in routes1), routes1
    assert c.dps["n1"].debug_maps()["routes"] == {c.blocks["n2"]: (n2.ip, n1.ip)}
    assert c.dps["n2"].debug_maps()["routes"] == {
        c.blocks["n1"]: (n1.ip, n2.ip), c.blocks["n3"]: (n3.ip, n2.ip),
    }

    caps = [Capture(topo, f"{topo.sid}br{s}", "ip proto 4 or icmp") for s in (0, 1)]
    wls = c.workloads
    for a in wls.values():
        for b in wls.values():
            if a is not b:
                assert ping(topo, a, b), (a.name, b.name)
    servers = [ProbeServer.start(w, topology=topo) for w in wls.values()]
    try:
        grid = probe_matrix(all_pairs(c), "tcp", 8080)
    finally:
        for s in servers:
            s.stop()
    assert all(grid.values()), grid
    texts = [cap.stop() for cap in caps]
    outer = {(a, b) for t in texts for a, b, _, _ in encap_pairs(t)}
    assert outer == {(n1.ip, n2.ip), (n2.ip, n1.ip), (n3.ip, n2.ip), (n2.ip, n3.ip)}
    # n1 <-> n3 workload traffic crossed br0 unencapsulated.
    w1, w3 = wls["w1"], wls["w3"]
    plain = workload_pairs(texts[0]) | workload_pairs(texts[1])
    assert (w1.ip, w3.ip) in plain and (w3.ip, w1.ip) in plain
    assert not [p for p in plain if c.workloads["w2"].ip in p]


def test_restart_mode_change_and_removal_leave_nothing_stale(topology, clusters) -> None:
    c = make_cluster(topology, 1, {"n1": 0, "n2": 0})
    clusters.append(c)
    topo, n1, n2 = c.topo, c.nodes["n1"], c.nodes["n2"]
    w1, w2 = c.workloads["w1"], c.workloads["w2"]
    old = c.dps["n1"]
    old_progs = attached_program_ids(n1.netns, n1.underlay_if)
    old_maps = list(old.status().map_ids.values())
    assert set(old_progs) == {"encap", "decap"} and len(old_maps) == 4
    assert all(map_exists(m) for m in old_maps)

    # Restart: the old process goes away without cleaning up, a new one takes over.
    old.close()
    assert ping(topo, w1, w2)  # still forwarding with nobody holding the maps
    new = c.start("n1")
    new_progs = attached_program_ids(n1.netns, n1.underlay_if)
    assert set(new_progs) == {"encap", "decap"} and not set(new_progs.values()) & set(
        old_progs.values())
    assert len(our_filters(topo, n1)) == 2
    assert wait_for(lambda: not any(map_exists(m) for m in old_maps))
    assert ping(topo, w1, w2) and ping(topo, w2, w1)
    assert new.counters()["encap_packets"] >= 1

    # Block of n2 moves to a new address (in place) and a second one appears, then goes.
    new.on_update(RouteUpdate("10.65.9.0/26", "remote-block", dst_node="n2",
                              dst_node_ip=n2.ip, encap="ipip"))
    assert new.apply()
    assert "10.65.9.0/26" in new.debug_maps()["routes"]
    assert any(r.startswith("10.65.9.0/26 ") for r in our_routes(topo, n1))
    new.on_update(RouteRemove("10.65.9.0/26"))
    assert new.apply()
    assert "10.65.9.0/26" not in new.debug_maps()["routes"]
    assert not any(r.startswith("10.65.9.0/26 ") for r in our_routes(topo, n1))
    assert not new.apply()  # nothing pending: no kernel work

    # Always -> Never: no programs, maps or routes of ours are left.
    maps = list(new.status().map_ids.values())
    assert all(map_exists(m) for m in maps)
    for name in ("n1", "n2"):
        c.set_mode(name, "Never")
        assert c.dps[name].apply()
        node = c.nodes[name]
        assert our_filters(topo, node) == [] and our_routes(topo, node) == []
        assert "clsact" not in topo.run(node, ["tc", "qdisc", "show", "dev",
                                               node.underlay_if]).stdout
        assert c.dps[name].status().active is False
    assert wait_for(lambda: not any(map_exists(m) for m in maps))
    assert not ping(topo, w1, w2)  # nothing routes the blocks now (no routes driver here)

    # Never -> Always: back, with fresh programs.
    for name in ("n1", "n2"):
        c.set_mode(name, "Always")
        assert c.dps[name].apply()
        assert len(our_filters(topo, c.nodes[name])) == 2
    assert ping(topo, w1, w2) and ping(topo, w2, w1)

    # remove(): everything of ours goes.
    for name in ("n1", "n2"):
        c.dps[name].remove()
        assert our_filters(topo, c.nodes[name]) == [] and our_routes(topo, c.nodes[name]) == []


def test_restart_cleans_after_a_previous_process(topology, clusters) -> None:
    """A new IpipDataplane whose state says "off" removes what an earlier process left."""
    c = make_cluster(topology, 1, {"n1": 0, "n2": 0})
    clusters.append(c)
    topo, n1 = c.topo, c.nodes["n1"]
    c.dps["n1"].close()
    fresh = IpipDataplane(n1.netns, n1.underlay_if, n1.ip, "bpf")
    fresh.on_update(IPPoolUpdate(POOL, ipip_mode="Never"))
    fresh.on_update(InSync())
    assert fresh.apply()
    assert our_filters(topo, n1) == [] and our_routes(topo, n1) == []
    fresh.close()


def test_bad_input_is_one_line_error(need_root, bpf_object) -> None:
    with pytest.raises(IpipError, match="implementation: expected auto, kernel or bpf"):
        IpipDataplane(None, "eth0", "10.0.0.1", "tunnel")
    with pytest.raises(IpipError, match="local_ip: not an IPv4 address: 'fe80::1'"):
        IpipDataplane(None, "eth0", "fe80::1")
    with pytest.raises(IpipError, match="no BPF object at /nonexistent"):
        IpipDataplane(None, "eth0", "10.0.0.1", "bpf", object_path="/nonexistent/ipip.o")


def test_counters_readable_from_another_process(topology, clusters) -> None:
    c = make_cluster(topology, 1, {"n1": 0, "n2": 0})
    clusters.append(c)
    topo, n1 = c.topo, c.nodes["n1"]
    assert ping(topo, c.workloads["w1"], c.workloads["w2"], 2)
    code = (
        "import json, sys; from tabby.dataplane.ipip.bpf_path import read_counters; "
        "print(json.dumps(read_counters(sys.argv[1], sys.argv[2])))"
    )
    proc = subprocess.run([sys.executable, "-c", code, n1.netns, n1.underlay_if],
                          capture_output=True, text=True, check=True)
    seen = json.loads(proc.stdout)
    assert seen["encap_packets"] >= 2 and seen["decap_packets"] >= 2
    assert set(seen) == set(c.dps["n1"].counters())
    assert seen["encap_packets"] <= c.dps["n1"].counters()["encap_packets"]  # same map


# --- the kernel tunl0 path (skipped where the ipip module is missing) --------------------------


@kernel_only
def test_kernel_tunl0_two_nodes(topology, clusters) -> None:
    c = make_cluster(topology, 1, {"n1": 0, "n2": 0}, implementation="kernel")
    clusters.append(c)
    topo, n1, n2 = c.topo, c.nodes["n1"], c.nodes["n2"]
    w1, w2 = c.workloads["w1"], c.workloads["w2"]
    assert c.dps["n1"].implementation == "kernel"
    assert our_routes(topo, n1) == [f"{c.blocks['n2']} via {n2.ip} dev tunl0 onlink"]
    link = json.loads(topo.run(n1, ["ip", "-j", "addr", "show", "dev", "tunl0"]).stdout)[0]
    assert link["mtu"] == MTU - 20 and "UP" in link["flags"]
    assert [a["local"] for a in link["addr_info"]] == [c.tunnel_ip("n1")]
    cap = Capture(topo, f"{topo.sid}br0", "ip proto 4 or icmp or tcp")
    assert ping(topo, w1, w2, 2) and ping(topo, w2, w1, 2)
    with ProbeServer.start(w1, topology=topo), ProbeServer.start(w2, topology=topo):
        grid = probe_matrix(all_pairs(c), "tcp", 8080)
    assert all(grid.values()), grid
    text = cap.stop()
    assert {(a, b) for a, b, _, _ in encap_pairs(text)} == {(n1.ip, n2.ip), (n2.ip, n1.ip)}
    assert workload_pairs(text) == set()


@kernel_only
def test_kernel_tunl0_sender_filter_and_teardown(topology, clusters) -> None:
    c = make_cluster(topology, 1, {"n1": 0, "n2": 0}, implementation="kernel")
    clusters.append(c)
    topo, n1, n2 = c.topo, c.nodes["n1"], c.nodes["n2"]
    w1, w2 = c.workloads["w1"], c.workloads["w2"]
    dp2 = c.dps["n2"]
    assert dp2.status().filter_only and len(our_filters(topo, n2)) == 1  # ingress only
    evil = topo.add_node("evil", subnet=0)
    before = dp2.counters()
    send_raw_ipip(topo, evil.netns, n2.ip, w1.ip, w2.ip, count=5)
    assert wait_for(lambda: dp2.counters()["drop_unknown_source"] ==
                    before["drop_unknown_source"] + 5)
    send_raw_ipip(topo, n1.netns, n2.ip, w1.ip, w2.ip, count=5)
    assert wait_for(lambda: dp2.counters()["decap_packets"] >= before["decap_packets"] + 5)

    for name in ("n1", "n2"):
        c.set_mode(name, "Never")
        assert c.dps[name].apply()
        node = c.nodes[name]
        assert our_filters(topo, node) == [] and our_routes(topo, node) == []
        link = json.loads(topo.run(node, ["ip", "-j", "addr", "show", "dev", "tunl0"]).stdout)[0]
        assert link["addr_info"] == [] and "UP" not in link["flags"]
