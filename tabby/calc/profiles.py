"""Profiles, Kubernetes namespaces and the label inheritance they give endpoints.

Profiles come from two places: Profile resources, and one `kns.<ns>` profile per
Kubernetes Namespace (`tabby.policy.k8s.namespace_to_profile`); a Profile resource of the
same name wins, as in `tabby.policy.PolicySet`.

Endpoints inherit a profile's `labelsToApply` through `LabelIndex` parents, so a profile
change re-labels its endpoints incrementally in every index. Parent ids:

* a profile's name, for endpoints that list their profiles (and for namespaced network
  sets, whose parent is always `kns.<ns>`, as `tabby.policy.model.network_set` has it);
* `(WL_NS, ns)` and `(WL_SA, ns, sa)` for workloads that list no profiles: such a workload
  gets `kns.<ns>` (+ `ksa.<ns>.<sa>` if that profile exists) only while its namespace exists
  (`tabby.policy.model.workload_profiles`). Giving these their own parent ids keeps every
  endpoint's parent list fixed by its own document, so a Namespace appearing or going is
  one parent update, not a re-derivation of every workload in it.

The labels each parent carries are exactly what `tabby.policy.model.effective_labels` would
merge in, so the graph and the policy engine agree (tests/unit/test_calc_crosscheck.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tabby.policy import compile_profile
from tabby.policy import k8s as k8s_policy
from tabby.policy.model import Profile, workload_profiles
from tabby.policy.selectors import NAMESPACE_PROFILE_PREFIX, SERVICE_ACCOUNT_PROFILE_PREFIX
from tabby.selector import LabelIndex

WL_NS = "wl-ns"
WL_SA = "wl-sa"

Parent = str | tuple[str, ...]


def _split_ksa(name: str) -> tuple[str, str] | None:
    """`ksa.<ns>.<sa>` -> (ns, sa). Namespace names are DNS labels (no dots)."""
    if not name.startswith(SERVICE_ACCOUNT_PROFILE_PREFIX):
        return None
    ns, _, sa = name[len(SERVICE_ACCOUNT_PROFILE_PREFIX):].partition(".")
    return (ns, sa) if ns and sa else None


class Profiles:
    """The known profiles and namespaces; keeps parent labels in the given label indexes.

    `on_changed(name)` is called for every profile whose compiled value changed (or that
    appeared / went); `on_namespace(ns)` when a namespace appears or goes, or a `ksa.<ns>.*`
    profile appears or goes (either changes which profiles that namespace's workloads use).
    """

    def __init__(self, on_changed: Callable[[str], None],
                 on_namespace: Callable[[str], None]) -> None:
        self._indexes: list[LabelIndex] = []
        self._on_changed = on_changed
        self._on_namespace = on_namespace
        self._explicit: dict[str, Profile] = {}
        self._derived: dict[str, Profile] = {}  # kns.<ns> from Namespaces
        self.all: dict[str, Profile] = {}  # effective: explicit wins
        self.namespaces: set[str] = set()
        self._ksa_by_ns: dict[str, set[str]] = {}

    def track(self, index: LabelIndex) -> None:
        """Keep parent labels in `index` too (call before the first update)."""
        self._indexes.append(index)

    # -- queries -------------------------------------------------------------------------

    def get(self, name: str) -> Profile | None:
        return self.all.get(name)

    def workload_profiles(self, namespace: str, spec: Mapping[str, Any]) -> tuple[str, ...]:
        return workload_profiles(namespace, spec, self.all, self.namespaces)

    @staticmethod
    def workload_parents(namespace: str, spec: Mapping[str, Any]) -> tuple[Parent, ...]:
        listed = spec.get("profiles")
        if listed:
            return tuple(listed)
        sa = spec.get("serviceAccountName")
        if sa:
            return ((WL_NS, namespace), (WL_SA, namespace, sa))
        return ((WL_NS, namespace),)

    @staticmethod
    def network_set_parents(namespace: str) -> tuple[Parent, ...]:
        return (NAMESPACE_PROFILE_PREFIX + namespace,) if namespace else ()

    # -- updates -------------------------------------------------------------------------

    def set_profile(self, name: str, doc: Mapping[str, Any] | None) -> None:
        """A Profile resource (None = deleted). Raises PolicyError/ValueError if unusable."""
        if doc is None:
            if self._explicit.pop(name, None) is not None:
                self._refresh(name)
            return
        self._explicit[name] = compile_profile(doc)
        self._refresh(name)

    def set_namespace(self, name: str, doc: Mapping[str, Any] | None) -> None:
        """A Kubernetes Namespace (None = deleted)."""
        pname = NAMESPACE_PROFILE_PREFIX + name
        if doc is None:
            self._derived.pop(pname, None)
            flipped = name in self.namespaces
            self.namespaces.discard(name)
        else:
            self._derived[pname] = compile_profile(k8s_policy.namespace_to_profile(doc))
            flipped = name not in self.namespaces
            self.namespaces.add(name)
        self._refresh(pname)
        if flipped:  # the namespace appeared or went
            self._set_parent((WL_NS, name), self._wl_ns_labels(name))
            for sa in self._ksa_by_ns.get(name, ()):
                self._set_parent((WL_SA, name, sa), self._wl_sa_labels(name, sa))
            self._on_namespace(name)

    def _refresh(self, name: str) -> None:
        new = self._explicit.get(name) or self._derived.get(name)
        old = self.all.get(name)
        if new is None:
            if old is None:
                return
            del self.all[name]
        else:
            if old is not None and _same(old, new):
                return
            self.all[name] = new
        self._set_parent(name, new.labels_to_apply if new is not None else None)
        if name.startswith(NAMESPACE_PROFILE_PREFIX):
            ns = name[len(NAMESPACE_PROFILE_PREFIX):]
            self._set_parent((WL_NS, ns), self._wl_ns_labels(ns))
        ksa = _split_ksa(name)
        if ksa is not None:
            ns, sa = ksa
            bucket = self._ksa_by_ns.setdefault(ns, set())
            appeared_or_went = (new is None) == (sa in bucket)
            if new is None:
                bucket.discard(sa)
                if not bucket:
                    del self._ksa_by_ns[ns]
            else:
                bucket.add(sa)
            self._set_parent((WL_SA, ns, sa), self._wl_sa_labels(ns, sa))
            if appeared_or_went:
                self._on_namespace(ns)
        self._on_changed(name)

    def _wl_ns_labels(self, ns: str) -> Mapping[str, str] | None:
        if ns not in self.namespaces:
            return None
        prof = self.all.get(NAMESPACE_PROFILE_PREFIX + ns)
        return prof.labels_to_apply if prof is not None else None

    def _wl_sa_labels(self, ns: str, sa: str) -> Mapping[str, str] | None:
        if ns not in self.namespaces:
            return None
        prof = self.all.get(f"{SERVICE_ACCOUNT_PROFILE_PREFIX}{ns}.{sa}")
        return prof.labels_to_apply if prof is not None else None

    def _set_parent(self, parent: Parent, labels: Mapping[str, str] | None) -> None:
        for index in self._indexes:
            if labels:
                index.update_parent(parent, labels)
            else:
                index.delete_parent(parent)


def _same(a: Profile, b: Profile) -> bool:
    return (a.ingress == b.ingress and a.egress == b.egress
            and dict(a.labels_to_apply) == dict(b.labels_to_apply))
