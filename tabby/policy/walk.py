"""Walking one endpoint's chain for one direction: the steps taken and what decided.

A chain is the applicable tiers (each with its policies) of one kind - normal, untracked,
preDNAT or forward (see `tabby.policy.resolve`). The kinds differ only at the ends, as
Felix renders them:

* normal: a tier in which nothing decided drops (unless its defaultAction is Pass), then
  the endpoint's profiles, then drop;
* forward: the same end-of-tier drop, but no profiles and no final drop - a packet that
  gets through every tier (or meets no tier) is not stopped here;
* untracked and preDNAT: no end-of-tier drop, no profiles - a packet no rule decided
  goes on to the next stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tabby.policy.match import Flow, Matcher, Peer
from tabby.policy.model import PolicySet
from tabby.policy.resolve import TierPolicies

NO_ALLOW = "deny: no policy or profile allowed"
NOT_ENDPOINT = "allow: not a Calico endpoint, no policy of its own"

# Stages of host endpoint processing (None: the normal policy of an endpoint).
FAILSAFE = "failsafe"
UNTRACKED = "untracked"
PRE_DNAT = "preDNAT"
FORWARD = "forward"
ENDPOINT_TO_HOST = "endpointToHost"
LOCAL = "local"  # host <-> its own workloads / itself: no policy in the way
TUNNEL = "tunnel"  # VXLAN / IP-in-IP between known nodes: accepted ahead of host policy


@dataclass(frozen=True)
class Step:
    """One thing that happened while evaluating a direction."""

    action: str  # Allow | Deny | Pass | Log | NoMatch | EndOfTier | MissingProfile | Skip
    tier: str | None = None
    policy: str | None = None
    profile: str | None = None
    rule: int | None = None
    note: str | None = None
    stage: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.stage is not None:
            out["stage"] = self.stage
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
    """One side's verdict: an endpoint's egress or ingress, or (`stage` forward) a host
    endpoint a forwarded packet crosses."""

    direction: str  # Ingress | Egress
    peer: Peer
    allowed: bool
    decider: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    stage: str | None = None

    @property
    def evaluated(self) -> bool:
        return self.peer.endpoint is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.peer.endpoint.key if self.peer.endpoint else None,
            "ip": str(self.peer.ip) if self.peer.ip is not None else None,
        }
        if self.stage is not None:
            out["stage"] = self.stage
            out["direction"] = self.direction
        out.update({
            "verdict": "Allow" if self.allowed else "Deny",
            "decider": dict(self.decider),
            "steps": [s.to_json() for s in self.steps],
        })
        return out


def _staged(stage: str | None, decider: dict[str, Any]) -> dict[str, Any]:
    return {"stage": stage, **decider} if stage is not None else decider


def walk_chain(ps: PolicySet, m: Matcher, flow: Flow, direction: str,
               chain: Sequence[TierPolicies], steps: list[Step], *,
               profiles: Sequence[str] | None = None, stage: str | None = None,
               end_of_tier_drop: bool = True) -> tuple[bool, dict[str, Any]] | None:
    """(allowed, decider), or None when the chain let the packet through undecided
    (only without `profiles`). Steps are appended to `steps`."""
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
                                  note=note, stage=stage))
                if rule.action != "Log":
                    decided = rule
                    break
            if decided is None:
                steps.append(Step("NoMatch", tier=tier, policy=pol.key, stage=stage))
                continue
            if decided.action == "Pass":
                passed = True
                break
            return decided.action == "Allow", _staged(stage, {
                "tier": tier, "policy": pol.key, "rule": decided.index,
                "action": decided.action,
            })
        if passed:
            continue
        if tp.tier.default_action == "Pass":
            steps.append(Step("EndOfTier", tier=tier, note="tier defaultAction Pass",
                              stage=stage))
            continue
        if not end_of_tier_drop:
            steps.append(Step("EndOfTier", tier=tier, stage=stage,
                              note="no policy in the tier decided: next stage"))
            continue
        steps.append(Step("EndOfTier", tier=tier, stage=stage,
                          note="no policy in the tier decided: deny"))
        return False, _staged(stage, {"tier": tier, "default": "deny: end of tier"})

    if profiles is None:
        return None
    for name in profiles:
        prof = ps.profiles.get(name)
        if prof is None:
            steps.append(Step("MissingProfile", profile=name, note="profile does not exist",
                              stage=stage))
            continue
        for rule in prof.rules(direction):
            if not m.rule_matches(rule, flow):
                continue
            steps.append(Step(rule.action, profile=name, rule=rule.index, stage=stage))
            if rule.action == "Log":
                continue
            if rule.action == "Pass":
                break  # a profile has no tier to skip: go to the next profile
            return rule.action == "Allow", _staged(
                stage, {"profile": name, "rule": rule.index, "action": rule.action})
        else:
            steps.append(Step("NoMatch", profile=name, stage=stage))
    return False, _staged(stage, {"default": NO_ALLOW})
