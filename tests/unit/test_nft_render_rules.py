"""Unit tests (no root): calc -> dataplane messages, nft names, single-rule compilation."""

from __future__ import annotations

import dataclasses

import pytest

from tabby.calc.messages import (
    DEFAULT_FAILSAFE_INBOUND,
    ConfigUpdate,
    FailsafePort,
    HostEndpointUpdate,
    IPPoolUpdate,
    IPSetUpdate,
    PolicyId,
    PolicyUpdate,
    PortRange,
    RouteUpdate,
    Rule,
    TierInfo,
    VTEPUpdate,
    WorkloadEndpointUpdate,
    protocol_number,
)
from tabby.dataplane.nft import build, names, rules
from tabby.dataplane.nft.render import DataplaneState, set_elements
from tabby.dataplane.nft.rules import RuleError, compile_rule, net_literal

VERDICTS = {"allow": "ACCEPT", "deny": "drop", "pass": "PASS"}


def resolve(set_id: str, want: str, version: int) -> str:
    return f"{want}{version}-{set_id}"


def lines(rule: Rule, prefix: str = "tabby-packet") -> list[str]:
    return compile_rule(rule, resolve=resolve, verdicts=VERDICTS, log_prefix=prefix, note="n")


# --- messages ---------------------------------------------------------------------------


def test_rule_normalises_and_is_hashable() -> None:
    r = Rule("Allow", protocol="TCP", dst_ports=[80, "90:100", (1, 2)], src_nets=["10.0.0.1/24"])
    assert r.action == "allow" and r.protocol == 6
    assert r.dst_ports == (PortRange(80, 80), PortRange(90, 100), PortRange(1, 2))
    assert r.src_nets == ("10.0.0.0/24",)
    assert hash(r) == hash(Rule("allow", protocol=6, dst_ports=(80, "90:100", (1, 2)),
                                src_nets=("10.0.0.0/24",)))
    assert Rule("next-tier").action == "pass"  # Felix's backend spelling
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.action = "deny"  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"action": "bogus"}, "Rule.action: expected one of allow, deny, pass, log: 'bogus'"),
    ({"action": "allow", "ip_version": 5}, "Rule.ip_version"),
    ({"action": "allow", "protocol": "tcpx"}, "Rule.protocol: invalid protocol: 'tcpx'"),
    ({"action": "allow", "protocol": 256}, "Rule.protocol"),
    ({"action": "allow", "src_nets": ("10.0.0.300/8",)}, "Rule.src_nets: invalid CIDR"),
    ({"action": "allow", "dst_ports": ("90:80",)}, "Rule.dst_ports"),
    ({"action": "allow", "dst_ports": (70000,)}, "Rule.dst_ports"),
    ({"action": "allow", "dst_ports": 80}, "Rule.dst_ports: expected a list of ports"),
    ({"action": "allow", "src_ip_set_ids": "s:x"}, "Rule.src_ip_set_ids: expected a list"),
    ({"action": "allow", "icmp_code": 1}, "Rule.icmp_code: needs icmp_type"),
    ({"action": "allow", "icmp_type": 300}, "Rule.icmp_type: expected 0-255"),
])
def test_rule_errors_name_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        Rule(**kwargs)


def test_port_range_and_protocol_helpers() -> None:
    assert PortRange.of("8080") == PortRange(8080, 8080)
    assert str(PortRange.of("1:2")) == "1-2" and str(PortRange.of(5)) == "5"
    for bad in ("x", True, (1,), "1:2:3", -1):
        with pytest.raises(ValueError, match="port"):
            PortRange.of(bad)
    assert protocol_number("UDP") == 17 and protocol_number("58") == 58
    with pytest.raises(ValueError, match="protocol"):
        protocol_number(0)


def test_endpoint_and_set_messages_validate() -> None:
    s = IPSetUpdate("s:a", "ip", ["10.0.0.1", "10.0.0.1"])  # type: ignore[arg-type]
    assert s.members == frozenset({"10.0.0.1"}) and hash(s)
    with pytest.raises(ValueError, match="IPSetUpdate.kind: .*'ports'"):
        IPSetUpdate("s:a", "ports")
    with pytest.raises(ValueError, match="WorkloadEndpointUpdate.interface_name"):
        WorkloadEndpointUpdate("w", "this-name-is-too-long")
    with pytest.raises(ValueError, match="WorkloadEndpointUpdate.ipv4_nets: not an IPv4 CIDR"):
        WorkloadEndpointUpdate("w", "cali1", ipv4_nets=("fd00::1/128",))
    with pytest.raises(ValueError, match="WorkloadEndpointUpdate.mac"):
        WorkloadEndpointUpdate("w", "cali1", mac="zz")
    with pytest.raises(ValueError, match="TierInfo.default_action"):
        TierInfo("t", "Allow")
    with pytest.raises(ValueError, match="preDNAT policy cannot have egress"):
        HostEndpointUpdate("h", "eth0", pre_dnat_tiers=(TierInfo("t", egress_policies=("p",)),))
    assert HostEndpointUpdate("h", "*").interface_name == "*"
    with pytest.raises(ValueError, match="PolicyUpdate.policy_id: expected \\(tier, name\\)"):
        PolicyUpdate("just-a-name")  # type: ignore[arg-type]
    p = PolicyUpdate(("t", "p"), [Rule("allow")])  # type: ignore[arg-type]
    assert p.policy_id == PolicyId("t", "p") and str(p.policy_id) == "t/p"
    with pytest.raises(ValueError, match="PolicyUpdate.inbound_rules: expected a Rule"):
        PolicyUpdate(("t", "p"), ("allow",))  # type: ignore[arg-type]
    assert IPPoolUpdate("10.65.0.0/16", masquerade=True).cidr == "10.65.0.0/16"
    with pytest.raises(ValueError, match="IPPoolUpdate.cidr: invalid CIDR"):
        IPPoolUpdate("10.65.0.1/16")  # a pool CIDR must be masked


def test_config_and_failsafes() -> None:
    c = ConfigUpdate()
    assert c.failsafe_inbound == DEFAULT_FAILSAFE_INBOUND
    assert FailsafePort("tcp", 22) in c.failsafe_inbound
    assert FailsafePort("udp", 53) in c.failsafe_outbound
    assert c.default_endpoint_to_host_action == "Drop"
    c = ConfigUpdate(failsafe_inbound="tcp:22, 80, udp:10.0.0.0/8:53", failsafe_outbound="[]",
                     default_endpoint_to_host_action="ACCEPT")
    assert c.failsafe_inbound == (FailsafePort("tcp", 22), FailsafePort("tcp", 80),
                                  FailsafePort("udp", 53, "10.0.0.0/8"))
    assert c.failsafe_outbound == () and c.default_endpoint_to_host_action == "Accept"
    with pytest.raises(ValueError, match="FailsafePort.protocol"):
        FailsafePort.parse("icmp:1")
    with pytest.raises(ValueError, match="ConfigUpdate.default_endpoint_to_host_action"):
        ConfigUpdate(default_endpoint_to_host_action="Maybe")
    with pytest.raises(ValueError, match="ConfigUpdate.workload_iface_prefixes"):
        ConfigUpdate(workload_iface_prefixes=("cali*",))


def test_route_messages_validate() -> None:
    r = RouteUpdate("10.65.1.0/26", "remote-block", dst_node="n2", next_hop="10.0.0.2",
                    encap="vxlan")
    assert r.dst == "10.65.1.0/26" and hash(r)
    with pytest.raises(ValueError, match="RouteUpdate.kind"):
        RouteUpdate("10.65.1.0/26", "somewhere")
    with pytest.raises(ValueError, match="RouteUpdate.next_hop: invalid IP address"):
        RouteUpdate("10.65.1.0/26", "remote-block", next_hop="node2")
    v = VTEPUpdate("n2", "10.65.1.0", "66:1A:2B:3C:4D:5E", "172.31.0.11")
    assert v.mac == "66:1a:2b:3c:4d:5e"
    with pytest.raises(ValueError, match="VTEPUpdate.mac"):
        VTEPUpdate("n2", "10.65.1.0", "nope", "172.31.0.11")


# --- names ------------------------------------------------------------------------------


def test_ident_readable_when_plain_hashed_otherwise() -> None:
    assert names.ident("tabby-pi", "default.allow") == "tabby-pi-default.allow"
    odd = names.ident("tabby-pi", "default/allow web")
    assert odd.startswith("tabby-pi-default_allow_web-") and len(odd) <= 48
    long = names.ident("tabby-pi", "x" * 200)
    assert len(long) <= 48 and long != names.ident("tabby-pi", "x" * 199)
    # a plain id that looks like a hashed one is hashed too: the shapes never collide
    looks_hashed = "default_allow_web-" + odd.rsplit("-", 1)[1]
    assert names.ident("tabby-pi", looks_hashed) != odd
    assert names.ipset_name("s:a", "ip", 4) != names.ipset_name("s:a", "net", 4)
    assert names.endpoint_chain("fh", "*") != names.endpoint_chain("fh", "any")


def test_quote_is_safe_for_nft() -> None:
    assert names.quote('a "b" \\c\n') == '"a _b_ _c_"'
    assert len(names.quote("x" * 500)) == 129


# --- rule compilation ---------------------------------------------------------------------


def test_family_agnostic_rule_is_one_line() -> None:
    assert lines(Rule("allow", protocol="tcp", dst_ports=(80, 443, "8000:8100"))) == [
        "meta l4proto tcp tcp dport { 80, 443, 8000-8100 } ACCEPT comment \"n\""]
    assert lines(Rule("deny", ip_version=6)) == ['meta nfproto ipv6 drop comment "n"']


def test_mixed_families_split_and_skip() -> None:
    r = Rule("allow", src_nets=("10.0.0.0/24", "10.0.1.0/24", "fd00::/64"))
    assert lines(r) == [
        'meta nfproto ipv4 ip saddr 10.0.0.0/23 ACCEPT comment "n"',
        'meta nfproto ipv6 ip6 saddr fd00::/64 ACCEPT comment "n"',
    ]
    # CIDRs all of the other version: the rule matches nothing in this version
    assert lines(Rule("allow", ip_version=4, dst_nets=("fd00::/64",))) == []
    # negated CIDRs only constrain their own family
    assert lines(Rule("allow", not_src_nets=("fd00::/64",), src_ip_set_ids=("s",))) == [
        'meta nfproto ipv4 ip saddr @addr4-s ACCEPT comment "n"',
        'meta nfproto ipv6 ip6 saddr != fd00::/64 ip6 saddr @addr6-s ACCEPT comment "n"',
    ]


def test_ip_sets_are_anded_and_negations_excluded() -> None:
    r = Rule("deny", src_ip_set_ids=("a", "b"), not_dst_ip_set_ids=("c",), ip_version=4)
    assert lines(r) == [
        'meta nfproto ipv4 ip saddr @addr4-a ip saddr @addr4-b ip daddr != @addr4-c drop comment "n"']


def test_icmp_rules() -> None:
    assert lines(Rule("allow", protocol="icmp", icmp_type=3, icmp_code=4)) == [
        'meta nfproto ipv4 meta l4proto icmp icmp type 3 icmp code 4 ACCEPT comment "n"']
    assert lines(Rule("allow", protocol="icmpv6", not_icmp_type=128)) == [
        'meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type != 128 ACCEPT comment "n"']
    assert lines(Rule("allow", protocol="icmp", not_icmp_type=3, not_icmp_code=4)) == [
        'meta nfproto ipv4 meta l4proto icmp icmp type . icmp code != { 3 . 4 } ACCEPT comment "n"']
    assert lines(Rule("allow", protocol=1)) == ['meta l4proto icmp ACCEPT comment "n"']
    assert lines(Rule("allow", protocol=1, ip_version=6)) == []


def test_numeric_or_named_ports_use_scratch_marks_once() -> None:
    r = Rule("log", protocol="tcp", src_ports=(1000,), src_named_port_ip_set_ids=("sp",),
             dst_ports=(80,), dst_named_port_ip_set_ids=("dp",), ip_version=4,
             log_prefix="x")
    assert lines(r) == [
        "meta mark set meta mark & 0xfff3ffff",
        "tcp sport 1000 meta mark set meta mark | 0x40000",
        "ip saddr . meta l4proto . th sport @port4-sp meta mark set meta mark | 0x40000",
        "tcp dport 80 meta mark set meta mark | 0x80000",
        "ip daddr . meta l4proto . th dport @port4-dp meta mark set meta mark | 0x80000",
        'meta nfproto ipv4 meta l4proto tcp meta mark & 0xc0000 == 0xc0000 log prefix "x " comment "n"',
    ]
    # one alternative per side needs no scratch bit
    one = Rule("allow", dst_named_port_ip_set_ids=("dp",), not_dst_named_port_ip_set_ids=("x",),
               ip_version=4)
    assert lines(one) == [
        "meta nfproto ipv4 ip daddr . meta l4proto . th dport != @port4-x "
        'ip daddr . meta l4proto . th dport @port4-dp ACCEPT comment "n"']


def test_log_prefix_default_and_quoting() -> None:
    assert lines(Rule("log")) == ['log prefix "tabby-packet " comment "n"']
    assert lines(Rule("log", log_prefix='a"b')) == ['log prefix "a_b " comment "n"']


def test_rules_nft_cannot_express_are_errors() -> None:
    with pytest.raises(RuleError, match="numeric ports need protocol"):
        lines(Rule("allow", dst_ports=(80,)))
    with pytest.raises(RuleError, match="ICMP type/code needs protocol"):
        lines(Rule("allow", protocol="tcp", icmp_type=8))
    with pytest.raises(RuleError, match="too many match criteria"):
        lines(Rule("allow", src_ip_set_ids=tuple(str(i) for i in range(rules.MAX_MATCHES + 1))))


def test_net_literal_collapses() -> None:
    assert net_literal(["10.0.0.1/32"]) == "10.0.0.1"
    assert net_literal(["10.0.0.0/25", "10.0.0.128/25", "10.0.0.7/32"]) == "10.0.0.0/24"


def test_set_elements_normalise_and_name_bad_members() -> None:
    v4, v6 = set_elements("net", frozenset({"10.0.0.0/24", "10.0.0.5", "fd00::1/64"}))
    assert v4 == {"10.0.0.0/24"} and v6 == {"fd00::/64"}
    assert set_elements("ip", frozenset({"10.0.0.1/32", "fd00::1"})) == (
        frozenset({"10.0.0.1"}), frozenset({"fd00::1"}))
    assert set_elements("ip-port", frozenset({"10.0.0.1,TCP:80", "fd00::1,udp:53"})) == (
        frozenset({"10.0.0.1 . tcp . 80"}), frozenset({"fd00::1 . udp . 53"}))
    with pytest.raises(ValueError, match="IPSetUpdate.members: invalid address '10.0.0.x'"):
        set_elements("ip", frozenset({"10.0.0.x"}))
    with pytest.raises(ValueError, match="is a network in an 'ip' set"):
        set_elements("ip", frozenset({"10.0.0.0/24"}))
    with pytest.raises(ValueError, match="invalid named-port member '10.0.0.1:80'"):
        set_elements("ip-port", frozenset({"10.0.0.1:80"}))


def test_uncompilable_or_unknown_references_fail_closed() -> None:
    s = DataplaneState()
    s.ipsets["np"] = IPSetUpdate("np", "ip-port", frozenset())
    s.policies[PolicyId("t", "bad-ports")] = PolicyUpdate(("t", "bad-ports"), (Rule("allow", dst_ports=(80,)),))
    s.policies[PolicyId("t", "unknown-set")] = PolicyUpdate(("t", "unknown-set"), (Rule("allow", src_ip_set_ids=("nope",)),))
    s.policies[PolicyId("t", "wrong-kind")] = PolicyUpdate(("t", "wrong-kind"), (Rule("allow", src_ip_set_ids=("np",)),))
    s.workloads["w"] = WorkloadEndpointUpdate("w", "cali1", tiers=(TierInfo(
        "t", ingress_policies=("bad-ports", "unknown-set", "wrong-kind", "never-sent")),))
    r = build(s)
    assert set(r.problems) == {"policy:t/bad-ports", "policy:t/unknown-set", "policy:t/wrong-kind",
                               "policy:t/never-sent"}
    assert "unknown IP set 'nope'" in r.problems["policy:t/unknown-set"]
    assert "kind 'ip-port'" in r.problems["policy:t/wrong-kind"]
    for name, chain in r.ruleset.chains.items():
        if name.startswith("tabby-pi-"):
            assert len(chain.rules) == 1 and chain.rules[0].startswith("drop comment")


def test_duplicate_interface_keeps_first_endpoint() -> None:
    s = DataplaneState()
    s.workloads["a"] = WorkloadEndpointUpdate("a", "cali1")
    s.workloads["b"] = WorkloadEndpointUpdate("b", "cali1")
    r = build(s)
    assert r.problems == {"wep:b": "interface cali1 already used by a"}
    assert r.ruleset.maps["tabby-fw-map"].elements == (("cali1", "tabby-fw-cali1"),)


def test_empty_set_families_are_elided() -> None:
    def only_v4(set_id: str, want: str, version: int) -> str | None:
        return None if version == 6 else f"{want}4-{set_id}"

    def compile_(rule: Rule) -> list[str]:
        return compile_rule(rule, resolve=only_v4, verdicts=VERDICTS, log_prefix="p", note="n")

    # must be in an empty set: the IPv6 variant cannot match and is not rendered
    assert compile_(Rule("allow", src_ip_set_ids=("a",))) == [
        'meta nfproto ipv4 ip saddr @addr4-a ACCEPT comment "n"']
    # must not be in an empty set: always true, so the IPv6 variant has no test
    assert compile_(Rule("deny", not_src_ip_set_ids=("a",))) == [
        'meta nfproto ipv4 ip saddr != @addr4-a drop comment "n"', 'meta nfproto ipv6 drop comment "n"']
    # named ports: an empty set drops out of the alternatives; none left = no match
    v6 = compile_(Rule("allow", protocol="tcp", dst_ports=(80,), dst_named_port_ip_set_ids=("np",)))
    assert v6[-1] == 'meta nfproto ipv6 meta l4proto tcp tcp dport 80 ACCEPT comment "n"'
    assert compile_(Rule("allow", dst_named_port_ip_set_ids=("np",), ip_version=6)) == []


def test_host_endpoint_without_interface_is_reported_not_enforced() -> None:
    s = DataplaneState()
    s.host_endpoints["h"] = HostEndpointUpdate("h", "", expected_ips=("192.168.0.10",))
    r = build(s)
    assert r.problems == {"hep:h": "no interface_name: not enforced (resolve it first)"}
    assert "filter-input" in r.ruleset.chains and "tabby-fh-dispatch" not in r.ruleset.chains
