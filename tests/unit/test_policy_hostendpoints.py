"""Host endpoints in the reference evaluator, as the nft dataplane enforces them: failsafe
ports, untracked (doNotTrack), preDNAT and applyOnForward policy, DefaultEndpointToHostAction,
and the host's traffic to its own workloads. Workload-to-workload flows are untouched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tabby.policy.errors import PolicyError
from tabby.policy.evaluate import Verdict, evaluate, make_flow
from tabby.policy.matrix import reachability, reachability_naive
from tabby.policy.model import PolicySet
from tabby.resources.felix import (
    DEFAULT_FAILSAFE_INBOUND_HOST_PORTS,
    DEFAULT_FAILSAFE_OUTBOUND_HOST_PORTS,
)

V3 = "projectcalico.org/v3"
OUTSIDE = "192.0.2.9"  # no Calico endpoint has it: reaches workloads through a host endpoint


def res(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None,
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": V3, "kind": kind, "metadata": meta, "spec": spec}


def gnp(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("selector", "role == 'node'")
    return res("GlobalNetworkPolicy", name, spec)


def felix(name: str = "default", **spec: Any) -> dict[str, Any]:
    return res("FelixConfiguration", name, spec)


BASE = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
    res("WorkloadEndpoint", "a", {"orchestrator": "k8s", "node": "n1", "interfaceName": "cali1a",
                                  "ipNetworks": ["10.1.0.1/32", "fd00:1::1/128"]},
        namespace="x", labels={"app": "web"}),
    res("WorkloadEndpoint", "b", {"orchestrator": "k8s", "node": "n1", "interfaceName": "cali1b",
                                  "ipNetworks": ["10.1.0.2/32"]}, namespace="x",
        labels={"app": "client"}),
    res("WorkloadEndpoint", "c", {"orchestrator": "k8s", "node": "n2", "interfaceName": "cali2c",
                                  "ipNetworks": ["10.2.0.3/32"]}, namespace="x",
        labels={"app": "client"}),
    res("HostEndpoint", "n1-eth0", {"node": "n1", "interfaceName": "eth0",
                                    "expectedIPs": ["10.0.0.1", "fd00::1"]},
        labels={"role": "node"}),
    res("HostEndpoint", "n2-eth0", {"node": "n2", "interfaceName": "eth0",
                                    "expectedIPs": ["10.0.0.2"]}, labels={"role": "node"}),
]
DENY_ALL_HOSTS = gnp("deny-all-hosts", types=["Ingress", "Egress"],
                     ingress=[{"action": "Deny"}], egress=[{"action": "Deny"}])


def build(*extra: dict[str, Any]) -> PolicySet:
    ps = PolicySet.from_resources(BASE + list(extra))
    assert ps.warnings == []
    return ps


def check(ps: PolicySet, src: str, dst: str, protocol: str = "TCP", port: int | None = 80,
          **kw: Any) -> Verdict:
    if protocol.upper() in ("ICMP", "ICMPV6"):
        port = None
    return evaluate(ps, make_flow(ps, src, dst, protocol=protocol, port=port, **kw))


# -- failsafe ports -----------------------------------------------------------------------

@pytest.mark.parametrize("entry", DEFAULT_FAILSAFE_INBOUND_HOST_PORTS,
                         ids=lambda e: f"{e.protocol}:{e.port}")
def test_default_inbound_failsafes_allow_despite_deny_all(entry: Any) -> None:
    ps = build(DENY_ALL_HOSTS)
    v = check(ps, OUTSIDE, "n1-eth0", entry.protocol, entry.port)
    label = f"inbound {entry.protocol.lower()}:{entry.port}"
    assert v.allowed and v.traffic == "toHost"
    assert v.ingress.decider["stage"] == "failsafe"
    assert v.ingress.decider["failsafe"] == label


@pytest.mark.parametrize("entry", DEFAULT_FAILSAFE_OUTBOUND_HOST_PORTS,
                         ids=lambda e: f"{e.protocol}:{e.port}")
def test_default_outbound_failsafes_allow_despite_deny_all(entry: Any) -> None:
    ps = build(DENY_ALL_HOSTS)
    v = check(ps, "n1-eth0", OUTSIDE, entry.protocol, entry.port)
    assert v.allowed and v.traffic == "fromHost"
    assert v.egress.decider["failsafe"] == f"outbound {entry.protocol.lower()}:{entry.port}"


def test_failsafes_are_per_direction_and_policy_decides_the_rest() -> None:
    ps = build(DENY_ALL_HOSTS)
    v = check(ps, OUTSIDE, "n1-eth0", "TCP", 8080)
    assert not v.allowed
    assert v.ingress.decider == {"tier": "default", "policy": "deny-all-hosts", "rule": 0,
                                 "action": "Deny"}
    assert not check(ps, OUTSIDE, "n1-eth0", "UDP", 53).allowed  # 53 is outbound only
    assert not check(ps, "n1-eth0", OUTSIDE, "TCP", 22).allowed  # 22 is inbound only
    # A host endpoint with no policy at all: only the failsafes get in (default deny).
    ps = build()
    assert check(ps, OUTSIDE, "n1-eth0", "TCP", 22).allowed
    v = check(ps, OUTSIDE, "n1-eth0", "TCP", 8080)
    assert not v.allowed and v.ingress.decider == {"default": "deny: no policy or profile allowed"}


def test_custom_failsafe_lists_replace_the_defaults() -> None:
    ps = build(DENY_ALL_HOSTS, felix(failsafeInboundHostPorts=[{"protocol": "TCP", "port": 2222},
                                                              {"port": 2223}]))
    assert not check(ps, OUTSIDE, "n1-eth0", "TCP", 22).allowed
    v = check(ps, OUTSIDE, "n1-eth0", "TCP", 2222)
    assert v.allowed and v.ingress.decider["failsafe"] == "inbound tcp:2222"
    assert check(ps, OUTSIDE, "n1-eth0", "TCP", 2223).allowed  # protocol defaults to TCP
    assert check(ps, "n1-eth0", OUTSIDE, "UDP", 53).allowed  # outbound list left at defaults


def test_failsafe_net_limits_the_remote_address() -> None:
    ps = build(DENY_ALL_HOSTS, felix(
        failsafeInboundHostPorts=[{"protocol": "TCP", "port": 22, "net": "192.0.2.0/24"}],
        failsafeOutboundHostPorts=[{"protocol": "UDP", "port": 53, "net": "198.51.100.53/32"}]))
    v = check(ps, OUTSIDE, "n1-eth0", "TCP", 22)
    assert v.allowed and v.ingress.decider["failsafe"] == "inbound tcp:192.0.2.0/24:22"
    assert not check(ps, "198.51.100.1", "n1-eth0", "TCP", 22).allowed
    assert check(ps, "n1-eth0", "198.51.100.53", "UDP", 53).allowed
    assert not check(ps, "n1-eth0", OUTSIDE, "UDP", 53).allowed
    # An IPv4 net never matches IPv6 traffic.
    assert not check(ps, "2001:db8::9", "n1-eth0", "TCP", 22, ip_version=6).allowed


def test_empty_failsafe_list_disables_them() -> None:
    ps = build(DENY_ALL_HOSTS, felix(failsafeInboundHostPorts=[], failsafeOutboundHostPorts=[]))
    for port in (22, 179, 6443):
        assert not check(ps, OUTSIDE, "n1-eth0", "TCP", port).allowed
    assert not check(ps, "n1-eth0", OUTSIDE, "UDP", 53).allowed


def test_node_felix_configuration_overrides_default_field_by_field() -> None:
    ps = build(DENY_ALL_HOSTS, felix(failsafeOutboundHostPorts=[]),
               felix("node.n2", failsafeInboundHostPorts=[]))
    assert check(ps, OUTSIDE, "n1-eth0", "TCP", 22).allowed
    assert not check(ps, OUTSIDE, "n2-eth0", "TCP", 22).allowed
    assert not check(ps, "n2-eth0", OUTSIDE, "UDP", 53).allowed  # from `default`


def test_bad_felix_configuration_is_skipped_with_a_warning() -> None:
    ps = PolicySet.from_resources(BASE + [felix(failsafeInboundHostPorts=[{"port": 0}])])
    assert ps.warnings == ["FelixConfiguration default skipped: FelixConfiguration default "
                           "spec.failsafeInboundHostPorts[0].port: invalid value 0 (1-65535)"]
    assert check(ps, OUTSIDE, "n1-eth0", "TCP", 22).allowed  # the defaults stand


# -- applyOnForward -----------------------------------------------------------------------

def test_apply_on_forward_policies_only_for_forwarded_flows() -> None:
    ps = build(DENY_ALL_HOSTS)
    # Normal host endpoint policy does not see forwarded traffic; with no applyOnForward
    # policy selecting the host endpoint, forwarded traffic is allowed.
    v = check(ps, OUTSIDE, "x/a", "TCP", 8080)
    assert v.allowed and v.traffic == "forwarded"
    [fwd] = v.forward
    assert fwd.peer.endpoint is not None and fwd.peer.endpoint.key == "n1-eth0"
    assert fwd.stage == "forward" and fwd.decider["stage"] == "forward"
    ps = build(gnp("fwd", applyOnForward=True, types=["Ingress", "Egress"], ingress=[
        {"action": "Allow", "protocol": "TCP", "destination": {"ports": [8080]}}],
        egress=[{"action": "Allow", "protocol": "UDP"}]))
    v = check(ps, OUTSIDE, "x/a", "TCP", 8080)
    assert v.allowed and v.forward[0].decider == {"stage": "forward", "tier": "default",
                                                  "policy": "fwd", "rule": 0, "action": "Allow"}
    v = check(ps, OUTSIDE, "x/a", "TCP", 9090)  # selected, nothing allows: end of tier
    assert not v.allowed
    assert v.forward[0].decider == {"stage": "forward", "tier": "default",
                                    "default": "deny: end of tier"}
    assert v.ingress.allowed  # the workload's own policy is separate (kns.x allows)
    # Out of the cluster through the host endpoint: its applyOnForward egress rules.
    assert check(ps, "x/a", OUTSIDE, "UDP", 53).allowed
    assert not check(ps, "x/a", OUTSIDE, "TCP", 443).allowed
    # The same policy applies to the host's own traffic too (it is in the normal chain).
    assert check(ps, OUTSIDE, "n1-eth0", "TCP", 8080).allowed
    v = check(ps, OUTSIDE, "n1-eth0", "TCP", 9090)
    assert not v.allowed and "stage" not in v.ingress.decider
    # Workload to workload, on one node or across: no host endpoint stage.
    assert not check(ps, "x/c", "x/a", "TCP", 9090).forward


def test_forwarded_flow_needs_the_workload_policy_too() -> None:
    ps = build(gnp("fwd", applyOnForward=True, ingress=[{"action": "Allow"}]),
               res("NetworkPolicy", "a-deny", {"selector": "app == 'web'",
                                               "ingress": [{"action": "Deny"}]}, namespace="x"))
    v = check(ps, OUTSIDE, "x/a", "TCP", 8080)
    assert v.forward[0].allowed and not v.ingress.allowed and not v.allowed


def test_explicit_via_and_no_guess_when_a_node_has_several_host_endpoints() -> None:
    ps = build(gnp("fwd", applyOnForward=True, ingress=[{"action": "Deny"}]),
               res("HostEndpoint", "n1-eth1", {"node": "n1", "interfaceName": "eth1",
                                               "expectedIPs": ["10.9.0.1"]},
                   labels={"role": "other"}))
    assert check(ps, OUTSIDE, "x/a").forward == []  # which interface? unknown: not guessed
    v = check(ps, OUTSIDE, "x/a", via_in="n1-eth0")
    assert not v.allowed and v.forward[0].decider["policy"] == "fwd"
    assert check(ps, OUTSIDE, "x/a", via_in="n1-eth1").allowed
    # Host-to-host forwarding: in through one, out through the other, in that order.
    v = check(ps, OUTSIDE, "198.51.100.1", via_in="n1-eth1", via_out="n1-eth0")
    assert [(r.direction, r.peer.label) for r in v.forward] == [("Ingress", "n1-eth1"),
                                                                  ("Egress", "n1-eth0")]
    with pytest.raises(PolicyError, match="--via-in: 'x/a' is not a host endpoint"):
        make_flow(ps, OUTSIDE, "x/a", port=80, via_in="x/a")
    with pytest.raises(PolicyError, match="--via-in: n1-eth0 is a host endpoint"):
        make_flow(ps, OUTSIDE, "n1-eth0", port=80, via_in="n1-eth1")


# -- preDNAT ------------------------------------------------------------------------------

PRE_DNAT = gnp("pre", preDNAT=True, applyOnForward=True, ingress=[
    {"action": "Deny", "source": {"nets": ["198.51.100.0/24"]}},
    {"action": "Allow", "protocol": "TCP", "destination": {"ports": [30080]}}])


def test_pre_dnat_policy_for_traffic_to_the_host() -> None:
    ps = build(DENY_ALL_HOSTS, PRE_DNAT)
    v = check(ps, OUTSIDE, "n1-eth0", "TCP", 30080)  # allowed before normal policy
    assert v.allowed and v.ingress.decider == {"stage": "preDNAT", "tier": "default",
                                               "policy": "pre", "rule": 1, "action": "Allow"}
    v = check(ps, "198.51.100.7", "n1-eth0", "TCP", 30080)
    assert not v.allowed and v.ingress.decider["stage"] == "preDNAT"
    assert v.ingress.decider["rule"] == 0
    # No preDNAT decision: on to normal policy (no end-of-tier drop in the preDNAT stage).
    v = check(ps, OUTSIDE, "n1-eth0", "TCP", 8080)
    assert not v.allowed and v.ingress.decider["policy"] == "deny-all-hosts"
    assert [s.stage for s in v.ingress.steps] == ["preDNAT", "preDNAT", None]
    assert check(ps, "198.51.100.7", "n1-eth0", "TCP", 22).allowed  # failsafe first
    # preDNAT is ingress only: the host's own egress never meets it.
    assert not any(s.stage == "preDNAT" for s in check(ps, "n1-eth0", OUTSIDE).egress.steps)


def test_pre_dnat_policy_for_forwarded_traffic() -> None:
    ps = build(PRE_DNAT, gnp("fwd", applyOnForward=True, ingress=[{"action": "Deny"}]))
    v = check(ps, "198.51.100.7", "x/a", "TCP", 30080)
    assert not v.allowed and v.forward[0].decider["stage"] == "preDNAT"
    # A preDNAT Allow skips the forward ingress policy (not the workload's own).
    v = check(ps, OUTSIDE, "x/a", "TCP", 30080)
    assert v.allowed and v.forward[0].decider["policy"] == "pre"
    assert v.forward[0].steps[-1].action == "Skip"
    # No preDNAT decision: the applyOnForward policy decides.
    assert check(ps, OUTSIDE, "x/a", "TCP", 8080).forward[0].decider["policy"] == "fwd"
    # Failsafe ports do not open forwarded traffic: they only skip untracked/preDNAT.
    v = check(ps, "198.51.100.7", "x/a", "TCP", 22)
    assert not v.allowed and v.forward[0].decider["policy"] == "fwd"
    assert v.forward[0].steps[0].action == "Skip"


# -- doNotTrack ---------------------------------------------------------------------------

UNTRACKED = gnp("raw", doNotTrack=True, applyOnForward=True, types=["Ingress", "Egress"],
                ingress=[{"action": "Allow", "protocol": "TCP",
                          "destination": {"ports": [11211]}},
                         {"action": "Deny", "protocol": "TCP",
                          "destination": {"ports": [30080]}}],
                egress=[{"action": "Allow", "protocol": "TCP", "source": {"ports": [11211]}},
                        {"action": "Deny", "protocol": "UDP"},
                        {"action": "Deny", "protocol": "TCP", "destination": {"ports": [5000]}}])


def test_do_not_track_both_directions_evaluated_separately() -> None:
    ps = build(DENY_ALL_HOSTS, UNTRACKED, PRE_DNAT)
    v = check(ps, OUTSIDE, "n1-eth0", "TCP", 11211)
    assert v.allowed and v.ingress.decider["stage"] == "untracked"
    v = check(ps, OUTSIDE, "n1-eth0", "TCP", 30080)  # untracked Deny before preDNAT Allow
    assert not v.allowed and v.ingress.decider["stage"] == "untracked"
    # The reply direction needs its own (egress) rule: nothing is tracked.
    v = check(ps, "n1-eth0", OUTSIDE, "TCP", 40000, src_port=11211)
    assert v.allowed and v.egress.decider["stage"] == "untracked"
    v = check(ps, "n1-eth0", OUTSIDE, "UDP", 5000)
    assert not v.allowed and v.egress.decider["stage"] == "untracked"
    # No untracked decision: on to normal policy.
    v = check(ps, "n1-eth0", OUTSIDE, "TCP", 443)
    assert not v.allowed and v.egress.decider["policy"] == "deny-all-hosts"
    # A reply of a failsafe connection (source port 22) skips untracked policy only.
    v = check(ps, "n1-eth0", OUTSIDE, "TCP", 5000)
    assert not v.allowed and v.egress.decider["stage"] == "untracked"
    v = check(ps, "n1-eth0", OUTSIDE, "TCP", 5000, src_port=22)
    assert v.egress.steps[0].action == "Skip"
    assert not v.allowed and v.egress.decider["policy"] == "deny-all-hosts"
    assert check(ps, OUTSIDE, "n1-eth0", "TCP", 22).allowed  # failsafe before untracked


def test_untracked_allow_skips_only_forward_ingress_policy() -> None:
    # As in Felix's filter FORWARD chain: an untracked Allow skips the incoming host
    # endpoint's forward policy, never the workload's own ingress policy.
    ps = build(UNTRACKED, gnp("fwd", applyOnForward=True, ingress=[{"action": "Deny"}]),
               res("NetworkPolicy", "a-deny", {
                   "selector": "app == 'web'", "ingress": [{"action": "Deny", "protocol": "TCP",
                                                            "destination": {"ports": [11211]}}]},
                   namespace="x"))
    v = check(ps, OUTSIDE, "x/a", "TCP", 11211)
    assert v.forward[0].allowed and v.forward[0].decider["stage"] == "untracked"
    assert v.forward[0].steps[-1].action == "Skip"
    assert not v.allowed and v.ingress.decider["policy"] == "x/a-deny"
    assert not check(ps, OUTSIDE, "x/a", "TCP", 30080).allowed  # untracked Deny
    assert not check(ps, OUTSIDE, "x/a", "TCP", 8080).allowed  # the forward policy


# -- the cluster's own tunnels ------------------------------------------------------------

def node(name: str, ip: str) -> dict[str, Any]:
    return res("Node", name, {"bgp": {"ipv4Address": f"{ip}/24"}})


def pool(**modes: str) -> dict[str, Any]:
    return res("IPPool", "p", {"cidr": "10.1.0.0/16", **modes})


def test_tunnel_packets_between_known_nodes_pass_host_policy() -> None:
    # As the dataplane's tunnel rules: ahead of normal host endpoint policy, after the
    # untracked and preDNAT stages; only from/to known nodes, only for a pool's encap.
    ps = build(DENY_ALL_HOSTS, node("n2", "10.0.0.2"), pool(vxlanMode="Always"))
    v = check(ps, "10.0.0.2", "n1-eth0", "UDP", 4789)
    assert v.allowed and v.ingress.decider["stage"] == "tunnel"
    v = check(ps, "n1-eth0", "10.0.0.2", "UDP", 4789)
    assert v.allowed and v.egress.decider["stage"] == "tunnel"
    assert not check(ps, "10.0.0.99", "n1-eth0", "UDP", 4789).allowed  # not a node
    assert not check(ps, "10.0.0.2", "n1-eth0", "UDP", 4790).allowed  # not VXLAN
    assert not check(ps, "10.0.0.2", "n1-eth0", "4", None).allowed  # no IPIP pool
    ipip = build(DENY_ALL_HOSTS, node("n2", "10.0.0.2"), pool(ipipMode="CrossSubnet"))
    assert check(ipip, "10.0.0.2", "n1-eth0", "4", None).ingress.decider["stage"] == "tunnel"
    no_pool = build(DENY_ALL_HOSTS, node("n2", "10.0.0.2"))
    assert not check(no_pool, "10.0.0.2", "n1-eth0", "UDP", 4789).allowed
    # An untracked Deny comes first (the raw table), as in the dataplane.
    raw = build(DENY_ALL_HOSTS, node("n2", "10.0.0.2"), pool(vxlanMode="Always"),
                gnp("raw-deny", doNotTrack=True, applyOnForward=True,
                    ingress=[{"action": "Deny", "protocol": "UDP"}]))
    v = check(raw, "10.0.0.2", "n1-eth0", "UDP", 4789)
    assert not v.allowed and v.ingress.decider["stage"] == "untracked"


# -- workload <-> own host ----------------------------------------------------------------

@pytest.mark.parametrize("action,allowed", [(None, False), ("Drop", False), ("Accept", True),
                                            ("Return", True)])
def test_default_endpoint_to_host_action(action: str | None, allowed: bool) -> None:
    extra = [felix(defaultEndpointToHostAction=action)] if action else []
    ps = build(DENY_ALL_HOSTS, *extra)  # host endpoint policy is not consulted
    v = check(ps, "x/a", "n1-eth0", "TCP", 8080)
    assert v.allowed is allowed and v.traffic == "workloadToHost"
    assert v.ingress.decider["stage"] == "endpointToHost"
    assert v.ingress.decider["action"] == (action or "Drop")
    assert v.egress.decider == {"profile": "kns.x", "rule": 0, "action": "Allow"}
    # Another node's host: that host endpoint's policy, not the action.
    v = check(ps, "x/c", "n1-eth0", "TCP", 8080)
    assert not v.allowed and v.ingress.decider["policy"] == "deny-all-hosts"


def test_endpoint_to_host_after_workload_egress_policy() -> None:
    ps = build(felix(defaultEndpointToHostAction="Accept"),
               res("NetworkPolicy", "a-out", {"selector": "app == 'web'", "types": ["Egress"],
                                              "egress": [{"action": "Deny"}]}, namespace="x"))
    v = check(ps, "x/a", "n1-eth0", "TCP", 8080)
    assert not v.allowed and v.egress.decider["policy"] == "x/a-out"
    # ICMPv6 neighbour discovery to the host skips the egress policy, even under Drop.
    ps = build(res("NetworkPolicy", "a-out", {"selector": "app == 'web'", "types": ["Egress"],
                                              "egress": [{"action": "Deny"}]}, namespace="x"))
    v = check(ps, "x/a", "n1-eth0", "ICMPv6", icmp_type=135, ip_version=6)
    assert v.allowed and v.egress.decider["stage"] == "endpointToHost"
    with pytest.raises(PolicyError, match="defaultEndpointToHostAction"):
        from tabby.policy.host import HostConfig
        HostConfig.from_spec({"defaultEndpointToHostAction": "Reject"})


def test_host_to_its_own_workloads_and_itself_is_not_policed() -> None:
    ps = build(DENY_ALL_HOSTS, res("NetworkPolicy", "a-deny", {
        "selector": "app == 'web'", "ingress": [{"action": "Deny"}]}, namespace="x"))
    v = check(ps, "n1-eth0", "x/a", "TCP", 8080)
    assert v.allowed and v.traffic == "local" and v.ingress.decider["stage"] == "local"
    v = check(ps, "n2-eth0", "x/a", "TCP", 8080)  # another node: both policies apply
    assert not v.allowed and v.egress.decider["policy"] == "deny-all-hosts"
    assert v.ingress.decider["policy"] == "x/a-deny"


def test_ipv6_neighbour_discovery_never_policed_on_host_endpoints() -> None:
    ps = build(DENY_ALL_HOSTS)
    v = check(ps, "2001:db8::9", "n1-eth0", "ICMPv6", icmp_type=135)
    assert v.allowed and v.ingress.decider["stage"] == "failsafe"
    assert not check(ps, "2001:db8::9", "n1-eth0", "ICMPv6", icmp_type=128).allowed


# -- workload to workload: unchanged; the matrix agrees -----------------------------------

def test_workload_pairs_unchanged_and_matrix_agrees_with_host_endpoints() -> None:
    extra = [DENY_ALL_HOSTS, UNTRACKED, PRE_DNAT, felix(defaultEndpointToHostAction="Accept"),
             gnp("fwd", applyOnForward=True, types=["Ingress", "Egress"],
                 ingress=[{"action": "Deny"}], egress=[{"action": "Deny"}])]
    plain = PolicySet.from_resources(BASE[:4])
    ps = build(*extra)
    weps = ps.workload_endpoints()
    for s in weps:
        for d in weps:
            if s is not d:
                a, b = check(plain, s.key, d.key, "TCP", 8080), check(ps, s.key, d.key, "TCP",
                                                                       8080)
                assert a.to_json() == b.to_json()
    eps = sorted(ps.endpoints.values(), key=lambda e: e.key)
    for port in (22, 8080, 11211, 30080):
        assert reachability(ps, eps, protocol=6, port=port) == \
            reachability_naive(ps, eps, protocol=6, port=port)


# -- tabby policy explain -----------------------------------------------------------------

def test_explain_shows_failsafe_forward_and_pre_dnat(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tabby.datastore.client")
    import yaml

    from tabby.cli.main import main

    url = f"sqlite://{tmp_path / 'tabby.db'}"
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump_all(BASE + [DENY_ALL_HOSTS, PRE_DNAT,
                                                   gnp("fwd", applyOnForward=True,
                                                       ingress=[{"action": "Deny"}])]))
    assert main(["--datastore", url, "apply", "-f", str(manifest)]) == 0

    def explain(*argv: str) -> str:
        capsys.readouterr()
        assert main(["--datastore", url, "policy", "explain", *argv]) == 0
        return capsys.readouterr().out

    out = json.loads(explain("--from", OUTSIDE, "--to", "n1-eth0", "--port", "22", "-o", "json"))
    assert out["verdict"] == "Allow" and out["traffic"] == "toHost"
    assert out["ingress"]["decider"]["failsafe"] == "inbound tcp:22"
    text = explain("--from", OUTSIDE, "--to", "n1-eth0", "--port", "22")
    assert "decided by: failsafe inbound tcp:22" in text and "traffic: to a host" in text

    out = json.loads(explain("--from", OUTSIDE, "--to", "x/a", "--port", "8080", "-o", "json"))
    assert out["verdict"] == "Deny" and out["flow"]["viaIn"] == "n1-eth0"
    assert out["forward"][0]["decider"] == {"stage": "forward", "tier": "default",
                                            "policy": "fwd", "rule": 0, "action": "Deny"}
    text = explain("--from", OUTSIDE, "--to", "x/a", "--port", "8080")
    assert "forwarded ingress through host endpoint n1-eth0: Deny" in text
    assert "decided by: forward (applyOnForward): tier default policy fwd rule 0: Deny" in text

    text = explain("--from", OUTSIDE, "--to", "n1-eth0", "--port", "30080")
    assert "decided by: preDNAT: tier default policy pre rule 1: Allow" in text
    text = explain("--from", "x/a", "--to", "n1-eth0", "--port", "8080")
    assert "endpoint to host: Drop (DefaultEndpointToHostAction Drop)" in text
