"""Reachability between every pair of endpoints for one protocol/port, fast.

Same semantics as `tabby.policy.evaluate` (and the tests hold them to it), but organised for
many pairs: a rule's match splits into flow-wide criteria, a source-side test and a
destination-side test (see `Matcher`). For the endpoints of the matrix each side test is
computed once per rule as a bit mask over the endpoints, and each endpoint's chain (resolved
once) is walked over masks: the verdict for all peers of one endpoint comes out of a few
integer operations per rule instead of one evaluation per pair.
"""

from __future__ import annotations

from collections.abc import Sequence

from tabby.policy.match import Flow, Matcher, Peer
from tabby.policy.model import EGRESS, INGRESS, Endpoint, PolicySet
from tabby.policy.resolve import TierPolicies
from tabby.policy.rules import EntityMatch, Rule


class _Masks:
    """Per-rule side masks over the matrix endpoints, computed on first use."""

    def __init__(self, m: Matcher, peers: Sequence[Peer], flow: Flow) -> None:
        self.m = m
        self.peers = peers
        self.flow = flow
        self.all = (1 << len(peers)) - 1
        self._cache: dict[tuple[int, bool], int] = {}
        self._keep: list[EntityMatch] = []  # keeps id() keys valid

    def mask(self, entity: EntityMatch, source_side: bool) -> int:
        if entity.empty:
            return self.all
        key = (id(entity), source_side)
        got = self._cache.get(key)
        if got is None:
            port = self.flow.src_port if source_side else self.flow.dst_port
            got = 0
            for i, peer in enumerate(self.peers):
                if self.m.entity_matches(entity, peer, port, self.flow):
                    got |= 1 << i
            self._cache[key] = got
            self._keep.append(entity)
        return got


def _walk(ps: PolicySet, m: Matcher, masks: _Masks, chain: Sequence[TierPolicies],
          profiles: Sequence[str], direction: str, local: Peer, flow: Flow) -> int:
    """Bit mask of the remote peers whose traffic `local`'s `direction` chain allows."""
    egress = direction == EGRESS
    # The local endpoint's own side of each rule is a scalar test; the remote side a mask.
    local_port = flow.src_port if egress else flow.dst_port

    def hits(rule: Rule, live: int) -> int:
        """The live remote peers `rule` matches; 0 for Log rules, which decide nothing."""
        if rule.action == "Log" or not m.flow_ok(rule, flow):
            return 0
        local_entity = rule.source if egress else rule.destination
        if not m.entity_matches(local_entity, local, local_port, flow):
            return 0
        return masks.mask(rule.destination if egress else rule.source, not egress) & live

    undecided = masks.all
    allowed = 0
    for tp in chain:
        live = undecided  # peers still being evaluated in this tier
        passed = 0
        for pol in tp.policies:
            for rule in pol.rules(direction):
                if not live:
                    break
                hit = hits(rule, live)
                if not hit:
                    continue
                live &= ~hit
                if rule.action == "Allow":
                    allowed |= hit
                elif rule.action == "Pass":
                    passed |= hit
        if tp.tier.default_action == "Pass":
            passed |= live
        undecided = passed
        if not undecided:
            return allowed
    for name in profiles:
        prof = ps.profiles.get(name)
        if prof is None:
            continue
        live = undecided
        for rule in prof.rules(direction):
            if not live:
                break
            hit = hits(rule, live)
            if not hit:
                continue
            live &= ~hit
            if rule.action == "Allow":
                allowed |= hit
                undecided &= ~hit
            elif rule.action == "Deny":
                undecided &= ~hit
            # Pass: ends this profile for those peers; they go on to the next profile.
    return allowed


def reachability(ps: PolicySet, endpoints: Sequence[Endpoint], *, protocol: int,
                 port: int | None = None, src_port: int | None = None,
                 icmp_type: int | None = None, icmp_code: int | None = None,
                 ip_version: int = 4) -> dict[str, dict[str, bool]]:
    """{src key: {dst key: allowed}} for every ordered pair of distinct endpoints."""
    m = Matcher(ps)
    peers = [Peer(ep, ep.ip(ip_version)) for ep in endpoints]
    template = Flow(Peer(), Peer(), protocol, dst_port=port, src_port=src_port,
                    icmp_type=icmp_type, icmp_code=icmp_code, ip_version=ip_version)
    masks = _Masks(m, peers, template)
    egress_ok: list[int] = []
    ingress_ok: list[int] = []
    for peer in peers:
        ep = peer.endpoint
        assert ep is not None
        chains = ps.resolved(ep)
        egress_ok.append(_walk(ps, m, masks, chains.egress, ep.profiles, EGRESS, peer, template))
        ingress_ok.append(_walk(ps, m, masks, chains.ingress, ep.profiles, INGRESS, peer,
                                template))
    keys = [ep.key for ep in endpoints]
    out: dict[str, dict[str, bool]] = {}
    for i, src in enumerate(keys):
        row: dict[str, bool] = {}
        eg = egress_ok[i]
        bit_i = 1 << i
        for j, dst in enumerate(keys):
            if i != j:
                row[dst] = bool((eg >> j) & 1) and bool(ingress_ok[j] & bit_i)
        out[src] = row
    _host_pairs(ps, m, peers, template, out)
    return out


def _host_pairs(ps: PolicySet, m: Matcher, peers: Sequence[Peer], template: Flow,
                out: dict[str, dict[str, bool]]) -> None:
    """Pairs with a host endpoint meet more than two chains (failsafes, untracked and
    preDNAT policy, DefaultEndpointToHostAction...): those few go to the evaluator."""
    from dataclasses import replace

    from tabby.policy.evaluate import evaluate

    for s in peers:
        for d in peers:
            if s is d or "HostEndpoint" not in (s.endpoint.kind, d.endpoint.kind):  # type: ignore[union-attr]
                continue
            flow = replace(template, src=s, dst=d)
            out[s.label][d.label] = evaluate(ps, flow, matcher=m).allowed


def reachability_naive(ps: PolicySet, endpoints: Sequence[Endpoint], *, protocol: int,
                       port: int | None = None, ip_version: int = 4,
                       cached: bool = False) -> dict[str, dict[str, bool]]:
    """The baseline: one full reference evaluation per pair (policy lists re-resolved per
    pair unless `cached`)."""
    from tabby.policy.evaluate import evaluate

    m = Matcher(ps)
    out: dict[str, dict[str, bool]] = {}
    for s in endpoints:
        row: dict[str, bool] = {}
        for d in endpoints:
            if s is d:
                continue
            flow = Flow(Peer(s, s.ip(ip_version)), Peer(d, d.ip(ip_version)), protocol,
                        dst_port=port, ip_version=ip_version)
            row[d.key] = evaluate(ps, flow, matcher=m, cached=cached).allowed
        out[s.key] = row
    return out
