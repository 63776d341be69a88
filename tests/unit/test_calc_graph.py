"""The calc graph: datastore updates in, ordered dataplane messages out."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tabby.calc import messages as m
from tabby.calc import samples as s
from tabby.calc.fold import DataplaneModel, fresh_state
from tabby.calc.graph import CalcGraph
from tabby.selector import parse

NODE = "n1"


class Harness:
    """A graph whose messages are recorded and folded (with order checks) into a model."""

    def __init__(self, *items: tuple[str, Any], in_sync: bool = True, node: str = NODE):
        self.model = DataplaneModel()
        self.msgs: list[object] = []
        self.graph = CalcGraph(node, self._emit)
        self.put(*items)
        if in_sync:
            self.graph.on_in_sync()

    def _emit(self, msg: object) -> None:
        self.msgs.append(msg)
        self.model.apply(msg)

    def put(self, *items: tuple[str, Any]) -> list[object]:
        start = len(self.msgs)
        for key, value in items:
            self.graph.on_update(key, value)
        return self.msgs[start:]

    def delete(self, *keys: str) -> list[object]:
        return self.put(*((k, None) for k in keys))

    def take(self) -> list[object]:
        out, self.msgs = self.msgs, []
        return out

    def wep(self, key: str) -> m.WorkloadEndpointUpdate:
        return self.model.workloads[key]

    def ipset(self, selector: str) -> frozenset[str]:
        kind, members = self.model.ipsets[parse(selector).unique_id]
        return frozenset(members)


def of(msgs: list[object], cls: type) -> list[Any]:
    return [x for x in msgs if isinstance(x, cls)]


WEB = s.workload("prod", "web-1", NODE, ["10.0.0.1"], {"app": "web"},
                 ports=[{"name": "http", "protocol": "TCP", "port": 8080}])
DB_REMOTE = s.workload("prod", "db-1", "n2", ["10.0.1.1"], {"app": "db"})
ALLOW_DB_TO_WEB = s.global_policy(
    "allow-db", "app == 'web'",
    ingress=[{"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'db'"}}])


def ingress_names(ep: m.WorkloadEndpointUpdate | m.HostEndpointUpdate,
                  tiers: str = "tiers") -> list[tuple[str, tuple[str, ...]]]:
    return [(t.name, t.ingress_policies) for t in getattr(ep, tiers) if t.ingress_policies]


# -- start of day ---------------------------------------------------------------------------


def test_nothing_before_in_sync_then_everything_in_order_and_in_sync_once() -> None:
    h = Harness(WEB, DB_REMOTE, ALLOW_DB_TO_WEB, s.pool("p", "10.0.0.0/16"), in_sync=False)
    assert h.msgs == []
    h.graph.on_in_sync()
    msgs = h.take()
    assert isinstance(msgs[-1], m.InSync) and len(of(msgs, m.InSync)) == 1
    kinds = [type(x).__name__ for x in msgs]
    assert kinds.index("IPSetUpdate") < kinds.index("PolicyUpdate") < kinds.index(
        "WorkloadEndpointUpdate")
    assert of(msgs, m.ConfigUpdate) == [m.ConfigUpdate()]
    h.graph.on_in_sync()  # a resync after an outage: no second InSync
    assert of(h.take(), m.InSync) == []


def test_updates_before_in_sync_coalesce_to_the_final_value() -> None:
    h = Harness(in_sync=False)
    for i in range(5):
        h.put(s.workload("prod", "web-1", NODE, [f"10.0.0.{i + 1}"], {"app": "web"}))
    h.put(ALLOW_DB_TO_WEB, (ALLOW_DB_TO_WEB[0], None), ALLOW_DB_TO_WEB)
    h.graph.on_in_sync()
    weps = of(h.msgs, m.WorkloadEndpointUpdate)
    assert len(weps) == 1 and weps[0].ipv4_nets == ("10.0.0.5/32",)
    assert len(of(h.msgs, m.PolicyUpdate)) == 1 and not of(h.msgs, m.PolicyRemove)


# -- active policies ------------------------------------------------------------------------


def test_policy_is_sent_while_it_selects_a_local_endpoint() -> None:
    h = Harness(WEB, DB_REMOTE, ALLOW_DB_TO_WEB)
    pid = m.PolicyId("default", "allow-db")
    assert pid in h.model.policies
    assert ingress_names(h.wep("prod/web-1")) == [("default", ("allow-db",))]
    assert h.ipset("app == 'db'") == {"10.0.1.1"}

    # The endpoint stops matching: endpoint first, then the policy, then its IP set.
    msgs = h.put(s.workload("prod", "web-1", NODE, ["10.0.0.1"], {"app": "other"}))
    assert [type(x) for x in msgs] == [m.WorkloadEndpointUpdate, m.PolicyRemove, m.IPSetRemove]
    assert h.wep("prod/web-1").tiers == ()
    assert not h.model.policies and not h.model.ipsets

    msgs = h.put(WEB)
    assert [type(x) for x in msgs] == [m.IPSetUpdate, m.PolicyUpdate, m.WorkloadEndpointUpdate]


def test_policy_selecting_only_remote_endpoints_is_not_sent() -> None:
    h = Harness(WEB, DB_REMOTE, s.global_policy(
        "db-only", "app == 'db'", ingress=[{"action": "Allow",
                                            "source": {"selector": "app == 'web'"}}]))
    assert not h.model.policies and not h.model.ipsets
    assert h.graph.stats()["ip_sets"] == 0


def test_policy_rules_and_ids() -> None:
    h = Harness(WEB, s.policy(
        "prod", "mixed", "app == 'web'", types=["Ingress", "Egress"],
        ingress=[{"action": "Deny", "protocol": "UDP", "source": {"nets": ["10.9.0.0/16"]},
                  "destination": {"ports": [53, "1000:2000"]}},
                 {"action": "Pass", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
                 {"action": "Log", "notProtocol": "TCP"}],
        egress=[{"action": "Allow", "destination": {"notSelector": "app == 'db'",
                                                    "notNets": ["10.8.0.0/16"]}}]))
    pol = h.model.policies[m.PolicyId("default", "prod/mixed")]
    r0, r1, r2 = pol.inbound_rules
    assert (r0.action, r0.protocol, r0.src_nets) == ("deny", 17, ("10.9.0.0/16",))
    assert r0.dst_ports == (m.PortRange(53, 53), m.PortRange(1000, 2000))
    assert r0.rule_id == "default/prod/mixed/ingress/0"
    assert (r1.action, r1.protocol, r1.icmp_type, r1.icmp_code) == ("pass", 1, 8, 0)
    assert (r2.action, r2.not_protocol) == ("log", 6)
    (e0,) = pol.outbound_rules
    # notSelector is its own set (not namespaced); its presence scopes the positive
    # selector to the policy's namespace (Calico), which becomes a set too.
    assert e0.not_dst_ip_set_ids == (parse("app == 'db'").unique_id,)
    assert e0.dst_ip_set_ids == (parse("projectcalico.org/namespace == 'prod'").unique_id,)
    assert e0.not_dst_nets == ("10.8.0.0/16",)
    assert h.ipset("projectcalico.org/namespace == 'prod'") == {"10.0.0.1"}


def test_direction_not_in_types_is_neither_chained_nor_compiled() -> None:
    h = Harness(WEB, DB_REMOTE, s.global_policy(
        "egress-only", "app == 'web'", types=["Egress"],
        ingress=[{"action": "Allow", "source": {"selector": "app == 'db'"}}],
        egress=[{"action": "Allow"}]))
    ep = h.wep("prod/web-1")
    assert [(t.ingress_policies, t.egress_policies) for t in ep.tiers] == [((), ("egress-only",))]
    pol = h.model.policies[m.PolicyId("default", "egress-only")]
    assert pol.inbound_rules == () and len(pol.outbound_rules) == 1
    assert not h.model.ipsets


def test_policy_update_moving_tier_replaces_the_policy_id() -> None:
    h = Harness(WEB, s.tier("sec", 10), s.global_policy("p", "app == 'web'", ingress=[]))
    assert m.PolicyId("default", "p") in h.model.policies
    msgs = h.put(s.global_policy("p", "app == 'web'", tier="sec", ingress=[]))
    assert [type(x) for x in msgs] == [m.PolicyUpdate, m.WorkloadEndpointUpdate, m.PolicyRemove]
    assert set(h.model.policies) == {m.PolicyId("sec", "p")}
    assert ingress_names(h.wep("prod/web-1")) == [("sec", ("p",))]


def test_policy_rule_change_alone_does_not_resend_endpoints() -> None:
    h = Harness(WEB, DB_REMOTE, ALLOW_DB_TO_WEB)
    h.take()
    msgs = h.put(s.global_policy("allow-db", "app == 'web'", ingress=[
        {"action": "Allow", "protocol": "UDP", "source": {"selector": "app == 'db'"}}]))
    assert [type(x) for x in msgs] == [m.PolicyUpdate]


def test_ip_set_shared_by_two_policies_lives_until_both_are_gone() -> None:
    other = s.global_policy("also-db", "app == 'web'", ingress=[
        {"action": "Deny", "source": {"selector": "app == 'db'"}}])
    h = Harness(WEB, DB_REMOTE, ALLOW_DB_TO_WEB, other)
    assert len(h.model.ipsets) == 1
    msgs = h.delete(ALLOW_DB_TO_WEB[0])
    assert not of(msgs, m.IPSetRemove) and not of(msgs, m.IPSetUpdate)
    msgs = h.delete(other[0])
    assert len(of(msgs, m.IPSetRemove)) == 1


# -- IP sets ------------------------------------------------------------------------------


def test_label_change_moves_a_remote_endpoint_in_and_out_of_an_ip_set() -> None:
    h = Harness(WEB, DB_REMOTE, ALLOW_DB_TO_WEB)
    h.take()
    msgs = h.put(s.workload("prod", "db-2", "n3", ["10.0.2.1", "fd00::2"], {"app": "db"}))
    sid = parse("app == 'db'").unique_id
    assert msgs == [m.IPSetDeltaUpdate(sid, frozenset({"10.0.2.1", "fd00::2"}))]
    msgs = h.put(s.workload("prod", "db-1", "n2", ["10.0.1.1"], {"app": "cache"}))
    assert msgs == [m.IPSetDeltaUpdate(sid, removed=frozenset({"10.0.1.1"}))]
    msgs = h.put(s.workload("prod", "db-2", "n3", ["10.0.2.9"], {"app": "db"}))
    assert msgs == [m.IPSetDeltaUpdate(sid, frozenset({"10.0.2.9"}),
                                       frozenset({"10.0.2.1", "fd00::2"}))]
    assert h.delete("/tabby/v3/workloadendpoints/prod/db-2") == [
        m.IPSetDeltaUpdate(sid, removed=frozenset({"10.0.2.9"}))]
    assert h.ipset("app == 'db'") == set()


def test_network_sets_contribute_their_nets() -> None:
    h = Harness(WEB, s.network_set(None, "corp", ["192.168.0.0/16", "172.16.0.5/32"],
                                   {"role": "corp"}),
                s.global_policy("from-corp", "app == 'web'", ingress=[
                    {"action": "Allow", "source": {"selector": "role == 'corp'"}}]))
    sid = parse("role == 'corp'").unique_id
    assert h.model.ipsets[sid] == ("net", {"192.168.0.0/16", "172.16.0.5"})
    # A workload joining the same set keeps it a "net" set: it goes out as a delta.
    msgs = h.put(s.workload("prod", "w2", "n2", ["10.0.5.5"], {"role": "corp"}))
    assert msgs == [m.IPSetDeltaUpdate(sid, frozenset({"10.0.5.5"}))]
    h.delete(s.network_set(None, "corp", [])[0])
    assert h.model.ipsets[sid] == ("ip", {"10.0.5.5"})  # the kind changed: full update


def test_namespaced_network_set_gets_namespace_labels() -> None:
    h = Harness(WEB, s.namespace("ops", {"team": "ops"}),
                s.network_set("ops", "ops-nets", ["10.50.0.0/24"], {"kind": "ops"}),
                s.global_policy("from-ops-ns", "app == 'web'", ingress=[
                    {"action": "Allow", "source": {"namespaceSelector": "team == 'ops'"}}]))
    assert h.ipset("pcns.team == \"ops\"") == {"10.50.0.0/24"}


def test_named_ports_follow_rule_protocol_and_selector() -> None:
    ports = [{"name": "http", "protocol": "TCP", "port": 80},
             {"name": "http", "protocol": "UDP", "port": 81}]
    h = Harness(WEB,
                s.workload("prod", "api-1", "n2", ["10.0.1.5"], {"app": "api"}, ports=ports),
                s.workload("prod", "api-2", "n2", ["10.0.1.6"], {"app": "other"}, ports=ports),
                s.global_policy("to-http", "app == 'web'", types=["Egress"], egress=[
                    {"action": "Allow", "protocol": "TCP",
                     "destination": {"selector": "app == 'api'", "ports": ["http", 443]}},
                    {"action": "Allow", "destination": {"ports": ["http"]}}]))
    r0, r1 = h.model.policies[m.PolicyId("default", "to-http")].outbound_rules
    assert r0.dst_ports == (m.PortRange(443, 443),) and len(r0.dst_named_port_ip_set_ids) == 1
    (tcp_api,) = r0.dst_named_port_ip_set_ids
    assert h.model.ipsets[tcp_api] == ("ip-port", {"10.0.1.5,tcp:80"})
    (any_proto,) = r1.dst_named_port_ip_set_ids  # no selector, no protocol: every endpoint
    assert h.model.ipsets[any_proto][1] == {
        "10.0.1.5,tcp:80", "10.0.1.5,udp:81", "10.0.1.6,tcp:80", "10.0.1.6,udp:81",
        "10.0.0.1,tcp:8080"}


def test_named_port_membership_changes_with_the_endpoint_ports() -> None:
    h = Harness(WEB, s.global_policy("any-http", "app == 'web'", ingress=[
        {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}}]))
    (sid,) = h.model.policies[m.PolicyId("default", "any-http")].inbound_rules[
        0].dst_named_port_ip_set_ids
    msgs = h.put(s.workload("prod", "web-1", NODE, ["10.0.0.1"], {"app": "web"},
                            ports=[{"name": "http", "protocol": "TCP", "port": 9090}]))
    assert of(msgs, m.IPSetDeltaUpdate) == [m.IPSetDeltaUpdate(
        sid, frozenset({"10.0.0.1,tcp:9090"}), frozenset({"10.0.0.1,tcp:8080"}))]


# -- profiles and label inheritance ----------------------------------------------------------


def test_profile_labels_to_apply_are_inherited_and_own_labels_win() -> None:
    prof = s.profile("team-a", labels_to_apply={"team": "a", "app": "from-profile"},
                     ingress=[{"action": "Allow"}])
    ep = s.workload("prod", "w", NODE, ["10.0.0.7"], {"app": "web"}, profiles=["team-a"])
    h = Harness(prof, ep,
                s.global_policy("team-a", "team == 'a' && app == 'web'", ingress=[]),
                s.global_policy("profile-app", "app == 'from-profile'", ingress=[]))
    wep = h.wep("prod/w")
    assert ingress_names(wep) == [("default", ("team-a",))]
    assert wep.profile_ids == ("team-a",)
    assert h.model.profiles["team-a"].inbound_rules[0].action == "allow"
    # The profile stops giving the label: the policy no longer applies (and goes).
    msgs = h.put(s.profile("team-a", labels_to_apply={"team": "b"},
                           ingress=[{"action": "Allow"}]))
    assert ingress_names(h.wep("prod/w")) == []
    assert of(msgs, m.PolicyRemove)
    assert not of(msgs, m.ProfileUpdate)  # its rules did not change: nothing to resend


def test_profile_is_sent_only_while_a_local_endpoint_uses_it() -> None:
    h = Harness(s.profile("used", ingress=[{"action": "Allow"}]),
                s.profile("unused", ingress=[{"action": "Allow"}]),
                s.workload("prod", "w", NODE, ["10.0.0.7"], {}, profiles=["used"]))
    assert set(h.model.profiles) == {"used"}
    msgs = h.delete("/tabby/v3/workloadendpoints/prod/w")
    assert [type(x) for x in msgs] == [m.WorkloadEndpointRemove, m.ProfileRemove, m.RouteRemove]


def test_missing_profile_is_referenced_but_not_sent() -> None:
    h = Harness(s.workload("prod", "w", NODE, ["10.0.0.7"], {}, profiles=["ghost"]))
    assert h.wep("prod/w").profile_ids == ("ghost",) and not h.model.profiles
    h.put(s.profile("ghost", egress=[{"action": "Allow"}]))
    assert "ghost" in h.model.profiles


# -- tiers ------------------------------------------------------------------------------


def test_tiers_and_policies_in_felix_order() -> None:
    h = Harness(
        WEB, s.tier("security", 100), s.tier("platform", 200, "Pass"), s.tier("unordered"),
        s.global_policy("d2", "all()", ingress=[], order=20),
        s.global_policy("d1", "all()", ingress=[], order=10),
        s.global_policy("d-last", "all()", ingress=[]),  # no order: last in its tier
        s.policy("prod", "p-ns", "app == 'web'", ingress=[], order=10),  # tie with d1
        s.global_policy("security.s1", "has(app)", tier="security", ingress=[]),
        s.global_policy("platform.x", "app == 'web'", tier="platform", egress=[{
            "action": "Pass"}]),
        s.global_policy("unordered.u", "all()", tier="unordered", ingress=[]),
        s.global_policy("not-me", "app == 'db'", ingress=[]))
    tiers = h.wep("prod/web-1").tiers
    assert [(t.name, t.default_action) for t in tiers] == [
        ("security", "Deny"), ("platform", "Pass"), ("default", "Deny"), ("unordered", "Deny")]
    assert tiers[1].ingress_policies == () and tiers[1].egress_policies == ("platform.x",)
    # order 10 ties break on "name/namespace/kind": "d1//Global..." < "p-ns/prod/...".
    assert tiers[2].ingress_policies == ("d1", "prod/p-ns", "d2", "d-last")
    # A tier's order changes: every local endpoint is re-resolved.
    h.put(s.tier("unordered", 1))
    assert h.wep("prod/web-1").tiers[0].name == "unordered"


# -- host endpoints --------------------------------------------------------------------------


def test_host_endpoint_chains_by_policy_kind() -> None:
    hep = s.host_endpoint("n1-eth0", NODE, "eth0", ["192.168.0.1"], {"host": "n1"},
                          profiles=["host-prof"])
    h = Harness(
        hep, s.host_endpoint("n2-eth0", "n2", "eth0", ["192.168.0.2"], {"host": "n2"}),
        s.global_policy("normal", "has(host)", ingress=[
            {"action": "Allow", "source": {"selector": "has(host)"}}]),
        s.global_policy("untracked", "has(host)", doNotTrack=True, applyOnForward=True,
                        ingress=[], egress=[], types=["Ingress", "Egress"]),
        s.global_policy("prednat", "has(host)", preDNAT=True, applyOnForward=True,
                        ingress=[]),
        s.global_policy("forward", "has(host)", applyOnForward=True, ingress=[]))
    ep = h.model.host_endpoints["n1-eth0"]
    assert (ep.interface_name, ep.expected_ips, ep.profile_ids) == (
        "eth0", ("192.168.0.1",), ("host-prof",))
    assert ingress_names(ep) == [("default", ("forward", "normal"))]
    assert ingress_names(ep, "forward_tiers") == [("default", ("forward",))]
    assert ingress_names(ep, "untracked_tiers") == [("default", ("untracked",))]
    assert ep.untracked_tiers[0].egress_policies == ("untracked",)
    assert ingress_names(ep, "pre_dnat_tiers") == [("default", ("prednat",))]
    # Host endpoints' expectedIPs are IP set members, cluster-wide.
    assert h.ipset("has(host)") == {"192.168.0.1", "192.168.0.2"}
    assert "n2-eth0" not in h.model.host_endpoints
    assert [type(x) for x in h.delete(hep[0])][0] is m.HostEndpointRemove


def test_workloads_ignore_untracked_and_prednat_policies() -> None:
    h = Harness(WEB, s.global_policy("untracked", "all()", doNotTrack=True,
                                     applyOnForward=True, ingress=[]))
    assert h.wep("prod/web-1").tiers == ()


def test_host_endpoint_without_interface_is_sent_with_its_expected_ips() -> None:
    # messages.py: interface_name "" = whichever interface holds one of expected_ips.
    h = Harness(s.host_endpoint("ips-only", NODE, None, ["192.168.0.1"]))
    ep = h.model.host_endpoints["ips-only"]
    assert (ep.interface_name, ep.expected_ips) == ("", ("192.168.0.1",))


# -- Kubernetes inputs ------------------------------------------------------------------------


def test_k8s_network_policy_and_namespaces() -> None:
    h = Harness(
        s.namespace("prod", {"env": "prod"}), s.namespace("dev", {"env": "dev"}),
        s.workload("prod", "web", NODE, ["10.0.0.1"], {"app": "web"}),
        s.workload("dev", "client", "n2", ["10.0.1.1"], {"app": "client"}),
        s.workload("prod", "client", "n2", ["10.0.1.2"], {"app": "client"}),
        s.k8s_policy("prod", "allow-dev", podSelector={"matchLabels": {"app": "web"}},
                     ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"env": "dev"}}}],
                               "ports": [{"protocol": "TCP", "port": 80}]}]))
    wep = h.wep("prod/web")
    assert wep.profile_ids == ("kns.prod",)
    assert ingress_names(wep) == [("default", ("prod/knp.default.allow-dev",))]
    pol = h.model.policies[m.PolicyId("default", "prod/knp.default.allow-dev")]
    (rule,) = pol.inbound_rules
    assert (rule.action, rule.protocol, rule.dst_ports) == ("allow", 6, (m.PortRange(80, 80),))
    (sid,) = rule.src_ip_set_ids
    assert h.model.ipsets[sid][1] == {"10.0.1.1"}
    # The kns profile allows everything in both directions.
    assert [r.action for r in h.model.profiles["kns.prod"].inbound_rules] == ["allow"]
    # A namespace label change moves its pods in and out of the set.
    msgs = h.put(s.namespace("prod", {"env": "dev"}))
    assert m.IPSetDeltaUpdate(sid, frozenset({"10.0.0.1", "10.0.1.2"})) in msgs


def test_namespace_appearing_gives_its_workloads_the_kns_profile() -> None:
    h = Harness(s.workload("prod", "web", NODE, ["10.0.0.1"], {"app": "web"}, sa="api"))
    assert h.wep("prod/web").profile_ids == ()
    h.put(s.namespace("prod"))
    assert h.wep("prod/web").profile_ids == ("kns.prod",)
    h.put(s.profile("ksa.prod.api", labels_to_apply={"pcsa.role": "api"}))
    assert h.wep("prod/web").profile_ids == ("kns.prod", "ksa.prod.api")
    h.put(s.global_policy("sa", "pcsa.role == 'api'", ingress=[]))
    assert ingress_names(h.wep("prod/web")) == [("default", ("sa",))]
    h.delete(s.namespace("prod")[0])
    assert h.wep("prod/web").profile_ids == () and h.wep("prod/web").tiers == ()
    assert not h.model.profiles and not h.model.policies


# -- config and pools ------------------------------------------------------------------------


def test_felix_configuration_default_and_node_override() -> None:
    h = Harness(s.felix_config("default", failsafeInboundHostPorts=[
        {"protocol": "TCP", "port": 22}], defaultEndpointToHostAction="Accept",
        interfacePrefix="cali,tap"),
        s.felix_config("node.n1", defaultEndpointToHostAction="Return"),
        s.felix_config("node.n2", logPrefix="other-node"))
    cfg = h.model.config
    assert cfg is not None
    assert cfg.failsafe_inbound == (m.FailsafePort("tcp", 22),)
    assert cfg.failsafe_outbound == m.DEFAULT_FAILSAFE_OUTBOUND
    assert cfg.default_endpoint_to_host_action == "Return"
    assert cfg.workload_iface_prefixes == ("cali", "tap")
    assert cfg.log_prefix == m.ConfigUpdate().log_prefix
    msgs = h.delete("/tabby/v3/felixconfigurations/node.n1")
    assert of(msgs, m.ConfigUpdate)[0].default_endpoint_to_host_action == "Accept"
    assert h.put(s.felix_config("node.n2", logPrefix="x")) == []


def test_pools_are_sent_and_removed() -> None:
    h = Harness(s.pool("a", "10.0.0.0/16", vxlan="Always", nat=True))
    assert h.model.pools == {"10.0.0.0/16": m.IPPoolUpdate("10.0.0.0/16", True,
                                                            vxlan_mode="Always")}
    h.put(s.pool("b", "10.0.0.0/16"), ("/tabby/v3/ippools/a", None))  # renamed
    assert h.model.pools["10.0.0.0/16"].vxlan_mode == "Never"
    assert [type(x) for x in h.delete("/tabby/v3/ippools/b")] == [m.IPPoolRemove]


# -- robustness ------------------------------------------------------------------------------


def test_unusable_values_are_skipped_and_treated_as_deleted(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(WEB, ALLOW_DB_TO_WEB)
    assert h.model.policies
    bad = {"apiVersion": s.V3, "kind": "GlobalNetworkPolicy", "metadata": {"name": "allow-db"},
           "spec": {"selector": "app ==", "ingress": []}}
    with caplog.at_level(logging.WARNING):
        h.put((ALLOW_DB_TO_WEB[0], bad))
    assert "allow-db" in caplog.text and not h.model.policies
    h.put(("/tabby/v3/workloadendpoints/prod/x", {"spec": {"ipNetworks": ["nope"]},
                                                  "metadata": {"name": "x"}}))
    assert h.model.workloads.keys() == {"prod/web-1"}


def test_unknown_keys_are_ignored() -> None:
    h = Harness()
    h.take()
    assert h.put(("/tabby/v3/bgppeers/x", {"spec": {}}), ("/tabby/other/thing", {}),
                 ("/tabby/ipam/v2/handles/h", {}), ("/tabby/v3/workloadendpoints/bad", {})) == []


def test_fresh_state_matches_incremental_state() -> None:
    items = [WEB, DB_REMOTE, ALLOW_DB_TO_WEB, s.namespace("prod")]
    h = Harness(*items)
    assert h.model.state() == fresh_state(NODE, items)
