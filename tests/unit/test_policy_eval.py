"""Calico policy semantics in the reference evaluator: tiers, actions, profiles, matching.

Every scenario is also checked against the fast matrix where the flow is between two
workload endpoints (`check` does both).
"""

from __future__ import annotations

from typing import Any

import pytest

from tabby.policy.errors import PolicyError
from tabby.policy.evaluate import Verdict, evaluate, make_flow
from tabby.policy.matrix import reachability
from tabby.policy.model import PolicySet
from tabby.policy.rules import PORT_PROTOCOLS, protocol_number

V3 = "projectcalico.org/v3"


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def wep(key: str, ip: str, labels: dict[str, str] | None = None, *,
        profiles: list[str] | None = None, ports: list[dict[str, Any]] | None = None,
        sa: str | None = None) -> dict[str, Any]:
    namespace, name = key.split("/")
    spec: dict[str, Any] = {"orchestrator": "k8s", "node": "n1", "ipNetworks": [ip],
                            "interfaceName": f"cali{namespace}{name}"[:15]}
    if profiles is not None:
        spec["profiles"] = profiles
    if ports:
        spec["ports"] = ports
    if sa:
        spec["serviceAccountName"] = sa
    return {"apiVersion": V3, "kind": "WorkloadEndpoint",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": spec}


def hep(name: str, ips: list[str], labels: dict[str, str] | None = None,
        profiles: list[str] | None = None) -> dict[str, Any]:
    # Each on a node of its own: traffic between the workloads (node n1) and these hosts
    # is then remote traffic, which host endpoint policy sees (a workload to its own
    # host meets DefaultEndpointToHostAction instead; see test_policy_hostendpoints.py).
    spec: dict[str, Any] = {"node": f"{name}-node", "interfaceName": "eth0", "expectedIPs": ips}
    if profiles:
        spec["profiles"] = profiles
    return {"apiVersion": V3, "kind": "HostEndpoint",
            "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def gnp(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": V3, "kind": "GlobalNetworkPolicy", "metadata": {"name": name},
            "spec": spec}


def netpol(key: str, **spec: Any) -> dict[str, Any]:
    namespace, name = key.split("/")
    return {"apiVersion": V3, "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def tier(name: str, order: float | None = None, action: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if order is not None:
        spec["order"] = order
    if action:
        spec["defaultAction"] = action
    return {"apiVersion": V3, "kind": "Tier", "metadata": {"name": name}, "spec": spec}


def profile(name: str, ingress: list[Any] | None = None, egress: list[Any] | None = None,
            labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    if labels:
        spec["labelsToApply"] = labels
    return {"apiVersion": V3, "kind": "Profile", "metadata": {"name": name}, "spec": spec}


def netset(name: str, nets: list[str], labels: dict[str, str],
           namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": V3, "kind": "NetworkSet" if namespace else "GlobalNetworkSet",
            "metadata": meta, "spec": {"nets": nets}}


BASE = [
    ns("x", team="blue"), ns("y", team="red"),
    wep("x/a", "10.1.0.1/32", {"app": "web"}),
    wep("x/b", "10.1.0.2/32", {"app": "client", "role": "trusted"}),
    wep("x/c", "10.1.0.3/32", {"app": "client"}),
    wep("y/a", "10.2.0.1/32", {"app": "web"}),
    wep("y/b", "10.2.0.2/32", {"app": "client", "role": "trusted"}),
]


def build(*extra: dict[str, Any], base: list[dict[str, Any]] | None = None) -> PolicySet:
    ps = PolicySet.from_resources((BASE if base is None else base) + list(extra))
    assert ps.warnings == []
    return ps


def check(ps: PolicySet, src: str, dst: str, protocol: str = "TCP", port: int | None = 80,
          **kw: Any) -> Verdict:
    """Evaluate one flow; for workload pairs, also insist the matrix agrees."""
    if protocol_number(protocol) not in PORT_PROTOCOLS:
        port = None
    v = evaluate(ps, make_flow(ps, src, dst, protocol=protocol, port=port, **kw))
    s, d = ps.endpoint(src), ps.endpoint(dst)
    if s is not None and d is not None and s.kind == d.kind == "WorkloadEndpoint" and s is not d:
        eps = [s, d]
        flow = make_flow(ps, src, dst, protocol=protocol, port=port, **kw)
        m = reachability(ps, eps, protocol=protocol_number(protocol), port=port,
                         icmp_type=kw.get("icmp_type"), icmp_code=kw.get("icmp_code"),
                         src_port=kw.get("src_port"), ip_version=flow.ip_version)
        assert m[src][dst] == v.allowed, f"matrix disagrees for {src} -> {dst}"
    return v


# -- tiers and actions --------------------------------------------------------------------

SEC_TIER = tier("security", 100)


def test_pass_goes_to_next_tier_then_profile() -> None:
    ps = build(SEC_TIER, gnp("security.gate", tier="security", selector="app == 'web'",
                             ingress=[{"action": "Pass", "source": {"selector": "role == 'trusted'"}},
                                      {"action": "Deny"}]))
    v = check(ps, "x/b", "x/a")
    assert v.allowed
    assert v.ingress.decider == {"profile": "kns.x", "rule": 0, "action": "Allow"}
    assert [s.action for s in v.ingress.steps] == ["Pass", "Allow"]
    v = check(ps, "x/c", "x/a")
    assert not v.allowed
    assert v.ingress.decider == {"tier": "security", "policy": "security.gate", "rule": 1,
                                 "action": "Deny"}


def test_end_of_tier_deny_even_though_profile_allows() -> None:
    ps = build(SEC_TIER, gnp("gate", tier="security", selector="app == 'web'",
                             ingress=[{"action": "Allow", "protocol": "UDP"}]))
    v = check(ps, "x/b", "x/a")
    assert not v.allowed
    assert v.ingress.decider == {"tier": "security", "default": "deny: end of tier"}
    assert check(ps, "x/b", "x/a", "UDP").allowed


def test_tier_default_action_pass() -> None:
    ps = build(tier("security", 100, "Pass"),
               gnp("gate", tier="security", selector="app == 'web'",
                   ingress=[{"action": "Deny", "protocol": "UDP"}]))
    v = check(ps, "x/b", "x/a")
    assert v.allowed and v.ingress.decider["profile"] == "kns.x"
    assert [s.action for s in v.ingress.steps] == ["NoMatch", "EndOfTier", "Allow"]
    assert not check(ps, "x/b", "x/a", "UDP").allowed


def test_allow_ends_all_tiers() -> None:
    ps = build(SEC_TIER,
               gnp("early-allow", tier="security", selector="app == 'web'",
                   ingress=[{"action": "Allow"}]),
               netpol("x/late-deny", selector="app == 'web'", ingress=[{"action": "Deny"}]))
    v = check(ps, "x/c", "x/a")
    assert v.allowed and v.ingress.decider["policy"] == "early-allow"
    ps = build(SEC_TIER,
               netpol("x/late-deny", selector="app == 'web'", ingress=[{"action": "Deny"}]))
    assert not check(ps, "x/c", "x/a").allowed


def test_log_continues() -> None:
    ps = build(gnp("log", selector="app == 'web'", ingress=[
        {"action": "Log"}, {"action": "Deny", "protocol": "TCP", "destination": {"ports": [81]}},
        {"action": "Log", "protocol": "TCP"}, {"action": "Allow"}]))
    v = check(ps, "x/b", "x/a")
    assert v.allowed
    assert [(s.action, s.rule) for s in v.ingress.steps] == [("Log", 0), ("Log", 2), ("Allow", 3)]
    v = check(ps, "x/b", "x/a", port=81)
    assert not v.allowed and v.ingress.decider["rule"] == 1


def test_policy_without_matching_rule_falls_through_to_next_policy() -> None:
    ps = build(gnp("first", order=1, selector="app == 'web'",
                   ingress=[{"action": "Deny", "protocol": "UDP"}]),
               gnp("second", order=2, selector="app == 'web'", ingress=[{"action": "Allow"}]))
    v = check(ps, "x/b", "x/a")
    assert v.allowed and v.ingress.decider["policy"] == "second"
    assert not check(ps, "x/b", "x/a", "UDP").allowed


# -- ordering -----------------------------------------------------------------------------

def test_global_and_namespaced_by_order() -> None:
    deny81 = gnp("deny-81", order=10, selector="all()",
                 ingress=[{"action": "Deny", "protocol": "TCP", "destination": {"ports": [81]}}])
    allow = netpol("x/allow", order=100, selector="app == 'web'", ingress=[{"action": "Allow"}])
    ps = build(deny81, allow)
    assert check(ps, "x/b", "x/a").allowed
    assert not check(ps, "x/b", "x/a", port=81).allowed
    early = netpol("x/allow", order=5, selector="app == 'web'", ingress=[{"action": "Allow"}])
    ps = build(deny81, early)
    assert check(ps, "x/b", "x/a", port=81).allowed
    # y/a is not selected by the namespaced policy; deny-81 selects it, port 80 -> end of tier.
    assert not check(ps, "y/b", "y/a").allowed


def test_order_ties_broken_by_name_then_namespace_then_kind() -> None:
    ps = build(gnp("b-allow", order=50, selector="app == 'web'", ingress=[{"action": "Allow"}]),
               gnp("a-deny", order=50, selector="app == 'web'", ingress=[{"action": "Deny"}]))
    assert check(ps, "x/b", "x/a").ingress.decider["policy"] == "a-deny"
    # "p//GlobalNetworkPolicy" < "p/x/NetworkPolicy": the global one goes first.
    ps = build(netpol("x/p", order=50, selector="app == 'web'", ingress=[{"action": "Allow"}]),
               gnp("p", order=50, selector="app == 'web'", ingress=[{"action": "Deny"}]))
    assert check(ps, "x/b", "x/a").ingress.decider["policy"] == "p"


def test_policy_without_order_goes_last() -> None:
    ps = build(gnp("a-unordered", selector="app == 'web'", ingress=[{"action": "Deny"}]),
               gnp("z-ordered", order=1e9, selector="app == 'web'", ingress=[{"action": "Allow"}]))
    assert check(ps, "x/b", "x/a").ingress.decider["policy"] == "z-ordered"


def test_tiers_without_order_after_ordered_ties_by_name() -> None:
    pols = [gnp(f"{t}.p", tier=t, selector="app == 'web'", ingress=[{"action": "Pass"}])
            for t in ("t-b", "t-a", "t-c", "t-d")]
    ps = build(tier("t-b"), tier("t-a"), tier("t-c", 5), tier("t-d", 5), *pols)
    v = check(ps, "x/b", "x/a")
    assert [s.tier for s in v.ingress.steps if s.tier] == ["t-c", "t-d", "t-a", "t-b"]
    assert v.allowed  # every tier passes, then the kns profile


def test_default_tier_is_order_one_million() -> None:
    ps = build(tier("after", 2_000_000),
               gnp("after.deny", tier="after", selector="app == 'web'", ingress=[{"action": "Deny"}]),
               gnp("default.pass", selector="app == 'web'", ingress=[{"action": "Pass"}]))
    v = check(ps, "x/b", "x/a")
    assert [s.tier for s in v.ingress.steps] == ["default", "after"]
    assert not v.allowed


# -- profiles -----------------------------------------------------------------------------

def test_profiles_in_order_and_deny() -> None:
    base = [wep("x/a", "10.1.0.1/32", profiles=["p-deny", "p-allow"]),
            wep("x/b", "10.1.0.2/32", profiles=["p-skip", "p-allow", "p-deny"]),
            profile("p-deny", ingress=[{"action": "Deny"}], egress=[{"action": "Deny"}]),
            profile("p-allow", ingress=[{"action": "Allow"}], egress=[{"action": "Allow"}]),
            profile("p-skip", ingress=[{"action": "Allow", "protocol": "UDP"}],
                    egress=[{"action": "Pass"}, {"action": "Deny"}])]
    ps = build(base=base)
    v = check(ps, "x/b", "x/a")
    assert not v.allowed
    assert v.egress.decider == {"profile": "p-allow", "rule": 0, "action": "Allow"}
    assert v.ingress.decider == {"profile": "p-deny", "rule": 0, "action": "Deny"}
    v = check(ps, "x/a", "x/b")
    assert not v.allowed and v.egress.decider["profile"] == "p-deny"
    assert v.ingress.decider["profile"] == "p-allow"


def test_labels_to_apply_inherited_own_label_wins() -> None:
    base = [profile("blue", ingress=[{"action": "Allow"}], egress=[{"action": "Allow"}],
                    labels={"team": "blue", "env": "prod"}),
            wep("x/a", "10.1.0.1/32", {"app": "web"}, profiles=["blue"]),
            wep("x/b", "10.1.0.2/32", {"team": "red"}, profiles=["blue"]),
            wep("x/c", "10.1.0.3/32", {}, profiles=["blue"])]
    ps = build(gnp("team", selector="app == 'web'",
                   ingress=[{"action": "Allow", "source": {"selector": "team == 'blue'"}}]),
               base=base)
    assert ps.endpoint("x/b").labels["team"] == "red"
    assert ps.endpoint("x/c").labels["env"] == "prod"
    assert check(ps, "x/c", "x/a").allowed
    assert not check(ps, "x/b", "x/a").allowed


def test_endpoint_with_neither_policy_nor_profile_is_denied() -> None:
    base = [wep("q/a", "10.9.0.1/32"), wep("q/b", "10.9.0.2/32")]
    ps = build(base=base)
    v = check(ps, "q/a", "q/b")
    assert not v.allowed
    assert v.egress.decider == {"default": "deny: no policy or profile allowed"}
    assert v.ingress.decider == {"default": "deny: no policy or profile allowed"}


def test_missing_profile_denies() -> None:
    ps = build(base=[wep("x/a", "10.1.0.1/32", profiles=["nope"]),
                     wep("x/b", "10.1.0.2/32", profiles=["nope"])])
    v = check(ps, "x/b", "x/a")
    assert not v.allowed and v.ingress.steps[0].action == "MissingProfile"


# -- selectors and addresses --------------------------------------------------------------

def test_global_network_set_by_label() -> None:
    ps = build(netset("dbs", ["192.168.50.0/24"], {"role": "db"}),
               gnp("from-db", selector="app == 'web'",
                   ingress=[{"action": "Allow", "source": {"selector": "role == 'db'"}}]))
    assert check(ps, "192.168.50.7", "x/a").allowed
    v = check(ps, "192.168.51.7", "x/a")
    assert not v.allowed and v.egress.decider["default"].startswith("allow: not a Calico")


def test_namespaced_network_set_scoped_to_namespace() -> None:
    sets = netset("ext", ["172.16.0.0/16"], {"kind": "partner"}, namespace="x")
    rule = [{"action": "Allow", "source": {"selector": "kind == 'partner'"}}]
    ps = build(sets, netpol("x/in-x", selector="app == 'web'", ingress=rule),
               netpol("y/in-y", selector="app == 'web'", ingress=rule))
    assert check(ps, "172.16.1.1", "x/a").allowed
    assert not check(ps, "172.16.1.1", "y/a").allowed
    # The set inherits the kns.x profile labels, so a namespaceSelector finds it too.
    ps = build(sets, gnp("g", selector="app == 'web'", ingress=[
        {"action": "Allow", "source": {"namespaceSelector": "team == 'blue'",
                                       "selector": "kind == 'partner'"}}]))
    assert check(ps, "172.16.1.1", "y/a").allowed


def test_not_selector_versus_negated_selector() -> None:
    not_sel = gnp("n", selector="app == 'web'",
                  ingress=[{"action": "Allow", "source": {"notSelector": "role == 'trusted'"}}])
    neg_sel = gnp("n", selector="app == 'web'",
                  ingress=[{"action": "Allow", "source": {"selector": "role != 'trusted'"}}])
    ps_not, ps_neg = build(not_sel), build(neg_sel)
    # A non-Calico address: notSelector matches it, a (negated) positive selector does not.
    assert check(ps_not, "8.8.8.8", "x/a").allowed
    assert not check(ps_neg, "8.8.8.8", "x/a").allowed
    for ps in (ps_not, ps_neg):
        assert check(ps, "x/c", "x/a").allowed
        assert not check(ps, "x/b", "x/a").allowed


def test_not_selector_in_namespaced_policy_scopes_to_namespace() -> None:
    ps = build(netpol("x/n", selector="app == 'web'",
                      ingress=[{"action": "Allow", "source": {"notSelector": "role == 'trusted'"}}]))
    assert check(ps, "x/c", "x/a").allowed
    assert not check(ps, "y/a", "x/a").allowed  # other namespace
    assert not check(ps, "8.8.8.8", "x/a").allowed  # not in the namespace at all


def test_nets_and_not_nets() -> None:
    ps = build(gnp("n", selector="app == 'web'", ingress=[{"action": "Allow", "source": {
        "nets": ["10.1.0.0/16", "192.168.0.0/16"], "notNets": ["10.1.0.3/32"]}}]))
    assert check(ps, "x/b", "x/a").allowed
    assert not check(ps, "x/c", "x/a").allowed
    assert check(ps, "192.168.9.9", "x/a").allowed
    assert not check(ps, "y/b", "x/a").allowed


def test_destination_nets_in_egress() -> None:
    ps = build(gnp("out", selector="app == 'client'", types=["Egress"], egress=[
        {"action": "Deny", "destination": {"nets": ["10.2.0.0/16"]}}, {"action": "Allow"}]))
    assert check(ps, "x/b", "x/a").allowed
    v = check(ps, "x/b", "y/a")
    assert not v.allowed and v.egress.decider["rule"] == 0


def test_not_ports_and_ranges() -> None:
    ps = build(gnp("n", selector="app == 'web'", ingress=[{"action": "Allow", "protocol": "TCP",
               "destination": {"notPorts": [81, "8000:9000"]}}]))
    assert check(ps, "x/b", "x/a", port=80).allowed
    assert not check(ps, "x/b", "x/a", port=81).allowed
    assert not check(ps, "x/b", "x/a", port=8500).allowed
    assert check(ps, "x/b", "x/a", port=9001).allowed
    assert not check(ps, "x/b", "x/a", "UDP", port=80).allowed


def test_source_ports() -> None:
    ps = build(gnp("n", selector="app == 'web'", ingress=[
        {"action": "Allow", "protocol": "UDP", "source": {"ports": [53]}}]))
    assert check(ps, "x/b", "x/a", "UDP", port=4000, src_port=53).allowed
    assert not check(ps, "x/b", "x/a", "UDP", port=4000, src_port=54).allowed
    assert not check(ps, "x/b", "x/a", "UDP", port=4000).allowed  # unknown source port


def test_protocol_and_not_protocol() -> None:
    ps = build(gnp("n", selector="app == 'web'", ingress=[
        {"action": "Allow", "notProtocol": "UDP"}]))
    assert check(ps, "x/b", "x/a").allowed
    assert check(ps, "x/b", "x/a", "SCTP", port=80).allowed
    assert check(ps, "x/b", "x/a", "132", port=80).allowed
    assert not check(ps, "x/b", "x/a", "UDP").allowed


def test_icmp_type_and_code() -> None:
    ps = build(gnp("n", selector="app == 'web'", ingress=[
        {"action": "Deny", "protocol": "ICMP", "notICMP": {"type": 8}},
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}}]))
    assert check(ps, "x/b", "x/a", "ICMP", icmp_type=8, icmp_code=0).allowed
    assert not check(ps, "x/b", "x/a", "ICMP", icmp_type=8, icmp_code=1).allowed
    v = check(ps, "x/b", "x/a", "ICMP", icmp_type=0, icmp_code=0)
    assert not v.allowed and v.ingress.decider["rule"] == 0


def test_named_ports_respect_protocol() -> None:
    ports = [{"name": "dns", "protocol": "UDP", "port": 53},
             {"name": "dns-tcp", "protocol": "TCP", "port": 53},
             {"name": "web", "protocol": "TCP", "port": 8080}]
    base = BASE + [wep("x/d", "10.1.0.4/32", {"app": "dns"}, ports=ports)]
    ps = build(gnp("n", selector="app == 'dns'", ingress=[
        {"action": "Allow", "protocol": "UDP", "destination": {"ports": ["dns"]}},
        {"action": "Allow", "destination": {"ports": ["web"]}}]), base=base)
    assert check(ps, "x/b", "x/d", "UDP", port=53).allowed
    assert not check(ps, "x/b", "x/d", "TCP", port=53).allowed
    assert check(ps, "x/b", "x/d", "TCP", port=8080).allowed
    assert not check(ps, "x/b", "x/d", "UDP", port=8080).allowed


def test_named_port_in_egress_follows_destination_selector() -> None:
    ports = [{"name": "web", "protocol": "TCP", "port": 8080}]
    base = [ns("x"), wep("x/a", "10.1.0.1/32", {"app": "web"}, ports=ports),
            wep("x/b", "10.1.0.2/32", {"app": "other"}, ports=ports),
            wep("x/c", "10.1.0.3/32", {"app": "client"})]
    ps = build(netpol("x/out", selector="app == 'client'", types=["Egress"], egress=[
        {"action": "Allow", "protocol": "TCP",
         "destination": {"selector": "app == 'web'", "ports": ["web"]}}]), base=base)
    assert check(ps, "x/c", "x/a", port=8080).allowed
    assert not check(ps, "x/c", "x/b", port=8080).allowed


def test_service_accounts() -> None:
    base = [ns("x"), wep("x/a", "10.1.0.1/32", {"app": "web"}),
            wep("x/b", "10.1.0.2/32", sa="frontend"), wep("x/c", "10.1.0.3/32", sa="batch")]
    ps = build(netpol("x/sa", selector="app == 'web'", ingress=[
        {"action": "Allow", "source": {"serviceAccounts": {"names": ["frontend"]}}}]), base=base)
    assert check(ps, "x/b", "x/a").allowed
    assert not check(ps, "x/c", "x/a").allowed


def test_ip_version_filters() -> None:
    ps = build(gnp("n", selector="app == 'web'", ingress=[
        {"action": "Allow", "ipVersion": 6},
        {"action": "Deny", "source": {"notNets": ["fd00::/8"]}},  # v6-only CIDRs: skipped on v4
        {"action": "Allow", "protocol": "TCP"}]))
    v = check(ps, "x/b", "x/a")
    assert v.allowed and v.ingress.decider["rule"] == 2


def test_global_policy_namespace_selector() -> None:
    ps = build(hep("host1", ["10.0.0.1"], {"app": "web"}, profiles=["allow"]),
               profile("allow", ingress=[{"action": "Allow"}], egress=[{"action": "Allow"}]),
               gnp("blue-web", selector="app == 'web'", namespaceSelector="team == 'blue'",
                   ingress=[{"action": "Deny"}]),
               gnp("any-ns", selector="app == 'client'", namespaceSelector="all()",
                   types=["Egress"], egress=[{"action": "Deny", "protocol": "UDP"},
                                              {"action": "Allow"}]))
    assert not check(ps, "y/b", "x/a").allowed
    assert check(ps, "x/b", "y/a").allowed
    assert check(ps, "x/b", "host1").allowed  # host endpoints are in no namespace
    assert not check(ps, "x/b", "y/a", "UDP").allowed


def test_host_endpoints_and_global_namespace_selector() -> None:
    ps = build(hep("host1", ["10.0.0.1"], {"role": "host"}),
               hep("admin", ["10.0.0.9"], {"role": "admin"}, profiles=["allow"]),
               profile("allow", ingress=[{"action": "Allow"}], egress=[{"action": "Allow"}]),
               gnp("host-in", selector="role == 'host'", ingress=[
                   {"action": "Allow", "source": {"namespaceSelector": "global()"}}]))
    v = check(ps, "admin", "host1")
    assert v.allowed and v.ingress.decider["policy"] == "host-in"
    v = check(ps, "x/b", "host1")  # a pod is namespaced: global() excludes it
    assert not v.allowed and v.ingress.decider == {"tier": "default",
                                                   "default": "deny: end of tier"}
    v = check(ps, "host1", "x/a")  # host1 has no egress policy and no profile
    assert not v.allowed and v.egress.decider["default"] == "deny: no policy or profile allowed"
    v = check(ps, "x/b", "10.0.0.1")  # a bare IP destination that is a host endpoint's
    assert v.allowed and v.ingress.peer.endpoint is None


def test_do_not_track_and_pre_dnat_not_in_normal_chains() -> None:
    ps = build(gnp("raw", selector="app == 'web'", doNotTrack=True, applyOnForward=True,
                   ingress=[{"action": "Deny"}]),
               gnp("pre", selector="app == 'web'", preDNAT=True, applyOnForward=True,
                   ingress=[{"action": "Deny"}]))
    assert check(ps, "x/b", "x/a").allowed


def test_types_default_from_rules() -> None:
    ps = build(gnp("egress-only", selector="app == 'client'", egress=[{"action": "Deny"}]))
    pol = ps.policies[0]
    assert pol.types == {"Egress"}
    v = check(ps, "x/b", "x/a")
    assert not v.allowed and v.egress.decider["policy"] == "egress-only"
    assert check(ps, "x/a", "x/b").allowed  # x/b's ingress is untouched


def test_unknown_endpoint_and_bad_flow_input() -> None:
    ps = build()
    with pytest.raises(PolicyError, match="unknown workload endpoint 'x/nope'"):
        make_flow(ps, "x/nope", "x/a", port=80)
    with pytest.raises(PolicyError, match="--protocol"):
        make_flow(ps, "x/b", "x/a", protocol="XTP", port=80)
    with pytest.raises(PolicyError, match="--port"):
        make_flow(ps, "x/b", "x/a", protocol="TCP")
    with pytest.raises(PolicyError, match="--icmp-type"):
        make_flow(ps, "x/b", "x/a", protocol="TCP", port=1, icmp_type=8)


def test_bad_rule_skips_policy_with_named_field() -> None:
    ps = PolicySet.from_resources(BASE + [gnp("bad", selector="app == 'web'", ingress=[
        {"action": "Allow", "source": {"selector": "app = 'x'"}}])])
    assert len(ps.warnings) == 1
    assert "GlobalNetworkPolicy bad" in ps.warnings[0]
    assert "ingress[0].source.selector" in ps.warnings[0]


def test_json_shape() -> None:
    ps = build(gnp("log", selector="app == 'web'", ingress=[{"action": "Log"},
                                                             {"action": "Allow"}]))
    out = evaluate(ps, make_flow(ps, "x/b", "x/a", port=80)).to_json()
    assert out["verdict"] == "Allow"
    assert out["flow"] == {"from": "x/b", "to": "x/a", "protocol": "TCP", "ipVersion": 4,
                           "srcIP": "10.1.0.2", "dstIP": "10.1.0.1", "port": 80}
    assert out["ingress"] == {
        "endpoint": "x/a", "ip": "10.1.0.1", "verdict": "Allow",
        "decider": {"tier": "default", "policy": "log", "rule": 1, "action": "Allow"},
        "steps": [{"tier": "default", "policy": "log", "rule": 0, "action": "Log"},
                  {"tier": "default", "policy": "log", "rule": 1, "action": "Allow"}]}
    assert out["egress"]["decider"] == {"profile": "kns.x", "rule": 0, "action": "Allow"}


def test_dual_stack_flow_versions() -> None:
    base = [ns("x"), wep("x/a", "10.1.0.1/32", {"app": "web"}),
            wep("x/b", "10.1.0.2/32", {"app": "client"})]
    base[2]["spec"]["ipNetworks"].append("fd00::2/128")
    base[1]["spec"]["ipNetworks"].append("fd00::1/128")
    ps = build(gnp("v6", selector="app == 'web'", ingress=[
        {"action": "Allow", "source": {"nets": ["fd00::/64"]}}]), base=base)
    v = check(ps, "x/b", "x/a", ip_version=6)
    assert v.allowed and v.to_json()["flow"]["srcIP"] == "fd00::2"
    assert not check(ps, "x/b", "x/a").allowed  # v4: the v6-only rule is skipped
    assert check(ps, "fd00::7", "x/a").allowed  # version taken from the bare IP
    with pytest.raises(PolicyError, match="--to: fd00::1 is not an IPv4 address"):
        make_flow(ps, "10.9.9.9", "fd00::1", port=80, ip_version=4)


def test_services_match_is_not_modelled_and_never_matches() -> None:
    ps = build(gnp("svc", selector="app == 'client'", types=["Egress"], egress=[
        {"action": "Allow", "destination": {"services": {"name": "web", "namespace": "x"}}}]))
    v = check(ps, "x/b", "x/a")
    assert not v.allowed and v.egress.decider["default"] == "deny: end of tier"


def test_from_resource_models() -> None:
    from tabby.resources import from_dict

    ps = PolicySet.from_resources([from_dict(d) for d in BASE + [
        gnp("m", selector="app == 'web'", ingress=[{"action": "Deny", "protocol": "TCP",
                                                     "destination": {"ports": ["80:81"]}}])]])
    assert ps.warnings == []
    assert not check(ps, "x/b", "x/a").allowed
    assert not check(ps, "x/b", "x/a", port=82).allowed  # selected: end of tier
    assert check(ps, "x/a", "x/b").allowed
