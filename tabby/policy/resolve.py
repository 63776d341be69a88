"""Which tiers and policies apply to an endpoint, in evaluation order (Felix's rules).

* Tiers by order ascending; a tier without order comes after every ordered tier; ties by
  name. A tier that policies name but that has no Tier resource sorts last of all.
* Policies within a tier by order ascending (none = +Inf, last); ties by the string
  ``name/namespace/kind``.
* Per endpoint and direction, only policies whose selector matches the endpoint and whose
  types include the direction take part; a tier takes part only if one of its policies does.
* doNotTrack and preDNAT policies form their own chains (host endpoints only) and are left
  out of the normal chains; `resolve_host_endpoint` builds a host endpoint's other chains:
  untracked (doNotTrack, both directions), preDNAT (ingress only) and forward
  (applyOnForward policies that are neither, both directions). An applyOnForward policy is
  also in the normal chains: it applies to the host's own traffic too.

For the agent's calculation graph: `PolicyOrder` keeps the sorted tier/policy list up to date
per change, and `applicable(ordered, direction, matches)` filters it for one endpoint with any
match predicate (e.g. one backed by the incremental LabelIndex).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tabby.policy.model import EGRESS, INGRESS, WELL_KNOWN_TIERS, Endpoint, Policy, Tier


@dataclass(frozen=True)
class TierPolicies:
    tier: Tier
    policies: tuple[Policy, ...]


@dataclass(frozen=True)
class EndpointPolicies:
    """An endpoint's normal policy chains: applicable tiers (with policies) per direction."""

    ingress: tuple[TierPolicies, ...]
    egress: tuple[TierPolicies, ...]

    def chain(self, direction: str) -> tuple[TierPolicies, ...]:
        return self.ingress if direction == INGRESS else self.egress


def tier_sort_key(tier: Tier) -> tuple[bool, bool, float, str]:
    return (not tier.defined, tier.order is None,
            math.inf if tier.order is None else tier.order, tier.name)


def policy_sort_key(policy: Policy) -> tuple[float, str]:
    return policy.sort_key


def is_normal(policy: Policy) -> bool:
    """Part of the normal (tracked, post-DNAT) chains."""
    return not (policy.do_not_track or policy.pre_dnat)


def is_untracked(policy: Policy) -> bool:
    return policy.do_not_track


def is_pre_dnat(policy: Policy) -> bool:
    return policy.pre_dnat and not policy.do_not_track


def is_forward(policy: Policy) -> bool:
    """Applies to traffic the host forwards through one of its host endpoints."""
    return policy.apply_on_forward and is_normal(policy)


def order_policies(tiers: Iterable[Tier], policies: Iterable[Policy]) -> tuple[TierPolicies, ...]:
    """Every tier (sorted) with its policies (sorted). Policies of unknown tiers are dropped."""
    by_tier: dict[str, list[Policy]] = {t.name: [] for t in tiers}
    tier_objs = {t.name: t for t in tiers}
    for pol in policies:
        if pol.tier in by_tier:
            by_tier[pol.tier].append(pol)
    return tuple(
        TierPolicies(tier_objs[name], tuple(sorted(by_tier[name], key=policy_sort_key)))
        for name in sorted(by_tier, key=lambda n: tier_sort_key(tier_objs[n]))
    )


def applicable(
    ordered: Sequence[TierPolicies],
    direction: str,
    matches: Callable[[Policy], bool],
    kind: Callable[[Policy], bool] = is_normal,
) -> tuple[TierPolicies, ...]:
    """The tiers (with their policies) that apply in `direction` to one endpoint.

    `matches(policy)` says whether the policy's selector selects the endpoint; `kind`
    picks the chain (normal by default; `is_untracked`, `is_pre_dnat`, `is_forward`).
    """
    out = []
    for tp in ordered:
        pols = tuple(p for p in tp.policies
                     if direction in p.types and kind(p) and matches(p))
        if pols:
            out.append(TierPolicies(tp.tier, pols))
    return tuple(out)


def _matcher(endpoint: Endpoint) -> Callable[[Policy], bool]:
    """Whether a policy selects the endpoint, each selector evaluated once."""
    labels = endpoint.labels
    cache: dict[int, bool] = {}

    def matches(pol: Policy) -> bool:
        got = cache.get(id(pol))
        if got is None:
            got = cache[id(pol)] = bool(pol.selector.matches(labels))
        return got

    return matches


def resolve_endpoint(ordered: Sequence[TierPolicies], endpoint: Endpoint) -> EndpointPolicies:
    """Both chains of one endpoint, matching each policy selector against its labels once."""
    matches = _matcher(endpoint)
    return EndpointPolicies(
        ingress=applicable(ordered, INGRESS, matches),
        egress=applicable(ordered, EGRESS, matches),
    )


@dataclass(frozen=True)
class HostEndpointPolicies:
    """A host endpoint's chains besides the normal ones (Felix renders each separately)."""

    untracked_ingress: tuple[TierPolicies, ...]
    untracked_egress: tuple[TierPolicies, ...]
    pre_dnat_ingress: tuple[TierPolicies, ...]  # preDNAT policy has no egress
    forward_ingress: tuple[TierPolicies, ...]
    forward_egress: tuple[TierPolicies, ...]

    def untracked(self, direction: str) -> tuple[TierPolicies, ...]:
        return self.untracked_ingress if direction == INGRESS else self.untracked_egress

    def forward(self, direction: str) -> tuple[TierPolicies, ...]:
        return self.forward_ingress if direction == INGRESS else self.forward_egress


def resolve_host_endpoint(ordered: Sequence[TierPolicies],
                          endpoint: Endpoint) -> HostEndpointPolicies:
    matches = _matcher(endpoint)
    return HostEndpointPolicies(
        untracked_ingress=applicable(ordered, INGRESS, matches, is_untracked),
        untracked_egress=applicable(ordered, EGRESS, matches, is_untracked),
        pre_dnat_ingress=applicable(ordered, INGRESS, matches, is_pre_dnat),
        forward_ingress=applicable(ordered, INGRESS, matches, is_forward),
        forward_egress=applicable(ordered, EGRESS, matches, is_forward),
    )


class PolicyOrder:
    """The sorted tier/policy list, kept up to date one change at a time.

    Policies are keyed by (kind, namespace, name); `sorted()` is cached until the next change.
    """

    def __init__(self) -> None:
        self._tiers: dict[str, Tier] = {"default": Tier("default", *WELL_KNOWN_TIERS["default"])}
        self._policies: dict[tuple[str, str, str], Policy] = {}
        self._per_tier: dict[str, list[tuple[tuple[float, str], Policy]]] = {}
        self._cache: tuple[TierPolicies, ...] | None = None

    @staticmethod
    def policy_id(policy: Policy) -> tuple[str, str, str]:
        return (policy.kind, policy.namespace, policy.name)

    def set_tier(self, tier: Tier) -> None:
        self._tiers[tier.name] = tier
        self._cache = None

    def remove_tier(self, name: str) -> None:
        if name == "default":  # implicit: always there
            self._tiers[name] = Tier(name, *WELL_KNOWN_TIERS[name])
        else:
            self._tiers.pop(name, None)
        self._cache = None

    def set_policy(self, policy: Policy) -> None:
        self.remove_policy(self.policy_id(policy))
        self._policies[self.policy_id(policy)] = policy
        entries = self._per_tier.setdefault(policy.tier, [])
        keys = [k for k, _ in entries]
        entries.insert(bisect.bisect(keys, policy.sort_key), (policy.sort_key, policy))
        self._cache = None

    def remove_policy(self, policy_id: tuple[str, str, str]) -> None:
        old = self._policies.pop(policy_id, None)
        if old is None:
            return
        entries = self._per_tier.get(old.tier, [])
        entries[:] = [(k, p) for k, p in entries if p is not old]
        self._cache = None

    def sorted(self) -> tuple[TierPolicies, ...]:
        """Tiers that exist or that some policy names, in order, each with its policies."""
        if self._cache is None:
            tiers = dict(self._tiers)
            for name, entries in self._per_tier.items():
                if entries and name not in tiers:
                    known = WELL_KNOWN_TIERS.get(name)
                    tiers[name] = (Tier(name, *known) if known
                                   else Tier(name, None, "Deny", defined=False))
            self._cache = tuple(
                TierPolicies(t, tuple(p for _, p in self._per_tier.get(t.name, ())))
                for t in sorted(tiers.values(), key=tier_sort_key)
            )
        return self._cache
