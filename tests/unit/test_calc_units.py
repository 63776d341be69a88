"""The calc graph's parts on their own: sequencer, IP set calculator, rule conversion,
profiles, tiers and configuration."""

from __future__ import annotations

from typing import Any

import pytest

from tabby.calc import messages as m
from tabby.calc import sequencer as sq
from tabby.calc.config import config_update
from tabby.calc.endpoints import compile_tier, implicit_tier, policy_id
from tabby.calc.ipsets import IPSetCalculator
from tabby.calc.profiles import WL_NS, WL_SA, Profiles
from tabby.calc.rules import IPSetSpec, convert_rule, named_port_set, selector_set
from tabby.policy import compile_policy
from tabby.policy.errors import PolicyError
from tabby.policy.rules import compile_rule
from tabby.policy.selectors import Scope
from tabby.selector import LabelIndex, parse


class Sink:
    def __init__(self) -> None:
        self.msgs: list[object] = []

    def __call__(self, msg: object) -> None:
        self.msgs.append(msg)

    def take(self) -> list[object]:
        out, self.msgs = self.msgs, []
        return out


# -- sequencer -------------------------------------------------------------------------------


def test_sequencer_coalesces_per_key_and_drops_repeats() -> None:
    sink = Sink()
    ips = IPSetCalculator()
    seq = sq.EventSequencer(sink, ips)
    pid = m.PolicyId("default", "p")
    seq.put(sq.POLICY, pid, m.PolicyUpdate(pid))
    seq.put(sq.POLICY, pid, m.PolicyUpdate(pid, (m.Rule("deny"),)))
    assert seq.pending == 1
    seq.flush()
    assert sink.take() == [m.PolicyUpdate(pid, (m.Rule("deny"),))]
    seq.put(sq.POLICY, pid, m.PolicyUpdate(pid, (m.Rule("deny"),)))  # same as sent
    seq.flush()
    assert sink.take() == []
    # Added and removed between flushes: nothing at all.
    seq.put(sq.WORKLOAD, "x", m.WorkloadEndpointUpdate("x", "calix"))
    seq.remove(sq.WORKLOAD, "x")
    seq.remove(sq.PROFILE, "never-sent")
    seq.flush()
    assert sink.take() == []
    seq.remove(sq.POLICY, pid)
    seq.flush()
    assert sink.take() == [m.PolicyRemove(pid)]


def test_sequencer_flush_order() -> None:
    sink = Sink()
    ips = IPSetCalculator()
    seq = sq.EventSequencer(sink, ips)
    for kind, key, msg in [
        (sq.ROUTE, "10.0.0.0/26", m.RouteUpdate("10.0.0.0/26", "remote-block", dst_node="n",
                                                 next_hop="10.1.0.1", encap="vxlan")),
        (sq.ROUTE, "10.0.1.0/26", m.RouteUpdate("10.0.1.0/26", "remote-block", dst_node="n",
                                                 next_hop="192.168.0.1")),
        (sq.VTEP, "n", m.VTEPUpdate("n", "10.1.0.1", "66:00:00:00:00:01", "192.168.0.1")),
        (sq.WORKLOAD, "w", m.WorkloadEndpointUpdate("w", "caliw")),
        (sq.PROFILE, "p", m.ProfileUpdate("p")),
        (sq.POOL, "10.0.0.0/16", m.IPPoolUpdate("10.0.0.0/16")),
        (sq.CONFIG, "config", m.ConfigUpdate()),
    ]:
        seq.put(kind, key, msg)
    ips.ref(selector_set(parse("a == 'b'")))
    seq.flush()
    names = [type(x).__name__ for x in sink.take()]
    assert names == ["ConfigUpdate", "IPPoolUpdate", "IPSetUpdate", "ProfileUpdate",
                     "WorkloadEndpointUpdate", "RouteUpdate", "VTEPUpdate", "RouteUpdate"]


# -- IP sets ---------------------------------------------------------------------------------


def test_ip_set_members_are_counted_and_deltas_cancel() -> None:
    sink = Sink()
    ips = IPSetCalculator()
    spec = selector_set(parse("app == 'a'"))
    ips.ref(spec)
    ips.update_member("e1", {"app": "a"}, (), ("10.0.0.1",))
    ips.update_member("e2", {"app": "a"}, (), ("10.0.0.1",))  # the same address twice
    ips.flush_updates(sink)
    ips.flush_removes(sink)
    assert sink.take() == [m.IPSetUpdate(spec.set_id, "ip", frozenset({"10.0.0.1"}))]
    ips.remove_member("e1")  # still held by e2
    ips.update_member("e3", {"app": "a"}, (), ("10.0.0.3",))
    ips.remove_member("e3")  # added and removed before the flush: no delta
    ips.flush_updates(sink)
    assert sink.take() == []
    ips.remove_member("e2")
    ips.flush_updates(sink)
    assert sink.take() == [m.IPSetDeltaUpdate(spec.set_id, removed=frozenset({"10.0.0.1"}))]


def test_ip_set_dropped_and_taken_again_before_a_flush_is_resent_whole() -> None:
    sink = Sink()
    ips = IPSetCalculator()
    spec = selector_set(parse("app == 'a'"))
    ips.update_member("e1", {"app": "a"}, (), ("10.0.0.1",))
    ips.ref(spec)
    ips.ref(spec)  # two rules share it
    ips.flush_updates(sink)
    ips.flush_removes(sink)
    sink.take()
    ips.unref(spec.set_id)
    ips.flush_updates(sink)
    ips.flush_removes(sink)
    assert sink.take() == []  # one reference left
    ips.unref(spec.set_id)
    ips.update_member("e2", {"app": "a"}, (), ("10.0.0.2",))
    ips.ref(spec)
    ips.flush_updates(sink)
    ips.flush_removes(sink)
    assert sink.take() == [m.IPSetUpdate(spec.set_id, "ip",
                                         frozenset({"10.0.0.1", "10.0.0.2"}))]


def test_named_port_set_members() -> None:
    ips = IPSetCalculator()
    spec = named_port_set(parse("app == 'a'"), 6, "http")
    ips.ref(spec)
    ips.update_member("e1", {"app": "a"}, (), ("10.0.0.1", "fd00::1"),
                      (("http", 6, 80), ("http", 17, 81), ("other", 6, 90)))
    ips.update_member("e2", {"app": "b"}, (), ("10.0.0.2",), (("http", 6, 80),))
    assert ips.members(spec.set_id) == {"10.0.0.1,tcp:80", "fd00::1,tcp:80"}
    assert ips.kind(spec.set_id) == "ip-port"
    # Same selector and port name, other protocol: another set.
    assert named_port_set(parse("app == 'a'"), 17, "http").set_id != spec.set_id
    assert named_port_set(None, None, "http").selector == parse("all()")


# -- rules -----------------------------------------------------------------------------------


def _rule(doc: dict[str, Any], ns: str = "") -> Any:
    return compile_rule(doc, 3, Scope(ns), "rule")


def test_rule_conversion() -> None:
    sets: dict[str, IPSetSpec] = {}
    rule = convert_rule(_rule({
        "action": "Allow", "protocol": "TCP", "ipVersion": 4,
        "source": {"selector": "app == 'x'", "notNets": ["10.1.0.0/16"], "notPorts": [22]},
        "destination": {"ports": ["http", "8000:8100"], "notSelector": "has(b)"}}, "prod"),
        "default/prod/p/ingress/3", sets)
    assert rule is not None
    src = parse("(projectcalico.org/namespace == 'prod' && app == 'x')")
    assert rule.src_ip_set_ids == (src.unique_id,)
    assert rule.not_src_nets == ("10.1.0.0/16",)
    assert rule.not_src_ports == (m.PortRange(22, 22),)
    assert rule.dst_ports == (m.PortRange(8000, 8100),)
    assert rule.not_dst_ip_set_ids == (parse("has(b)").unique_id,)
    (np_id,) = rule.dst_named_port_ip_set_ids
    # The destination's positive selector is its namespace clause (notSelector present).
    assert sets[np_id] == named_port_set(
        parse("projectcalico.org/namespace == 'prod'"), 6, "http")
    assert (rule.action, rule.ip_version, rule.rule_id) == ("allow", 4,
                                                            "default/prod/p/ingress/3")
    assert len(sets) == 4


def test_rules_with_services_never_match_so_are_left_out() -> None:
    sets: dict[str, IPSetSpec] = {}
    assert convert_rule(_rule({"action": "Allow", "source": {
        "services": {"name": "svc", "namespace": "x"}}}), "r", sets) is None
    assert sets == {}


# -- profiles, tiers, policy ids ----------------------------------------------------------


def test_profiles_explicit_wins_and_workload_parents() -> None:
    changed: list[str] = []
    namespaces: list[str] = []
    index = LabelIndex()
    profs = Profiles(changed.append, namespaces.append)
    profs.track(index)
    index.update_endpoint("w", {"app": "x"}, Profiles.workload_parents("ns", {}))
    profs.set_namespace("ns", {"metadata": {"name": "ns", "labels": {"env": "a"}}})
    assert profs.get("kns.ns") is not None and namespaces == ["ns"]
    assert index.endpoint_labels("w")["pcns.env"] == "a"
    profs.set_profile("kns.ns", {"metadata": {"name": "kns.ns"},
                                 "spec": {"labelsToApply": {"pcns.env": "b"}}})
    assert index.endpoint_labels("w")["pcns.env"] == "b"  # the Profile resource wins
    profs.set_profile("kns.ns", None)
    assert index.endpoint_labels("w")["pcns.env"] == "a"
    assert changed.count("kns.ns") == 3
    assert Profiles.workload_parents("ns", {"serviceAccountName": "sa"}) == (
        (WL_NS, "ns"), (WL_SA, "ns", "sa"))
    assert Profiles.workload_parents("ns", {"profiles": ["p"]}) == ("p",)
    profs.set_namespace("ns", None)
    assert "pcns.env" not in index.endpoint_labels("w")


def test_tiers_and_policy_ids() -> None:
    assert compile_tier({"metadata": {"name": "kube-admin"}, "spec": {}}) == implicit_tier(
        "kube-admin")
    assert compile_tier({"metadata": {"name": "t"}, "spec": {"order": 5}}).order == 5.0
    assert not implicit_tier("ghost").defined
    with pytest.raises(PolicyError, match="defaultAction"):
        compile_tier({"metadata": {"name": "t"}, "spec": {"defaultAction": "Allow"}})
    npol = compile_policy({"kind": "NetworkPolicy", "metadata": {"name": "knp.default.x",
                                                                 "namespace": "n"}, "spec": {}})
    assert policy_id(npol) == m.PolicyId("default", "n/knp.default.x@NetworkPolicy")
    knp = compile_policy({"kind": "NetworkPolicy", "metadata": {"name": "knp.default.x",
                                                                "namespace": "n"}, "spec": {}},
                         kind="KubernetesNetworkPolicy")
    assert policy_id(knp) == m.PolicyId("default", "n/knp.default.x")


def test_config_update_from_felix_configuration() -> None:
    cfg = config_update({"failsafeOutboundHostPorts": [
        {"protocol": "UDP", "port": 53, "net": "10.0.0.0/8"}, {"port": 22}],
        "natOutgoingAddress": "192.168.0.9", "logPrefix": "tabby-x"})
    assert cfg.failsafe_outbound == (m.FailsafePort("udp", 53, "10.0.0.0/8"),
                                     m.FailsafePort("tcp", 22))
    assert cfg.failsafe_inbound == m.DEFAULT_FAILSAFE_INBOUND
    assert (cfg.nat_outgoing_address, cfg.log_prefix) == ("192.168.0.9", "tabby-x")
    assert config_update({"failsafeInboundHostPorts": []}).failsafe_inbound == ()
