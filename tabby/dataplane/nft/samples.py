# The messages coerce friendly inputs ("tcp", 80, ("tier", "name")); mypy sees the
# normalised field types, so argument types are not checked in this file.
# mypy: disable-error-code="arg-type"
"""Representative dataplane states: golden tests, kernel load checks and the bench.

Each function returns a `DataplaneState` built only from calc-graph messages, the way
the driver would hold it. `scale()` makes big states for apply-time measurements.
"""

from __future__ import annotations

from tabby.calc.messages import (
    ConfigUpdate,
    HostEndpointUpdate,
    IPPoolUpdate,
    IPSetUpdate,
    PolicyId,
    PolicyUpdate,
    ProfileUpdate,
    RouteUpdate,
    Rule,
    TierInfo,
    VTEPUpdate,
    WorkloadEndpointUpdate,
)
from tabby.dataplane.nft.render import DataplaneState

ALLOW_ALL = ProfileUpdate("kns.default", (Rule("allow"),), (Rule("allow"),))


def _state(*msgs: object, config: ConfigUpdate | None = None) -> DataplaneState:
    s = DataplaneState(config=config or ConfigUpdate())
    for m in msgs:
        if isinstance(m, IPSetUpdate):
            s.ipsets[m.set_id] = m
        elif isinstance(m, PolicyUpdate):
            s.policies[m.policy_id] = m
        elif isinstance(m, ProfileUpdate):
            s.profiles[m.profile_id] = m
        elif isinstance(m, WorkloadEndpointUpdate):
            s.workloads[m.endpoint_id] = m
        elif isinstance(m, HostEndpointUpdate):
            s.host_endpoints[m.endpoint_id] = m
        elif isinstance(m, IPPoolUpdate):
            s.pools[m.cidr] = m
        elif isinstance(m, RouteUpdate) and m.kind in ("local-host", "remote-host"):
            s.host_routes[m.dst] = m.dst_node_ip or m.dst.split("/", 1)[0]
        elif isinstance(m, VTEPUpdate):
            s.vtep_hosts[m.node] = m.underlay_ip
        else:
            raise TypeError(f"sample: unsupported message {m!r}")
    return s


def _wep(name: str, ip: str, tiers: tuple[TierInfo, ...] = (),
         profiles: tuple[str, ...] = ("kns.default",)) -> WorkloadEndpointUpdate:
    return WorkloadEndpointUpdate(f"k8s/default.{name}/eth0", f"cali{name}", (f"{ip}/32",), (),
                                  tiers, profiles)


def basic() -> DataplaneState:
    """One workload, one tier, one policy: allow TCP 80 from `role == "frontend"`."""
    return _state(
        IPSetUpdate("s:frontend", "ip", frozenset({"10.65.0.2", "10.65.0.3", "fd00::2"})),
        PolicyUpdate(("default", "default.allow-web"), inbound_rules=(
            Rule("allow", protocol="tcp", src_ip_set_ids=("s:frontend",), dst_ports=(80,),
                 rule_id="default/default.allow-web/ingress/0"),
        )),
        ALLOW_ALL,
        _wep("web", "10.65.0.1", (TierInfo("default", "Deny", ("default.allow-web",), ()),)),
    )


def tiers_and_pass() -> DataplaneState:
    """Pass to the next tier, a tier whose defaultAction is Pass, end-of-tier drop."""
    return _state(
        PolicyUpdate(("security", "security.pass-dns"), inbound_rules=(
            Rule("pass", protocol="udp", dst_ports=(53,)),
            Rule("deny", src_nets=("192.0.2.0/24",)),
        )),
        PolicyUpdate(("kube-admin", "kube-admin.noop"), outbound_rules=(
            Rule("deny", protocol="tcp", dst_ports=(25,)),
        )),
        PolicyUpdate(("default", "default.dns"), inbound_rules=(Rule("allow"),)),
        ALLOW_ALL,
        _wep("dns", "10.65.0.5", (
            TierInfo("kube-admin", "Pass", (), ("kube-admin.noop",)),
            TierInfo("security", "Deny", ("security.pass-dns",), ()),
            TierInfo("default", "Deny", ("default.dns",), ()),
        )),
    )


def profiles() -> DataplaneState:
    """No policies: profiles in order, a profile that denies, and one never sent."""
    return _state(
        ProfileUpdate("kns.prod", inbound_rules=(
            Rule("deny", src_nets=("10.66.0.0/16",)),
            Rule("allow", protocol="tcp", dst_ports=("8000:8999",)),
        ), outbound_rules=(Rule("allow"),)),
        _wep("app", "10.65.0.7", (), ("kns.prod", "ksa.prod.missing")),
    )


def named_ports() -> DataplaneState:
    """Named ports (ip . proto . port sets) ORed with numeric ports, and negated."""
    return _state(
        IPSetUpdate("n:http", "ip-port", frozenset({"10.65.0.1,tcp:8080", "fd00::1,tcp:8080"})),
        IPSetUpdate("n:metrics", "ip-port", frozenset({"10.65.0.1,tcp:9090"})),
        PolicyUpdate(("default", "default.named"), inbound_rules=(
            Rule("allow", dst_named_port_ip_set_ids=("n:http",), ip_version=4),
            Rule("allow", protocol="tcp", dst_ports=(443,),
                 dst_named_port_ip_set_ids=("n:http", "n:metrics"), ip_version=4),
            Rule("deny", not_dst_named_port_ip_set_ids=("n:metrics",), ip_version=4),
        )),
        ALLOW_ALL,
        _wep("named", "10.65.0.1", (TierInfo("default", "Deny", ("default.named",), ()),)),
    )


def log_rules() -> DataplaneState:
    """Log (with the default and an own prefix) continues; ICMP type/code, negations."""
    return _state(
        IPSetUpdate("s:db", "net", frozenset({"10.65.1.0/24", "10.65.1.7", "10.65.2.0/24"})),
        PolicyUpdate(("default", "default.log"), outbound_rules=(
            Rule("log"),
            Rule("log", log_prefix="db-egress", dst_ip_set_ids=("s:db",)),
            Rule("allow", protocol="icmp", icmp_type=8, icmp_code=0),
            Rule("deny", protocol="icmp", not_icmp_type=3, not_icmp_code=4),
            Rule("allow", protocol="tcp", not_protocol="udp", not_dst_ip_set_ids=("s:db",),
                 not_dst_ports=(22, "6000:6010"), dst_nets=("0.0.0.0/0",)),
        )),
        ALLOW_ALL,
        _wep("client", "10.65.0.9", (TierInfo("default", "Deny", (), ("default.log",)),)),
        config=ConfigUpdate(log_prefix="calico-packet"),
    )


def host_endpoint() -> DataplaneState:
    """A host endpoint on eth0 with normal and applyOnForward policy, Calico's failsafes
    (one with a CIDR), and a "*" endpoint for every other interface."""
    return _state(
        PolicyUpdate(("default", "default.ssh-only"), inbound_rules=(
            Rule("allow", protocol="tcp", dst_ports=(22, 80)),
        ), outbound_rules=(Rule("allow"),)),
        PolicyUpdate(("default", "default.fwd"), inbound_rules=(
            Rule("deny", src_nets=("198.51.100.0/24",)),
        )),
        ProfileUpdate("projectcalico-default-allow", (Rule("allow"),), (Rule("allow"),)),
        HostEndpointUpdate(
            "node1/eth0", "eth0", ("192.168.0.10",),
            tiers=(TierInfo("default", "Deny", ("default.ssh-only",), ("default.ssh-only",)),),
            forward_tiers=(TierInfo("default", "Deny", ("default.fwd",), ()),),
        ),
        HostEndpointUpdate("node1/all", "*", (), profile_ids=("projectcalico-default-allow",)),
        config=ConfigUpdate(failsafe_inbound="tcp:22,udp:68,tcp:10.0.0.0/8:6443"),
    )


def do_not_track() -> DataplaneState:
    """doNotTrack and preDNAT host endpoint policy: no end-of-tier drop, no profiles."""
    return _state(
        PolicyUpdate(("default", "default.untracked"), inbound_rules=(
            Rule("allow", protocol="udp", dst_ports=(4789,)),
            Rule("deny", src_nets=("203.0.113.0/24",)),
        ), outbound_rules=(Rule("allow", protocol="udp", src_ports=(4789,)),)),
        PolicyUpdate(("default", "default.nodeports"), inbound_rules=(
            Rule("deny", protocol="tcp", dst_ports=("30000:32767",), not_src_nets=("10.0.0.0/8",)),
        )),
        HostEndpointUpdate(
            "node1/eth0", "eth0", ("192.168.0.10",),
            untracked_tiers=(TierInfo("default", "Deny", ("default.untracked",),
                                      ("default.untracked",)),),
            pre_dnat_tiers=(TierInfo("default", "Deny", ("default.nodeports",), ()),),
        ),
        config=ConfigUpdate(failsafe_inbound=(), failsafe_outbound=()),
    )


def nat_outgoing() -> DataplaneState:
    """Two pools, one with natOutgoing, plus an IPv6 pool with natOutgoing."""
    return _state(
        IPPoolUpdate("10.65.0.0/16", masquerade=True),
        IPPoolUpdate("10.66.0.0/16", masquerade=False),
        IPPoolUpdate("fd00:65::/64", masquerade=True),
        config=ConfigUpdate(workload_source_spoofing="Any"),
    )


def merged_rules() -> DataplaneState:
    """Runs of same-action rules merged into set lookups (merge.py): source CIDRs, a Log
    rule ending a run, (source . port) pairs, ports beside a selector, a big group in a
    named set, and rules whose negations differ staying apart."""
    web = tuple(Rule("allow", protocol="tcp", dst_ports=(80,), src_nets=(f"10.66.{i}.0/24",))
                for i in (0, 1, 2, 4, 9))
    pairs = tuple(Rule("deny", protocol="tcp", src_nets=(net,), dst_ports=(port,))
                  for net, port in (("192.0.2.1/32", 22), ("192.0.2.2/32", 23),
                                    ("2001:db8::1/128", 22)))
    big = tuple(Rule("allow", protocol="udp", src_nets=(f"10.67.{k // 250}.{k % 250 + 1}/32",),
                     dst_ports=(f"{5000 + k % 4 * 10}:{5005 + k % 4 * 10}",)) for k in range(40))
    return _state(
        IPSetUpdate("s:mon", "ip", frozenset({"10.65.9.1"})),
        PolicyUpdate(("default", "default.merged"), inbound_rules=(
            *web, Rule("log", log_prefix="merged"), *pairs,
            Rule("allow", protocol="tcp", src_ip_set_ids=("s:mon",), dst_ports=(9100,)),
            Rule("allow", protocol="tcp", src_ip_set_ids=("s:mon",), dst_ports=(9200,)),
            Rule("allow", src_nets=("10.68.0.1/32",), not_src_nets=("10.68.0.0/31",)),
            Rule("allow", src_nets=("10.68.0.5/32",), not_src_nets=("10.68.0.4/31",)),
            *big,
        )),
        ALLOW_ALL,
        _wep("merged", "10.65.0.11", (TierInfo("default", "Deny", ("default.merged",), ()),)),
    )


def tunnels() -> DataplaneState:
    """A host endpoint on every interface with no policy, pools using VXLAN and IPIP:
    tunnel packets from/to known nodes (host routes, a VTEP) still pass."""
    return _state(
        IPPoolUpdate("10.65.0.0/16", vxlan_mode="Always"),
        IPPoolUpdate("10.66.0.0/16", ipip_mode="CrossSubnet", disabled=True),
        RouteUpdate("192.168.0.10/32", "local-host", dst_node="node1", dst_node_ip="192.168.0.10"),
        RouteUpdate("192.168.0.11/32", "remote-host", dst_node="node2", dst_node_ip="192.168.0.11"),
        VTEPUpdate("node3", "10.65.3.0", "66:00:00:00:00:03", "192.168.1.12"),
        HostEndpointUpdate("node1/all", "*", ()),
        config=ConfigUpdate(failsafe_inbound=(), failsafe_outbound=()),
    )


SAMPLES = {
    "basic": basic, "tiers_and_pass": tiers_and_pass, "profiles": profiles,
    "named_ports": named_ports, "log_rules": log_rules, "host_endpoint": host_endpoint,
    "do_not_track": do_not_track, "nat_outgoing": nat_outgoing, "merged_rules": merged_rules,
    "tunnels": tunnels,
}


def scale(rules: int, endpoints: int = 2, set_size: int = 20, rules_per_set: int = 20, *,
          workloads: list[tuple[str, str]] | None = None) -> DataplaneState:
    """`rules` rules in policies of 20 rules each, every policy applied to every endpoint's
    ingress. Each rule allows one TCP port from an IP set (one selector per
    `rules_per_set` rules, `set_size` IPv4 addresses in 10.200.0.0/16 - never real
    sources), so every rule is evaluated and none matches. `workloads` = [(ifname, ip)]
    for real endpoints (the bench), else made-up ones."""
    s = _state(ALLOW_ALL)
    per_policy = 20
    names = []
    for p in range((rules + per_policy - 1) // per_policy):
        name = f"bench-{p:04d}"
        names.append(name)
        rs = []
        for i in range(min(per_policy, rules - p * per_policy)):
            k = p * per_policy + i
            g = k // rules_per_set
            set_id = f"s:bench-{g}"
            if set_id not in s.ipsets:
                s.ipsets[set_id] = IPSetUpdate(set_id, "ip", frozenset(
                    f"10.200.{(g * set_size + j) // 250 % 250}.{(g * set_size + j) % 250 + 1}"
                    for j in range(set_size)))
            rs.append(Rule("allow", protocol="tcp", src_ip_set_ids=(set_id,),
                           dst_ports=(10000 + k % 50000,)))
        s.policies[PolicyId("default", name)] = PolicyUpdate(("default", name), tuple(rs))
    # the last policy of the tier lets real traffic through, after all the others
    s.policies[PolicyId("default", "zz-allow")] = PolicyUpdate(("default", "zz-allow"),
                                                               (Rule("allow"),))
    tier = TierInfo("default", "Deny", (*names, "zz-allow"), ())
    eps = workloads or [(f"calib{i:06d}", f"10.65.{i // 250}.{i % 250 + 1}") for i in range(endpoints)]
    for ifname, ip in eps:
        s.workloads[f"bench/{ifname}"] = WorkloadEndpointUpdate(
            f"bench/{ifname}", ifname, (f"{ip}/32",), (), (tier,), ("kns.default",))
    return s


def one_policy(rules: int, *, workloads: list[tuple[str, str]] | None = None,
               endpoints: int = 2) -> DataplaneState:
    """One policy of `rules` rules in every endpoint's ingress tier: each allows TCP from
    its own /32 in 10.200.0.0/15 (never a real source) to one of 50 ports, so none
    matches; a last policy lets real traffic through. Merged, the policy is one rule with
    one (source . port) set lookup; unmerged, every rule is evaluated."""
    s = _state(ALLOW_ALL)
    rs = tuple(
        Rule("allow", protocol="tcp", dst_ports=(10000 + k % 50,),
             src_nets=(f"10.{200 + k // 62500}.{k // 250 % 250}.{k % 250 + 1}/32",))
        for k in range(rules))
    s.policies[PolicyId("default", "big")] = PolicyUpdate(("default", "big"), rs)
    s.policies[PolicyId("default", "zz-allow")] = PolicyUpdate(("default", "zz-allow"),
                                                               (Rule("allow"),))
    tier = TierInfo("default", "Deny", ("big", "zz-allow"), ())
    eps = workloads or [(f"calib{i:06d}", f"10.65.{i // 250}.{i % 250 + 1}") for i in range(endpoints)]
    for ifname, ip in eps:
        s.workloads[f"bench/{ifname}"] = WorkloadEndpointUpdate(
            f"bench/{ifname}", ifname, (f"{ip}/32",), (), (tier,), ("kns.default",))
    return s
