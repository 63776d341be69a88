"""A dataplane model: the calc graph's messages folded into the state they describe.

For tests, benchmarks and debugging: `DataplaneModel.apply(msg)` keeps the latest value per
key, like a driver's pending state, and (strict by default) checks the order contract a
real dataplane relies on - an IP set exists before a rule uses it and is removed only
after the last rule using it; a policy exists before an endpoint jumps to it; a VTEP
exists before a VXLAN route through it; deltas add only absent members and remove only
present ones; removals name things that exist; InSync comes once. A broken contract
raises `OrderError` naming the message.
"""

from __future__ import annotations

from typing import Any

from tabby.calc import messages as m


class OrderError(AssertionError):
    """A message broke the calc -> dataplane ordering contract."""


def rule_sets(rules: tuple[m.Rule, ...]) -> set[str]:
    out: set[str] = set()
    for r in rules:
        out.update(r.src_ip_set_ids, r.not_src_ip_set_ids, r.dst_ip_set_ids,
                   r.not_dst_ip_set_ids, r.src_named_port_ip_set_ids,
                   r.not_src_named_port_ip_set_ids, r.dst_named_port_ip_set_ids,
                   r.not_dst_named_port_ip_set_ids)
    return out


def endpoint_policies(msg: Any) -> set[m.PolicyId]:
    out: set[m.PolicyId] = set()
    groups = [msg.tiers]
    if isinstance(msg, m.HostEndpointUpdate):
        groups += [msg.untracked_tiers, msg.pre_dnat_tiers, msg.forward_tiers]
    for tiers in groups:
        for t in tiers:
            out.update(m.PolicyId(t.name, p) for p in (*t.ingress_policies, *t.egress_policies))
    return out


class DataplaneModel:
    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.ipsets: dict[str, tuple[str, set[str]]] = {}
        self.policies: dict[m.PolicyId, m.PolicyUpdate] = {}
        self.profiles: dict[str, m.ProfileUpdate] = {}
        self.workloads: dict[str, m.WorkloadEndpointUpdate] = {}
        self.host_endpoints: dict[str, m.HostEndpointUpdate] = {}
        self.pools: dict[str, m.IPPoolUpdate] = {}
        self.config: m.ConfigUpdate | None = None
        self.routes: dict[str, m.RouteUpdate] = {}
        self.vteps: dict[str, m.VTEPUpdate] = {}
        self.in_sync = False
        self.count = 0

    def __call__(self, msg: object) -> None:
        self.apply(msg)

    def _check(self, ok: bool, msg: object, why: str) -> None:
        if self.strict and not ok:
            raise OrderError(f"{why}: {msg!r}"[:2000])

    def _sets_in_use(self) -> set[str]:
        used: set[str] = set()
        rule_sources: list[m.PolicyUpdate | m.ProfileUpdate] = [
            *self.policies.values(), *self.profiles.values()]
        for p in rule_sources:
            used |= rule_sets(p.inbound_rules) | rule_sets(p.outbound_rules)
        return used

    def _policies_in_use(self) -> set[m.PolicyId]:
        used: set[m.PolicyId] = set()
        for ep in (*self.workloads.values(), *self.host_endpoints.values()):
            used |= endpoint_policies(ep)
        return used

    def apply(self, msg: object) -> None:
        self.count += 1
        if isinstance(msg, m.IPSetUpdate):
            self.ipsets[msg.set_id] = (msg.kind, set(msg.members))
        elif isinstance(msg, m.IPSetDeltaUpdate):
            got = self.ipsets.get(msg.set_id)
            self._check(got is not None, msg, "delta for an unknown IP set")
            if got is not None:
                members = got[1]
                self._check(not (msg.added & members), msg, "delta adds present members")
                self._check(msg.removed <= members, msg, "delta removes absent members")
                members -= msg.removed
                members |= msg.added
        elif isinstance(msg, m.IPSetRemove):
            self._check(msg.set_id in self.ipsets, msg, "removing an unknown IP set")
            self._check(msg.set_id not in self._sets_in_use(), msg, "IP set still in use")
            self.ipsets.pop(msg.set_id, None)
        elif isinstance(msg, m.PolicyUpdate | m.ProfileUpdate):
            missing = (rule_sets(msg.inbound_rules) | rule_sets(msg.outbound_rules)) - set(
                self.ipsets)
            self._check(not missing, msg, f"rules use IP sets not sent yet {sorted(missing)}")
            if isinstance(msg, m.PolicyUpdate):
                self.policies[msg.policy_id] = msg
            else:
                self.profiles[msg.profile_id] = msg
        elif isinstance(msg, m.PolicyRemove):
            self._check(msg.policy_id in self.policies, msg, "removing an unknown policy")
            self._check(msg.policy_id not in self._policies_in_use(), msg, "policy in use")
            self.policies.pop(msg.policy_id, None)
        elif isinstance(msg, m.ProfileRemove):
            self._check(msg.profile_id in self.profiles, msg, "removing an unknown profile")
            self.profiles.pop(msg.profile_id, None)
        elif isinstance(msg, m.WorkloadEndpointUpdate | m.HostEndpointUpdate):
            missing_p = endpoint_policies(msg) - set(self.policies)
            self._check(not missing_p, msg, f"endpoint uses policies not sent {missing_p}")
            if isinstance(msg, m.WorkloadEndpointUpdate):
                self.workloads[msg.endpoint_id] = msg
            else:
                self.host_endpoints[msg.endpoint_id] = msg
        elif isinstance(msg, m.WorkloadEndpointRemove):
            self._check(msg.endpoint_id in self.workloads, msg, "removing an unknown endpoint")
            self.workloads.pop(msg.endpoint_id, None)
        elif isinstance(msg, m.HostEndpointRemove):
            self._check(msg.endpoint_id in self.host_endpoints, msg,
                        "removing an unknown host endpoint")
            self.host_endpoints.pop(msg.endpoint_id, None)
        elif isinstance(msg, m.IPPoolUpdate):
            self.pools[msg.cidr] = msg
        elif isinstance(msg, m.IPPoolRemove):
            self._check(msg.cidr in self.pools, msg, "removing an unknown pool")
            self.pools.pop(msg.cidr, None)
        elif isinstance(msg, m.ConfigUpdate):
            self.config = msg
        elif isinstance(msg, m.RouteUpdate):
            if msg.encap == "vxlan":
                self._check(msg.dst_node in self.vteps, msg, "VXLAN route before its VTEP")
            self.routes[msg.dst] = msg
        elif isinstance(msg, m.RouteRemove):
            self._check(msg.dst in self.routes, msg, "removing an unknown route")
            self.routes.pop(msg.dst, None)
        elif isinstance(msg, m.VTEPUpdate):
            self.vteps[msg.node] = msg
        elif isinstance(msg, m.VTEPRemove):
            self._check(msg.node in self.vteps, msg, "removing an unknown VTEP")
            self._check(not any(r.encap == "vxlan" and r.dst_node == msg.node
                                for r in self.routes.values()), msg, "VTEP still routed via")
            self.vteps.pop(msg.node, None)
        elif isinstance(msg, m.InSync):
            self._check(not self.in_sync, msg, "second InSync")
            self.in_sync = True
        else:
            raise TypeError(f"not a dataplane message: {msg!r}")

    def state(self) -> dict[str, Any]:
        """Everything the dataplane would program, as plain comparable values."""
        return {
            "ipsets": {k: (kind, frozenset(v)) for k, (kind, v) in self.ipsets.items()},
            "policies": dict(self.policies),
            "profiles": dict(self.profiles),
            "workloads": dict(self.workloads),
            "host_endpoints": dict(self.host_endpoints),
            "pools": dict(self.pools),
            "config": self.config,
            "routes": dict(self.routes),
            "vteps": dict(self.vteps),
        }


def fresh_state(node_name: str, items: Any) -> dict[str, Any]:
    """What a new graph fed only `items` ((key, value) pairs) and InSync programs."""
    from tabby.calc.graph import CalcGraph

    model = DataplaneModel()
    graph = CalcGraph(node_name, model.apply)
    for key, value in items:
        graph.on_update(key, value)
    graph.on_in_sync()
    return model.state()
