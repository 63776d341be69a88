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
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from tabby.policy.errors import PolicyError
from tabby.policy.match import Flow, Matcher, Peer
from tabby.policy.model import EGRESS, INGRESS, Endpoint, PolicySet
from tabby.policy.resolve import EndpointPolicies, TierPolicies, resolve_endpoint
from tabby.policy.rules import PORT_PROTOCOLS, protocol_name, protocol_number

NO_ALLOW = "deny: no policy or profile allowed"
NOT_ENDPOINT = "allow: not a Calico endpoint, no policy of its own"


@dataclass(frozen=True)
class Step:
    """One thing that happened while evaluating a direction."""

    action: str  # Allow | Deny | Pass | Log | NoMatch | EndOfTier | MissingProfile
    tier: str | None = None
    policy: str | None = None
    profile: str | None = None
    rule: int | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("tier", "policy", "profile", "rule"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["action"] = self.action
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class DirectionResult:
    direction: str  # Ingress | Egress
    peer: Peer
    allowed: bool
    decider: dict[str, Any]
    steps: list[Step] = field(default_factory=list)

    @property
    def evaluated(self) -> bool:
        return self.peer.endpoint is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.peer.endpoint.key if self.peer.endpoint else None,
            "ip": str(self.peer.ip) if self.peer.ip is not None else None,
            "verdict": "Allow" if self.allowed else "Deny",
            "decider": dict(self.decider),
            "steps": [s.to_json() for s in self.steps],
        }


@dataclass
class Verdict:
    flow: Flow
    egress: DirectionResult
    ingress: DirectionResult

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed

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
        return {
            "verdict": "Allow" if self.allowed else "Deny",
            "flow": flow,
            "egress": self.egress.to_json(),
            "ingress": self.ingress.to_json(),
        }


def evaluate(ps: PolicySet, flow: Flow, *, matcher: Matcher | None = None,
             cached: bool = True) -> Verdict:
    """The verdict for `flow`. `cached=False` re-resolves the policy lists (a baseline)."""
    m = matcher or Matcher(ps)
    return Verdict(
        flow=flow,
        egress=evaluate_side(ps, m, flow, EGRESS, cached=cached),
        ingress=evaluate_side(ps, m, flow, INGRESS, cached=cached),
    )


def evaluate_side(ps: PolicySet, m: Matcher, flow: Flow, direction: str, *,
                  cached: bool = True, chains: EndpointPolicies | None = None) -> DirectionResult:
    peer = flow.src if direction == EGRESS else flow.dst
    ep = peer.endpoint
    if ep is None:
        return DirectionResult(direction, peer, True, {"default": NOT_ENDPOINT})
    if chains is None:
        chains = ps.resolved(ep) if cached else resolve_endpoint(ps.ordered(), ep)
    return _walk(ps, m, flow, direction, peer, chains.chain(direction), ep)


def _walk(ps: PolicySet, m: Matcher, flow: Flow, direction: str, peer: Peer,
          chain: tuple[TierPolicies, ...], ep: Endpoint) -> DirectionResult:
    steps: list[Step] = []

    def done(allowed: bool, decider: dict[str, Any]) -> DirectionResult:
        return DirectionResult(direction, peer, allowed, decider, steps)

    for tp in chain:
        tier = tp.tier.name
        passed = False
        for pol in tp.policies:
            decided = None
            for rule in pol.rules(direction):
                if not m.rule_matches(rule, flow):
                    continue
                note = "http match not evaluated" if rule.http else None
                steps.append(Step(rule.action, tier=tier, policy=pol.key, rule=rule.index,
                                  note=note))
                if rule.action != "Log":
                    decided = rule
                    break
            if decided is None:
                steps.append(Step("NoMatch", tier=tier, policy=pol.key))
                continue
            if decided.action == "Pass":
                passed = True
                break
            return done(decided.action == "Allow", {
                "tier": tier, "policy": pol.key, "rule": decided.index,
                "action": decided.action,
            })
        if passed:
            continue
        if tp.tier.default_action == "Pass":
            steps.append(Step("EndOfTier", tier=tier, note="tier defaultAction Pass"))
            continue
        steps.append(Step("EndOfTier", tier=tier, note="no policy in the tier decided: deny"))
        return done(False, {"tier": tier, "default": "deny: end of tier"})

    for name in ep.profiles:
        prof = ps.profiles.get(name)
        if prof is None:
            steps.append(Step("MissingProfile", profile=name, note="profile does not exist"))
            continue
        for rule in prof.rules(direction):
            if not m.rule_matches(rule, flow):
                continue
            steps.append(Step(rule.action, profile=name, rule=rule.index))
            if rule.action == "Log":
                continue
            if rule.action == "Pass":
                break  # a profile has no tier to skip: go to the next profile
            return done(rule.action == "Allow",
                        {"profile": name, "rule": rule.index, "action": rule.action})
        else:
            steps.append(Step("NoMatch", profile=name))
    return done(False, {"default": NO_ALLOW})


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


def make_flow(ps: PolicySet, src: str, dst: str, *, protocol: str | int = "TCP",
              port: int | None = None, src_port: int | None = None,
              icmp_type: int | None = None, icmp_code: int | None = None,
              ip_version: int | None = None) -> Flow:
    """A Flow from CLI-style input; raises PolicyError naming the bad field."""
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
    return Flow(s, d, proto, dst_port=port, src_port=src_port, icmp_type=icmp_type,
                icmp_code=icmp_code, ip_version=version)
