"""`tabby node run` as real processes in node namespaces: registration, VXLAN between
nodes with real traffic, policy reaching the kernel while traffic flows, health and
metrics, a restart that keeps established connections, stale state after a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_agent_support import ECHO_CLIENT, ECHO_SERVER, AgentLab, wait_for

from tabby.agent.node import vtep_mac
from tabby.cni.constants import ROUTE_PROTO
from tabby.dataplane.vxlan import DEVICE
from tabby.lab import netns as nsops
from tabby.lab.probe import ProbeServer, probe, probe_matrix

pytestmark = pytest.mark.root


@pytest.fixture
def lab(topology: Callable[..., Any], tmp_path: Path) -> AgentLab:
    return AgentLab.make(topology(), tmp_path, nodes=2)


def vxlan_tx(lab: AgentLab, node: str) -> int:
    out = nsops.run(lab.nodes[node].netns, ["ip", "-j", "-s", "link", "show", DEVICE]).stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["packets"])


def gnp(name: str, selector: str, order: float | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"selector": selector, **spec}
    if order is not None:
        body["order"] = order
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name}, "spec": body}


def test_two_nodes_vxlan_policy_health_metrics(lab: AgentLab) -> None:
    for n in lab.nodes:
        lab.start_agent(n)
    lab.wait_ready()
    # Registration: addresses, tunnel address from the VXLAN pool, a stable MAC.
    node = lab.get("Node", "n1")
    n1 = lab.nodes["n1"]
    assert node.spec.bgp.ipv4Address == f"{n1.ip}/{n1.prefixlen}"
    assert str(node.spec.ipv4VXLANTunnelAddr).startswith("10.65.")
    assert node.spec.vxlanTunnelMACAddr == vtep_mac("n1")

    a = lab.add_pod("n1", "client-a", {"app": "client"})
    b = lab.add_pod("n2", "web-b", {"app": "web"})
    c = lab.add_pod("n2", "other-c", {"app": "other"})
    servers = [ProbeServer.start(p.netns, tcp=[8080], udp=[8080], topology=lab.topo)
               for p in (a, b, c)]
    before = vxlan_tx(lab, "n1")
    for proto in ("tcp", "udp", "icmp"):
        wait_for(f"{proto} client-a -> web-b", lambda p=proto: probe(a.netns, b.ip, p, 8080))
    assert vxlan_tx(lab, "n1") > before  # it went through the tunnel

    # A policy: web accepts TCP 8080 from clients only. The kernel follows while traffic
    # flows (poll until the outcome changes; no fixed sleeps).
    lab.apply(gnp("web-ingress", "app == 'web'", types=["Ingress"], ingress=[
        {"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'client'"},
         "destination": {"ports": [8080]}}]))
    wait_for("other-c denied", lambda: not probe(c.netns, b.ip, "tcp", 8080, timeout=0.5))
    assert probe(a.netns, b.ip, "tcp", 8080)
    assert not probe(a.netns, b.ip, "udp", 8080, timeout=0.5)
    assert probe(b.netns, c.ip, "tcp", 8080)  # egress of web is not restricted
    # Relabel other-c as a client: allowed.
    lab.set_labels(c, {"app": "client"})
    wait_for("relabelled other-c allowed", lambda: probe(c.netns, b.ip, "tcp", 8080))
    lab.delete("GlobalNetworkPolicy", "web-ingress")
    wait_for("udp allowed again", lambda: probe(a.netns, b.ip, "udp", 8080))

    # Health and metrics.
    st = lab.status("n1")
    assert st["ready"] and st["datastore"]["in_sync"] and st["tunnel"]["mac"] == vtep_mac("n1")
    assert st["dataplanes"]["routes"]["stats"]["vteps"] == 1
    met = lab.metrics("n1")
    assert met["tabby_datastore_in_sync"] == 1 and met["tabby_ready"] == 1
    assert met["tabby_nft_rules"] > 0 and met["tabby_datastore_revision"] > 0
    assert met['tabby_routes{kind="remote-block"}'] >= 1
    assert met["tabby_sync_latency_seconds_count"] >= 1
    assert met['tabby_apply_seconds_count{dataplane="nft"}'] >= 1
    for s in servers:
        s.stop()

    # An endpoint written before its interface exists (another runtime's order): the route
    # waits for the interface and appears once it does, with no datastore change.
    lab.apply({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
               "metadata": {"name": "n1-k8s-late-eth0", "namespace": "default"},
               "spec": {"orchestrator": "k8s", "node": "n1", "pod": "late", "endpoint": "eth0",
                        "interfaceName": "calilate00001", "ipNetworks": ["10.65.219.50/32"],
                        "profiles": ["kns.default"]}})
    ns1 = lab.nodes["n1"].netns
    wait_for("route deferred", lambda: "waiting for interface calilate00001" in lab.status(
        "n1")["dataplanes"]["routes"]["problems"].get("route 10.65.219.50/32", ""))
    nsops.run(ns1, ["ip", "link", "add", "calilate00001", "type", "veth", "peer", "name", "lt1"])
    nsops.run(ns1, ["ip", "link", "set", "calilate00001", "up"])
    wait_for("deferred route programmed", lambda: "10.65.219.50 dev calilate00001" in nsops.run(
        ns1, ["ip", "route", "show", "proto", str(ROUTE_PROTO)]).stdout)


def test_restart_keeps_established_connection_and_cleans_stale(lab: AgentLab) -> None:
    for n in lab.nodes:
        lab.start_agent(n)
    lab.wait_ready()
    a = lab.add_pod("n1", "client-a", {"app": "client"})
    b = lab.add_pod("n2", "web-b", {"app": "web"})
    lab.apply(gnp("web-ingress", "app == 'web'", types=["Ingress"], ingress=[
        {"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'client'"},
         "destination": {"ports": [7000]}}]))
    server = lab.spawn_in(b.netns, ECHO_SERVER, "7000", stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "READY"
    wait_for("client-a reaches web-b", lambda: probe(a.netns, b.ip, "tcp", 7000))
    client = lab.spawn_in(a.netns, ECHO_CLIENT, b.ip, "7000", stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None and client.stdin is not None
    assert client.stdout.readline().startswith("ok")

    # A leftover from an "earlier run": a Tabby route to a node that no longer exists.
    ns1 = lab.nodes["n1"].netns
    nsops.run(ns1, ["ip", "route", "add", "10.65.250.0/26", "via", "10.65.250.0", "dev", DEVICE,
                    "onlink", "proto", str(ROUTE_PROTO)])
    for n in ("n1", "n2"):
        assert lab.stop_agent(n, signal.SIGTERM) == 0
    # The dataplane stays as it was: the connection keeps working with no agent at all.
    for _ in range(5):
        assert client.stdout.readline().startswith("ok")
    assert nsops.run(ns1, ["nft", "list", "table", "inet", "tabby"]).returncode == 0
    for n in lab.nodes:
        lab.start_agent(n)
    lab.wait_ready()
    wait_for("stale route removed", lambda: "10.65.250.0/26" not in nsops.run(
        ns1, ["ip", "route", "show", "proto", str(ROUTE_PROTO)]).stdout)
    for _ in range(5):
        line = client.stdout.readline()
        assert line.startswith("ok"), line
    client.stdin.write("stop\n")
    client.stdin.flush()
    rest = client.stdout.read()
    assert client.popen.wait(10) == 0, rest
    assert "error" not in rest
    # ...and policy is still enforced by the new agents.
    c = lab.add_pod("n1", "other-c", {"app": "other"})
    wait_for("other-c has a route", lambda: probe(a.netns, b.ip, "tcp", 7000))
    assert not probe(c.netns, b.ip, "tcp", 7000, timeout=0.5)


def test_three_nodes_cross_subnet(topology: Callable[..., Any], tmp_path: Path) -> None:
    topo = topology(subnets=2)
    lab = AgentLab.make(topo, tmp_path, nodes=3, pool={"vxlanMode": "CrossSubnet"},
                        subnets=[0, 1, 0])
    for n in lab.nodes:
        lab.start_agent(n)
    lab.wait_ready()
    pods = [lab.add_pod(n, f"p-{n}") for n in lab.nodes]
    for p in pods:
        ProbeServer.start(p.netns, tcp=[8080], udp=[], topology=topo)
    pairs = [(p.netns, q.ip) for p in pods for q in pods if p is not q]
    wait_for("full mesh", lambda: all(probe_matrix(pairs, "tcp", 8080).values()))
    routes = {r["dst"]: r for r in json.loads(nsops.run(
        lab.nodes["n1"].netns, ["ip", "-j", "route", "show", "proto", str(ROUTE_PROTO)]).stdout)}
    n2_block = next(d for d, r in routes.items() if r.get("dev") == DEVICE)
    direct = [d for d, r in routes.items() if r.get("gateway") == lab.nodes["n3"].ip]
    assert direct and n2_block not in direct  # n3 same subnet: direct; n2: VXLAN


def test_vxlan_pool_created_after_start(topology: Callable[..., Any], tmp_path: Path) -> None:
    lab = AgentLab.make(topology(), tmp_path, nodes=2, pool=False)
    for n in lab.nodes:
        lab.start_agent(n)
    lab.wait_ready()
    assert lab.get("Node", "n1").spec.ipv4VXLANTunnelAddr is None
    ns1 = lab.nodes["n1"].netns
    assert DEVICE not in nsops.run(ns1, ["ip", "-o", "link"]).stdout
    # The operator adds a VXLAN pool: tunnel addresses are allocated, devices appear.
    lab.apply({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
               "metadata": {"name": "late"}, "spec": {"cidr": "10.66.0.0/16",
                                                      "vxlanMode": "Always"}})
    wait_for("n1 got a tunnel address", lambda: lab.get("Node", "n1").spec.ipv4VXLANTunnelAddr)
    wait_for("vxlan.tabby on n1", lambda: DEVICE in nsops.run(ns1, ["ip", "-o", "link"]).stdout)
    a = lab.add_pod("n1", "a")
    b = lab.add_pod("n2", "b")
    assert a.ip.startswith("10.66.") and b.ip.startswith("10.66.")
    ProbeServer.start(b.netns, tcp=[8080], udp=[], topology=lab.topo)
    wait_for("a -> b", lambda: probe(a.netns, b.ip, "tcp", 8080))

    # `tabby node status` where the agent runs: the agent's view (and BGP: off here).
    out = nsops.run(ns1, [sys.executable, "-m", "tabby.cli.main", "node", "status", "--name",
                          "n1", "-o", "json"]).stdout
    status = json.loads(out)
    assert status["agent"]["ready"] and status["agent"]["node"] == "n1"
    assert status["running"] is False  # no BIRD with --no-bgp
    text = nsops.run(ns1, [sys.executable, "-m", "tabby.cli.main", "node", "status",
                           "--name", "n1"]).stdout
    assert "Tabby agent on n1 is running and ready." in text
    # The pool goes again: addresses released, the device removed.
    lab.delete("IPPool", "late")
    wait_for("vxlan.tabby gone", lambda: DEVICE not in nsops.run(ns1, ["ip", "-o", "link"]).stdout)
    wait_for("tunnel address cleared", lambda: lab.get("Node", "n1").spec.ipv4VXLANTunnelAddr
             is None)
