"""Active policies and profiles -> dataplane rules and IP set references (Felix's active
rules calculator and rule scanner).

Only what a local endpoint uses is compiled into `messages.Rule`s and sent: a policy while
its selector matches a local endpoint, a profile while a local endpoint lists it. Each
sent policy/profile holds one reference on every IP set its rules use; the IP set
calculator keeps a set (and its selector in the cluster-wide label index) only while it
is referenced. A changed policy takes its new references before dropping its old ones, so
an IP set used before and after is never torn down and rebuilt.

Rule ids (shown in the dataplane's rule comments): `<tier>/<policy>/<ingress|egress>/<n>`
and `profile/<name>/<ingress|egress>/<n>`, n being the rule's index in the resource.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from tabby.calc import messages as m
from tabby.calc import sequencer as sq
from tabby.calc.endpoints import PolicyKey, policy_id
from tabby.calc.ipsets import IPSetCalculator
from tabby.calc.rules import IPSetSpec, convert_rules
from tabby.policy import EGRESS, INGRESS, Policy, Profile
from tabby.policy.rules import Rule as CompiledRule

log = logging.getLogger(__name__)


class _Sent:
    __slots__ = ("source", "message_key", "set_ids")

    def __init__(self, source: object, message_key: Any, set_ids: tuple[str, ...]) -> None:
        self.source = source  # the compiled Policy/Profile this was made from
        self.message_key = message_key
        self.set_ids = set_ids


def _rules(rules: Iterable[CompiledRule], prefix: str,
           sets: dict[str, IPSetSpec]) -> tuple[m.Rule, ...]:
    mine: dict[str, IPSetSpec] = {}
    try:
        out = convert_rules(rules, prefix, mine)
    except ValueError as exc:
        # Should not happen for validated resources; fail closed rather than skip.
        log.error("%s: rules cannot be rendered, denying instead: %s", prefix, exc)
        return (m.Rule("deny", rule_id=f"{prefix}/unrenderable"),)
    sets.update(mine)
    return out


class ActiveRules:
    def __init__(self, ipsets: IPSetCalculator, seq: sq.EventSequencer) -> None:
        self._ipsets = ipsets
        self._seq = seq
        self._policies: dict[PolicyKey, _Sent] = {}
        self._profiles: dict[str, _Sent] = {}
        self._profile_refs: dict[str, int] = {}
        self._dirty_policies: set[PolicyKey] = set()
        self._dirty_profiles: set[str] = set()

    # -- notifications (from the policy resolver and the profile store) ---------------------

    def policy_dirty(self, key: PolicyKey) -> None:
        self._dirty_policies.add(key)

    def profile_dirty(self, name: str) -> None:
        if name in self._profile_refs or name in self._profiles:
            self._dirty_profiles.add(name)

    def ref_profile(self, name: str) -> None:
        n = self._profile_refs.get(name, 0)
        self._profile_refs[name] = n + 1
        if n == 0:
            self._dirty_profiles.add(name)

    def unref_profile(self, name: str) -> None:
        n = self._profile_refs[name] - 1
        if n:
            self._profile_refs[name] = n
        else:
            del self._profile_refs[name]
            self._dirty_profiles.add(name)

    # -- queries -------------------------------------------------------------------------

    def active_policies(self) -> set[PolicyKey]:
        return set(self._policies)

    def active_profiles(self) -> set[str]:
        return set(self._profiles)

    # -- flush ---------------------------------------------------------------------------

    def flush(self, policy: Callable[[PolicyKey], Policy | None],
              is_active: Callable[[PolicyKey], bool],
              profile: Callable[[str], Profile | None]) -> None:
        dirty, self._dirty_policies = self._dirty_policies, set()
        for key in dirty:
            pol = policy(key) if is_active(key) else None
            self._update(self._policies, key, pol, self._policy_message)
        dirty_p, self._dirty_profiles = self._dirty_profiles, set()
        for name in dirty_p:
            prof = profile(name) if name in self._profile_refs else None
            self._update(self._profiles, name, prof, self._profile_message)

    def _update(self, sent: dict, key: Any, source: object | None,
                make: Callable[[Any], tuple[Any, object, dict[str, IPSetSpec]]]) -> None:
        old = sent.get(key)
        if old is not None and old.source is source:
            return
        kind = sq.POLICY if sent is self._policies else sq.PROFILE
        if source is None:
            if old is not None:
                del sent[key]
                self._seq.remove(kind, old.message_key)
                for sid in old.set_ids:
                    self._ipsets.unref(sid)
            return
        msg_key, msg, sets = make(source)
        for spec in sets.values():
            self._ipsets.ref(spec)
        if old is not None:
            for sid in old.set_ids:
                self._ipsets.unref(sid)
            if old.message_key != msg_key:  # a policy that moved tier
                self._seq.remove(kind, old.message_key)
        sent[key] = _Sent(source, msg_key, tuple(sets))
        self._seq.put(kind, msg_key, msg)

    @staticmethod
    def _policy_message(pol: Policy) -> tuple[Any, object, dict[str, IPSetSpec]]:
        pid = policy_id(pol)
        sets: dict[str, IPSetSpec] = {}
        prefix = f"{pid.tier}/{pid.name}"
        # Rules of a direction the policy does not apply to are never evaluated.
        inbound = (_rules(pol.ingress, f"{prefix}/ingress", sets)
                   if INGRESS in pol.types else ())
        outbound = (_rules(pol.egress, f"{prefix}/egress", sets)
                    if EGRESS in pol.types else ())
        return pid, m.PolicyUpdate(pid, inbound, outbound), sets

    @staticmethod
    def _profile_message(prof: Profile) -> tuple[Any, object, dict[str, IPSetSpec]]:
        sets: dict[str, IPSetSpec] = {}
        prefix = f"profile/{prof.name}"
        inbound = _rules(prof.ingress, f"{prefix}/ingress", sets)
        outbound = _rules(prof.egress, f"{prefix}/egress", sets)
        return prof.name, m.ProfileUpdate(prof.name, inbound, outbound), sets
