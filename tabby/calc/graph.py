"""The agent's calculation graph (Felix's calc graph): datastore updates in, typed dataplane
messages (tabby.calc.messages) out. Pure and synchronous: no I/O, no threads.

    graph = CalcGraph("node-1", emit=dataplane.on_update)
    graph.on_update("/tabby/v3/workloadendpoints/ns/pod-eth0", {...})   # None = deleted
    graph.on_in_sync()

Inputs are the datastore's keys (tabby.resources.registry) with their decoded JSON, and
IPAM blocks (/tabby/ipam/v2/blocks/...). Everything else is ignored.

Wiring (each box one module):

    endpoints, network sets --> IPSetCalculator (ipsets.py): LabelIndex of every endpoint
          |                     in the cluster x the selectors of ACTIVE rules only
          | local ones                                       ^ ref/unref sets
          v                                                  |
    PolicyResolver (endpoints.py): LabelIndex of local   --> ActiveRules (active.py):
    endpoints x all policy selectors; tiers per endpoint     used policies/profiles -> Rules
    profiles, namespaces --> Profiles (profiles.py): parent labels in both indexes
    pools, nodes, blocks, all workloads --> RouteCalculator (routes.py);
    FelixConfiguration, pools --> ConfigCalculator (config.py);
    all of them --> EventSequencer (sequencer.py) --> emit

Before the first `on_in_sync()` nothing is emitted: the whole snapshot is computed once
and sent in dependency order, then `InSync()`. After that every `on_update` is flushed at
once. A value that fails to compile is logged and treated as deleted (as the policy
engine skips it), so one bad resource never stops the graph.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from tabby.calc import messages as m
from tabby.calc.active import ActiveRules
from tabby.calc.config import ConfigCalculator
from tabby.calc.endpoints import LocalEndpoint, PolicyKey, PolicyResolver, compile_tier
from tabby.calc.ipsets import IPSetCalculator
from tabby.calc.profiles import Profiles
from tabby.calc.routes import RouteCalculator
from tabby.calc.sequencer import EventSequencer
from tabby.policy import compile_policy
from tabby.policy import k8s as k8s_policy
from tabby.policy.errors import PolicyError
from tabby.policy.model import host_endpoint, network_set, workload_endpoint
from tabby.resources.registry import KINDS, KindInfo
from tabby.selector import SelectorError

log = logging.getLogger(__name__)

IPAM_BLOCKS = "/tabby/ipam/v2/blocks/"
_NO_PROFILES: dict[str, Any] = {}
_NO_NAMESPACES: frozenset[str] = frozenset()
_SKIP = (PolicyError, SelectorError, ValueError, KeyError, TypeError, AttributeError)
_intern = sys.intern


def _interned(labels: Mapping[str, str]) -> dict[str, str]:
    # 250,000 endpoints share a few thousand label strings: keep one copy of each.
    return {_intern(k): _intern(v) for k, v in labels.items()}


class _Shared(dict):  # type: ignore[type-arg]
    """One shared copy of equal small tuples (parent lists, named ports): most endpoints
    have the same ones, and each copy would cost ~100 bytes per endpoint."""

    def get_one(self, value: Any) -> Any:
        got = self.get(value)
        if got is None:
            if len(self) > 100_000:  # unbounded variety: stop sharing, not growing
                return value
            self[value] = got = value
        return got


class CalcGraph:
    def __init__(self, node_name: str, emit: Callable[[object], None]) -> None:
        self.node_name = node_name
        self._emit = emit
        self.ipsets = IPSetCalculator()
        self.seq = EventSequencer(emit, self.ipsets)
        self.active = ActiveRules(self.ipsets, self.seq)
        self.routes = RouteCalculator(node_name, self.seq)
        self.config = ConfigCalculator(node_name, self.seq)
        self.profiles = Profiles(self.active.profile_dirty,
                                 lambda ns: self.resolver.namespace_changed(ns))
        self.resolver = PolicyResolver(self.profiles, self.seq, self.active,
                                       self._local_workload)
        self.profiles.track(self.ipsets.index)
        self.profiles.track(self.resolver.index)
        self._in_sync = False
        self._shared = _Shared()
        handlers: dict[str, Callable[[str | None, str, Any], None]] = {
            "WorkloadEndpoint": self._workload,
            "HostEndpoint": self._host_endpoint,
            "NetworkSet": self._network_set,
            "GlobalNetworkSet": self._network_set,
            "NetworkPolicy": self._policy,
            "GlobalNetworkPolicy": self._policy,
            "KubernetesNetworkPolicy": self._k8s_policy,
            "Profile": self._profile,
            "Namespace": self._namespace,
            "Tier": self._tier,
            "IPPool": self._pool,
            "Node": self._node,
            "FelixConfiguration": self._felix_config,
        }
        # By key root: the Calico and the Kubernetes NetworkPolicy share a kind name.
        self._kinds: dict[str, tuple[KindInfo, Callable[[str | None, str, Any], None]]] = {
            k.root: (k, handlers[k.display]) for k in KINDS if k.display in handlers}

    # -- the interface -------------------------------------------------------------------

    def on_update(self, key: str, value: dict | None) -> None:
        """One datastore key's decoded JSON value; None = deleted."""
        if key.startswith(IPAM_BLOCKS):
            handler: Callable[[str | None, str, Any], None] = self._block
            ns, name = None, key[len(IPAM_BLOCKS):]
        else:
            head = key.rpartition("/")[0]
            got = self._kinds.get(head) or self._kinds.get(head.rpartition("/")[0])
            if got is None:
                return
            try:
                ns, name = got[0].parse_key(key)
            except ValueError:
                return
            handler = got[1]
        try:
            handler(ns, name, value)
        except _SKIP as exc:
            log.warning("%s skipped: %s", key, exc)
            if value is not None:
                handler(ns, name, None)
        if self._in_sync:
            self.flush()

    def on_in_sync(self) -> None:
        """The complete snapshot has been delivered: send it all, then InSync (once)."""
        self.flush()
        if not self._in_sync:
            self._in_sync = True
            self._emit(m.InSync())

    def flush(self) -> None:
        """Compute what changed and emit it in dependency order (also used by on_update)."""
        self.config.flush()
        self.resolver.flush()
        self.active.flush(self.resolver.policies.get, self.resolver.is_active,
                          self.profiles.get)
        self.routes.flush()
        self.seq.flush()

    def stats(self) -> dict[str, int]:
        """Sizes, for metrics and benchmarks."""
        return {
            "local_endpoints": len(self.resolver.endpoints),
            "policies": len(self.resolver.policies),
            "active_policies": len(self.active.active_policies()),
            "active_profiles": len(self.active.active_profiles()),
            "ip_sets": len(self.ipsets.active_sets()),
            "members": len(self.ipsets.index.endpoint_ids()),
        }

    # -- endpoints -----------------------------------------------------------------------

    def _local_workload(self, key: str, ep: LocalEndpoint | None) -> None:
        if ep is None:
            self.routes.set_local_workload(key, (), "")
        else:
            self.routes.set_local_workload(key, ep.endpoint.ips, ep.endpoint.interface_name)

    def _workload(self, ns: str | None, name: str, value: Any) -> None:
        # Member ids in the IP set index: workloads "ns/name"; others carry a prefix that
        # no workload id can have ("h:", "n:", "g:" - namespaces have no ':').
        key = f"{ns}/{name}"
        if value is None:
            self.ipsets.remove_member(key)
            self.resolver.set_endpoint(None, key)
            self.routes.set_remote_workload(key, "", ())
            return
        ep = workload_endpoint(value, _NO_PROFILES, _NO_NAMESPACES)  # own labels only
        spec = value.get("spec") or {}
        ep.labels = labels = _interned(ep.labels)
        share = self._shared.get_one
        parents = share(Profiles.workload_parents(ep.namespace, spec))
        ips = tuple(str(ip) for ip in ep.ips)
        ports = share(tuple((p.name, p.protocol, p.port) for p in ep.ports))
        if ep.node == self.node_name:
            local = LocalEndpoint(key, "WorkloadEndpoint", ep, spec)
            self.resolver.set_endpoint(local, key, parents)
            self.routes.set_remote_workload(key, "", ())  # routed by its interface now
        else:
            self.resolver.set_endpoint(None, key)
            self.routes.set_remote_workload(key, ep.node, ips)  # a /32 if borrowed
        self.ipsets.update_member(key, labels, parents, ips, ports)

    def _host_endpoint(self, ns: str | None, name: str, value: Any) -> None:
        member = "h:" + name
        if value is None:
            self.ipsets.remove_member(member)
            self.resolver.set_endpoint(None, name)
            return
        ep = host_endpoint(value, _NO_PROFILES)
        spec = value.get("spec") or {}
        ep.labels = labels = _interned(ep.labels)
        parents = tuple(spec.get("profiles") or ())
        ips = tuple(str(ip) for ip in ep.ips)
        ports = tuple((p.name, p.protocol, p.port) for p in ep.ports)
        if ep.node == self.node_name:
            self.resolver.set_endpoint(LocalEndpoint(name, "HostEndpoint", ep, spec), name,
                                       parents)
        else:
            self.resolver.set_endpoint(None, name)
        self.ipsets.update_member(member, labels, parents, ips, ports)

    def _network_set(self, ns: str | None, name: str, value: Any) -> None:
        member = f"n:{ns}/{name}" if ns else f"g:{name}"
        if value is None:
            self.ipsets.remove_member(member)
            return
        nset = network_set(value, _NO_PROFILES)  # own labels (+ namespace label)
        nets = tuple(str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
                     for n in nset.nets)
        self.ipsets.update_member(member, _interned(nset.labels),
                                  self._shared.get_one(
                                      Profiles.network_set_parents(nset.namespace)), nets)

    # -- policy inputs -------------------------------------------------------------------

    def _policy(self, ns: str | None, name: str, value: Any) -> None:
        key: PolicyKey = ("NetworkPolicy", ns, name) if ns else ("GlobalNetworkPolicy", "", name)
        self.resolver.set_policy(key, None if value is None else compile_policy(value))

    def _k8s_policy(self, ns: str | None, name: str, value: Any) -> None:
        key: PolicyKey = (k8s_policy.K8S_POLICY_KIND, ns or "default",
                          k8s_policy.K8S_POLICY_PREFIX + name)
        self.resolver.set_policy(key, None if value is None else compile_policy(
            k8s_policy.convert_network_policy(value), kind=k8s_policy.K8S_POLICY_KIND))

    def _profile(self, ns: str | None, name: str, value: Any) -> None:
        self.profiles.set_profile(name, value)

    def _namespace(self, ns: str | None, name: str, value: Any) -> None:
        self.profiles.set_namespace(name, value)

    def _tier(self, ns: str | None, name: str, value: Any) -> None:
        self.resolver.set_tier(name, None if value is None else compile_tier(value))

    # -- cluster inputs ------------------------------------------------------------------

    def _pool(self, ns: str | None, name: str, value: Any) -> None:
        self.config.set_pool(name, value)
        self.routes.set_pool(name, value)

    def _node(self, ns: str | None, name: str, value: Any) -> None:
        self.routes.set_node(name, value)

    def _felix_config(self, ns: str | None, name: str, value: Any) -> None:
        self.config.set_felix_config(name, value)

    def _block(self, ns: str | None, name: str, value: Any) -> None:
        self.routes.set_block(name, value)
