"""NftDataplane in real namespaces: host endpoints (failsafes, applyOnForward,
doNotTrack, preDNAT, "*") and natOutgoing.

The node's underlay link is the host endpoint; the underlay namespace (172.31.0.1, the
bridge address) plays the outside world, with a route to the workloads via the node.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tabby.calc.messages import (
    ConfigUpdate,
    HostEndpointUpdate,
    InSync,
    IPPoolUpdate,
    PolicyUpdate,
    ProfileUpdate,
    Rule,
    TierInfo,
    WorkloadEndpointUpdate,
)
from tabby.dataplane.nft import NftDataplane, samples
from tabby.lab import netns as nsops
from tabby.lab.probe import ProbeServer, make_spec, probe_batch

pytestmark = pytest.mark.root
FAST = 0.5
ALLOW_ALL = ProfileUpdate("allow-all", (Rule("allow"),), (Rule("allow"),))
NODE_PORTS = [22, 8080, 8081, 8083, 8084, 8085]


@dataclass
class Lab:
    topo: Any
    node: Any
    outside: str  # the underlay namespace
    outside_ip: str
    w1: Any


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    from tabby.lab.topology import Topology

    topo = Topology("th" + secrets.token_hex(2))
    try:
        node = topo.add_node("n1")
        w1 = topo.add_workload(node, "w1", "10.65.0.1")
        topo.add_route("ul", "10.65.0.0/24", via=node.ip)
        ProbeServer.start(node, tcp=NODE_PORTS, udp=[], topology=topo)
        ProbeServer.start(topo.underlay_netns, tcp=[179, 8080], udp=[], topology=topo)
        ProbeServer.start(w1, tcp=[8080, 8081], udp=[], topology=topo)
        yield Lab(topo, node, topo.underlay_netns, topo.gateway(0), w1)
    finally:
        topo.teardown()


@pytest.fixture
def dp(lab: Lab) -> Iterator[NftDataplane]:
    nsops.run(lab.node.netns, ["conntrack", "-F"], check=False)
    d = NftDataplane(lab.node.netns)
    yield d
    d.remove_table()


def load(dp: NftDataplane, lab: Lab, *msgs: Any) -> None:
    dp.on_update(ALLOW_ALL)
    dp.on_update(WorkloadEndpointUpdate("k8s/w1", lab.w1.host_if, (f"{lab.w1.ip}/32",),
                                        profile_ids=("allow-all",)))
    for msg in msgs:
        dp.on_update(msg)
    dp.on_update(InSync())
    dp.apply()
    assert dp.verify() == []
    assert dp.problems() == {}


def hep(lab: Lab, iface: str | None = None, **kw: Any) -> HostEndpointUpdate:
    return HostEndpointUpdate("node/n1/eth0", iface or lab.node.underlay_if,
                              expected_ips=(lab.node.ip,), **kw)


def reach(*checks: tuple[str, str, int]) -> list[bool]:
    """(src netns, dst ip, tcp port) probed all at once."""
    results = probe_batch([make_spec(s, d, "tcp", p, FAST) for s, d, p in checks])
    for r in results:
        assert r.outcome in ("ok", "timeout"), r
    return [r.ok for r in results]


def conntrack(lab: Lab, *args: str) -> str:
    return nsops.run(lab.node.netns, ["conntrack", "-L", *args], check=False).stdout


def tcp_in(port: int, action: str = "allow") -> Rule:
    return Rule(action, protocol="tcp", dst_ports=(port,))


def test_host_endpoint_policy_and_failsafes(dp: NftDataplane, lab: Lab) -> None:
    host_in = PolicyUpdate(("default", "host-in"), inbound_rules=(tcp_in(8081),))
    load(dp, lab, host_in, hep(lab, tiers=(TierInfo("default", ingress_policies=("host-in",)),)))
    out, node = lab.outside, lab.node
    assert reach(
        (out, node.ip, 22),  # failsafe inbound
        (out, node.ip, 8081),  # host-in allows
        (out, node.ip, 8080),  # end of tier
        (node.netns, lab.outside_ip, 179),  # failsafe outbound
        (node.netns, lab.outside_ip, 8080),  # no egress policy, no profile: dropped
        (node.netns, node.ip, 8080),  # loopback is never policed
        (node.netns, lab.w1.ip, 8080),  # host -> local workload always allowed
        (out, lab.w1.ip, 8080),  # forwarded: normal host policy does not apply
    ) == [True, True, False, True, False, True, True, True]
    # the failsafe lists are configuration: without them port 22 is policed too
    dp.on_update(ConfigUpdate(failsafe_inbound=(), failsafe_outbound=()))
    dp.apply()
    assert reach((out, node.ip, 22), (node.netns, lab.outside_ip, 179)) == [False, False]


def test_all_interfaces_host_endpoint(dp: NftDataplane, lab: Lab) -> None:
    host_in = PolicyUpdate(("default", "host-in"), inbound_rules=(tcp_in(8081),))
    load(dp, lab, host_in,
         hep(lab, "*", tiers=(TierInfo("default", ingress_policies=("host-in",)),),
             profile_ids=()))
    out, node = lab.outside, lab.node
    assert reach(
        (out, node.ip, 8081), (out, node.ip, 8080), (node.netns, node.ip, 8080),
        (lab.w1.netns, lab.outside_ip, 8080),  # workload traffic is not a host endpoint's
    ) == [True, False, True, True]


def test_apply_on_forward(dp: NftDataplane, lab: Lab) -> None:
    fwd = PolicyUpdate(("default", "fwd"), inbound_rules=(tcp_in(8080),))
    load(dp, lab, fwd, hep(lab, forward_tiers=(TierInfo("default", ingress_policies=("fwd",)),),
                           profile_ids=("allow-all",)))
    out, node = lab.outside, lab.node
    assert reach(
        (out, lab.w1.ip, 8080),  # forwarded in via the host endpoint: fwd allows
        (out, lab.w1.ip, 8081),  # fwd's end of tier
        (out, node.ip, 8081),  # to the host itself: normal policy (profile allows)
        (lab.w1.netns, lab.outside_ip, 8080),  # no egress forward policy: allowed
    ) == [True, False, True, True]


def test_do_not_track(dp: NftDataplane, lab: Lab) -> None:
    untracked = PolicyUpdate(
        ("default", "untracked"),
        inbound_rules=(tcp_in(8083),),
        outbound_rules=(Rule("allow", protocol="tcp", src_ports=(8083,)),),
    )
    tiers = (TierInfo("default", ingress_policies=("untracked",), egress_policies=("untracked",)),)
    load(dp, lab, untracked, hep(lab, untracked_tiers=tiers))  # no normal policy: drop
    out, node = lab.outside, lab.node
    assert reach((out, node.ip, 8083), (out, node.ip, 8080), (out, node.ip, 22)) == [
        True, False, True]
    assert "dport=8083" not in conntrack(lab, "-p", "tcp")  # allowed without conntrack
    assert "dport=22" in conntrack(lab, "-p", "tcp")  # the failsafe flow is tracked


def test_pre_dnat(dp: NftDataplane, lab: Lab) -> None:
    pre = PolicyUpdate(("default", "pre"), inbound_rules=(
        tcp_in(8084, "deny"), tcp_in(8085), tcp_in(22, "deny")))
    normal = PolicyUpdate(("default", "normal"), inbound_rules=(tcp_in(8084),))
    load(dp, lab, pre, normal, hep(
        lab, pre_dnat_tiers=(TierInfo("default", ingress_policies=("pre",)),),
        tiers=(TierInfo("default", ingress_policies=("normal",)),)))
    out, node = lab.outside, lab.node
    assert reach(
        (out, node.ip, 8084),  # preDNAT deny wins over the normal allow
        (out, node.ip, 8085),  # preDNAT allow skips normal policy (which would drop)
        (out, node.ip, 8080),  # preDNAT no match (no end-of-tier drop) -> normal drops
        (out, node.ip, 22),  # failsafe comes before preDNAT
    ) == [False, True, False, True]


def test_nat_outgoing(dp: NftDataplane, lab: Lab) -> None:
    load(dp, lab, IPPoolUpdate("10.65.0.0/24", masquerade=True))
    w1, out_ip = lab.w1, lab.outside_ip
    assert reach((w1.netns, out_ip, 8080)) == [True]
    flows = conntrack(lab, "-p", "tcp", "--orig-src", w1.ip, "--orig-dst", out_ip)
    assert f"dst={lab.node.ip}" in flows, flows  # the reply goes to the node: masqueraded
    nsops.run(lab.node.netns, ["conntrack", "-F"], check=False)
    dp.on_update(IPPoolUpdate("10.65.0.0/24", masquerade=False))
    assert dp.apply().mode == "delta"
    assert reach((w1.netns, out_ip, 8080)) == [True]  # the outside routes back to the pool
    flows = conntrack(lab, "-p", "tcp", "--orig-src", w1.ip, "--orig-dst", out_ip)
    assert f"dst={w1.ip}" in flows and f"dst={lab.node.ip}" not in flows, flows


@pytest.mark.parametrize("name", sorted(samples.SAMPLES))
def test_every_golden_sample_loads_into_the_kernel(dp: NftDataplane, name: str) -> None:
    dp.replace_state(samples.SAMPLES[name]())
    dp.on_update(InSync())
    assert dp.apply().mode == "full"
    assert dp.verify() == []
    dp.replace_state(samples.scale(300, endpoints=3))  # and its replacement, in place
    assert dp.apply().mode in ("delta", "full")
    assert dp.verify() == []
