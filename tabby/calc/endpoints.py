"""Local endpoints and the policies that select them (Felix's policy resolver).

A `LabelIndex` holds every policy selector against this node's endpoints only (about 200
of them, whatever the cluster size), so a policy change costs what it matches here and a
remote endpoint never touches it. Its match callbacks count, per policy, how many local
endpoints it selects: a policy is *active* while that count is above zero, and only
active policies are compiled into dataplane rules (see `tabby.calc.active`).

An endpoint's tiers are computed lazily, once per flush, from the policies that match it:
those are grouped by tier and sorted with the policy engine's own keys
(`tier_sort_key`, `policy_sort_key`), then filtered per direction with
`tabby.policy.applicable`, so the result is what `tabby.policy.resolve_endpoint` gives -
without walking all 10,000 policies per endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tabby.calc import messages as m
from tabby.calc import sequencer as sq
from tabby.calc.profiles import Parent, Profiles
from tabby.policy import EGRESS, INGRESS, Endpoint, Policy, Tier, TierPolicies, applicable
from tabby.policy.errors import PolicyError
from tabby.policy.k8s import K8S_POLICY_PREFIX
from tabby.policy.model import WELL_KNOWN_TIERS
from tabby.policy.resolve import policy_sort_key, tier_sort_key
from tabby.policy.selectors import namespace_clause
from tabby.selector import LabelIndex, Selector, and_

log = logging.getLogger(__name__)

PolicyKey = tuple[str, str, str]  # (kind, namespace, name), as PolicyOrder.policy_id


def policy_key(policy: Policy) -> PolicyKey:
    return (policy.kind, policy.namespace, policy.name)


def policy_id(policy: Policy) -> m.PolicyId:
    """The dataplane's id: tier plus `ns/name` (namespaced) or `name` (global).

    Kubernetes policies are named `knp.default.<name>` as in Calico; a Calico
    NetworkPolicy that takes such a name itself gets a suffix so the two never collide."""
    name = policy.key
    if policy.kind == "NetworkPolicy" and policy.name.startswith(K8S_POLICY_PREFIX):
        name += "@NetworkPolicy"
    return m.PolicyId(policy.tier, name)


def compile_tier(doc: Mapping[str, Any]) -> Tier:
    """A Tier resource dict, with Calico's well-known tier defaults."""
    name = (doc.get("metadata") or {}).get("name")
    if not name:
        raise PolicyError("Tier metadata.name: missing")
    spec = doc.get("spec") or {}
    known = WELL_KNOWN_TIERS.get(name)
    order = spec.get("order")
    if order is None:
        order = known[0] if known else None
    action = spec.get("defaultAction") or (known[1] if known else "Deny")
    if action not in ("Deny", "Pass"):
        raise PolicyError(f"Tier {name} spec.defaultAction: invalid value {action!r} (Deny, Pass)")
    return Tier(name, None if order is None else float(order), action)


def implicit_tier(name: str) -> Tier:
    """A tier that policies name without a Tier resource (as PolicyOrder treats it)."""
    known = WELL_KNOWN_TIERS.get(name)
    return Tier(name, *known) if known else Tier(name, None, "Deny", defined=False)


@dataclass(eq=False, slots=True)
class LocalEndpoint:
    key: str  # the endpoint id the dataplane sees
    kind: str  # "WorkloadEndpoint" | "HostEndpoint"
    endpoint: Endpoint  # own labels only (inheritance happens in the index)
    spec: Mapping[str, Any]
    profile_ids: tuple[str, ...] = ()


def _always(policy: Policy) -> bool:
    return True


def _chain(ordered: Iterable[TierPolicies], direction: str,
           keep: Callable[[Policy], bool]) -> tuple[TierPolicies, ...]:
    """Like `applicable`, for the host-endpoint chains outside the normal one."""
    out = []
    for tp in ordered:
        pols = tuple(p for p in tp.policies if direction in p.types and keep(p))
        if pols:
            out.append(TierPolicies(tp.tier, pols))
    return tuple(out)


def tier_infos(ingress: Iterable[TierPolicies],
               egress: Iterable[TierPolicies]) -> tuple[m.TierInfo, ...]:
    """Per-direction chains merged into TierInfo (one per tier, in tier order)."""
    ins = {tp.tier.name: tp for tp in ingress}
    outs = {tp.tier.name: tp for tp in egress}
    tiers: dict[str, Tier] = {}
    for tp in (*ins.values(), *outs.values()):
        tiers.setdefault(tp.tier.name, tp.tier)
    out = []
    for tier in sorted(tiers.values(), key=tier_sort_key):
        i, e = ins.get(tier.name), outs.get(tier.name)
        out.append(m.TierInfo(
            tier.name, tier.default_action,
            tuple(policy_id(p).name for p in i.policies) if i else (),
            tuple(policy_id(p).name for p in e.policies) if e else (),
        ))
    return tuple(out)


class PolicyResolver:
    """Policies x local endpoints; emits endpoint updates and tells `active` what is used.

    `active` is the ActiveRules calculator: `policy_dirty(key)`, `ref_profile(name)`,
    `unref_profile(name)`.
    """

    def __init__(self, profiles: Profiles, seq: sq.EventSequencer, active: Any,
                 on_local_workload: Callable[[str, LocalEndpoint | None], None]) -> None:
        self.index = LabelIndex(self._started, self._stopped)
        self._profiles = profiles
        self._seq = seq
        self._active = active
        self._on_local_workload = on_local_workload
        self.policies: dict[PolicyKey, Policy] = {}
        self._count: dict[PolicyKey, int] = {}
        self._tiers: dict[str, Tier] = {}
        self.endpoints: dict[str, LocalEndpoint] = {}
        self._dirty: set[str] = set()
        self._gone: dict[str, LocalEndpoint] = {}  # removed since the last flush

    # -- queries -------------------------------------------------------------------------

    def is_active(self, key: PolicyKey) -> bool:
        return self._count.get(key, 0) > 0 and key in self.policies

    def tier(self, name: str) -> Tier:
        return self._tiers.get(name) or implicit_tier(name)

    # -- index callbacks -------------------------------------------------------------------

    def _started(self, key: PolicyKey, ep: str) -> None:
        self._dirty.add(ep)
        n = self._count.get(key, 0)
        self._count[key] = n + 1
        if n == 0:
            self._active.policy_dirty(key)

    def _stopped(self, key: PolicyKey, ep: str) -> None:
        self._dirty.add(ep)
        n = self._count[key] - 1
        if n:
            self._count[key] = n
        else:
            del self._count[key]
            self._active.policy_dirty(key)

    # -- policies and tiers ------------------------------------------------------------------

    def set_policy(self, key: PolicyKey, policy: Policy | None) -> None:
        old = self.policies.get(key)
        if policy is None:
            if old is None:
                return
            del self.policies[key]
            self.index.delete_selector(key)  # stops every match: endpoints go dirty
            self._active.policy_dirty(key)
            return
        self.policies[key] = policy
        if old is not None and _placement(old) != _placement(policy):
            # Same selector, new place in the chains: re-resolve what it selects now.
            self._dirty.update(self.index.matches_for_selector(key))
        self.index.update_selector(key, _indexed(policy))
        if self._count.get(key):
            self._active.policy_dirty(key)  # rules may have changed

    def set_tier(self, name: str, tier: Tier | None) -> None:
        if tier is None:
            if self._tiers.pop(name, None) is None:
                return
        elif self._tiers.get(name) == tier:
            return
        else:
            self._tiers[name] = tier
        self._dirty.update(self.endpoints)  # rare: re-resolve every local endpoint

    # -- endpoints -----------------------------------------------------------------------

    def set_endpoint(self, ep: LocalEndpoint | None, key: str,
                     parents: tuple[Parent, ...] = ()) -> None:
        old = self.endpoints.get(key)
        if ep is None:
            if old is None:
                return
            del self.endpoints[key]
            self.index.delete_endpoint(key)
            self._gone[key] = old  # flush releases its profile refs
        else:
            # The profile refs the dataplane view holds move to the new value; flush
            # adjusts them to what it resolves.
            prev = old if old is not None else self._gone.pop(key, None)
            if prev is not None:
                ep.profile_ids = prev.profile_ids
            self.endpoints[key] = ep
            self.index.update_endpoint(key, ep.endpoint.labels, parents)
        self._dirty.add(key)
        if (ep or old).kind == "WorkloadEndpoint":  # type: ignore[union-attr]
            self._on_local_workload(key, ep)

    def namespace_changed(self, namespace: str) -> None:
        """Workloads there that list no profiles may now use other ones."""
        for key, ep in self.endpoints.items():
            if ep.kind == "WorkloadEndpoint" and ep.endpoint.namespace == namespace:
                self._dirty.add(key)

    def profile_users(self, name: str) -> bool:
        return any(name in ep.profile_ids for ep in self.endpoints.values())

    # -- flush ---------------------------------------------------------------------------

    def flush(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        for key in dirty:
            ep = self.endpoints.get(key)
            gone = self._gone.pop(key, None)
            if ep is None:
                if gone is not None:
                    self._set_profiles(gone, ())
                    kind = sq.WORKLOAD if gone.kind == "WorkloadEndpoint" else sq.HOST_ENDPOINT
                    self._seq.remove(kind, key)
                continue
            try:
                self._resolve(ep)
            except ValueError as exc:  # a message field the dataplane cannot take
                log.warning("endpoint %s skipped: %s", key, exc)
                self._set_profiles(ep, ())
                self._seq.remove(
                    sq.WORKLOAD if ep.kind == "WorkloadEndpoint" else sq.HOST_ENDPOINT, key)

    def _ordered(self, key: str) -> tuple[TierPolicies, ...]:
        by_tier: dict[str, list[Policy]] = {}
        policies = self.policies
        for pkey in self.index.selectors_for_endpoint(key):
            pol = policies[pkey]
            by_tier.setdefault(pol.tier, []).append(pol)
        tiers = sorted((self.tier(name) for name in by_tier), key=tier_sort_key)
        return tuple(TierPolicies(t, tuple(sorted(by_tier[t.name], key=policy_sort_key)))
                     for t in tiers)

    def _resolve(self, ep: LocalEndpoint) -> None:
        ordered = self._ordered(ep.key)
        tiers = tier_infos(applicable(ordered, INGRESS, _always),
                           applicable(ordered, EGRESS, _always))
        spec = ep.spec
        if ep.kind == "WorkloadEndpoint":
            profile_ids = self._profiles.workload_profiles(ep.endpoint.namespace, spec)
            v4 = tuple(f"{ip}/32" for ip in ep.endpoint.ips if ip.version == 4)
            v6 = tuple(f"{ip}/128" for ip in ep.endpoint.ips if ip.version == 6)
            msg: object = m.WorkloadEndpointUpdate(
                ep.key, ep.endpoint.interface_name, v4, v6, tiers, profile_ids,
                spec.get("mac"))
            kind = sq.WORKLOAD
        else:
            profile_ids = tuple(spec.get("profiles") or ())

            def untracked(p: Policy) -> bool:
                return p.do_not_track

            def pre_dnat(p: Policy) -> bool:
                return p.pre_dnat and not p.do_not_track

            def forward(p: Policy) -> bool:
                return p.apply_on_forward and not (p.do_not_track or p.pre_dnat)

            msg = m.HostEndpointUpdate(
                ep.key, ep.endpoint.interface_name,
                tuple(str(ip) for ip in ep.endpoint.ips),
                tiers=tiers,
                untracked_tiers=tier_infos(_chain(ordered, INGRESS, untracked),
                                           _chain(ordered, EGRESS, untracked)),
                pre_dnat_tiers=tier_infos(_chain(ordered, INGRESS, pre_dnat), ()),
                forward_tiers=tier_infos(_chain(ordered, INGRESS, forward),
                                         _chain(ordered, EGRESS, forward)),
                profile_ids=profile_ids,
            )
            kind = sq.HOST_ENDPOINT
        self._set_profiles(ep, profile_ids)
        self._seq.put(kind, ep.key, msg)

    def _set_profiles(self, ep: LocalEndpoint, new: tuple[str, ...]) -> None:
        old = ep.profile_ids
        if old == new:
            return
        for name in set(new) - set(old):
            self._active.ref_profile(name)
        for name in set(old) - set(new):
            self._active.unref_profile(name)
        ep.profile_ids = new



def _indexed(p: Policy) -> Selector:
    """The policy's selector as the local index sees it. A namespaced policy's selector
    is `(<selector>) && projectcalico.org/namespace == '<ns>'`; the index keys a
    conjunction by its first most-selective operand, which would be `app == 'x'` - shared
    by that app's policies in every namespace, so each label change of a local endpoint
    would re-evaluate all of them. Leading with the (equivalent, redundant) namespace
    clause keys it by namespace instead."""
    if not p.namespace:
        return p.selector
    return and_(namespace_clause(p.namespace), p.selector)


def _placement(p: Policy) -> Hashable:
    """What decides where (and whether) a policy sits in an endpoint's chains."""
    return (p.tier, p.sort_key, p.types, p.do_not_track, p.pre_dnat, p.apply_on_forward)
