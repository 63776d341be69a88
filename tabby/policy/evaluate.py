"""The reference evaluator: a flow's verdict under Calico's semantics, and why.

A flow is allowed when the source endpoint's egress policy and the destination endpoint's
ingress policy both allow it; a side that is a bare IP (not a Calico endpoint) evaluates no
policy of its own. For one endpoint and direction:

* tiers in order; within a tier, policies in order; within a policy, the first rule that
  matches decides: Allow ends all evaluation (allowed), Deny drops, Pass skips the rest of
  the tier, Log records and goes on to the next rule;
* a policy with no matching rule falls through to the next policy of the tier;
* at the end of a tier in which no rule decided, the packet is dropped, unless the tier's
  defaultAction is Pass (then the next tier);
* after the last tier (reached by Pass, or when no tier applies) the endpoint's profiles are
  tried in order; a profile Allow accepts, Deny drops; nothing allowing -> drop.

Host endpoints add stages (`tabby.policy.hostpath`): a host endpoint side is the host's
own traffic (failsafe ports, then untracked, preDNAT and normal policy); a flow forwarded
through a host endpoint (`Flow.via_in` / `via_out`) meets its untracked, preDNAT and
applyOnForward policy; a workload to its own host meets DefaultEndpointToHostAction
instead of host endpoint policy; the host to its own workloads or itself is not policed.
Between two workloads nothing of this applies.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from tabby.policy import hostpath
from tabby.policy.errors import PolicyError
from tabby.policy.match import Flow, Matcher, Peer
from tabby.policy.model import EGRESS, INGRESS, Endpoint, PolicySet
from tabby.policy.resolve import EndpointPolicies, resolve_endpoint
from tabby.policy.rules import PORT_PROTOCOLS, protocol_name, protocol_number
from tabby.policy.walk import (
    NO_ALLOW,
    NOT_ENDPOINT,
    DirectionResult,
    Step,
    walk_chain,
)

__all__ = ["NO_ALLOW", "NOT_ENDPOINT", "DirectionResult", "Step", "Verdict", "evaluate",
           "evaluate_side", "make_flow", "resolve_peer"]

HEP = "HostEndpoint"
WEP = "WorkloadEndpoint"


@dataclass
class Verdict:
    flow: Flow
    egress: DirectionResult
    ingress: DirectionResult
    # Host endpoints a forwarded packet crosses, in packet order (stage "forward").
    forward: list[DirectionResult] = field(default_factory=list)
    traffic: str = "endpoints"

    @property
    def allowed(self) -> bool:
        return (self.egress.allowed and self.ingress.allowed
                and all(r.allowed for r in self.forward))

    def to_json(self) -> dict[str, Any]:
        f = self.flow
        flow: dict[str, Any] = {
            "from": f.src.label, "to": f.dst.label,
            "protocol": protocol_name(f.protocol), "ipVersion": f.ip_version,
        }
        for key, ip in (("srcIP", f.src.ip), ("dstIP", f.dst.ip)):
            if ip is not None:
                flow[key] = str(ip)
        for key, value in (("port", f.dst_port), ("srcPort", f.src_port),
                           ("icmpType", f.icmp_type), ("icmpCode", f.icmp_code)):
            if value is not None:
                flow[key] = value
        for key, hep in (("viaIn", f.via_in), ("viaOut", f.via_out)):
            if hep is not None:
                flow[key] = hep.key
        out: dict[str, Any] = {
            "verdict": "Allow" if self.allowed else "Deny",
            "traffic": self.traffic,
            "flow": flow,
            "egress": self.egress.to_json(),
        }
        if self.forward:
            out["forward"] = [r.to_json() for r in self.forward]
        out["ingress"] = self.ingress.to_json()
        return out


def _same_node(a: Endpoint, b: Endpoint) -> bool:
    return bool(a.node) and a.node == b.node


def evaluate(ps: PolicySet, flow: Flow, *, matcher: Matcher | None = None,
             cached: bool = True) -> Verdict:
    """The verdict for `flow`. `cached=False` re-resolves the policy lists (a baseline)."""
    m = matcher or Matcher(ps)
    s, d = flow.src.endpoint, flow.dst.endpoint
    if s is not None and s.kind == HEP and d is not None and _same_node(s, d):
        what = "host to itself" if d.kind == HEP else "host to its own workload"
        eg, ing = hostpath.local(flow, what)
        return Verdict(flow, eg, ing, traffic="local")
    if s is not None and s.kind == WEP and d is not None and d.kind == HEP and _same_node(s, d):
        eg, ing = hostpath.workload_to_host(
            ps, flow, evaluate_side(ps, m, flow, EGRESS, cached=cached), d)
        return Verdict(flow, eg, ing, traffic="workloadToHost")

    egress = (hostpath.from_host(ps, m, flow, s) if s is not None and s.kind == HEP
              else evaluate_side(ps, m, flow, EGRESS, cached=cached))
    forward: list[DirectionResult] = []
    hops: list[tuple[str, Endpoint]] = []
    if flow.via_out is not None:
        hops.append(("out", flow.via_out))
    if flow.via_in is not None:
        # Out at the source's node, then in at the destination's; on one node (forwarding
        # between two host endpoints) the packet comes in before it goes out.
        first = flow.via_out is not None and _same_node(flow.via_in, flow.via_out)
        hops.insert(0 if first else len(hops), ("in", flow.via_in))
    for way, hep in hops:
        forward.append(hostpath.forward_in(ps, m, flow, hep) if way == "in"
                       else hostpath.forward_out(ps, m, flow, hep))
    if d is not None and d.kind == HEP:
        ingress = hostpath.to_host(ps, m, flow, d)
    else:
        ingress = evaluate_side(ps, m, flow, INGRESS, cached=cached)
    return Verdict(flow, egress, ingress, forward, _traffic(flow))


def _traffic(flow: Flow) -> str:
    s, d = flow.src.endpoint, flow.dst.endpoint
    parts = []
    if s is not None and s.kind == HEP:
        parts.append("fromHost")
    if flow.via_in is not None or flow.via_out is not None:
        parts.append("forwarded")
    if d is not None and d.kind == HEP:
        parts.append("toHost")
    return "+".join(parts) or "endpoints"


def evaluate_side(ps: PolicySet, m: Matcher, flow: Flow, direction: str, *,
                  cached: bool = True, chains: EndpointPolicies | None = None) -> DirectionResult:
    """One endpoint's normal policy for one direction (a bare IP: nothing to evaluate)."""
    peer = flow.src if direction == EGRESS else flow.dst
    ep = peer.endpoint
    if ep is None:
        return DirectionResult(direction, peer, True, {"default": NOT_ENDPOINT})
    if chains is None:
        chains = ps.resolved(ep) if cached else resolve_endpoint(ps.ordered(), ep)
    steps: list[Step] = []
    got = walk_chain(ps, m, flow, direction, chains.chain(direction), steps,
                     profiles=ep.profiles)
    assert got is not None  # a chain with profiles always decides
    return DirectionResult(direction, peer, got[0], got[1], steps)


# -- building flows from user input -------------------------------------------------------

def resolve_peer(ps: PolicySet, text: str, version: int) -> Peer:
    """`namespace/name` of a workload, a host endpoint name, or an IP address."""
    text = text.strip()
    ep = ps.endpoint(text)
    if ep is not None:
        return Peer(ep, ep.ip(version))
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        kind = "workload endpoint" if "/" in text else "endpoint"
        raise PolicyError(f"unknown {kind} {text!r} (namespace/name, host endpoint name or IP)") \
            from None
    return Peer(None, ip)


def _infer_version(ps: PolicySet, names: tuple[str, ...]) -> int:
    for text in names:
        if ps.endpoint(text.strip()) is None:
            try:
                return ipaddress.ip_address(text.strip()).version
            except ValueError:
                pass
    eps = [ep for ep in (ps.endpoint(t.strip()) for t in names) if ep is not None]
    if any(ep.ip(4) for ep in eps) or not any(ep.ip(6) for ep in eps):
        return 4
    return 6


def _host_endpoint(ps: PolicySet, name: str | None, flag: str) -> Endpoint | None:
    if name is None:
        return None
    ep = ps.endpoint(name.strip())
    if ep is None or ep.kind != HEP:
        raise PolicyError(f"{flag}: {name!r} is not a host endpoint")
    return ep


def _outside(ps: PolicySet, peer: Peer) -> bool:
    """A bare address that is no Calico endpoint's: from outside the cluster."""
    return peer.endpoint is None and peer.ip is not None and not ps.endpoints_at(peer.ip)


def _only_host_endpoint(ps: PolicySet, ep: Endpoint | None) -> Endpoint | None:
    """The host endpoint of a workload's node, when the node has exactly one."""
    if ep is None or ep.kind != WEP or not ep.node:
        return None
    heps = ps.host_endpoints_on(ep.node)
    return heps[0] if len(heps) == 1 else None


def make_flow(ps: PolicySet, src: str, dst: str, *, protocol: str | int = "TCP",
              port: int | None = None, src_port: int | None = None,
              icmp_type: int | None = None, icmp_code: int | None = None,
              ip_version: int | None = None, via_in: str | None = None,
              via_out: str | None = None) -> Flow:
    """A Flow from CLI-style input; raises PolicyError naming the bad field.

    `via_in` / `via_out` name the host endpoints a forwarded flow crosses (in at the
    destination's node, out at the source's). Unnamed, a flow between an address outside
    the cluster and a workload is taken to cross the workload node's host endpoint when
    that node has exactly one; otherwise no host endpoint is crossed.
    """
    if ip_version not in (None, 4, 6):
        raise PolicyError(f"--ip-version: invalid value {ip_version!r} (4 or 6)")
    proto = protocol_number(protocol, "--protocol")
    version = ip_version or _infer_version(ps, (src, dst))
    s = resolve_peer(ps, src, version)
    d = resolve_peer(ps, dst, version)
    for p, flag in ((s, "--from"), (d, "--to")):
        if p.ip is not None and p.ip.version != version:
            raise PolicyError(f"{flag}: {p.ip} is not an IPv{version} address")
    for value, flag in ((port, "--port"), (src_port, "--src-port")):
        if value is not None and not 0 < value < 65536:
            raise PolicyError(f"{flag}: invalid port {value} (1-65535)")
    if proto in PORT_PROTOCOLS and port is None:
        raise PolicyError(f"--port: required for protocol {protocol_name(proto)}")
    if proto not in PORT_PROTOCOLS and (port is not None or src_port is not None):
        raise PolicyError(f"--port: protocol {protocol_name(proto)} has no ports")
    if (icmp_type is not None or icmp_code is not None) and proto not in (1, 58):
        raise PolicyError("--icmp-type/--icmp-code: need protocol ICMP or ICMPv6")
    if icmp_code is not None and icmp_type is None:
        raise PolicyError("--icmp-code: requires --icmp-type")
    if icmp_type is not None and not 0 <= icmp_type <= 254:
        raise PolicyError(f"--icmp-type: invalid value {icmp_type} (0-254)")
    if icmp_code is not None and not 0 <= icmp_code <= 255:
        raise PolicyError(f"--icmp-code: invalid value {icmp_code} (0-255)")
    hep_in = _host_endpoint(ps, via_in, "--via-in")
    hep_out = _host_endpoint(ps, via_out, "--via-out")
    for hep, side, flag in ((hep_in, d, "--via-in"), (hep_out, s, "--via-out")):
        if hep is not None and side.endpoint is not None and side.endpoint.kind == HEP:
            raise PolicyError(f"{flag}: {side.endpoint.key} is a host endpoint: a host's own "
                              "traffic is not forwarded")
    if hep_in is None and via_in is None and _outside(ps, s):
        hep_in = _only_host_endpoint(ps, d.endpoint)
    if hep_out is None and via_out is None and _outside(ps, d):
        hep_out = _only_host_endpoint(ps, s.endpoint)
    return Flow(s, d, proto, dst_port=port, src_port=src_port, icmp_type=icmp_type,
                icmp_code=icmp_code, ip_version=version, via_in=hep_in, via_out=hep_out)
